package syncer

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// reportsServer is a controller's Sync end that hands on every status
// report it receives and answers nothing.
type reportsServer struct {
	pb.UnimplementedAgentServiceServer
	reports chan *pb.StatusReport
}

func (s *reportsServer) Sync(stream pb.AgentService_SyncServer) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return nil
		}
		if r := m.GetStatus(); r != nil {
			select {
			case s.reports <- r:
			case <-stream.Context().Done():
				return nil
			}
		}
	}
}

// TestClockStepIsReported steps the host's clock by ten minutes while
// nothing else changes, and checks that the agent reports at once, its
// report's clock showing the step: without it the controller would see
// the new offset only with the next report that differs (here: an hour
// later, at the next drift check).
func TestClockStepIsReported(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	rs := &reportsServer{reports: make(chan *pb.StatusReport, 16)}
	pb.RegisterAgentServiceServer(srv, rs)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///bufnet", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// A configuration applied before: the agent verifies and reports it at start.
	dir := t.TempDir()
	cfg := testConfig("2015")
	if _, err := saveState(dir, 1, topology.Hash(cfg), cfg); err != nil {
		t.Fatal(err)
	}
	var step atomic.Int64
	a, err := New(Config{Host: "fe01.contoso.com", Conn: conn, Driver: &fakeDriver{}, StateDir: dir,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:    func() time.Time { return time.Now().Add(time.Duration(step.Load())) },
		// Nothing else would report within the test.
		DriftInterval: time.Hour, ClockCheckInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(ctx, a)
	defer func() { cancel(); <-done }()

	// offset is how far the report's clock is ahead of the real one, as a
	// controller would measure it.
	next := func(what string) time.Duration {
		t.Helper()
		select {
		case r := <-rs.reports:
			return time.Until(r.GetClock().AsTime())
		case <-time.After(30 * time.Second):
			t.Fatalf("no status report %s within 30s", what)
		}
		return 0
	}
	if off := next("at start"); off > time.Second || off < -time.Second {
		t.Fatalf("first report's clock is %s off, want the real time", off)
	}
	step.Store(int64(10 * time.Minute))
	off := next("after the clock step")
	if off < 10*time.Minute-time.Second || off > 10*time.Minute+time.Second {
		t.Errorf("the report after a 10-minute step has its clock %s ahead, want 10m", off)
	}
	// A steady clock again: the next check finds no step, and a step back
	// is reported as well.
	step.Store(0)
	if off := next("after the step back"); off > time.Second || off < -time.Second {
		t.Errorf("the report after the step back has its clock %s off, want the real time", off)
	}
}

func TestClockWatch(t *testing.T) {
	var shift atomic.Int64
	w := newClockWatch(func() time.Time { return time.Now().Add(time.Duration(shift.Load())) })
	if s := w.check(); s > 100*time.Millisecond || s < -100*time.Millisecond {
		t.Errorf("steady clock: step %s, want about 0", s)
	}
	shift.Store(int64(-3 * time.Second))
	if s := w.check(); s > -3*time.Second+100*time.Millisecond || s < -3*time.Second-100*time.Millisecond {
		t.Errorf("clock set back 3s: step %s, want about -3s", s)
	}
	if s := w.check(); s > 100*time.Millisecond || s < -100*time.Millisecond {
		t.Errorf("after the step: step %s, want about 0 (each check starts afresh)", s)
	}
}
