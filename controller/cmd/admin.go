package cmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/goccy/go-yaml"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/termsafe"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// rpcError turns a gRPC error into a readable one. Invalid input already
// lists every violation, with its file position, in the status message;
// an unreachable controller gets a hint about where it should be.
func rpcError(what string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return &exitError{code: 1, err: fmt.Errorf("%s: %w", termsafe.Text(what), err)}
	}
	// The message may quote what an agent, a metadata server or a file said.
	msg := fmt.Sprintf("%s: %s: %s", termsafe.Text(what), st.Code(), termsafe.Text(st.Message()))
	if st.Code() == codes.Unauthenticated && strings.Contains(st.Message(), "no verified client certificate") {
		// The TLS client sends a certificate only if the controller's CA
		// list names its issuer, so a foreign one never arrives.
		msg += "\n(the controller got no client certificate it trusts: --cert is from another CA than the controller's, or none was given)"
	}
	if st.Code() == codes.Unavailable {
		switch why := tlsProblem(st.Message()); {
		case why != "":
			msg = fmt.Sprintf("%s: %s", termsafe.Text(what), termsafe.Text(why))
		case strings.Contains(st.Message(), "connection"):
			msg += "\n(is `s2s-controller serve` running for this --data-dir? or pass --controller ADDR)"
		}
	}
	return &exitError{code: 1, err: errors.New(msg)}
}

// tlsProblem picks out of an UNAVAILABLE status what the client's TLS
// handshake found wrong: the explanation pki.ClientCredentials put into the
// handshake error, or the controller's refusal of our own certificate,
// which TLS 1.3 reports only after the handshake, as an alert.
func tlsProblem(msg string) string {
	if i := strings.Index(msg, "tls handshake with "); i >= 0 {
		return strings.TrimRight(msg[i:], `"`)
	}
	if strings.Contains(msg, "remote error: tls:") {
		return pki.ExplainTLSError(errors.New(msg))
	}
	// The alert can lose the race with the closing connection; what is
	// left is a reset connection right after a completed handshake.
	for _, s := range []string{"broken pipe", "connection reset by peer", "error reading server preface: EOF"} {
		if strings.Contains(msg, s) {
			return "the controller closed the connection right after the TLS handshake (" + s + "): it most likely refused this client's certificate (expired, revoked or from another CA); its log says which"
		}
	}
	return ""
}

func newApply(g *globals) *cobra.Command {
	var file string
	var dryRun bool
	var expected int64
	var immediate, wait, noCanary, manualGates bool
	var maxUnavailable, failureThreshold uint32
	var bakeTime time.Duration
	c := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Validate a trust topology and store it as a new revision (prints the per-host plan)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			doc, err := readTopology(file)
			if err != nil {
				return err
			}
			rolloutName := ""
			if err := g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				req := &pb.ApplyTopologyRequest{Document: doc, Filename: filepath.Base(file), DryRun: dryRun, Immediate: immediate,
					Rollout: &pb.RolloutStrategy{MaxUnavailable: maxUnavailable, FailureThreshold: failureThreshold, ManualGates: manualGates}}
				if noCanary {
					req.Rollout.Canary = proto.Bool(false)
				}
				if cmd.Flags().Changed("bake-time") {
					req.Rollout.BakeTime = durationpb.New(bakeTime)
				}
				if expected >= 0 {
					e := uint64(expected)
					req.ExpectedRevision = &e
				}
				resp, err := pb.NewTopologyServiceClient(conn).ApplyTopology(ctx, req)
				if err != nil {
					return rpcError("apply "+file, err)
				}
				printPlan(g.out, resp)
				printWarnings(g.out, resp.GetWarnings())
				rolloutName = resp.GetRollout()
				switch {
				case dryRun && resp.GetRevision() == 0:
					fmt.Fprintln(g.out, "dry run: nothing stored (current revision 0)")
				case dryRun:
					fmt.Fprintf(g.out, "dry run: nothing stored (current revision %d, version %d)\n", resp.GetSequence(), resp.GetRevision())
				case resp.GetChanged():
					fmt.Fprintf(g.out, "applied: revision %d (version %d)\n", resp.GetSequence(), resp.GetRevision())
				default:
					fmt.Fprintf(g.out, "unchanged: revision %d (version %d) is already this topology\n", resp.GetSequence(), resp.GetRevision())
				}
				if resp.GetRollout() != "" {
					fmt.Fprintf(g.out, "rollout: %s (s2s-controller rollout status %s -w)\n", resp.GetRollout(), strings.TrimPrefix(resp.GetRollout(), "rollouts/"))
				}
				return nil
			}); err != nil || !wait || rolloutName == "" {
				return err
			}
			return g.followRollout(cmd, rolloutName, false)
		},
	}
	c.Flags().BoolVar(&immediate, "immediate", false, "send the revision to every host at once instead of rolling it out (labs)")
	c.Flags().BoolVar(&wait, "wait", false, "follow the rollout; exit non-zero if it stops")
	c.Flags().BoolVar(&noCanary, "no-canary", false, "no canary wave (overrides the topology's rollout: section)")
	c.Flags().BoolVar(&manualGates, "manual-gates", false, "pause before every wave after the canary")
	c.Flags().Uint32Var(&maxUnavailable, "max-unavailable", 0, "hosts of a wave changing at once (default: the topology's, else 1)")
	c.Flags().Uint32Var(&failureThreshold, "failure-threshold", 0, "hosts of a wave that may fail before the rollout pauses")
	c.Flags().DurationVar(&bakeTime, "bake-time", 0, "how long a wave stays healthy before the next starts")
	c.Flags().StringVarP(&file, "file", "f", "", "topology file, YAML or JSON (required)")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "show the per-host plan and store nothing")
	c.Flags().Int64Var(&expected, "expected-revision", -1, "apply only if the current version (the VERSION column of `get revisions`) is this one (0: none yet)")
	_ = c.MarkFlagRequired("file")
	return c
}

// readTopology reads a topology file, refusing one over the topology size
// limit before reading it whole or sending it: over the gRPC message limit
// the controller could only answer a bare RESOURCE_EXHAUSTED.
func readTopology(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	defer f.Close()
	// One byte more than the limit tells a file over it from one at it,
	// whatever Stat says (a pipe has no size).
	doc, err := io.ReadAll(io.LimitReader(f, topology.MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("read topology %s: %w", file, err)
	}
	if len(doc) > topology.MaxDocumentSize {
		size := "more than " + strconv.Itoa(topology.MaxDocumentSize) + " bytes"
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			size = strconv.FormatInt(fi.Size(), 10) + " bytes"
		}
		return nil, fmt.Errorf("topology %s is %s; the limit is %d bytes (1 MiB)", file, size, topology.MaxDocumentSize)
	}
	return doc, nil
}

// versionOfRevision finds the version of the revision operators number n,
// paging through the revisions newest first.
func versionOfRevision(ctx context.Context, client pb.TopologyServiceClient, n uint64) (uint64, error) {
	req := &pb.ListTopologyRevisionsRequest{PageSize: 1000}
	for {
		resp, err := client.ListTopologyRevisions(ctx, req)
		if err != nil {
			return 0, rpcError("list revisions", err)
		}
		revs := resp.GetRevisions()
		for _, r := range revs {
			if r.GetSequence() == n {
				return r.GetRevision(), nil
			}
		}
		if resp.GetNextPageToken() == "" || len(revs) == 0 || revs[len(revs)-1].GetSequence() < n {
			return 0, fmt.Errorf("--revision %d: no such revision (see `get revisions`)", n)
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

func newGet(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "get", Short: "Show the topology, its revisions or the hosts"}
	var rev, version uint64
	var output string
	topo := &cobra.Command{
		Use:   "topology",
		Short: "Print the current topology, or --revision N (or --version V)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				client := pb.NewTopologyServiceClient(conn)
				if rev > 0 {
					v, err := versionOfRevision(ctx, client, rev)
					if err != nil {
						return err
					}
					version = v
				}
				resp, err := client.GetTopology(ctx, &pb.GetTopologyRequest{Revision: version})
				if err != nil {
					return rpcError("get topology", err)
				}
				warnStale(cmd.ErrOrStderr(), resp.GetStale())
				doc := []byte(resp.GetTopology().GetDocument())
				switch output {
				case "json":
					var v any
					if err := json.Unmarshal(doc, &v); err != nil {
						return err
					}
					b, _ := json.MarshalIndent(v, "", "  ")
					fmt.Fprintf(g.out, "%s\n", termsafe.Text(string(b)))
				case "yaml", "":
					y, err := yaml.JSONToYAML(doc)
					if err != nil {
						return err
					}
					// A valid topology holds nothing to escape; an older
					// revision stored before the value checks may.
					fmt.Fprintf(g.out, "# revision %d (version %d), applied %s by %s\n%s", resp.GetTopology().GetSequence(), resp.GetTopology().GetRevision(),
						resp.GetTopology().GetAppliedAt().AsTime().Format("2006-01-02 15:04:05Z07:00"), safe(resp.GetTopology().GetAppliedBy()), termsafe.Text(string(y)))
				default:
					return fmt.Errorf("-o %q: want yaml or json", output)
				}
				return nil
			})
		},
	}
	topo.Flags().Uint64Var(&rev, "revision", 0, "a stored revision by its number 1, 2, 3 … (the REVISION column of `get revisions`; default: current)")
	topo.Flags().Uint64Var(&version, "version", 0, "a stored revision by its version (the VERSION column of `get revisions`)")
	topo.MarkFlagsMutuallyExclusive("revision", "version")
	topo.Flags().StringVarP(&output, "output", "o", "yaml", "yaml or json")

	var hostsOut string
	hosts := &cobra.Command{
		Use:   "hosts",
		Short: "List every host of the topology with its desired and applied version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := listHosts(ctx, pb.NewFleetServiceClient(conn), &pb.ListHostsRequest{})
				if err != nil {
					return rpcError("list hosts", err)
				}
				warnStale(cmd.ErrOrStderr(), resp.GetStale())
				switch hostsOut {
				case "json":
					b, _ := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(resp)
					// Inside JSON strings the escapes are JSON's own: same data.
					fmt.Fprintf(g.out, "%s\n", termsafe.Text(string(b)))
				case "table", "":
					printHosts(g.out, resp.GetHosts())
				default:
					return fmt.Errorf("-o %q: want table or json", hostsOut)
				}
				return nil
			})
		},
	}
	hosts.Flags().StringVarP(&hostsOut, "output", "o", "table", "table or json")

	revs := &cobra.Command{
		Use:   "revisions",
		Short: "List stored topology revisions, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := pb.NewTopologyServiceClient(conn).ListTopologyRevisions(ctx, &pb.ListTopologyRevisionsRequest{})
				if err != nil {
					return rpcError("list revisions", err)
				}
				printRevisions(g.out, resp.GetRevisions())
				return nil
			})
		},
	}
	c.AddCommand(topo, hosts, revs, newGetAudit(g))
	return c
}

// Exit codes of status.
const (
	// exitTrust: a trust edge is not working.
	exitTrust = 3
	// exitDrift: a host's actual state moved away from what it applied.
	exitDrift = 4
)

func newStatus(g *globals) *cobra.Command {
	var trust, plan, watch bool
	var host string
	c := &cobra.Command{
		Use:   "status",
		Short: "Per host: desired and applied version, last ack or nack, and what the host verified",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if watch {
				if trust || plan {
					return errors.New("-w follows the hosts: it takes neither --trust nor --plan")
				}
				return g.watchStatus(cmd, host)
			}
			return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				fleet := pb.NewFleetServiceClient(conn)
				if trust && (plan || host != "") {
					return errors.New("--trust shows every edge: it takes neither --plan nor --host")
				}
				if trust {
					rep, err := trustReport(ctx, fleet)
					if err != nil {
						return rpcError("trust report", err)
					}
					hosts, err := listHosts(ctx, fleet, &pb.ListHostsRequest{})
					if err != nil {
						return rpcError("list hosts", err)
					}
					warnStale(cmd.ErrOrStderr(), stalest(rep.GetStale(), hosts.GetStale()))
					printTrust(g.out, rep.GetEdges())
					printDrift(g.out, hosts.GetHosts())
					fmt.Fprintln(g.out)
					printRealms(g.out, rep.GetRealms())
					printExpiryWarnings(g.out, rep.GetRealms())
					for _, e := range rep.GetEdges() {
						if !e.GetOk() {
							return &exitError{code: exitTrust, err: fmt.Errorf("trust edge %s → %s is not working", safe(e.GetFrom()), safe(e.GetTo()))}
						}
					}
					return driftError(hosts.GetHosts())
				}
				details, err := fetchStatus(ctx, fleet, host)
				if err != nil {
					return err
				}
				if plan {
					printPlans(g.out, details)
					return nil
				}
				printStatus(g.out, details)
				rep, err := trustReport(ctx, fleet)
				if err != nil {
					return rpcError("trust report", err)
				}
				// Built from the same view as the hosts: stale when they are.
				warnStale(cmd.ErrOrStderr(), rep.GetStale())
				printExpiryWarnings(g.out, rep.GetRealms())
				hosts := make([]*pb.Host, 0, len(details))
				for _, d := range details {
					hosts = append(hosts, d.host)
				}
				return driftError(hosts)
			})
		},
	}
	c.Long = fmt.Sprintf(`Per host: desired and applied version, last ack or nack, drift, realms and what the host verified.
With --trust: one row per trust edge, then every host's drift and each deployment's realms.
Both warn of a token-issuer certificate (Lync's OAuthTokenIssuer, Exchange's auth certificate,
SharePoint's STS certificate) that expires within 60 days, and more urgently within 30.

With --plan: per host, the operations its agent reported: for an agent in monitor mode
(s2s-agent run --apply=false) the exact cmdlets it would run, otherwise those it last ran,
each with its item, reason and whether it is primary-only or disruptive; secrets redacted.
--host shows one host only.

Exits %d when a trust edge is not working (--trust), %d when a host has drift that was not corrected.`, exitTrust, exitDrift)
	c.Flags().BoolVar(&trust, "trust", false, "one row per trust edge: registration, keys, realms, expiry, clock skew and the probe result")
	c.Flags().BoolVar(&plan, "plan", false, "per host, the operations its agent would execute (monitor mode) or last executed")
	c.Flags().StringVar(&host, "host", "", "show this host only")
	c.Flags().BoolVarP(&watch, "watch", "w", false, "follow the hosts live (WatchHosts): the table, then each change, until interrupted")
	return c
}
