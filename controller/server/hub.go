// Package server implements the controller's gRPC services: the topology
// API, the fleet view and the agents' Sync stream.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/metrics"
	"github.com/s2strust/s2strust/controller/secrets"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// SecretSource gives the key material a host configuration refers to.
type SecretSource interface {
	// SecretVersions returns the given versions of secrets (0: the
	// newest), decrypted.
	SecretVersions(ctx context.Context, refs []secrets.Ref) ([]*pb.SecretMaterial, error)
}

// Config holds the hub's dependencies.
type Config struct {
	Store  *store.Store
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// ID names this controller replica in presence keys.
	ID string
	// PresenceTTL is the lease TTL of presence keys (default 10s): how long
	// a crashed controller's agents still count as present, which keeps
	// primaries stable across a restart.
	PresenceTTL time.Duration
	// Secrets resolves token-issuer secrets; nil means none can be delivered.
	Secrets SecretSource
	// PrimaryGrace is how long a deployment's primary keeps its role after
	// its agent disconnects (default 30s), so an agent restart does not
	// move the role and re-send configurations to the whole deployment.
	PrimaryGrace time.Duration
	// A Lync pool's token-issuer PFX goes to the pool's primary only: Import-CsCertificate -Identity Global
	// runs once and the Central Management Store replicates the
	// certificate to every Front End, so the others need no key material
	// (https://learn.microsoft.com/en-ca/skypeforbusiness/manage/authentication/assign-a-server-to-server-certificate).
	// Every Front End still verifies its local replica (thumbprint and
	// private key present). DeliverLyncIssuerToEveryHost sends it to every
	// Front End instead (the behaviour before s2strust modelled the CMS).
	DeliverLyncIssuerToEveryHost bool
	// Limits bound what each agent identity may cost the controller.
	Limits AgentLimits
	// Observer is told what happens on the Sync streams (the metrics);
	// nil observes nothing.
	Observer metrics.SyncObserver
}

// compiled is one topology revision compiled for every host.
type compiled struct {
	revision    uint64
	sequence    uint64 // 0 for a record stored before sequence numbers
	name        string
	hosts       map[string]*pb.HostConfig // by host, Primary unset
	order       []string                  // hosts sorted
	deployments map[string][]string       // deployment → hosts in topology order
	// pins are the secret versions the revision's hosts use; a secret
	// without a pin (a revision stored before pins) uses its newest.
	pins map[string]store.SecretPin
}

// desired is what a host should have now.
type desired struct {
	version uint64
	hash    string
	config  *pb.HostConfig
}

// Hub holds the fleet's live state: the current compiled topology, the
// agents' streams, presence and primaries. It watches etcd with one watch
// per key prefix, never one per agent.
type Hub struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	topo      *compiled
	desired   map[string]*desired  // cache, by host; reset when topology or primaries change
	primaries map[string]string    // deployment → host
	present   map[string]bool      // host → a presence key exists (any replica)
	conns     map[string]*conn     // host → this replica's stream
	gone      map[string]time.Time // host → when its stream ended here
	due       map[string]bool      // deployments whose primary's grace ended
	// recheckSig wakes Run to re-evaluate the due deployments.
	recheckSig chan struct{}
	// secretThumbprints maps secret names to their certificate's
	// thumbprint, part of the desired state of hosts that use them.
	secretThumbprints map[string]string
	// reselectMu serializes primary choices, etcd write included.
	reselectMu sync.Mutex
	readyOnce  sync.Once
	lease      clientv3.LeaseID
	ready      chan struct{}
	nonceSeq   uint64
	// stopping is set when the controller shuts down: streams that end then
	// leave their presence keys to expire with the lease.
	stopping atomic.Bool
	// limits are cfg.Limits with defaults; agents the per-identity state.
	limits AgentLimits
	agents map[string]*agentState
}

// Stopping tells the hub the controller is shutting down: it ends the
// agent streams and leaves their presence keys to expire with the lease.
func (h *Hub) Stopping() {
	h.stopping.Store(true)
	h.closeStreams()
}

// NewHub returns a hub; call Run to start it.
func NewHub(cfg Config) *Hub {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PresenceTTL == 0 {
		cfg.PresenceTTL = 10 * time.Second
	}
	if cfg.ID == "" {
		cfg.ID = randomID()
	}
	if cfg.PrimaryGrace == 0 {
		cfg.PrimaryGrace = 30 * time.Second
	}
	if cfg.Observer == nil {
		cfg.Observer = metrics.NopSync{}
	}
	return &Hub{
		cfg:               cfg,
		log:               cfg.Logger,
		desired:           map[string]*desired{},
		primaries:         map[string]string{},
		present:           map[string]bool{},
		conns:             map[string]*conn{},
		gone:              map[string]time.Time{},
		due:               map[string]bool{},
		recheckSig:        make(chan struct{}, 1),
		secretThumbprints: map[string]string{},
		ready:             make(chan struct{}),
		limits:            cfg.Limits.withDefaults(),
		agents:            map[string]*agentState{},
	}
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Ready is closed once the hub has loaded its state and serves agents.
func (h *Hub) Ready() <-chan struct{} { return h.ready }

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
					if h.conns[host] == nil {
						// Back on another replica: a later disconnect starts a new grace.
						delete(h.gone, host)
					}
				} else {
					delete(h.present, host)
					gone = append(gone, host)
					// A host whose stream ended on another replica (or whose
					// lease expired) starts its grace now, as one ending here
					// does; the re-check after the grace moves the primary.
					if _, ok := h.gone[host]; !ok && h.conns[host] == nil {
						h.gone[host] = h.cfg.Now()
						if h.topo != nil && h.topo.hosts[host] != nil {
							h.scheduleRecheckLocked(h.topo.hosts[host].GetDeployment())
						}
					}
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

// setTopology compiles a stored topology and makes it current.
func (h *Hub) setTopology(ctx context.Context, value []byte, rev int64) error {
	rec, err := store.DecodeTopology(value, rev)
	if err != nil {
		return err
	}
	c, err := compileDocument(rec)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.topo = c
	h.desired = map[string]*desired{}
	h.mu.Unlock()
	h.cfg.Observer.TopologyCurrent(rec.Revision, rec.AppliedAt)
	for d := range c.deployments {
		h.reselect(ctx, d)
	}
	h.notifyAll()
	h.log.Info("topology revision current", "revision", rev, "name", rec.Name, "hosts", len(c.order))
	return nil
}

func compileDocument(rec *store.TopologyRecord) (*compiled, error) {
	t, err := topology.Load("stored revision", rec.Document)
	if err != nil {
		return nil, err
	}
	cfgs, err := topology.Compile(t)
	if err != nil {
		return nil, err
	}
	c := &compiled{revision: rec.Revision, sequence: rec.Sequence, name: rec.Name, hosts: map[string]*pb.HostConfig{}, deployments: map[string][]string{}, pins: rec.Secrets}
	for _, cfg := range cfgs {
		c.hosts[cfg.GetHost()] = cfg
		c.order = append(c.order, cfg.GetHost())
		if _, ok := c.deployments[cfg.GetDeployment()]; !ok {
			c.deployments[cfg.GetDeployment()] = cfg.GetDeploymentHosts()
		}
	}
	return c, nil
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

// closeStreams ends every agent stream on this replica, so a shutdown does
// not wait for them; agents reconnect with backoff.
func (h *Hub) closeStreams() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.cancel()
	}
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

// desiredFor returns the host's desired state, nil when the host is not in
// the current topology.
func (h *Hub) desiredFor(host string) *desired {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.desiredLocked(host)
}

func (h *Hub) desiredLocked(host string) *desired {
	if d, ok := h.desired[host]; ok {
		return d
	}
	if h.topo == nil {
		return nil
	}
	base, ok := h.topo.hosts[host]
	if !ok {
		return nil
	}
	cfg := proto.Clone(base).(*pb.HostConfig)
	cfg.Primary = h.primaries[cfg.GetDeployment()] == host
	if name := cfg.GetTokenIssuer().GetSecret(); name != "" {
		// The version the revision pins; storing a newer one changes
		// nothing here. Without a pin, the newest version: replacing it
		// changes the desired state.
		if p, ok := h.topo.pins[name]; ok {
			cfg.TokenIssuer.SecretThumbprint = p.Thumbprint
		} else {
			cfg.TokenIssuer.SecretThumbprint = h.secretThumbprints[name]
		}
	}
	d := &desired{version: h.topo.revision, hash: topology.Hash(cfg), config: cfg}
	h.desired[host] = d
	return d
}

// secretsFor names the secrets a push of cfg carries: the deployment's
// token-issuer secret, except on a Lync Front End that is not the pool's
// primary unless DeliverLyncIssuerToEveryHost is set.
func (h *Hub) secretsFor(cfg *pb.HostConfig) []secrets.Ref {
	name := cfg.GetTokenIssuer().GetSecret()
	if name == "" {
		return nil
	}
	if !h.cfg.DeliverLyncIssuerToEveryHost && cfg.GetProduct() == pb.Product_PRODUCT_LYNC && !cfg.GetPrimary() {
		return nil
	}
	ref := secrets.Ref{Name: name}
	h.mu.Lock()
	if h.topo != nil {
		ref.Version = h.topo.pins[name].Version
	}
	h.mu.Unlock()
	return []secrets.Ref{ref}
}

func (h *Hub) notify(host string) {
	h.mu.Lock()
	c := h.conns[host]
	h.mu.Unlock()
	if c != nil {
		c.wake()
	}
}

func (h *Hub) notifyAll() {
	h.mu.Lock()
	cs := make([]*conn, 0, len(h.conns))
	for _, c := range h.conns {
		cs = append(cs, c)
	}
	h.mu.Unlock()
	for _, c := range cs {
		c.wake()
	}
}

func (h *Hub) nextNonce() string {
	h.mu.Lock()
	h.nonceSeq++
	n := h.nonceSeq
	h.mu.Unlock()
	return fmt.Sprintf("%s-%d", h.cfg.ID, n)
}

// snapshot is a consistent read of the hub for the fleet view.
type snapshot struct {
	topo      *compiled
	primaries map[string]string
	present   map[string]bool
	connected map[string]bool
	desired   map[string]*desired
	pending   map[string]pendingPush // host → the push it has not answered, on this replica
}

// pendingPush is a push awaiting the host's answer.
type pendingPush struct {
	version uint64
	since   time.Time
}

func (h *Hub) snapshot() snapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := snapshot{topo: h.topo, primaries: map[string]string{}, present: map[string]bool{}, connected: map[string]bool{}, desired: map[string]*desired{}, pending: map[string]pendingPush{}}
	for k, v := range h.primaries {
		s.primaries[k] = v
	}
	for k := range h.present {
		s.present[k] = true
	}
	for k, c := range h.conns {
		s.connected[k] = true
		c.mu.Lock()
		if c.pending != nil {
			s.pending[k] = pendingPush{version: c.pending.GetVersion(), since: c.pendingSince}
		}
		c.mu.Unlock()
	}
	if h.topo != nil {
		for _, host := range h.topo.order {
			s.desired[host] = h.desiredLocked(host)
		}
	}
	return s
}

// currentCompiled returns the current compiled topology, or nil.
func (h *Hub) currentCompiled() *compiled {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.topo
}

func timestamp(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
