package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// bigContoso is the contoso example with n Front Ends in pool01 and n
// Exchange servers (2n+1 hosts; every host name of one length), its
// Lync realm set to realm.
func bigContoso(n int, realm string) []byte {
	list := func(format string) string {
		hosts := make([]string, n)
		for i := range hosts {
			hosts[i] = fmt.Sprintf(format, i)
		}
		return "[" + strings.Join(hosts, ", ") + "]"
	}
	doc := string(examples.Contoso)
	for old, repl := range map[string]string{
		"hosts: [fe01.contoso.com, fe02.contoso.com]": "hosts: " + list("fe%05d.contoso.com"),
		"hosts: [ex01.contoso.com, ex02.contoso.com]": "hosts: " + list("ex%05d.contoso.com"),
		"realm: contoso.com ":                         "realm: " + realm + " ",
	} {
		if !strings.Contains(doc, old) {
			panic("the contoso example no longer has " + old)
		}
		doc = strings.Replace(doc, old, repl, 1)
	}
	return []byte(doc)
}

// applyAndWait applies doc and waits until the hub serves the revision.
func applyAndWait(t testing.TB, f *hubFixture, svc *TopologyService, doc []byte) *pb.ApplyTopologyResponse {
	t.Helper()
	resp, err := svc.ApplyTopology(context.Background(), &pb.ApplyTopologyRequest{Document: doc, Immediate: true})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c := f.hub.currentCompiled(); c != nil && c.revision == resp.GetRevision() {
			return resp
		}
		if time.Now().After(deadline) {
			t.Fatalf("revision %d not current within 60s", resp.GetRevision())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// compiledBytes is the encoded size of every host configuration of c, and
// the largest one.
func compiledBytes(c *compiled) (total, largest int) {
	for _, cfg := range c.hosts {
		n := proto.Size(cfg)
		total += n
		largest = max(largest, n)
	}
	return total, largest
}

// TestApplyIsLinearInHostCount applies deployments of 1,000 and 5,000
// hosts (each trusted by and trusting the other, as in contoso) through a
// hub on a real embedded etcd: a host's configuration, as compiled and as
// pushed down its Sync stream, is the same size at either size (it does
// not list its deployment's hosts, and probes at most MaxProbeTargets of
// each trusting deployment), the revision's compiled bytes grow five-fold,
// not 25-fold, adding one host re-plans few others, and the apply answers
// within the message size limit. No time is asserted.
func TestApplyIsLinearInHostCount(t *testing.T) {
	type result struct{ total, largest, pushed int }
	measure := func(n int) result {
		f := startHub(t, Config{})
		svc := NewTopologyService(f.hub, nil)
		resp := applyAndWait(t, f, svc, bigContoso(n, "contoso.com"))
		// hosts_total also counts contoso's four hosts the apply removes.
		if got, want := resp.GetHostsTotal(), uint32(2*n+1+4); got != want {
			t.Fatalf("n=%d: hosts_total %d, want %d", n, got, want)
		}
		if size := proto.Size(resp); size > DefaultMaxResponseBytes {
			t.Errorf("n=%d: the answer is %d bytes, over %d", n, size, DefaultMaxResponseBytes)
		}
		c := f.hub.currentCompiled()
		var r result
		r.total, r.largest = compiledBytes(c)
		for host, cfg := range c.hosts {
			if len(cfg.GetDeploymentHosts()) > 0 {
				t.Fatalf("n=%d: %s lists %d deployment hosts", n, host, len(cfg.GetDeploymentHosts()))
			}
			for _, tt := range cfg.GetTrustedBy() {
				if len(tt.GetHosts()) > topology.MaxProbeTargets {
					t.Fatalf("n=%d: %s probes %d hosts of %s", n, host, len(tt.GetHosts()), tt.GetDeployment())
				}
			}
		}
		a := f.connect(t, "ex00042.contoso.com")
		d := a.waitPush(t, "of the revision", func(d *pb.Desired) bool { return d.GetVersion() == resp.GetRevision() })
		r.pushed = proto.Size(d.GetConfig())
		a.stop()

		// One more Front End: its own plan, and the few Exchange hosts
		// whose probe sample it joins; not the whole fleet.
		grown := strings.Replace(string(bigContoso(n, "contoso.com")), "fe00000.contoso.com,", "fe00000.contoso.com, fe99999.contoso.com,", 1)
		more := applyAndWait(t, f, svc, []byte(grown))
		if more.GetHostsChanged() < 1 || more.GetHostsChanged() > 1+8*topology.MaxProbeTargets {
			t.Errorf("n=%d: adding one host changed %d hosts, want it and a few whose probes it joins", n, more.GetHostsChanged())
		}
		return r
	}
	small, large := measure(1000), measure(5000)
	t.Logf("compiled bytes: %d at 1,000 hosts per deployment, %d at 5,000 (ratio %.2f); largest host configuration %d and %d bytes; pushed %d and %d bytes",
		small.total, large.total, float64(large.total)/float64(small.total), small.largest, large.largest, small.pushed, large.pushed)
	if small.largest != large.largest {
		t.Errorf("largest host configuration: %d bytes at 1,000, %d at 5,000; want equal", small.largest, large.largest)
	}
	if small.pushed != large.pushed {
		t.Errorf("pushed configuration of ex00042: %d bytes at 1,000, %d at 5,000; want equal", small.pushed, large.pushed)
	}
	if r := float64(large.total) / float64(small.total); r < 4.5 || r > 5.5 {
		t.Errorf("compiled bytes grew %.2f-fold for five times the hosts, want about 5", r)
	}
}

// TestApplyParsesAndCompilesOnce: an apply hands its compilation to the
// hub, which makes the revision current without parsing it again, and
// plans against the hub's current compilation: after the hub's first
// load, applies compile nothing more.
func TestApplyParsesAndCompilesOnce(t *testing.T) {
	f := startHub(t, Config{})
	svc := NewTopologyService(f.hub, nil)
	applyAndWait(t, f, svc, examples.Contoso) // the fixture stored it: current already
	before := f.hub.compiles.Load()
	for _, realm := range []string{"fabrikam.com", "contoso.com", "fabrikam.com"} {
		doc := []byte(strings.Replace(string(examples.Contoso), "realm: contoso.com ", "realm: "+realm+" ", 1))
		resp := applyAndWait(t, f, svc, doc)
		if !resp.GetChanged() || resp.GetHostsChanged() == 0 {
			t.Fatalf("apply of realm %s: %v", realm, resp)
		}
		c := f.hub.currentCompiled()
		if c.hosts["fe01.contoso.com"].GetRealm() != realm || c.sequence != resp.GetSequence() || c.name != "contoso" {
			t.Fatalf("current after the apply of realm %s: realm %q sequence %d (want %d) name %q", realm, c.hosts["fe01.contoso.com"].GetRealm(), c.sequence, resp.GetSequence(), c.name)
		}
	}
	if n := f.hub.compiles.Load() - before; n != 0 {
		t.Errorf("three applies parsed and compiled %d stored revisions again, want 0", n)
	}
	// A revision stored by someone else (another replica) is compiled.
	other := []byte(strings.Replace(string(examples.Contoso), "realm: contoso.com ", "realm: other.example ", 1))
	rev, _, err := f.st.PutTopology(context.Background(), "contoso", other, "test", time.Now(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the stored revision current", func() bool { return f.hub.currentCompiled().revision == rev })
	if got := f.hub.currentCompiled().hosts["fe01.contoso.com"].GetRealm(); got != "other.example" {
		t.Errorf("a revision stored directly: realm %q, want other.example", got)
	}
	if n := f.hub.compiles.Load() - before; n != 1 {
		t.Errorf("a revision stored directly was compiled %d times, want once", n)
	}
}

// manyWarnings is a checker whose warnings alone outgrow any small answer.
type manyWarnings struct{ n, size int }

func (w manyWarnings) CheckTopology(context.Context, *topology.Topology) (errs, warnings []topology.FieldViolation, err error) {
	for i := range w.n {
		warnings = append(warnings, topology.FieldViolation{Field: fmt.Sprintf("deployments[%d].tokenIssuer.secret", i%3), Value: "oauth-2026", Description: strings.Repeat("w", w.size)})
	}
	return nil, warnings, nil
}

// TestApplyAnswerIsSizedBeforeTheCommit: an answer over the message size
// limit is refused before anything is stored (no revision, no rollout),
// naming its size and the limit; a plan too large for the limit is cut to
// fit (plan_truncated) and the apply succeeds within it.
func TestApplyAnswerIsSizedBeforeTheCommit(t *testing.T) {
	ctx := context.Background()
	f := startHub(t, Config{})
	before, err := f.st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	doc := bigContoso(20, "fabrikam.com") // every host changes

	svc := NewTopologyService(f.hub, manyWarnings{n: 50, size: 1000})
	svc.SetMaxResponseBytes(32 << 10)
	for _, dry := range []bool{true, false} {
		_, err := svc.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: doc, DryRun: dry})
		st, _ := status.FromError(err)
		if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "over the limit of 32768 bytes") ||
			!strings.Contains(st.Message(), "nothing was stored") || !strings.Contains(st.Message(), "bytes encoded even without its plan") {
			t.Fatalf("dry run %v: an answer over the limit: %v; want RESOURCE_EXHAUSTED naming its size and the limit", dry, err)
		}
	}
	after, err := f.st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Revision != before.Revision {
		t.Errorf("a refused apply stored revision %d (before: %d)", after.Revision, before.Revision)
	}
	if list, err := f.hub.rollouts.List(ctx, 10, 0); err != nil || len(list) != 0 {
		t.Errorf("a refused apply stored rollouts: %v, %v", list, err)
	}

	// Without the warnings the same answer fits once its plan is cut.
	svc = NewTopologyService(f.hub, nil)
	const limit = 8 << 10
	svc.SetMaxResponseBytes(limit)
	dry, err := svc.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: doc, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	full := boundedPlan(mustPlan(t, f, doc))
	if proto.Size(full) <= limit || !dry.GetPlanTruncated() || len(dry.GetPlan()) == 0 || len(dry.GetPlan()) >= len(full.GetPlan()) {
		t.Fatalf("the plan (%d bytes in full, %d hosts) was not cut to fit %d bytes: %d hosts, truncated %v", proto.Size(full), len(full.GetPlan()), limit, len(dry.GetPlan()), dry.GetPlanTruncated())
	}
	resp, err := svc.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: doc})
	if err != nil {
		t.Fatal(err)
	}
	if size := proto.Size(resp); size > limit || !resp.GetChanged() || !resp.GetPlanTruncated() || resp.GetHostsChanged() != full.GetHostsChanged() {
		t.Errorf("apply with a cut plan: %d bytes (limit %d), changed %v, truncated %v, hosts changed %d (want %d)",
			size, limit, resp.GetChanged(), resp.GetPlanTruncated(), resp.GetHostsChanged(), full.GetHostsChanged())
	}
	if !slices.IsSortedFunc(resp.GetPlan(), func(a, b *pb.HostPlan) int { return strings.Compare(a.GetHost(), b.GetHost()) }) {
		t.Error("the cut plan is not the first hosts in order")
	}
}

// mustPlan is the full plan from the current revision to doc.
func mustPlan(t *testing.T, f *hubFixture, doc []byte) []*pb.HostPlan {
	t.Helper()
	next, err := topology.Load("next", doc)
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := topology.Compile(next)
	if err != nil {
		t.Fatal(err)
	}
	// The hub loads the stored revision on its own; the dry runs before
	// need none of it, so it may still be loading.
	waitFor(t, "the hub's current revision", func() bool { return f.hub.currentCompiled() != nil })
	c := f.hub.currentCompiled()
	var prev []*pb.HostConfig
	for _, h := range c.order {
		prev = append(prev, c.hosts[h])
	}
	return topology.Plan(prev, cfgs)
}

// BenchmarkApply5000 applies a topology of 10,001 hosts (a 5,000-host Lync
// pool and a 5,000-host Exchange organization that trust each other, and
// a SharePoint farm), alternating its realm so that every host changes,
// through a hub on a real embedded etcd; each run is timed until the hub
// serves the revision. It reports the median and spread (min–max) of the
// apply time, of the CPU time the process spent on it (the better figure
// on a loaded machine) and of the live heap after the apply, over b.N runs:
//
//	go test ./controller/server/ -run '^$' -bench Apply5000 -benchtime 5x
func BenchmarkApply5000(b *testing.B) {
	f := startHub(b, Config{})
	svc := NewTopologyService(f.hub, nil)
	docs := [][]byte{bigContoso(5000, "fabrikam.com"), bigContoso(5000, "contoso.com")}
	applyAndWait(b, f, svc, docs[1]) // the first apply adds 10,000 hosts: not measured
	var secs, cpu, heap []float64
	var ms runtime.MemStats
	b.ResetTimer()
	for i := range b.N {
		start, cpu0 := time.Now(), processCPU()
		resp := applyAndWait(b, f, svc, docs[i%2])
		secs = append(secs, time.Since(start).Seconds())
		cpu = append(cpu, (processCPU() - cpu0).Seconds())
		if resp.GetHostsChanged() != resp.GetHostsTotal() {
			b.Fatalf("run %d: %d of %d hosts changed, want all", i, resp.GetHostsChanged(), resp.GetHostsTotal())
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		heap = append(heap, float64(ms.HeapAlloc)/(1<<20))
		b.StartTimer()
	}
	b.StopTimer()
	med, lo, hi := medianSpread(secs)
	cmed, clo, chi := medianSpread(cpu)
	hmed, hlo, hhi := medianSpread(heap)
	b.ReportMetric(med*1000, "ms/apply-median")
	b.ReportMetric(cmed*1000, "cpu-ms/apply-median")
	b.ReportMetric(hmed, "MiB-heap-median")
	b.Logf("10,001 hosts (5,000 + 5,000 + 1), %d runs: apply until served %.0f ms median (%.0f–%.0f), CPU %.0f ms median (%.0f–%.0f, all goroutines of the process, GC included); live heap after the apply %.1f MiB median (%.1f–%.1f), the test process's: hub, its etcd client and the embedded etcd",
		len(secs), med*1000, lo*1000, hi*1000, cmed*1000, clo*1000, chi*1000, hmed, hlo, hhi)
}

// median and spread of xs.
func medianSpread(xs []float64) (med, lo, hi float64) {
	s := slices.Clone(xs)
	sort.Float64s(s)
	n := len(s)
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1]
}

// TestApplyRefusesADocumentOverTheSizeLimit: at the API (as grpcurl would
// send it, without the CLI's own check) a document over the limit is
// INVALID_ARGUMENT naming the field, the document's size and the limit,
// before it is parsed, for a dry run too; nothing is stored.
func TestApplyRefusesADocumentOverTheSizeLimit(t *testing.T) {
	ctx := context.Background()
	f := startHub(t, Config{})
	before, err := f.st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	svc := NewTopologyService(f.hub, nil)
	doc := append(slices.Clone(examples.Contoso), strings.Repeat("#", MaxDocumentSize)...)
	for _, dry := range []bool{true, false} {
		_, err := svc.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: doc, DryRun: dry})
		var te *topology.Error
		want := fmt.Sprintf(`document: "%d bytes": a topology document of at most %d bytes`, len(doc), MaxDocumentSize)
		if !errors.As(err, &te) || !strings.Contains(err.Error(), want) {
			t.Errorf("dry run %v: %v; want INVALID_ARGUMENT %q", dry, err, want)
		}
		if st := toStatus(err); status.Code(st) != codes.InvalidArgument {
			t.Errorf("dry run %v: maps to %v, want INVALID_ARGUMENT", dry, st)
		}
	}
	after, err := f.st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Revision != before.Revision {
		t.Errorf("a refused document stored revision %d", after.Revision)
	}
}

// TestTrustReportIsLinear: for deployments of 2,000 hosts that trust each
// other, a healthy estate's edges are OK with each host's sampled probes
// (not a probe to every host of the other side expected), a missing probe
// is named, and the clock skew is the largest difference between a host of
// each side, found from the offsets' ranges.
func TestTrustReportIsLinear(t *testing.T) {
	const n = 2000
	c, err := compileDocument(&store.TopologyRecord{Revision: 1, Name: "contoso", Document: bigContoso(n, "contoso.com")})
	if err != nil {
		t.Fatal(err)
	}
	snap := snapshot{topo: c, primaries: map[string]string{"pool01": "fe00000.contoso.com", "exchange": "ex00000.contoso.com", "sharepoint": "sp01.contoso.com"}}
	reports := healthyReports(snap)
	got := edges(snap, reports)
	if len(got) != 5 {
		t.Fatalf("%d edges, want 5", len(got))
	}
	for k, e := range got {
		if !e.GetOk() {
			t.Errorf("%s: problems %v", k, e.GetProblems()[:min(3, len(e.GetProblems()))])
		}
	}
	if p := len(got["pool01→exchange"].GetProbes()); p != n*topology.MaxProbeTargets {
		t.Errorf("pool01→exchange lists %d probes, want %d (%d hosts × %d)", p, n*topology.MaxProbeTargets, n, topology.MaxProbeTargets)
	}

	// One probe result missing is named, and only it.
	const from = "fe01234.contoso.com"
	r := reports[from]
	var missing string
	for i, p := range r.GetProbes() {
		if p.GetToDeployment() == "exchange" {
			missing = p.GetTargetHost()
			r.Probes = slices.Delete(r.Probes, i, i+1)
			break
		}
	}
	e := buildEdge(snap, partnerFor(t, snap, "pool01", "exchange"), "exchange", reports, nil)
	want := fmt.Sprintf("no probe result from %s to %s yet", from, missing)
	if len(e.GetProblems()) != 1 || e.GetProblems()[0] != want {
		t.Errorf("problems %v, want only %q", e.GetProblems(), want)
	}

	// Clock skew: offsets from -3 to +4 minutes on one side, -1 to +2 on
	// the other: the largest difference is 4 - (-1) = 5 minutes.
	states := map[string]*pb.Host{}
	seen := timestamp(time.Now())
	for i, h := range snap.topo.deployments["pool01"] {
		states[h] = &pb.Host{Host: h, LastSeen: seen, ClockOffsetMs: int64(-3*60000 + i*7*60000/(n-1))}
	}
	for i, h := range snap.topo.deployments["exchange"] {
		states[h] = &pb.Host{Host: h, LastSeen: seen, ClockOffsetMs: int64(-60000 + i*3*60000/(n-1))}
	}
	states["ex00007.contoso.com"].LastSeen = nil // never seen: not counted
	states["ex00007.contoso.com"].ClockOffsetMs = -3600000
	e = buildEdge(snap, partnerFor(t, snap, "pool01", "exchange"), "exchange", healthyReports(snap), states)
	if e.GetMaxClockSkewMs() != 5*60000 || !slices.ContainsFunc(e.GetProblems(), func(p string) bool {
		return strings.Contains(p, "clock skew between pool01 and exchange hosts is 300s")
	}) {
		t.Errorf("clock skew %d ms, problems %v; want 300000 and a skew problem", e.GetMaxClockSkewMs(), e.GetProblems())
	}
}

// partnerFor is the partner through which deployment to registers from.
func partnerFor(t *testing.T, snap snapshot, from, to string) *pb.Partner {
	t.Helper()
	for _, p := range snap.topo.hosts[snap.topo.deployments[to][0]].GetPartners() {
		if p.GetDeployment() == from {
			return p
		}
	}
	t.Fatalf("%s has no partner %s", to, from)
	return nil
}

// TestAuditRecordOfAHugeChange: the audit record of an apply lists its
// first 2,000 changes and counts them all.
func TestAuditRecordOfAHugeChange(t *testing.T) {
	var plan []*pb.HostPlan
	for i := range 3000 {
		plan = append(plan, &pb.HostPlan{Host: fmt.Sprintf("h%05d.contoso.com", i), Items: []*pb.PlanItem{{Item: "oauth-configuration", Action: "update"}}})
	}
	svc := NewTopologyService(NewHub(Config{}), nil)
	var rec struct {
		What    string   `json:"what"`
		Changes []string `json:"changes"`
	}
	if err := json.Unmarshal(svc.auditRecord("admin", "127.0.0.1", "contoso", plan, nil), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.What != "apply topology contoso (3000 changes)" || len(rec.Changes) != 2001 || rec.Changes[2000] != "… and 1000 more" ||
		rec.Changes[0] != "h00000.contoso.com: update oauth-configuration" {
		t.Errorf("audit record: what %q, %d changes, last %q", rec.What, len(rec.Changes), rec.Changes[len(rec.Changes)-1])
	}
}

// TestPrimaryMoveRecomputesTwoHosts: a new primary changes the desired
// state of the old and the new primary only, so a move costs the same in a
// deployment of any size.
func TestPrimaryMoveRecomputesTwoHosts(t *testing.T) {
	f := startHub(t, Config{})
	svc := NewTopologyService(f.hub, nil)
	applyAndWait(t, f, svc, bigContoso(50, "contoso.com"))
	hosts := f.hub.currentCompiled().deployments["exchange"]
	f.hub.adoptPrimary("exchange", hosts[3])
	for _, h := range hosts {
		if f.hub.desiredFor(h) == nil {
			t.Fatalf("no desired state for %s", h)
		}
	}
	f.hub.adoptPrimary("exchange", hosts[7])
	f.hub.mu.Lock()
	var dropped []string
	for _, h := range hosts {
		if _, ok := f.hub.desired[h]; !ok {
			dropped = append(dropped, h)
		}
	}
	f.hub.mu.Unlock()
	if want := []string{hosts[3], hosts[7]}; !slices.Equal(dropped, want) {
		t.Errorf("moving the primary from %s to %s recomputes %v, want only those two", hosts[3], hosts[7], dropped)
	}
	if !f.hub.desiredFor(hosts[7]).config.GetPrimary() || f.hub.desiredFor(hosts[3]).config.GetPrimary() {
		t.Error("the primary flag did not move")
	}
}

// TestApplyRefusesARevisionTooLargeToStore: a document under
// MaxDocumentSize whose stored record would exceed the store's request
// limit (the canonical form is stored base64-encoded) is refused before
// anything is stored, naming the sizes and the limit: neither the
// revision nor its rollout is stored. One just under the limit is stored.
func TestApplyRefusesARevisionTooLargeToStore(t *testing.T) {
	ctx := context.Background()
	f := startHub(t, Config{})
	svc := NewTopologyService(f.hub, nil)
	before, err := f.st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// stored is what checkStoredSize counts for n hosts per deployment.
	stored := func(n int) int {
		doc := bigContoso(n, "fabrikam.com")
		top, err := topology.Load("big", doc)
		if err != nil {
			t.Fatal(err)
		}
		canon, err := top.Canonical()
		if err != nil {
			t.Fatal(err)
		}
		audit := svc.auditRecord(callerName(ctx), peerAddr(ctx), "contoso", mustPlan(t, f, doc), nil)
		next, err := topology.Compile(top)
		if err != nil {
			t.Fatal(err)
		}
		ro, err := f.hub.newRollout(ctx, top, store.DocumentHash(canon), next, &pb.RolloutStrategy{}, callerName(ctx), "", before.Revision)
		if err != nil {
			t.Fatal(err)
		}
		val, err := json.Marshal(store.TopologyRecord{Name: "contoso", Document: canon, Hash: store.DocumentHash(canon), AppliedBy: callerName(ctx), Sequence: 1 << 63})
		if err != nil {
			t.Fatal(err)
		}
		return len(val) + len(audit) + f.hub.rolloutBytes(ctx, ro) + storeRequestOverhead
	}
	// Sizes grow linearly in n: the largest n that fits, by interpolation.
	a, b := stored(1000), stored(2000)
	per := float64(b-a) / 1000
	// Both stay a little away from the limit: the apply's own timestamp
	// may encode a few bytes longer or shorter than the estimate's.
	const slack = 64
	fits := 1000 + int(float64(StoreRequestLimit-a)/per)
	for stored(fits) > StoreRequestLimit-slack {
		fits--
	}
	tooLarge := fits + 1
	for stored(tooLarge) <= StoreRequestLimit+slack {
		tooLarge++
	}
	doc := bigContoso(tooLarge, "fabrikam.com")
	if len(doc) > MaxDocumentSize {
		t.Fatalf("the document is %d bytes, over MaxDocumentSize: the test needs one under it", len(doc))
	}
	for _, dry := range []bool{true, false} {
		_, err := svc.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: doc, DryRun: dry})
		var te *topology.Error
		if !errors.As(err, &te) || !strings.Contains(err.Error(), fmt.Sprintf("over the store's limit of %d bytes", StoreRequestLimit)) ||
			!strings.Contains(err.Error(), "document: ") || !strings.Contains(err.Error(), "bytes in canonical form") {
			t.Fatalf("dry run %v: a %d-byte document (%d hosts per deployment): %v; want INVALID_ARGUMENT naming the sizes and the store's limit", dry, len(doc), tooLarge, err)
		}
	}
	after, err := f.st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Revision != before.Revision {
		t.Errorf("a refused apply stored revision %d", after.Revision)
	}
	if list, err := f.hub.rollouts.List(ctx, 10, 0); err != nil || len(list) != 0 {
		t.Errorf("a refused apply stored rollouts: %d, %v", len(list), err)
	}
	// The largest that fits is stored, with its rollout: the estimate is
	// not short of what the store counts.
	resp, err := svc.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: bigContoso(fits, "fabrikam.com")})
	if err != nil {
		t.Fatalf("%d hosts per deployment, %d bytes stored by the estimate: %v", fits, stored(fits), err)
	}
	if !resp.GetChanged() || resp.GetRollout() == "" {
		t.Errorf("apply of %d hosts per deployment: changed %v, rollout %q", fits, resp.GetChanged(), resp.GetRollout())
	}
}
