package server

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/s2strust/s2strust/deploy/examples"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// recordingObserver keeps what it hears.
type recordingObserver struct {
	mu     sync.Mutex
	events []string
}

func (o *recordingObserver) add(kind, host string) {
	o.mu.Lock()
	o.events = append(o.events, kind+" "+host)
	o.mu.Unlock()
}

func (o *recordingObserver) Connected(host, _ string, _ uint64, _ string) { o.add("connected", host) }
func (o *recordingObserver) Pushed(host string, _ uint64, _ string)       { o.add("pushed", host) }
func (o *recordingObserver) Acked(host string, _ uint64, _ string)        { o.add("acked", host) }
func (o *recordingObserver) Nacked(host string, _ uint64, _ string, _ int) {
	o.add("nacked", host)
}

func (o *recordingObserver) has(event string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, e := range o.events {
		if e == event {
			return true
		}
	}
	return false
}

// TestTargetRevisionPerHost checks the desired-state cache: a host whose
// target is the older revision keeps it while the others get the new one,
// and moves on once its target does; the observer hears every step.
func TestTargetRevisionPerHost(t *testing.T) {
	obs := &recordingObserver{}
	f := startHub(t, Config{StreamObserver: obs, PrimaryGrace: time.Second})
	ctx := context.Background()
	rec, err := f.st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rev1 := rec.Revision
	fe01 := f.connect(t, "fe01.contoso.com")
	ex01 := f.connect(t, "ex01.contoso.com")
	atRev := func(rev uint64) func(*pb.Desired) bool {
		return func(d *pb.Desired) bool { return d.GetVersion() == rev }
	}
	fe01.waitPush(t, "of revision 1 to fe01", atRev(rev1))
	ex01.waitPush(t, "of revision 1 to ex01", atRev(rev1))

	// Store revision 2, then hold ex01 on revision 1 (a rollout does this
	// through the targets of its waiting hosts).
	doc2 := bytes.Replace(examples.Contoso, []byte("removePartners: [app]"), []byte("removePartners: [app, old]"), 1)
	doc2 = bytes.Replace(doc2, []byte("hosts: [ex01.contoso.com, ex02.contoso.com]}"), []byte("hosts: [ex01.contoso.com, ex02.contoso.com], removePartners: [old]}"), 1)
	rev2, changed, err := f.st.PutTopology(ctx, "contoso", doc2, "test", time.Now(), nil, nil)
	if err != nil || !changed {
		t.Fatalf("store revision 2: changed %v, %v", changed, err)
	}
	fe01.waitPush(t, "of revision 2 to fe01", atRev(rev2))
	ex01.waitPush(t, "of revision 2 to ex01", atRev(rev2))
	waitFor(t, "revision 2 current", func() bool { s := f.hub.snapshot(); return s.topo != nil && s.topo.revision == rev2 })
	if err := f.hub.SetTargets(ctx, map[string]uint64{"ex01.contoso.com": rev1}); err != nil {
		t.Fatal(err)
	}
	ex01.mu.Lock()
	n := len(ex01.pushes)
	ex01.mu.Unlock()
	ex01.waitPush(t, "of revision 1 to ex01 once held back", func(d *pb.Desired) bool {
		// waitPush holds ex01.mu while it asks.
		return d.GetVersion() == rev1 && ex01.pushes[len(ex01.pushes)-1] == d && len(ex01.pushes) > n
	})
	s := f.hub.snapshot()
	if s.desired["ex01.contoso.com"].version != rev1 || s.desired["fe01.contoso.com"].version != rev2 {
		t.Errorf("desired: ex01 at %d, fe01 at %d; want %d and %d", s.desired["ex01.contoso.com"].version, s.desired["fe01.contoso.com"].version, rev1, rev2)
	}

	// An unknown revision is refused and changes nothing.
	if err := f.hub.SetTargets(ctx, map[string]uint64{"ex01.contoso.com": rev2 + 1000}); err == nil {
		t.Error("SetTargets accepted an unknown revision")
	}
	if got := f.hub.Targets()["ex01.contoso.com"]; got != rev1 {
		t.Errorf("after a refused SetTargets ex01's target is %d, want %d", got, rev1)
	}

	// Releasing ex01 moves it to the current revision.
	if err := f.hub.SetTargets(ctx, nil); err != nil {
		t.Fatal(err)
	}
	ex01.waitPush(t, "of revision 2 to ex01 once released", func(d *pb.Desired) bool {
		// waitPush holds ex01.mu while it asks.
		return d.GetVersion() == rev2 && ex01.pushes[len(ex01.pushes)-1] == d && len(ex01.pushes) > n+1
	})
	for _, e := range []string{"connected ex01.contoso.com", "pushed ex01.contoso.com", "acked ex01.contoso.com"} {
		if !obs.has(e) {
			t.Errorf("the observer did not hear %q", e)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
