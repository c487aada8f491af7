package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/pagetoken"
	"github.com/s2strust/s2strust/controller/rollout"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// RolloutSource is the fleet as the rollout engine reads it: the hub's
// live state merged with what each host last stored and reported.
type RolloutSource struct{ hub *Hub }

// NewRolloutSource returns the engine's view of the fleet.
func NewRolloutSource(hub *Hub) *RolloutSource { return &RolloutSource{hub: hub} }

// Observe implements rollout.Source.
func (s *RolloutSource) Observe(ctx context.Context) (rollout.Observations, func(from, to string) bool, error) {
	snap := s.hub.snapshot()
	obs := rollout.Observations{}
	if snap.topo == nil {
		return obs, nil, nil
	}
	rs, err := readHostRecords(ctx, s.hub.cfg.Store)
	if err != nil {
		return nil, nil, err
	}
	seq := (&FleetService{hub: s.hub}).sequencer(ctx, snap, false)
	for _, host := range snap.topo.order {
		obs[host] = rollout.Observation{Host: hostView(snap, host, rs.states[host], seq, s.hub.cfg.Now()), Report: rs.reports[host],
			StateRev: rs.stateRev[host], ReportRev: rs.reportRev[host]}
	}
	disabled := map[[2]string]bool{}
	for _, cfg := range snap.topo.hosts {
		for _, p := range cfg.GetPartners() {
			if !p.GetEnabled() {
				disabled[[2]string{p.GetDeployment(), cfg.GetDeployment()}] = true
			}
		}
	}
	return obs, func(from, to string) bool { return disabled[[2]string{from, to}] }, nil
}

// Current implements rollout.Source.
func (s *RolloutSource) Current(ctx context.Context) (uint64, uint64, string, error) {
	cur, err := s.hub.cfg.Store.CurrentTopology(ctx)
	if err != nil {
		return 0, 0, "", err
	}
	return cur.Revision, cur.Sequence, cur.Hash, nil
}

// newRollout plans the rollout of the revision stored under hash
// (store.RecordHash: topology t's document, with a rotation phase), to be
// stored with the revision in one transaction (withRollout). The hub holds
// every host back to the target the rollout gives it from the moment the
// revision is current. override, from the request, wins over the
// topology's rollout: section. from is the current revision as read from
// etcd (0: none stored). It returns nil when the revision goes to every
// host at once: immediate, or the first revision (no host has anything to
// protect yet).
func (h *Hub) newRollout(ctx context.Context, t *topology.Topology, hash string, next []*pb.HostConfig, override *pb.RolloutStrategy, who, undoOf string, from uint64) (*pb.Rollout, error) {
	strategy, err := rolloutStrategy(t, next, override)
	if err != nil {
		return nil, err
	}
	return h.planRollout(ctx, strategy, hash, next, who, undoOf, from)
}

// planRollout is newRollout with the strategy decided. The plan starts
// from the hub's view of the fleet, so it waits (within
// revisionLoadWait) until the hub has made revision from current: an
// apply right after another would otherwise be planned against the
// revision before, or, after the first, as a first revision, with no
// rollout at all.
func (h *Hub) planRollout(ctx context.Context, strategy *pb.RolloutStrategy, hash string, next []*pb.HostConfig, who, undoOf string, from uint64) (*pb.Rollout, error) {
	if strategy.GetImmediate() || from == 0 {
		return nil, nil
	}
	if err := h.awaitRevision(ctx, from); err != nil {
		return nil, err
	}
	snap := h.snapshot()
	if snap.topo.hash == hash {
		return nil, nil // nothing changes: nothing to roll out
	}
	seq := (&FleetService{hub: h}).sequencer(ctx, snap, false)
	f := rollout.Fleet{Deployment: map[string]string{}, Primaries: snap.primaries, From: map[string]uint64{}, Sequences: map[uint64]uint64{}}
	for _, cfg := range next {
		host := cfg.GetHost()
		f.Order = append(f.Order, host)
		f.Deployment[host] = cfg.GetDeployment()
		if d := snap.desired[host]; d != nil {
			f.From[host] = d.version
			f.Sequences[d.version] = seq(d.version)
		}
	}
	f.Sequences[snap.topo.revision] = seq(snap.topo.revision)
	r := rollout.Plan("", strategy, f, snap.topo.revision, 0, h.cfg.Now())
	r.CreatedBy, r.UndoOf, r.DocumentHash = who, undoOf, hash
	return r, nil
}

// revisionLoadWait bounds how long planning a rollout waits for the hub
// to make the stored current revision its own.
const revisionLoadWait = 10 * time.Second

// awaitRevision returns once the hub's current revision is rev or newer:
// an Unavailable error if that takes longer than revisionLoadWait, or at
// once while the hub does not follow etcd (naming why: a full store's
// error names the quota and the way out).
func (h *Hub) awaitRevision(ctx context.Context, rev uint64) error {
	ctx, cancel := context.WithTimeout(ctx, revisionLoadWait)
	defer cancel()
	for {
		if lost, _ := h.view.lostReason(); lost != "" {
			return h.notFollowing(rev)
		}
		h.mu.Lock()
		have, changed := uint64(0), h.topoChanged
		if h.topo != nil {
			have = h.topo.revision
		}
		h.mu.Unlock()
		if have >= rev {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
				if lost, _ := h.view.lostReason(); lost != "" {
					return h.notFollowing(rev)
				}
				return status.Errorf(codes.Unavailable, "this controller has not yet made revision %d (current in etcd) its own: it has revision %d; retry", rev, have)
			}
			return ctx.Err()
		}
	}
}

// notFollowing is awaitRevision's error while the hub does not follow
// etcd, with the error that made it stop.
func (h *Hub) notFollowing(rev uint64) error {
	h.mu.Lock()
	err := h.loadErr
	h.mu.Unlock()
	msg := fmt.Sprintf("this controller does not follow etcd, so it cannot plan the rollout from revision %d", rev)
	if errors.Is(err, rpctypes.ErrNoSpace) {
		return fmt.Errorf("%s: %w", msg, h.cfg.Store.WriteErr(err))
	}
	return status.Errorf(codes.Unavailable, "%s (%v); retry", msg, err)
}

// rolloutBytes is what storing rollout r adds to its revision's
// transaction: r itself and the running rollout it supersedes, rewritten
// as aborted (nil r: nothing).
func (h *Hub) rolloutBytes(ctx context.Context, r *pb.Rollout) int {
	if r == nil {
		return 0
	}
	n := proto.Size(r)
	if cur, err := h.rollouts.Get(ctx, 0); err == nil && !rollout.Finished(cur.Rollout) {
		n += proto.Size(cur.Rollout) + 256 // its abort reason
	}
	return n
}

// withRollout returns the writes that create plan's rollout (superseding
// the running one) in the transaction storing its revision: the revision
// and its rollout are stored together or not at all. *stored is the
// rollout as written by the last attempt.
func (h *Hub) withRollout(plan *pb.Rollout, stored **pb.Rollout) store.WithTopology {
	return func(ctx context.Context, cur *store.TopologyRecord, seq uint64) ([]clientv3.Cmp, []clientv3.Op, error) {
		r := proto.Clone(plan).(*pb.Rollout)
		if cur != nil {
			r.FromRevision, r.FromSequence = cur.Revision, cur.Sequence
		}
		r.ToSequence = seq
		cmps, ops, _, err := h.rollouts.CreateOps(ctx, r, func(name string) string { return "aborted: superseded by " + name })
		if err != nil {
			return nil, nil, err
		}
		*stored = r
		return cmps, ops, nil
	}
}

// rolloutStrategy is the topology's rollout: section overridden by the
// request's, checked against the hosts of the revision.
func rolloutStrategy(t *topology.Topology, next []*pb.HostConfig, override *pb.RolloutStrategy) (*pb.RolloutStrategy, error) {
	base, err := rollout.FromTopology(t.Rollout)
	if err != nil {
		return nil, err
	}
	strategy := rollout.Merge(base, override)
	hosts := map[string]bool{}
	for _, cfg := range next {
		hosts[cfg.GetHost()] = true
	}
	if err := rollout.Validate(strategy, hosts); err != nil {
		return nil, err
	}
	return strategy, nil
}

// RolloutService implements pb.RolloutServiceServer.
type RolloutService struct {
	pb.UnimplementedRolloutServiceServer
	hub  *Hub
	topo *TopologyService
	// stored reads rollouts for the read calls: from etcd, or from the
	// hub's last view while etcd does not answer.
	stored recordReader[*rollout.Stored, []byte]
}

// NewRolloutService returns the rollout API; topo stores undo revisions.
func NewRolloutService(hub *Hub, topo *TopologyService) *RolloutService {
	rs := hub.rollouts
	return &RolloutService{hub: hub, topo: topo, stored: recordReader[*rollout.Stored, []byte]{
		hub: hub, what: "rollouts", keeps: viewRollouts, kept: keptRollouts,
		get:  func(ctx context.Context, id uint64) (*rollout.Stored, error) { return rs.Get(ctx, id) },
		list: rs.List,
		decode: func(k kept[[]byte]) (*rollout.Stored, error) {
			return rs.Decode([]byte(rs.Key(k.id)), k.val, k.modRev)
		},
	}}
}

// withSequences fills the sequence numbers a rollout stored before they
// were (from_sequence and the rest 0) lacks, so that every answer names
// revisions as operators know them; one not known yet shows as unknown in
// an answer from the last view (stale). What is stored is left as it is.
func (s *RolloutService) withSequences(ctx context.Context, r *pb.Rollout, stale bool) *pb.Rollout {
	missing := func(seq, rev uint64) bool { return seq == 0 && rev != 0 }
	need := missing(r.GetFromSequence(), r.GetFromRevision()) || missing(r.GetToSequence(), r.GetToRevision())
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			need = need || missing(h.GetFromSequence(), h.GetFromRevision()) || missing(h.GetTargetSequence(), h.GetTargetRevision())
		}
	}
	if !need {
		return r
	}
	seq := (&FleetService{hub: s.hub}).sequencer(ctx, s.hub.snapshot(), stale)
	fill := func(n *uint64, rev uint64) {
		if *n == 0 && rev != 0 {
			*n = seq(rev)
		}
	}
	out := proto.Clone(r).(*pb.Rollout)
	fill(&out.FromSequence, out.GetFromRevision())
	fill(&out.ToSequence, out.GetToRevision())
	for _, w := range out.GetWaves() {
		for _, h := range w.GetHosts() {
			fill(&h.FromSequence, h.GetFromRevision())
			fill(&h.TargetSequence, h.GetTargetRevision())
		}
	}
	return out
}

// revisionName names a topology revision as operators know it, by its
// sequence number, with the etcd version beside it.
func revisionName(seq, rev uint64) string {
	if seq == 0 {
		return fmt.Sprintf("version %d", rev)
	}
	return fmt.Sprintf("revision %d (version %d)", seq, rev)
}

// ListRollouts implements the RPC; see the proto for its contract.
func (s *RolloutService) ListRollouts(ctx context.Context, req *pb.ListRolloutsRequest) (*pb.ListRolloutsResponse, error) {
	size, err := pagetoken.Size(req.GetPageSize(), 20, 100)
	if err != nil {
		return nil, err
	}
	// The token is opaque (the newest rollout number not yet listed,
	// inside pagetoken's checksummed envelope), as every List's is.
	var before uint64
	if tok := req.GetPageToken(); tok != "" {
		c, err := pagetoken.Decode("ListRollouts", tok)
		if err != nil {
			return nil, err
		}
		n, err := strconv.ParseUint(c, 10, 64)
		if err != nil || n == 0 {
			return nil, invalid("page_token", tok, "a next_page_token from a previous ListRollouts response")
		}
		before = n
	}
	list, stale, err := s.stored.page(ctx, size+1, before)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListRolloutsResponse{Stale: stale}
	for i, r := range list {
		if i == size {
			resp.NextPageToken = pagetoken.Encode("ListRollouts", strconv.FormatUint(list[i-1].ID, 10))
			break
		}
		resp.Rollouts = append(resp.Rollouts, s.withSequences(ctx, r.Rollout, stale != nil))
	}
	return resp, nil
}

func (s *RolloutService) get(ctx context.Context, name string) (*rollout.Stored, error) {
	id, err := rollout.ParseName(name)
	if err != nil {
		return nil, err
	}
	return s.hub.rollouts.Get(ctx, id)
}

// read is get for the read calls: from the hub's last view, marked
// stale, while etcd does not answer.
func (s *RolloutService) read(ctx context.Context, name string) (*rollout.Stored, *pb.Staleness, error) {
	id, err := rollout.ParseName(name)
	if err != nil {
		return nil, nil, err
	}
	return s.stored.read(ctx, id)
}

// GetRollout implements the RPC; see the proto for its contract.
func (s *RolloutService) GetRollout(ctx context.Context, req *pb.GetRolloutRequest) (*pb.GetRolloutResponse, error) {
	r, stale, err := s.read(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return &pb.GetRolloutResponse{Rollout: s.withSequences(ctx, r.Rollout, stale != nil), Stale: stale}, nil
}

// change applies f to the named rollout with a compare-and-swap,
// retrying when the engine advanced it meanwhile. A refused change
// stores nothing.
func (s *RolloutService) change(ctx context.Context, name string, f func(*pb.Rollout) error) (*pb.Rollout, error) {
	for range 10 {
		cur, err := s.get(ctx, name)
		if err != nil {
			return nil, err
		}
		r := proto.Clone(cur.Rollout).(*pb.Rollout)
		if err := f(r); err != nil {
			return nil, err
		}
		if proto.Equal(r, cur.Rollout) {
			return s.withSequences(ctx, r, false), nil
		}
		if _, err := s.hub.rollouts.Update(ctx, cur, r, nil); err != nil {
			if errors.Is(err, store.ErrConflict) {
				continue
			}
			return nil, err
		}
		return s.withSequences(ctx, r, false), nil
	}
	return nil, fmt.Errorf("%s changed concurrently 10 times in a row: %w", name, store.ErrConflict)
}

// PauseRollout implements the RPC; see the proto for its contract.
func (s *RolloutService) PauseRollout(ctx context.Context, req *pb.PauseRolloutRequest) (*pb.PauseRolloutResponse, error) {
	who := callerName(ctx)
	r, err := s.change(ctx, req.GetName(), func(r *pb.Rollout) error { return rollout.Pause(r, who, s.hub.cfg.Now()) })
	if err != nil {
		return nil, err
	}
	return &pb.PauseRolloutResponse{Rollout: r}, nil
}

// ResumeRollout implements the RPC; see the proto for its contract.
func (s *RolloutService) ResumeRollout(ctx context.Context, req *pb.ResumeRolloutRequest) (*pb.ResumeRolloutResponse, error) {
	r, err := s.change(ctx, req.GetName(), func(r *pb.Rollout) error { return rollout.Resume(r, s.hub.cfg.Now()) })
	if err != nil {
		return nil, err
	}
	return &pb.ResumeRolloutResponse{Rollout: r}, nil
}

// AbortRollout implements the RPC; see the proto for its contract.
func (s *RolloutService) AbortRollout(ctx context.Context, req *pb.AbortRolloutRequest) (*pb.AbortRolloutResponse, error) {
	who := callerName(ctx)
	r, err := s.change(ctx, req.GetName(), func(r *pb.Rollout) error { return rollout.Abort(r, "aborted by "+who, s.hub.cfg.Now()) })
	if err != nil {
		return nil, err
	}
	return &pb.AbortRolloutResponse{Rollout: r}, nil
}

// UndoRollout implements the RPC; see the proto for its contract.
func (s *RolloutService) UndoRollout(ctx context.Context, req *pb.UndoRolloutRequest) (*pb.UndoRolloutResponse, error) {
	cur, err := s.get(ctx, req.GetName())
	if id, _ := rollout.ParseName(req.GetName()); id == 0 && errors.Is(err, store.ErrNotFound) {
		// No rollout yet: the fleet runs the first revision it was given
		// (each later one starts a rollout), so there is nothing before it.
		return nil, rollout.Precondition("cannot undo %q: no rollout yet, so there is no previous revision to go back to (the first revision goes to every host at once; a later apply starts a rollout)",
			req.GetName())
	}
	if err != nil {
		return nil, err
	}
	newest, err := s.hub.rollouts.Get(ctx, 0)
	if err != nil {
		return nil, err
	}
	r := cur.Rollout
	if newest.ID != cur.ID {
		return nil, rollout.Precondition("cannot undo %s: %s is newer; undo that one", r.GetName(), newest.Rollout.GetName())
	}
	if r.GetFromRevision() == 0 {
		return nil, rollout.Precondition("cannot undo %s: it has no previous revision", r.GetName())
	}
	r = s.withSequences(ctx, r, false)
	prev, err := s.hub.cfg.Store.TopologyRevision(ctx, r.GetFromRevision())
	if errors.Is(err, store.ErrNotFound) {
		return nil, rollout.Precondition("cannot undo %s: its previous %s is no longer in the history", r.GetName(), revisionName(r.GetFromSequence(), r.GetFromRevision()))
	}
	if err != nil {
		return nil, fmt.Errorf("cannot undo %s: previous %s: %w", r.GetName(), revisionName(r.GetFromSequence(), r.GetFromRevision()), err)
	}
	strategy := r.GetStrategy()
	if req.GetStrategy() != nil {
		strategy = req.GetStrategy()
	}
	resp, err := s.topo.apply(ctx, &pb.ApplyTopologyRequest{Document: prev.Document, Filename: fmt.Sprintf("revision %d", prev.Sequence), Rollout: strategy}, r.GetName())
	if err != nil {
		return nil, err
	}
	if resp.GetRollout() == "" {
		return nil, rollout.Precondition("cannot undo %s: %s is what the fleet runs already", r.GetName(), revisionName(r.GetFromSequence(), r.GetFromRevision()))
	}
	out, err := s.get(ctx, resp.GetRollout())
	if err != nil {
		return nil, err
	}
	return &pb.UndoRolloutResponse{Rollout: s.withSequences(ctx, out.Rollout, false)}, nil
}

// WatchRollout implements the RPC; see the proto for its contract. It
// follows the rollout in the hub's last view, which the hub's watch of
// the rollouts keeps current (no etcd watch per stream), so a store
// without quorum leaves the stream open: the rollout is sent again marked
// stale when the hub loses etcd, and unmarked at its next change.
func (s *RolloutService) WatchRollout(req *pb.WatchRolloutRequest, stream pb.RolloutService_WatchRolloutServer) error {
	ctx := stream.Context()
	if err := s.hub.untilLoaded(ctx); err != nil {
		return err
	}
	cur, stale, err := s.read(ctx, req.GetName())
	if err != nil {
		return toStatus(err)
	}
	send := func(r *rollout.Stored, stale *pb.Staleness) error {
		return stream.Send(&pb.WatchRolloutResponse{Rollout: s.withSequences(ctx, r.Rollout, stale != nil), Stale: stale})
	}
	finished := func(r *rollout.Stored) bool { return rollout.Finished(r.Rollout) }
	return s.stored.watch(ctx, cur.ID, cur, cur.ModRev, stale, finished, send)
}
