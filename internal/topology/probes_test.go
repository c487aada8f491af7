package topology

import (
	"fmt"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
)

func hostNames(format string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(format, i)
	}
	return out
}

// TestProbeTargetsSmallDeploymentIsWhole: a deployment of at most
// MaxProbeTargets hosts is probed whole, in topology order, as before
// samples existed.
func TestProbeTargetsSmallDeploymentIsWhole(t *testing.T) {
	hosts := []string{"fe02.contoso.com", "fe01.contoso.com", "fe03.contoso.com"}
	if got := ProbeTargets(hosts, "ex01.contoso.com"); !slices.Equal(got, hosts) {
		t.Errorf("probe targets %v, want all of %v in order", got, hosts)
	}
	got := ProbeTargets(hosts, "ex01.contoso.com")
	got[0] = "changed"
	if hosts[0] == "changed" {
		t.Error("the sample shares the deployment's slice")
	}
}

// TestProbeTargetsLargeDeployment: of a large deployment each source host
// probes exactly MaxProbeTargets distinct hosts of it, sorted, the same on
// every call; the sources together reach nearly every target; and a host
// added to the target changes the samples of only a few sources.
func TestProbeTargetsLargeDeployment(t *testing.T) {
	const n = 5000
	targets := hostNames("fe%05d.contoso.com", n)
	sources := hostNames("ex%05d.contoso.com", n)
	ring, again := newProbeRing(targets), newProbeRing(slices.Clone(targets))
	in := map[string]bool{}
	for _, h := range targets {
		in[h] = true
	}
	covered := map[string]bool{}
	before := make([][]string, n)
	for i, s := range sources {
		got := ring.sample(s)
		before[i] = got
		if len(got) != MaxProbeTargets || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != MaxProbeTargets {
			t.Fatalf("sample of %s: %v, want %d distinct hosts sorted", s, got, MaxProbeTargets)
		}
		for _, h := range got {
			if !in[h] {
				t.Fatalf("sample of %s has %s, not a host of the deployment", s, h)
			}
			covered[h] = true
		}
		if other := again.sample(s); !slices.Equal(other, got) {
			t.Fatalf("sample of %s: %v, then %v", s, got, other)
		}
	}
	if len(covered) < n*99/100 {
		t.Errorf("the sources probe %d of %d target hosts, want at least 99%%", len(covered), n)
	}
	grown := newProbeRing(append(slices.Clone(targets), "fe99999.contoso.com"))
	changed := 0
	for i, s := range sources {
		if !slices.Equal(grown.sample(s), before[i]) {
			changed++
		}
	}
	// Expected about MaxProbeTargets (n sources, each window 8 of n+1).
	if changed == 0 || changed > 8*MaxProbeTargets {
		t.Errorf("adding one target host changed the samples of %d of %d sources, want a few (at most %d)", changed, n, 8*MaxProbeTargets)
	}
}

// bigContoso is contoso with n Front Ends in pool01 and n Exchange servers.
func bigContoso(t testing.TB, n int) *Topology {
	top := contoso(t)
	top.Deployments[0].Hosts = hostNames("fe%05d.contoso.com", n)
	top.Deployments[1].Hosts = hostNames("ex%05d.contoso.com", n)
	if err := Validate(top); err != nil {
		t.Fatal(err)
	}
	return top
}

// TestCompileIsLinear: a host's configuration does not grow with its
// deployment or with the deployments that trust it, so compiling five
// times the hosts gives five times the bytes.
func TestCompileIsLinear(t *testing.T) {
	measure := func(n int) (total, largest int) {
		cfgs, err := Compile(bigContoso(t, n))
		if err != nil {
			t.Fatal(err)
		}
		if len(cfgs) != 2*n+1 {
			t.Fatalf("%d configurations, want %d", len(cfgs), 2*n+1)
		}
		for _, c := range cfgs {
			s := proto.Size(c)
			total += s
			largest = max(largest, s)
			for _, tt := range c.TrustedBy {
				if len(tt.Hosts) > MaxProbeTargets {
					t.Fatalf("%s probes %d hosts of %s, over %d", c.Host, len(tt.Hosts), tt.Deployment, MaxProbeTargets)
				}
			}
		}
		return total, largest
	}
	t1, l1 := measure(1000)
	t5, l5 := measure(5000)
	if l5 != l1 {
		t.Errorf("largest host configuration: %d bytes at 1,000 hosts per deployment, %d at 5,000; want equal", l1, l5)
	}
	if r := float64(t5) / float64(t1); r < 4.5 || r > 5.5 {
		t.Errorf("compiled bytes: %d at 1,000, %d at 5,000 hosts per deployment: ratio %.2f, want about 5", t1, t5, r)
	}
}
