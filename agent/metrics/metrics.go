// Package metrics holds the agent's Prometheus metrics: how long applying
// takes, what the last verification and trust probes found, when the
// agent last synced with the controller, and which driver it runs.
//
// The metrics live on the registry of one Metrics, never on Prometheus's
// global default registry, so several agents in one process (tests, the
// demo) keep their own.
//
// Cardinality: per-probe series are labelled by the probed deployment and
// host, per-metadata series by partner name, all bounded by the host's
// share of the topology; item states are a closed set.
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/protobuf/proto"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Namespace prefixes every metric name.
const Namespace = "s2strust"

// Apply results, the result label of the apply histogram.
const (
	ResultOK      = "ok"      // applied and verified
	ResultPending = "pending" // verification waits on the deployment's primary
	ResultFailed  = "failed"  // apply or verification failed
)

// Recorder is told what the agent does; the syncer calls it and Metrics
// implements it. Calls must be cheap and never block.
type Recorder interface {
	// Applied: one apply and verification of a desired state took d and
	// ended with result (ResultOK, ResultPending or ResultFailed).
	Applied(d time.Duration, result string)
	// Reported: the agent's latest status report (verification items,
	// metadata checks, trust probes).
	Reported(rep *pb.StatusReport)
	// Synced: the controller was told at t that a desired state is applied
	// and verified (an ACK was sent).
	Synced(t time.Time)
	// Connected: the stream to the controller is up (true) or down.
	Connected(up bool)
}

// Nop records nothing: the syncer's default.
type Nop struct{}

// Applied implements Recorder.
func (Nop) Applied(time.Duration, string) {}

// Reported implements Recorder.
func (Nop) Reported(*pb.StatusReport) {}

// Synced implements Recorder.
func (Nop) Synced(time.Time) {}

// Connected implements Recorder.
func (Nop) Connected(bool) {}

// Metrics is the agent's metrics on their own registry.
type Metrics struct {
	reg       *prometheus.Registry
	apply     *prometheus.HistogramVec
	lastSync  prometheus.Gauge
	connected prometheus.Gauge
	report    *reportCollector
}

// New returns the agent's metrics for host running driver, registered on
// a new registry with the Go runtime and process collectors.
func New(host, driver, version string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		apply: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "agent_apply_duration_seconds",
			Help:    "Time to apply a desired state through the driver and verify it, by result (ok, pending, failed).",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}}, []string{"result"}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "agent_last_successful_sync_timestamp_seconds",
			Help: "When the agent last acknowledged a desired state to the controller (unix seconds); 0 before the first."}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "agent_controller_connected",
			Help: "1 while the agent's Sync stream to the controller is up, else 0."}),
		report: newReportCollector(),
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "agent_info",
		Help:        "Always 1; its labels say which host, driver and agent version this is.",
		ConstLabels: prometheus.Labels{"host": host, "driver": driver, "version": version}})
	info.Set(1)
	for _, r := range []string{ResultOK, ResultPending, ResultFailed} {
		m.apply.WithLabelValues(r)
	}
	m.reg.MustRegister(m.apply, m.lastSync, m.connected, m.report, info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the registry to serve.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Applied implements Recorder.
func (m *Metrics) Applied(d time.Duration, result string) {
	m.apply.WithLabelValues(result).Observe(d.Seconds())
}

// Reported implements Recorder.
func (m *Metrics) Reported(rep *pb.StatusReport) { m.report.set(rep) }

// Synced implements Recorder.
func (m *Metrics) Synced(t time.Time) { m.lastSync.Set(float64(t.UnixNano()) / 1e9) }

// Connected implements Recorder.
func (m *Metrics) Connected(up bool) {
	if up {
		m.connected.Set(1)
	} else {
		m.connected.Set(0)
	}
}

// reportDescs are the gauges read from the latest status report.
type reportDescs struct {
	items, verified, probeOK, metadataOK, drift *prometheus.Desc
}

// reportCollector exposes the latest status report.
type reportCollector struct {
	d   reportDescs
	mu  sync.Mutex
	rep *pb.StatusReport
}

func newReportCollector() *reportCollector {
	return &reportCollector{d: reportDescs{
		items: prometheus.NewDesc(Namespace+"_agent_items",
			"Configuration items of the last verification, by state (ok, failed, pending, drifted).", []string{"state"}, nil),
		verified: prometheus.NewDesc(Namespace+"_agent_verification_ok",
			"1 when every item of the last verification is as applied, else 0.", nil, nil),
		probeOK: prometheus.NewDesc(Namespace+"_agent_probe_ok",
			"1 when the last trust probe from this host to the target host was accepted, else 0.", []string{"to_deployment", "target_host"}, nil),
		metadataOK: prometheus.NewDesc(Namespace+"_agent_metadata_ok",
			"1 when the last download of a metadata document succeeded and it held the expected keys, else 0; partner is empty for the host's own deployment's document.", []string{"partner"}, nil),
		drift: prometheus.NewDesc(Namespace+"_agent_drift_items",
			"Items whose actual state drifted from what was applied.", nil, nil),
	}}
}

func (c *reportCollector) set(rep *pb.StatusReport) {
	rep = proto.Clone(rep).(*pb.StatusReport)
	c.mu.Lock()
	c.rep = rep
	c.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *reportCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.d.items, c.d.verified, c.d.probeOK, c.d.metadataOK, c.d.drift} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *reportCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	rep := c.rep
	c.mu.Unlock()
	if rep == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	states := map[string]int{"ok": 0, "failed": 0, "pending": 0, "drifted": 0}
	for _, it := range rep.GetItems() {
		switch it.GetState() {
		case pb.ItemState_ITEM_STATE_OK:
			states["ok"]++
		case pb.ItemState_ITEM_STATE_FAILED:
			states["failed"]++
		case pb.ItemState_ITEM_STATE_PENDING:
			states["pending"]++
		case pb.ItemState_ITEM_STATE_DRIFTED:
			states["drifted"]++
		}
	}
	for s, n := range states {
		gauge(c.d.items, float64(n), s)
	}
	gauge(c.d.verified, b2f(states["ok"] == len(rep.GetItems())))
	gauge(c.d.drift, float64(len(rep.GetDrift())))
	type key struct{ dep, host string }
	probes := map[key]bool{}
	for _, p := range rep.GetProbes() {
		probes[key{p.GetToDeployment(), p.GetTargetHost()}] = p.GetOk()
	}
	for k, ok := range probes {
		gauge(c.d.probeOK, b2f(ok), k.dep, k.host)
	}
	docs := map[string]bool{}
	for _, m := range rep.GetMetadata() {
		ok, seen := docs[m.GetPartner()]
		docs[m.GetPartner()] = m.GetOk() && (ok || !seen)
	}
	for p, ok := range docs {
		gauge(c.d.metadataOK, b2f(ok), p)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
