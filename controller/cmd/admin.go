package cmd

import (
	"bytes"
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

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
		Use:   "apply -f FILE|-",
		Short: "Validate a trust topology and store it as a new revision (prints the per-host plan)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			doc, err := readTopology(cmd.InOrStdin(), file)
			if err != nil {
				return err
			}
			rolloutName := ""
			if err := g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				req := &pb.ApplyTopologyRequest{Document: doc, Filename: topologyName(file), DryRun: dryRun, Immediate: immediate,
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
					return rpcError("apply "+fileLabel(file), err)
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
			return g.followRollout(cmd, rolloutName)
		},
	}
	c.Flags().BoolVar(&immediate, "immediate", false, "send the revision to every host at once instead of rolling it out (labs)")
	c.Flags().BoolVar(&wait, "wait", false, "follow the rollout; exit non-zero if it stops")
	c.Flags().BoolVar(&noCanary, "no-canary", false, "no canary wave (overrides the topology's rollout: section)")
	c.Flags().BoolVar(&manualGates, "manual-gates", false, "pause before every wave after the canary")
	c.Flags().Uint32Var(&maxUnavailable, "max-unavailable", 0, "hosts of a wave changing at once (default: the topology's, else 1)")
	c.Flags().Uint32Var(&failureThreshold, "failure-threshold", 0, "hosts of a wave that may fail before the rollout pauses")
	c.Flags().DurationVar(&bakeTime, "bake-time", 0, "how long a wave stays healthy before the next starts")
	c.Flags().StringVarP(&file, "file", "f", "", "topology file, YAML or JSON; - reads standard input (required)")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "show the per-host plan and store nothing")
	c.Flags().Int64Var(&expected, "expected-revision", -1, "apply only if the current version (the VERSION column of `get revisions`) is this one (0: none yet)")
	_ = c.MarkFlagRequired("file")
	return c
}

// stdinName is what -f - is called in messages and the Filename sent.
const stdinName = "(standard input)"

// topologyName is the Filename sent to the controller, which names it in
// its messages: the file's base name, or stdinName for "-".
func topologyName(file string) string {
	if file == "-" {
		return stdinName
	}
	return filepath.Base(file)
}

// fileLabel is how file is named in the command's own messages.
func fileLabel(file string) string {
	if file == "-" {
		return stdinName
	}
	return file
}

// readTopology reads a topology file, or standard input (in) when file is
// "-", refusing one over the topology size limit before reading it whole
// or sending it: over the gRPC message limit the controller could only
// answer a bare RESOURCE_EXHAUSTED.
func readTopology(in io.Reader, file string) ([]byte, error) {
	var r io.Reader = in
	var f *os.File
	if file != "-" {
		var err error
		if f, err = os.Open(file); err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, fmt.Errorf("read topology file %s: %w", file, err)
		}
		defer f.Close()
		r = f
	} else {
		file = stdinName
	}
	// One byte more than the limit tells a file over it from one at it,
	// whatever Stat says (a pipe has no size).
	doc, err := io.ReadAll(io.LimitReader(r, topology.MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("read topology %s: %w", file, err)
	}
	if len(doc) > topology.MaxDocumentSize {
		size := "more than " + strconv.Itoa(topology.MaxDocumentSize) + " bytes"
		if f != nil {
			if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
				size = strconv.FormatInt(fi.Size(), 10) + " bytes"
			}
		}
		return nil, fmt.Errorf("topology %s is %s; the limit is %d bytes (1 MiB)", file, size, topology.MaxDocumentSize)
	}
	if len(bytes.TrimSpace(doc)) == 0 {
		return nil, fmt.Errorf("topology %s is empty", file)
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
	c := &cobra.Command{Use: "get", Short: "Show the topology, its revisions, the hosts or one host"}
	var rev, version uint64
	topo := &cobra.Command{
		Use:   "topology",
		Short: "Print the current topology, or --revision N (or --version V)",
		Args:  cobra.NoArgs,
	}
	topoOut := addOutput(topo, formatYAML, formatJSON)
	topo.RunE = func(cmd *cobra.Command, _ []string) error {
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
			if topoOut.format == formatJSON {
				// The document itself, as the controller stores it.
				return topoOut.print(g.out, json.RawMessage(doc), nil)
			}
			y, err := jsonToYAML(doc)
			if err != nil {
				return err
			}
			// A valid topology holds nothing to escape; an older
			// revision stored before the value checks may.
			fmt.Fprintf(g.out, "# revision %d (version %d), applied %s by %s\n%s", resp.GetTopology().GetSequence(), resp.GetTopology().GetRevision(),
				resp.GetTopology().GetAppliedAt().AsTime().Format("2006-01-02 15:04:05Z07:00"), safe(resp.GetTopology().GetAppliedBy()), termsafe.Text(string(y)))
			return nil
		})
	}
	topo.Flags().Uint64Var(&rev, "revision", 0, "a stored revision by its number 1, 2, 3 … (the REVISION column of `get revisions`; default: current)")
	topo.Flags().Uint64Var(&version, "version", 0, "a stored revision by its version (the VERSION column of `get revisions`)")
	topo.MarkFlagsMutuallyExclusive("revision", "version")

	var deployment string
	hosts := &cobra.Command{
		Use:   "hosts [HOST]",
		Short: "List every host of the topology with its desired and applied version (with HOST: that host in detail, as get host)",
		Args:  cobra.MaximumNArgs(1),
	}
	hostsOut := addOutput(hosts, formatTable, formatJSON, formatYAML)
	hosts.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 1 {
			return g.getHost(cmd, args[0], hostsOut)
		}
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			resp, err := listHosts(ctx, pb.NewFleetServiceClient(conn), &pb.ListHostsRequest{Deployment: deployment})
			if err != nil {
				return rpcError("list hosts", err)
			}
			warnStale(cmd.ErrOrStderr(), resp.GetStale())
			return hostsOut.print(g.out, resp, func() error { return printHosts(g.out, resp.GetHosts()) })
		})
	}
	hosts.Flags().StringVar(&deployment, "deployment", "", "only the hosts of this deployment")

	host := &cobra.Command{
		Use:   "host HOST",
		Short: "Show one host in detail: its state, last answer, drift, clock and what it verified",
		Args:  cobra.ExactArgs(1),
	}
	hostOut := addOutput(host, formatTable, formatJSON, formatYAML)
	host.RunE = func(cmd *cobra.Command, args []string) error { return g.getHost(cmd, args[0], hostOut) }

	revs := &cobra.Command{
		Use:   "revisions",
		Short: "List stored topology revisions, newest first",
		Args:  cobra.NoArgs,
	}
	revsOut := addOutput(revs, formatTable, formatJSON, formatYAML)
	var revsLimit int
	revs.Flags().IntVar(&revsLimit, "limit", 0, "show only the newest N revisions (default: every one)")
	revs.RunE = func(cmd *cobra.Command, _ []string) error {
		if revsLimit < 0 {
			return fmt.Errorf("--limit %d: want 0 (every revision) or a positive number", revsLimit)
		}
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			resp, err := listRevisions(ctx, pb.NewTopologyServiceClient(conn), revsLimit)
			if err != nil {
				return rpcError("list revisions", err)
			}
			warnStale(cmd.ErrOrStderr(), resp.GetStale())
			return revsOut.print(g.out, resp, func() error { return printRevisions(g.out, resp.GetRevisions()) })
		})
	}
	c.AddCommand(topo, hosts, host, revs, newGetAudit(g))
	return c
}

// getHost prints one host in detail, refusing a host the topology does not
// have by name.
func (g *globals) getHost(cmd *cobra.Command, name string, o *output) error {
	return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
		details, stale, err := fetchStatusStale(ctx, pb.NewFleetServiceClient(conn), name)
		if err != nil {
			return err
		}
		warnStale(cmd.ErrOrStderr(), stale)
		d := details[0]
		return o.print(g.out, d.json(time.Now()), func() error {
			printHostDetail(g.out, d, time.Now())
			return nil
		})
	})
}
