package syncer

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// downConn is a controller that cannot be reached: every stream fails to
// open. It counts the attempts and calls onAttempt with each count.
type downConn struct {
	attempts  atomic.Int64
	mu        sync.Mutex
	methods   map[string]int
	onAttempt func(n int64)
}

func (c *downConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return status.Error(codes.Unimplemented, "no unary calls expected")
}

func (c *downConn) NewStream(_ context.Context, _ *grpc.StreamDesc, method string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	c.mu.Lock()
	if c.methods == nil {
		c.methods = map[string]int{}
	}
	c.methods[method]++
	c.mu.Unlock()
	n := c.attempts.Add(1)
	if c.onAttempt != nil {
		c.onAttempt(n)
	}
	return nil, status.Error(codes.Unavailable, "connection refused")
}

// fakeDriver has nothing installed and nothing to change.
type fakeDriver struct{ detects atomic.Int64 }

func (d *fakeDriver) Name() string { return "fake" }
func (d *fakeDriver) Detect(context.Context) ([]*pb.DetectedProduct, error) {
	d.detects.Add(1)
	return nil, nil
}
func (d *fakeDriver) Apply(context.Context, *pb.HostConfig, []*pb.SecretMaterial) []*pb.ItemError {
	return nil
}
func (d *fakeDriver) Verify(context.Context, *pb.HostConfig) (*pb.StatusReport, error) {
	return &pb.StatusReport{}, nil
}

// lineSignal is a log destination that closes fired at the first line
// containing want.
type lineSignal struct {
	want  []byte
	once  sync.Once
	fired chan struct{}
}

func (w *lineSignal) Write(p []byte) (int, error) {
	if bytes.Contains(p, w.want) {
		w.once.Do(func() { close(w.fired) })
	}
	return len(p), nil
}

// runAgent runs a in a goroutine; the channel receives what Run returns.
func runAgent(ctx context.Context, a *Agent) <-chan error {
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return done
}

func TestReconnectKeepsRetrying(t *testing.T) {
	const attempts = 50
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The controller stays down; the agent is stopped on the 50th attempt.
	conn := &downConn{onAttempt: func(n int64) {
		if n == attempts {
			cancel()
		}
	}}
	drv := &fakeDriver{}
	a, err := New(Config{Host: "fe01.contoso.com", Conn: conn, Driver: drv, StateDir: t.TempDir(),
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		BackoffBase: time.Microsecond, BackoffMax: 10 * time.Microsecond})
	if err != nil {
		t.Fatal(err)
	}
	// With the default bounds (500ms up to 30s) fifty attempts would take
	// many minutes: finishing within the deadline shows the bounds are used.
	select {
	case err := <-runAgent(ctx, a):
		if err != nil {
			t.Fatalf("Run = %v; want nil after the context ends", err)
		}
	case <-time.After(time.Minute):
		t.Fatalf("agent made %d attempts in a minute; want %d", conn.attempts.Load(), attempts)
	}
	if got := conn.attempts.Load(); got != attempts {
		t.Errorf("attempts = %d; want exactly %d (none after the context ended)", got, attempts)
	}
	if got := conn.methods["/s2strust.v1.AgentService/Sync"]; got != attempts {
		t.Errorf("Sync streams opened = %d (methods %v); want %d", got, conn.methods, attempts)
	}
	if n := drv.detects.Load(); n != 0 {
		t.Errorf("Detect ran %d times without a stream", n)
	}
	if n := a.Sessions(); n != 0 {
		t.Errorf("Sessions = %d; the controller never answered", n)
	}
}

func TestReconnectStopsWhileWaiting(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn := &downConn{}
	logs := &lineSignal{want: []byte("reconnecting"), fired: make(chan struct{})}
	// An hour's backoff: the agent is certainly waiting when it is stopped,
	// so only a wait that watches the context lets Run return.
	a, err := New(Config{Host: "fe01.contoso.com", Conn: conn, Driver: &fakeDriver{}, StateDir: t.TempDir(),
		Logger:      slog.New(slog.NewTextHandler(logs, nil)),
		BackoffBase: time.Hour, BackoffMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	done := runAgent(ctx, a)
	select {
	case <-logs.fired:
	case err := <-done:
		t.Fatalf("Run returned %v before the first retry", err)
	case <-time.After(time.Minute):
		t.Fatal("the agent did not log a reconnect within a minute")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v; want nil after the context ends", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of the context ending while waiting to reconnect")
	}
}

// driftingDriver reports one item not as applied while drifted is set and
// counts Apply calls.
type driftingDriver struct {
	fakeDriver
	drifted atomic.Bool
	applies atomic.Int64
}

func (d *driftingDriver) Apply(context.Context, *pb.HostConfig, []*pb.SecretMaterial) []*pb.ItemError {
	d.applies.Add(1)
	return nil
}

func (d *driftingDriver) Verify(context.Context, *pb.HostConfig) (*pb.StatusReport, error) {
	if d.drifted.Load() {
		return &pb.StatusReport{Items: []*pb.ItemStatus{{Item: "partner/microsoft.exchange", State: pb.ItemState_ITEM_STATE_FAILED, Message: "partner missing"}}}, nil
	}
	return &pb.StatusReport{Items: []*pb.ItemStatus{{Item: "partner/microsoft.exchange", State: pb.ItemState_ITEM_STATE_OK}}}, nil
}

// countingLog counts log lines containing want.
type countingLog struct {
	want []byte
	n    atomic.Int64
}

func (w *countingLog) Write(p []byte) (int, error) {
	if bytes.Contains(p, w.want) {
		w.n.Add(1)
	}
	return len(p), nil
}

// TestAutoCorrectOnASecondaryLeavesItToThePrimary checks that a host that
// is not its deployment's primary does not try to correct drift (its Apply
// changes no deployment-scope setting), says so once per drift and notes it
// in its report; the primary corrects.
func TestAutoCorrectOnASecondaryLeavesItToThePrimary(t *testing.T) {
	for _, primary := range []bool{false, true} {
		dir := t.TempDir()
		cfg := testConfig("2015")
		cfg.Primary = primary
		if _, err := saveState(dir, 1, "h1", cfg); err != nil {
			t.Fatal(err)
		}
		drv := &driftingDriver{}
		logs := &countingLog{want: []byte("not its deployment's primary")}
		a, err := New(Config{Host: cfg.GetHost(), Conn: &downConn{}, Driver: drv, StateDir: dir, AutoCorrect: true,
			Logger: slog.New(slog.NewTextHandler(logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		drv.drifted.Store(true)
		for range 3 {
			a.checkDrift(context.Background())
		}
		if !primary {
			if n := drv.applies.Load(); n != 0 {
				t.Errorf("secondary: Apply ran %d times for drift the primary corrects", n)
			}
			if n := logs.n.Load(); n != 1 {
				t.Errorf("secondary: said %d times that the primary corrects, want once", n)
			}
			d := a.last.GetDrift()
			if len(d) != 1 || d[0].GetExpected() != leftToPrimaryNote || d[0].GetCorrected() {
				t.Errorf("secondary: reported drift %v, want one uncorrected item noting the primary", d)
			}
			// Drift gone, then back: said once more.
			drv.drifted.Store(false)
			a.checkDrift(context.Background())
			drv.drifted.Store(true)
			a.checkDrift(context.Background())
			if n := logs.n.Load(); n != 2 {
				t.Errorf("secondary: said %d times over two drifts, want twice", n)
			}
			continue
		}
		if n := drv.applies.Load(); n != 3 {
			t.Errorf("primary: Apply ran %d times for 3 drift checks, want 3", n)
		}
		if n := logs.n.Load(); n != 0 {
			t.Errorf("primary: said %d times that another host corrects", n)
		}
	}
}
