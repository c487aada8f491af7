package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// syncStream is the agent protocol's stream, the same for the controller
// and the floor: one method, a stream each way.
var syncStream = &grpc.StreamDesc{StreamName: "Sync", ServerStreams: true, ClientStreams: true}

// countdown closes done once add has been called want times.
type countdown struct {
	mu   sync.Mutex
	n    int
	want int
	done chan struct{}
}

func newCountdown(want int) *countdown {
	c := &countdown{want: want, done: make(chan struct{})}
	if want <= 0 {
		close(c.done)
	}
	return c
}

func (c *countdown) add() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if c.n == c.want {
		close(c.done)
	}
}

func (c *countdown) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// wait waits for the countdown, at most timeout.
func (c *countdown) wait(ctx context.Context, timeout time.Duration, what string) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w (%d of %d)", what, ctx.Err(), c.count(), c.want)
	case <-t.C:
		return fmt.Errorf("%s: only %d of %d after %s", what, c.count(), c.want, timeout)
	}
}

// agent is one simulated agent, in a child process. It is what the
// controller sees of a real one: its own TLS connection with its own host
// certificate (the controller authorizes a stream by the client
// certificate's host, so agents cannot share connections) and one Sync
// stream it reads, ACKing every Desired at once: no driver, nothing applied.
type agent struct {
	idx    int // the agent's number in the whole fleet
	host   string
	tls    *tls.Config
	method string // full method name of the Sync stream
	ev     *child

	appliedVersion uint64
	appliedHash    string
}

// run keeps one stream open, reconnecting as the real agent does
// (agent/syncer): exponential backoff from 500 ms to 30 s with full
// jitter, reset once the controller answered.
func (a *agent) run(ctx context.Context, addr string, delay time.Duration) {
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	// Each agent dials from its own loopback source address, so 2×N
	// connections over a restart never run out of ephemeral ports.
	local := &net.TCPAddr{IP: net.IPv4(127, byte(1+a.idx>>16), byte(a.idx>>8), byte(a.idx))}
	conn, err := grpc.NewClient(addr,
		// The real agent's transport options (agent/app).
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4<<20)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 2 * time.Minute, Timeout: 20 * time.Second, PermitWithoutStream: true}),
		grpc.WithInitialWindowSize(64<<10),
		grpc.WithInitialConnWindowSize(64<<10),
		grpc.WithTransportCredentials(credentials.NewTLS(a.tls)),
		grpc.WithContextDialer(func(ctx context.Context, target string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: local}
			return d.DialContext(ctx, "tcp", target)
		}),
	)
	if err != nil {
		return // only for a malformed address, which Run never passes
	}
	defer conn.Close()
	const base, maxDelay = 500 * time.Millisecond, 30 * time.Second
	attempt := 0
	for {
		// As agent/syncer: this loop, not gRPC's own reconnect backoff,
		// says when to dial again.
		conn.ResetConnectBackoff()
		connected, err := a.session(ctx, conn)
		if ctx.Err() != nil {
			return
		}
		if connected {
			attempt = 0
		}
		bound := min(base<<min(attempt, 16), maxDelay)
		attempt++
		delay := time.Duration(rand.Int64N(int64(bound) + 1))
		var drain drained
		if errors.As(err, &drain) {
			// As agent/syncer: when the controller said, without jitter.
			delay, attempt = min(max(time.Duration(drain), 0), 5*time.Minute), 0
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// session runs one stream until it fails; connected says whether the
// server answered at all.
func (a *agent) session(ctx context.Context, conn *grpc.ClientConn) (connected bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := conn.NewStream(sctx, syncStream, a.method)
	if err != nil {
		return false, err
	}
	hello := &pb.Hello{Host: a.host, AgentVersion: "bench", Driver: "sim", AppliedVersion: a.appliedVersion, AppliedHash: a.appliedHash}
	if err := stream.SendMsg(&pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: hello}}); err != nil {
		return false, err
	}
	for {
		resp := &pb.SyncResponse{}
		if err := stream.RecvMsg(resp); err != nil {
			return connected, err
		}
		if !connected {
			connected = true
			a.ev.emit(event{E: "answer", I: a.idx, T: time.Now().UnixNano()})
			if p, ok := peer.FromContext(stream.Context()); ok && resumed(p) {
				a.ev.emit(event{E: "resumed", I: a.idx})
			}
		}
		if dr := resp.GetDrain(); dr != nil {
			a.ev.emit(event{E: "drain", I: a.idx})
			return connected, drained(dr.GetReconnectAfter().AsDuration())
		}
		d := resp.GetDesired()
		if d == nil {
			continue // UpToDate
		}
		a.ev.emit(event{E: "desired", I: a.idx})
		ack := &pb.Ack{Version: d.GetVersion(), Nonce: d.GetNonce(), Hash: d.GetHash()}
		if err := stream.SendMsg(&pb.SyncRequest{Message: &pb.SyncRequest_Ack{Ack: ack}}); err != nil {
			return connected, err
		}
		a.appliedVersion, a.appliedHash = d.GetVersion(), d.GetHash()
	}
}

// resumed says whether the stream's connection resumed a TLS session.
func resumed(p *peer.Peer) bool {
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	return ok && info.State.DidResume
}

// drained ends a session the controller drained: reconnect after it.
type drained time.Duration

func (d drained) Error() string { return fmt.Sprintf("drained: reconnect in %s", time.Duration(d)) }

// errNoAgents is returned for a configuration without agents.
var errNoAgents = errors.New("bench: Agents must be at least 1")
