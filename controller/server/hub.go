// Package server implements the controller's gRPC services: the topology
// API, the fleet view and the agents' Sync stream.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/s2strust/s2strust/controller/metrics"
	"github.com/s2strust/s2strust/controller/rotation"
	"github.com/s2strust/s2strust/controller/secrets"

	"github.com/s2strust/s2strust/controller/rollout"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/store"
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
	// Leadership, when set, makes only the leader choose primaries and
	// fences its writes (leader election among replicas); nil: this
	// replica chooses, as with one replica.
	Leadership Leadership
	// Observer is told what happens on the Sync streams (the metrics);
	// nil observes nothing.
	Observer metrics.SyncObserver
	// StreamObserver hears what happens on the Sync streams, beside the
	// log (LogObserver), which always hears it.
	StreamObserver SyncObserver
	// ReconnectRate is the pace, in agents per second, at which a stopping
	// controller tells its agents to come back (default
	// DefaultReconnectRate), and ReconnectDelay when the first should
	// (default DefaultReconnectDelay): a restart's resync then takes about
	// ReconnectDelay + agents/ReconnectRate, whatever the agents' backoff.
	ReconnectRate  float64
	ReconnectDelay time.Duration
}

// Defaults of Config.ReconnectRate and Config.ReconnectDelay: a thousand
// agents a second is what one two-core controller accepts with room to
// spare (each is a TLS handshake, a read and two writes in shared
// transactions), and a second covers a restart's startup.
const (
	DefaultReconnectRate  = 1000
	DefaultReconnectDelay = time.Second
)

// Hub holds the fleet's live state: the current compiled topology, the
// agents' streams, presence and primaries. It watches etcd with one watch
// per key prefix, never one per agent.
type Hub struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	topo    *compiled
	desired map[string]*desired // cache, by host; reset when topology or primaries change
	// desiredGen counts the changes of desired's inputs (resetDesiredLocked,
	// forgetDesiredLocked): a state built outside h.mu is cached only if
	// none happened meanwhile.
	desiredGen uint64
	// targets is the revision a host should run when it is not the
	// current one (a rollout holds it back); revisions holds those
	// revisions compiled. See SetTargets.
	targets   map[string]uint64
	revisions map[uint64]*compiled
	// latest is the newest rollout, whose targets apply while the
	// current revision is the one it rolls out; rollouts reads them.
	latest    *pb.Rollout
	latestID  uint64
	rollouts  *rollout.Store
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
	// failed is closed when a load of the state from etcd first fails
	// (LoadFailed).
	failed   chan struct{}
	failOnce sync.Once
	nonceSeq uint64
	// stopping is set when the controller shuts down: streams that end then
	// leave their presence keys to expire with the lease.
	stopping atomic.Bool
	// draining is closed when the controller shuts down: every stream sends
	// its agent a Drain and ends. drainSeq numbers the streams drained,
	// drainTotal is how many were open then.
	draining  chan struct{}
	drainOnce sync.Once
	// loadErr is why the last load of the state from etcd failed (see
	// Run). Guarded by mu.
	loadErr error
	// topoChanged is closed, and replaced, each time a revision becomes
	// current (setTopology). Guarded by mu.
	topoChanged chan struct{}
	drainSeq    atomic.Int64
	drainTotal  atomic.Int64
	// stopCtx ends every stream, those in their Hello included, once the
	// drain is over (stopStreams).
	stopCtx     context.Context
	stopStreams context.CancelFunc
	// limits are cfg.Limits with defaults; agents the per-identity state.
	limits AgentLimits
	agents map[string]*agentState
	// observer hears the Sync streams: the log and cfg.Observer.
	observer SyncObserver
	// fresh is the compilation of the document an apply is storing, so
	// that the watch making it current does not parse and compile it
	// again (see offerCompiled).
	fresh *compiled
	// compiles counts stored revisions parsed and compiled (not those
	// an apply handed over): what compile-once saves is visible in tests.
	compiles atomic.Int64
	// view is the last view of the hosts' stored state and reports (view.go).
	view *fleetView
	// writes batches the Sync streams' etcd writes, reads their reads.
	writes *writer
	reads  *reader
}

// Stopping tells the hub the controller is shutting down. Every agent
// stream is sent a Drain naming when to reconnect, spread over the fleet
// at the ReconnectRate, and ends; streams still open after drainWait, or
// opened meanwhile, are cancelled. Presence keys are left to expire with
// the lease, so the primaries keep their roles across a restart. It
// returns once every stream has ended or been cancelled.
func (h *Hub) Stopping() {
	h.stopping.Store(true)
	h.mu.Lock()
	streams := make([]*conn, 0, len(h.conns))
	for _, c := range h.conns {
		streams = append(streams, c)
	}
	h.mu.Unlock()
	h.drainTotal.Store(int64(len(streams)))
	h.drainOnce.Do(func() { close(h.draining) })
	t := time.NewTimer(drainWait)
	defer t.Stop()
wait:
	for _, c := range streams {
		select {
		case <-c.done:
		case <-t.C:
			break wait
		}
	}
	h.stopStreams()
}

// drainWait bounds how long Stopping waits for the streams to take their
// Drain and end before it cancels them.
const drainWait = time.Second

// reconnectAfter is when the i-th stream drained of n should come back:
// after ReconnectDelay (the new controller's startup), spread evenly over
// the time the fleet takes to reconnect at ReconnectRate.
func (h *Hub) reconnectAfter(i, n int64) time.Duration {
	n = max(n, i+1)
	window := time.Duration(float64(n) / h.cfg.ReconnectRate * float64(time.Second))
	return h.cfg.ReconnectDelay + time.Duration(float64(window)*float64(i)/float64(n))
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
	if cfg.ReconnectRate <= 0 {
		cfg.ReconnectRate = DefaultReconnectRate
	}
	if cfg.ReconnectDelay <= 0 {
		cfg.ReconnectDelay = DefaultReconnectDelay
	}
	stopCtx, stopStreams := context.WithCancel(context.Background())
	var observer SyncObserver = LogObserver{Log: cfg.Logger}
	if cfg.StreamObserver != nil {
		observer = Observers{observer, cfg.StreamObserver}
	}
	return &Hub{
		observer:          observer,
		cfg:               cfg,
		log:               cfg.Logger,
		desired:           map[string]*desired{},
		targets:           map[string]uint64{},
		revisions:         map[uint64]*compiled{},
		rollouts:          rollout.NewStore(cfg.Store),
		primaries:         map[string]string{},
		present:           map[string]bool{},
		conns:             map[string]*conn{},
		gone:              map[string]time.Time{},
		due:               map[string]bool{},
		recheckSig:        make(chan struct{}, 1),
		secretThumbprints: map[string]string{},
		ready:             make(chan struct{}),
		failed:            make(chan struct{}),
		limits:            cfg.Limits.withDefaults(),
		agents:            map[string]*agentState{},
		view:              newFleetView(),
		writes:            newWriter(cfg.Store),
		reads:             newReader(cfg.Store),
		draining:          make(chan struct{}),
		topoChanged:       make(chan struct{}),
		stopCtx:           stopCtx,
		stopStreams:       stopStreams,
	}
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Ready is closed once the hub has loaded its state and serves agents.
func (h *Hub) Ready() <-chan struct{} { return h.ready }

// LoadFailed is closed once a load of the hub's state from etcd has failed
// (or a followed watch was lost), the first time; Run retries meanwhile.
func (h *Hub) LoadFailed() <-chan struct{} { return h.failed }

// secretsFor names the secrets a push of cfg carries: the deployment's
// token-issuer secret and, during a rotation's staging, its next one
// (carried under the name "name@vN" the configuration gives it), except on
// a Lync Front End that is not the pool's primary unless
// DeliverLyncIssuerToEveryHost is set.
func (h *Hub) secretsFor(cfg *pb.HostConfig) []secrets.Ref {
	if !h.cfg.DeliverLyncIssuerToEveryHost && cfg.GetProduct() == pb.Product_PRODUCT_LYNC && !cfg.GetPrimary() {
		return nil
	}
	var refs []secrets.Ref
	if name := cfg.GetTokenIssuer().GetSecret(); name != "" {
		// The version the host's target revision pins.
		ref := secrets.Ref{Name: name}
		h.mu.Lock()
		if c := h.targetLocked(cfg.GetHost()); c != nil {
			ref.Version = c.pins[name].Version
		}
		h.mu.Unlock()
		refs = append(refs, ref)
	}
	if next := cfg.GetNextTokenIssuer().GetSecret(); next != "" {
		if name, version, err := rotation.ParseSecretRef(next); err == nil {
			refs = append(refs, secrets.Ref{Name: name, Version: version, As: next})
		}
	}
	return refs
}

func (h *Hub) notify(host string) {
	h.mu.Lock()
	c := h.conns[host]
	h.mu.Unlock()
	if c != nil {
		c.wake()
	}
}

// resetDesiredLocked forgets every cached desired state. h.mu must be held.
func (h *Hub) resetDesiredLocked() {
	h.desired = map[string]*desired{}
	h.desiredGen++
}

// forgetDesiredLocked forgets the hosts' cached desired states. h.mu must
// be held.
func (h *Hub) forgetDesiredLocked(hosts ...string) {
	for _, x := range hosts {
		delete(h.desired, x)
	}
	h.desiredGen++
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

// Leadership is this replica's standing in the leader election.
type Leadership interface {
	// IsLeader reports whether this replica leads now.
	IsLeader() bool
	// Fence returns the comparisons that hold only while this replica
	// leads; every write it makes as leader is conditioned on them.
	Fence() []clientv3.Cmp
}
