package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	agentmetrics "github.com/s2strust/s2strust/agent/metrics"
	"github.com/s2strust/s2strust/agent/syncer"
	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/metricshttp"
	"github.com/s2strust/s2strust/internal/metricshttp/metricstest"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// scrapeUntil scrapes url until cond holds, failing the test with cond's
// last explanation at the deadline.
func scrapeUntil(t *testing.T, url, what string, cond func(metricstest.Scrape) (bool, string)) metricstest.Scrape {
	t.Helper()
	var last metricstest.Scrape
	waitFor(t, waitTimeout, what, func() (bool, string) {
		s, err := metricstest.Get(url)
		if err != nil {
			return false, err.Error()
		}
		last = s
		return cond(s)
	})
	return last
}

// want collects the first mismatch between a scrape and expectations.
type want struct {
	s    metricstest.Scrape
	miss []string
}

func (w *want) eq(v float64, name string, labels ...string) {
	got, ok := w.s.Value(name, labels...)
	if !ok || got != v {
		w.miss = append(w.miss, fmt.Sprintf("%s%v = %v (present %v), want %v", name, labels, got, ok, v))
	}
}

func (w *want) atLeast(v float64, name string, labels ...string) {
	if got := w.s.Sum(name, labels...); got < v {
		w.miss = append(w.miss, fmt.Sprintf("%s%v = %v, want at least %v", name, labels, got, v))
	}
}

func (w *want) result() (bool, string) { return len(w.miss) == 0, strings.Join(w.miss, "; ") }

var contosoEdges = [][2]string{{"exchange", "pool01"}, {"sharepoint", "pool01"}, {"pool01", "exchange"}, {"pool01", "sharepoint"}, {"exchange", "sharepoint"}}

// TestMetricsEndpointsShowTheFleet scrapes a real controller's metrics
// endpoint over HTTP, as Prometheus would, while five mTLS agents converge
// on the example topology: it shows the streams, the ACKs, the commit →
// ACK latency, each host connected and up to date, every trust edge's
// probe result and the issuer certificate's expiry, and the etcd requests
// made. An agent's own endpoint shows its apply, probes and last sync. A
// stopped agent then shows as disconnected.
func TestMetricsEndpointsShowTheFleet(t *testing.T) {
	urls := make(chan string, 1)
	agents := map[string]*agentmetrics.Metrics{}
	f := startFleetWith(t, examples.Contoso, agentOpts{metrics: func(host string) agentmetrics.Recorder {
		m := agentmetrics.New(host, "sim", syncer.Version)
		agents[host] = m
		return m
	}}, func(cfg *app.ServeConfig) {
		cfg.MetricsListen = "127.0.0.1:0"
		cfg.MetricsReady = func(url string) { urls <- url }
	})
	url := <-urls
	if !strings.HasPrefix(url, "http://127.0.0.1:") || !strings.HasSuffix(url, "/metrics") {
		t.Fatalf("metrics URL %q, want http://127.0.0.1:PORT/metrics", url)
	}
	start := time.Now()
	rev := f.apply(examples.Contoso)
	f.waitConverged(rev)
	f.waitEdges("every edge to pass", func(_ string, e *pb.TrustEdge) bool { return e.GetOk() })

	hosts := []string{"fe01.contoso.com", "fe02.contoso.com", "ex01.contoso.com", "ex02.contoso.com", "sp01.contoso.com"}
	s := scrapeUntil(t, url, "the controller's metrics to show the converged fleet", func(s metricstest.Scrape) (bool, string) {
		w := &want{s: s}
		w.eq(1, "s2strust_fleet_view_up")
		w.eq(5, "s2strust_agent_streams")
		w.atLeast(5, "s2strust_sync_hellos_total")
		w.atLeast(5, "s2strust_sync_pushes_total")
		w.atLeast(5, "s2strust_sync_acks_total")
		// One latency sample per host: its first ACK of the revision.
		w.eq(5, "s2strust_commit_to_ack_seconds")
		w.eq(float64(rev), "s2strust_topology_revision")
		for _, h := range hosts {
			w.eq(1, "s2strust_host_connected", "host", h)
			w.eq(1, "s2strust_host_up_to_date", "host", h)
			w.eq(0, "s2strust_host_nacked", "host", h)
			w.eq(0, "s2strust_host_drift_items", "host", h)
			w.eq(float64(rev), "s2strust_host_applied_revision", "host", h)
		}
		for _, e := range contosoEdges {
			w.eq(1, "s2strust_trust_edge_ok", "from", e[0], "to", e[1])
			w.eq(1, "s2strust_trust_edge_probe_ok", "from", e[0], "to", e[1])
			w.eq(0, "s2strust_trust_edge_probes", "from", e[0], "to", e[1], "result", "failed")
			w.eq(0, "s2strust_trust_edge_disabled", "from", e[0], "to", e[1])
		}
		w.atLeast(1, "s2strust_etcd_request_duration_seconds", "method", "etcdserverpb.KV/Txn")
		w.atLeast(1, "s2strust_etcd_request_duration_seconds", "method", "etcdserverpb.KV/Range")
		return w.result()
	})
	if n := len(s["s2strust_trust_edge_ok"].GetMetric()); n != len(contosoEdges) {
		t.Errorf("%d trust-edge series, want %d", n, len(contosoEdges))
	}
	// Agents NACK while they wait on their primary or a partner's metadata;
	// every item they name is of a known kind.
	if n := s.Sum("s2strust_sync_nacks_total", "item_kind", "other"); n != 0 {
		t.Errorf("%v NACKed items of unknown kinds", n)
	}
	// The pool's issuer certificate (the uploaded secret) was made to
	// expire a year from now; the others are the products' own.
	for _, dep := range []string{"pool01", "exchange", "sharepoint"} {
		exp, ok := s.Value("s2strust_issuer_certificate_expiry_timestamp_seconds", "deployment", dep)
		at := time.Unix(int64(exp), 0)
		switch {
		case !ok:
			t.Errorf("no issuer expiry for %s", dep)
		case !at.After(time.Now()):
			t.Errorf("%s issuer expires %s, want in the future", dep, at)
		case dep == "pool01" && (at.Before(start.AddDate(0, 11, 0)) || at.After(time.Now().AddDate(1, 0, 1))):
			t.Errorf("%s issuer expires %s, want about a year from now", dep, at)
		}
	}
	lat := s["s2strust_commit_to_ack_seconds"].GetMetric()[0].GetHistogram()
	if max := time.Since(start).Seconds(); lat.GetSampleSum() <= 0 || lat.GetSampleSum() > 5*max {
		t.Errorf("commit → ACK latencies sum to %vs, want above 0 and below 5 × %vs", lat.GetSampleSum(), max)
	}
	for _, name := range s.Names() {
		if !strings.HasPrefix(name, "s2strust_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("metric %s is not prefixed s2strust_", name)
		}
	}

	// One agent's endpoint, served as s2s-agent run --metrics-listen serves it.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return metricshttp.Serve(ctx, lis, agents["fe01.contoso.com"].Registry(), testLogger(t)) })
	t.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Errorf("agent metrics server: %v", err)
		}
	})
	scrapeUntil(t, metricshttp.URL(lis), "fe01's metrics to show its apply, probes and sync", func(s metricstest.Scrape) (bool, string) {
		w := &want{s: s}
		w.eq(1, "s2strust_agent_info", "host", "fe01.contoso.com", "driver", "sim", "version", syncer.Version)
		w.eq(1, "s2strust_agent_controller_connected")
		w.atLeast(1, "s2strust_agent_apply_duration_seconds", "result", "ok")
		w.eq(1, "s2strust_agent_verification_ok")
		w.eq(0, "s2strust_agent_items", "state", "failed")
		w.atLeast(1, "s2strust_agent_items", "state", "ok")
		// Lync's pool probes the two Exchange hosts and the SharePoint host.
		for _, p := range [][2]string{{"exchange", "ex01.contoso.com"}, {"exchange", "ex02.contoso.com"}, {"sharepoint", "sp01.contoso.com"}} {
			w.eq(1, "s2strust_agent_probe_ok", "to_deployment", p[0], "target_host", p[1])
		}
		if v, _ := s.Value("s2strust_agent_last_successful_sync_timestamp_seconds"); v < float64(start.Unix()) {
			w.miss = append(w.miss, fmt.Sprintf("last successful sync at %v, before the apply at %v", v, start.Unix()))
		}
		return w.result()
	})

	// A stopped agent shows as disconnected; its stream is gone.
	f.agents["sp01.contoso.com"].stop()
	scrapeUntil(t, url, "sp01 to show as disconnected", func(s metricstest.Scrape) (bool, string) {
		w := &want{s: s}
		w.eq(0, "s2strust_host_connected", "host", "sp01.contoso.com")
		w.eq(1, "s2strust_host_connected", "host", "fe01.contoso.com")
		w.eq(4, "s2strust_agent_streams")
		return w.result()
	})
}

// TestMetricsShowANackingHostAndItsFailingEdge breaks one edge's metadata
// URL: the controller's metrics show the receiving pool's primary NACKing,
// NACKed partner items counted as kind "partner", that edge failing and
// Exchange's edges still proved — what the alerts fire on.
func TestMetricsShowANackingHostAndItsFailingEdge(t *testing.T) {
	urls := make(chan string, 1)
	f := startFleetWith(t, examples.Contoso, agentOpts{driftInterval: 500 * time.Millisecond}, func(cfg *app.ServeConfig) {
		cfg.MetricsListen = "127.0.0.1:0"
		cfg.MetricsReady = func(url string) { urls <- url }
	})
	url := <-urls
	broken := bytes.Replace(examples.Contoso, []byte("{from: sharepoint, to: pool01}"),
		[]byte("{from: sharepoint, to: pool01, metadataUrl: \"https://sp.contoso.com/_layouts/15/not-metadata\"}"), 1)
	f.apply(broken)
	scrapeUntil(t, url, "the pool's primary to NACK and the broken edge to fail", func(s metricstest.Scrape) (bool, string) {
		w := &want{s: s}
		primary := ""
		for _, m := range s.Series("s2strust_host_nacked", "deployment", "pool01") {
			if m.GetGauge().GetValue() == 1 {
				for _, l := range m.GetLabel() {
					if l.GetName() == "host" {
						primary = l.GetValue()
					}
				}
			}
		}
		if primary == "" {
			w.miss = append(w.miss, "no pool01 host NACKing")
		}
		w.atLeast(1, "s2strust_sync_nacks_total", "item_kind", "partner")
		w.eq(0, "s2strust_sync_nacks_total", "item_kind", "other")
		w.eq(0, "s2strust_trust_edge_ok", "from", "sharepoint", "to", "pool01")
		// Exchange's edges do not depend on the broken registration.
		w.eq(1, "s2strust_trust_edge_ok", "from", "exchange", "to", "pool01")
		w.eq(1, "s2strust_trust_edge_ok", "from", "exchange", "to", "sharepoint")
		for _, h := range []string{"ex01.contoso.com", "ex02.contoso.com", "sp01.contoso.com"} {
			w.eq(0, "s2strust_host_nacked", "host", h)
		}
		if len(w.miss) > 0 {
			for k, e := range f.trustReport() {
				if !e.GetOk() {
					w.miss = append(w.miss, fmt.Sprintf("%s: %v", k, e.GetProblems()))
				}
			}
		}
		return w.result()
	})
}

// TestAgentsResumeTLSSessionsAfterRestart restarts the controller under a
// converged fleet: the agents come back by resuming their TLS sessions
// (tickets sealed with keys whose root the store keeps), not with full
// mutual-TLS handshakes, and the fleet is converged again.
func TestAgentsResumeTLSSessionsAfterRestart(t *testing.T) {
	urls := make(chan string, 2)
	f := startFleetWith(t, examples.Contoso, agentOpts{}, func(cfg *app.ServeConfig) {
		cfg.MetricsListen = "127.0.0.1:0"
		cfg.MetricsReady = func(url string) { urls <- url }
	})
	url := <-urls
	rev := f.apply(examples.Contoso)
	f.waitConverged(rev)
	scrapeUntil(t, url, "the first connections to be full handshakes", func(s metricstest.Scrape) (bool, string) {
		w := &want{s: s}
		w.eq(5, "s2strust_agent_streams")
		w.atLeast(5, "s2strust_tls_handshakes_total", "kind", "full")
		return w.result()
	})

	f.c = f.c.restart()
	f.conn = f.c.admin()
	url = <-urls
	scrapeUntil(t, url, "every agent to resume its session with the restarted controller", func(s metricstest.Scrape) (bool, string) {
		w := &want{s: s}
		w.eq(5, "s2strust_agent_streams")
		w.atLeast(5, "s2strust_tls_handshakes_total", "kind", "resumed")
		return w.result()
	})
	f.waitConverged(rev)
}
