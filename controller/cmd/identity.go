package cmd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func newToken(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "token", Short: "Join tokens: one-time credentials with which a new host enrolls"}
	var host, output string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --host FQDN",
		Short: "Make a single-use join token for one host (prints the token and the CA pin)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := pb.NewJoinTokenServiceClient(conn).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Host: host, Ttl: durationpb.New(ttl)})
				if err != nil {
					return rpcError("create join token for "+host, err)
				}
				if output == "json" {
					b, _ := protojson.MarshalOptions{Indent: "  "}.Marshal(resp)
					fmt.Fprintf(g.out, "%s\n", b)
					return nil
				}
				fmt.Fprintf(g.out, "join token for %s, valid once until %s:\n  token:  %s\n  ca pin: %s\n", resp.GetHost(),
					resp.GetExpiresAt().AsTime().UTC().Format(time.RFC3339), resp.GetToken(), resp.GetCaPin())
				fmt.Fprintf(g.out, "on the host:\n  s2s-agent enroll --controller ADDR --host %s --token %s --ca-pin %s --state-dir DIR\n",
					resp.GetHost(), resp.GetToken(), resp.GetCaPin())
				return nil
			})
		},
	}
	create.Flags().StringVar(&host, "host", "", "the host's FQDN (required)")
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid (at most 24h)")
	create.Flags().StringVarP(&output, "output", "o", "text", "text or json")
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
