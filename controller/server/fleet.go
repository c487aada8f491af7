package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/controller/pagetoken"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// FleetService implements pb.FleetServiceServer.
type FleetService struct {
	pb.UnimplementedFleetServiceServer
	hub *Hub
	// ReadTimeout bounds the etcd read of a fleet call (default 2s, below
	// the call timeout); when etcd does not answer within it the call
	// answers from the hub's last view, marked stale.
	ReadTimeout time.Duration
	// WatchInterval is how often WatchHosts looks at the hub without a
	// change in etcd (a push sent, a pending push ageing); default 1s.
	WatchInterval time.Duration

	seqMu sync.Mutex
	seqs  map[uint64]uint64 // version → sequence, facts that never change
}

// NewFleetService returns the fleet view.
func NewFleetService(hub *Hub) *FleetService {
	return &FleetService{hub: hub, ReadTimeout: 2 * time.Second, WatchInterval: time.Second, seqs: map[uint64]uint64{}}
}

// Page sizes of the fleet's lists (see the proto).
const (
	defaultHostPage     = 500
	maxHostPage         = 1000
	defaultFullHostPage = 100 // with status reports
	maxFullHostPage     = 200
	defaultTrustPage    = 100
	maxTrustPage        = 1000
)

// HostName is a host's resource name, "hosts/{fqdn}".
func HostName(host string) string { return "hosts/" + host }

// hostFromName reads a host's resource name, or else the bare FQDN older
// clients send.
func hostFromName(name, host string) (string, error) {
	if name == "" {
		if host == "" {
			return "", invalid("name", "", `a host's resource name, "hosts/{fqdn}"`)
		}
		return host, nil
	}
	h, ok := strings.CutPrefix(name, "hosts/")
	if !ok || h == "" || strings.Contains(h, "/") {
		return "", invalid("name", name, `a host's resource name, "hosts/{fqdn}"`)
	}
	return h, nil
}

// fromStore runs read against etcd, bounded by ReadTimeout (see readOrStale).
func (s *FleetService) fromStore(ctx context.Context, read func(context.Context) error) (*pb.Staleness, error) {
	return readOrStale(ctx, s.hub, s.ReadTimeout, read)
}

// readOrStale runs read against etcd, bounded by timeout (2s when 0). It
// returns nil when etcd answered; a Staleness when it did not (or the hub
// has lost etcd) and the caller is to answer from the hub's view; an
// error when there is no view to answer from or read failed otherwise.
func readOrStale(ctx context.Context, hub *Hub, timeout time.Duration, read func(context.Context) error) (*pb.Staleness, error) {
	v := hub.view
	if st := v.lostMark(hub.cfg.Now()); st != nil {
		return st, nil
	}
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	err := read(rctx)
	cancel()
	if err == nil {
		return nil, nil
	}
	if _, loaded := v.lostReason(); ctx.Err() != nil || !loaded || status.Code(toStatus(err)) != codes.Unavailable {
		return nil, err
	}
	hub.log.Warn("etcd did not answer a read; answering from the last view", "error", err)
	return v.staleness(hub.cfg.Now(), "etcd did not answer: "+err.Error()), nil
}

// sortedHosts is the current topology's hosts (of one deployment, when
// set) sorted by name.
func sortedHosts(snap snapshot, deployment string) []string {
	if snap.topo == nil {
		return nil
	}
	if deployment == "" {
		return snap.topo.order // sorted when compiled
	}
	hosts := slices.Clone(snap.topo.deployments[deployment])
	slices.Sort(hosts)
	return hosts
}

// ListHosts implements the RPC; see the proto for its contract.
func (s *FleetService) ListHosts(ctx context.Context, req *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	full := req.GetView() == pb.HostView_HOST_VIEW_FULL
	size, err := pagetoken.Size(req.GetPageSize(), defaultHostPage, maxHostPage)
	if full {
		size, err = pagetoken.Size(req.GetPageSize(), defaultFullHostPage, maxFullHostPage)
	}
	if err != nil {
		return nil, err
	}
	after := ""
	if tok := req.GetPageToken(); tok != "" {
		c, err := pagetoken.Decode("ListHosts", tok)
		if err != nil {
			return nil, err
		}
		dep, last, _ := strings.Cut(c, "\x00")
		if dep != req.GetDeployment() {
			return nil, pagetoken.Invalid("page_token", tok, fmt.Sprintf("a token of a listing of deployment %q, not %q: pass the same deployment as the call that returned it", dep, req.GetDeployment()))
		}
		after = last
	}
	resp := &pb.ListHostsResponse{}
	// The page's hosts from the current topology, then the hub's state of
	// those hosts only (again if the topology changed in between).
	var snap snapshot
	var all, page []string
	var i int
	for topo := s.hub.currentCompiled(); ; {
		all = sortedHosts(snapshot{topo: topo}, req.GetDeployment())
		i, _ = slices.BinarySearch(all, after)
		if i < len(all) && all[i] == after {
			i++
		}
		page = all[i:min(i+size, len(all))]
		if snap = s.hub.snapshotOf(page); snap.topo == topo {
			break
		}
		topo = snap.topo
	}
	if len(page) == 0 {
		return resp, nil
	}
	var states map[string]*pb.Host
	stale, err := s.fromStore(ctx, func(ctx context.Context) error {
		var err error
		if states, err = s.statesOf(ctx, page, req.GetDeployment() == ""); err != nil || !full {
			return err
		}
		resp.Statuses, err = s.reportsOf(ctx, page, req.GetDeployment() == "")
		return err
	})
	if err != nil {
		return nil, err
	}
	if stale != nil {
		states, resp.Stale = s.hub.view.statesOf(page), stale
		if full {
			resp.Statuses = map[string]*pb.StatusReport{}
			for _, h := range page {
				r, err := s.hub.view.report(h)
				if err != nil {
					return nil, err
				}
				if r != nil {
					resp.Statuses[h] = r
				}
			}
		}
	}
	seq := s.sequencer(ctx, snap, stale != nil)
	now := s.hub.cfg.Now()
	for _, host := range page {
		resp.Hosts = append(resp.Hosts, hostView(snap, host, states[host], seq, now))
	}
	if i+len(page) < len(all) {
		resp.NextPageToken = pagetoken.Encode("ListHosts", req.GetDeployment()+"\x00"+page[len(page)-1])
	}
	return resp, nil
}

// statesOf reads the stored states of a page of hosts sorted by name:
// one range read from the first to the last when they are contiguous in
// the fleet (no filter), else one Get per host in transactions.
func (s *FleetService) statesOf(ctx context.Context, hosts []string, contiguous bool) (map[string]*pb.Host, error) {
	st := s.hub.cfg.Store
	if contiguous {
		return st.HostStatesBetween(ctx, hosts[0], hosts[len(hosts)-1])
	}
	return st.HostStatesOf(ctx, hosts)
}

// reportsOf is statesOf for status reports.
func (s *FleetService) reportsOf(ctx context.Context, hosts []string, contiguous bool) (map[string]*pb.StatusReport, error) {
	st := s.hub.cfg.Store
	if !contiguous {
		return st.HostReportsOf(ctx, hosts)
	}
	out, err := st.HostReportsBetween(ctx, hosts[0], hosts[len(hosts)-1])
	for h := range out {
		// Reports of hosts no longer in the topology stay stored.
		if _, in := slices.BinarySearch(hosts, h); !in {
			delete(out, h)
		}
	}
	return out, err
}

// GetHost implements the RPC; see the proto for its contract.
func (s *FleetService) GetHost(ctx context.Context, req *pb.GetHostRequest) (*pb.GetHostResponse, error) {
	host, err := hostFromName(req.GetName(), req.GetHost())
	if err != nil {
		return nil, err
	}
	snap := s.hub.snapshotOf([]string{host})
	if snap.topo == nil || snap.topo.hosts[host] == nil {
		return nil, status.Errorf(codes.NotFound, "host %q is not in the current topology", host)
	}
	var st *pb.Host
	var rep *pb.StatusReport
	stale, err := s.fromStore(ctx, func(ctx context.Context) error {
		var err error
		st, rep, err = s.hub.cfg.Store.HostRecord(ctx, host)
		return err
	})
	if err != nil {
		return nil, err
	}
	if stale != nil {
		st = s.hub.view.state(host)
		if rep, err = s.hub.view.report(host); err != nil {
			return nil, err
		}
	}
	return &pb.GetHostResponse{Host: hostView(snap, host, st, s.sequencer(ctx, snap, stale != nil), s.hub.cfg.Now()), Status: rep, Stale: stale}, nil
}

// snapshotOf is snapshot for some hosts only: what a page of ListHosts
// or GetHost needs, in time proportional to them, whatever the fleet's
// size.
func (h *Hub) snapshotOf(hosts []string) snapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := snapshot{topo: h.topo, primaries: map[string]string{}, present: map[string]bool{}, connected: map[string]bool{}, desired: map[string]*desired{}, pending: map[string]pendingPush{}}
	if h.topo == nil {
		return s
	}
	for _, host := range hosts {
		cfg := h.topo.hosts[host]
		if cfg == nil {
			continue
		}
		dep := cfg.GetDeployment()
		s.primaries[dep] = h.primaries[dep]
		s.present[host] = h.present[host]
		if c := h.conns[host]; c != nil {
			s.connected[host] = true
			c.mu.Lock()
			if c.pending != nil {
				s.pending[host] = pendingPush{version: c.pending.GetVersion(), since: c.pendingSince}
			}
			c.mu.Unlock()
		}
		s.desired[host] = h.desiredLocked(host)
	}
	return s
}

// sequencer returns the sequence number operators know a version by (0
// when it is not a stored revision). Numbers are remembered (they never
// change); one not known yet is read from etcd, unless the call answers
// from the last view (stale), when it shows as unknown.
func (s *FleetService) sequencer(ctx context.Context, snap snapshot, stale bool) func(uint64) uint64 {
	if snap.topo != nil && snap.topo.sequence > 0 {
		s.rememberSeq(snap.topo.revision, snap.topo.sequence)
	}
	return func(v uint64) uint64 {
		if v == 0 {
			return 0
		}
		s.seqMu.Lock()
		n, ok := s.seqs[v]
		s.seqMu.Unlock()
		if ok || stale {
			return n
		}
		n, err := s.hub.cfg.Store.SequenceOf(ctx, v)
		if err != nil {
			return 0 // a version from before the history, or a read failure: shown as unknown
		}
		s.rememberSeq(v, n)
		return n
	}
}

func (s *FleetService) rememberSeq(v, n uint64) {
	s.seqMu.Lock()
	defer s.seqMu.Unlock()
	if s.seqs == nil {
		s.seqs = map[uint64]uint64{}
	}
	if len(s.seqs) >= 4096 { // bounded: versions in use are few
		clear(s.seqs)
	}
	s.seqs[v] = n
}

// RetryHost implements the RPC; see the proto for its contract.
func (s *FleetService) RetryHost(ctx context.Context, req *pb.RetryHostRequest) (*pb.RetryHostResponse, error) {
	h := s.hub
	host, err := hostFromName(req.GetName(), req.GetHost())
	if err != nil {
		return nil, err
	}
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
		Name:           HostName(host),
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
		h.Monitor = st.GetMonitor()
		// The host's clock as its reports measured it (status and the
		// skew warnings show it).
		h.ClockOffsetMs, h.LastSeen = st.GetClockOffsetMs(), st.GetLastSeen()
	}
	return h
}
