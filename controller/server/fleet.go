package server

import (
	"context"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// FleetService implements pb.FleetServiceServer.
type FleetService struct {
	pb.UnimplementedFleetServiceServer
	hub *Hub
}

// NewFleetService returns the fleet view.
func NewFleetService(hub *Hub) *FleetService { return &FleetService{hub: hub} }

// ListHosts implements the RPC; see the proto for its contract.
func (s *FleetService) ListHosts(ctx context.Context, req *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	snap := s.hub.snapshot()
	states, err := s.hub.cfg.Store.HostStates(ctx)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListHostsResponse{}
	if snap.topo == nil {
		return resp, nil
	}
	seq := s.sequencer(ctx, snap)
	now := s.hub.cfg.Now()
	for _, host := range snap.topo.order {
		h := hostView(snap, host, states[host], seq, now)
		if d := req.GetDeployment(); d != "" && h.GetDeployment() != d {
			continue
		}
		resp.Hosts = append(resp.Hosts, h)
	}
	sort.Slice(resp.Hosts, func(i, j int) bool { return resp.Hosts[i].GetHost() < resp.Hosts[j].GetHost() })
	return resp, nil
}

// GetHost implements the RPC; see the proto for its contract.
func (s *FleetService) GetHost(ctx context.Context, req *pb.GetHostRequest) (*pb.GetHostResponse, error) {
	snap := s.hub.snapshot()
	host := req.GetHost()
	if snap.topo == nil || snap.topo.hosts[host] == nil {
		return nil, status.Errorf(codes.NotFound, "host %q is not in the current topology", host)
	}
	st := &pb.Host{}
	if _, err := s.hub.cfg.Store.GetProto(ctx, store.HostStateKey(host), st); err != nil {
		return nil, err
	}
	rep := &pb.StatusReport{}
	found, err := s.hub.cfg.Store.GetProto(ctx, store.HostReportKey(host), rep)
	if err != nil {
		return nil, err
	}
	if !found {
		rep = nil
	}
	return &pb.GetHostResponse{Host: hostView(snap, host, st, s.sequencer(ctx, snap), s.hub.cfg.Now()), Status: rep}, nil
}

// sequencer returns the sequence number operators know a version by (0
// when it is not a stored revision), reading each version once per call.
func (s *FleetService) sequencer(ctx context.Context, snap snapshot) func(uint64) uint64 {
	memo := map[uint64]uint64{0: 0}
	if snap.topo != nil && snap.topo.sequence > 0 {
		memo[snap.topo.revision] = snap.topo.sequence
	}
	return func(v uint64) uint64 {
		if n, ok := memo[v]; ok {
			return n
		}
		n, err := s.hub.cfg.Store.SequenceOf(ctx, v)
		if err != nil {
			n = 0 // a version from before the history, or a read failure: shown as unknown
		}
		memo[v] = n
		return n
	}
}

// RetryHost implements the RPC; see the proto for its contract.
func (s *FleetService) RetryHost(ctx context.Context, req *pb.RetryHostRequest) (*pb.RetryHostResponse, error) {
	h := s.hub
	host := req.GetHost()
	snap := h.snapshot()
	if snap.topo == nil || snap.topo.hosts[host] == nil {
		return nil, status.Errorf(codes.NotFound, "host %q is not in the current topology", host)
	}
	h.mu.Lock()
	c := h.conns[host]
	h.mu.Unlock()
	if c == nil {
		if snap.present[host] {
			return nil, status.Errorf(codes.FailedPrecondition, "host %s is connected to another controller replica: ask that one (or restart the agent: a reconnecting agent is sent its configuration again)", host)
		}
		return nil, status.Errorf(codes.FailedPrecondition, "host %s is not connected: its agent is sent its configuration again when it reconnects", host)
	}
	d := h.desiredFor(host)
	c.mu.Lock()
	// Forget the NACK as a reason not to push; c.nacked stays, so a late
	// answer to the NACKed push is still taken.
	c.nackedVersion, c.nackedHash = 0, ""
	resp := &pb.RetryHostResponse{}
	switch {
	case c.appliedVersion == d.version && c.appliedHash == d.hash:
		resp.UpToDate = true
	case c.pending != nil:
		resp.Version = c.pending.GetVersion()
	default:
		resp.Version = d.version
	}
	c.mu.Unlock()
	c.wake()
	h.log.Info("retry asked for host", "host", host, "caller", callerName(ctx), "version", resp.GetVersion())
	return resp, nil
}

// hostView merges the compiled topology, the live hub state and what the
// host last reported.
func hostView(snap snapshot, host string, st *pb.Host, seq func(uint64) uint64, now time.Time) *pb.Host {
	cfg := snap.topo.hosts[host]
	h := &pb.Host{
		Host:           host,
		Deployment:     cfg.GetDeployment(),
		Product:        cfg.GetProduct(),
		ProductVersion: cfg.GetProductVersion(),
		Connected:      snap.connected[host] || snap.present[host],
		Primary:        snap.primaries[cfg.GetDeployment()] == host,
	}
	if d := snap.desired[host]; d != nil {
		h.DesiredVersion, h.DesiredHash = d.version, d.hash
		h.DesiredSequence = seq(d.version)
	}
	if p, ok := snap.pending[host]; ok {
		h.PendingVersion, h.PendingSince, h.PendingMs = p.version, timestamp(p.since), now.Sub(p.since).Milliseconds()
	}
	if st != nil {
		h.AppliedVersion, h.AppliedHash = st.GetAppliedVersion(), st.GetAppliedHash()
		h.AppliedSequence = seq(st.GetAppliedVersion())
		h.LastResult = st.GetLastResult()
		h.AgentVersion, h.Driver = st.GetAgentVersion(), st.GetDriver()
		h.Drift = st.GetDrift()
		h.DetectedProducts = st.GetDetectedProducts()
		// The host's clock as its reports measured it (status and the
		// skew warnings show it).
		h.ClockOffsetMs, h.LastSeen = st.GetClockOffsetMs(), st.GetLastSeen()
	}
	return h
}
