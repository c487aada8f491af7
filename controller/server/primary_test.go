package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func TestChoosePrimary(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	hosts := []string{"fe01", "fe02", "fe03"}
	liveSet := func(xs ...string) func(string) bool {
		m := map[string]bool{}
		for _, x := range xs {
			m[x] = true
		}
		return func(x string) bool { return m[x] }
	}
	for _, tc := range []struct {
		name string
		c    primaryChoice
		want string
	}{
		{"none yet: first live in order", primaryChoice{hosts: hosts, live: liveSet("fe02", "fe03")}, "fe02"},
		{"sticky while live", primaryChoice{hosts: hosts, current: "fe03", live: liveSet("fe01", "fe03")}, "fe03"},
		{"within its grace", primaryChoice{hosts: hosts, current: "fe01", live: liveSet("fe02"), wasGone: true, goneAt: now.Add(-time.Second), now: now, grace: 30 * time.Second}, "fe01"},
		{"grace over", primaryChoice{hosts: hosts, current: "fe01", live: liveSet("fe02"), wasGone: true, goneAt: now.Add(-time.Minute), now: now, grace: 30 * time.Second}, "fe02"},
		{"gone without a record of when: no grace", primaryChoice{hosts: hosts, current: "fe01", live: liveSet("fe03"), now: now, grace: 30 * time.Second}, "fe03"},
		{"nobody live: keep", primaryChoice{hosts: hosts, current: "fe01", live: liveSet(), now: now}, "fe01"},
		{"left the deployment, nobody live", primaryChoice{hosts: hosts, current: "old", live: liveSet()}, ""},
		{"left the deployment", primaryChoice{hosts: hosts, current: "old", live: liveSet("old", "fe02")}, "fe02"},
		// A host in monitor mode applies nothing: it is primary only
		// while no host that applies is live.
		{"monitor host first in order: passed over", primaryChoice{hosts: hosts, live: liveSet("fe01", "fe02"), applies: liveSet("fe02", "fe03")}, "fe02"},
		{"monitor primary: moved to a host that applies", primaryChoice{hosts: hosts, current: "fe01", live: liveSet("fe01", "fe03"), applies: liveSet("fe02", "fe03")}, "fe03"},
		{"monitor hosts only: the first live", primaryChoice{hosts: hosts, live: liveSet("fe02", "fe03"), applies: liveSet()}, "fe02"},
		{"monitor hosts only: sticky", primaryChoice{hosts: hosts, current: "fe03", live: liveSet("fe02", "fe03"), applies: liveSet()}, "fe03"},
		{"monitor host live, primary within its grace: kept", primaryChoice{hosts: hosts, current: "fe02", live: liveSet("fe01"), applies: liveSet("fe02"),
			wasGone: true, goneAt: now.Add(-time.Second), now: now, grace: 30 * time.Second}, "fe02"},
	} {
		if got := choosePrimary(tc.c); got != tc.want {
			t.Errorf("%s: choosePrimary = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// A host whose agent runs in monitor mode is pool01's primary only until
// a host that applies connects: the deployment-wide steps are the
// primary's alone, and a monitor-mode agent would never run them.
func TestMonitorHostIsNotKeptPrimary(t *testing.T) {
	f := startHub(t, Config{})
	fe01 := f.connectHello(t, &pb.Hello{Host: "fe01.contoso.com", Monitor: true})
	fe01.waitPush(t, "to fe01, in monitor mode but alone, as the primary", primaryIs(true))
	fe02 := f.connect(t, "fe02.contoso.com")
	fe02.waitPush(t, "to fe02, which applies, as the primary", primaryIs(true))
	fe01.waitPush(t, "to fe01 as a secondary", primaryIs(false))
	if p := f.hub.snapshot().primaries["pool01"]; p != "fe02.contoso.com" {
		t.Fatalf("pool01's primary is %q, want fe02.contoso.com", p)
	}
	// The choice is stored, for every replica; so is fe01's mode.
	eventually(t, "the stored choice and fe01's mode", func() (bool, string) {
		prim, err := f.st.Primaries(callCtx(t))
		st := &pb.Host{}
		_, serr := f.hub.reads.getProto(callCtx(t), store.HostStateKey("fe01.contoso.com"), st)
		return err == nil && serr == nil && prim["pool01"] == "fe02.contoso.com" && st.GetMonitor(),
			fmt.Sprintf("primaries %v (%v), fe01 monitor %v (%v)", prim, err, st.GetMonitor(), serr)
	})

	// fe01 restarted to apply (a new stream without monitor) while fe02
	// holds the role: fe02 keeps it, nothing moves.
	fe01.stop()
	fe01 = f.connect(t, "fe01.contoso.com")
	fe01.waitPush(t, "to fe01, now applying, as a secondary", primaryIs(false))
	if p := f.hub.snapshot().primaries["pool01"]; p != "fe02.contoso.com" {
		t.Fatalf("pool01's primary moved to %q when fe01 reconnected, want fe02 kept", p)
	}
}
