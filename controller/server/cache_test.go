package server

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/s2strust/s2strust/controller/store"
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
	// Count the pushes before holding ex01 back: the held-back push can
	// arrive before SetTargets returns.
	ex01.mu.Lock()
	n := len(ex01.pushes)
	ex01.mu.Unlock()
	if err := f.hub.SetTargets(ctx, map[string]uint64{"ex01.contoso.com": rev1}); err != nil {
		t.Fatal(err)
	}
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

// The desired state of a host that is not its deployment's primary is
// built once per revision and shared across resets of the cache (every
// primary change resets it): a host without key material shares the
// compiled configuration itself, one with a pinned secret one copy
// carrying the pinned thumbprint. The primary's carries its role, and an
// unpinned secret's thumbprint is read anew.
func TestDesiredStateSharedAcrossPrimaryChanges(t *testing.T) {
	h, c := lockedContosoHub(t, map[string]string{"pool01": "fe01.contoso.com", "exchange": "ex01.contoso.com"})
	first := map[string]*desired{}
	for _, host := range c.order {
		first[host] = h.desiredLocked(host)
	}
	if d := first["ex02.contoso.com"]; d.config != c.hosts["ex02.contoso.com"] {
		t.Error("ex02 (no key material, not primary): its desired configuration is a copy; want the compiled one shared")
	}
	if d := first["fe02.contoso.com"]; d.config == c.hosts["fe02.contoso.com"] || d.config.GetTokenIssuer().GetSecretThumbprint() != "AB12" || d.config.GetPrimary() {
		t.Errorf("fe02: %v; want a copy with the pinned thumbprint, not primary", d.config)
	}
	if d := first["fe01.contoso.com"]; !d.config.GetPrimary() || d.config.GetTokenIssuer().GetSecretThumbprint() != "AB12" {
		t.Errorf("fe01 (primary): %v; want primary with the pinned thumbprint", d.config)
	}
	if c.hosts["fe01.contoso.com"].GetPrimary() || c.hosts["fe02.contoso.com"].GetTokenIssuer().GetSecretThumbprint() != "" {
		t.Error("the compiled configurations were modified")
	}

	// The primaries move: the cache resets, the shared states stay.
	h.primaries = map[string]string{"pool01": "fe02.contoso.com", "exchange": "ex02.contoso.com"}
	h.desired = map[string]*desired{}
	for _, host := range []string{"fe01.contoso.com", "ex01.contoso.com"} {
		if d := h.desiredLocked(host); d == first[host] || d.config.GetPrimary() {
			t.Errorf("%s after losing the primary role: %v (same as before: %v); want a non-primary state", host, d.config, d == first[host])
		}
	}
	if d := h.desiredLocked("sp01.contoso.com"); d != first["sp01.contoso.com"] {
		t.Error("sp01 (no role change) was built again; want its shared state")
	}
	if d := h.desiredLocked("fe02.contoso.com"); !d.config.GetPrimary() || d.hash == first["fe02.contoso.com"].hash {
		t.Errorf("fe02 as the new primary: %v; want primary, with a new hash", d.config)
	}
	h.desired = map[string]*desired{}
	if d := h.desiredLocked("fe01.contoso.com"); d != h.desiredLocked("fe01.contoso.com") {
		t.Error("two reads of fe01 between resets differ")
	}
}

// A desired state built outside the hub's lock is cached only if nothing
// it was built from changed meanwhile: a primary that moved while it was
// built gives the state built anew, with the new role.
func TestDesiredBuiltOutsideTheLockIsNotKeptStale(t *testing.T) {
	f := startHub(t, Config{Secrets: fakeSecrets{}})
	h := f.hub
	select {
	case <-h.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("hub not ready")
	}
	const host = "fe02.contoso.com"
	h.adoptPrimary("pool01", "fe01.contoso.com")
	h.mu.Lock()
	in, ok := h.desiredInputLocked(host)
	gen := h.desiredGen
	h.mu.Unlock()
	if !ok || in.primary {
		t.Fatalf("inputs of %s: ok %v, primary %v; want ok, not primary", host, ok, in.primary)
	}
	stale := in.build()
	h.adoptPrimary("pool01", host) // the role moves while stale is built
	got := h.keepIfCurrent(host, gen, in, stale)
	if got == stale || !got.config.GetPrimary() {
		t.Fatalf("kept the state built before %s became primary (primary %v)", host, got.config.GetPrimary())
	}
	if again := h.desiredFor(host); again != got {
		t.Fatal("the state built anew was not cached")
	}

	// Nothing changed: the state built outside the lock is the one kept.
	const other = "ex01.contoso.com"
	h.mu.Lock()
	in, _ = h.desiredInputLocked(other)
	gen = h.desiredGen
	h.mu.Unlock()
	built := in.build()
	if got := h.keepIfCurrent(other, gen, in, built); got != built || h.desiredFor(other) != built {
		t.Fatal("a state built with unchanged inputs was not kept")
	}
}

// A host's own desired configuration (the primary, a host with key
// material) is the compiled one with its role and thumbprint set, and
// shares the rest with it (the partners): it costs each
// connected host a few fields, not a copy of its trust.
func TestDesiredStateCopiesOnlyWhatDiffers(t *testing.T) {
	h, c := lockedContosoHub(t, map[string]string{"pool01": "fe01.contoso.com"})
	for _, host := range []string{"fe01.contoso.com", "fe02.contoso.com"} {
		base := c.hosts[host]
		got := h.desiredLocked(host).config
		want := proto.Clone(base).(*pb.HostConfig)
		want.Primary = host == "fe01.contoso.com"
		want.TokenIssuer.SecretThumbprint = "AB12"
		if !proto.Equal(got, want) {
			t.Errorf("%s: desired %v\nwant the compiled configuration with role and thumbprint: %v", host, got, want)
		}
		if len(base.GetPartners()) == 0 {
			t.Fatalf("%s: the example has no partners to share", host)
		}
		if got.GetPartners()[0] != base.GetPartners()[0] {
			t.Errorf("%s: the partners were copied; want them shared with the compiled configuration", host)
		}
		if base.GetPrimary() || base.GetTokenIssuer().GetSecretThumbprint() != "" {
			t.Errorf("%s: the compiled configuration was modified: %v", host, base)
		}
	}
}

// An apply takes the current record from the hub when etcd's current
// revision is the hub's, and from etcd when the hub is behind (another
// replica committed since): never a stale revision.
func TestCurrentRecordIsNeverStale(t *testing.T) {
	f := startHub(t, Config{Secrets: fakeSecrets{}})
	select {
	case <-f.hub.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("hub not ready")
	}
	ctx := context.Background()
	old := f.hub.currentCompiled()
	want, err := f.st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	behind := NewHub(Config{Store: f.st, Logger: slog.New(slog.DiscardHandler)})
	behind.topo = old
	got, err := behind.currentRecord(ctx)
	if err != nil || got.Revision != want.Revision || got.Sequence != want.Sequence || got.Hash != want.Hash || got.Name != want.Name {
		t.Fatalf("current record from the hub: %+v, %v; want revision %d sequence %d hash %s", got, err, want.Revision, want.Sequence, want.Hash)
	}
	// Another replica commits: this hub has not seen it.
	doc := bytes.Replace(examples.Contoso, []byte("fe02.contoso.com"), []byte("fe03.contoso.com"), 1)
	if _, _, err := f.st.PutTopology(ctx, "contoso", doc, "test", time.Now(), nil, nil); err != nil {
		t.Fatal(err)
	}
	want, err = f.st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err = behind.currentRecord(ctx)
	if err != nil || got.Revision != want.Revision || got.Revision == old.revision || got.Hash != want.Hash {
		t.Fatalf("current record with the hub behind: %+v, %v; want revision %d from etcd (the hub has %d)", got, err, want.Revision, old.revision)
	}
}

// lockedContosoHub is a hub that does not run, holding the example as
// revision 7 with oauth-2026 pinned at thumbprint AB12 and the given
// primaries; h.mu is held until the test ends.
func lockedContosoHub(t *testing.T, primaries map[string]string) (*Hub, *compiled) {
	t.Helper()
	h := NewHub(Config{})
	c, err := compileDocument(&store.TopologyRecord{Revision: 7, Name: "contoso", Document: examples.Contoso,
		Secrets: map[string]store.SecretPin{"oauth-2026": {Version: 1, Thumbprint: "AB12"}}})
	if err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	t.Cleanup(h.mu.Unlock)
	h.topo = c
	h.primaries = primaries
	return h, c
}

// copyHostConfig copies every field of a host configuration, sharing the
// values of the message and list fields: a configuration with each field
// set (found through protoreflect, so a field added to HostConfig is set
// too) comes out equal, its messages and lists the same ones.
func TestCopyHostConfigCopiesEveryField(t *testing.T) {
	src := &pb.HostConfig{}
	m := src.ProtoReflect()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := m.Mutable(fd).List()
			l.Append(protoreflect.ValueOfMessage(l.NewElement().Message()))
		case fd.IsList():
			m.Mutable(fd).List().Append(protoreflect.ValueOfString("x"))
		case fd.Kind() == protoreflect.MessageKind:
			m.Mutable(fd) // an empty message, set
		case fd.Kind() == protoreflect.StringKind:
			m.Set(fd, protoreflect.ValueOfString("x"))
		case fd.Kind() == protoreflect.BoolKind:
			m.Set(fd, protoreflect.ValueOfBool(true))
		case fd.Kind() == protoreflect.EnumKind:
			m.Set(fd, protoreflect.ValueOfEnum(1))
		default:
			t.Fatalf("no value to set for %s (%s)", fd.FullName(), fd.Kind())
		}
	}
	got := copyHostConfig(src)
	if got == src {
		t.Fatal("copyHostConfig returned its argument")
	}
	if !proto.Equal(got, src) {
		t.Fatalf("copyHostConfig(%v)\n= %v; a field is not copied", src, got)
	}
	if got.TokenIssuer != src.TokenIssuer || &got.Partners[0] != &src.Partners[0] || &got.TrustedBy[0] != &src.TrustedBy[0] {
		t.Error("copyHostConfig copied a message or list deeply; want it shared")
	}
}

// withThumbprint copies a token issuer of each source, setting the
// thumbprint; the original is unchanged.
func TestWithThumbprint(t *testing.T) {
	if n := (&pb.TokenIssuer{}).ProtoReflect().Descriptor().Fields().Len(); n != 4 {
		t.Fatalf("TokenIssuer has %d fields; withThumbprint copies 4: update it", n)
	}
	for _, ti := range []*pb.TokenIssuer{
		{Source: &pb.TokenIssuer_Secret{Secret: "issuer"}, SecretThumbprint: "OLD"},
		{Source: &pb.TokenIssuer_Thumbprint{Thumbprint: "AB"}},
		{Source: &pb.TokenIssuer_Existing{Existing: "Default"}},
		{},
	} {
		want := proto.CloneOf(ti)
		want.SecretThumbprint = "NEW"
		before := proto.CloneOf(ti)
		if got := withThumbprint(ti, "NEW"); !proto.Equal(got, want) || got == ti {
			t.Errorf("withThumbprint(%v) = %v, want %v (a copy)", ti, got, want)
		}
		if !proto.Equal(ti, before) {
			t.Errorf("withThumbprint changed its argument to %v", ti)
		}
	}
}
