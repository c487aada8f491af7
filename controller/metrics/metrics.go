// Package metrics holds the controller's Prometheus metrics: what happens
// on the agents' Sync streams (counted as it happens), the etcd client's
// requests (a gRPC interceptor), rollout progress, and the fleet's state
// (hosts, trust edges, issuer certificates), which is read from the fleet
// view on each scrape so that the metrics and `status` never disagree.
//
// Every metric is registered on the registry of one Metrics, never on
// Prometheus's global default registry: two controllers in one process
// (tests, the demo) keep their own.
//
// Cardinality: counters and histograms carry no host label. Per-host
// gauges (s2strust_host_*) have one series per host of the current
// topology, labelled host and deployment; trust-edge gauges one per edge
// (from, to: deployment names); expiry one per issuing deployment. All are
// bounded by the topology. NACK item kinds are a closed set (ItemKinds);
// anything else counts as "other". etcd methods are etcd's own RPC names.
package metrics

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Namespace prefixes every metric name.
const Namespace = "s2strust"

// SyncObserver is told what happens on the agents' Sync streams. The
// controller's server calls it; Metrics implements it. Calls must be
// cheap and never block: they happen on the streams' goroutines.
type SyncObserver interface {
	// Hello: a stream said a well-formed Hello for host.
	Hello(host string)
	// Connected: host's stream became the host's one stream here.
	Connected(host string)
	// Disconnected: that stream ended.
	Disconnected(host string)
	// Pushed: a desired state of topology revision version went to host.
	Pushed(host string, version uint64)
	// Acked: host applied and verified revision version.
	Acked(host string, version uint64)
	// Nacked: host could not apply revision version; errs say which items.
	Nacked(host string, version uint64, errs []*pb.ItemError)
	// TopologyCurrent: revision became the current topology; committed is
	// when it was applied (stored), the start of commit → ACK latency.
	TopologyCurrent(revision uint64, committed time.Time)
}

// NopSync observes nothing: the server's default.
type NopSync struct{}

// Handshake counts a TLS handshake that passed the controller's checks.
func (m *Metrics) Handshake(resumed bool) {
	kind := "full"
	if resumed {
		kind = "resumed"
	}
	m.handshakes.WithLabelValues(kind).Inc()
}

// Hello implements SyncObserver.
func (NopSync) Hello(string) {}

// Connected implements SyncObserver.
func (NopSync) Connected(string) {}

// Disconnected implements SyncObserver.
func (NopSync) Disconnected(string) {}

// Pushed implements SyncObserver.
func (NopSync) Pushed(string, uint64) {}

// Acked implements SyncObserver.
func (NopSync) Acked(string, uint64) {}

// Nacked implements SyncObserver.
func (NopSync) Nacked(string, uint64, []*pb.ItemError) {}

// TopologyCurrent implements SyncObserver.
func (NopSync) TopologyCurrent(uint64, time.Time) {}

// ItemKinds lists the item kinds NACKs are counted by: the part of an item
// name before "/" ("partner/microsoft.exchange" counts as "partner").
// Agents send the item names, so any other kind counts as "other" and a
// misbehaving agent cannot grow the label set.
func ItemKinds() []string {
	return []string{
		"agent-state", "app-permission", "iis-reset", "issuer-certificate", "local-replica",
		"oauth-configuration", "partner", "product", "remove-partner", "sts-configuration", "verify",
	}
}

// ItemKind is the kind an item name counts under (see ItemKinds).
func ItemKind(item string) string {
	k, _, _ := strings.Cut(item, "/")
	for _, known := range ItemKinds() {
		if k == known {
			return k
		}
	}
	return "other"
}

// Fleet is the fleet view the scrape-time gauges are read from;
// *server.FleetService implements it.
type Fleet interface {
	ListHosts(context.Context, *pb.ListHostsRequest) (*pb.ListHostsResponse, error)
	GetTrustReport(context.Context, *pb.GetTrustReportRequest) (*pb.GetTrustReportResponse, error)
}

// Config configures Metrics.
type Config struct {
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// FleetTimeout bounds reading the fleet view on a scrape (default 5s).
	FleetTimeout time.Duration
	// FleetInterval is the least time between two reads of the fleet view
	// (default 5s); scrapes in between get the last read's values.
	// Negative reads it on every scrape.
	FleetInterval time.Duration
}

// Metrics is the controller's metrics on their own registry.
type Metrics struct {
	reg *prometheus.Registry
	now func() time.Time

	streams     prometheus.Gauge
	hellos      prometheus.Counter
	pushes      prometheus.Counter
	acks        prometheus.Counter
	nacks       *prometheus.CounterVec
	commitToAck prometheus.Histogram

	etcdDuration *prometheus.HistogramVec
	etcdErrors   *prometheus.CounterVec

	handshakes *prometheus.CounterVec

	rolloutActive  prometheus.Gauge
	rolloutStopped prometheus.Gauge
	rolloutWave    prometheus.Gauge
	rolloutWaves   prometheus.Gauge
	rolloutHosts   *prometheus.GaugeVec

	fleet *fleetCollector

	mu sync.Mutex
	// commits maps recent topology revisions to their commit time.
	commits map[uint64]time.Time
	// acked is the revision each host's commit → ACK latency was last
	// observed for, so a re-push of the same revision (a primary moved)
	// is not measured from the original commit again.
	acked map[string]uint64
}

// maxCommits bounds the revisions whose commit time is remembered.
const maxCommits = 16

// New returns the controller's metrics, registered on a new registry
// with the Go runtime and process collectors.
func New(cfg Config) *Metrics {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FleetTimeout <= 0 {
		cfg.FleetTimeout = 5 * time.Second
	}
	if cfg.FleetInterval == 0 {
		cfg.FleetInterval = 5 * time.Second
	}
	m := &Metrics{
		reg:     prometheus.NewRegistry(),
		now:     cfg.Now,
		commits: map[uint64]time.Time{},
		acked:   map[string]uint64{},
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "agent_streams",
			Help: "Agent Sync streams connected to this controller replica."}),
		hellos: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "sync_hellos_total",
			Help: "Well-formed Hellos received on agent Sync streams (reconnects included)."}),
		pushes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "sync_pushes_total",
			Help: "Desired states pushed to agents."}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "sync_acks_total",
			Help: "Desired states agents acknowledged (applied and verified)."}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "sync_nacks_total",
			Help: "Item errors in agents' NACKs, by item kind (the item name before \"/\"); a NACK without items counts under item_kind=\"none\"."}, []string{"item_kind"}),
		commitToAck: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "commit_to_ack_seconds",
			Help:    "Time from a topology revision's commit to each host's ACK of it (first ACK per host and revision).",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300}}),
		etcdDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "etcd_request_duration_seconds",
			Help:    "Duration of the controller's unary etcd requests, by etcd RPC (e.g. etcdserverpb.KV/Range).",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}}, []string{"method"}),
		etcdErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "etcd_request_errors_total",
			Help: "Failed unary etcd requests, by etcd RPC and gRPC status code."}, []string{"method", "code"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "tls_handshakes_total",
			Help: "TLS handshakes that passed the controller's checks, by kind: full, or resumed (a session ticket, which survives restarts and is shared by replicas)."}, []string{"kind"}),
		rolloutActive: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "rollout_active",
			Help: "1 while a rollout is in progress, else 0."}),
		rolloutStopped: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "rollout_stopped",
			Help: "1 when the latest rollout stopped before it completed (a wave failed or it was halted), else 0."}),
		rolloutWave: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "rollout_wave",
			Help: "The wave the latest rollout is at (1-based; 0 before the first)."}),
		rolloutWaves: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "rollout_waves",
			Help: "Waves of the latest rollout."}),
		rolloutHosts: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "rollout_hosts",
			Help: "Hosts of the latest rollout, by state: done (acked the rollout's revision), failed, pending."}, []string{"state"}),
	}
	for _, k := range append(ItemKinds(), "other", "none") {
		m.nacks.WithLabelValues(k) // every kind reads 0 before its first NACK, so rate() sees the first one
	}
	m.fleet = &fleetCollector{d: newFleetDescs(), timeout: cfg.FleetTimeout, minInterval: cfg.FleetInterval, now: cfg.Now}
	m.handshakes.WithLabelValues("full")
	m.handshakes.WithLabelValues("resumed")
	m.reg.MustRegister(m.streams, m.hellos, m.pushes, m.acks, m.nacks, m.commitToAck, m.etcdDuration, m.etcdErrors, m.handshakes,
		m.rolloutActive, m.rolloutStopped, m.rolloutWave, m.rolloutWaves, m.rolloutHosts, m.fleet,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the registry to serve.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SetFleet makes scrapes report the fleet view's hosts, trust edges and
// issuer certificates. Call it once, before serving the registry.
func (m *Metrics) SetFleet(f Fleet) { m.fleet.setFleet(f) }

// Hello implements SyncObserver.
func (m *Metrics) Hello(string) { m.hellos.Inc() }

// Connected implements SyncObserver.
func (m *Metrics) Connected(string) { m.streams.Inc() }

// Disconnected implements SyncObserver.
func (m *Metrics) Disconnected(string) { m.streams.Dec() }

// Pushed implements SyncObserver.
func (m *Metrics) Pushed(string, uint64) { m.pushes.Inc() }

// Acked implements SyncObserver.
func (m *Metrics) Acked(host string, version uint64) {
	m.acks.Inc()
	m.mu.Lock()
	committed, ok := m.commits[version]
	first := m.acked[host] != version
	if ok && first {
		m.acked[host] = version
	}
	m.mu.Unlock()
	if ok && first {
		m.commitToAck.Observe(max(0, m.now().Sub(committed).Seconds()))
	}
}

// Nacked implements SyncObserver.
func (m *Metrics) Nacked(_ string, _ uint64, errs []*pb.ItemError) {
	if len(errs) == 0 {
		m.nacks.WithLabelValues("none").Inc()
	}
	for _, e := range errs {
		m.nacks.WithLabelValues(ItemKind(e.GetItem())).Inc()
	}
}

// TopologyCurrent implements SyncObserver.
func (m *Metrics) TopologyCurrent(revision uint64, committed time.Time) {
	if committed.IsZero() {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.commits[revision] = committed
	for len(m.commits) > maxCommits {
		oldest := revision
		for r := range m.commits {
			oldest = min(oldest, r)
		}
		delete(m.commits, oldest)
	}
}

// RolloutProgress is the state of the latest rollout, for the rollout_*
// gauges.
type RolloutProgress struct {
	// Active: the rollout is in progress.
	Active bool
	// Stopped: it ended before completing (a wave failed or an operator halted it).
	Stopped bool
	// Wave is the current wave (1-based), Waves how many there are.
	Wave, Waves int
	// HostsDone, HostsFailed and HostsPending count the rollout's hosts.
	HostsDone, HostsFailed, HostsPending int
}

// RolloutObserver is what the rollout controller reports its progress
// to; Metrics implements it.
type RolloutObserver interface {
	SetRollout(RolloutProgress)
}

// SetRollout records the latest rollout's progress; the rollout
// controller calls it whenever the progress changes.
func (m *Metrics) SetRollout(p RolloutProgress) {
	m.rolloutActive.Set(b2f(p.Active))
	m.rolloutStopped.Set(b2f(p.Stopped))
	m.rolloutWave.Set(float64(p.Wave))
	m.rolloutWaves.Set(float64(p.Waves))
	m.rolloutHosts.WithLabelValues("done").Set(float64(p.HostsDone))
	m.rolloutHosts.WithLabelValues("failed").Set(float64(p.HostsFailed))
	m.rolloutHosts.WithLabelValues("pending").Set(float64(p.HostsPending))
}

// EtcdUnaryInterceptor times the etcd client's unary requests and counts
// their errors; install it with grpc.WithChainUnaryInterceptor in the
// etcd client's DialOptions. It sees each attempt of the client's retries.
func (m *Metrics) EtcdUnaryInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		start := m.now()
		err := invoker(ctx, method, req, reply, cc, opts...)
		name := strings.TrimPrefix(method, "/")
		m.etcdDuration.WithLabelValues(name).Observe(m.now().Sub(start).Seconds())
		if err != nil {
			m.etcdErrors.WithLabelValues(name, status.Code(err).String()).Inc()
		}
		return err
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
