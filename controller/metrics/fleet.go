package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/s2strust/s2strust/controller/pagetoken"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// fleetDescs are the fleet gauges, read from the fleet view on each scrape.
type fleetDescs struct {
	descFleetUp         *prometheus.Desc
	descHostConnected   *prometheus.Desc
	descHostNacked      *prometheus.Desc
	descHostUpToDate    *prometheus.Desc
	descHostDrift       *prometheus.Desc
	descHostApplied     *prometheus.Desc
	descHostMonitor     *prometheus.Desc
	descDesiredRevision *prometheus.Desc
	descEdgeOK          *prometheus.Desc
	descEdgeProbeOK     *prometheus.Desc
	descEdgeProbes      *prometheus.Desc
	descEdgeDisabled    *prometheus.Desc
	descIssuerExpiry    *prometheus.Desc
}

func newFleetDescs() fleetDescs {
	return fleetDescs{
		descFleetUp: prometheus.NewDesc(Namespace+"_fleet_view_up",
			"1 when this scrape could read the fleet view (hosts and trust report) from etcd, else 0; the fleet gauges are absent when 0.", nil, nil),
		descHostConnected: prometheus.NewDesc(Namespace+"_host_connected",
			"1 when the host's agent has a Sync stream to a controller replica, else 0.", []string{"host", "deployment"}, nil),
		descHostNacked: prometheus.NewDesc(Namespace+"_host_nacked",
			"1 when the host's last answer to a push was a NACK (not one from monitor mode), else 0.", []string{"host", "deployment"}, nil),
		descHostUpToDate: prometheus.NewDesc(Namespace+"_host_up_to_date",
			"1 when the host has applied its desired state, else 0.", []string{"host", "deployment"}, nil),
		descHostDrift: prometheus.NewDesc(Namespace+"_host_drift_items",
			"Items whose actual state drifted from what the host applied, as its agent last reported.", []string{"host", "deployment"}, nil),
		descHostApplied: prometheus.NewDesc(Namespace+"_host_applied_revision",
			"The topology revision the host last applied.", []string{"host", "deployment"}, nil),
		descHostMonitor: prometheus.NewDesc(Namespace+"_host_monitor_mode",
			"1 when the host's agent runs in monitor mode (--apply=false): it plans and applies nothing, and its NACKs are not failures.", []string{"host", "deployment"}, nil),
		descDesiredRevision: prometheus.NewDesc(Namespace+"_topology_revision",
			"The current topology revision.", nil, nil),
		descEdgeOK: prometheus.NewDesc(Namespace+"_trust_edge_ok",
			"1 when the trust report finds nothing wrong with the edge (registration, keys, realms, clock skew, probes), else 0. from issues tokens that to accepts.", []string{"from", "to"}, nil),
		descEdgeProbeOK: prometheus.NewDesc(Namespace+"_trust_edge_probe_ok",
			"1 when the edge has probe results and every probe token was accepted, else 0 (also 0 for a disabled edge, whose tokens are refused).", []string{"from", "to"}, nil),
		descEdgeProbes: prometheus.NewDesc(Namespace+"_trust_edge_probes",
			"Probe results the edge's issuing hosts last reported, by result.", []string{"from", "to", "result"}, nil),
		descEdgeDisabled: prometheus.NewDesc(Namespace+"_trust_edge_disabled",
			"1 when the topology disables the edge (enabled: false), else 0.", []string{"from", "to"}, nil),
		descIssuerExpiry: prometheus.NewDesc(Namespace+"_issuer_certificate_expiry_timestamp_seconds",
			"When the deployment's token-issuer certificate expires, as its primary reports it (unix seconds).", []string{"deployment"}, nil),
	}
}

// fleetCollector reads the fleet view on scrape: `status`, `status
// --trust` and the metrics agree by construction. Reading it costs two
// range reads over every host, so scrapes closer together than
// minInterval (an HA pair of Prometheus servers, a dashboard refreshing)
// share one read.
type fleetCollector struct {
	d           fleetDescs
	timeout     time.Duration
	minInterval time.Duration
	now         func() time.Time
	mu          sync.Mutex
	fleet       Fleet
	// readMu serializes reads, so concurrent scrapes wait for one read.
	readMu sync.Mutex
	last   []prometheus.Metric // guarded by readMu
	lastAt time.Time           // guarded by readMu
}

func (c *fleetCollector) setFleet(f Fleet) {
	c.mu.Lock()
	c.fleet = f
	c.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.d.descFleetUp, c.d.descHostConnected, c.d.descHostNacked, c.d.descHostUpToDate, c.d.descHostDrift, c.d.descHostApplied, c.d.descHostMonitor,
		c.d.descDesiredRevision, c.d.descEdgeOK, c.d.descEdgeProbeOK, c.d.descEdgeProbes, c.d.descEdgeDisabled, c.d.descIssuerExpiry} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	f := c.fleet
	c.mu.Unlock()
	if f == nil {
		return
	}
	c.readMu.Lock()
	if c.last == nil || c.now().Sub(c.lastAt) >= c.minInterval {
		c.last, c.lastAt = c.read(f), c.now()
	}
	ms := c.last
	c.readMu.Unlock()
	for _, m := range ms {
		ch <- m
	}
}

// read reads the fleet view once and returns its gauges.
func (c *fleetCollector) read(f Fleet) []prometheus.Metric {
	var out []prometheus.Metric
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	// Every page of both: a gauge per host and per edge of the fleet.
	hosts, trust := &pb.ListHostsResponse{}, &pb.GetTrustReportResponse{}
	err := pagetoken.All(ctx, func(ctx context.Context, token string) (string, error) {
		r, err := f.ListHosts(ctx, &pb.ListHostsRequest{PageSize: 1000, PageToken: token})
		hosts.Hosts = append(hosts.Hosts, r.GetHosts()...)
		return r.GetNextPageToken(), err
	})
	if err == nil {
		err = pagetoken.All(ctx, func(ctx context.Context, token string) (string, error) {
			r, err := f.GetTrustReport(ctx, &pb.GetTrustReportRequest{PageSize: 1000, PageToken: token})
			trust.Edges = append(trust.Edges, r.GetEdges()...)
			return r.GetNextPageToken(), err
		})
	}
	if err != nil {
		out = append(out, prometheus.MustNewConstMetric(c.d.descFleetUp, prometheus.GaugeValue, 0))
		return out
	}
	out = append(out, prometheus.MustNewConstMetric(c.d.descFleetUp, prometheus.GaugeValue, 1))
	var rev uint64
	for _, h := range hosts.GetHosts() {
		l := []string{h.GetHost(), h.GetDeployment()}
		gauge := func(d *prometheus.Desc, v float64) {
			out = append(out, prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...))
		}
		gauge(c.d.descHostConnected, b2f(h.GetConnected()))
		// A monitor-mode agent NACKs every push by design (it applies
		// nothing): that is not a failing host.
		monitor := h.GetLastResult().GetMonitor()
		gauge(c.d.descHostNacked, b2f(h.GetLastResult().GetKind() == pb.ResultKind_RESULT_KIND_NACK && !monitor))
		gauge(c.d.descHostMonitor, b2f(monitor))
		gauge(c.d.descHostUpToDate, b2f(h.GetDesiredHash() != "" && h.GetAppliedHash() == h.GetDesiredHash()))
		gauge(c.d.descHostDrift, float64(len(h.GetDrift())))
		gauge(c.d.descHostApplied, float64(h.GetAppliedVersion()))
		rev = max(rev, h.GetDesiredVersion())
	}
	if rev > 0 {
		out = append(out, prometheus.MustNewConstMetric(c.d.descDesiredRevision, prometheus.GaugeValue, float64(rev)))
	}
	expiry := map[string]float64{}
	for _, e := range trust.GetEdges() {
		l := []string{e.GetFrom(), e.GetTo()}
		gauge := func(d *prometheus.Desc, v float64, extra ...string) {
			out = append(out, prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append(l, extra...)...))
		}
		ok, failed := 0, 0
		for _, p := range e.GetProbes() {
			if p.GetProbe().GetOk() {
				ok++
			} else {
				failed++
			}
		}
		gauge(c.d.descEdgeOK, b2f(e.GetOk()))
		gauge(c.d.descEdgeProbeOK, b2f(ok > 0 && failed == 0))
		gauge(c.d.descEdgeProbes, float64(ok), "ok")
		gauge(c.d.descEdgeProbes, float64(failed), "failed")
		gauge(c.d.descEdgeDisabled, b2f(e.GetDisabled()))
		if na := e.GetIssuerNotAfter(); na != nil {
			expiry[e.GetFrom()] = float64(na.AsTime().Unix())
		}
	}
	for dep, t := range expiry {
		out = append(out, prometheus.MustNewConstMetric(c.d.descIssuerExpiry, prometheus.GaugeValue, t, dep))
	}
	return out
}
