package rotation

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/rollout"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

const (
	oldTP = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	newTP = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
)

var t0 = time.Date(2026, 12, 2, 5, 0, 0, 0, time.UTC)

// fakeFleet is contoso compiled, with one report per host that a test
// shapes as the agents would report it.
type fakeFleet struct {
	t       *testing.T
	cfgs    []*pb.HostConfig
	reports map[string]*pb.StatusReport
	rev     uint64
	clock   time.Time
}

func newFakeFleet(t *testing.T) *fakeFleet {
	t.Helper()
	topo, err := topology.Load("contoso.yaml", examples.Contoso)
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := topology.Compile(topo)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFleet{t: t, cfgs: cfgs, reports: map[string]*pb.StatusReport{}, rev: 5, clock: t0.Add(-time.Minute)}
	// Before the rotation: every host signs with its own issuer, caches
	// pool01's old certificate, and every probe passes.
	f.report(func(cfg *pb.HostConfig, r *pb.StatusReport) {
		if cfg.GetDeployment() == "pool01" {
			r.Oauth = &pb.OAuthConfiguration{IssuerThumbprint: oldTP}
			r.Metadata = []*pb.MetadataCheck{{Deployment: "pool01", Url: cfg.GetMetadataUrl(), Ok: true, Thumbprints: []string{oldTP}}}
		}
		for _, p := range cfg.GetPartners() {
			cached := []string{"CCCC"}
			if p.GetDeployment() == "pool01" {
				cached = []string{oldTP}
			}
			r.Partners = append(r.Partners, &pb.PartnerApplication{Name: p.GetName(), CachedThumbprints: cached})
		}
	})
	return f
}

// report gives every host a new report (a later clock, the current
// revision) that shape fills in from the host's previous one.
func (f *fakeFleet) report(shape func(cfg *pb.HostConfig, r *pb.StatusReport)) {
	f.clock = f.clock.Add(time.Second)
	for _, cfg := range f.cfgs {
		prev := f.reports[cfg.GetHost()]
		r := &pb.StatusReport{AppliedVersion: f.rev, Clock: timestamppb.New(f.clock)}
		if prev != nil {
			r.Oauth, r.Metadata, r.Partners = prev.GetOauth(), prev.GetMetadata(), prev.GetPartners()
		}
		for _, tt := range cfg.GetTrustedBy() {
			for _, h := range tt.GetHosts() {
				tp := "DDDD"
				if cfg.GetDeployment() == "pool01" {
					tp = r.GetOauth().GetIssuerThumbprint()
				}
				r.Probes = append(r.Probes, &pb.TrustProbe{ToDeployment: tt.GetDeployment(), TargetHost: h, Ok: true, IssuerThumbprint: tp})
			}
		}
		shape(cfg, r)
		f.reports[cfg.GetHost()] = r
	}
}

func (f *fakeFleet) view(now time.Time, ro *pb.Rollout) View {
	obs := rollout.Observations{}
	for h, r := range f.reports {
		obs[h] = rollout.Observation{Host: &pb.Host{Host: h}, Report: r}
	}
	return View{Now: now, Revision: f.rev, Configs: f.cfgs, Obs: obs, Rollout: ro}
}

func newRotation() *pb.Rotation {
	return New(&pb.Rotation{
		Name: "rotations/1", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC,
		OldThumbprint: oldTP, NewSecret: "oauth-2026@v2", NewThumbprint: newTP,
		StartTime: timestamppb.New(t0), EffectiveTime: timestamppb.New(t0.Add(time.Hour)),
	})
}

func mustStep(t *testing.T, r *pb.Rotation, v View, want Action) {
	t.Helper()
	if act, _ := Step(r, v); act != want {
		t.Fatalf("Step = %v, want %v; rotation %s phase %s: %s", act, want, StateName(r.GetState()), PhaseName(r.GetCurrentPhase()), r.GetReason())
	}
}

func wantReason(t *testing.T, r *pb.Rotation, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(r.GetReason(), p) {
			t.Fatalf("reason %q, want it to contain %q", r.GetReason(), p)
		}
	}
}

// applyPhase is what the engine does on ApplyPhase: a new revision
// current, its rollout succeeded.
func (f *fakeFleet) applyPhase(t *testing.T, r *pb.Rotation) *pb.Rollout {
	t.Helper()
	f.rev++
	name := "rollouts/" + string(rune('0'+f.rev))
	Applied(r, f.rev, f.rev, name, f.clock)
	return &pb.Rollout{Name: name, State: pb.RolloutState_ROLLOUT_STATE_SUCCEEDED}
}

func TestRotationGoesThroughEveryPhaseOnTheHostsReports(t *testing.T) {
	f := newFakeFleet(t)
	r := newRotation()

	// Not due yet; then due but a rollout runs.
	mustStep(t, r, f.view(t0.Add(-time.Second), nil), None)
	wantReason(t, r, "scheduled for 2026-12-02T05:00:00Z")
	v := f.view(t0, nil)
	v.Blocker = "rollouts/4"
	mustStep(t, r, v, None)
	wantReason(t, r, "waiting for rollouts/4")
	if r.GetState() != pb.RotationState_ROTATION_STATE_SCHEDULED {
		t.Fatalf("state %v while a rollout runs", r.GetState())
	}

	// stage: stored, rolling out, then gated on the reports.
	mustStep(t, r, f.view(t0, nil), ApplyPhase)
	if r.GetState() != pb.RotationState_ROTATION_STATE_RUNNING || r.GetFromRevision() != 5 {
		t.Fatalf("started: state %v from revision %d", r.GetState(), r.GetFromRevision())
	}
	f.rev++
	Applied(r, f.rev, 2, "rollouts/5", t0)
	running := &pb.Rollout{Name: "rollouts/5", State: pb.RolloutState_ROLLOUT_STATE_RUNNING, Waves: []*pb.RolloutWave{{Title: "canary", Hosts: []*pb.RolloutHost{{Host: "fe01.contoso.com"}}}}}
	v = f.view(t0, running)
	v.Revision = 5 // the hub has not seen the phase's revision yet
	mustStep(t, r, v, None)
	wantReason(t, r, "waiting for revision 2 to be current")
	mustStep(t, r, f.view(t0, running), None)
	wantReason(t, r, "phase stage: rollouts/5 rolling out (canary, wave 1 of 1: 0 of 1 hosts passed)")
	paused := &pb.Rollout{Name: "rollouts/5", State: pb.RolloutState_ROLLOUT_STATE_PAUSED, Reason: "paused by admin"}
	mustStep(t, r, f.view(t0, paused), None)
	wantReason(t, r, "rollouts/5 is paused (paused by admin): resume it")

	done := &pb.Rollout{Name: "rollouts/5", State: pb.RolloutState_ROLLOUT_STATE_SUCCEEDED}
	f.report(func(*pb.HostConfig, *pb.StatusReport) {})
	mustStep(t, r, f.view(t0, done), None)
	wantReason(t, r, "phase stage: waiting on fe01.contoso.com: next issuer is (none), want BBBBBBBB…")
	// Staged, but fe02's metadata does not publish the new key yet.
	f.report(func(cfg *pb.HostConfig, rep *pb.StatusReport) {
		if cfg.GetDeployment() != "pool01" {
			return
		}
		rep.Oauth = &pb.OAuthConfiguration{IssuerThumbprint: oldTP, NextIssuerThumbprint: newTP}
		tps := []string{oldTP, newTP}
		if cfg.GetHost() == "fe02.contoso.com" {
			tps = []string{oldTP}
		}
		rep.Metadata = []*pb.MetadataCheck{{Deployment: "pool01", Url: cfg.GetMetadataUrl(), Ok: true, Thumbprints: tps}}
	})
	mustStep(t, r, f.view(t0, done), None)
	wantReason(t, r, "fe02.contoso.com: next issuer staged; its metadata", "lacks BBBBBBBB…")
	st := phaseOf(r, pb.RotationPhase_ROTATION_PHASE_STAGE)
	if len(st.GetHosts()) != 2 || !st.GetHosts()[0].GetPassed() || st.GetHosts()[1].GetPassed() || st.GetHosts()[0].GetRole() != RoleIssuer {
		t.Fatalf("stage hosts %v, want fe01 passed and fe02 waiting", st.GetHosts())
	}
	f.report(func(cfg *pb.HostConfig, rep *pb.StatusReport) {
		if cfg.GetDeployment() == "pool01" {
			rep.Metadata = []*pb.MetadataCheck{{Deployment: "pool01", Url: cfg.GetMetadataUrl(), Ok: true, Thumbprints: []string{newTP, oldTP}}}
		}
	})
	mustStep(t, r, f.view(t0, done), ApplyPhase)
	if st.GetState() != pb.RotationPhaseState_ROTATION_PHASE_STATE_PASSED || r.GetCurrentPhase() != pb.RotationPhase_ROTATION_PHASE_REFRESH {
		t.Fatalf("after stage: stage %v, current %v", st.GetState(), r.GetCurrentPhase())
	}

	// refresh: gated on every partner host's cache (exchange's two
	// servers and SharePoint's one trust pool01).
	ro := f.applyPhase(t, r)
	f.report(func(*pb.HostConfig, *pb.StatusReport) {})
	mustStep(t, r, f.view(t0, ro), None)
	wantReason(t, r, "phase refresh: waiting on ex01.contoso.com: partner LyncEnterprise-pool01: cached metadata lacks BBBBBBBB… (holds AAAAAAAA…)")
	f.report(func(cfg *pb.HostConfig, rep *pb.StatusReport) {
		for _, p := range rep.GetPartners() {
			if pt := partnerFor(cfg, "pool01"); pt != nil && p.GetName() == pt.GetName() {
				p.CachedThumbprints = []string{oldTP, newTP}
			}
		}
	})
	mustStep(t, r, f.view(t0, ro), None)
	rf := phaseOf(r, pb.RotationPhase_ROTATION_PHASE_REFRESH)
	if len(rf.GetHosts()) != 3 {
		t.Fatalf("refresh gated on %v, want the 3 hosts trusting pool01", rf.GetHosts())
	}
	for _, h := range rf.GetHosts() {
		if h.GetRole() != RolePartner || !h.GetPassed() || h.GetDeployment() == "pool01" {
			t.Errorf("refresh host %v", h)
		}
	}

	// activate: not before the effective time, then gated on probes
	// signed with the new key.
	eff := t0.Add(time.Hour)
	mustStep(t, r, f.view(eff.Add(-time.Second), ro), None)
	wantReason(t, r, "phase activate: waits for the effective time 2026-12-02T06:00:00Z")
	mustStep(t, r, f.view(eff, ro), ApplyPhase)
	ro = f.applyPhase(t, r)
	f.report(func(*pb.HostConfig, *pb.StatusReport) {})
	mustStep(t, r, f.view(t0, ro), None)
	wantReason(t, r, "phase activate: waiting on fe01.contoso.com: issuer is AAAAAAAA…, want BBBBBBBB…")
	f.report(func(cfg *pb.HostConfig, rep *pb.StatusReport) {
		if cfg.GetDeployment() == "pool01" {
			rep.Oauth = &pb.OAuthConfiguration{IssuerThumbprint: newTP, PreviousIssuerThumbprint: oldTP}
			for _, p := range rep.GetProbes() {
				p.IssuerThumbprint = newTP
			}
		}
	})
	mustStep(t, r, f.view(t0, ro), ApplyPhase)
	ac := phaseOf(r, pb.RotationPhase_ROTATION_PHASE_ACTIVATE)
	if ac.GetState() != pb.RotationPhaseState_ROTATION_PHASE_STATE_PASSED || !strings.Contains(ac.GetHosts()[0].GetGate(), "3 probes signed with it passed") {
		t.Fatalf("activate %v", ac)
	}

	// retire: gated on no previous issuer.
	ro = f.applyPhase(t, r)
	f.report(func(*pb.HostConfig, *pb.StatusReport) {})
	mustStep(t, r, f.view(t0, ro), None)
	wantReason(t, r, "previous issuer AAAAAAAA… still held")
	f.report(func(cfg *pb.HostConfig, rep *pb.StatusReport) {
		if cfg.GetDeployment() == "pool01" {
			rep.Oauth = &pb.OAuthConfiguration{IssuerThumbprint: newTP}
		}
	})
	mustStep(t, r, f.view(t0, ro), None)
	if r.GetState() != pb.RotationState_ROTATION_STATE_SUCCEEDED || r.GetEndTime() == nil || r.GetCurrentPhase() != pb.RotationPhase_ROTATION_PHASE_UNSPECIFIED {
		t.Fatalf("after retire: %v %s", r.GetState(), r.GetReason())
	}
	for _, ps := range r.GetPhases() {
		if ps.GetState() != pb.RotationPhaseState_ROTATION_PHASE_STATE_PASSED || ps.GetRevision() == 0 || ps.GetStartTime() == nil || ps.GetEndTime() == nil {
			t.Errorf("phase %s: %v", PhaseName(ps.GetPhase()), ps)
		}
	}
	if r.GetProbeFailures() != 0 {
		t.Errorf("%d probe failures counted, none failed", r.GetProbeFailures())
	}
	if act, changed := Step(r, f.view(t0, ro)); act != None || changed {
		t.Errorf("a finished rotation stepped: %v %v", act, changed)
	}
}

func TestRotationCountsEachFailedProbeOnItsEdgesOnce(t *testing.T) {
	f := newFakeFleet(t)
	// A failure before the start is not the rotation's.
	f.report(func(cfg *pb.HostConfig, rep *pb.StatusReport) {
		for _, p := range rep.GetProbes() {
			p.Ok, p.Reason = false, "unknown-key"
		}
	})
	r := newRotation()
	mustStep(t, r, f.view(t0, nil), ApplyPhase)
	if r.GetProbeFailures() != 0 {
		t.Fatalf("%d failures counted from reports made before the start", r.GetProbeFailures())
	}
	// ex01 → pool01 fails (an edge to pool01), ex01 → sharepoint fails
	// (not pool01's), sp01 → pool01 fails but the edge is disabled.
	f.report(func(cfg *pb.HostConfig, rep *pb.StatusReport) {
		for _, p := range rep.GetProbes() {
			switch {
			case cfg.GetHost() == "ex01.contoso.com", cfg.GetHost() == "sp01.contoso.com" && p.GetToDeployment() == "pool01":
				p.Ok, p.Reason, p.Detail = false, "unknown-key", "no such key"
			}
		}
	})
	view := func() View {
		v := f.view(t0, nil)
		v.Disabled = func(from, to string) bool { return from == "sharepoint" && to == "pool01" }
		return v
	}
	Step(r, view())
	Step(r, view()) // the same reports again count nothing
	if r.GetProbeFailures() != 2 || len(r.GetRecentProbeFailures()) != 2 {
		t.Fatalf("%d failures (%v), want ex01's 2 probes to pool01's Front Ends", r.GetProbeFailures(), r.GetRecentProbeFailures())
	}
	pf := r.GetRecentProbeFailures()[0]
	if pf.GetFromHost() != "ex01.contoso.com" || pf.GetToDeployment() != "pool01" || pf.GetReason() != "unknown-key" || pf.GetTime() == nil {
		t.Errorf("failure %v", pf)
	}
	// A newer report with the same failures counts them again.
	f.report(func(cfg *pb.HostConfig, rep *pb.StatusReport) {
		if cfg.GetHost() == "fe01.contoso.com" {
			rep.Probes[0].Ok = false
		}
	})
	Step(r, view())
	if r.GetProbeFailures() != 3 {
		t.Fatalf("%d failures, want 3 (fe01's probe from pool01)", r.GetProbeFailures())
	}
	for range 30 {
		f.report(func(cfg *pb.HostConfig, rep *pb.StatusReport) {
			if cfg.GetHost() == "fe01.contoso.com" {
				rep.Probes[0].Ok = false
			}
		})
		Step(r, view())
	}
	if r.GetProbeFailures() != 33 || len(r.GetRecentProbeFailures()) != MaxRecentProbeFailures {
		t.Fatalf("%d failures, %d recent", r.GetProbeFailures(), len(r.GetRecentProbeFailures()))
	}
	// A failure dated (since) by the report that first had it, carried on
	// by newer reports (an agent's every report carries its latest
	// probes), is counted once; a new failure after it is counted.
	var firstSince *timestamppb.Timestamp
	for i := range 3 {
		f.report(func(cfg *pb.HostConfig, rep *pb.StatusReport) {
			if cfg.GetHost() == "fe02.contoso.com" {
				if i == 0 {
					firstSince = rep.GetClock()
				}
				rep.Probes[0].Ok, rep.Probes[0].Since = false, firstSince
			}
		})
		Step(r, view())
	}
	if r.GetProbeFailures() != 34 {
		t.Fatalf("%d failures, want 34: fe02's one failure, carried by 3 reports, counted once", r.GetProbeFailures())
	}
	f.report(func(cfg *pb.HostConfig, rep *pb.StatusReport) {
		if cfg.GetHost() == "fe02.contoso.com" {
			rep.Probes[0].Ok, rep.Probes[0].Since = false, rep.GetClock()
		}
	})
	Step(r, view())
	if r.GetProbeFailures() != 35 {
		t.Fatalf("%d failures, want 35: fe02's new failure counted", r.GetProbeFailures())
	}
}

func TestRotationFailsWhenItsPhaseIsAbortedOrSuperseded(t *testing.T) {
	for name, tc := range map[string]struct {
		rollout *pb.Rollout
		rev     uint64
		want    string
	}{
		"aborted":    {&pb.Rollout{Name: "rollouts/6", State: pb.RolloutState_ROLLOUT_STATE_ABORTED, Reason: "aborted by admin"}, 6, "phase stage: rollouts/6 was aborted (aborted by admin)"},
		"superseded": {&pb.Rollout{Name: "rollouts/6", State: pb.RolloutState_ROLLOUT_STATE_RUNNING}, 7, "phase stage: its revision 2 was superseded by revision 7"},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFakeFleet(t)
			r := newRotation()
			mustStep(t, r, f.view(t0, nil), ApplyPhase)
			Applied(r, 6, 2, "rollouts/6", t0)
			f.rev = tc.rev
			mustStep(t, r, f.view(t0, tc.rollout), None)
			if r.GetState() != pb.RotationState_ROTATION_STATE_FAILED || r.GetPhases()[0].GetState() != pb.RotationPhaseState_ROTATION_PHASE_STATE_FAILED {
				t.Fatalf("state %v, phase %v", r.GetState(), r.GetPhases()[0].GetState())
			}
			wantReason(t, r, tc.want)
			if err := Cancel(r, "admin", t0); err == nil {
				t.Error("a failed rotation was cancelled")
			}
		})
	}
}

func TestCancelOnlyAScheduledRotation(t *testing.T) {
	r := newRotation()
	if err := Cancel(r, "admin/admin", t0); err != nil || r.GetState() != pb.RotationState_ROTATION_STATE_CANCELLED || !Finished(r) {
		t.Fatalf("cancel: %v, state %v", err, r.GetState())
	}
	if err := Cancel(r, "admin/admin", t0); err != nil {
		t.Errorf("cancel again: %v", err)
	}
	f := newFakeFleet(t)
	r = newRotation()
	mustStep(t, r, f.view(t0, nil), ApplyPhase)
	err := Cancel(r, "admin/admin", t0)
	if err == nil || !strings.Contains(err.Error(), "rotations/1") || !strings.Contains(err.Error(), "running") {
		t.Errorf("cancel a running rotation: %v", err)
	}
}

func TestOverlayOfEachPhase(t *testing.T) {
	r := newRotation()
	compile := func(p pb.RotationPhase) map[string]*pb.HostConfig {
		cfgs := newFakeFleet(t).cfgs
		Overlay(cfgs, OverlayOf(r, p))
		out := map[string]*pb.HostConfig{}
		for _, c := range cfgs {
			out[c.GetHost()] = c
		}
		return out
	}
	expected := func(cfg *pb.HostConfig) []string { return partnerFor(cfg, "pool01").GetExpectedSigningThumbprints() }

	st := compile(pb.RotationPhase_ROTATION_PHASE_STAGE)
	if n := st["fe02.contoso.com"].GetNextTokenIssuer(); n.GetSecret() != "oauth-2026@v2" || n.GetSecretThumbprint() != newTP || !n.GetEffective().AsTime().Equal(t0.Add(time.Hour)) {
		t.Errorf("stage: fe02's next issuer %v", n)
	}
	if st["ex01.contoso.com"].GetNextTokenIssuer() != nil || len(expected(st["ex01.contoso.com"])) != 0 {
		t.Errorf("stage changed exchange: %v", st["ex01.contoso.com"])
	}
	rf := compile(pb.RotationPhase_ROTATION_PHASE_REFRESH)
	if got := expected(rf["sp01.contoso.com"]); len(got) != 2 || got[0] != oldTP || got[1] != newTP || rf["fe01.contoso.com"].GetNextTokenIssuer() == nil {
		t.Errorf("refresh: sp01 expects %v", got)
	}
	for _, p := range rf["sp01.contoso.com"].GetPartners() {
		if p.GetDeployment() != "pool01" && len(p.GetExpectedSigningThumbprints()) > 0 {
			t.Errorf("refresh: sp01's partner %s expects %v", p.GetName(), p.GetExpectedSigningThumbprints())
		}
	}
	ac := compile(pb.RotationPhase_ROTATION_PHASE_ACTIVATE)
	if ac["fe01.contoso.com"].GetNextTokenIssuer() != nil || len(expected(ac["ex02.contoso.com"])) != 2 {
		t.Errorf("activate: fe01 next %v, ex02 expects %v", ac["fe01.contoso.com"].GetNextTokenIssuer(), expected(ac["ex02.contoso.com"]))
	}
	re := compile(pb.RotationPhase_ROTATION_PHASE_RETIRE)
	if !re["fe01.contoso.com"].GetRetirePreviousIssuer() || re["ex01.contoso.com"].GetRetirePreviousIssuer() || len(expected(re["ex01.contoso.com"])) != 1 {
		t.Errorf("retire: fe01 retire %v, ex01 retire %v expects %v", re["fe01.contoso.com"].GetRetirePreviousIssuer(), re["ex01.contoso.com"].GetRetirePreviousIssuer(), expected(re["ex01.contoso.com"]))
	}
	// Each phase hashes differently beside the same document.
	seen := map[string]bool{store.RecordHash(examples.Contoso, nil): true}
	for _, p := range Phases {
		h := store.RecordHash(examples.Contoso, OverlayOf(r, p))
		if seen[h] {
			t.Errorf("phase %s hashes like another revision", PhaseName(p))
		}
		seen[h] = true
	}
}
