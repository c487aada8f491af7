package cmd

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// newHostRetry is `host retry HOST`.
func newHostRetry(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "retry HOST",
		Short: "Send HOST its configuration again although it rejected it (NACK), once the cause is fixed on the host",
		Long: `Send HOST its desired configuration again although it rejected it.

Within one connection a rejected (NACKed) configuration is not pushed again, so a host is not sent
what it cannot apply over and over; a newer revision, a reconnect of the agent (after the cause
was fixed, e.g. a read-only disk) or this command sends it again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := pb.NewFleetServiceClient(conn).RetryHost(ctx, &pb.RetryHostRequest{Name: "hosts/" + args[0]})
				if err != nil {
					return rpcError("retry host "+args[0], err)
				}
				if resp.GetUpToDate() {
					fmt.Fprintf(g.out, "%s has its desired configuration applied: nothing to retry\n", safe(args[0]))
					return nil
				}
				fmt.Fprintf(g.out, "%s: version %d sent again (see `get hosts` for its answer)\n", safe(args[0]), resp.GetVersion())
				return nil
			})
		},
	}
}
