package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// sideLabel is the pprof label every simulated agent's goroutines carry
// (goroutines inherit labels), so the memory measurement can tell them
// from the server's.
const sideLabel = "s2s_bench_side"

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

// fleet is N simulated agents. Each is one TLS connection with its own
// host certificate (the controller authorizes a stream by the client
// certificate's host, so agents cannot share connections) and one
// goroutine that reads the stream and ACKs every Desired at once: no
// driver, nothing applied.
type fleet struct {
	method string // full method name of the Sync stream
	agents []*agent

	mu sync.Mutex
	// answered counts agents whose stream got its first answer since the
	// last expectAnswers.
	answered *countdown
	epoch    int64
	// acked counts agents that ACKed a Desired newer than after since the
	// last expectAcks.
	acked *countdown
	after uint64

	desired atomic.Int64 // Desired messages received, all agents

	cancel context.CancelFunc
	group  *errgroup.Group
}

// agent is one simulated agent.
type agent struct {
	f    *fleet
	idx  int
	host string
	tls  *tls.Config

	mu             sync.Mutex
	appliedVersion uint64
	appliedHash    string
	answeredEpoch  int64
	answeredAt     time.Time
	ackedAfter     uint64 // the f.after its ackAt belongs to
	ackAt          time.Time
}

func newFleet(method string, hosts []string, tlsCfgs []*tls.Config) *fleet {
	f := &fleet{method: method, answered: newCountdown(0), acked: newCountdown(0)}
	for i, h := range hosts {
		f.agents = append(f.agents, &agent{f: f, idx: i, host: h, tls: tlsCfgs[i]})
	}
	return f
}

// expectAnswers starts counting first answers anew: every stream opened
// from now on counts once per agent.
func (f *fleet) expectAnswers() *countdown {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.epoch++
	f.answered = newCountdown(len(f.agents))
	return f.answered
}

// expectAcks starts counting ACKs of versions newer than after.
func (f *fleet) expectAcks(after uint64) *countdown {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.after = after
	f.acked = newCountdown(len(f.agents))
	return f.acked
}

// start connects every agent to addr; they run until stop.
func (f *fleet) start(ctx context.Context, addr string) {
	ctx, f.cancel = context.WithCancel(ctx)
	f.group = &errgroup.Group{}
	for _, a := range f.agents {
		f.group.Go(func() error {
			// Goroutines gRPC starts for this client inherit the label.
			pprof.Do(ctx, pprof.Labels(sideLabel, "agent"), func(ctx context.Context) { a.run(ctx, addr) })
			return nil
		})
	}
}

// stop disconnects every agent and waits for them.
func (f *fleet) stop() {
	if f.cancel == nil {
		return
	}
	f.cancel()
	_ = f.group.Wait()
	f.cancel = nil
}

// ackLatencies returns, for every agent that ACKed a version newer than
// after, the time from origin to its ACK.
func (f *fleet) ackLatencies(origin time.Time) []time.Duration {
	f.mu.Lock()
	after := f.after
	f.mu.Unlock()
	out := make([]time.Duration, 0, len(f.agents))
	for _, a := range f.agents {
		a.mu.Lock()
		if a.ackedAfter == after && !a.ackAt.IsZero() {
			out = append(out, a.ackAt.Sub(origin))
		}
		a.mu.Unlock()
	}
	return out
}

// lastAnswer is when the last agent got its first answer since expectAnswers.
func (f *fleet) lastAnswer() time.Time {
	f.mu.Lock()
	epoch := f.epoch
	f.mu.Unlock()
	var last time.Time
	for _, a := range f.agents {
		a.mu.Lock()
		if a.answeredEpoch == epoch && a.answeredAt.After(last) {
			last = a.answeredAt
		}
		a.mu.Unlock()
	}
	return last
}

// answerTimes returns, per agent answered since expectAnswers, the time
// from origin to its first answer.
func (f *fleet) answerTimes(origin time.Time) []time.Duration {
	f.mu.Lock()
	epoch := f.epoch
	f.mu.Unlock()
	out := make([]time.Duration, 0, len(f.agents))
	for _, a := range f.agents {
		a.mu.Lock()
		if a.answeredEpoch == epoch {
			out = append(out, a.answeredAt.Sub(origin))
		}
		a.mu.Unlock()
	}
	return out
}

// run keeps one stream open, reconnecting as the real agent does
// (agent/syncer): exponential backoff from 500 ms to 30 s with full
// jitter, reset once the controller answered.
func (a *agent) run(ctx context.Context, addr string) {
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
		connected, _ := a.session(ctx, conn)
		if ctx.Err() != nil {
			return
		}
		if connected {
			attempt = 0
		}
		bound := min(base<<min(attempt, 16), maxDelay)
		attempt++
		t := time.NewTimer(time.Duration(rand.Int64N(int64(bound) + 1)))
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
	stream, err := conn.NewStream(sctx, syncStream, a.f.method)
	if err != nil {
		return false, err
	}
	a.mu.Lock()
	hello := &pb.Hello{Host: a.host, AgentVersion: "bench", Driver: "sim", AppliedVersion: a.appliedVersion, AppliedHash: a.appliedHash}
	a.mu.Unlock()
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
			a.firstAnswer()
		}
		d := resp.GetDesired()
		if d == nil {
			continue // UpToDate
		}
		a.f.desired.Add(1)
		ack := &pb.Ack{Version: d.GetVersion(), Nonce: d.GetNonce(), Hash: d.GetHash()}
		if err := stream.SendMsg(&pb.SyncRequest{Message: &pb.SyncRequest_Ack{Ack: ack}}); err != nil {
			return connected, err
		}
		a.acked(d.GetVersion(), d.GetHash(), time.Now())
	}
}

func (a *agent) firstAnswer() {
	f := a.f
	f.mu.Lock()
	epoch, answered := f.epoch, f.answered
	f.mu.Unlock()
	a.mu.Lock()
	first := a.answeredEpoch != epoch
	a.answeredEpoch, a.answeredAt = epoch, time.Now()
	a.mu.Unlock()
	if first {
		answered.add()
	}
}

func (a *agent) acked(version uint64, hash string, at time.Time) {
	f := a.f
	f.mu.Lock()
	after, acked := f.after, f.acked
	f.mu.Unlock()
	a.mu.Lock()
	a.appliedVersion, a.appliedHash = version, hash
	first := version > after && (a.ackedAfter != after || a.ackAt.IsZero())
	if first {
		a.ackedAfter, a.ackAt = after, at
	}
	a.mu.Unlock()
	if first {
		acked.add()
	}
}

// errNoAgents is returned for a configuration without agents.
var errNoAgents = errors.New("bench: Agents must be at least 1")
