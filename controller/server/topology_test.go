package server

import (
	"fmt"
	"testing"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func TestBoundedPlanKeepsTheAnswerSmall(t *testing.T) {
	var plan []*pb.HostPlan
	for i := range 2*MaxPlanHosts + 10 {
		hp := &pb.HostPlan{Host: fmt.Sprintf("h%05d.contoso.com", i)}
		if i%2 == 0 { // every other host changes
			hp.Items = []*pb.PlanItem{{Item: "oauth-configuration", Action: "update"}}
		}
		plan = append(plan, hp)
	}
	resp := boundedPlan(plan)
	if resp.GetHostsTotal() != uint32(len(plan)) || resp.GetHostsChanged() != MaxPlanHosts+5 {
		t.Errorf("hosts total %d changed %d, want %d and %d", resp.GetHostsTotal(), resp.GetHostsChanged(), len(plan), MaxPlanHosts+5)
	}
	if len(resp.GetPlan()) != MaxPlanHosts || !resp.GetPlanTruncated() {
		t.Errorf("plan lists %d hosts (truncated %v), want %d and truncated", len(resp.GetPlan()), resp.GetPlanTruncated(), MaxPlanHosts)
	}
	for _, hp := range resp.GetPlan() {
		if len(hp.GetItems()) == 0 {
			t.Fatalf("plan lists unchanged host %s", hp.GetHost())
		}
	}
	small := boundedPlan(plan[:4])
	if small.GetPlanTruncated() || len(small.GetPlan()) != 2 || small.GetHostsChanged() != 2 || small.GetHostsTotal() != 4 {
		t.Errorf("small plan: %v", small)
	}
}
