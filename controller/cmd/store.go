package cmd

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func newStore(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "store", Short: "Maintain the controller's etcd store"}
	defrag := &cobra.Command{
		Use:   "defrag",
		Short: "Reclaim etcd space after its quota was exceeded: compact history, defragment, disarm the NOSPACE alarm",
		Long: "Reclaim the space of the controller's etcd database through the running controller: compact etcd's\n" +
			"history up to the current revision, defragment every member and disarm the NOSPACE alarm, so that\n" +
			"writes are accepted again. Safe to repeat. Against an external etcd the controller's etcd user needs\n" +
			"the right to maintain the cluster; otherwise run `etcdctl compact`, `etcdctl defrag` and\n" +
			"`etcdctl alarm disarm` there.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := pb.NewStoreServiceClient(conn).Defragment(ctx, &pb.DefragmentRequest{})
				if err != nil {
					return rpcError("store defrag", err)
				}
				fmt.Fprintf(g.out, "compacted etcd history up to revision %d\n", resp.GetCompactedRevision())
				for _, m := range resp.GetMembers() {
					fmt.Fprintf(g.out, "defragmented %s: %d -> %d bytes\n", m.GetEndpoint(), m.GetBeforeBytes(), m.GetAfterBytes())
				}
				fmt.Fprintf(g.out, "disarmed %d NOSPACE alarm(s)\n", resp.GetDisarmedAlarms())
				return nil
			})
		},
	}
	c.AddCommand(defrag)
	return c
}
