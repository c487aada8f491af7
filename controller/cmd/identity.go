package cmd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/termsafe"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func newToken(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "token", Short: "Join tokens: one-time credentials with which a new host enrolls"}
	var host string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --host FQDN",
		Short: "Make a single-use join token for one host (prints the token and the CA pin)",
		Args:  cobra.NoArgs,
	}
	// text for people; json and yaml for the script that enrolls the host.
	o := addOutput(create, "text", formatJSON, formatYAML)
	create.RunE = func(cmd *cobra.Command, _ []string) error {
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			resp, err := pb.NewJoinTokenServiceClient(conn).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Host: host, Ttl: durationpb.New(ttl)})
			if err != nil {
				return rpcError("create join token for "+host, err)
			}
			return o.print(g.out, resp, func() error {
				fmt.Fprintf(g.out, "join token for %s, valid once until %s:\n  token:  %s\n  ca pin: %s\n", resp.GetHost(),
					resp.GetExpiresAt().AsTime().UTC().Format(time.RFC3339), resp.GetToken(), resp.GetCaPin())
				_, err := fmt.Fprintf(g.out, "on the host:\n  s2s-agent enroll --controller ADDR --host %s --token %s --ca-pin %s --state-dir DIR\n",
					resp.GetHost(), resp.GetToken(), resp.GetCaPin())
				return err
			})
		})
	}
	create.Flags().StringVar(&host, "host", "", "the host's FQDN (required)")
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid (at most 24h)")
	_ = create.MarkFlagRequired("host")
	c.AddCommand(create)
	return c
}

// newIssueAdmin issues an admin identity with a role from the data dir's CA.
func newIssueAdmin(g *globals) *cobra.Command {
	var name, role, outDir string
	var ttl time.Duration
	c := &cobra.Command{
		Use:   "issue-admin --name NAME --role admin|operator|viewer --out DIR",
		Short: "Issue an admin identity with a role (writes NAME.crt, NAME.key, ca.crt)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := pki.ParseRole(role)
			if err != nil {
				return fmt.Errorf("--role: %w", err)
			}
			ca, err := pki.LoadDevCA(app.PKIDir(g.client.DataDir))
			if err != nil {
				return err
			}
			if ca == nil {
				return errors.New("no CA in " + app.PKIDir(g.client.DataDir) + " (start `s2s-controller serve` once to create it)")
			}
			certPEM, keyPEM, err := ca.IssueAdminRole(name, r, time.Now(), ttl)
			if err != nil {
				return err
			}
			if err := pki.WriteIdentity(outDir, name, certPEM, keyPEM, ca.CertPEM()); err != nil {
				return err
			}
			cmd.Printf("issued admin identity %s (role %s) into %s (%s.crt, %s.key, ca.crt)\n", name, r, outDir, name, name)
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "", "the administrator's name: letters, digits, '.', '-', '_' (required)")
	c.Flags().StringVar(&role, "role", "viewer", "admin (everything), operator (also rollouts and host retry) or viewer (read-only)")
	c.Flags().StringVar(&outDir, "out", ".", "output directory")
	c.Flags().DurationVar(&ttl, "ttl", 365*24*time.Hour, "certificate lifetime")
	_ = c.MarkFlagRequired("name")
	return c
}

// newGetAudit reads the audit trail, every page.
func newGetAudit(g *globals) *cobra.Command {
	var since, who string
	c := &cobra.Command{
		Use:   "audit [--since 24h|2026-01-02T15:04:05Z] [--who admin/alice]",
		Short: "List the audit trail: who changed what, from where, when, with what result, at which revision",
		Args:  cobra.NoArgs,
	}
	o := addOutput(c, formatTable, formatJSON, formatYAML)
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		req := &pb.ListAuditRecordsRequest{Who: who, PageSize: 1000}
		if since != "" {
			t, err := parseSince(since, time.Now())
			if err != nil {
				return err
			}
			req.Since = timestamppb.New(t)
		}
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			var all []*pb.AuditRecord
			var stale *pb.Staleness
			client := pb.NewAuditServiceClient(conn)
			for {
				resp, err := client.ListAuditRecords(ctx, req)
				if err != nil {
					return rpcError("list audit records", err)
				}
				all, stale = append(all, resp.GetRecords()...), stalest(stale, resp.GetStale())
				if resp.GetNextPageToken() == "" {
					break
				}
				req.PageToken = resp.GetNextPageToken()
			}
			warnStale(cmd.ErrOrStderr(), stale)
			return o.print(g.out, &pb.ListAuditRecordsResponse{Records: all, Stale: stale}, func() error {
				t := newTable(g.out, "REVISION", "WHEN", "WHO", "FROM", "KIND", "WHAT~", "RESULT~")
				for _, r := range all {
					t.row(fmt.Sprint(r.GetRevision()), r.GetWhen().AsTime().UTC().Format(time.RFC3339), r.GetWho(), r.GetFrom(), r.GetKind(), r.GetWhat(), r.GetResult())
				}
				return t.flush()
			})
		})
	}
	c.Flags().StringVar(&since, "since", "", "only records from this long ago (e.g. 24h) or since this RFC 3339 time")
	c.Flags().StringVar(&who, "who", "", "only records of this identity, e.g. admin/alice or host/fe01.contoso.com")
	return c
}

// parseSince reads --since: a duration back from now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q: want a positive duration", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want a duration such as 24h or an RFC 3339 time such as 2026-01-02T15:04:05Z", s)
	}
	return t, nil
}

func newHost(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "host", Short: "Hosts: list their identities with expiry, revoke one, retry a rejected configuration"}
	c.AddCommand(newHostRetry(g))
	revoke := &cobra.Command{
		Use:   "revoke FQDN",
		Short: "Revoke a host's identity: its streams end at once and its certificate is refused from then on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := pb.NewHostIdentityServiceClient(conn).RevokeHost(ctx, &pb.RevokeHostRequest{Host: args[0]})
				if err != nil {
					return rpcError("revoke host "+args[0], err)
				}
				at := resp.GetRevokedAt().AsTime().UTC().Format(time.RFC3339)
				if resp.GetAlreadyRevoked() {
					fmt.Fprintf(g.out, "%s was already revoked at %s\n", termsafe.String(args[0]), at)
					return nil
				}
				fmt.Fprintf(g.out, "revoked %s at %s: its certificates issued until now are refused; enroll it again with a new join token\n", termsafe.String(args[0]), at)
				return nil
			})
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List host identities: expiry, last seen, revoked, deployment (or unassigned), connected",
		Args:  cobra.NoArgs,
	}
	listOut := addOutput(list, formatTable, formatJSON, formatYAML)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			resp, err := listHostIdentities(ctx, pb.NewHostIdentityServiceClient(conn))
			if err != nil {
				return rpcError("list host identities", err)
			}
			warnStale(cmd.ErrOrStderr(), resp.GetStale())
			return listOut.print(g.out, resp, func() error {
				t := newTable(g.out, "HOST", "DEPLOYMENT", "CONNECTED", "EXPIRES", "LAST SEEN", "REVOKED")
				ts := func(t interface{ AsTime() time.Time }, set bool) string {
					if !set {
						return "-"
					}
					return t.AsTime().UTC().Format(time.RFC3339)
				}
				for _, h := range resp.GetHosts() {
					dep := h.GetDeployment()
					if dep == "" {
						dep = "(unassigned)"
					}
					t.row(h.GetHost(), dep, yesNo(h.GetConnected()), ts(h.GetNotAfter(), h.NotAfter != nil), ts(h.GetLastSeen(), h.LastSeen != nil), ts(h.GetRevokedAt(), h.RevokedAt != nil))
				}
				return t.flush()
			})
		})
	}
	c.AddCommand(revoke, list)
	return c
}
