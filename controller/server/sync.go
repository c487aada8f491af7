package server

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/statusreport"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// conn is one agent's Sync stream on this replica.
type conn struct {
	host   string
	wakeCh chan struct{} // capacity 1: wakes coalesce
	cancel context.CancelFunc

	mu sync.Mutex
	// What the agent last applied, from its Hello or Acks.
	appliedVersion uint64
	appliedHash    string
	// The one unacknowledged push, if any.
	pending *pb.Desired
	// The last NACKed push: not pushed again. An agent that later manages
	// to apply it (a partner's metadata became reachable) may still ACK it.
	nackedVersion uint64
	nackedHash    string
	nacked        *pb.Desired
	// What was last persisted, to write only on change.
	state  *pb.Host
	report *pb.StatusReport
	// presenceRev is the revision of this stream's presence write.
	presenceRev int64
}

// storeTimeout bounds every etcd call made for a stream, so a store
// without quorum fails the stream (the agent retries) instead of stalling it.
const storeTimeout = 5 * time.Second

func storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, storeTimeout)
}

func (c *conn) wake() {
	select {
	case c.wakeCh <- struct{}{}:
	default:
	}
}

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
// streams (0: 500 per second, bursts of 1000).
func NewAgentService(hub *Hub, streamsPerSecond float64, insecure bool) *AgentService {
	if streamsPerSecond <= 0 {
		streamsPerSecond = 500
	}
	return &AgentService{hub: hub, streams: rate.NewLimiter(rate.Limit(streamsPerSecond), int(2*streamsPerSecond)), insecure: insecure}
}

// Sync implements the agent protocol; see the proto for its contract.
func (s *AgentService) Sync(stream pb.AgentService_SyncServer) error {
	ctx := stream.Context()
	if err := s.streams.Wait(ctx); err != nil {
		return status.Error(codes.Unavailable, "too many new streams: retry with backoff")
	}
	select {
	case <-s.hub.Ready():
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "sync: the first message must be hello")
	}
	host := hello.GetHost()
	if !s.insecure {
		id, err := pki.IdentityFromContext(ctx)
		if err != nil {
			return status.Errorf(codes.Unauthenticated, "sync: %v", err)
		}
		if id.Kind != pki.KindHost {
			return status.Errorf(codes.PermissionDenied, "sync: identity %s is not an agent identity", id)
		}
		if id.Name != host {
			return status.Errorf(codes.PermissionDenied, "sync: certificate names host %s, hello names %s: an agent may sync only as its own host", id.Name, host)
		}
	}
	if host == "" {
		return status.Error(codes.InvalidArgument, "sync: hello.host is empty")
	}
	h := s.hub
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := &conn{host: host, wakeCh: make(chan struct{}, 1), cancel: cancel,
		appliedVersion: hello.GetAppliedVersion(), appliedHash: hello.GetAppliedHash()}
	// Restore what this host last answered, so a NACKed version stays unsent across restarts.
	prev := &pb.Host{}
	rctx, rcancel := storeCtx(sctx)
	found, err := h.cfg.Store.GetProto(rctx, store.HostStateKey(host), prev)
	rcancel()
	if err != nil {
		return err
	}
	if found {
		c.state = prev
		// A monitor-mode answer is no failure: the version goes again to a
		// new stream, which may be the agent restarted to apply.
		if lr := prev.GetLastResult(); lr.GetKind() == pb.ResultKind_RESULT_KIND_NACK && !lr.GetMonitor() {
			c.nackedVersion, c.nackedHash = lr.GetVersion(), lr.GetHash()
			// The agent may still ACK it late, after a retry succeeds.
			c.nacked = &pb.Desired{Version: lr.GetVersion(), Hash: lr.GetHash()}
		}
	}
	h.mu.Lock()
	if old := h.conns[host]; old != nil {
		old.cancel() // a newer stream for the same host replaces the old one
	}
	h.conns[host] = c
	lease := h.lease
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		mine := h.conns[host] == c
		if mine {
			delete(h.conns, host)
		}
		h.mu.Unlock()
		// When the controller itself stops, presence stays until the lease
		// expires, so primaries survive a quick restart.
		if mine && !h.stopping.Load() {
			cctx, ccancel := storeCtx(context.WithoutCancel(ctx))
			c.mu.Lock()
			rev := c.presenceRev
			c.mu.Unlock()
			if err := h.cfg.Store.ClearPresent(cctx, host, rev); err != nil {
				h.log.Warn("clear presence", "host", host, "error", err)
			}
			ccancel()
			h.disconnected(context.WithoutCancel(ctx), host)
		}
	}()
	pctx, pcancel := storeCtx(sctx)
	rev, err := h.cfg.Store.SetPresent(pctx, host, h.cfg.ID, lease)
	pcancel()
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.presenceRev = rev
	c.mu.Unlock()
	h.mu.Lock()
	h.present[host] = true
	delete(h.gone, host)
	h.mu.Unlock()
	h.reselectFor(sctx, host)
	hctx, hcancel := storeCtx(sctx)
	defer hcancel()
	if err := s.persistState(hctx, c, func(st *pb.Host) {
		st.AgentVersion = hello.GetAgentVersion()
		st.Driver = hello.GetDriver()
		st.AppliedVersion = hello.GetAppliedVersion()
		st.AppliedHash = hello.GetAppliedHash()
		st.DetectedProducts = hello.GetProducts()
	}); err != nil {
		return err
	}
	h.log.Info("agent connected", "host", host, "applied_version", hello.GetAppliedVersion(), "agent_version", hello.GetAgentVersion())

	recvErr := make(chan error, 1)
	go func() { recvErr <- s.recvLoop(sctx, stream, c) }()
	// The receiver cannot be waited for here: its Recv returns only once
	// this handler has returned and gRPC has ended the stream.
	pushed, err := s.maybePush(sctx, stream, c)
	if err != nil {
		return err
	}
	if !pushed {
		c.mu.Lock()
		v := c.appliedVersion
		c.mu.Unlock()
		if err := stream.Send(&pb.SyncResponse{Message: &pb.SyncResponse_UpToDate{UpToDate: &pb.UpToDate{Version: v}}}); err != nil {
			return err
		}
	}
	for {
		select {
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-sctx.Done():
			return status.FromContextError(sctx.Err()).Err()
		case <-c.wakeCh:
			if _, err := s.maybePush(sctx, stream, c); err != nil {
				return err
			}
		}
	}
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
		sctx, cancel := storeCtx(ctx)
		secrets, err := s.hub.cfg.Secrets.Secrets(sctx, names)
		cancel()
		if err != nil {
			// Without its secret the push would fail on the host and, once
			// NACKed, never be sent again: end the stream and let the agent retry.
			return false, status.Errorf(codes.Unavailable, "load secret %s for host %s: %v", strings.Join(names, ", "), c.host, err)
		}
		msg.Secrets = secrets
	}
	c.mu.Lock()
	if c.pending != nil {
		c.mu.Unlock()
		return false, nil
	}
	c.pending = msg
	c.mu.Unlock()
	if err := stream.Send(&pb.SyncResponse{Message: &pb.SyncResponse_Desired{Desired: msg}}); err != nil {
		return false, err
	}
	s.hub.log.Debug("pushed desired state", "host", c.host, "version", d.version, "hash", d.hash)
	return true, nil
}

func (s *AgentService) recvLoop(ctx context.Context, stream pb.AgentService_SyncServer, c *conn) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		switch m := req.GetMessage().(type) {
		case *pb.SyncRequest_Ack:
			if err := s.onResult(ctx, c, m.Ack.GetVersion(), m.Ack.GetNonce(), m.Ack.GetHash(), nil, true, false); err != nil {
				return err
			}
		case *pb.SyncRequest_Nack:
			if err := s.onResult(ctx, c, m.Nack.GetVersion(), m.Nack.GetNonce(), m.Nack.GetHash(), m.Nack.GetErrors(), false, m.Nack.GetMonitor()); err != nil {
				return err
			}
		case *pb.SyncRequest_Status:
			if err := s.onStatus(ctx, c, m.Status); err != nil {
				return err
			}
		case *pb.SyncRequest_Hello:
			return status.Error(codes.InvalidArgument, "sync: hello may only open the stream")
		default:
			return status.Error(codes.InvalidArgument, "sync: empty message")
		}
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
	wctx, cancel := storeCtx(ctx)
	defer cancel()
	err := s.persistState(wctx, c, func(st *pb.Host) {
		lr := &pb.LastResult{Version: p.GetVersion(), Hash: p.GetHash(), Time: timestamp(now), Errors: errs}
		if ok {
			lr.Kind = pb.ResultKind_RESULT_KIND_ACK
			st.AppliedVersion, st.AppliedHash = p.GetVersion(), p.GetHash()
		} else {
			lr.Kind, lr.Monitor = pb.ResultKind_RESULT_KIND_NACK, monitor
		}
		st.LastResult = lr
	})
	switch {
	case ok:
		s.hub.log.Info("host acknowledged", "host", c.host, "version", version)
	case monitor:
		s.hub.log.Info("host in monitor mode: planned, applied nothing", "host", c.host, "version", version)
	default:
		s.hub.log.Warn("host rejected configuration", "host", c.host, "version", version, "errors", len(errs))
	}
	c.wake() // a newer revision may have arrived meanwhile
	return err
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
	if err := s.hub.cfg.Store.PutProto(ctx, store.HostReportKey(c.host), r); err != nil {
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
	c.mu.Lock()
	var next *pb.Host
	if c.state != nil {
		next = proto.Clone(c.state).(*pb.Host)
	} else {
		next = &pb.Host{Host: c.host}
	}
	change(next)
	if c.state != nil && proto.Equal(c.state, next) {
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	if err := s.hub.cfg.Store.PutProto(ctx, store.HostStateKey(c.host), next); err != nil {
		return err
	}
	c.mu.Lock()
	c.state = next
	c.mu.Unlock()
	return nil
}
