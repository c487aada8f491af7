package app

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/s2strust/s2strust/agent/syncer"
	"github.com/s2strust/s2strust/internal/metricshttp/metricstest"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// upToDate is a controller that tells every agent it has nothing new.
type upToDate struct {
	pb.UnimplementedAgentServiceServer
}

func (upToDate) Sync(stream pb.AgentService_SyncServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := stream.Send(&pb.SyncResponse{Message: &pb.SyncResponse_UpToDate{UpToDate: &pb.UpToDate{Version: first.GetHello().GetAppliedVersion()}}}); err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return nil
		}
	}
}

// TestRunServesMetrics runs the agent as `s2s-agent run --metrics-listen
// :0` does, against a controller on loopback, and scrapes its endpoint.
func TestRunServesMetrics(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterAgentServiceServer(gs, upToDate{})
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()

	ctx, cancel := context.WithCancel(context.Background())
	urls := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Controller: lis.Addr().String(), Insecure: true, Host: "fe01.contoso.com", Driver: "sim",
			StateDir: t.TempDir(), SimProducts: []string{"lync:2015"}, MetricsListen: ":0",
			MetricsReady: func(u string) { urls <- u }, Logger: slog.New(slog.DiscardHandler)})
	}()
	var url string
	select {
	case url = <-urls:
	case err := <-done:
		t.Fatalf("agent ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no metrics URL within 30s")
	}
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Errorf("metrics URL %s: --metrics-listen :0 should bind loopback", url)
	}
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var info, up, synced float64
		s, err := metricstest.Get(url)
		if err == nil {
			info, _ = s.Value("s2strust_agent_info", "host", "fe01.contoso.com", "driver", "sim", "version", syncer.Version)
			up, _ = s.Value("s2strust_agent_controller_connected")
			synced, _ = s.Value("s2strust_agent_last_successful_sync_timestamp_seconds")
			if info == 1 && up == 1 && synced > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent metrics (scrape error %v): info %v, connected %v, last sync %v; want 1, 1 and a time", err, info, up, synced)
		}
		<-tick.C
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("agent stopped with %v", err)
	}
}

func TestRunRefusesABadMetricsAddress(t *testing.T) {
	err := Run(context.Background(), Config{Controller: "127.0.0.1:1", Insecure: true, Host: "fe01.contoso.com", StateDir: t.TempDir(), MetricsListen: "localhost"})
	if err == nil || !strings.Contains(err.Error(), `--metrics-listen "localhost"`) {
		t.Errorf("Run with --metrics-listen localhost: %v, want an error naming the flag and value", err)
	}
}
