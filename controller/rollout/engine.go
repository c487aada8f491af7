package rollout

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/convergence"
	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Observation is what the controller knows of one host: its fleet view
// (target, applied revision, last result) and its latest report.
type Observation struct {
	Host   *pb.Host
	Report *pb.StatusReport
	// StateRev and ReportRev are the etcd revisions at which the host's
	// state (its last ACK or NACK among the rest) and its report were
	// stored; 0 when unknown. Another host's report stored above this
	// host's StateRev was made after this host's last answer, so its
	// probes of this host saw the configuration answered.
	StateRev, ReportRev int64
}

// inboundProbe is a probe another host sent to a host.
type inboundProbe struct {
	from  string
	probe *pb.TrustProbe
	// fresh: stored after the target's last answer.
	fresh bool
}

// inbound indexes the probes of every report by their target host, in
// the order of the probing hosts' names.
func (obs Observations) inbound() map[string][]inboundProbe {
	hosts := make([]string, 0, len(obs))
	for h := range obs {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	out := map[string][]inboundProbe{}
	for _, from := range hosts {
		for _, p := range obs[from].Report.GetProbes() {
			to := p.GetTargetHost()
			if to == from {
				continue
			}
			if t, ok := obs[to]; ok {
				out[to] = append(out[to], inboundProbe{from: from, probe: p, fresh: obs[from].ReportRev > t.StateRev})
			}
		}
	}
	return out
}

// Observations are every host's observation, by host.
type Observations map[string]Observation

// Verdict is a gate's answer for one host.
type Verdict int

// The verdicts.
const (
	// Wait: not decided yet (not applied, no report of the revision yet,
	// an item pending on another host).
	Wait Verdict = iota
	// Pass: ACKed, its verification and the probes of its edges passed.
	Pass
	// Fail: NACKed, or a verification item or a probe failed.
	Fail
)

// Gate decides whether host passed its gate for revision rev: it has
// converged on rev (convergence.Converged), its report of that revision
// shows every item verified and every trust probe of its edges accepted,
// and no other host's probe of it fails: a host whose inbound edges are
// broken does not pass, however well it probes its partners. An inbound
// probe that failed counts as a failure only when its report was stored
// after the host's last answer (it saw the configuration answered); an
// older one is waited on, since the prober reports again when its result
// changes. disabled(from, to) says the topology disables the edge from
// deployment from to deployment to, where a refused probe is what should
// happen. text says what was seen, for a pass as for the rest.
func Gate(host string, rev uint64, obs Observations, disabled func(from, to string) bool) (Verdict, string) {
	return gate(host, rev, obs, obs.inbound()[host], disabled)
}

func gate(host string, rev uint64, obs Observations, inbound []inboundProbe, disabled func(from, to string) bool) (Verdict, string) {
	o, ok := obs[host]
	if !ok || o.Host == nil {
		return Wait, "no state known for the host yet"
	}
	h := o.Host
	if lr := h.GetLastResult(); lr.GetKind() == pb.ResultKind_RESULT_KIND_NACK && lr.GetVersion() == rev && lr.GetHash() == h.GetDesiredHash() {
		var errs []string
		for _, e := range lr.GetErrors() {
			errs = append(errs, e.GetItem()+": "+e.GetMessage())
		}
		return Fail, fmt.Sprintf("NACK of %s: %s", revText(rev, h), strings.Join(errs, "; "))
	}
	if why := convergence.Why(h, rev); why != "" {
		return Wait, strings.TrimPrefix(why, host+": ")
	}
	r := o.Report
	if r == nil || r.GetAppliedVersion() != rev || r.GetAppliedHash() != h.GetDesiredHash() {
		return Wait, fmt.Sprintf("acked; no report of %s yet", revText(rev, h))
	}
	var pending []string
	for _, it := range r.GetItems() {
		switch it.GetState() {
		case pb.ItemState_ITEM_STATE_FAILED:
			return Fail, fmt.Sprintf("verification failed: %s: %s", it.GetItem(), it.GetMessage())
		case pb.ItemState_ITEM_STATE_PENDING, pb.ItemState_ITEM_STATE_DRIFTED:
			pending = append(pending, it.GetItem())
		}
	}
	if len(pending) > 0 {
		return Wait, "acked; waiting on " + strings.Join(pending, ", ")
	}
	off := func(from, to string) bool { return disabled != nil && disabled(from, to) }
	probes := 0
	for _, p := range r.GetProbes() {
		if msg := probeProblem(off(h.GetDeployment(), p.GetToDeployment()), p); msg != "" {
			return Fail, fmt.Sprintf("probe to %s (%s) %s", p.GetTargetHost(), p.GetToDeployment(), msg)
		}
		probes++
	}
	var stale []string
	for _, in := range inbound {
		from := obs[in.from].Host.GetDeployment()
		msg := probeProblem(off(from, in.probe.GetToDeployment()), in.probe)
		switch {
		case msg == "":
			probes++
		case in.fresh:
			return Fail, fmt.Sprintf("probe from %s (%s) to this host %s", in.from, from, msg)
		default:
			stale = append(stale, fmt.Sprintf("%s (%s; its last probe, from before this host's answer, %s)", in.from, from, msg))
		}
	}
	if len(stale) > 0 {
		return Wait, "acked; waiting on a new probe from " + strings.Join(stale, ", ")
	}
	return Pass, fmt.Sprintf("acked; %d items verified; %d probes passed", len(r.GetItems()), probes)
}

// revText names revision rev as operators know it: by its sequence number
// when the host's view carries it, with the version beside it.
func revText(rev uint64, h *pb.Host) string {
	if h.GetDesiredVersion() == rev && h.GetDesiredSequence() > 0 {
		return fmt.Sprintf("revision %d (version %d)", h.GetDesiredSequence(), rev)
	}
	return fmt.Sprintf("version %d", rev)
}

// probeProblem says what is wrong with probe p ("" when nothing): refused
// over an enabled edge, or accepted over a disabled one.
func probeProblem(disabled bool, p *pb.TrustProbe) string {
	switch {
	case disabled && p.GetOk():
		return "accepted, but the topology disables this edge"
	case !disabled && !p.GetOk():
		return fmt.Sprintf("failed: %s: %s", p.GetReason(), p.GetDetail())
	}
	return ""
}

// Finished reports whether a rollout is over (succeeded or aborted).
func Finished(r *pb.Rollout) bool {
	return r.GetState() == pb.RolloutState_ROLLOUT_STATE_SUCCEEDED || r.GetState() == pb.RolloutState_ROLLOUT_STATE_ABORTED
}

// Step advances a running rollout as far as it can go now: it evaluates
// the gates of the current wave's released hosts, releases more while
// fewer than maxUnavailable are changing, pauses when more hosts failed
// than the failure threshold allows or at a manual gate, and moves to the
// next wave once every host of this one passed and it baked. It reports
// whether r changed (and must be stored).
func Step(r *pb.Rollout, obs Observations, disabled func(from, to string) bool, now time.Time) bool {
	before := proto.Clone(r)
	step(r, obs, disabled, now)
	if proto.Equal(before, r) {
		return false
	}
	r.UpdateTime = timestamppb.New(now)
	return true
}

func step(r *pb.Rollout, obs Observations, disabled func(from, to string) bool, now time.Time) {
	s := r.GetStrategy()
	ts := timestamppb.New(now)
	inbound := obs.inbound()
	for r.GetState() == pb.RolloutState_ROLLOUT_STATE_RUNNING {
		if int(r.GetCurrentWave()) >= len(r.GetWaves()) {
			r.State, r.Reason = pb.RolloutState_ROLLOUT_STATE_SUCCEEDED, ""
			return
		}
		w := r.GetWaves()[r.GetCurrentWave()]
		if w.GetStartTime() == nil {
			if r.GetCurrentWave() > 0 && s.GetManualGates() && !r.GetGateOpen() {
				r.State = pb.RolloutState_ROLLOUT_STATE_PAUSED
				r.Reason = fmt.Sprintf("paused: manual gate before %s: resume to continue", w.GetTitle())
				return
			}
			w.StartTime, r.GateOpen = ts, false
		}
		var failed []string
		busy := 0
		for _, h := range w.GetHosts() {
			switch h.GetState() {
			case pb.RolloutHostState_ROLLOUT_HOST_STATE_UPDATING, pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED:
				v, text := gate(h.GetHost(), r.GetToRevision(), obs, inbound[h.GetHost()], disabled)
				switch {
				case v == Pass:
					setHost(h, pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED, text, "", ts)
				case v == Fail:
					setHost(h, pb.RolloutHostState_ROLLOUT_HOST_STATE_FAILED, text, text, ts)
				case h.GetState() == pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED:
					// A passed host whose newest report is not in yet stays passed.
				case now.Sub(h.GetReleaseTime().AsTime()) > progressDeadline(s):
					cause := fmt.Sprintf("no verdict within %s of its release: %s", progressDeadline(s), text)
					setHost(h, pb.RolloutHostState_ROLLOUT_HOST_STATE_FAILED, text, cause, ts)
				default:
					setHost(h, pb.RolloutHostState_ROLLOUT_HOST_STATE_UPDATING, text, "", ts)
				}
			}
			switch h.GetState() {
			case pb.RolloutHostState_ROLLOUT_HOST_STATE_FAILED:
				failed = append(failed, h.GetHost()+": "+h.GetCause())
				busy++
			case pb.RolloutHostState_ROLLOUT_HOST_STATE_UPDATING:
				busy++
			}
		}
		if len(failed) > int(s.GetFailureThreshold()) {
			r.State = pb.RolloutState_ROLLOUT_STATE_PAUSED
			r.Reason = fmt.Sprintf("paused: failure threshold reached: %d of %d hosts of %s failed (threshold %d): %s",
				len(failed), len(w.GetHosts()), w.GetTitle(), s.GetFailureThreshold(), strings.Join(failed, "; "))
			return
		}
		waiting := false
		for _, h := range w.GetHosts() {
			if h.GetState() != pb.RolloutHostState_ROLLOUT_HOST_STATE_WAITING {
				continue
			}
			if busy >= maxUnavailable(s) && !s.GetImmediate() {
				waiting = true
				continue
			}
			h.State, h.TargetRevision, h.TargetSequence, h.ReleaseTime, h.UpdateTime = pb.RolloutHostState_ROLLOUT_HOST_STATE_UPDATING, r.GetToRevision(), r.GetToSequence(), ts, ts
			h.Gate, h.Cause = "released", ""
			busy++
		}
		if waiting || busy > len(failed) {
			w.PassedTime = nil
			return // hosts still changing or waiting their turn
		}
		if w.GetPassedTime() == nil {
			w.PassedTime = ts
		}
		if now.Sub(w.GetPassedTime().AsTime()) < s.GetBakeTime().AsDuration() {
			return
		}
		w.EndTime = ts
		r.CurrentWave++
	}
}

func setHost(h *pb.RolloutHost, st pb.RolloutHostState, gate, cause string, ts *timestamppb.Timestamp) {
	if h.GetState() == st && h.GetGate() == gate && h.GetCause() == cause {
		return
	}
	h.State, h.Gate, h.Cause, h.UpdateTime = st, gate, cause, ts
}

// Targets maps every host of r to the revision it should run now: the
// new revision once released, the one it had before.
func Targets(r *pb.Rollout) map[string]uint64 {
	out := map[string]uint64{}
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			out[h.GetHost()] = h.GetTargetRevision()
		}
	}
	return out
}

// precondition is a FAILED_PRECONDITION naming the rollout and its state.
func precondition(r *pb.Rollout, verb string) error {
	return Precondition("cannot %s %s: it is %s", verb, r.GetName(), stateName(r.GetState()))
}

// preconditionError is a refusal because of the state things are in: its
// text is the message alone, and it is a store.ErrConflict, which the API
// answers with FAILED_PRECONDITION.
type preconditionError struct{ msg string }

func (e *preconditionError) Error() string { return e.msg }
func (e *preconditionError) Unwrap() error { return store.ErrConflict }

// Precondition returns a FAILED_PRECONDITION error with the formatted
// message (which should name what is refused and the state in the way).
func Precondition(format string, args ...any) error {
	return &preconditionError{msg: fmt.Sprintf(format, args...)}
}

func stateName(s pb.RolloutState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "ROLLOUT_STATE_"))
}

// Pause stops r from releasing more hosts. A paused rollout stays as it
// is; a finished one is a precondition failure.
func Pause(r *pb.Rollout, who string, now time.Time) error {
	switch r.GetState() {
	case pb.RolloutState_ROLLOUT_STATE_PAUSED:
		return nil
	case pb.RolloutState_ROLLOUT_STATE_RUNNING:
		r.State, r.Reason, r.UpdateTime = pb.RolloutState_ROLLOUT_STATE_PAUSED, "paused by "+who, timestamppb.New(now)
		return nil
	}
	return precondition(r, "pause")
}

// Resume continues a paused rollout: past its manual gate, or, after a
// failure threshold, with the current wave's failed hosts evaluated again.
func Resume(r *pb.Rollout, now time.Time) error {
	switch r.GetState() {
	case pb.RolloutState_ROLLOUT_STATE_RUNNING:
		return nil
	case pb.RolloutState_ROLLOUT_STATE_PAUSED:
	default:
		return precondition(r, "resume")
	}
	ts := timestamppb.New(now)
	if i := int(r.GetCurrentWave()); i < len(r.GetWaves()) {
		w := r.GetWaves()[i]
		if w.GetStartTime() == nil {
			r.GateOpen = true
		}
		for _, h := range w.GetHosts() {
			if h.GetState() == pb.RolloutHostState_ROLLOUT_HOST_STATE_FAILED {
				h.State, h.ReleaseTime, h.UpdateTime, h.Cause = pb.RolloutHostState_ROLLOUT_HOST_STATE_UPDATING, ts, ts, ""
			}
		}
	}
	r.State, r.Reason, r.UpdateTime = pb.RolloutState_ROLLOUT_STATE_RUNNING, "", ts
	return nil
}

// Abort ends r for good; its hosts keep the revision they have now.
func Abort(r *pb.Rollout, reason string, now time.Time) error {
	switch r.GetState() {
	case pb.RolloutState_ROLLOUT_STATE_ABORTED:
		return nil
	case pb.RolloutState_ROLLOUT_STATE_SUCCEEDED:
		return precondition(r, "abort")
	}
	r.State, r.Reason, r.UpdateTime = pb.RolloutState_ROLLOUT_STATE_ABORTED, reason, timestamppb.New(now)
	return nil
}
