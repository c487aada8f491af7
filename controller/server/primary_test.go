package server

import (
	"testing"
	"time"
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
	} {
		if got := choosePrimary(tc.c); got != tc.want {
			t.Errorf("%s: choosePrimary = %q, want %q", tc.name, got, tc.want)
		}
	}
}
