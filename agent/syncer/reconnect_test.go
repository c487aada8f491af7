package syncer

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// openedServer is a controller's Sync end that signals each stream it is
// opened and answers nothing.
type openedServer struct {
	pb.UnimplementedAgentServiceServer
	opened chan struct{}
}

func (s *openedServer) Sync(stream pb.AgentService_SyncServer) error {
	select {
	case s.opened <- struct{}{}:
	default:
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return nil
		}
	}
}

// TestReconnectDialsAtTheAgentsPace has the controller refuse the first
// dials, as the port of a controller still restarting does, and checks
// that every retry of the agent's own (here within milliseconds) dials
// again. gRPC's connection would otherwise wait out its own backoff
// between dials, 1 s growing 1.6-fold (26 s for six refusals), failing the
// agent's attempts meanwhile without dialing: the fleet an agent restart
// drained would come back long after the controller it was told to wait
// for.
func TestReconnectDialsAtTheAgentsPace(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	ctrl := &openedServer{opened: make(chan struct{}, 1)}
	pb.RegisterAgentServiceServer(srv, ctrl)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	const refused = 6
	var dials atomic.Int64
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			if dials.Add(1) <= refused {
				return nil, errors.New("connection refused")
			}
			return lis.DialContext(ctx)
		}),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	a, err := New(Config{Host: "fe01.contoso.com", Conn: conn, Driver: &fakeDriver{}, StateDir: t.TempDir(),
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		BackoffBase: time.Millisecond, BackoffMax: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(ctx, a)
	defer func() { cancel(); <-done }()
	// Far less than gRPC's own backoff over six refusals (26 s), far more
	// than the agent's (at most 6 × 20 ms).
	const within = 10 * time.Second
	select {
	case <-ctrl.opened:
	case <-time.After(within):
		t.Fatalf("after %d refused dials the agent had not opened its stream within %s (%d dials so far): its retries did not dial", refused, within, dials.Load())
	}
}
