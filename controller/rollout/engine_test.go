package rollout

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// fleet is three deployments of four hosts, each deployment's primary its
// second host, everything on revision 1.
func fleet() Fleet {
	f := Fleet{Deployment: map[string]string{}, Primaries: map[string]string{}, From: map[string]uint64{}}
	for _, d := range []string{"pool01", "exchange", "sharepoint"} {
		for i := 1; i <= 4; i++ {
			h := fmt.Sprintf("%s-%d", d, i)
			f.Order = append(f.Order, h)
			f.Deployment[h] = d
			f.From[h] = 1
		}
		f.Primaries[d] = d + "-2"
	}
	return f
}

// sim answers for hosts as agents would: a released host applies its
// target at once and reports it verified, unless told to fail.
type sim struct {
	fail map[string]string // host → NACK error
}

func (s sim) observe(r *pb.Rollout) Observations {
	obs := Observations{}
	deployment := map[string]string{}
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			deployment[h.GetHost()] = h.GetDeployment()
		}
	}
	for host, rev := range Targets(r) {
		hash := fmt.Sprintf("h%d", rev)
		h := &pb.Host{Host: host, Deployment: deployment[host], DesiredVersion: rev, DesiredSequence: rev, DesiredHash: hash, AppliedVersion: rev, AppliedHash: hash,
			LastResult: &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_ACK, Version: rev, Hash: hash}}
		if msg, bad := s.fail[host]; bad && rev == r.GetToRevision() {
			h.AppliedVersion, h.AppliedHash = 1, "h1"
			h.LastResult = &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_NACK, Version: rev, Hash: hash, Errors: []*pb.ItemError{{Item: "oauth-configuration", Message: msg}}}
		}
		obs[host] = Observation{Host: h, Report: &pb.StatusReport{AppliedVersion: h.GetAppliedVersion(), AppliedHash: h.GetAppliedHash(),
			Items:  []*pb.ItemStatus{{Item: "oauth-configuration", State: pb.ItemState_ITEM_STATE_OK}},
			Probes: []*pb.TrustProbe{{ToDeployment: "other", TargetHost: "x", Ok: true}}}}
	}
	return obs
}

// run steps r with the clock advancing by tick until it stops changing
// for bake+tick, returning the hosts released per step in order.
func run(t *testing.T, r *pb.Rollout, s sim, now *time.Time, tick time.Duration) [][]string {
	t.Helper()
	var releases [][]string
	for i := 0; i < 1000; i++ {
		before := Targets(r)
		changed := Step(r, s.observe(r), nil, *now)
		var rel []string
		for h, rev := range Targets(r) {
			if rev != before[h] {
				rel = append(rel, h)
			}
		}
		if len(rel) > 0 {
			releases = append(releases, rel)
		}
		if r.GetState() != pb.RolloutState_ROLLOUT_STATE_RUNNING {
			return releases
		}
		if !changed {
			*now = now.Add(tick)
		}
	}
	t.Fatalf("rollout never settled: %v", r)
	return nil
}

func strategy(canary bool, maxUnavail uint32, bake time.Duration, waves ...*pb.RolloutWaveSpec) *pb.RolloutStrategy {
	return &pb.RolloutStrategy{Canary: proto.Bool(canary), MaxUnavailable: maxUnavail, BakeTime: durationpb.New(bake), Waves: waves}
}

func titles(r *pb.Rollout) string {
	var out []string
	for _, w := range r.GetWaves() {
		var hs []string
		for _, h := range w.GetHosts() {
			hs = append(hs, h.GetHost())
		}
		out = append(out, w.GetTitle()+"="+strings.Join(hs, ","))
	}
	return strings.Join(out, " | ")
}

func TestPlan(t *testing.T) {
	now := time.Unix(1000, 0)
	for _, tc := range []struct {
		name string
		s    *pb.RolloutStrategy
		want string
	}{
		{"default: canary (the primaries) then the rest", &pb.RolloutStrategy{},
			"canary=pool01-2,exchange-2,sharepoint-2 | wave 1=pool01-1,pool01-3,pool01-4,exchange-1,exchange-3,exchange-4,sharepoint-1,sharepoint-3,sharepoint-4"},
		{"count, percent, hosts", strategy(true, 1, 0, &pb.RolloutWaveSpec{Count: 2}, &pb.RolloutWaveSpec{Percent: 25}, &pb.RolloutWaveSpec{Hosts: []string{"sharepoint-4"}}),
			"canary=pool01-2,exchange-2,sharepoint-2 | wave 1=pool01-1,pool01-3 | wave 2=pool01-4,exchange-1,exchange-3 | wave 3=sharepoint-4 | wave 4=exchange-4,sharepoint-1,sharepoint-3"},
		{"no canary, every host in the waves", strategy(false, 2, 0, &pb.RolloutWaveSpec{Percent: 50}, &pb.RolloutWaveSpec{Percent: 50}),
			"wave 1=pool01-1,pool01-2,pool01-3,pool01-4,exchange-1,exchange-2 | wave 2=exchange-3,exchange-4,sharepoint-1,sharepoint-2,sharepoint-3,sharepoint-4"},
		{"immediate", &pb.RolloutStrategy{Immediate: true, Waves: []*pb.RolloutWaveSpec{{Count: 1}}},
			"all hosts=pool01-1,pool01-2,pool01-3,pool01-4,exchange-1,exchange-2,exchange-3,exchange-4,sharepoint-1,sharepoint-2,sharepoint-3,sharepoint-4"},
	} {
		r := Plan("rollouts/1", tc.s, fleet(), 1, 2, now)
		if got := titles(r); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
		for h, rev := range Targets(r) {
			if rev != 1 {
				t.Errorf("%s: %s targets %d before anything ran, want 1", tc.name, h, rev)
			}
		}
	}
}

// TestStepCanaryAndWaves rolls revision 2 out: the canary wave first, one
// host at a time, each wave baking before the next starts.
func TestStepCanaryAndWaves(t *testing.T) {
	now := time.Unix(1000, 0)
	start := now
	r := Plan("rollouts/1", strategy(true, 1, 30*time.Second, &pb.RolloutWaveSpec{Count: 4}), fleet(), 1, 2, now)
	releases := run(t, r, sim{}, &now, 5*time.Second)
	if r.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("state %v (%s), want succeeded", r.GetState(), r.GetReason())
	}
	// One host at a time (maxUnavailable 1): 12 releases.
	if len(releases) != 12 {
		t.Fatalf("released in %d steps, want 12 (one at a time): %v", len(releases), releases)
	}
	for i, want := range []string{"pool01-2", "exchange-2", "sharepoint-2"} {
		if releases[i][0] != want {
			t.Errorf("release %d is %v, want the canary %s", i, releases[i], want)
		}
	}
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			if h.GetState() != pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED || h.GetTargetRevision() != 2 {
				t.Errorf("%s: %v target %d, want passed at 2", h.GetHost(), h.GetState(), h.GetTargetRevision())
			}
		}
	}
	// Each of the three waves baked 30s after passing.
	for i := 0; i+1 < len(r.GetWaves()); i++ {
		end, next := r.GetWaves()[i].GetEndTime().AsTime(), r.GetWaves()[i+1].GetStartTime().AsTime()
		if passed := r.GetWaves()[i].GetPassedTime().AsTime(); end.Sub(passed) < 30*time.Second {
			t.Errorf("wave %d ended %s after passing, want the 30s bake", i, end.Sub(passed))
		}
		if next.Before(end) {
			t.Errorf("wave %d started before wave %d ended", i+1, i)
		}
	}
	if now.Sub(start) < 90*time.Second {
		t.Errorf("the rollout took %s, less than three bakes", now.Sub(start))
	}
}

// TestStepFailingCanary: a canary's NACK stops the rollout in wave 0 with
// its cause; no host of a later wave is released.
func TestStepFailingCanary(t *testing.T) {
	now := time.Unix(1000, 0)
	r := Plan("rollouts/1", strategy(true, 3, time.Second), fleet(), 1, 2, now)
	run(t, r, sim{fail: map[string]string{"exchange-2": "Set-AuthConfig: access denied"}}, &now, time.Second)
	if r.GetState() != pb.RolloutState_ROLLOUT_STATE_PAUSED || r.GetCurrentWave() != 0 {
		t.Fatalf("state %v wave %d, want paused in wave 0", r.GetState(), r.GetCurrentWave())
	}
	for _, want := range []string{"paused: failure threshold reached", "exchange-2: NACK of revision 2 (version 2): oauth-configuration: Set-AuthConfig: access denied"} {
		if !strings.Contains(r.GetReason(), want) {
			t.Errorf("reason %q lacks %q", r.GetReason(), want)
		}
	}
	for h, rev := range Targets(r) {
		if canary := strings.HasSuffix(h, "-2"); !canary && rev != 1 {
			t.Errorf("%s (not a canary) targets %d, want 1", h, rev)
		}
	}
	// Resuming evaluates the failed canary again: still failing, it pauses again.
	if err := Resume(r, now); err != nil {
		t.Fatal(err)
	}
	run(t, r, sim{fail: map[string]string{"exchange-2": "still denied"}}, &now, time.Second)
	if r.GetState() != pb.RolloutState_ROLLOUT_STATE_PAUSED || !strings.Contains(r.GetReason(), "still denied") {
		t.Errorf("after resume: %v %q", r.GetState(), r.GetReason())
	}
	// Fixed, resumed: it completes.
	if err := Resume(r, now); err != nil {
		t.Fatal(err)
	}
	run(t, r, sim{}, &now, time.Second)
	if r.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Errorf("after the fix: %v %q", r.GetState(), r.GetReason())
	}
}

func TestStepFailureThresholdAndDeadline(t *testing.T) {
	now := time.Unix(1000, 0)
	s := strategy(false, 4, 0, &pb.RolloutWaveSpec{Count: 12})
	s.FailureThreshold = 1
	s.ProgressDeadline = durationpb.New(time.Minute)
	r := Plan("rollouts/1", s, fleet(), 1, 2, now)
	// One failure is within the threshold; a host that never answers
	// fails at the deadline, which is the second.
	silent := sim{fail: map[string]string{"pool01-1": "boom"}}
	obs := func() Observations {
		o := silent.observe(r)
		delete(o, "pool01-3")
		return o
	}
	for i := 0; i < 100 && r.GetState() == pb.RolloutState_ROLLOUT_STATE_RUNNING; i++ {
		if !Step(r, obs(), nil, now) {
			now = now.Add(10 * time.Second)
		}
	}
	if r.GetState() != pb.RolloutState_ROLLOUT_STATE_PAUSED {
		t.Fatalf("state %v, want paused", r.GetState())
	}
	for _, want := range []string{"2 of 12 hosts of wave 1 failed (threshold 1)", "pool01-1: NACK", "pool01-3: no verdict within 1m0s"} {
		if !strings.Contains(r.GetReason(), want) {
			t.Errorf("reason %q lacks %q", r.GetReason(), want)
		}
	}
}

func TestManualGate(t *testing.T) {
	now := time.Unix(1000, 0)
	s := strategy(true, 12, 0)
	s.ManualGates = true
	r := Plan("rollouts/1", s, fleet(), 1, 2, now)
	run(t, r, sim{}, &now, time.Second)
	if r.GetState() != pb.RolloutState_ROLLOUT_STATE_PAUSED || r.GetCurrentWave() != 1 || !strings.Contains(r.GetReason(), "manual gate before wave 1") {
		t.Fatalf("state %v wave %d %q, want paused at the gate before wave 1", r.GetState(), r.GetCurrentWave(), r.GetReason())
	}
	if err := Resume(r, now); err != nil {
		t.Fatal(err)
	}
	run(t, r, sim{}, &now, time.Second)
	if r.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Errorf("after resume: %v %q", r.GetState(), r.GetReason())
	}
}

func TestPauseResumeAbortPreconditions(t *testing.T) {
	now := time.Unix(1000, 0)
	r := Plan("rollouts/7", strategy(true, 12, 0), fleet(), 1, 2, now)
	if err := Pause(r, "admin", now); err != nil || r.GetState() != pb.RolloutState_ROLLOUT_STATE_PAUSED {
		t.Fatalf("pause: %v %v", err, r.GetState())
	}
	if Step(r, sim{}.observe(r), nil, now) {
		t.Error("a paused rollout advanced")
	}
	if err := Pause(r, "admin", now); err != nil {
		t.Errorf("pausing a paused rollout: %v", err)
	}
	if err := Resume(r, now); err != nil {
		t.Fatal(err)
	}
	run(t, r, sim{}, &now, time.Second)
	done := proto.Clone(r).(*pb.Rollout)
	for verb, f := range map[string]func() error{
		"pause":  func() error { return Pause(r, "admin", now) },
		"resume": func() error { return Resume(r, now) },
		"abort":  func() error { return Abort(r, "admin", now) },
	} {
		err := f()
		if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "rollouts/7") || !strings.Contains(err.Error(), "succeeded") {
			t.Errorf("%s of a succeeded rollout: %v, want a precondition failure naming it and its state", verb, err)
		}
		if !proto.Equal(r, done) {
			t.Errorf("a refused %s changed the rollout", verb)
		}
	}
	// Abort keeps hosts where they are.
	r2 := Plan("rollouts/8", strategy(true, 1, 0), fleet(), 1, 2, now)
	Step(r2, sim{}.observe(r2), nil, now)
	before := Targets(r2)
	if err := Abort(r2, "aborted by admin", now); err != nil {
		t.Fatal(err)
	}
	Step(r2, sim{}.observe(r2), nil, now.Add(time.Hour))
	if got := Targets(r2); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Errorf("abort moved hosts: %v, was %v", got, before)
	}
	if before["pool01-2"] != 2 || before["pool01-1"] != 1 {
		t.Errorf("before the abort: %v, want the first canary released only", before)
	}
}

func TestValidate(t *testing.T) {
	hosts := map[string]bool{}
	for _, h := range fleet().Order {
		hosts[h] = true
	}
	for _, tc := range []struct {
		name string
		s    *pb.RolloutStrategy
		want string // "" valid
	}{
		{"default", &pb.RolloutStrategy{}, ""},
		{"unknown host", strategy(true, 1, 0, &pb.RolloutWaveSpec{Hosts: []string{"pool01-1", "fe99.contoso.com"}}), `rollout.waves[0].hosts[1]: "fe99.contoso.com": is not a host of the topology`},
		{"host twice", strategy(true, 1, 0, &pb.RolloutWaveSpec{Hosts: []string{"pool01-1"}}, &pb.RolloutWaveSpec{Hosts: []string{"pool01-1"}}), `rollout.waves[1].hosts[0]: "pool01-1": is already in rollout.waves[0]`},
		{"maxUnavailable 0 and no canary", strategy(false, 0, 0), `rollout.maxUnavailable: "0": is 0 with no canary`},
		{"two kinds in a wave", strategy(true, 1, 0, &pb.RolloutWaveSpec{Count: 1, Percent: 5}), `rollout.waves[0]: needs exactly one of hosts, count and percent`},
		{"percent over 100", strategy(true, 1, 0, &pb.RolloutWaveSpec{Percent: 150}), `rollout.waves[0].percent: "150": a percentage is 1 to 100`},
	} {
		err := Validate(tc.s, hosts)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		var te *topology.Error
		if err != nil && !errors.As(err, &te) {
			t.Errorf("%s: %T is not an INVALID_ARGUMENT *topology.Error", tc.name, err)
		}
	}
}

func TestFromTopology(t *testing.T) {
	doc := []byte(`apiVersion: s2strust/v1
kind: TrustTopology
name: t
sipDomains: {default: contoso.com}
deployments:
  - {name: exchange, product: exchange, version: "2019", autodiscoverFqdn: autodiscover.contoso.com, hosts: [ex01.contoso.com, ex02.contoso.com]}
trusts: []
rollout:
  canary: false
  maxUnavailable: 2
  failureThreshold: 1
  bakeTime: 45s
  manualGates: true
  waves: [{hosts: [ex02.contoso.com]}, {percent: 50}]
`)
	top, err := topology.Parse("t.yaml", doc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := FromTopology(top.Rollout)
	if err != nil {
		t.Fatal(err)
	}
	want := &pb.RolloutStrategy{Canary: proto.Bool(false), MaxUnavailable: 2, FailureThreshold: 1, BakeTime: durationpb.New(45 * time.Second), ManualGates: true,
		Waves: []*pb.RolloutWaveSpec{{Hosts: []string{"ex02.contoso.com"}}, {Percent: 50}}}
	if !proto.Equal(s, want) {
		t.Errorf("strategy %v, want %v", s, want)
	}
	if _, err := FromTopology(&topology.Rollout{BakeTime: "soon"}); err == nil || !strings.Contains(err.Error(), `rollout.bakeTime: "soon"`) {
		t.Errorf("bad bake time: %v", err)
	}
	merged := Merge(s, &pb.RolloutStrategy{MaxUnavailable: 5, Canary: proto.Bool(true)})
	if merged.GetMaxUnavailable() != 5 || !merged.GetCanary() || merged.GetFailureThreshold() != 1 {
		t.Errorf("merge: %v", merged)
	}
}

// TestGateInboundProbes: a host whose own probes pass but whose partners'
// probes of it fail does not pass its gate. A failing probe stored after
// the host's answer fails it, naming the prober and the cause; one stored
// before is waited on (the prober reports again when its result changes);
// a refused probe over an edge the topology disables is what should happen.
func TestGateInboundProbes(t *testing.T) {
	ok := func(host, dep string, stateRev, reportRev int64, probes ...*pb.TrustProbe) Observation {
		h := &pb.Host{Host: host, Deployment: dep, DesiredVersion: 7, DesiredSequence: 3, DesiredHash: "h7", AppliedVersion: 7, AppliedHash: "h7",
			LastResult: &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_ACK, Version: 7, Hash: "h7"}}
		return Observation{Host: h, StateRev: stateRev, ReportRev: reportRev, Report: &pb.StatusReport{AppliedVersion: 7, AppliedHash: "h7",
			Items: []*pb.ItemStatus{{Item: "oauth-configuration", State: pb.ItemState_ITEM_STATE_OK}}, Probes: probes}}
	}
	own := &pb.TrustProbe{ToDeployment: "exchange", TargetHost: "ex01", Ok: true}
	refused := &pb.TrustProbe{ToDeployment: "pool01", TargetHost: "fe01", Reason: "unknown-key", Detail: "signing key not in the cached metadata"}
	accepted := &pb.TrustProbe{ToDeployment: "pool01", TargetHost: "fe01", Ok: true}
	for _, tc := range []struct {
		name     string
		prober   Observation // ex01's
		disabled bool        // the edge exchange → pool01
		want     Verdict
		text     string
	}{
		{"inbound probe accepted", ok("ex01", "exchange", 50, 60, accepted), false, Pass, "2 probes passed"},
		{"inbound probe refused after the answer", ok("ex01", "exchange", 50, 60, refused), false, Fail,
			"probe from ex01 (exchange) to this host failed: unknown-key: signing key not in the cached metadata"},
		{"inbound probe refused before the answer", ok("ex01", "exchange", 50, 40, refused), false, Wait,
			"waiting on a new probe from ex01 (exchange; its last probe, from before this host's answer, failed: unknown-key"},
		{"refused over a disabled edge", ok("ex01", "exchange", 50, 60, refused), true, Pass, "2 probes passed"},
		{"accepted over a disabled edge", ok("ex01", "exchange", 50, 60, accepted), true, Fail,
			"probe from ex01 (exchange) to this host accepted, but the topology disables this edge"},
	} {
		obs := Observations{"fe01": ok("fe01", "pool01", 45, 55, own), "ex01": tc.prober}
		v, text := Gate("fe01", 7, obs, func(from, to string) bool { return tc.disabled && from == "exchange" && to == "pool01" })
		if v != tc.want || !strings.Contains(text, tc.text) {
			t.Errorf("%s: %v %q, want %v %q", tc.name, v, text, tc.want, tc.text)
		}
	}

	// In a rollout: the host released first fails its gate when its
	// partner's probes of it fail, and the rollout stops at the threshold.
	now := time.Unix(1000, 0)
	r := Plan("rollouts/1", strategy(false, 1, 0, &pb.RolloutWaveSpec{Hosts: []string{"pool01-1"}}), fleet(), 1, 2, now)
	s := sim{}
	obs := func() Observations {
		o := s.observe(r)
		for h, ob := range o {
			ob.StateRev, ob.ReportRev = 10, 20
			if h == "exchange-1" {
				ob.Report.Probes = append(ob.Report.Probes, &pb.TrustProbe{ToDeployment: "pool01", TargetHost: "pool01-1", Reason: "unknown-key", Detail: "no such key"})
			}
			o[h] = ob
		}
		return o
	}
	for i := 0; i < 10 && r.GetState() == pb.RolloutState_ROLLOUT_STATE_RUNNING; i++ {
		Step(r, obs(), nil, now)
	}
	if r.GetState() != pb.RolloutState_ROLLOUT_STATE_PAUSED || !strings.Contains(r.GetReason(), "pool01-1: probe from exchange-1 (exchange) to this host failed: unknown-key: no such key") {
		t.Errorf("rollout %v %q, want paused naming pool01-1's failed inbound probe", r.GetState(), r.GetReason())
	}
}
