package server

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestApplyRefusesBadRolloutStrategies: a strategy naming a host outside
// the topology, or with no canary and maxUnavailable 0, is INVALID_ARGUMENT
// naming field and value, for a dry run too, and nothing is stored.
func TestApplyRefusesBadRolloutStrategies(t *testing.T) {
	f := startHub(t, Config{})
	svc := NewTopologyService(f.hub, nil)
	ctx := context.Background()
	before, err := f.st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	doc := []byte(strings.Replace(string(examples.Contoso), "removePartners: [app]", "removePartners: [app, old]", 1))
	for _, tc := range []struct {
		s    *pb.RolloutStrategy
		want string
	}{
		{&pb.RolloutStrategy{Waves: []*pb.RolloutWaveSpec{{Hosts: []string{"fe09.contoso.com"}}}}, `rollout.waves[0].hosts[0]: "fe09.contoso.com": is not a host of the topology`},
		{&pb.RolloutStrategy{Canary: new(bool)}, `rollout.maxUnavailable: "0": is 0 with no canary`},
	} {
		for _, dry := range []bool{true, false} {
			_, err := svc.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: doc, DryRun: dry, Rollout: tc.s})
			var te *topology.Error
			if !errors.As(err, &te) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("dry run %v, strategy %v: %v, want INVALID_ARGUMENT %q", dry, tc.s, err, tc.want)
			}
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
		t.Errorf("a refused apply stored rollouts: %v, %v", list, err)
	}
}
