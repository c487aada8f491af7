package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/controller/rotation"
	"github.com/s2strust/s2strust/controller/secrets"
	"github.com/s2strust/s2strust/controller/store"
)

// Run loads the current state from etcd, then follows it until ctx ends.
// When etcd goes away for longer than the presence lease, or a watch
// fails, it loads the state again and resumes: agents keep their streams
// and the API answers Unavailable meanwhile.
func (h *Hub) Run(ctx context.Context) error {
	defer h.view.shutdown()
	delay := 100 * time.Millisecond
	for {
		err := h.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		h.mu.Lock()
		h.loadErr = err
		h.mu.Unlock()
		h.view.markLost(err.Error())
		h.failOnce.Do(func() { close(h.failed) })
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
	// Host state and reports of a controller before their split.
	if n, err := st.MigrateHostLayout(ctx); err != nil {
		return err
	} else if n > 0 {
		h.log.Info("moved host state and reports to their own key prefixes", "keys", n)
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
		clientv3.OpGet(h.rollouts.Prefix(), append([]clientv3.OpOption{clientv3.WithPrefix()}, clientv3.WithLastKey()...)...),
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
	h.resetDesiredLocked()
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
	var latest *pb.Rollout
	if kvs := snap.Responses[4].GetResponseRange().GetKvs(); len(kvs) == 1 {
		r, err := h.rollouts.Decode(kvs[0].Key, kvs[0].Value, kvs[0].ModRevision)
		if err != nil {
			return err
		}
		latest = r.Rollout
		h.mu.Lock()
		h.latestID = r.ID
		h.mu.Unlock()
	}
	if len(topoKVs) == 1 {
		h.view.setTopology(topoKVs[0].Value, topoKVs[0].ModRevision)
		if err := h.setTopology(ctx, topoKVs[0].Value, topoKVs[0].ModRevision, latest); err != nil {
			return err
		}
	}
	// The hosts' state and reports as of the same revision, in pages (a
	// large fleet's reports exceed one response).
	states, err := rangeAt(ctx, st.Client(), st.HostStatePrefix(), startRev)
	if err != nil {
		return err
	}
	reports, err := rangeAt(ctx, st.Client(), st.HostReportPrefix(), startRev)
	if err != nil {
		return err
	}
	if err := h.view.load(st.HostStatePrefix(), states, st.HostReportPrefix(), reports, h.cfg.Now()); err != nil {
		return err
	}
	h.readyOnce.Do(func() { close(h.ready) })
	h.notifyAll()
	// The rest of what the read calls answer from while etcd does not,
	// once the agents are served.
	recs, err := h.loadRecords(ctx, startRev, snap.Responses[3].GetResponseRange().GetKvs())
	if err != nil {
		return err
	}
	h.view.setRecords(recs)
	h.mu.Lock()
	primaries, present := len(h.primaries), len(h.present)
	h.mu.Unlock()
	h.log.Info("controller state loaded", "revision", startRev, "primaries", primaries, "present", present)

	wctx := clientv3.WithRequireLeader(lctx)
	watch := func(prefix string) clientv3.WatchChan {
		return st.Client().Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(startRev+1))
	}
	topoWatch, presWatch, primWatch, secWatch := watch(st.TopologyPrefix()), watch(st.PresencePrefix()), watch(st.PrimaryPrefix()), watch(st.SecretsPrefix())
	rollWatch := watch(h.rollouts.Prefix())
	stateWatch, reportWatch := watch(st.HostStatePrefix()), watch(st.HostReportPrefix())
	rotWatch, auditWatch := watch(rotation.NewStore(st).Prefix()), watch(auditPrefix(st))
	for {
		var evs []any
		var err error
		select {
		case <-ctx.Done():
			return nil
		case <-h.recheckSig:
			h.mu.Lock()
			due := h.due
			h.due = map[string]bool{}
			h.mu.Unlock()
			hctx, cancel := context.WithTimeout(ctx, handleTimeout)
			for dep := range due {
				h.reselect(hctx, dep)
			}
			cancel()
			continue
		case _, ok := <-ka:
			if !ok {
				return errors.New("presence lease lost: etcd unreachable for longer than its TTL")
			}
			h.view.confirm(h.cfg.Now())
			continue
		case wr, ok := <-stateWatch:
			if _, err := h.decode("host state", wr, ok); err != nil {
				return err
			}
			if hosts := h.view.apply(st.HostStatePrefix(), false, wr, h.cfg.Now()); len(hosts) > 0 {
				// A host on another replica turned to or from monitor
				// mode: it may now be the wrong primary, or the right one.
				hctx, cancel := context.WithTimeout(ctx, handleTimeout)
				for _, host := range hosts {
					h.reselectFor(hctx, host)
				}
				cancel()
			}
			continue
		case wr, ok := <-reportWatch:
			if _, err := h.decode("host report", wr, ok); err != nil {
				return err
			}
			h.view.apply(st.HostReportPrefix(), true, wr, h.cfg.Now())
			continue
		case wr, ok := <-rotWatch:
			if _, err := h.decode("rotations", wr, ok); err != nil {
				return err
			}
			h.followRecords("rotations", wr)
			continue
		case wr, ok := <-auditWatch:
			if _, err := h.decode("audit", wr, ok); err != nil {
				return err
			}
			h.followRecords("audit", wr)
			continue
		case wr, ok := <-topoWatch:
			if evs, err = h.decode("topology", wr, ok); err == nil {
				h.followRecords("topology", wr)
			}
		case wr, ok := <-presWatch:
			evs, err = h.decode("presence", wr, ok)
		case wr, ok := <-primWatch:
			evs, err = h.decode("primary", wr, ok)
		case wr, ok := <-secWatch:
			if evs, err = h.decode("secrets", wr, ok); err == nil {
				h.followRecords("secrets", wr)
			}
		case wr, ok := <-rollWatch:
			if evs, err = h.decode("rollouts", wr, ok); err == nil {
				h.followRecords("rollouts", wr)
			}
		}
		if err != nil {
			return err
		}
		hctx, cancel := context.WithTimeout(ctx, handleTimeout)
		err = h.handle(hctx, evs)
		cancel()
		if err != nil {
			return err
		}
		// Presence, primaries and revisions show in the fleet view too.
		h.view.bump()
	}
}

// rangeAt reads every key under prefix as of etcd revision rev, 1000 at a time.
func rangeAt(ctx context.Context, cli *clientv3.Client, prefix string, rev int64) ([]*mvccpb.KeyValue, error) {
	var out []*mvccpb.KeyValue
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	for {
		resp, err := cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithRev(rev), clientv3.WithLimit(1000))
		if err != nil {
			return nil, fmt.Errorf("read %s at revision %d: %w", prefix, rev, err)
		}
		out = append(out, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			return out, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// The typed events the watches turn into, one kind per key prefix.
type (
	// topologyEvent: a revision became current.
	topologyEvent struct {
		value []byte
		rev   int64
	}
	// presenceEvent: some replica holds (or no longer holds) host's stream.
	presenceEvent struct {
		host    string
		present bool
	}
	// primaryEvent: the deployment's primary recorded in etcd; host is ""
	// when the record was deleted.
	primaryEvent struct{ deployment, host string }
	// secretEvent: a stored secret changed; thumbprint is "" when deleted.
	secretEvent struct{ name, thumbprint string }
	// rolloutEvent: a rollout was stored (created or advanced).
	rolloutEvent struct {
		id      uint64
		rollout *pb.Rollout
	}
)

// decode turns one watch response on the named prefix into typed events.
func (h *Hub) decode(what string, wr clientv3.WatchResponse, ok bool) ([]any, error) {
	if !ok {
		return nil, fmt.Errorf("%s watch closed", what)
	}
	if err := wr.Err(); err != nil {
		return nil, fmt.Errorf("watch %s: %w", what, err)
	}
	st := h.cfg.Store
	var out []any
	for _, ev := range wr.Events {
		put := ev.Type == clientv3.EventTypePut
		switch what {
		case "topology":
			if put && st.IsCurrentTopologyKey(ev.Kv.Key) {
				out = append(out, topologyEvent{value: ev.Kv.Value, rev: ev.Kv.ModRevision})
			}
		case "presence":
			out = append(out, presenceEvent{host: st.HostFromPresenceKey(ev.Kv.Key), present: put})
		case "primary":
			e := primaryEvent{deployment: strings.TrimPrefix(string(ev.Kv.Key), st.PrimaryPrefix())}
			if put {
				e.host = string(ev.Kv.Value)
			}
			out = append(out, e)
		case "secrets":
			e := secretEvent{name: strings.TrimPrefix(string(ev.Kv.Key), st.SecretsPrefix())}
			if put {
				e.thumbprint = secretThumbprint(ev.Kv.Value)
			}
			out = append(out, e)
		case "rollouts":
			if !put {
				continue
			}
			r, err := h.rollouts.Decode(ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision)
			if err != nil {
				h.log.Error("stored rollout unreadable", "key", string(ev.Kv.Key), "error", err)
				continue
			}
			out = append(out, rolloutEvent{id: r.ID, rollout: r.Rollout})
		}
	}
	return out, nil
}

// handle applies typed events in order. Presence is recorded for the whole
// batch before any primary is re-chosen (for every host whose presence
// changed), so one choice sees every change.
// handleTimeout bounds what the hub's loop reads and writes in etcd for
// one batch of events (the rollout a revision was stored with, target
// revisions, primaries): a loop waiting on an etcd without quorum would
// never see its watches fail, so the hub would not mark etcd lost and
// every stale read would first wait out its own timeout.
const handleTimeout = storeTimeout

// handle applies a batch of watch events. It fails when etcd did not
// answer a read a topology revision needs: the loop then loads the state
// again, rather than making the revision current without its rollout
// (which would release it to every host at once).
func (h *Hub) handle(ctx context.Context, evs []any) error {
	var gone []string
	for _, e := range evs {
		if p, ok := e.(presenceEvent); ok {
			h.mu.Lock()
			if p.present {
				h.present[p.host] = true
				if h.conns[p.host] == nil {
					// Back on another replica: a later disconnect starts a new grace.
					delete(h.gone, p.host)
				}
				// The leader may be another replica than the stream's: it
				// chooses a primary for a deployment that has none.
				gone = append(gone, p.host)
			} else {
				delete(h.present, p.host)
				gone = append(gone, p.host)
				// A host whose stream ended on another replica (or whose
				// lease expired) starts its grace now, as one ending here
				// does; the re-check after the grace moves the primary.
				if _, ok := h.gone[p.host]; !ok && h.conns[p.host] == nil {
					h.gone[p.host] = h.cfg.Now()
					if h.topo != nil && h.topo.hosts[p.host] != nil {
						h.scheduleRecheckLocked(h.topo.hosts[p.host].GetDeployment())
					}
				}
			}
			h.mu.Unlock()
		}
	}
	for _, e := range evs {
		switch e := e.(type) {
		case topologyEvent:
			h.view.setTopology(e.value, e.rev)
			latest, err := h.rolloutAt(ctx, e.rev)
			if err != nil {
				return fmt.Errorf("read the rollout of topology revision %d: %w", e.rev, err)
			}
			if err := h.setTopology(ctx, e.value, e.rev, latest); err != nil {
				if storeFailed(ctx, err) {
					return fmt.Errorf("take topology revision %d: %w", e.rev, err)
				}
				h.log.Error("compile stored topology", "revision", e.rev, "error", err)
			}
		case primaryEvent:
			h.adoptPrimary(e.deployment, e.host)
		case secretEvent:
			h.secretChanged(e.name, e.thumbprint)
		case rolloutEvent:
			h.mu.Lock()
			newest := h.latest == nil || h.latestID <= e.id
			if newest {
				h.latestID = e.id
			}
			h.mu.Unlock()
			if newest {
				h.rolloutChanged(ctx, e.rollout)
			}
		}
	}
	for _, host := range gone {
		h.reselectFor(ctx, host)
	}
	return nil
}

// storeFailed says whether err, met under ctx, is etcd not answering
// rather than something wrong with what it holds.
func storeFailed(ctx context.Context, err error) bool {
	return ctx.Err() != nil || status.Code(toStatus(err)) == codes.Unavailable
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
				h.forgetDesiredLocked(host)
				hosts = append(hosts, host)
			}
		}
	}
	h.mu.Unlock()
	for _, host := range hosts {
		h.notify(host)
	}
}

// rolloutAt reads the newest rollout as it was at etcd revision rev (when
// a topology revision was stored), which the rollout watch may not have
// delivered yet; the newest now when that history is compacted. nil when
// there was none; an error when etcd did not answer.
func (h *Hub) rolloutAt(ctx context.Context, rev int64) (*pb.Rollout, error) {
	r, err := h.rollouts.Get(ctx, 0, clientv3.WithRev(rev))
	if errors.Is(err, rpctypes.ErrCompacted) {
		r, err = h.rollouts.Get(ctx, 0)
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	}
	h.mu.Lock()
	if r.ID > h.latestID {
		h.latestID = r.ID
	}
	h.mu.Unlock()
	return r.Rollout, nil
}
