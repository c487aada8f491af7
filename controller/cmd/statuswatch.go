package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// watchStatus is `status -w`: the hosts table once the controller's
// WatchHosts snapshot is complete, then, as hosts change, a timestamped
// table of only the hosts that changed, until interrupted. host, when
// set, shows that host only.
func (g *globals) watchStatus(cmd *cobra.Command, host string) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	host = strings.ToLower(strings.TrimSpace(host))
	stream, err := pb.NewFleetServiceClient(conn).WatchHosts(ctx, &pb.WatchHostsRequest{})
	if err != nil {
		return rpcError("watch hosts", err)
	}
	return followHosts(g.out, cmd.ErrOrStderr(), host, func() (*pb.WatchHostsResponse, error) { return stream.Recv() }, ctx.Err)
}

// followHosts prints what recv returns (see watchStatus) until the
// stream ends; it ends without error when the caller was interrupted.
func followHosts(out, errw io.Writer, only string, recv func() (*pb.WatchHostsResponse, error), interrupted func() error) error {
	var initial []*pb.Host
	synced, stale := false, false
	for {
		m, err := recv()
		if err != nil {
			if interrupted() != nil || status.Code(err) == codes.Canceled {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return errors.New("watch hosts: the controller ended the stream")
			}
			return rpcError("watch hosts", err)
		}
		stale = warnStaleChange(errw, stale, m.GetStale())
		hosts := slices.DeleteFunc(m.GetHosts(), func(h *pb.Host) bool { return only != "" && h.GetHost() != only })
		if !synced {
			initial = append(initial, hosts...)
			if !m.GetInitialComplete() {
				continue
			}
			synced = true
			fmt.Fprintf(out, "%s %s\n", time.Now().Format(time.TimeOnly), watchSummary(initial))
			printHosts(out, initial)
			continue
		}
		for _, name := range m.GetRemoved() {
			if h := strings.TrimPrefix(name, "hosts/"); only == "" || h == only {
				fmt.Fprintf(out, "%s %s left the topology\n", time.Now().Format(time.TimeOnly), safe(h))
			}
		}
		if len(hosts) > 0 {
			fmt.Fprintf(out, "%s %s changed:\n", time.Now().Format(time.TimeOnly), count(len(hosts), "host"))
			printHosts(out, hosts)
		}
	}
}

// watchSummary is one line about a set of hosts.
func watchSummary(hosts []*pb.Host) string {
	connected, current, nacked := 0, 0, 0
	for _, h := range hosts {
		if h.GetConnected() {
			connected++
		}
		if h.GetDesiredVersion() != 0 && h.GetAppliedVersion() == h.GetDesiredVersion() && h.GetAppliedHash() == h.GetDesiredHash() {
			current++
		}
		if h.GetLastResult().GetKind() == pb.ResultKind_RESULT_KIND_NACK {
			nacked++
		}
	}
	return fmt.Sprintf("%s: %d connected, %d applied their desired state, %d NACKing (following changes; Ctrl-C ends)", count(len(hosts), "host"), connected, current, nacked)
}
