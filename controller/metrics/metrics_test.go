package metrics

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func gather(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// value is the value of name's series with labels (name=value pairs); a
// histogram's sample count. ok is false when there is none.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	for _, m := range fams[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := len(have) == len(labels)/2
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && have[labels[i]] == labels[i+1]
		}
		if !match {
			continue
		}
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func TestItemKind(t *testing.T) {
	for item, want := range map[string]string{
		"partner/microsoft.exchange": "partner",
		"remove-partner/old":         "remove-partner",
		"oauth-configuration":        "oauth-configuration",
		"issuer-certificate":         "issuer-certificate",
		"verify":                     "verify",
		"partner":                    "partner",
		"secret-key-of-a-host/xyz":   "other",
		"":                           "other",
		"PARTNER/x":                  "other",
	} {
		if got := ItemKind(item); got != want {
			t.Errorf("ItemKind(%q) = %q, want %q", item, got, want)
		}
	}
}

// An agent naming any items it likes cannot grow the NACK label set.
func TestNackedItemKindsAreBounded(t *testing.T) {
	m := New(Config{})
	for i := range 200 {
		m.Nacked("fe01.contoso.com", 1, []*pb.ItemError{{Item: fmt.Sprintf("made-up-%d/x", i)}, {Item: "partner/microsoft.exchange"}})
	}
	m.Nacked("fe01.contoso.com", 1, nil)
	fams := gather(t, m)
	if n, want := len(fams["s2strust_sync_nacks_total"].GetMetric()), len(ItemKinds())+2; n != want {
		t.Errorf("%d NACK series, want %d (the known kinds, other and none)", n, want)
	}
	for kind, want := range map[string]float64{"other": 200, "partner": 200, "none": 1, "oauth-configuration": 0} {
		if v, _ := value(fams, "s2strust_sync_nacks_total", "item_kind", kind); v != want {
			t.Errorf("nacks of kind %s = %v, want %v", kind, v, want)
		}
	}
}

func TestCommitToAckLatency(t *testing.T) {
	c := &clock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	m := New(Config{Now: c.now})
	m.TopologyCurrent(7, c.now())
	c.add(1500 * time.Millisecond)
	m.Acked("fe01.contoso.com", 7)
	c.add(time.Second)
	m.Acked("fe02.contoso.com", 7)
	// The same host acking the same revision again (a re-push after a
	// primary moved) is not a second commit → ACK sample.
	m.Acked("fe01.contoso.com", 7)
	// A revision the metrics never saw committed has no start.
	m.Acked("ex01.contoso.com", 6)
	fams := gather(t, m)
	h := fams["s2strust_commit_to_ack_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 2 || h.GetSampleSum() != 4 {
		t.Errorf("commit → ACK: %d samples summing to %vs, want 2 summing to 4s (1.5 + 2.5)", h.GetSampleCount(), h.GetSampleSum())
	}
	if v, _ := value(fams, "s2strust_sync_acks_total"); v != 4 {
		t.Errorf("acks = %v, want 4", v)
	}
	// Only the latest revisions are remembered.
	for r := uint64(8); r < 8+2*maxCommits; r++ {
		m.TopologyCurrent(r, c.now())
	}
	m.mu.Lock()
	n := len(m.commits)
	m.mu.Unlock()
	if n != maxCommits {
		t.Errorf("%d commit times remembered, want %d", n, maxCommits)
	}
}

func TestStreamsHellosPushes(t *testing.T) {
	m := New(Config{})
	for _, h := range []string{"a", "b", "c"} {
		m.Hello(h)
		m.Connected(h)
		m.Pushed(h, 1)
	}
	m.Disconnected("b")
	fams := gather(t, m)
	for name, want := range map[string]float64{"s2strust_agent_streams": 2, "s2strust_sync_hellos_total": 3, "s2strust_sync_pushes_total": 3} {
		if v, _ := value(fams, name); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
}

func TestEtcdInterceptor(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	m := New(Config{Now: c.now})
	ic := m.EtcdUnaryInterceptor()
	ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		c.add(20 * time.Millisecond)
		return nil
	}
	fail := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		return status.Error(codes.Unavailable, "no leader")
	}
	if err := ic(context.Background(), "/etcdserverpb.KV/Range", nil, nil, nil, ok); err != nil {
		t.Fatal(err)
	}
	err := ic(context.Background(), "/etcdserverpb.KV/Txn", nil, nil, nil, fail)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("interceptor returned %v, want the invoker's error", err)
	}
	fams := gather(t, m)
	if v, _ := value(fams, "s2strust_etcd_request_duration_seconds", "method", "etcdserverpb.KV/Range"); v != 1 {
		t.Errorf("Range requests timed: %v, want 1", v)
	}
	if s := fams["s2strust_etcd_request_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleSum(); s != 0.02 {
		t.Errorf("Range took %vs, want 0.02s", s)
	}
	if v, _ := value(fams, "s2strust_etcd_request_errors_total", "method", "etcdserverpb.KV/Txn", "code", "Unavailable"); v != 1 {
		t.Errorf("Txn errors: %v, want 1", v)
	}
	if _, ok := value(fams, "s2strust_etcd_request_errors_total", "method", "etcdserverpb.KV/Range", "code", "OK"); ok {
		t.Error("a successful request counted as an error")
	}
}

func TestRollout(t *testing.T) {
	m := New(Config{})
	m.SetRollout(RolloutProgress{Stopped: true, Wave: 2, Waves: 3, HostsDone: 4, HostsFailed: 1, HostsPending: 6})
	fams := gather(t, m)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"s2strust_rollout_active", nil, 0}, {"s2strust_rollout_stopped", nil, 1}, {"s2strust_rollout_wave", nil, 2}, {"s2strust_rollout_waves", nil, 3},
		{"s2strust_rollout_hosts", []string{"state", "done"}, 4}, {"s2strust_rollout_hosts", []string{"state", "failed"}, 1}, {"s2strust_rollout_hosts", []string{"state", "pending"}, 6},
	} {
		if v, _ := value(fams, c.name, c.labels...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
}

type fakeFleet struct {
	hosts []*pb.Host
	edges []*pb.TrustEdge
	err   error
}

func (f fakeFleet) ListHosts(context.Context, *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	return &pb.ListHostsResponse{Hosts: f.hosts}, f.err
}

func (f fakeFleet) GetTrustReport(context.Context, *pb.GetTrustReportRequest) (*pb.GetTrustReportResponse, error) {
	return &pb.GetTrustReportResponse{Edges: f.edges}, f.err
}

func TestFleetGauges(t *testing.T) {
	notAfter := time.Date(2027, 6, 1, 0, 0, 0, 0, time.UTC)
	probe := func(ok bool) *pb.TrustProbeResult { return &pb.TrustProbeResult{Probe: &pb.TrustProbe{Ok: ok}} }
	m := New(Config{})
	m.SetFleet(fakeFleet{
		hosts: []*pb.Host{
			{Host: "fe01.contoso.com", Deployment: "pool01", Connected: true, DesiredVersion: 4, DesiredHash: "a", AppliedVersion: 4, AppliedHash: "a",
				LastResult: &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_ACK}},
			{Host: "ex01.contoso.com", Deployment: "exchange", DesiredVersion: 4, DesiredHash: "b", AppliedVersion: 3, AppliedHash: "c",
				LastResult: &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_NACK}, Drift: []*pb.Drift{{Item: "partner/x"}, {Item: "oauth-configuration"}}},
			{Host: "sp01.contoso.com", Deployment: "sharepoint", Connected: true, DesiredVersion: 4, DesiredHash: "d",
				LastResult: &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_NACK, Monitor: true}},
		},
		edges: []*pb.TrustEdge{
			{From: "pool01", To: "exchange", Ok: true, IssuerNotAfter: timestamppb.New(notAfter), Probes: []*pb.TrustProbeResult{probe(true), probe(true)}},
			{From: "exchange", To: "pool01", Problems: []string{"probe failed"}, Probes: []*pb.TrustProbeResult{probe(true), probe(false)}},
			{From: "sharepoint", To: "pool01", Disabled: true, Ok: true},
		},
	})
	fams := gather(t, m)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"s2strust_fleet_view_up", nil, 1},
		{"s2strust_topology_revision", nil, 4},
		{"s2strust_host_connected", []string{"host", "fe01.contoso.com", "deployment", "pool01"}, 1},
		{"s2strust_host_connected", []string{"host", "ex01.contoso.com", "deployment", "exchange"}, 0},
		{"s2strust_host_nacked", []string{"host", "fe01.contoso.com", "deployment", "pool01"}, 0},
		{"s2strust_host_nacked", []string{"host", "ex01.contoso.com", "deployment", "exchange"}, 1},
		{"s2strust_host_up_to_date", []string{"host", "fe01.contoso.com", "deployment", "pool01"}, 1},
		// Monitor mode NACKs every push by design: not a failing host.
		{"s2strust_host_nacked", []string{"host", "sp01.contoso.com", "deployment", "sharepoint"}, 0},
		{"s2strust_host_monitor_mode", []string{"host", "sp01.contoso.com", "deployment", "sharepoint"}, 1},
		{"s2strust_host_monitor_mode", []string{"host", "ex01.contoso.com", "deployment", "exchange"}, 0},
		{"s2strust_host_up_to_date", []string{"host", "ex01.contoso.com", "deployment", "exchange"}, 0},
		{"s2strust_host_drift_items", []string{"host", "ex01.contoso.com", "deployment", "exchange"}, 2},
		{"s2strust_host_applied_revision", []string{"host", "ex01.contoso.com", "deployment", "exchange"}, 3},
		{"s2strust_trust_edge_ok", []string{"from", "pool01", "to", "exchange"}, 1},
		{"s2strust_trust_edge_ok", []string{"from", "exchange", "to", "pool01"}, 0},
		{"s2strust_trust_edge_probe_ok", []string{"from", "pool01", "to", "exchange"}, 1},
		{"s2strust_trust_edge_probe_ok", []string{"from", "exchange", "to", "pool01"}, 0},
		{"s2strust_trust_edge_probe_ok", []string{"from", "sharepoint", "to", "pool01"}, 0},
		{"s2strust_trust_edge_probes", []string{"from", "exchange", "to", "pool01", "result", "failed"}, 1},
		{"s2strust_trust_edge_probes", []string{"from", "exchange", "to", "pool01", "result", "ok"}, 1},
		{"s2strust_trust_edge_disabled", []string{"from", "sharepoint", "to", "pool01"}, 1},
		{"s2strust_issuer_certificate_expiry_timestamp_seconds", []string{"deployment", "pool01"}, float64(notAfter.Unix())},
	} {
		v, ok := value(fams, c.name, c.labels...)
		if !ok || v != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	if n := len(fams["s2strust_issuer_certificate_expiry_timestamp_seconds"].GetMetric()); n != 1 {
		t.Errorf("%d expiry series, want 1: only pool01's edge reports a certificate", n)
	}
	if problems, err := testutil.GatherAndLint(m.Registry()); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// While etcd cannot be read, the fleet gauges are absent (not stale
// values) and fleet_view_up says why.
func TestFleetViewUnavailable(t *testing.T) {
	m := New(Config{})
	m.SetFleet(fakeFleet{hosts: []*pb.Host{{Host: "fe01.contoso.com", Connected: true}}, err: errors.New("etcdserver: no leader")})
	fams := gather(t, m)
	if v, ok := value(fams, "s2strust_fleet_view_up"); !ok || v != 0 {
		t.Errorf("fleet_view_up = %v (present %v), want 0", v, ok)
	}
	if _, ok := fams["s2strust_host_connected"]; ok {
		t.Error("host gauges present although the fleet view could not be read")
	}
}

// Each Metrics has its own registry: two in one process do not collide.
func TestRegistriesAreSeparate(t *testing.T) {
	a, b := New(Config{}), New(Config{})
	a.Hello("x")
	if v, _ := value(gather(t, b), "s2strust_sync_hellos_total"); v != 0 {
		t.Errorf("b counts a's hello: %v", v)
	}
	if problems, err := testutil.GatherAndLint(a.Registry()); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// countingFleet counts reads of the fleet view.
type countingFleet struct {
	fakeFleet
	mu    sync.Mutex
	reads int
}

func (f *countingFleet) ListHosts(ctx context.Context, r *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	f.mu.Lock()
	f.reads++
	f.mu.Unlock()
	return f.fakeFleet.ListHosts(ctx, r)
}

// Scrapes closer together than FleetInterval share one read of the fleet
// view; a later scrape reads it again.
func TestFleetReadsAreShared(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	m := New(Config{Now: c.now, FleetInterval: 5 * time.Second})
	f := &countingFleet{fakeFleet: fakeFleet{hosts: []*pb.Host{{Host: "fe01.contoso.com", Deployment: "pool01", Connected: true}}}}
	m.SetFleet(f)
	gather(t, m)
	c.add(4 * time.Second)
	f.hosts[0].Connected = false
	fams := gather(t, m)
	if v, _ := value(fams, "s2strust_host_connected", "host", "fe01.contoso.com", "deployment", "pool01"); f.reads != 1 || v != 1 {
		t.Errorf("second scrape within the interval: %d reads, connected %v; want 1 read and the first read's 1", f.reads, v)
	}
	c.add(time.Second)
	fams = gather(t, m)
	if v, _ := value(fams, "s2strust_host_connected", "host", "fe01.contoso.com", "deployment", "pool01"); f.reads != 2 || v != 0 {
		t.Errorf("scrape after the interval: %d reads, connected %v; want 2 reads and the new 0", f.reads, v)
	}
}

// pagedFleet serves its hosts and edges one per page, as a controller
// serves a fleet larger than a page.
type pagedFleet struct{ fakeFleet }

func (f pagedFleet) ListHosts(_ context.Context, r *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	i, _ := strconv.Atoi(r.GetPageToken())
	resp := &pb.ListHostsResponse{Hosts: f.hosts[i : i+1]}
	if i+1 < len(f.hosts) {
		resp.NextPageToken = strconv.Itoa(i + 1)
	}
	return resp, nil
}

func (f pagedFleet) GetTrustReport(_ context.Context, r *pb.GetTrustReportRequest) (*pb.GetTrustReportResponse, error) {
	i, _ := strconv.Atoi(r.GetPageToken())
	resp := &pb.GetTrustReportResponse{Edges: f.edges[i : i+1]}
	if i+1 < len(f.edges) {
		resp.NextPageToken = strconv.Itoa(i + 1)
	}
	return resp, nil
}

// TestFleetGaugesReadEveryPage: a fleet of several pages has a gauge for
// every host and every edge, not only the first page's.
func TestFleetGaugesReadEveryPage(t *testing.T) {
	m := New(Config{})
	m.SetFleet(pagedFleet{fakeFleet{
		hosts: []*pb.Host{{Host: "fe01.contoso.com", Deployment: "pool01", Connected: true}, {Host: "fe02.contoso.com", Deployment: "pool01", Connected: true},
			{Host: "ex01.contoso.com", Deployment: "exchange", Connected: true}},
		edges: []*pb.TrustEdge{{From: "pool01", To: "exchange", Ok: true}, {From: "exchange", To: "pool01", Ok: true}},
	}})
	fams := gather(t, m)
	if n := len(fams["s2strust_host_connected"].GetMetric()); n != 3 {
		t.Errorf("s2strust_host_connected has %d series, want one per host of every page (3)", n)
	}
	if n := len(fams["s2strust_trust_edge_ok"].GetMetric()); n != 2 {
		t.Errorf("s2strust_trust_edge_ok has %d series, want one per edge of every page (2)", n)
	}
}
