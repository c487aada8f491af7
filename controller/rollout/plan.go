package rollout

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Fleet is what planning needs to know of the hosts of the revision
// rolled out.
type Fleet struct {
	// Order lists the hosts in topology order.
	Order []string
	// Deployment maps each host to its deployment.
	Deployment map[string]string
	// Primaries maps each deployment to its primary, when it has one: the
	// canary of a deployment is its primary, so deployment-scope changes
	// (which only the primary executes) are tried first where they run.
	Primaries map[string]string
	// From maps each host to the revision it runs now (its target); 0 for
	// a host new in this revision.
	From map[string]uint64
	// Sequences maps revisions to the sequence numbers operators know
	// them by (see store.TopologyRecord.Sequence); missing ones are shown
	// as unknown.
	Sequences map[uint64]uint64
}

// Plan lays out the waves of a rollout of revision to: wave 0 the canary
// (one host per deployment) unless the strategy has none, then the
// strategy's waves in order (explicit hosts, a count of the hosts left, or
// a percentage of all hosts, rounded up), then every host left. Empty
// waves are dropped. The strategy must have passed Validate.
func Plan(name string, s *pb.RolloutStrategy, f Fleet, from, to uint64, now time.Time) *pb.Rollout {
	r := &pb.Rollout{
		Name: name, FromRevision: from, ToRevision: to, FromSequence: f.Sequences[from], ToSequence: f.Sequences[to], State: pb.RolloutState_ROLLOUT_STATE_RUNNING,
		Strategy: proto.Clone(s).(*pb.RolloutStrategy), CreateTime: timestamppb.New(now), UpdateTime: timestamppb.New(now),
	}
	taken := map[string]bool{}
	host := func(h string) *pb.RolloutHost {
		taken[h] = true
		seq := f.Sequences[f.From[h]]
		return &pb.RolloutHost{Host: h, Deployment: f.Deployment[h], FromRevision: f.From[h], TargetRevision: f.From[h], FromSequence: seq, TargetSequence: seq,
			State: pb.RolloutHostState_ROLLOUT_HOST_STATE_WAITING}
	}
	add := func(title string, hosts []string) {
		w := &pb.RolloutWave{Title: title}
		for _, h := range hosts {
			if !taken[h] {
				w.Hosts = append(w.Hosts, host(h))
			}
		}
		if len(w.Hosts) > 0 {
			r.Waves = append(r.Waves, w)
		}
	}
	if s.GetImmediate() {
		add("all hosts", f.Order)
		return r
	}
	if canary(s) {
		var hosts []string
		seen := map[string]bool{}
		for _, h := range f.Order {
			d := f.Deployment[h]
			if seen[d] {
				continue
			}
			seen[d] = true
			c := h
			if p := f.Primaries[d]; p != "" && f.Deployment[p] == d {
				c = p
			}
			hosts = append(hosts, c)
		}
		add("canary", hosts)
	}
	left := func() []string {
		var out []string
		for _, h := range f.Order {
			if !taken[h] {
				out = append(out, h)
			}
		}
		return out
	}
	for _, w := range s.GetWaves() {
		title := fmt.Sprintf("wave %d", len(r.Waves)+boolInt(!canary(s)))
		switch {
		case len(w.GetHosts()) > 0:
			add(title, w.GetHosts())
		case w.GetCount() > 0:
			l := left()
			add(title, l[:min(len(l), int(w.GetCount()))])
		case w.GetPercent() > 0:
			n := (len(f.Order)*int(w.GetPercent()) + 99) / 100
			l := left()
			add(title, l[:min(len(l), n)])
		}
	}
	add(fmt.Sprintf("wave %d", len(r.Waves)+boolInt(!canary(s))), left())
	return r
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
