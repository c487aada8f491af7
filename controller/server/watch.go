package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/s2strust/s2strust/controller/secrets"
)

// Run loads the current state from etcd, then follows it until ctx ends.
// When etcd goes away for longer than the presence lease, or a watch
// fails, it loads the state again and resumes: agents keep their streams
// and the API answers Unavailable meanwhile.
func (h *Hub) Run(ctx context.Context) error {
	delay := 100 * time.Millisecond
	for {
		err := h.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		h.log.Error("lost track of etcd; reloading", "error", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(2*delay, 10*time.Second)
	}
}

// follow loads a consistent snapshot and follows it with one watch per
// key prefix until something fails.
func (h *Hub) follow(ctx context.Context) error {
	st := h.cfg.Store
	if err := st.RepairHistory(ctx); err != nil {
		return err
	}
	lease, err := st.Client().Grant(ctx, int64(h.cfg.PresenceTTL/time.Second))
	if err != nil {
		return fmt.Errorf("grant presence lease: %w", err)
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ka, err := st.Client().KeepAlive(lctx, lease.ID)
	if err != nil {
		return fmt.Errorf("keep presence lease alive: %w", err)
	}
	// One transaction: the watches start exactly where the snapshot ends.
	snap, err := st.Client().Txn(ctx).Then(
		clientv3.OpGet(st.Key("topology/current")),
		clientv3.OpGet(st.PrimaryPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(st.PresencePrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(st.SecretsPrefix(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return fmt.Errorf("read controller state: %w", err)
	}
	startRev := snap.Header.Revision
	topoKVs := snap.Responses[0].GetResponseRange().GetKvs()
	now := h.cfg.Now()
	h.mu.Lock()
	h.lease = lease.ID
	h.primaries = map[string]string{}
	for _, kv := range snap.Responses[1].GetResponseRange().GetKvs() {
		dep := strings.TrimPrefix(string(kv.Key), st.PrimaryPrefix())
		h.primaries[dep] = string(kv.Value)
		// A stored primary keeps its role for the grace period while its
		// agent reconnects after a controller restart.
		if _, ok := h.gone[string(kv.Value)]; !ok && h.conns[string(kv.Value)] == nil {
			h.gone[string(kv.Value)] = now
		}
		h.scheduleRecheckLocked(dep)
	}
	h.present = map[string]bool{}
	for _, kv := range snap.Responses[2].GetResponseRange().GetKvs() {
		h.present[st.HostFromPresenceKey(kv.Key)] = true
	}
	h.secretThumbprints = map[string]string{}
	for _, kv := range snap.Responses[3].GetResponseRange().GetKvs() {
		h.secretThumbprints[strings.TrimPrefix(string(kv.Key), st.SecretsPrefix())] = secretThumbprint(kv.Value)
	}
	h.desired = map[string]*desired{}
	local := make([]*conn, 0, len(h.conns))
	for _, c := range h.conns {
		local = append(local, c)
	}
	h.mu.Unlock()
	// Streams that outlived a lost lease are present again under the new one.
	for _, c := range local {
		rev, err := st.SetPresent(ctx, c.host, h.cfg.ID, lease.ID)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.presenceRev = rev
		c.mu.Unlock()
	}
	if len(topoKVs) == 1 {
		if err := h.setTopology(ctx, topoKVs[0].Value, topoKVs[0].ModRevision); err != nil {
			return err
		}
	}
	h.readyOnce.Do(func() { close(h.ready) })
	h.notifyAll()
	h.log.Info("controller state loaded", "revision", startRev, "primaries", len(h.primaries), "present", len(h.present))

	wctx := clientv3.WithRequireLeader(lctx)
	watch := func(prefix string) clientv3.WatchChan {
		return st.Client().Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(startRev+1))
	}
	topoWatch, presWatch, primWatch, secWatch := watch(st.TopologyPrefix()), watch(st.PresencePrefix()), watch(st.PrimaryPrefix()), watch(st.SecretsPrefix())
	check := func(what string, wr clientv3.WatchResponse, ok bool) error {
		if !ok {
			return fmt.Errorf("%s watch closed", what)
		}
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %s: %w", what, err)
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-h.recheckSig:
			h.mu.Lock()
			due := h.due
			h.due = map[string]bool{}
			h.mu.Unlock()
			for dep := range due {
				h.reselect(ctx, dep)
			}
		case _, ok := <-ka:
			if !ok {
				return errors.New("presence lease lost: etcd unreachable for longer than its TTL")
			}
		case wr, ok := <-topoWatch:
			if err := check("topology", wr, ok); err != nil {
				return err
			}
			for _, ev := range wr.Events {
				if ev.Type != clientv3.EventTypePut || !st.IsCurrentTopologyKey(ev.Kv.Key) {
					continue
				}
				if err := h.setTopology(ctx, ev.Kv.Value, ev.Kv.ModRevision); err != nil {
					h.log.Error("compile stored topology", "revision", ev.Kv.ModRevision, "error", err)
				}
			}
		case wr, ok := <-presWatch:
			if err := check("presence", wr, ok); err != nil {
				return err
			}
			var gone []string
			h.mu.Lock()
			for _, ev := range wr.Events {
				host := st.HostFromPresenceKey(ev.Kv.Key)
				if ev.Type == clientv3.EventTypePut {
					h.present[host] = true
				} else {
					delete(h.present, host)
					gone = append(gone, host)
				}
			}
			h.mu.Unlock()
			for _, host := range gone {
				h.reselectFor(ctx, host)
			}
		case wr, ok := <-primWatch:
			if err := check("primary", wr, ok); err != nil {
				return err
			}
			for _, ev := range wr.Events {
				dep := strings.TrimPrefix(string(ev.Kv.Key), st.PrimaryPrefix())
				host := ""
				if ev.Type == clientv3.EventTypePut {
					host = string(ev.Kv.Value)
				}
				h.adoptPrimary(dep, host)
			}
		case wr, ok := <-secWatch:
			if err := check("secrets", wr, ok); err != nil {
				return err
			}
			for _, ev := range wr.Events {
				name := strings.TrimPrefix(string(ev.Kv.Key), st.SecretsPrefix())
				tp := ""
				if ev.Type == clientv3.EventTypePut {
					tp = secretThumbprint(ev.Kv.Value)
				}
				h.secretChanged(name, tp)
			}
		}
	}
}

// secretThumbprint reads the certificate thumbprint of a stored secret.
func secretThumbprint(value []byte) string {
	info, err := secrets.DecodeInfo(value)
	if err != nil {
		return ""
	}
	return info.GetThumbprint()
}

// secretChanged makes hosts whose configuration names the secret get it
// again: its thumbprint is part of their desired state.
func (h *Hub) secretChanged(name, thumbprint string) {
	h.mu.Lock()
	if h.secretThumbprints[name] == thumbprint {
		h.mu.Unlock()
		return
	}
	h.secretThumbprints[name] = thumbprint
	var hosts []string
	if h.topo != nil {
		for host, cfg := range h.topo.hosts {
			if cfg.GetTokenIssuer().GetSecret() == name {
				delete(h.desired, host)
				hosts = append(hosts, host)
			}
		}
	}
	h.mu.Unlock()
	for _, host := range hosts {
		h.notify(host)
	}
}
