package store_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/controller/store"
)

// newStore starts an embedded etcd for the test and returns a Store on it
// with the default prefix, and the raw client for checking keys by hand.
func newStore(t *testing.T) (*store.Store, *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := etcdembed.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: the client closes before the server.
	t.Cleanup(func() { cli.Close() })
	return store.New(cli, ""), cli
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ptr[T any](v T) *T { return &v }

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.FixedZone("CET", 3600))

func TestPutTopologyStoresRevisions(t *testing.T) {
	st, cli := newStore(t)
	ctx := testCtx(t)

	doc1 := []byte(`{"name":"contoso","v":1}`)
	rev1, changed, err := st.PutTopology(ctx, "contoso", doc1, "admin/alice", t0, nil, nil)
	if err != nil || !changed {
		t.Fatalf("PutTopology(doc1) = %d, %v, %v; want changed", rev1, changed, err)
	}
	resp, err := cli.Get(ctx, st.Key("topology/current"))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || uint64(resp.Kvs[0].ModRevision) != rev1 {
		t.Fatalf("topology/current = %v; want one key with ModRevision %d", resp.Kvs, rev1)
	}

	cur, err := st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cur.Revision != rev1 || string(cur.Document) != string(doc1) || cur.Name != "contoso" ||
		cur.Hash != store.DocumentHash(doc1) || cur.AppliedBy != "admin/alice" || !cur.AppliedAt.Equal(t0) || cur.AppliedAt.Location() != time.UTC {
		t.Errorf("CurrentTopology = %+v; want revision %d, doc1, applied by admin/alice at %s UTC", cur, rev1, t0)
	}

	doc2 := []byte(`{"name":"contoso","v":2}`)
	rev2, changed, err := st.PutTopology(ctx, "contoso", doc2, "admin/bob", t0.Add(time.Minute), nil, nil)
	if err != nil || !changed {
		t.Fatalf("PutTopology(doc2) = %d, %v, %v; want changed", rev2, changed, err)
	}
	if rev2 <= rev1 {
		t.Errorf("second revision %d does not grow past %d", rev2, rev1)
	}

	// The same document again stores nothing and keeps the revision.
	rev3, changed, err := st.PutTopology(ctx, "contoso", doc2, "admin/carol", t0.Add(2*time.Minute), nil, nil)
	if err != nil || changed || rev3 != rev2 {
		t.Fatalf("PutTopology(doc2 again) = %d, %v, %v; want %d, unchanged", rev3, changed, err, rev2)
	}
	cur, err = st.CurrentTopology(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cur.Revision != rev2 || cur.AppliedBy != "admin/bob" {
		t.Errorf("after an identical put, current = revision %d by %s; want %d by admin/bob", cur.Revision, cur.AppliedBy, rev2)
	}
	list, err := st.ListTopologyRevisions(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Errorf("history holds %d revisions after two changes and one identical put; want 2", len(list))
	}
}

func TestCurrentTopologyEmpty(t *testing.T) {
	st, _ := newStore(t)
	if _, err := st.CurrentTopology(testCtx(t)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("CurrentTopology on an empty store: err = %v; want ErrNotFound", err)
	}
}

// The current record read again is the one last read while it is
// current; once another store (another replica) writes a new revision,
// or deletes it, that is what is read. A caller changing the copy it got
// changes nothing for the next.
func TestCurrentTopologyIsReadAgainOnlyWhenItChanged(t *testing.T) {
	st, cli := newStore(t)
	other := store.New(cli, "")
	ctx := testCtx(t)
	rev1, _, err := st.PutTopology(ctx, "t", []byte(`{"v":1}`), "admin", t0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	first, err := other.CurrentTopology(ctx)
	if err != nil || first.Revision != rev1 || string(first.Document) != `{"v":1}` || first.Sequence != 1 {
		t.Fatalf("CurrentTopology = %+v, %v; want revision %d, sequence 1", first, err, rev1)
	}
	first.Name, first.Sequence = "changed by a caller", 99
	again, err := other.CurrentTopology(ctx)
	if err != nil || again.Revision != rev1 || again.Name != "t" || again.Sequence != 1 {
		t.Fatalf("CurrentTopology again = %+v, %v; want revision %d named t, sequence 1", again, err, rev1)
	}
	rev2, _, err := st.PutTopology(ctx, "t", []byte(`{"v":2}`), "admin", t0.Add(time.Minute), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	next, err := other.CurrentTopology(ctx)
	if err != nil || next.Revision != rev2 || string(next.Document) != `{"v":2}` || next.Sequence != 2 {
		t.Fatalf("CurrentTopology after another store's write = %+v, %v; want revision %d, sequence 2", next, err, rev2)
	}
	if _, err := cli.Delete(ctx, "/s2strust/topology/current"); err != nil {
		t.Fatal(err)
	}
	if _, err := other.CurrentTopology(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("CurrentTopology after its deletion: err = %v; want ErrNotFound", err)
	}
}

func TestPutTopologyExpectedRevision(t *testing.T) {
	docA := []byte(`{"v":"a"}`)
	docB := []byte(`{"v":"b"}`)
	tests := []struct {
		name     string
		seed     bool // store docA first
		expected func(seedRev uint64) uint64
		wantErr  string // empty: success; else a format of (seedRev, expected)
	}{
		{name: "zero on empty store", expected: func(uint64) uint64 { return 0 }},
		{name: "nonzero on empty store", expected: func(uint64) uint64 { return 7 }, wantErr: "expected revision %[2]d, current is %[1]d"},
		{name: "matching", seed: true, expected: func(r uint64) uint64 { return r }},
		{name: "zero after a put", seed: true, expected: func(uint64) uint64 { return 0 }, wantErr: "expected revision %[2]d, current is %[1]d"},
		{name: "older", seed: true, expected: func(r uint64) uint64 { return r - 1 }, wantErr: "expected revision %[2]d, current is %[1]d"},
		{name: "newer", seed: true, expected: func(r uint64) uint64 { return r + 100 }, wantErr: "expected revision %[2]d, current is %[1]d"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, cli := newStore(t)
			ctx := testCtx(t)
			var seedRev uint64
			if tc.seed {
				var err error
				if seedRev, _, err = st.PutTopology(ctx, "t", docA, "seed", t0, nil, nil); err != nil {
					t.Fatal(err)
				}
			}
			exp := tc.expected(seedRev)
			rev, changed, err := st.PutTopology(ctx, "t", docB, "admin", t0.Add(time.Second), &exp, []byte(`{"audit":true}`))
			if tc.wantErr == "" {
				if err != nil || !changed || rev <= seedRev {
					t.Fatalf("PutTopology(expected %d) = %d, %v, %v; want a new revision", exp, rev, changed, err)
				}
				cur, err := st.CurrentTopology(ctx)
				if err != nil || cur.Revision != rev || string(cur.Document) != string(docB) {
					t.Fatalf("current after put = %+v, %v; want docB at %d", cur, err, rev)
				}
				return
			}
			if !errors.Is(err, store.ErrConflict) {
				t.Fatalf("PutTopology(expected %d) err = %v; want ErrConflict", exp, err)
			}
			if want := fmt.Sprintf(tc.wantErr, seedRev, exp); !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
			if changed {
				t.Error("changed = true on a conflict")
			}
			// Nothing was stored: neither the document, nor history, nor audit.
			cur, cerr := st.CurrentTopology(ctx)
			switch {
			case !tc.seed && !errors.Is(cerr, store.ErrNotFound):
				t.Errorf("after a refused put on an empty store, current = %+v, %v; want ErrNotFound", cur, cerr)
			case tc.seed && (cerr != nil || cur.Revision != seedRev || string(cur.Document) != string(docA)):
				t.Errorf("after a refused put, current = %+v, %v; want docA at %d", cur, cerr, seedRev)
			}
			list, err := st.ListTopologyRevisions(ctx, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{false: 0, true: 1}[tc.seed]; len(list) != want {
				t.Errorf("history holds %d revisions; want %d", len(list), want)
			}
			audits, err := cli.Get(ctx, st.Key("audit/"), clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			if audits.Count != 0 {
				t.Errorf("a refused put wrote %d audit records", audits.Count)
			}
		})
	}
}

func TestPutTopologyAudit(t *testing.T) {
	st, cli := newStore(t)
	ctx := testCtx(t)
	audit1 := []byte(`{"who":"admin/alice","changes":["add pool01"]}`)
	rev1, _, err := st.PutTopology(ctx, "t", []byte(`{"v":1}`), "admin/alice", t0, nil, audit1)
	if err != nil {
		t.Fatal(err)
	}
	// An identical document writes no audit record either.
	if _, changed, err := st.PutTopology(ctx, "t", []byte(`{"v":1}`), "admin/alice", t0.Add(time.Second), nil, []byte(`{"dup":true}`)); err != nil || changed {
		t.Fatalf("identical put: changed %v, err %v", changed, err)
	}
	audit2 := []byte(`{"who":"admin/bob"}`)
	rev2, _, err := st.PutTopology(ctx, "t", []byte(`{"v":2}`), "admin/bob", t0.Add(time.Minute), nil, audit2)
	if err != nil {
		t.Fatal(err)
	}
	// Without audit, none is written.
	if _, _, err := st.PutTopology(ctx, "t", []byte(`{"v":3}`), "admin/bob", t0.Add(2*time.Minute), nil, nil); err != nil {
		t.Fatal(err)
	}

	resp, err := cli.Get(ctx, st.Key("audit/topology/"), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		rev uint64
		val []byte
	}{{rev1, audit1}, {rev2, audit2}}
	if len(resp.Kvs) != len(want) {
		t.Fatalf("audit/topology/ holds %d records; want %d", len(resp.Kvs), len(want))
	}
	for i, w := range want {
		kv := resp.Kvs[i]
		if uint64(kv.CreateRevision) != w.rev {
			t.Errorf("audit record %s: CreateRevision %d; want the topology revision %d", kv.Key, kv.CreateRevision, w.rev)
		}
		if string(kv.Value) != string(w.val) {
			t.Errorf("audit record %s = %s; want %s", kv.Key, kv.Value, w.val)
		}
	}
}

func TestTopologyHistory(t *testing.T) {
	st, _ := newStore(t)
	ctx := testCtx(t)
	var revs []uint64
	for i := range 5 {
		rev, _, err := st.PutTopology(ctx, "t", fmt.Appendf(nil, `{"v":%d}`, i), "admin", t0.Add(time.Duration(i)*time.Minute), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, rev)
	}

	for i, rev := range revs {
		rec, err := st.TopologyRevision(ctx, rev)
		if err != nil {
			t.Fatalf("TopologyRevision(%d): %v", rev, err)
		}
		if want := fmt.Sprintf(`{"v":%d}`, i); rec.Revision != rev || string(rec.Document) != want {
			t.Errorf("TopologyRevision(%d) = revision %d, %s; want %s", rev, rec.Revision, rec.Document, want)
		}
	}
	missing := revs[4] + 1000
	_, err := st.TopologyRevision(ctx, missing)
	if !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), fmt.Sprint(missing)) {
		t.Errorf("TopologyRevision(%d) err = %v; want ErrNotFound naming the revision", missing, err)
	}

	tests := []struct {
		name   string
		limit  int
		before uint64
		want   []uint64
	}{
		{name: "all", want: []uint64{revs[4], revs[3], revs[2], revs[1], revs[0]}},
		{name: "limit", limit: 2, want: []uint64{revs[4], revs[3]}},
		{name: "next page", limit: 2, before: revs[3], want: []uint64{revs[2], revs[1]}},
		{name: "last page", limit: 2, before: revs[1], want: []uint64{revs[0]}},
		{name: "before the first", limit: 2, before: revs[0], want: []uint64{}},
		{name: "before a gap", before: revs[4] + 1000, want: []uint64{revs[4], revs[3], revs[2], revs[1], revs[0]}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			list, err := st.ListTopologyRevisions(ctx, tc.limit, tc.before)
			if err != nil {
				t.Fatal(err)
			}
			got := []uint64{}
			for _, r := range list {
				got = append(got, r.Revision)
				if r.Hash != store.DocumentHash(r.Document) {
					t.Errorf("revision %d: hash %s does not match its document", r.Revision, r.Hash)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("ListTopologyRevisions(limit %d, before %d) = %v; want %v", tc.limit, tc.before, got, tc.want)
			}
		})
	}
}

func TestRepairHistory(t *testing.T) {
	st, cli := newStore(t)
	ctx := testCtx(t)

	if err := st.RepairHistory(ctx); err != nil {
		t.Fatalf("RepairHistory on an empty store: %v", err)
	}
	if resp, err := cli.Get(ctx, st.Key(""), clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Fatalf("RepairHistory on an empty store wrote %d keys (err %v)", resp.Count, err)
	}

	doc := []byte(`{"v":"repair"}`)
	rev, _, err := st.PutTopology(ctx, "t", doc, "admin", t0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A crash between the current key and its history entry.
	revKey := st.Key(fmt.Sprintf("topology/rev/%020d", rev))
	if del, err := cli.Delete(ctx, revKey); err != nil || del.Deleted != 1 {
		t.Fatalf("delete %s: deleted %d, %v", revKey, del.Deleted, err)
	}
	if _, err := st.TopologyRevision(ctx, rev); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("before repair, TopologyRevision(%d) err = %v; want ErrNotFound", rev, err)
	}

	if err := st.RepairHistory(ctx); err != nil {
		t.Fatal(err)
	}
	rec, err := st.TopologyRevision(ctx, rev)
	if err != nil {
		t.Fatalf("after repair, TopologyRevision(%d): %v", rev, err)
	}
	if string(rec.Document) != string(doc) || rec.Hash != store.DocumentHash(doc) || rec.AppliedBy != "admin" {
		t.Errorf("repaired entry = %+v; want the current document", rec)
	}

	// With the entry present, repair writes nothing.
	before, err := cli.Get(ctx, revKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RepairHistory(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := cli.Get(ctx, revKey)
	if err != nil {
		t.Fatal(err)
	}
	if after.Kvs[0].ModRevision != before.Kvs[0].ModRevision {
		t.Errorf("RepairHistory rewrote an existing entry (ModRevision %d → %d)", before.Kvs[0].ModRevision, after.Kvs[0].ModRevision)
	}
}

func TestSwapPrimary(t *testing.T) {
	st, _ := newStore(t)
	ctx := testCtx(t)
	steps := []struct {
		dep, prev, next string
		wantWon         bool
		wantStored      string
	}{
		{dep: "pool01", prev: "", next: "fe01", wantWon: true, wantStored: "fe01"},
		{dep: "pool01", prev: "", next: "fe02", wantWon: false, wantStored: "fe01"},
		{dep: "pool01", prev: "fe02", next: "fe03", wantWon: false, wantStored: "fe01"},
		{dep: "pool01", prev: "fe01", next: "fe02", wantWon: true, wantStored: "fe02"},
		{dep: "pool01", prev: "fe01", next: "fe03", wantWon: false, wantStored: "fe02"},
		{dep: "exchange", prev: "", next: "ex01", wantWon: true, wantStored: "ex01"},
	}
	for _, s := range steps {
		won, stored, err := st.SwapPrimary(ctx, s.dep, s.prev, s.next)
		if err != nil {
			t.Fatalf("SwapPrimary(%s, %q, %q): %v", s.dep, s.prev, s.next, err)
		}
		if won != s.wantWon || stored != s.wantStored {
			t.Errorf("SwapPrimary(%s, %q, %q) = %v, %q; want %v, %q", s.dep, s.prev, s.next, won, stored, s.wantWon, s.wantStored)
		}
	}
	got, err := st.Primaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(map[string]string{"exchange": "ex01", "pool01": "fe02"}) {
		t.Errorf("Primaries = %v", got)
	}
}

func TestPresence(t *testing.T) {
	st, cli := newStore(t)
	ctx := testCtx(t)
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	const host = "fe01.contoso.com"

	oldRev, err := st.SetPresent(ctx, host, "stream-1", lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The host reconnects: a newer stream writes the key again.
	newRev, err := st.SetPresent(ctx, host, "stream-2", lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	if newRev <= oldRev {
		t.Fatalf("second SetPresent revision %d not after %d", newRev, oldRev)
	}
	// The old stream ends late: its clear must not remove the new
	// presence, and the other writes of its batch are stored all the same.
	if _, err := st.PutBatch(ctx, []store.BatchPut{{Key: store.PresenceKey(host), DeleteAt: oldRev}, {Key: "batchtest/beside", Value: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := cli.Get(ctx, st.Key("batchtest/beside")); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the write beside a stale clear: %v, %v; want it stored", resp, err)
	}
	present, err := st.Present(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if present[host] != "stream-2" {
		t.Fatalf("after a stale clear, Present = %v; want %s owned by stream-2", present, host)
	}
	if got := st.HostFromPresenceKey([]byte(st.PresencePrefix() + host)); got != host {
		t.Errorf("HostFromPresenceKey = %q; want %q", got, host)
	}

	if _, err := st.PutBatch(ctx, []store.BatchPut{{Key: store.PresenceKey(host), DeleteAt: newRev}}); err != nil {
		t.Fatal(err)
	}
	present, err = st.Present(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := present[host]; ok {
		t.Fatalf("after the current stream's clear, Present = %v; want %s gone", present, host)
	}
}

func TestTopologySequence(t *testing.T) {
	st, _ := newStore(t)
	ctx := testCtx(t)
	var revs []uint64
	for i := 1; i <= 3; i++ {
		rev, seq, changed, err := st.PutTopologyPinned(ctx, "t", fmt.Appendf(nil, `{"v":%d}`, i), nil, "admin", t0, nil, nil)
		if err != nil || !changed || seq != uint64(i) {
			t.Fatalf("put %d = rev %d, seq %d, changed %v, %v; want seq %d", i, rev, seq, changed, err, i)
		}
		revs = append(revs, rev)
	}
	// The same document again keeps its number.
	if rev, seq, changed, err := st.PutTopologyPinned(ctx, "t", []byte(`{"v":3}`), nil, "admin", t0, nil, nil); err != nil || changed || seq != 3 || rev != revs[2] {
		t.Fatalf("put v3 again = rev %d, seq %d, changed %v, %v; want rev %d seq 3 unchanged", rev, seq, changed, err, revs[2])
	}
	list, err := st.ListTopologyRevisions(ctx, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range list {
		got = append(got, fmt.Sprintf("%d@%d", r.Sequence, r.Revision))
	}
	want := fmt.Sprintf("3@%d 2@%d 1@%d", revs[2], revs[1], revs[0])
	if strings.Join(got, " ") != want {
		t.Fatalf("revisions = %v; want %s", got, want)
	}
	for i, rev := range revs {
		if seq, err := st.SequenceOf(ctx, rev); err != nil || seq != uint64(i+1) {
			t.Fatalf("SequenceOf(%d) = %d, %v; want %d", rev, seq, err, i+1)
		}
	}
	if _, err := st.SequenceOf(ctx, revs[2]+100); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("SequenceOf(unknown) err = %v; want ErrNotFound", err)
	}
}

// Records stored before sequence numbers existed load numbered by their
// order, and the next apply continues from there.
func TestTopologySequenceOfOldRecords(t *testing.T) {
	st, cli := newStore(t)
	ctx := testCtx(t)
	var revs []uint64
	for i := 1; i <= 2; i++ {
		// An old controller's record: no sequence field.
		val := fmt.Sprintf(`{"name":"t","document":%q,"hash":"h%d","appliedAt":"2026-03-01T11:00:00Z","appliedBy":"old"}`, base64.StdEncoding.EncodeToString(fmt.Appendf(nil, `{"v":%d}`, i)), i)
		resp, err := cli.Put(ctx, st.Key("topology/current"), val)
		if err != nil {
			t.Fatal(err)
		}
		rev := uint64(resp.Header.Revision)
		if _, err := cli.Put(ctx, st.Key(fmt.Sprintf("topology/rev/%020d", rev)), val); err != nil {
			t.Fatal(err)
		}
		revs = append(revs, rev)
	}
	cur, err := st.CurrentTopology(ctx)
	if err != nil || cur.Sequence != 2 {
		t.Fatalf("current = %+v, %v; want sequence 2", cur, err)
	}
	if r, err := st.TopologyRevision(ctx, revs[0]); err != nil || r.Sequence != 1 {
		t.Fatalf("revision %d = %+v, %v; want sequence 1", revs[0], r, err)
	}
	rev, seq, _, err := st.PutTopologyPinned(ctx, "t", []byte(`{"v":3}`), nil, "admin", t0, nil, nil)
	if err != nil || seq != 3 {
		t.Fatalf("put after old records = seq %d, %v; want 3", seq, err)
	}
	list, err := st.ListTopologyRevisions(ctx, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range list {
		got = append(got, fmt.Sprintf("%d@%d", r.Sequence, r.Revision))
	}
	if want := fmt.Sprintf("3@%d 2@%d 1@%d", rev, revs[1], revs[0]); strings.Join(got, " ") != want {
		t.Fatalf("revisions = %v; want %s", got, want)
	}
	// A page starting past the newest still numbers by order.
	page, err := st.ListTopologyRevisions(ctx, 1, rev)
	if err != nil || len(page) != 1 || page[0].Sequence != 2 {
		t.Fatalf("second page = %+v, %v; want sequence 2", page, err)
	}
}

func TestTopologyPinsAreComparedOnPut(t *testing.T) {
	st, _ := newStore(t)
	ctx := testCtx(t)
	doc := []byte(`{"v":1}`)
	pins := map[string]store.SecretPin{"oauth": {Version: 1, Thumbprint: "AA"}}
	rev1, _, _, err := st.PutTopologyPinned(ctx, "t", doc, pins, "admin", t0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rev, _, changed, err := st.PutTopologyPinned(ctx, "t", doc, map[string]store.SecretPin{"oauth": {Version: 1, Thumbprint: "AA"}}, "admin", t0, nil, nil); err != nil || changed || rev != rev1 {
		t.Fatalf("same pins = %d, %v, %v; want unchanged %d", rev, changed, err, rev1)
	}
	rev2, seq, changed, err := st.PutTopologyPinned(ctx, "t", doc, map[string]store.SecretPin{"oauth": {Version: 2, Thumbprint: "BB"}}, "admin", t0, nil, nil)
	if err != nil || !changed || seq != 2 {
		t.Fatalf("new pin = %d, seq %d, %v, %v; want a new revision 2", rev2, seq, changed, err)
	}
	cur, err := st.CurrentTopology(ctx)
	if err != nil || cur.Secrets["oauth"].Version != 2 || cur.Revision != rev2 {
		t.Fatalf("current = %+v, %v; want oauth pinned to version 2", cur, err)
	}
}
