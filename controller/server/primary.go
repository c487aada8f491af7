package server

import (
	"context"
	"time"
)

// adoptPrimary takes the primary recorded in etcd (by this or another
// replica) as the truth.
func (h *Hub) adoptPrimary(dep, host string) {
	h.mu.Lock()
	if h.primaries[dep] == host {
		h.mu.Unlock()
		return
	}
	h.primaries[dep] = host
	var hosts []string
	if h.topo != nil {
		hosts = h.topo.deployments[dep]
	}
	for _, x := range hosts {
		delete(h.desired, x)
	}
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
// a compare-and-swap in etcd, so replicas sharing a cluster agree on it.
func (h *Hub) reselect(ctx context.Context, dep string) {
	h.reselectMu.Lock()
	defer h.reselectMu.Unlock()
	h.mu.Lock()
	if h.topo == nil {
		h.mu.Unlock()
		return
	}
	hosts := h.topo.deployments[dep]
	cur := h.primaries[dep]
	now := h.cfg.Now()
	alive := func(x string) bool {
		if h.present[x] || h.conns[x] != nil {
			return true
		}
		// The primary keeps its role for a grace period after its stream ends.
		t, ok := h.gone[x]
		return ok && x == cur && now.Sub(t) < h.cfg.PrimaryGrace
	}
	member := false
	for _, x := range hosts {
		if x == cur {
			member = true
		}
	}
	next := cur
	if !member || !alive(cur) {
		for _, x := range hosts {
			if alive(x) {
				next = x
				break
			}
		}
		if !member && next == cur {
			next = ""
		}
	}
	h.mu.Unlock()
	if next == cur || next == "" {
		return
	}
	won, stored, err := h.cfg.Store.SwapPrimary(ctx, dep, cur, next)
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
