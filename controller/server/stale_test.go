package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/rotation"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/certs"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// The read calls of rollouts, rotations, secrets, the audit trail and
// the topology history answer from the controller's last view while etcd
// is down, marked stale with its age and reason, as the fleet reads do
// (TestFleetReadsWhileEtcdIsDown).

// whileEtcdIsDown stops etcd and runs check twice: while the hub has not
// noticed yet (each read times out first), and once it has (answered at
// once). It stops etcd once the hub has taken the current revision: a
// hub still taking revisions reads etcd for them, and would wait for it.
func whileEtcdIsDown(t *testing.T, f *fleetFixture, check func(t *testing.T)) {
	t.Helper()
	cur, err := f.st.CurrentRevision(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the hub to take the current revision", func() (bool, string) {
		if c := f.hub.currentCompiled(); c != nil {
			return c.revision == cur, fmt.Sprintf("revision %d, not %d", c.revision, cur)
		}
		return false, "none yet"
	})
	f.stopEtcd()
	check(t)
	eventually(t, "the hub to notice etcd is gone", func() (bool, string) {
		lost, _ := f.hub.view.lostReason()
		return lost != "", "still following"
	})
	check(t)
}

// wantStale fails unless st marks an answer from the last view.
func wantStale(t *testing.T, what string, st *pb.Staleness) {
	t.Helper()
	if st == nil || st.GetAsOf() == nil || st.GetAgeMs() < 0 || st.GetReason() == "" {
		t.Fatalf("%s with etcd down: stale %v, want it marked with age and reason", what, st)
	}
}

// pages reads a List to its end (at most 30 pages); page reads the page
// of a token. Each page must be marked stale when stale is set, unmarked
// otherwise; it returns the items and each page's mark.
func pages[T any](t *testing.T, what string, stale bool, page func(token string) ([]T, string, *pb.Staleness, error)) ([]T, []*pb.Staleness) {
	t.Helper()
	var out []T
	var marks []*pb.Staleness
	token := ""
	for range 30 {
		items, next, st, err := page(token)
		switch {
		case err != nil:
			t.Fatalf("%s (etcd down: %v): %v", what, stale, err)
		case stale:
			wantStale(t, what, st)
		case st != nil:
			t.Fatalf("%s with etcd up: stale %v", what, st)
		}
		out, marks = append(out, items...), append(marks, st)
		if token = next; token == "" {
			return out, marks
		}
	}
	t.Fatalf("%s: more than 30 pages", what)
	return nil, nil
}

// variant is the contoso example with one more stale partner to remove:
// another revision.
func variant(i int) []byte {
	return []byte(strings.Replace(string(examples.Contoso), "removePartners: [app]", fmt.Sprintf("removePartners: [app, old%d]", i), 1))
}

func TestRolloutReadsWhileEtcdIsDown(t *testing.T) {
	t.Parallel()
	f := startFleet(t, nil)
	ctx := callCtx(t)
	topo := pb.NewTopologyServiceClient(f.conn)
	// One more than the view keeps: the oldest is etcd's only.
	n := viewRollouts + 1
	for i := range n {
		resp, err := topo.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: variant(i)})
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("rollouts/%d", i+1); resp.GetRollout() != want {
			t.Fatalf("apply %d started %q, want %s", i, resp.GetRollout(), want)
		}
	}
	newest := fmt.Sprintf("rollouts/%d", n)
	rollouts := pb.NewRolloutServiceClient(f.conn)
	fresh, err := rollouts.GetRollout(ctx, &pb.GetRolloutRequest{Name: newest})
	if err != nil || fresh.GetStale() != nil || fresh.GetRollout().GetState() != pb.RolloutState_ROLLOUT_STATE_RUNNING {
		t.Fatalf("GetRollout with etcd up = %v, %v; want %s running, not stale", fresh, err, newest)
	}
	list, err := rollouts.ListRollouts(ctx, &pb.ListRolloutsRequest{})
	if err != nil || list.GetStale() != nil || len(list.GetRollouts()) != n {
		t.Fatalf("ListRollouts with etcd up: %d rollouts, stale %v, %v; want %d, not stale", len(list.GetRollouts()), list.GetStale(), err, n)
	}
	watch, err := rollouts.WatchRollout(ctx, &pb.WatchRolloutRequest{Name: newest})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := watch.Recv(); err != nil || m.GetStale() != nil || m.GetRollout().GetName() != newest {
		t.Fatalf("WatchRollout's first message with etcd up = %v, %v", m, err)
	}
	eventually(t, "the newest rollout in the view", func() (bool, string) {
		_, ok, _ := viewGet(f.hub.view, keptRollouts, uint64(n))
		return ok, "not yet"
	})

	whileEtcdIsDown(t, f, func(t *testing.T) {
		// Paged three at a time, newest first, down to the oldest the
		// view keeps; the last page says older ones are left out.
		got, marks := pages(t, "ListRollouts", true, func(token string) ([]*pb.Rollout, string, *pb.Staleness, error) {
			resp, err := rollouts.ListRollouts(callCtx(t), &pb.ListRolloutsRequest{PageSize: 3, PageToken: token})
			return resp.GetRollouts(), resp.GetNextPageToken(), resp.GetStale(), err
		})
		if !proto.Equal(got[0], fresh.GetRollout()) {
			t.Errorf("the stale newest rollout differs from what etcd held:\n%v\n%v", got[0], fresh.GetRollout())
		}
		var names, want []string
		for _, r := range got {
			names = append(names, r.GetName())
		}
		for id := n; id > n-viewRollouts; id-- {
			want = append(want, fmt.Sprintf("rollouts/%d", id))
		}
		if !slices.Equal(names, want) {
			t.Errorf("stale rollouts %v, want %v", names, want)
		}
		if r := marks[len(marks)-1].GetReason(); !strings.Contains(r, fmt.Sprintf("keeps only the newest %d rollouts", viewRollouts)) {
			t.Errorf("the last stale page's reason %q does not say that older rollouts are left out", r)
		}

		cur, err := rollouts.GetRollout(callCtx(t), &pb.GetRolloutRequest{Name: "rollouts/-"})
		if err != nil || cur.GetRollout().GetName() != newest || cur.GetRollout().GetState() != pb.RolloutState_ROLLOUT_STATE_RUNNING {
			t.Fatalf("GetRollout(rollouts/-) with etcd down = %v, %v; want %s running", cur, err, newest)
		}
		wantStale(t, "GetRollout", cur.GetStale())
		prev, err := rollouts.GetRollout(callCtx(t), &pb.GetRolloutRequest{Name: fmt.Sprintf("rollouts/%d", n-1)})
		if err != nil || prev.GetRollout().GetState() != pb.RolloutState_ROLLOUT_STATE_ABORTED || !strings.Contains(prev.GetRollout().GetReason(), "superseded by "+newest) {
			t.Errorf("GetRollout of the one before with etcd down = %v, %v; want it aborted, superseded by %s", prev, err, newest)
		}
		if _, err := rollouts.GetRollout(callCtx(t), &pb.GetRolloutRequest{Name: "rollouts/1"}); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "rollouts/1") {
			t.Errorf("GetRollout of a rollout older than the view keeps: %v, want UNAVAILABLE naming it", err)
		}
		if _, err := rollouts.GetRollout(callCtx(t), &pb.GetRolloutRequest{Name: fmt.Sprintf("rollouts/%d", n+1)}); status.Code(err) != codes.NotFound {
			t.Errorf("GetRollout of a rollout the view never saw: %v, want NOT_FOUND", err)
		}
	})
	// The watch stays open and sends the rollout again, marked stale.
	for {
		m, err := watch.Recv()
		if err != nil {
			t.Fatalf("WatchRollout with etcd down: %v", err)
		}
		if m.GetStale() != nil {
			wantStale(t, "WatchRollout", m.GetStale())
			if m.GetRollout().GetName() != newest || m.GetRollout().GetState() != pb.RolloutState_ROLLOUT_STATE_RUNNING {
				t.Errorf("WatchRollout's stale message holds %s %v, want %s running", m.GetRollout().GetName(), m.GetRollout().GetState(), newest)
			}
			break
		}
	}
}

func TestRotationReadsWhileEtcdIsDown(t *testing.T) {
	t.Parallel()
	f := startFleet(t, nil)
	ctx := callCtx(t)
	rs := rotation.NewStore(f.st)
	for _, r := range []*pb.Rotation{
		{Deployment: "pool01", State: pb.RotationState_ROTATION_STATE_CANCELLED},
		{Deployment: "exchange", State: pb.RotationState_ROTATION_STATE_CANCELLED},
		{Deployment: "pool01", State: pb.RotationState_ROTATION_STATE_SCHEDULED, NewSecret: "oauth-2027@v1", NewThumbprint: "AB12"},
	} {
		if _, err := rs.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	rotations := pb.NewRotationServiceClient(f.conn)
	fresh, err := rotations.GetRotation(ctx, &pb.GetRotationRequest{Name: "rotations/-"})
	if err != nil || fresh.GetStale() != nil || fresh.GetRotation().GetName() != "rotations/3" {
		t.Fatalf("GetRotation with etcd up = %v, %v; want rotations/3, not stale", fresh, err)
	}
	if l, err := rotations.ListRotations(ctx, &pb.ListRotationsRequest{}); err != nil || l.GetStale() != nil || len(l.GetRotations()) != 3 {
		t.Fatalf("ListRotations with etcd up = %v, %v; want 3, not stale", l, err)
	}
	watch, err := rotations.WatchRotation(ctx, &pb.WatchRotationRequest{Name: "rotations/3"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := watch.Recv(); err != nil || m.GetStale() != nil || m.GetRotation().GetName() != "rotations/3" {
		t.Fatalf("WatchRotation's first message with etcd up = %v, %v", m, err)
	}
	eventually(t, "the newest rotation in the view", func() (bool, string) {
		_, ok, _ := viewGet(f.hub.view, keptRotations, 3)
		return ok, "not yet"
	})

	whileEtcdIsDown(t, f, func(t *testing.T) {
		got, err := rotations.GetRotation(callCtx(t), &pb.GetRotationRequest{Name: "rotations/-"})
		if err != nil {
			t.Fatalf("GetRotation with etcd down: %v", err)
		}
		wantStale(t, "GetRotation", got.GetStale())
		if !proto.Equal(got.GetRotation(), fresh.GetRotation()) {
			t.Errorf("stale rotation %v, want what etcd held: %v", got.GetRotation(), fresh.GetRotation())
		}
		first, err := rotations.GetRotation(callCtx(t), &pb.GetRotationRequest{Name: "rotations/1"})
		if err != nil || first.GetRotation().GetState() != pb.RotationState_ROTATION_STATE_CANCELLED || first.GetStale() == nil {
			t.Errorf("GetRotation(rotations/1) with etcd down = %v, %v; want it cancelled, stale", first, err)
		}
		if _, err := rotations.GetRotation(callCtx(t), &pb.GetRotationRequest{Name: "rotations/4"}); status.Code(err) != codes.NotFound {
			t.Errorf("GetRotation of a rotation the view never saw: %v, want NOT_FOUND", err)
		}
		// Two at a time: every rotation, and no word of older ones left out.
		list, marks := pages(t, "ListRotations", true, func(token string) ([]*pb.Rotation, string, *pb.Staleness, error) {
			resp, err := rotations.ListRotations(callCtx(t), &pb.ListRotationsRequest{PageSize: 2, PageToken: token})
			return resp.GetRotations(), resp.GetNextPageToken(), resp.GetStale(), err
		})
		var names []string
		for _, r := range list {
			names = append(names, r.GetName()+" "+r.GetDeployment())
		}
		for _, m := range marks {
			if strings.Contains(m.GetReason(), "keeps only") {
				t.Errorf("the view holds every rotation, yet the reason says %q", m.GetReason())
			}
		}
		if want := []string{"rotations/3 pool01", "rotations/2 exchange", "rotations/1 pool01"}; !slices.Equal(names, want) {
			t.Errorf("stale rotations %v, want %v", names, want)
		}
		// A watch opened now answers from the view too.
		w, err := rotations.WatchRotation(callCtx(t), &pb.WatchRotationRequest{Name: "rotations/3"})
		if err != nil {
			t.Fatal(err)
		}
		if m, err := w.Recv(); err != nil || !proto.Equal(m.GetRotation(), fresh.GetRotation()) {
			t.Errorf("WatchRotation opened with etcd down = %v, %v; want rotations/3 as etcd held it", m, err)
		} else {
			wantStale(t, "WatchRotation", m.GetStale())
		}
	})
	// The watch opened before stays open and sends the rotation again,
	// marked stale.
	m, err := watch.Recv()
	if err != nil {
		t.Fatalf("WatchRotation with etcd down: %v", err)
	}
	wantStale(t, "WatchRotation", m.GetStale())
	if !proto.Equal(m.GetRotation(), fresh.GetRotation()) {
		t.Errorf("WatchRotation's stale message holds %v, want %v", m.GetRotation(), fresh.GetRotation())
	}
}

func TestSecretListWhileEtcdIsDown(t *testing.T) {
	t.Parallel()
	f := startFleet(t, nil)
	ctx := callCtx(t)
	b, err := certs.Generate(certs.Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com", "fabrikam.com"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	pfx, err := certs.EncodePFX(b, "pfx-Passw0rd")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"oauth-2026", "spare-2027"} {
		if _, _, err := f.secrets.Put(ctx, name, pfx, "pfx-Passw0rd"); err != nil {
			t.Fatal(err)
		}
	}
	api := pb.NewSecretServiceClient(f.conn)
	fresh, err := api.ListSecrets(ctx, &pb.ListSecretsRequest{})
	if err != nil || fresh.GetStale() != nil || len(fresh.GetSecrets()) != 2 || !slices.Equal(fresh.GetSecrets()[0].GetUsedBy(), []string{"pool01"}) {
		t.Fatalf("ListSecrets with etcd up = %v, %v; want two, oauth-2026 used by pool01, not stale", fresh, err)
	}
	eventually(t, "both secrets in the view", func() (bool, string) {
		got, _ := f.hub.view.secretsAfter("", 10)
		return len(got) == 2, fmt.Sprint(got)
	})

	whileEtcdIsDown(t, f, func(t *testing.T) {
		got, _ := pages(t, "ListSecrets", true, func(token string) ([]*pb.Secret, string, *pb.Staleness, error) {
			resp, err := api.ListSecrets(callCtx(t), &pb.ListSecretsRequest{PageSize: 1, PageToken: token})
			return resp.GetSecrets(), resp.GetNextPageToken(), resp.GetStale(), err
		})
		// The same descriptions (a Secret has no field for key material).
		if len(got) != 2 {
			t.Fatalf("stale secrets %v, want 2", got)
		}
		for i, s := range got {
			if !proto.Equal(s, fresh.GetSecrets()[i]) {
				t.Errorf("stale secret %v, want what etcd held: %v", s, fresh.GetSecrets()[i])
			}
		}
	})
}

func TestAuditListWhileEtcdIsDown(t *testing.T) {
	t.Parallel()
	f := startFleet(t, nil)
	ctx := callCtx(t)
	// More records than the view keeps, by two people, each its own
	// transaction (its own create revision) as every writer's.
	n := viewAudit + 20
	var g errgroup.Group
	g.SetLimit(32)
	for i := range n {
		g.Go(func() error {
			who := "admin/alice"
			if i%3 == 0 {
				who = "admin/bob"
			}
			rec, _ := json.Marshal(auditEntry{Kind: "secret", Who: who, When: time.Now().UTC(), What: fmt.Sprint("change ", i), Result: "ok"})
			_, err := f.st.Client().Put(ctx, store.AuditKey(f.st, "secret", time.Now()), string(rec))
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	api := pb.NewAuditServiceClient(f.conn)
	listAll := func(t *testing.T, req *pb.ListAuditRecordsRequest, stale bool) ([]*pb.AuditRecord, []*pb.Staleness) {
		t.Helper()
		return pages(t, "ListAuditRecords", stale, func(token string) ([]*pb.AuditRecord, string, *pb.Staleness, error) {
			req.PageToken = token
			resp, err := api.ListAuditRecords(callCtx(t), req)
			return resp.GetRecords(), resp.GetNextPageToken(), resp.GetStale(), err
		})
	}
	fresh, _ := listAll(t, &pb.ListAuditRecordsRequest{PageSize: 1000}, false)
	if len(fresh) != n {
		t.Fatalf("with etcd up: %d records, want %d", len(fresh), n)
	}
	newest := fresh[len(fresh)-viewAudit:]
	eventually(t, "the newest record in the view", func() (bool, string) {
		k, ok, _ := viewGet(f.hub.view, keptAudit, 0)
		return ok && int64(k.id) == fresh[n-1].GetRevision(), fmt.Sprint(k.id)
	})

	whileEtcdIsDown(t, f, func(t *testing.T) {
		got, marks := listAll(t, &pb.ListAuditRecordsRequest{PageSize: 200}, true)
		if len(got) != viewAudit {
			t.Fatalf("stale: %d records, want the newest %d", len(got), viewAudit)
		}
		for i := range got {
			if !proto.Equal(got[i], newest[i]) {
				t.Fatalf("stale record %d: %v, want %v", i, got[i], newest[i])
			}
		}
		if r := marks[0].GetReason(); !strings.Contains(r, fmt.Sprintf("keeps only the newest %d audit records", viewAudit)) {
			t.Errorf("the first stale page's reason %q does not say that older records are left out", r)
		}
		bob, _ := listAll(t, &pb.ListAuditRecordsRequest{Who: "admin/bob", PageSize: 50}, true)
		var want []*pb.AuditRecord
		for _, r := range newest {
			if r.GetWho() == "admin/bob" {
				want = append(want, r)
			}
		}
		if len(bob) != len(want) || len(want) == 0 {
			t.Errorf("stale records of admin/bob: %d, want %d", len(bob), len(want))
		}
	})
}

func TestRevisionListWhileEtcdIsDown(t *testing.T) {
	t.Parallel()
	f := startFleet(t, nil)
	ctx := callCtx(t)
	// Two more revisions than the view keeps, the first one included.
	for i := range viewRevisions + 1 {
		if _, _, err := f.st.PutTopology(ctx, "contoso", variant(i), fmt.Sprint("admin/", i), time.Now(), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	api := pb.NewTopologyServiceClient(f.conn)
	fresh, err := api.ListTopologyRevisions(ctx, &pb.ListTopologyRevisionsRequest{})
	if err != nil || fresh.GetStale() != nil || len(fresh.GetRevisions()) != viewRevisions+2 {
		t.Fatalf("ListTopologyRevisions with etcd up: %d revisions, stale %v, %v; want %d, not stale", len(fresh.GetRevisions()), fresh.GetStale(), err, viewRevisions+2)
	}
	eventually(t, "the newest revision in the view", func() (bool, string) {
		k, ok, _ := viewGet(f.hub.view, keptRevisions, 0)
		return ok && k.id == fresh.GetRevisions()[0].GetRevision(), fmt.Sprint(k.id)
	})

	whileEtcdIsDown(t, f, func(t *testing.T) {
		got, marks := pages(t, "ListTopologyRevisions", true, func(token string) ([]*pb.TopologyRevision, string, *pb.Staleness, error) {
			resp, err := api.ListTopologyRevisions(callCtx(t), &pb.ListTopologyRevisionsRequest{PageSize: 8, PageToken: token})
			return resp.GetRevisions(), resp.GetNextPageToken(), resp.GetStale(), err
		})
		if len(got) != viewRevisions {
			t.Fatalf("stale: %d revisions, want the newest %d", len(got), viewRevisions)
		}
		for i, r := range got {
			if !proto.Equal(r, fresh.GetRevisions()[i]) {
				t.Errorf("stale revision %d: %v, want what etcd held: %v", i, r, fresh.GetRevisions()[i])
			}
		}
		if r := marks[len(marks)-1].GetReason(); !strings.Contains(r, fmt.Sprintf("keeps only the newest %d revisions", viewRevisions)) {
			t.Errorf("the last stale page's reason %q does not say that older revisions are left out", r)
		}
	})
}

// recent keeps the newest records up to its bound, in order, and says
// when older ones were dropped or a page reached them.
func TestRecentKeepsTheNewest(t *testing.T) {
	r := recent[string]{max: 3}
	r.load([]kept[string]{{id: 4, val: "d"}, {id: 2, val: "b"}}, false)
	ids := func(ks []kept[string]) (out []uint64) {
		for _, k := range ks {
			out = append(out, k.id)
		}
		return out
	}
	if page, partial := r.newest(0, 10); !slices.Equal(ids(page), []uint64{4, 2}) || partial {
		t.Fatalf("loaded: %v (partial %v)", ids(page), partial)
	}
	r.put(kept[string]{id: 5, val: "e"})
	r.put(kept[string]{id: 6, val: "f"}) // 2 leaves
	r.put(kept[string]{id: 1, val: "a"}) // older than every kept one
	r.put(kept[string]{id: 5, val: "E"}) // changed
	if page, partial := r.newest(0, 2); !slices.Equal(ids(page), []uint64{6, 5}) || partial || page[1].val != "E" {
		t.Errorf("first page %v (partial %v), want 6 5, not partial", page, partial)
	}
	if page, partial := r.newest(5, 2); !slices.Equal(ids(page), []uint64{4}) || !partial {
		t.Errorf("page before 5: %v (partial %v), want 4, partial", ids(page), partial)
	}
	if _, ok, older := r.get(2); ok || !older {
		t.Errorf("get(2) = %v, older %v; want not kept, older", ok, older)
	}
	if _, ok, older := r.get(7); ok || older {
		t.Errorf("get(7) = %v, older %v; want not kept, not older", ok, older)
	}
	if k, ok, _ := r.get(0); !ok || k.id != 6 {
		t.Errorf("get(0) = %v, want the newest, 6", k)
	}
	if from, partial := r.from(5); !slices.Equal(ids(from), []uint64{5, 6}) || partial {
		t.Errorf("from 5: %v (partial %v)", ids(from), partial)
	}
	if from, partial := r.from(0); !slices.Equal(ids(from), []uint64{4, 5, 6}) || !partial {
		t.Errorf("from 0: %v (partial %v), want partial", ids(from), partial)
	}
	r.remove(5)
	if page, _ := r.newest(0, 10); !slices.Equal(ids(page), []uint64{6, 4}) {
		t.Errorf("after removing 5: %v", ids(page))
	}
}

// ListHostIdentities answers while etcd is down from the topology's hosts,
// the deny list and the open streams, marked stale, and says what it
// leaves out.
func TestHostIdentityListWhileEtcdIsDown(t *testing.T) {
	t.Parallel()
	f := startFleet(t, func(ctx context.Context, st *store.Store) {
		for _, h := range []string{"aa.contoso.com", "zz1.contoso.com"} {
			if _, err := st.Client().Put(ctx, st.Key("identities/"+h), `{"serial":"0a","notAfter":"2027-01-01T00:00:00Z"}`); err != nil {
				t.Fatal(err)
			}
		}
	})
	ids, rev, err := NewIdentities(callCtx(t), f.st, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = ids.Run(ctx, rev) }()
	t.Cleanup(func() { cancel(); <-runDone })
	svc := NewHostIdentityService(ids, f.hub, nil, 0)
	if _, err := svc.RevokeHost(callCtx(t), &pb.RevokeHostRequest{Host: "zz2.contoso.com"}); err != nil {
		t.Fatal(err)
	}
	// A host outside the topology with a stream open here.
	open := ids.track("yy.contoso.com", &x509.Certificate{}, func(error) {})
	t.Cleanup(func() { ids.untrack(open) })

	fresh, err := svc.ListHostIdentities(callCtx(t), &pb.ListHostIdentitiesRequest{})
	if err != nil || fresh.GetStale() != nil {
		t.Fatalf("ListHostIdentities with etcd up = %v, %v; want an answer not marked stale", fresh, err)
	}
	byHost := map[string]*pb.HostIdentity{}
	for _, h := range fresh.GetHosts() {
		byHost[h.GetHost()] = h
	}
	if byHost["aa.contoso.com"].GetSerial() != "0a" || byHost["zz2.contoso.com"].GetRevokedAt() == nil {
		t.Fatalf("ListHostIdentities with etcd up = %v; want aa's serial and zz2's revocation", fresh.GetHosts())
	}
	want := slices.Clone(contosoHosts)
	want = append(want, "yy.contoso.com", "zz2.contoso.com")
	slices.Sort(want)

	whileEtcdIsDown(t, f, func(t *testing.T) {
		got, marks := pages(t, "ListHostIdentities", true, func(token string) ([]*pb.HostIdentity, string, *pb.Staleness, error) {
			resp, err := svc.ListHostIdentities(callCtx(t), &pb.ListHostIdentitiesRequest{PageSize: 2, PageToken: token})
			return resp.GetHosts(), resp.GetNextPageToken(), resp.GetStale(), err
		})
		var names []string
		for _, h := range got {
			names = append(names, h.GetHost())
			if h.GetSerial() != "" || h.GetNotAfter() != nil {
				t.Errorf("stale %s has serial %q, expiry %v: not kept in memory, must be left out", h.GetHost(), h.GetSerial(), h.GetNotAfter())
			}
			if h.GetHost() == "zz2.contoso.com" && !h.GetRevokedAt().AsTime().Equal(byHost["zz2.contoso.com"].GetRevokedAt().AsTime()) {
				t.Errorf("stale zz2 revoked at %v, want %v", h.GetRevokedAt(), byHost["zz2.contoso.com"].GetRevokedAt())
			}
			if h.GetHost() == "yy.contoso.com" && !h.GetConnected() {
				t.Errorf("stale yy.contoso.com not connected, though its stream is open here")
			}
		}
		if !slices.Equal(names, want) {
			t.Errorf("stale hosts %v, want %v", names, want)
		}
		if r := marks[0].GetReason(); !strings.Contains(r, "kept only in etcd") {
			t.Errorf("stale reason %q does not say what is left out", r)
		}
	})
}
