package syncer

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// drainingConn is a controller whose first stream answers the Hello with
// a Drain; it records when each stream was opened and calls onOpen.
type drainingConn struct {
	after  time.Duration
	mu     sync.Mutex
	opened []time.Time
	onOpen func(n int)
}

func (c *drainingConn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return status.Error(codes.Unimplemented, "no unary calls expected")
}

func (c *drainingConn) NewStream(ctx context.Context, _ *grpc.StreamDesc, _ string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	c.mu.Lock()
	c.opened = append(c.opened, time.Now())
	n := len(c.opened)
	c.mu.Unlock()
	c.onOpen(n)
	return &drainStream{ctx: ctx, after: c.after}, nil
}

type drainStream struct {
	ctx   context.Context
	after time.Duration
	sent  bool
}

func (s *drainStream) Header() (metadata.MD, error) { return nil, nil }
func (s *drainStream) Trailer() metadata.MD         { return nil }
func (s *drainStream) CloseSend() error             { return nil }
func (s *drainStream) Context() context.Context     { return s.ctx }
func (s *drainStream) SendMsg(any) error            { return nil }
func (s *drainStream) RecvMsg(m any) error {
	if s.sent {
		<-s.ctx.Done()
		return io.EOF
	}
	s.sent = true
	proto.Merge(m.(proto.Message), &pb.SyncResponse{Message: &pb.SyncResponse_Drain{Drain: &pb.Drain{
		ReconnectAfter: durationpb.New(s.after), Reason: "the controller is stopping"}}})
	return nil
}

// A Drain ends the stream, and the agent opens the next one when the
// controller said: not sooner, and not after its own (here an hour's)
// backoff.
func TestDrainReconnectsWhenTheControllerSays(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const after = 300 * time.Millisecond
	second := make(chan struct{})
	conn := &drainingConn{after: after, onOpen: func(n int) {
		if n == 2 {
			close(second)
		}
	}}
	a, err := New(Config{Host: "fe01.contoso.com", Conn: conn, Driver: &fakeDriver{}, StateDir: t.TempDir(),
		Logger:      slog.New(slog.DiscardHandler),
		BackoffBase: time.Hour, BackoffMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	done := runAgent(ctx, a)
	select {
	case <-second:
	case err := <-done:
		t.Fatalf("Run returned %v before reconnecting", err)
	case <-time.After(time.Minute):
		t.Fatal("no second stream within a minute of a Drain naming 300ms")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	conn.mu.Lock()
	defer conn.mu.Unlock()
	if gap := conn.opened[1].Sub(conn.opened[0]); gap < after {
		t.Errorf("reconnected %s after the drained stream opened; want at least the %s the Drain named", gap, after)
	}
}

func TestDrainedByClampsTheDelay(t *testing.T) {
	for _, c := range []struct {
		in, want time.Duration
	}{{-time.Second, 0}, {0, 0}, {2 * time.Second, 2 * time.Second}, {time.Hour, maxDrainDelay}} {
		if got := drainedBy(&pb.Drain{ReconnectAfter: durationpb.New(c.in)}).after; got != c.want {
			t.Errorf("Drain naming %s: reconnect in %s, want %s", c.in, got, c.want)
		}
	}
}
