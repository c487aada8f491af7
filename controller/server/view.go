package server

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// fleetView is this controller's last view of what etcd holds of the
// hosts: their stored state and latest status reports, loaded with the
// hub's snapshot and followed by its watches (one per prefix, as every
// other prefix the hub follows). The fleet calls read etcd while it
// answers, for read-your-writes; when it does not (no quorum, down) they
// answer from here, marked stale with the view's age, because an
// operator must see the fleet most when the store is down. WatchHosts
// reads it always.
//
// States are small and decoded once; reports are kept as stored and
// decoded when read (the trust report, GetHost while etcd is down), so
// the view costs each host about the bytes etcd stores for it.
type fleetView struct {
	mu      sync.Mutex
	loaded  bool
	states  map[string]*pb.Host
	reports map[string][]byte
	// freshAt is when the view was last known to match etcd: its load,
	// a watch response, a lease keep-alive answered while following.
	freshAt time.Time
	// lost says why the view no longer follows etcd; "" while it does.
	lost string
	// topology is the stored value of topology/current and its revision.
	topology    []byte
	topologyRev int64
	// records are the newest rollouts, rotations, revisions and audit
	// records and every secret's description (viewrecords.go).
	records records
	// changed is closed (and replaced) at every change of the view or of
	// the hub's state the fleet view shows, waking WatchHosts streams.
	changed chan struct{}
	// done is closed when the hub stops, ending WatchHosts streams so
	// that the gRPC server's graceful stop need not wait for them.
	done     chan struct{}
	doneOnce sync.Once
}

func newFleetView() *fleetView {
	return &fleetView{states: map[string]*pb.Host{}, reports: map[string][]byte{}, records: newRecords(), changed: make(chan struct{}), done: make(chan struct{})}
}

// shutdown ends the watchers: the hub stopped.
func (v *fleetView) shutdown() { v.doneOnce.Do(func() { close(v.done) }) }

// bumpLocked wakes the watchers; v.mu is held.
func (v *fleetView) bumpLocked() {
	close(v.changed)
	v.changed = make(chan struct{})
}

// bump wakes the watchers: something they show changed.
func (v *fleetView) bump() {
	v.mu.Lock()
	v.bumpLocked()
	v.mu.Unlock()
}

// errHubStopping ends a stream that follows the view when the hub stops.
var errHubStopping = status.Error(codes.Unavailable, "the controller is stopping; open the stream again to another replica or after its restart")

// untilLoaded waits for the hub's first load of the view (Ready); an
// error when ctx ends or the hub stops first.
func (h *Hub) untilLoaded(ctx context.Context) error {
	select {
	case <-h.Ready():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-h.view.done:
		return errHubStopping
	}
}

// until waits for changed (from wait) or tick (nil: none); an error when
// ctx ends or the hub stops first.
func (v *fleetView) until(ctx context.Context, changed <-chan struct{}, tick <-chan time.Time) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-v.done:
		return errHubStopping
	case <-changed:
	case <-tick:
	}
	return nil
}

// wait returns a channel closed at the next change.
func (v *fleetView) wait() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.changed
}

// load replaces the view with the hub's snapshot of the two prefixes.
func (v *fleetView) load(statePrefix string, states []*mvccpb.KeyValue, reportPrefix string, reports []*mvccpb.KeyValue, now time.Time) error {
	st := make(map[string]*pb.Host, len(states))
	for _, kv := range states {
		h := &pb.Host{}
		if err := proto.Unmarshal(kv.Value, h); err != nil {
			return fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		st[strings.TrimPrefix(string(kv.Key), statePrefix)] = h
	}
	rep := make(map[string][]byte, len(reports))
	for _, kv := range reports {
		rep[strings.TrimPrefix(string(kv.Key), reportPrefix)] = kv.Value
	}
	v.mu.Lock()
	v.states, v.reports, v.loaded, v.freshAt, v.lost = st, rep, true, now, ""
	v.bumpLocked()
	v.mu.Unlock()
	return nil
}

// apply follows one watch response on the state (reports false) or report
// prefix. It returns the hosts whose state now says otherwise of monitor
// mode than before, whose deployments' primaries the hub re-evaluates.
func (v *fleetView) apply(prefix string, reports bool, wr clientv3.WatchResponse, now time.Time) (monitorChanged []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, ev := range wr.Events {
		host := strings.TrimPrefix(string(ev.Kv.Key), prefix)
		put := ev.Type == clientv3.EventTypePut
		switch {
		case reports && put:
			v.reports[host] = ev.Kv.Value
		case reports:
			delete(v.reports, host)
		case put:
			h := &pb.Host{}
			if proto.Unmarshal(ev.Kv.Value, h) != nil {
				// Shown as no state rather than stopping the view; the
				// etcd reads of the fleet calls report the decode error.
				h = nil
			}
			if v.states[host].GetMonitor() != h.GetMonitor() {
				monitorChanged = append(monitorChanged, host)
			}
			v.states[host] = h
		default:
			if v.states[host].GetMonitor() {
				monitorChanged = append(monitorChanged, host)
			}
			delete(v.states, host)
		}
	}
	if v.lost == "" {
		v.freshAt = now
	}
	v.bumpLocked()
	return monitorChanged
}

// setTopology records the current topology as stored.
func (v *fleetView) setTopology(value []byte, rev int64) {
	v.mu.Lock()
	v.topology, v.topologyRev = value, rev
	v.mu.Unlock()
}

// currentTopology is the stored value of the current topology, nil
// before one was applied.
func (v *fleetView) currentTopology() ([]byte, int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.topology, v.topologyRev
}

// confirm records that etcd answered while the view follows it.
func (v *fleetView) confirm(now time.Time) {
	v.mu.Lock()
	if v.lost == "" && v.loaded {
		v.freshAt = now
	}
	v.mu.Unlock()
}

// markLost records that the hub stopped following etcd, and why.
func (v *fleetView) markLost(reason string) {
	v.mu.Lock()
	if v.lost == "" {
		v.lost = reason
		v.bumpLocked()
	}
	v.mu.Unlock()
}

// lostReason is why the view no longer follows etcd ("" while it does),
// and whether there is a view at all.
func (v *fleetView) lostReason() (reason string, loaded bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.lost, v.loaded
}

// lostMark is the stale mark of an answer from the view while the hub no
// longer follows etcd; nil while it does, or before there is a view.
func (v *fleetView) lostMark(now time.Time) *pb.Staleness {
	if lost, loaded := v.lostReason(); lost != "" && loaded {
		return v.staleness(now, "the controller lost etcd: "+lost)
	}
	return nil
}

// staleness marks an answer from the view, for the given reason.
func (v *fleetView) staleness(now time.Time, reason string) *pb.Staleness {
	v.mu.Lock()
	defer v.mu.Unlock()
	return &pb.Staleness{AsOf: timestamp(v.freshAt), AgeMs: now.Sub(v.freshAt).Milliseconds(), Reason: reason}
}

// state is a host's stored state as last seen, nil when none. The message
// is shared: callers only read it.
func (v *fleetView) state(host string) *pb.Host {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.states[host]
}

// statesOf returns the last seen states of hosts (shared, read-only).
func (v *fleetView) statesOf(hosts []string) map[string]*pb.Host {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make(map[string]*pb.Host, len(hosts))
	for _, h := range hosts {
		if st := v.states[h]; st != nil {
			out[h] = st
		}
	}
	return out
}

// report decodes a host's last seen report; nil when none.
func (v *fleetView) report(host string) (*pb.StatusReport, error) {
	v.mu.Lock()
	b, ok := v.reports[host]
	v.mu.Unlock()
	if !ok {
		return nil, nil
	}
	r := &pb.StatusReport{}
	if err := proto.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("decode the report of %s: %w", host, err)
	}
	return r, nil
}

// all decodes every last seen report, with every state (shared).
func (v *fleetView) all() (map[string]*pb.StatusReport, map[string]*pb.Host, error) {
	v.mu.Lock()
	raw := make(map[string][]byte, len(v.reports))
	for h, b := range v.reports {
		raw[h] = b
	}
	states := make(map[string]*pb.Host, len(v.states))
	for h, st := range v.states {
		if st != nil {
			states[h] = st
		}
	}
	v.mu.Unlock()
	reports := make(map[string]*pb.StatusReport, len(raw))
	for h, b := range raw {
		r := &pb.StatusReport{}
		if err := proto.Unmarshal(b, r); err != nil {
			return nil, nil, fmt.Errorf("decode the report of %s: %w", h, err)
		}
		reports[h] = r
	}
	return reports, states, nil
}
