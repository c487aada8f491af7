package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/statusreport"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// conn is one agent's Sync stream on this replica.
//
// An idle stream costs the controller two goroutines of its own (the
// handler, parked in serve, and the receiver), so both are kept shallow
// while they wait: the setup and the work run in functions that have
// returned by then. The garbage collector halves a parked goroutine's
// stack while it uses less than a quarter of it, so what a parked stack
// uses, not how deep the setup went, sets what it costs. Wakes, reports
// and the receiver's end reach the handler through one channel.
type conn struct {
	host  string
	peer  string // the remote address, for logs
	agent *agentState
	// monitor is whether the agent runs in monitor mode (its Hello says).
	monitor bool
	// ctx is the stream's context, ended by cancel: a newer stream of the
	// host took over, the controller stops, or the host was revoked.
	ctx    context.Context
	cancel context.CancelFunc
	// events (capacity 1) wakes the stream's loop, which then handles what
	// the bits in evs say (evPush, evReport, evRecv): wakes coalesce.
	events chan struct{}
	evs    atomic.Uint32
	// done is closed once the stream has ended and cleaned up, its receiver
	// included; handlerDone once the handler has (see Sync).
	done, handlerDone chan struct{}

	// writeMu serializes the read-modify-write of the host's stored state,
	// which the receiver and the stream's loop both do.
	writeMu sync.Mutex

	mu sync.Mutex
	// What the agent last applied, from its Hello or Acks.
	appliedVersion uint64
	appliedHash    string
	// The one unacknowledged push, if any, and when it was sent.
	pending      *pb.Desired
	pendingSince time.Time
	// The last NACKed push: not pushed again. An agent that later manages
	// to apply it (a partner's metadata became reachable) may still ACK it.
	nackedVersion uint64
	nackedHash    string
	nacked        *pb.Desired
	// What was last persisted, to write only on change: the host's state
	// encoded (storeEncoding) and its last report.
	state  []byte
	report *pb.StatusReport
	// queued is the newest report not yet stored: it waits for the
	// identity's report budget; reportTimer fires when the budget is back.
	queued      *pb.StatusReport
	reportTimer *time.Timer
	// pushTimer wakes the stream when key material may be sent again.
	pushTimer *time.Timer
	// presenceRev is the revision of this stream's presence write.
	presenceRev int64
	// recvErr is why the receiver ended (evRecv).
	recvErr error
}

// The events of a stream's loop (conn.evs).
const (
	evPush   = 1 << iota // the desired state may have changed: push it if due
	evReport             // a report is queued or its budget is back
	evRecv               // the receiver ended, with recvErr
)

// storeTimeout bounds every etcd call made for a stream, so a store
// without quorum fails the stream (the agent retries) instead of stalling it.
const storeTimeout = 5 * time.Second

func storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, storeTimeout)
}

// signal hands the stream's loop the events ev.
func (c *conn) signal(ev uint32) {
	c.evs.Or(ev)
	select {
	case c.events <- struct{}{}:
	default:
	}
}

func (c *conn) wake() { c.signal(evPush) }

// AgentService serves the agents' Sync streams.
type AgentService struct {
	pb.UnimplementedAgentServiceServer
	hub *Hub
	// streams bounds the rate of new streams, so a reconnect storm after a
	// restart does not overwhelm etcd.
	streams *rate.Limiter
	// insecure trusts the Hello's host name; only with --insecure.
	insecure bool
}

// NewAgentService returns the Sync service. streamsPerSecond bounds new
// streams (0: 1000 per second, bursts of 2000: the pace a stopping
// controller tells its agents to come back at, DefaultReconnectRate).
func NewAgentService(hub *Hub, streamsPerSecond float64, insecure bool) *AgentService {
	if streamsPerSecond <= 0 {
		streamsPerSecond = DefaultReconnectRate
	}
	return &AgentService{hub: hub, streams: rate.NewLimiter(rate.Limit(streamsPerSecond), int(2*streamsPerSecond)), insecure: insecure}
}

// Sync implements the agent protocol; see the proto for its contract.
//
// Every stream is bounded: it must say Hello within the Hello timeout;
// each identity may open streams only at the Hello rate and holds one
// stream at a time (a second one takes over once the first has ended);
// every message is size-checked; reports reach etcd at most at the
// identity's report rate.
func (s *AgentService) Sync(stream pb.AgentService_SyncServer) error {
	// A stopping controller ends every stream, those still saying Hello
	// and those opened during the stop included (see Hub.Stopping).
	ctx, end := streamContext(stream.Context())
	cancel := func() { end(nil) }
	defer cancel()
	defer context.AfterFunc(s.hub.stopCtx, cancel)()
	c, err := s.start(ctx, cancel, stream)
	if err != nil {
		return err
	}
	defer s.end(c)
	go s.receive(stream, c)
	return s.serve(stream, c)
}

// start admits a new stream, makes it its host's one stream and opens it.
// A stream that does not start has cleaned up when start returns.
func (s *AgentService) start(ctx context.Context, cancel context.CancelFunc, stream pb.AgentService_SyncServer) (*conn, error) {
	if s.hub.stopping.Load() {
		return nil, status.Error(codes.Unavailable, "sync: the controller is stopping: reconnect with backoff")
	}
	hello, ag, err := s.admit(ctx, stream)
	if err != nil {
		return nil, err
	}
	c := newConn(ctx, cancel, ag, hello)
	if err := s.hub.claim(ctx, c); err != nil {
		close(c.done)
		return nil, err
	}
	if err := s.open(c, hello); err != nil {
		s.closed(c)
		close(c.done)
		return nil, err
	}
	return c, nil
}

// end cleans up after a stream that started. The stream counts as gone
// once its receiver has ended too: a successor waiting for it starts only
// then (see receive).
func (s *AgentService) end(c *conn) {
	s.closed(c)
	close(c.handlerDone)
}

// admit waits for the stream's Hello, within the Hello timeout and the
// rate of new streams, and checks it: the identity it names, its size, the
// identity's Hello rate.
func (s *AgentService) admit(ctx context.Context, stream pb.AgentService_SyncServer) (*pb.Hello, *agentState, error) {
	h := s.hub
	lim := h.limits
	hctx, hcancel := context.WithTimeout(ctx, lim.HelloTimeout)
	defer hcancel()
	if err := s.streams.Wait(hctx); err != nil {
		return nil, nil, status.Error(codes.Unavailable, "too many new streams: retry with backoff")
	}
	select {
	case <-h.Ready():
	case <-hctx.Done():
		return nil, nil, helloTimeout(ctx, lim)
	}
	first, err := recvHello(hctx, stream)
	if err != nil {
		if hctx.Err() != nil && ctx.Err() == nil {
			return nil, nil, helloTimeout(ctx, lim)
		}
		return nil, nil, err
	}
	hello := first.GetHello()
	if hello == nil {
		return nil, nil, status.Error(codes.InvalidArgument, "sync: the first message must be hello")
	}
	host := hello.GetHost()
	if !s.insecure {
		id, err := pki.IdentityFromContext(ctx)
		if err != nil {
			return nil, nil, status.Errorf(codes.Unauthenticated, "sync: %v", err)
		}
		if id.Kind != pki.KindHost {
			return nil, nil, status.Errorf(codes.PermissionDenied, "sync: identity %s is not an agent identity", id)
		}
		if id.Name != host {
			return nil, nil, status.Errorf(codes.PermissionDenied, "sync: certificate names host %s, hello names %s: an agent may sync only as its own host", id.Name, strconv.Quote(host))
		}
	}
	if host == "" {
		return nil, nil, status.Error(codes.InvalidArgument, "sync: hello.host is empty")
	}
	if err := checkAgentMessage(first, host, lim); err != nil {
		return nil, nil, err
	}
	h.cfg.Observer.Hello(host)
	ag := h.agent(host)
	if !ag.hellos.Allow() {
		return nil, nil, status.Errorf(codes.ResourceExhausted, "sync: host %s opened streams faster than %g per second (bursts of %d): retry with backoff",
			host, lim.HellosPerSecond, lim.HelloBurst)
	}
	return hello, ag, nil
}

func newConn(ctx context.Context, cancel context.CancelFunc, ag *agentState, hello *pb.Hello) *conn {
	return &conn{host: hello.GetHost(), peer: peerAddr(ctx), agent: ag, ctx: ctx, cancel: cancel, events: make(chan struct{}, 1),
		done: make(chan struct{}), handlerDone: make(chan struct{}),
		appliedVersion: hello.GetAppliedVersion(), appliedHash: hello.GetAppliedHash(), monitor: hello.GetMonitor()}
}

// open starts the stream that claimed its host: it restores what the host
// last answered, records its presence and stores what the Hello says.
func (s *AgentService) open(c *conn, hello *pb.Hello) error {
	h := s.hub
	host := c.host
	h.cfg.Observer.Connected(host)
	// Restore what this host last answered. Read only now: the stream this
	// one replaced may have written it until it ended. A NACK from an
	// earlier stream does not stop a push on this one: the agent may have
	// been fixed and restarted (a read-only disk made writable), and the
	// no-re-push rule holds within a stream.
	prev := &pb.Host{}
	rctx, rcancel := storeCtx(c.ctx)
	found, err := h.reads.getProto(rctx, store.HostStateKey(host), prev)
	rcancel()
	if err != nil {
		return err
	}
	if found {
		// Kept encoded, which an idle stream holds in a third of the space.
		if c.state, err = storeEncoding.Marshal(prev); err != nil {
			return fmt.Errorf("encode the state of %s: %w", host, err)
		}
		// A monitor-mode answer is no failure: the version goes again to a
		// new stream, which may be the agent restarted to apply.
		if lr := prev.GetLastResult(); lr.GetKind() == pb.ResultKind_RESULT_KIND_NACK && !lr.GetMonitor() {
			// The agent may still ACK it late, after a retry succeeds.
			c.nacked = &pb.Desired{Version: lr.GetVersion(), Hash: lr.GetHash()}
		}
	}
	h.mu.Lock()
	lease := h.lease
	h.mu.Unlock()
	pctx, pcancel := storeCtx(c.ctx)
	// In the writer's transactions: a reconnecting fleet's presence
	// writes go together, as its state writes do.
	rev, err := h.writes.put(pctx, store.BatchPut{Key: store.PresenceKey(host), Value: []byte(h.cfg.ID), Lease: lease})
	pcancel()
	if err != nil {
		return fmt.Errorf("record presence of %s: %w", host, err)
	}
	c.mu.Lock()
	c.presenceRev = rev
	c.mu.Unlock()
	h.mu.Lock()
	h.present[host] = true
	delete(h.gone, host)
	h.mu.Unlock()
	h.reselectFor(c.ctx, host)
	// The Hello names what the agent last applied and verified. When that
	// is the desired state, the host has ACKed it, even if the ACK was lost
	// (the controller died between the agent's apply and storing its ACK).
	d := h.desiredFor(host)
	acked := d != nil && hello.GetAppliedVersion() == d.version && hello.GetAppliedHash() == d.hash && d.hash != ""
	if acked {
		c.mu.Lock()
		c.nacked = nil
		c.mu.Unlock()
	}
	hctx, hcancel := storeCtx(c.ctx)
	err = s.persistState(hctx, c, func(st *pb.Host) {
		st.AgentVersion = hello.GetAgentVersion()
		st.Driver = hello.GetDriver()
		st.AppliedVersion = hello.GetAppliedVersion()
		st.AppliedHash = hello.GetAppliedHash()
		if lr := st.GetLastResult(); acked && (lr.GetKind() != pb.ResultKind_RESULT_KIND_ACK || lr.GetVersion() != d.version || lr.GetHash() != d.hash) {
			st.LastResult = &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_ACK, Version: d.version, Hash: d.hash, Time: timestamp(h.cfg.Now())}
		}
		st.DetectedProducts = hello.GetProducts()
		st.Monitor = hello.GetMonitor()
	})
	hcancel()
	if err != nil {
		return err
	}
	h.observer.Connected(host, c.peer, hello.GetAppliedVersion(), hello.GetAgentVersion())
	return nil
}

// closed cleans up after a stream that claimed its host.
func (s *AgentService) closed(c *conn) {
	h := s.hub
	host := c.host
	defer h.cfg.Observer.Disconnected(host)
	c.mu.Lock()
	for _, t := range []*time.Timer{c.reportTimer, c.pushTimer} {
		if t != nil {
			t.Stop()
		}
	}
	c.mu.Unlock()
	h.mu.Lock()
	if c.agent.active == c {
		c.agent.active = nil
	}
	if h.conns[host] == c {
		delete(h.conns, host)
	}
	// A successor waiting to take over keeps the presence key: it writes
	// its own at once, and the primary does not move.
	handover := c.agent.next != nil
	if !handover && !h.stopping.Load() {
		// Marked gone before its presence key goes: the presence watch
		// then finds a primary within its grace, and keeps it.
		h.gone[host] = h.cfg.Now()
	}
	h.mu.Unlock()
	// When the controller itself stops, presence stays until the lease
	// expires, so primaries survive a quick restart.
	if !handover && !h.stopping.Load() {
		cctx, ccancel := storeCtx(context.WithoutCancel(c.ctx))
		c.mu.Lock()
		rev := c.presenceRev
		c.mu.Unlock()
		// A stream that never stored its presence has none to clear (the
		// delete is conditional on this stream's write): no transaction,
		// which a store falling behind a reconnecting fleet cannot spare.
		// The delete goes in the writer's shared transactions: a fleet
		// whose streams end together (a network partition healing, a
		// site's agents restarting) costs some dozens of transactions, not
		// one per host.
		if rev != 0 {
			if _, err := h.writes.put(cctx, store.BatchPut{Key: store.PresenceKey(host), DeleteAt: rev}); err != nil {
				h.log.Warn("clear presence", "host", host, "error", err)
			}
		}
		ccancel()
		h.disconnected(context.WithoutCancel(c.ctx), host)
	}
}

// serve sends the agent what it lacks, or that it is up to date, and then
// follows the stream's events until it ends.
func (s *AgentService) serve(stream pb.AgentService_SyncServer, c *conn) error {
	if err := s.greet(stream, c); err != nil {
		return err
	}
	for {
		select {
		case <-c.ctx.Done():
			return status.FromContextError(c.ctx.Err()).Err()
		case <-s.hub.draining:
			return s.drain(stream)
		case <-c.events:
			if end, err := s.handle(stream, c); end {
				return err
			}
		}
	}
}

// greet is the stream's first answer: the desired state when the agent
// lacks it, else UpToDate.
func (s *AgentService) greet(stream pb.AgentService_SyncServer, c *conn) error {
	pushed, err := s.maybePush(c.ctx, stream, c)
	if err != nil || pushed {
		return err
	}
	c.mu.Lock()
	v := c.appliedVersion
	c.mu.Unlock()
	return stream.Send(&pb.SyncResponse{Message: &pb.SyncResponse_UpToDate{UpToDate: &pb.UpToDate{Version: v}}})
}

// handle does what the stream's pending events ask; end says the stream
// ends, with err.
func (s *AgentService) handle(stream pb.AgentService_SyncServer, c *conn) (end bool, err error) {
	ev := c.evs.Swap(0)
	if ev&evRecv != 0 {
		c.mu.Lock()
		err := c.recvErr
		c.mu.Unlock()
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		return true, err
	}
	if ev&evReport != 0 {
		if err := s.flushReport(c.ctx, c); err != nil {
			return true, err
		}
	}
	if ev&evPush != 0 {
		if _, err := s.maybePush(c.ctx, stream, c); err != nil {
			return true, err
		}
	}
	return false, nil
}

// receive reads the agent's messages until the stream ends, then tells
// the stream's loop why.
func (s *AgentService) receive(stream pb.AgentService_SyncServer, c *conn) {
	var err error
	for {
		var req *pb.SyncRequest
		if req, err = stream.Recv(); err != nil {
			break
		}
		if err = s.onMessage(c, req); err != nil {
			break
		}
	}
	c.mu.Lock()
	c.recvErr = err
	c.mu.Unlock()
	c.signal(evRecv)
	// Recv returns only once the handler has returned, so the handler
	// cannot wait for this; the stream counts as gone after both.
	<-c.handlerDone
	close(c.done)
}

// drain tells the agent when to come back, for a controller that stops,
// and ends the stream.
func (s *AgentService) drain(stream pb.AgentService_SyncServer) error {
	h := s.hub
	after := h.reconnectAfter(h.drainSeq.Add(1)-1, h.drainTotal.Load())
	return stream.Send(&pb.SyncResponse{Message: &pb.SyncResponse_Drain{Drain: &pb.Drain{
		ReconnectAfter: durationpb.New(after), Reason: "the controller is stopping"}}})
}

// helloTimeout is the error of a stream that said no Hello in time.
func helloTimeout(ctx context.Context, lim AgentLimits) error {
	return status.Errorf(codes.DeadlineExceeded, "sync: no hello within %s of opening the stream from %s", lim.HelloTimeout, peerAddr(ctx))
}

// recvHello receives the stream's first message, giving up when ctx ends.
// The receiving goroutine ends with the stream, which ends when Sync returns.
func recvHello(ctx context.Context, stream pb.AgentService_SyncServer) (*pb.SyncRequest, error) {
	type result struct {
		m   *pb.SyncRequest
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := stream.Recv()
		ch <- result{m, err}
	}()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return "unknown"
}

// claim makes c its identity's one stream. A stream already holding the
// identity is ended first, and c takes over only once it is gone, so two
// streams of one host never run side by side; a newer stream arriving
// meanwhile supersedes c.
func (h *Hub) claim(ctx context.Context, c *conn) error {
	ag := c.agent
	h.mu.Lock()
	if w := ag.next; w != nil {
		w.cancel() // an older stream still waiting to take over gives way
	}
	ag.next = c
	old := ag.active
	if old != nil {
		old.cancel()
	}
	h.mu.Unlock()
	giveUp := func(err error) error {
		h.mu.Lock()
		if ag.next == c {
			ag.next = nil
		}
		h.mu.Unlock()
		return err
	}
	if old != nil {
		h.log.Warn("second stream for one host: it replaces the first once that has ended", "host", c.host, "first_peer", old.peer, "second_peer", c.peer)
		t := time.NewTimer(h.limits.ReplaceTimeout)
		defer t.Stop()
		select {
		case <-old.done:
		case <-ctx.Done():
			return giveUp(status.Errorf(codes.Aborted, "sync: a newer stream of host %s took over before this one started", c.host))
		case <-t.C:
			return giveUp(status.Errorf(codes.Unavailable, "sync: the previous stream of host %s (from %s) has not ended within %s; retry", c.host, old.peer, h.limits.ReplaceTimeout))
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if ag.next != c || ctx.Err() != nil {
		if ag.next == c {
			ag.next = nil
		}
		return status.Errorf(codes.Aborted, "sync: a newer stream of host %s took over before this one started", c.host)
	}
	ag.next = nil
	ag.active = c
	h.conns[c.host] = c
	return nil
}

// maybePush sends the desired state when the agent does not have it, no
// push is outstanding and it was not NACKed.
func (s *AgentService) maybePush(ctx context.Context, stream pb.AgentService_SyncServer, c *conn) (bool, error) {
	d := s.hub.desiredFor(c.host)
	if d == nil {
		return false, nil
	}
	c.mu.Lock()
	if c.pending != nil ||
		(c.appliedVersion == d.version && c.appliedHash == d.hash) ||
		(c.nackedVersion == d.version && c.nackedHash == d.hash) {
		c.mu.Unlock()
		return false, nil
	}
	c.mu.Unlock()
	msg := &pb.Desired{Version: d.version, Nonce: s.hub.nextNonce(), Config: d.config, Hash: d.hash}
	if names := s.hub.secretsFor(d.config); len(names) > 0 && s.hub.cfg.Secrets != nil {
		if wait := s.hub.secretsDue(c, d.hash); wait > 0 {
			// Key material goes out once per change of the desired state;
			// a host reconnecting without having applied it gets it again
			// only after the resend interval, however often it says Hello.
			c.mu.Lock()
			if c.pushTimer != nil {
				c.pushTimer.Stop()
			}
			c.pushTimer = time.AfterFunc(wait, c.wake)
			c.mu.Unlock()
			s.hub.log.Debug("key material sent recently; push deferred", "host", c.host, "version", d.version, "retry_in", wait)
			return false, nil
		}
		// No deadline of its own: the shared read it waits for is bounded
		// (a timer per push and one per ACK were 5% of a commit's CPU
		// at 10,000 hosts).
		secrets, err := s.hub.cfg.Secrets.SecretVersions(ctx, names)
		if err != nil {
			// Without its secret the push would fail on the host and, once
			// NACKed, never be sent again: end the stream and let the agent retry.
			return false, status.Errorf(codes.Unavailable, "load secret %s version %d for host %s: %v", names[0].Name, names[0].Version, c.host, err)
		}
		msg.Secrets = secrets
		s.hub.secretsSent(c, d.hash)
	}
	c.mu.Lock()
	if c.pending != nil {
		c.mu.Unlock()
		return false, nil
	}
	c.pending, c.pendingSince = msg, s.hub.cfg.Now()
	c.mu.Unlock()
	if err := stream.Send(&pb.SyncResponse{Message: &pb.SyncResponse_Desired{Desired: msg}}); err != nil {
		return false, err
	}
	s.hub.cfg.Observer.Pushed(c.host, d.version)
	s.hub.observer.Pushed(c.host, d.version, d.hash)
	return true, nil
}

// onMessage handles one message from the agent after its Hello.
func (s *AgentService) onMessage(c *conn, req *pb.SyncRequest) error {
	if err := checkAgentMessage(req, c.host, s.hub.limits); err != nil {
		return err
	}
	switch m := req.GetMessage().(type) {
	case *pb.SyncRequest_Ack:
		return s.onResult(c.ctx, c, m.Ack.GetVersion(), m.Ack.GetNonce(), m.Ack.GetHash(), nil, true, false)
	case *pb.SyncRequest_Nack:
		return s.onResult(c.ctx, c, m.Nack.GetVersion(), m.Nack.GetNonce(), m.Nack.GetHash(), m.Nack.GetErrors(), false, m.Nack.GetMonitor())
	case *pb.SyncRequest_Status:
		// The stream's loop stores it, within the identity's budget;
		// a newer report replaces one still waiting.
		c.mu.Lock()
		c.queued = m.Status
		c.mu.Unlock()
		c.signal(evReport)
		return nil
	case *pb.SyncRequest_Hello:
		return status.Error(codes.InvalidArgument, "sync: hello may only open the stream")
	default:
		return status.Error(codes.InvalidArgument, "sync: empty message")
	}
}

func (s *AgentService) onResult(ctx context.Context, c *conn, version uint64, nonce, hash string, errs []*pb.ItemError, ok, monitor bool) error {
	c.mu.Lock()
	p := c.pending
	late := false
	if p == nil && c.nacked != nil && c.nacked.GetVersion() == version && (c.nacked.GetNonce() == nonce || c.nacked.GetHash() == hash) {
		// The agent retried after its NACK (perhaps on an earlier stream):
		// it succeeded (a partner's metadata became reachable) or fails for
		// another reason now. Matching on version and hash is safe: it is
		// the same configuration.
		p, late = c.nacked, true
	}
	if p == nil || (!late && p.GetNonce() != nonce) || p.GetVersion() != version {
		c.mu.Unlock()
		s.hub.log.Debug("stale answer ignored", "host", c.host, "nonce", nonce, "version", version)
		return nil
	}
	if late && !ok && !c.agent.reports.Allow() {
		// An honest agent answers late only after a retry with backoff;
		// late NACKs faster than the report budget would each rewrite etcd.
		// Dropping one loses nothing: the host stays NACKed. A late ACK is
		// never dropped, and comes once: it clears the NACK it answers.
		c.mu.Unlock()
		s.hub.log.Debug("late answer over the report budget ignored", "host", c.host, "version", version)
		return nil
	}
	if !late {
		c.pending = nil
	}
	if ok {
		c.appliedVersion, c.appliedHash = p.GetVersion(), p.GetHash()
		c.nacked, c.nackedVersion, c.nackedHash = nil, 0, ""
	} else {
		c.nacked, c.nackedVersion, c.nackedHash = p, p.GetVersion(), p.GetHash()
	}
	c.mu.Unlock()
	now := s.hub.cfg.Now()
	// The batched write bounds its transaction (storeTimeout): no timer
	// of its own per ACK.
	err := s.persistState(ctx, c, func(st *pb.Host) {
		lr := &pb.LastResult{Version: p.GetVersion(), Hash: p.GetHash(), Time: timestamp(now), Errors: errs}
		if ok {
			lr.Kind = pb.ResultKind_RESULT_KIND_ACK
			st.AppliedVersion, st.AppliedHash = p.GetVersion(), p.GetHash()
		} else {
			lr.Kind, lr.Monitor = pb.ResultKind_RESULT_KIND_NACK, monitor
		}
		if late && st.GetLastResult() != nil {
			// The same answer again is no news: keep its first time, so
			// that it is not written again.
			same := proto.Clone(st.GetLastResult()).(*pb.LastResult)
			same.Time = lr.Time
			if proto.Equal(same, lr) {
				return
			}
		}
		st.LastResult = lr
	})
	switch {
	case err != nil:
		// Not recorded: the stream ends with err, and the agent's next
		// Hello says what it has.
	case ok:
		s.hub.cfg.Observer.Acked(c.host, version)
		s.hub.observer.Acked(c.host, version, hash)
	case monitor:
		// A monitor-mode answer applied nothing by design: not a NACK.
		s.hub.log.Info("host in monitor mode: planned, applied nothing", "host", c.host, "version", version)
	default:
		s.hub.cfg.Observer.Nacked(c.host, version, errs)
		s.hub.observer.Nacked(c.host, version, hash, len(errs))
	}
	c.wake() // a newer revision may have arrived meanwhile
	return err
}

// flushReport stores the queued report when the identity's report budget
// allows, and otherwise waits for the budget with a timer.
func (s *AgentService) flushReport(ctx context.Context, c *conn) error {
	c.mu.Lock()
	r := c.queued
	if r == nil || c.reportTimer != nil {
		c.mu.Unlock()
		return nil
	}
	lim := c.agent.reports
	if !lim.Allow() {
		wait := time.Duration((1 - lim.Tokens()) / float64(lim.Limit()) * float64(time.Second))
		c.reportTimer = time.AfterFunc(max(wait, time.Millisecond), func() {
			c.mu.Lock()
			c.reportTimer = nil
			c.mu.Unlock()
			c.signal(evReport)
		})
		c.mu.Unlock()
		return nil
	}
	c.queued = nil
	c.mu.Unlock()
	return s.onStatus(ctx, c, r)
}

func (s *AgentService) onStatus(ctx context.Context, c *conn, r *pb.StatusReport) error {
	ctx, cancel := storeCtx(ctx)
	defer cancel()
	// The drift goes with the host's state too, so the fleet view lists
	// it without reading every report; written only when it changes.
	if err := s.persistState(ctx, c, func(st *pb.Host) {
		st.Drift = r.GetDrift()
		if r.GetClock() == nil {
			return
		}
		offset := r.GetClock().AsTime().Sub(s.hub.cfg.Now()).Milliseconds()
		// Recorded only when it moves by a second or more, so reports do not rewrite host state.
		if d := st.GetClockOffsetMs() - offset; st.GetLastSeen() == nil || d >= 1000 || d <= -1000 {
			st.ClockOffsetMs = offset
			st.LastSeen = timestamp(s.hub.cfg.Now())
		}
	}); err != nil {
		return err
	}
	c.mu.Lock()
	prev := c.report
	c.mu.Unlock()
	if prev != nil && statusreport.Same(prev, r) {
		return nil
	}
	if prev == nil {
		stored := &pb.StatusReport{}
		if found, err := s.hub.cfg.Store.GetProto(ctx, store.HostReportKey(c.host), stored); err == nil && found && statusreport.Same(stored, r) {
			c.mu.Lock()
			c.report = stored
			c.mu.Unlock()
			return nil
		}
	}
	if err := s.hub.writes.putProto(ctx, store.HostReportKey(c.host), r); err != nil {
		return err
	}
	c.mu.Lock()
	c.report = r
	c.mu.Unlock()
	return nil
}

// persistState applies change to the host's stored state and writes it
// only when it differs from what was last written.
func (s *AgentService) persistState(ctx context.Context, c *conn, change func(*pb.Host)) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.mu.Lock()
	stored := c.state
	c.mu.Unlock()
	next := &pb.Host{Host: c.host}
	if stored != nil {
		if err := proto.Unmarshal(stored, next); err != nil {
			return fmt.Errorf("decode the state of %s: %w", c.host, err)
		}
	}
	change(next)
	b, err := storeEncoding.Marshal(next)
	if err != nil {
		return fmt.Errorf("encode the state of %s: %w", c.host, err)
	}
	if stored != nil && bytes.Equal(stored, b) {
		return nil
	}
	if _, err := s.hub.writes.put(ctx, store.BatchPut{Key: store.HostStateKey(c.host), Value: b}); err != nil {
		return err
	}
	c.mu.Lock()
	c.state = b
	c.mu.Unlock()
	return nil
}

// secretsDue says how long a push of desired state hash carrying key
// material to c's identity must wait: 0 unless the same state went out
// with its key material less than the resend interval ago.
func (h *Hub) secretsDue(c *conn, hash string) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.agent.secretHash != hash {
		return 0
	}
	return max(0, h.limits.SecretResendInterval-h.cfg.Now().Sub(c.agent.secretAt))
}

// secretsSent records that key material for desired state hash went to
// c's identity now.
func (h *Hub) secretsSent(c *conn, hash string) {
	h.mu.Lock()
	c.agent.secretHash, c.agent.secretAt = hash, h.cfg.Now()
	h.mu.Unlock()
}
