package server

import (
	"context"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// adoptPrimary takes the primary recorded in etcd (by this or another
// replica) as the truth.
func (h *Hub) adoptPrimary(dep, host string) {
	h.mu.Lock()
	if h.primaries[dep] == host {
		h.mu.Unlock()
		return
	}
	prev := h.primaries[dep]
	h.primaries[dep] = host
	// Only the old and the new primary's configurations change (their
	// primary flag): the other hosts of the deployment keep theirs, so a
	// move costs the same for a deployment of any size.
	hosts := []string{host}
	if prev != "" {
		hosts = append(hosts, prev)
	}
	h.forgetDesiredLocked(hosts...)
	h.mu.Unlock()
	for _, x := range hosts {
		h.notify(x)
	}
}

// scheduleRecheckLocked re-evaluates dep's primary once the grace period
// is over. h.mu must be held.
func (h *Hub) scheduleRecheckLocked(dep string) {
	time.AfterFunc(h.cfg.PrimaryGrace, func() {
		h.mu.Lock()
		h.due[dep] = true
		h.mu.Unlock()
		select {
		case h.recheckSig <- struct{}{}:
		default: // Run has a signal pending and will take every due deployment
		}
	})
}

// disconnected records that host's stream ended here and schedules a
// re-check of its deployment's primary once the grace period is over.
func (h *Hub) disconnected(ctx context.Context, host string) {
	h.mu.Lock()
	h.gone[host] = h.cfg.Now()
	var dep string
	if h.topo != nil && h.topo.hosts[host] != nil {
		dep = h.topo.hosts[host].GetDeployment()
	}
	h.mu.Unlock()
	if dep == "" {
		return
	}
	h.reselect(ctx, dep)
	h.mu.Lock()
	h.scheduleRecheckLocked(dep)
	h.mu.Unlock()
}

// reselectFor re-evaluates the primary of host's deployment.
func (h *Hub) reselectFor(ctx context.Context, host string) {
	h.mu.Lock()
	var dep string
	if h.topo != nil {
		if cfg, ok := h.topo.hosts[host]; ok {
			dep = cfg.GetDeployment()
		}
	}
	h.mu.Unlock()
	if dep != "" {
		h.reselect(ctx, dep)
	}
}

// reselect keeps a deployment's primary while it is present and otherwise
// moves it to the first present host in topology order. A sticky primary
// keeps a controller restart from re-sending configurations. The choice is
// a compare-and-swap in etcd, so replicas sharing a cluster agree on it;
// with Config.Leadership set only the leader chooses, its write fenced by
// its leadership, and the others adopt what it records.
func (h *Hub) reselect(ctx context.Context, dep string) {
	if l := h.cfg.Leadership; l != nil && !l.IsLeader() {
		return
	}
	h.reselectMu.Lock()
	defer h.reselectMu.Unlock()
	h.mu.Lock()
	if h.topo == nil {
		h.mu.Unlock()
		return
	}
	cur := h.primaries[dep]
	goneAt, wasGone := h.gone[cur]
	next := choosePrimary(primaryChoice{
		hosts:   h.topo.deployments[dep],
		member:  func(x string) bool { return h.topo.hosts[x].GetDeployment() == dep },
		current: cur,
		live:    func(x string) bool { return h.present[x] || h.conns[x] != nil },
		applies: func(x string) bool {
			if c := h.conns[x]; c != nil {
				return !c.monitor
			}
			// On another replica, or gone within its grace: as its last
			// Hello, stored, says.
			return !h.view.state(x).GetMonitor()
		},
		goneAt: goneAt, wasGone: wasGone,
		now: h.cfg.Now(), grace: h.cfg.PrimaryGrace,
	})
	h.mu.Unlock()
	if next == cur || next == "" {
		return
	}
	won, stored, err := h.swapPrimary(ctx, dep, cur, next)
	if err != nil {
		h.log.Error("record primary", "deployment", dep, "host", next, "error", err)
		return
	}
	if !won {
		// Another replica chose first: take its choice.
		next = stored
	} else {
		h.log.Info("primary chosen", "deployment", dep, "host", next, "previous", cur)
	}
	h.adoptPrimary(dep, next)
}

// primaryChoice is what choosing a deployment's primary depends on.
type primaryChoice struct {
	hosts []string // the deployment's hosts in topology order
	// member says whether a host is one of hosts, in O(1); nil: searched.
	member  func(string) bool
	current string // the recorded primary, "" for none
	// live says whether a host's agent holds a stream on some replica.
	live func(string) bool
	// applies says whether a host's agent applies (is not in monitor
	// mode); nil: every one does.
	applies func(string) bool
	// goneAt is when the current primary's stream ended here (wasGone).
	goneAt  time.Time
	wasGone bool
	now     time.Time
	grace   time.Duration
}

// choosePrimary keeps the current primary while it is a member, live (or
// within its grace period after its stream ended) and applies; otherwise
// it picks the first such host in topology order. A host in monitor mode
// applies nothing, so it is chosen (or kept) only while no host that
// applies is live: it then plans the deployment-wide steps and reports
// them. It returns "" when the current primary left the deployment and no
// host is live, and the current one when it has nothing better.
func choosePrimary(c primaryChoice) string {
	alive := func(x string) bool {
		if c.live(x) {
			return true
		}
		// The primary keeps its role for a grace period after its stream ends.
		return x == c.current && c.wasGone && c.now.Sub(c.goneAt) < c.grace
	}
	applying := func(x string) bool { return alive(x) && (c.applies == nil || c.applies(x)) }
	var member bool
	if c.member != nil {
		member = c.current != "" && c.member(c.current)
	} else {
		member = slices.Contains(c.hosts, c.current)
	}
	if member && applying(c.current) {
		return c.current
	}
	for _, x := range c.hosts {
		if applying(x) {
			return x
		}
	}
	if member && alive(c.current) {
		return c.current
	}
	for _, x := range c.hosts {
		if alive(x) {
			return x
		}
	}
	if !member {
		return ""
	}
	return c.current
}

// swapPrimary records next as dep's primary if the stored one is still
// prev, fenced by the leadership when there is one: a replica that lost
// its leadership writes nothing. won is false when the stored primary is
// not prev (stored is it then) or the fence failed (stored is prev).
func (h *Hub) swapPrimary(ctx context.Context, dep, prev, next string) (won bool, stored string, err error) {
	l := h.cfg.Leadership
	if l == nil {
		return h.cfg.Store.SwapPrimary(ctx, dep, prev, next)
	}
	st := h.cfg.Store
	k := st.PrimaryPrefix() + dep
	cmp := clientv3.Compare(clientv3.Value(k), "=", prev)
	if prev == "" {
		cmp = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
	}
	resp, err := st.Client().Txn(ctx).If(l.Fence()...).Then(
		clientv3.OpTxn([]clientv3.Cmp{cmp}, []clientv3.Op{clientv3.OpPut(k, next)}, []clientv3.Op{clientv3.OpGet(k)}),
	).Commit()
	if err != nil {
		return false, "", fmt.Errorf("record primary of %s: %w", dep, err)
	}
	if !resp.Succeeded {
		h.log.Warn("not recording a primary: this replica is no longer the leader", "deployment", dep, "host", next)
		return false, prev, nil
	}
	inner := resp.Responses[0].GetResponseTxn()
	if inner.GetSucceeded() {
		return true, next, nil
	}
	if kvs := inner.GetResponses()[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
		stored = string(kvs[0].Value)
	}
	return false, stored, nil
}

// ReselectAll re-evaluates every deployment's primary: a replica that has
// just become the leader calls it, since it ignored the changes it saw
// while it was not.
func (h *Hub) ReselectAll(ctx context.Context) {
	h.mu.Lock()
	var deps []string
	if h.topo != nil {
		for d := range h.topo.deployments {
			deps = append(deps, d)
		}
	}
	h.mu.Unlock()
	for _, d := range deps {
		h.reselect(ctx, d)
	}
}
