// Package rollout plans and advances rollouts: how a new topology revision
// reaches the fleet, a canary host per deployment first, then wave by
// wave, each host released only while few enough are changing, a wave
// passing once each of its hosts passed its gate and the wave baked.
//
// Planning (Plan), the gate (Gate) and advancing (Step) are pure functions
// of a stored *pb.Rollout, what the hosts report and a clock, so they are
// tested without etcd; Store keeps rollouts in etcd and Engine runs Step on
// the elected controller, every write fenced by its leadership.
package rollout

import (
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// DefaultProgressDeadline is how long a released host may take to pass
// its gate when the strategy sets no deadline.
const DefaultProgressDeadline = 10 * time.Minute

// violation is an INVALID_ARGUMENT naming field and value.
func violation(field, value, format string, args ...any) error {
	return &topology.Error{Violations: []topology.FieldViolation{{Field: field, Value: value, Description: fmt.Sprintf(format, args...)}}}
}

// FromTopology turns a topology's rollout: section into a strategy; nil
// gives the default strategy (a canary per deployment, then the rest in
// one wave, one host changing at a time).
func FromTopology(r *topology.Rollout) (*pb.RolloutStrategy, error) {
	s := &pb.RolloutStrategy{}
	if r == nil {
		return s, nil
	}
	s.Canary = r.Canary
	for i, w := range r.Waves {
		if w.Count < 0 {
			return nil, violation(fmt.Sprintf("rollout.waves[%d].count", i), strconv.Itoa(w.Count), "a count of hosts is at least 1")
		}
		if w.Percent < 0 {
			return nil, violation(fmt.Sprintf("rollout.waves[%d].percent", i), strconv.Itoa(w.Percent), "a percentage is 1 to 100")
		}
		s.Waves = append(s.Waves, &pb.RolloutWaveSpec{Hosts: w.Hosts, Count: uint32(w.Count), Percent: uint32(w.Percent)})
	}
	if r.MaxUnavailable < 0 {
		return nil, violation("rollout.maxUnavailable", strconv.Itoa(r.MaxUnavailable), "a number of hosts, at least 0")
	}
	if r.FailureThreshold < 0 {
		return nil, violation("rollout.failureThreshold", strconv.Itoa(r.FailureThreshold), "a number of hosts, at least 0")
	}
	s.MaxUnavailable, s.FailureThreshold = uint32(r.MaxUnavailable), uint32(r.FailureThreshold)
	if r.BakeTime != "" {
		d, err := time.ParseDuration(r.BakeTime)
		if err != nil || d < 0 {
			return nil, violation("rollout.bakeTime", r.BakeTime, `a duration such as "30s" or "5m"`)
		}
		s.BakeTime = durationpb.New(d)
	}
	s.ManualGates = r.ManualGates
	return s, nil
}

// Merge returns base with every field override sets replaced.
func Merge(base, override *pb.RolloutStrategy) *pb.RolloutStrategy {
	out := proto.Clone(base).(*pb.RolloutStrategy)
	if override == nil {
		return out
	}
	if override.GetImmediate() {
		out.Immediate = true
	}
	if override.Canary != nil {
		out.Canary = proto.Bool(override.GetCanary())
	}
	if len(override.GetWaves()) > 0 {
		out.Waves = override.GetWaves()
	}
	if override.GetMaxUnavailable() > 0 {
		out.MaxUnavailable = override.GetMaxUnavailable()
	}
	if override.GetFailureThreshold() > 0 {
		out.FailureThreshold = override.GetFailureThreshold()
	}
	if override.BakeTime != nil {
		out.BakeTime = override.GetBakeTime()
	}
	if override.GetManualGates() {
		out.ManualGates = true
	}
	if override.ProgressDeadline != nil {
		out.ProgressDeadline = override.GetProgressDeadline()
	}
	return out
}

// canary reports whether the strategy starts with a canary wave.
func canary(s *pb.RolloutStrategy) bool { return s.Canary == nil || s.GetCanary() }

// maxUnavailable is how many hosts of a wave may change at once.
func maxUnavailable(s *pb.RolloutStrategy) int { return max(1, int(s.GetMaxUnavailable())) }

func progressDeadline(s *pb.RolloutStrategy) time.Duration {
	if s.GetProgressDeadline() == nil {
		return DefaultProgressDeadline
	}
	return s.GetProgressDeadline().AsDuration()
}

// Validate checks a strategy against the hosts of the revision it rolls
// out; every problem is an INVALID_ARGUMENT naming field and value.
func Validate(s *pb.RolloutStrategy, hosts map[string]bool) error {
	if s.GetImmediate() {
		return nil
	}
	if !canary(s) && s.GetMaxUnavailable() == 0 {
		return violation("rollout.maxUnavailable", "0", "is 0 with no canary: set maxUnavailable to 1 or more, or keep the canary")
	}
	if d := s.GetBakeTime(); d != nil && d.AsDuration() < 0 {
		return violation("rollout.bakeTime", d.AsDuration().String(), "a duration of 0 or more")
	}
	if d := s.GetProgressDeadline(); d != nil && d.AsDuration() <= 0 {
		return violation("rollout.progressDeadline", d.AsDuration().String(), "a duration above 0")
	}
	seen := map[string]int{}
	for i, w := range s.GetWaves() {
		field := fmt.Sprintf("rollout.waves[%d]", i)
		set := 0
		if len(w.GetHosts()) > 0 {
			set++
		}
		if w.GetCount() > 0 {
			set++
		}
		if w.GetPercent() > 0 {
			set++
		}
		if set != 1 {
			return violation(field, "", "needs exactly one of hosts, count and percent")
		}
		if p := w.GetPercent(); p > 100 {
			return violation(field+".percent", strconv.Itoa(int(p)), "a percentage is 1 to 100")
		}
		for j, h := range w.GetHosts() {
			hf := fmt.Sprintf("%s.hosts[%d]", field, j)
			if !hosts[h] {
				return violation(hf, h, "is not a host of the topology")
			}
			if k, dup := seen[h]; dup {
				return violation(hf, h, "is already in rollout.waves[%d]", k)
			}
			seen[h] = i
		}
	}
	return nil
}
