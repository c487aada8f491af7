package cmd

import (
	"context"
	"errors"
	"fmt"

	"github.com/pmezard/go-difflib/difflib"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/internal/termsafe"
	"github.com/s2strust/s2strust/internal/topology"
	"github.com/s2strust/s2strust/internal/version"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// exitDiff is diff's exit code when the file differs from the current
// revision, as kubectl diff exits 1.
const exitDiff = 1

func newDiff(g *globals) *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "diff -f FILE|-",
		Short: "Show how a topology file differs from the current revision: the document and the per-host plan (exit 1 when it differs)",
		Long: `Show how FILE differs from the topology revision the controller holds now: a unified diff of
the two canonical documents, then the per-host plan applying FILE would make (as apply --dry-run).
Nothing is stored. Exits 0 when nothing differs, 1 when something does (like kubectl diff), and
with another code on an error, e.g. an invalid file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			doc, err := readTopology(cmd.InOrStdin(), file)
			if err != nil {
				return err
			}
			next, err := topology.Load(topologyName(file), doc)
			if err != nil {
				return err
			}
			want, err := next.YAML()
			if err != nil {
				return err
			}
			var differs bool
			err = g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				have, rev, err := currentYAML(ctx, conn)
				if err != nil {
					return err
				}
				text, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
					A: difflib.SplitLines(string(have)), B: difflib.SplitLines(string(want)),
					FromFile: fmt.Sprintf("revision %d", rev), ToFile: fileLabel(file), Context: 3,
				})
				if err != nil {
					return fmt.Errorf("diff %s: %w", fileLabel(file), err)
				}
				fmt.Fprint(g.out, termsafe.Text(text))
				resp, err := pb.NewTopologyServiceClient(conn).ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: doc, Filename: topologyName(file), DryRun: true})
				if err != nil {
					return rpcError("diff "+fileLabel(file), err)
				}
				printPlan(g.out, resp)
				printWarnings(g.out, resp.GetWarnings())
				differs = text != "" || resp.GetHostsChanged() > 0
				return nil
			})
			if err != nil {
				return err
			}
			if differs {
				return &exitError{code: exitDiff, err: fmt.Errorf("%s differs from the current revision", fileLabel(file))}
			}
			fmt.Fprintf(g.out, "%s is the current revision: nothing differs\n", fileLabel(file))
			return nil
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "topology file (YAML or JSON); - reads standard input")
	_ = c.MarkFlagRequired("file")
	return c
}

// currentYAML is the current revision's canonical YAML and its sequence
// number; empty (revision 0) before the first apply.
func currentYAML(ctx context.Context, conn *grpc.ClientConn) ([]byte, uint64, error) {
	resp, err := pb.NewTopologyServiceClient(conn).GetTopology(ctx, &pb.GetTopologyRequest{})
	if status.Code(err) == codes.NotFound {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, rpcError("get the current topology", err)
	}
	cur, err := topology.Load("current", []byte(resp.GetTopology().GetDocument()))
	if err != nil {
		return nil, 0, errors.Join(errors.New("the stored revision does not load"), err)
	}
	y, err := cur.YAML()
	return y, resp.GetTopology().GetSequence(), err
}

func newVersion(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "version",
		Short: "Print the controller's version",
		Args:  cobra.NoArgs,
	}
	o := addOutput(c, formatTable, formatJSON, formatYAML)
	c.RunE = func(*cobra.Command, []string) error {
		info := version.Get("s2s-controller")
		return o.print(g.out, info, func() error {
			_, err := fmt.Fprintln(g.out, info)
			return err
		})
	}
	return c
}
