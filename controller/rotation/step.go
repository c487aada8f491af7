package rotation

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/rollout"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// MaxRecentProbeFailures bounds Rotation.recent_probe_failures.
const MaxRecentProbeFailures = 20

// View is what Step sees of the fleet.
type View struct {
	Now time.Time
	// Revision is the current topology revision (0: none known yet).
	Revision uint64
	// Configs are the current revision's compiled configurations in
	// topology order, the revision's phase overlay laid over them.
	Configs []*pb.HostConfig
	// Obs are the hosts' states and reports.
	Obs rollout.Observations
	// Disabled says the topology disables the edge from → to, where a
	// refused probe is what should happen.
	Disabled func(from, to string) bool
	// Rollout is the current phase's rollout as stored, when it has one.
	Rollout *pb.Rollout
	// Blocker names a running rollout that is not a rotation's: a rotation
	// due to start waits for it (its first phase would supersede it).
	Blocker string
}

// Action is what the engine does after Step.
type Action int

// The actions.
const (
	// None: store the rotation when Step changed it.
	None Action = iota
	// ApplyPhase: store the revision of the current phase (with its
	// rollout), record it with Applied, then store the rotation.
	ApplyPhase
)

// Step advances a rotation as far as it can go now: it starts a due
// rotation, follows the current phase's rollout, evaluates the phase's
// gate host by host once the rollout succeeded, moves to the next phase
// when every host passed, and counts the failed probes on edges from or
// to the deployment in reports it has not counted yet. It returns what
// the engine must do and whether r changed (and must be stored).
func Step(r *pb.Rotation, v View) (Action, bool) {
	before := proto.Clone(r)
	act := step(r, v)
	if proto.Equal(before, r) {
		return act, false
	}
	r.UpdateTime = timestamppb.New(v.Now)
	return act, true
}

// Applied records that the current phase's revision rev (sequence seq)
// was stored, delivered by rollout name ("" when it went to every host at
// once).
func Applied(r *pb.Rotation, rev, seq uint64, name string, now time.Time) {
	ps := phaseOf(r, r.GetCurrentPhase())
	if ps == nil {
		return
	}
	ts := timestamppb.New(now)
	ps.Revision, ps.Sequence, ps.Rollout, ps.State, ps.StartTime = rev, seq, name, pb.RotationPhaseState_ROTATION_PHASE_STATE_ROLLING_OUT, ts
	r.Reason = fmt.Sprintf("phase %s: revision %d stored", PhaseName(ps.GetPhase()), seq)
	if name != "" {
		r.Reason += ", rolling out as " + name
	}
	r.UpdateTime = ts
}

// Cancel cancels a scheduled rotation; a started one is a precondition
// failure (ErrStarted).
func Cancel(r *pb.Rotation, who string, now time.Time) error {
	switch r.GetState() {
	case pb.RotationState_ROTATION_STATE_CANCELLED:
		return nil
	case pb.RotationState_ROTATION_STATE_SCHEDULED:
		ts := timestamppb.New(now)
		r.State, r.Reason, r.UpdateTime, r.EndTime = pb.RotationState_ROTATION_STATE_CANCELLED, "cancelled by "+who, ts, ts
		return nil
	}
	return fmt.Errorf("cannot cancel %s: it is %s; only a scheduled rotation can be cancelled (pause or abort the rollout of its phase to stop it): %w",
		r.GetName(), StateName(r.GetState()), ErrStarted)
}

func phaseOf(r *pb.Rotation, p pb.RotationPhase) *pb.RotationPhaseStatus {
	for _, ps := range r.GetPhases() {
		if ps.GetPhase() == p {
			return ps
		}
	}
	return nil
}

func step(r *pb.Rotation, v View) Action {
	ts := timestamppb.New(v.Now)
	if r.GetState() == pb.RotationState_ROTATION_STATE_SCHEDULED {
		if v.Now.Before(r.GetStartTime().AsTime()) {
			r.Reason = "scheduled for " + r.GetStartTime().AsTime().UTC().Format(time.RFC3339)
			return None
		}
		if v.Blocker != "" {
			r.Reason = "due; waiting for " + v.Blocker + " to finish before the first phase"
			return None
		}
		r.State, r.CurrentPhase, r.Reason, r.FromRevision = pb.RotationState_ROTATION_STATE_RUNNING, pb.RotationPhase_ROTATION_PHASE_STAGE, "", v.Revision
		// Reports made before the start are not the rotation's.
		r.ProbeMarks = nil
		for _, host := range sortedHosts(v.Obs) {
			if c := v.Obs[host].Report.GetClock(); c != nil {
				r.ProbeMarks = append(r.ProbeMarks, &pb.RotationProbeMark{Host: host, Clock: c})
			}
		}
	}
	if r.GetState() != pb.RotationState_ROTATION_STATE_RUNNING {
		return None
	}
	countProbes(r, v)
	for {
		ps := phaseOf(r, r.GetCurrentPhase())
		if ps == nil {
			r.State, r.Reason, r.EndTime = pb.RotationState_ROTATION_STATE_FAILED, fmt.Sprintf("unknown phase %s", r.GetCurrentPhase()), ts
			return None
		}
		name := "phase " + PhaseName(ps.GetPhase())
		switch ps.GetState() {
		case pb.RotationPhaseState_ROTATION_PHASE_STATE_PENDING:
			// Activation happens at or after the effective time: Lync's CMS
			// rolls by itself then, and a host told to activate earlier
			// would wait on it (and NACK after its pending timeout).
			if eff := r.GetEffectiveTime().AsTime(); ps.GetPhase() == pb.RotationPhase_ROTATION_PHASE_ACTIVATE && v.Now.Before(eff) {
				r.Reason = fmt.Sprintf("%s: waits for the effective time %s", name, eff.UTC().Format(time.RFC3339))
				return None
			}
			r.Reason = name + ": storing its revision"
			return ApplyPhase
		case pb.RotationPhaseState_ROTATION_PHASE_STATE_ROLLING_OUT, pb.RotationPhaseState_ROTATION_PHASE_STATE_VERIFYING:
		default:
			return None
		}
		switch {
		case v.Revision > ps.GetRevision():
			fail(r, ps, fmt.Sprintf("%s: its revision %d was superseded by revision %d (a topology applied during the rotation); hosts stay where they are", name, ps.GetSequence(), v.Revision), ts)
			return None
		case v.Revision < ps.GetRevision():
			r.Reason = fmt.Sprintf("%s: waiting for revision %d to be current", name, ps.GetSequence())
			return None
		}
		passed, waiting := gates(r, ps, v)
		if ps.GetState() == pb.RotationPhaseState_ROTATION_PHASE_STATE_ROLLING_OUT && ps.GetRollout() != "" {
			ro := v.Rollout
			if ro == nil || ro.GetName() != ps.GetRollout() {
				r.Reason = fmt.Sprintf("%s: waiting for %s", name, ps.GetRollout())
				return None
			}
			switch ro.GetState() {
			case pb.RolloutState_ROLLOUT_STATE_RUNNING:
				r.Reason = fmt.Sprintf("%s: %s rolling out (%s)", name, ro.GetName(), waveText(ro))
				return None
			case pb.RolloutState_ROLLOUT_STATE_PAUSED:
				r.Reason = fmt.Sprintf("%s: %s is paused (%s): resume it to continue the rotation", name, ro.GetName(), ro.GetReason())
				return None
			case pb.RolloutState_ROLLOUT_STATE_ABORTED:
				fail(r, ps, fmt.Sprintf("%s: %s was aborted (%s); hosts stay where they are", name, ro.GetName(), ro.GetReason()), ts)
				return None
			}
		}
		ps.State = pb.RotationPhaseState_ROTATION_PHASE_STATE_VERIFYING
		if !passed {
			r.Reason = name + ": waiting on " + waiting
			return None
		}
		ps.State, ps.EndTime = pb.RotationPhaseState_ROTATION_PHASE_STATE_PASSED, ts
		i := slices.Index(Phases, ps.GetPhase())
		if i == len(Phases)-1 {
			r.State, r.CurrentPhase, r.Reason, r.EndTime = pb.RotationState_ROTATION_STATE_SUCCEEDED, pb.RotationPhase_ROTATION_PHASE_UNSPECIFIED, "", ts
			return None
		}
		r.CurrentPhase = Phases[i+1]
	}
}

func fail(r *pb.Rotation, ps *pb.RotationPhaseStatus, reason string, ts *timestamppb.Timestamp) {
	ps.State, ps.EndTime = pb.RotationPhaseState_ROTATION_PHASE_STATE_FAILED, ts
	r.State, r.Reason, r.EndTime = pb.RotationState_ROTATION_STATE_FAILED, reason, ts
}

func waveText(ro *pb.Rollout) string {
	i := int(ro.GetCurrentWave())
	if i >= len(ro.GetWaves()) {
		return "finishing"
	}
	w := ro.GetWaves()[i]
	passed := 0
	for _, h := range w.GetHosts() {
		if h.GetState() == pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED {
			passed++
		}
	}
	return fmt.Sprintf("%s, wave %d of %d: %d of %d hosts passed", w.GetTitle(), i+1, len(ro.GetWaves()), passed, len(w.GetHosts()))
}

func sortedHosts(obs rollout.Observations) []string {
	out := make([]string, 0, len(obs))
	for h := range obs {
		out = append(out, h)
	}
	slices.Sort(out)
	return out
}

// countProbes counts the failed probes on edges from or to the rotated
// deployment in every report newer than the one last counted for its
// host. A failure an earlier report had already (its since no later than
// the report last counted: every report carries the latest probes) is
// not counted again. A probe of an edge the topology disables fails by
// design and is not counted.
func countProbes(r *pb.Rotation, v View) {
	deployment := map[string]string{}
	for _, cfg := range v.Configs {
		deployment[cfg.GetHost()] = cfg.GetDeployment()
	}
	marks := map[string]*pb.RotationProbeMark{}
	for _, m := range r.GetProbeMarks() {
		marks[m.GetHost()] = m
	}
	for _, host := range sortedHosts(v.Obs) {
		rep := v.Obs[host].Report
		clock := rep.GetClock()
		if clock == nil {
			continue
		}
		m := marks[host]
		if m != nil && !clock.AsTime().After(m.GetClock().AsTime()) {
			continue
		}
		var counted *timestamppb.Timestamp // the last report counted
		if m == nil {
			m = &pb.RotationProbeMark{Host: host}
			marks[host] = m
			r.ProbeMarks = append(r.ProbeMarks, m)
		} else {
			counted = m.GetClock()
		}
		m.Clock = clock
		from := deployment[host]
		for _, p := range rep.GetProbes() {
			to := p.GetToDeployment()
			if from != r.GetDeployment() && to != r.GetDeployment() {
				continue
			}
			if p.GetOk() || (v.Disabled != nil && v.Disabled(from, to)) {
				continue
			}
			if since := p.GetSince(); since != nil && counted != nil && !since.AsTime().After(counted.AsTime()) {
				continue
			}
			r.ProbeFailures++
			r.RecentProbeFailures = append(r.RecentProbeFailures, &pb.RotationProbeFailure{
				FromHost: host, ToHost: p.GetTargetHost(), ToDeployment: to, Reason: p.GetReason(), Detail: p.GetDetail(),
				IssuerThumbprint: p.GetIssuerThumbprint(), Time: clock,
			})
		}
	}
	if n := len(r.RecentProbeFailures); n > MaxRecentProbeFailures {
		r.RecentProbeFailures = r.RecentProbeFailures[n-MaxRecentProbeFailures:]
	}
}

// Role names of RotationHost.role.
const (
	RoleIssuer  = "issuer"
	RolePartner = "partner"
)

// gates evaluates phase ps's gate for each of its hosts, records the
// verdicts in ps.hosts and reports whether all passed, and if not what
// the first few hosts wait on.
func gates(r *pb.Rotation, ps *pb.RotationPhaseStatus, v View) (bool, string) {
	d := r.GetDeployment()
	var hosts []*pb.RotationHost
	for _, cfg := range v.Configs {
		host := cfg.GetHost()
		var passed bool
		var text string
		switch ps.GetPhase() {
		case pb.RotationPhase_ROTATION_PHASE_REFRESH:
			p := partnerFor(cfg, d)
			if p == nil {
				continue
			}
			passed, text = refreshGate(r, host, p, v.Obs[host].Report, ps.GetRevision())
			hosts = append(hosts, &pb.RotationHost{Host: host, Deployment: cfg.GetDeployment(), Role: RolePartner, Passed: passed, Gate: text})
			continue
		}
		if cfg.GetDeployment() != d {
			continue
		}
		rep := v.Obs[host].Report
		switch ps.GetPhase() {
		case pb.RotationPhase_ROTATION_PHASE_STAGE:
			passed, text = stageGate(r, host, rep, ps.GetRevision())
		case pb.RotationPhase_ROTATION_PHASE_ACTIVATE:
			passed, text = activateGate(r, cfg, rep, ps.GetRevision(), v.Disabled)
		case pb.RotationPhase_ROTATION_PHASE_RETIRE:
			passed, text = retireGate(r, cfg, rep, ps.GetRevision(), v.Disabled)
		}
		hosts = append(hosts, &pb.RotationHost{Host: host, Deployment: d, Role: RoleIssuer, Passed: passed, Gate: text})
	}
	if !hostsEqual(ps.GetHosts(), hosts) {
		ps.Hosts = hosts
	}
	var waiting []string
	for _, h := range hosts {
		if !h.GetPassed() {
			waiting = append(waiting, h.GetHost()+": "+h.GetGate())
		}
	}
	if len(hosts) == 0 {
		return true, ""
	}
	if len(waiting) > 3 {
		waiting = append(waiting[:3], fmt.Sprintf("and %d more hosts", len(waiting)-3))
	}
	return len(waiting) == 0, strings.Join(waiting, "; ")
}

func hostsEqual(a, b []*pb.RotationHost) bool {
	return slices.EqualFunc(a, b, func(x, y *pb.RotationHost) bool { return proto.Equal(x, y) })
}

// partnerFor is cfg's partner entry for deployment d, nil when cfg's
// deployment does not trust d.
func partnerFor(cfg *pb.HostConfig, d string) *pb.Partner {
	for _, p := range cfg.GetPartners() {
		if p.GetDeployment() == d {
			return p
		}
	}
	return nil
}

// Short is a thumbprint's first eight characters, for gate texts.
func Short(tp string) string {
	if len(tp) > 8 {
		return tp[:8] + "…"
	}
	if tp == "" {
		return "(none)"
	}
	return tp
}

func sameTP(a, b string) bool { return a != "" && strings.EqualFold(a, b) }

func holds(tps []string, want ...string) []string {
	var missing []string
	for _, w := range want {
		if !slices.ContainsFunc(tps, func(t string) bool { return sameTP(t, w) }) {
			missing = append(missing, Short(w))
		}
	}
	return missing
}

// fresh says why rep is not a report of revision rev or newer ("" when it is).
func fresh(rep *pb.StatusReport, rev uint64) string {
	if rep == nil {
		return "no report yet"
	}
	if rep.GetAppliedVersion() < rev {
		return fmt.Sprintf("no report of the phase's revision yet (reports revision %d)", rep.GetAppliedVersion())
	}
	return ""
}

// stageGate: the host reports the new certificate staged as next, and its
// self-check of its own metadata shows it publishing the old and the new.
func stageGate(r *pb.Rotation, host string, rep *pb.StatusReport, rev uint64) (bool, string) {
	if why := fresh(rep, rev); why != "" {
		return false, why
	}
	if got := rep.GetOauth().GetNextIssuerThumbprint(); !sameTP(got, r.GetNewThumbprint()) {
		return false, fmt.Sprintf("next issuer is %s, want %s", Short(got), Short(r.GetNewThumbprint()))
	}
	var self *pb.MetadataCheck
	for _, m := range rep.GetMetadata() {
		if m.GetPartner() == "" && m.GetDeployment() == r.GetDeployment() {
			self = m
		}
	}
	switch {
	case self == nil:
		return false, "next issuer staged; no check of its own metadata reported"
	case !self.GetOk():
		return false, fmt.Sprintf("next issuer staged; its own metadata %s: %s", self.GetUrl(), self.GetError())
	}
	if missing := holds(self.GetThumbprints(), r.GetOldThumbprint(), r.GetNewThumbprint()); len(missing) > 0 {
		return false, fmt.Sprintf("next issuer staged; its metadata %s lacks %s (publishes %s)", self.GetUrl(), strings.Join(missing, ", "), shortList(self.GetThumbprints()))
	}
	return true, fmt.Sprintf("next issuer %s staged; its metadata publishes %s and %s", Short(r.GetNewThumbprint()), Short(r.GetOldThumbprint()), Short(r.GetNewThumbprint()))
}

func shortList(tps []string) string {
	if len(tps) == 0 {
		return "none"
	}
	out := make([]string, len(tps))
	for i, t := range tps {
		out[i] = Short(t)
	}
	return strings.Join(out, ", ")
}

// refreshGate: the host's cached copy of the deployment's metadata, under
// the partner name it registers it by, holds both certificates.
func refreshGate(r *pb.Rotation, host string, p *pb.Partner, rep *pb.StatusReport, rev uint64) (bool, string) {
	if why := fresh(rep, rev); why != "" {
		return false, why
	}
	var found *pb.PartnerApplication
	for _, pa := range rep.GetPartners() {
		if pa.GetName() == p.GetName() || pa.GetIdentity() == p.GetName() {
			found = pa
		}
	}
	if found == nil {
		// Exchange's Configure-EnterprisePartnerApplication.ps1 names
		// partners itself: found by identifier and metadata URL.
		for _, pa := range rep.GetPartners() {
			if strings.EqualFold(pa.GetApplicationIdentifier(), p.GetApplicationIdentifier()) && strings.EqualFold(pa.GetMetadataUrl(), p.GetMetadataUrl()) {
				found = pa
			}
		}
	}
	for _, pa := range []*pb.PartnerApplication{found} {
		if pa == nil {
			continue
		}
		if missing := holds(pa.GetCachedThumbprints(), r.GetOldThumbprint(), r.GetNewThumbprint()); len(missing) > 0 {
			return false, fmt.Sprintf("partner %s: cached metadata lacks %s (holds %s)", p.GetName(), strings.Join(missing, ", "), shortList(pa.GetCachedThumbprints()))
		}
		return true, fmt.Sprintf("partner %s: cached metadata holds %s and %s", p.GetName(), Short(r.GetOldThumbprint()), Short(r.GetNewThumbprint()))
	}
	return false, fmt.Sprintf("partner %s not reported", p.GetName())
}

// probesSigned checks the host's probes of enabled edges: each accepted,
// and signed with want when want is set. It returns how many passed, or
// why one did not.
func probesSigned(cfg *pb.HostConfig, rep *pb.StatusReport, want string, disabled func(from, to string) bool) (int, string) {
	n := 0
	for _, p := range rep.GetProbes() {
		if disabled != nil && disabled(cfg.GetDeployment(), p.GetToDeployment()) {
			continue
		}
		if !p.GetOk() {
			return n, fmt.Sprintf("probe to %s (%s) failed: %s: %s", p.GetTargetHost(), p.GetToDeployment(), p.GetReason(), p.GetDetail())
		}
		if want != "" && !sameTP(p.GetIssuerThumbprint(), want) {
			return n, fmt.Sprintf("probe to %s signed with %s, want %s", p.GetTargetHost(), Short(p.GetIssuerThumbprint()), Short(want))
		}
		n++
	}
	if n == 0 && enabledTargets(cfg, disabled) > 0 {
		return 0, "no probe reported yet"
	}
	return n, ""
}

func enabledTargets(cfg *pb.HostConfig, disabled func(from, to string) bool) int {
	n := 0
	for _, t := range cfg.GetTrustedBy() {
		if disabled == nil || !disabled(cfg.GetDeployment(), t.GetDeployment()) {
			n += len(t.GetHosts())
		}
	}
	return n
}

// activateGate: the host signs with the new certificate, and every probe
// from it, signed with it, is accepted.
func activateGate(r *pb.Rotation, cfg *pb.HostConfig, rep *pb.StatusReport, rev uint64, disabled func(from, to string) bool) (bool, string) {
	if why := fresh(rep, rev); why != "" {
		return false, why
	}
	if got := rep.GetOauth().GetIssuerThumbprint(); !sameTP(got, r.GetNewThumbprint()) {
		return false, fmt.Sprintf("issuer is %s, want %s", Short(got), Short(r.GetNewThumbprint()))
	}
	n, why := probesSigned(cfg, rep, r.GetNewThumbprint(), disabled)
	if why != "" {
		return false, "issuer " + Short(r.GetNewThumbprint()) + " active; " + why
	}
	return true, fmt.Sprintf("issuer %s active; %d probes signed with it passed", Short(r.GetNewThumbprint()), n)
}

// retireGate: the host reports no previous certificate, and its probes pass.
func retireGate(r *pb.Rotation, cfg *pb.HostConfig, rep *pb.StatusReport, rev uint64, disabled func(from, to string) bool) (bool, string) {
	if why := fresh(rep, rev); why != "" {
		return false, why
	}
	if prev := rep.GetOauth().GetPreviousIssuerThumbprint(); prev != "" {
		return false, "previous issuer " + Short(prev) + " still held"
	}
	n, why := probesSigned(cfg, rep, r.GetNewThumbprint(), disabled)
	if why != "" {
		return false, "previous issuer retired; " + why
	}
	return true, fmt.Sprintf("previous issuer retired; %d probes passed", n)
}
