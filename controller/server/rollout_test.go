package server

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/controller/pagetoken"
	"github.com/s2strust/s2strust/controller/rollout"
	"github.com/s2strust/s2strust/controller/store"
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

// racingPinner stands in for the secret pinning step of an apply and, the
// first time it runs, lets another apply store a revision meanwhile, as a
// concurrent `apply` landing between this apply's reads and its write.
type racingPinner struct {
	st   *store.Store
	doc  []byte
	done bool
}

func (p *racingPinner) CheckTopology(context.Context, *topology.Topology) (errs, warnings []topology.FieldViolation, err error) {
	return nil, nil, nil
}

func (p *racingPinner) Pins(ctx context.Context, _ *topology.Topology) (map[string]store.SecretPin, error) {
	if !p.done {
		p.done = true
		if _, _, err := p.st.PutTopology(ctx, "contoso", p.doc, "someone else", time.Now(), nil, nil); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// TestFailedApplyStoresNoRollout: an apply whose revision is not stored
// (here: refused because another apply stored one meanwhile) leaves no
// rollout behind and does not supersede the running one; the revision and
// its rollout are stored in one transaction.
func TestFailedApplyStoresNoRollout(t *testing.T) {
	f := startHub(t, Config{})
	ctx := context.Background()
	waitFor(t, "the hub to load the first revision", func() bool { return f.hub.snapshot().topo != nil })
	variant := func(partner string) []byte {
		return []byte(strings.Replace(string(examples.Contoso), "removePartners: [app]", "removePartners: [app, "+partner+"]", 1))
	}
	first, err := NewTopologyService(f.hub, nil).ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: variant("old1")})
	if err != nil {
		t.Fatal(err)
	}
	if first.GetRollout() != "rollouts/1" {
		t.Fatalf("the second revision started rollout %q, want rollouts/1", first.GetRollout())
	}
	running, err := f.hub.rollouts.Get(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if running.CreateRev != int64(first.GetRevision()) || running.Rollout.GetFromSequence() != 1 || running.Rollout.GetToSequence() != 2 {
		t.Errorf("rollouts/1 created at etcd revision %d (revision %d stored at %d), sequences %d → %d; want one transaction, 1 → 2",
			running.CreateRev, first.GetSequence(), first.GetRevision(), running.Rollout.GetFromSequence(), running.Rollout.GetToSequence())
	}

	racer := &racingPinner{st: f.st, doc: variant("other")}
	expected := first.GetRevision()
	_, err = NewTopologyService(f.hub, racer).ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: variant("old2"), ExpectedRevision: &expected})
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "expected revision") {
		t.Fatalf("apply over a revision stored meanwhile: %v, want a conflict naming the expected revision", err)
	}
	list, err := f.hub.rollouts.List(ctx, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != 1 {
		var names []string
		for _, r := range list {
			names = append(names, r.Rollout.GetName()+" "+r.Rollout.GetState().String()+" "+r.Rollout.GetReason())
		}
		t.Fatalf("after the failed apply the rollouts are %v, want rollouts/1 only", names)
	}
	if got := list[0].Rollout; got.GetState() != pb.RolloutState_ROLLOUT_STATE_RUNNING || list[0].ModRev != running.ModRev {
		t.Errorf("the failed apply changed rollouts/1: %v %q", got.GetState(), got.GetReason())
	}
	cur, err := f.st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cur.AppliedBy != "someone else" {
		t.Errorf("current revision %d by %s, want the concurrent one", cur.Revision, cur.AppliedBy)
	}
}

// TestRolloutIsPlannedFromTheStoredRevision: a rollout is planned from
// the fleet as it is on the revision etcd holds as current, not on
// whatever revision the hub has made its own so far. An apply right after
// the first revision, before the hub has loaded it, starts a rollout from
// it (it was planned as a first revision, with none); planning from a
// revision the hub never loads fails, naming it, rather than planning
// from an older one.
func TestRolloutIsPlannedFromTheStoredRevision(t *testing.T) {
	f := startHub(t, Config{})
	ctx := context.Background()
	// No wait for the hub to load the first revision.
	second, err := NewTopologyService(f.hub, nil).ApplyTopology(ctx, &pb.ApplyTopologyRequest{
		Document: []byte(strings.Replace(string(examples.Contoso), "removePartners: [app]", "removePartners: [app, old1]", 1))})
	if err != nil {
		t.Fatal(err)
	}
	if second.GetRollout() != "rollouts/1" {
		t.Fatalf("the apply right after the first revision started rollout %q, want rollouts/1", second.GetRollout())
	}
	r, err := f.hub.rollouts.Get(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rollout.GetFromSequence() != 1 || r.Rollout.GetToSequence() != 2 {
		t.Errorf("rollouts/1 goes from sequence %d to %d, want 1 → 2", r.Rollout.GetFromSequence(), r.Rollout.GetToSequence())
	}

	top, err := topology.Load("contoso", examples.Contoso)
	if err != nil {
		t.Fatal(err)
	}
	next, err := topology.Compile(top)
	if err != nil {
		t.Fatal(err)
	}
	unknown := second.GetRevision() + 1_000_000
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	ro, err := f.hub.newRollout(sctx, top, "some-hash", next, &pb.RolloutStrategy{}, "test", "", unknown)
	if err == nil || ro != nil {
		t.Fatalf("planning from revision %d, never stored: rollout %v, error %v; want an error and no plan", unknown, ro, err)
	}
}

// TestEngineKnowsTheRevisionStoredWithItsRollout: the engine takes a
// rollout's revision from the transaction that stored both, so a rollout
// superseded by an immediate apply before the engine first looked is
// aborted as superseded at once, naming the revision by its sequence
// number, rather than waited on as a revision never stored.
func TestEngineKnowsTheRevisionStoredWithItsRollout(t *testing.T) {
	f := startHub(t, Config{})
	ctx := context.Background()
	waitFor(t, "the hub to load the first revision", func() bool { return f.hub.snapshot().topo != nil })
	svc := NewTopologyService(f.hub, nil)
	variant := func(partner string) []byte {
		return []byte(strings.Replace(string(examples.Contoso), "removePartners: [app]", "removePartners: [app, "+partner+"]", 1))
	}
	second, err := svc.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: variant("old1")})
	if err != nil {
		t.Fatal(err)
	}
	third, err := svc.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: variant("old2"), Immediate: true})
	if err != nil {
		t.Fatal(err)
	}
	if third.GetRollout() != "" {
		t.Fatalf("an immediate apply started %s", third.GetRollout())
	}
	e := &rollout.Engine{Store: f.hub.rollouts, Source: NewRolloutSource(f.hub), Log: f.hub.log}
	if err := e.Advance(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := f.hub.rollouts.Get(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := "aborted: superseded by revision 3 (version " + strconv.FormatUint(third.GetRevision(), 10) + ")"
	if r.Rollout.GetState() != pb.RolloutState_ROLLOUT_STATE_ABORTED || r.Rollout.GetReason() != want ||
		r.Rollout.GetToRevision() != second.GetRevision() || r.Rollout.GetToSequence() != 2 {
		t.Errorf("rollouts/1 is %v %q, to revision %d (sequence %d); want aborted %q, to revision %d (sequence 2)",
			r.Rollout.GetState(), r.Rollout.GetReason(), r.Rollout.GetToRevision(), r.Rollout.GetToSequence(), want, second.GetRevision())
	}
}

// TestListRolloutsPagesWithOpaqueTokens: ListRollouts pages newest first
// with opaque tokens, as every List does; the rollout names its tokens
// were before, and tokens of other lists, are refused naming page_token.
func TestListRolloutsPagesWithOpaqueTokens(t *testing.T) {
	f := startHub(t, Config{})
	ctx := context.Background()
	waitFor(t, "the hub to load the first revision", func() bool { return f.hub.snapshot().topo != nil })
	topo := NewTopologyService(f.hub, nil)
	for _, partner := range []string{"old1", "old2", "old3"} {
		doc := strings.Replace(string(examples.Contoso), "removePartners: [app]", "removePartners: [app, "+partner+"]", 1)
		if _, err := topo.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: []byte(doc)}); err != nil {
			t.Fatal(err)
		}
	}
	svc := NewRolloutService(f.hub, topo)
	var names []string
	req := &pb.ListRolloutsRequest{PageSize: 1}
	for pages := 0; ; pages++ {
		resp, err := svc.ListRollouts(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetRollouts()) > 1 || pages > 5 {
			t.Fatalf("page %d holds %d rollouts, want at most 1", pages, len(resp.GetRollouts()))
		}
		for _, r := range resp.GetRollouts() {
			names = append(names, r.GetName())
		}
		if strings.Contains(resp.GetNextPageToken(), "rollouts/") {
			t.Errorf("next_page_token %q shows its cursor", resp.GetNextPageToken())
		}
		if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
			break
		}
	}
	if strings.Join(names, " ") != "rollouts/3 rollouts/2 rollouts/1" {
		t.Errorf("rollouts paged one by one: %v, want rollouts/3 rollouts/2 rollouts/1", names)
	}
	for tok, want := range map[string]string{
		"rollouts/2": "not a page token",
		pagetoken.Encode("ListAuditRecords", "2"): "another list",
		pagetoken.Encode("ListRollouts", "x"):     "a next_page_token from a previous ListRollouts response",
	} {
		var te *topology.Error
		_, err := svc.ListRollouts(ctx, &pb.ListRolloutsRequest{PageToken: tok})
		if !errors.As(err, &te) || te.Violations[0].Field != "page_token" || te.Violations[0].Value != tok || !strings.Contains(err.Error(), want) {
			t.Errorf("page token %q: %v, want page_token refused (%s)", tok, err, want)
		}
	}
	var te *topology.Error
	if _, err := svc.ListRollouts(ctx, &pb.ListRolloutsRequest{PageSize: -1}); !errors.As(err, &te) || te.Violations[0].Field != "page_size" {
		t.Errorf("page_size -1: %v, want page_size refused", err)
	}
}

// TestListRotationsPagesWithOpaqueTokens: ListRotations pages newest
// first with opaque tokens too; a rotation name as token is refused
// naming page_token.
func TestListRotationsPagesWithOpaqueTokens(t *testing.T) {
	f := startHub(t, Config{})
	ctx := context.Background()
	svc := NewRotationService(f.hub, NewTopologyService(f.hub, nil))
	for range 3 {
		if _, err := svc.Rotations().Create(ctx, &pb.Rotation{Deployment: "pool01", State: pb.RotationState_ROTATION_STATE_CANCELLED}); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	req := &pb.ListRotationsRequest{PageSize: 2}
	for pages := 0; ; pages++ {
		resp, err := svc.ListRotations(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetRotations()) > 2 || pages > 5 {
			t.Fatalf("page %d holds %d rotations, want at most 2", pages, len(resp.GetRotations()))
		}
		for _, r := range resp.GetRotations() {
			names = append(names, r.GetName())
		}
		if strings.Contains(resp.GetNextPageToken(), "rotations/") {
			t.Errorf("next_page_token %q shows its cursor", resp.GetNextPageToken())
		}
		if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
			break
		}
	}
	if strings.Join(names, " ") != "rotations/3 rotations/2 rotations/1" {
		t.Errorf("rotations paged two by two: %v, want rotations/3 rotations/2 rotations/1", names)
	}
	for _, tok := range []string{"rotations/2", pagetoken.Encode("ListRollouts", "2")} {
		var te *topology.Error
		if _, err := svc.ListRotations(ctx, &pb.ListRotationsRequest{PageToken: tok}); !errors.As(err, &te) || te.Violations[0].Field != "page_token" {
			t.Errorf("page token %q: %v, want page_token refused", tok, err)
		}
	}
}
