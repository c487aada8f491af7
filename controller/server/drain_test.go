package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// A stopping controller tells each agent when to come back, spread at the
// reconnect rate after the reconnect delay, and ends every stream: those
// still saying Hello too, and it refuses new ones. Presence stays, so the
// primaries keep their roles across the restart.
func TestStoppingDrainsEveryStream(t *testing.T) {
	f := startHub(t, Config{Secrets: fakeSecrets{}, ReconnectRate: 10, ReconnectDelay: 2 * time.Second})
	hosts := []string{"ex01.contoso.com", "ex02.contoso.com", "sp01.contoso.com"}
	var agents []*rawAgent
	for _, h := range hosts {
		a := f.open(t, &pb.Hello{Host: h})
		a.next(t, "first answer to "+h)
		agents = append(agents, a)
	}
	// A stream that never says Hello.
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	silent, err := pb.NewAgentServiceClient(conn).Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	silentErr := make(chan error, 1)
	go func() {
		_, err := silent.Recv()
		silentErr <- err
	}()

	stopped := make(chan struct{})
	go func() { f.hub.Stopping(); close(stopped) }()
	var afters []time.Duration
	for i, a := range agents {
		r := a.next(t, "drain of "+hosts[i])
		if r.GetDrain() == nil {
			t.Fatalf("%s was sent %v; want a Drain", hosts[i], r)
		}
		afters = append(afters, r.GetDrain().GetReconnectAfter().AsDuration())
		select {
		case <-a.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s's stream still open 20s after its Drain", hosts[i])
		}
	}
	slices.Sort(afters)
	// Three streams at 10 a second: 300ms, from 2s on.
	if want := []time.Duration{2 * time.Second, 2100 * time.Millisecond, 2200 * time.Millisecond}; !slices.Equal(afters, want) {
		t.Errorf("reconnect times %v, want %v", afters, want)
	}
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("Stopping did not return within 20s")
	}
	select {
	case err := <-silentErr:
		// CANCELED when its handler was waiting for the Hello, UNAVAILABLE
		// when it began after the stop did.
		if c := status.Code(err); c != codes.Canceled && c != codes.Unavailable {
			t.Errorf("the stream without a Hello ended with %v, want CANCELED or UNAVAILABLE", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the stream without a Hello still open 20s after Stopping returned")
	}
	late := f.open(t, &pb.Hello{Host: "fe01.contoso.com"})
	select {
	case <-late.done:
	case r := <-late.in:
		t.Fatalf("a stream opened after the stop was answered %v", r)
	case <-time.After(20 * time.Second):
		t.Fatal("a stream opened after the stop was not refused within 20s")
	}
	present, err := f.st.Present(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if _, ok := present[h]; !ok {
			t.Errorf("%s's presence was cleared by the stop; want it left to its lease (present: %v)", h, present)
		}
	}
}

func TestReconnectAfterSpreadsTheFleet(t *testing.T) {
	h := NewHub(Config{ReconnectRate: 1000, ReconnectDelay: time.Second})
	for _, c := range []struct {
		i, n int64
		want time.Duration
	}{
		{0, 10000, time.Second},
		{5000, 10000, 6 * time.Second},
		{9999, 10000, time.Second + 9999*time.Millisecond},
		// More streams than counted when the drain began: the later ones
		// stretch the window rather than pile up at its end.
		{20, 10, time.Second + 20*time.Millisecond},
	} {
		if got := h.reconnectAfter(c.i, c.n); got != c.want {
			t.Errorf("reconnectAfter(%d, %d) = %s, want %s", c.i, c.n, got, c.want)
		}
	}
}

// Writes queued together share transactions; every caller learns its own
// result, and a transaction that fails fails every write in it, storing
// none.
func TestWriterBatchesWrites(t *testing.T) {
	f := startHub(t, Config{Secrets: fakeSecrets{}})
	w := newWriter(f.st)
	const n = 600
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = w.put(context.Background(), store.BatchPut{Key: fmt.Sprintf("batchtest/%03d", i), Value: []byte(fmt.Sprint(i))})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	got, err := f.st.Client().Get(context.Background(), f.st.Key("batchtest/"), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Kvs) != n {
		t.Fatalf("%d keys stored, want %d", len(got.Kvs), n)
	}
	revs := map[int64]bool{}
	for _, kv := range got.Kvs {
		revs[kv.ModRevision] = true
	}
	if len(revs) >= n || len(revs) < n/128 {
		t.Errorf("%d writes stored in %d transactions; want them shared, at most 128 a transaction", n, len(revs))
	}

	// A lease that does not exist fails its transaction: both writes queued
	// with it fail, and neither is stored.
	w2 := newWriter(f.st)
	w2.mu.Lock() // queue both before the writer runs
	a := &writeReq{put: store.BatchPut{Key: "batchtest/bad-a", Value: []byte("a")}, done: make(chan writeResult, 1)}
	b := &writeReq{put: store.BatchPut{Key: "batchtest/bad-b", Value: []byte("b"), Lease: 12345}, done: make(chan writeResult, 1)}
	w2.queue = append(w2.queue, a, b)
	w2.running = true
	w2.mu.Unlock()
	go w2.drain()
	for _, r := range []*writeReq{a, b} {
		if res := <-r.done; res.err == nil {
			t.Errorf("write of %s with a failing transaction succeeded", r.put.Key)
		}
	}
	for _, k := range []string{"batchtest/bad-a", "batchtest/bad-b"} {
		resp, err := f.st.Client().Get(context.Background(), f.st.Key(k))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 0 {
			t.Errorf("%s stored by a failed transaction", k)
		}
	}
}

// Two writes of one key queued together go in order, in two transactions
// (etcd refuses one writing a key twice): the later value stays.
func TestWriterKeepsOneKeysWritesInOrder(t *testing.T) {
	f := startHub(t, Config{Secrets: fakeSecrets{}})
	w := newWriter(f.st)
	w.mu.Lock()
	var reqs []*writeReq
	for i := range 3 {
		r := &writeReq{put: store.BatchPut{Key: "batchtest/same", Value: []byte(fmt.Sprint(i))}, done: make(chan writeResult, 1)}
		reqs = append(reqs, r)
		w.queue = append(w.queue, r)
	}
	w.running = true
	w.mu.Unlock()
	go w.drain()
	var revs []int64
	for i, r := range reqs {
		res := <-r.done
		if res.err != nil {
			t.Fatalf("write %d: %v", i, res.err)
		}
		revs = append(revs, res.rev)
	}
	if !slices.IsSorted(revs) || revs[0] == revs[1] || revs[1] == revs[2] {
		t.Errorf("revisions of three writes of one key: %v; want three increasing", revs)
	}
	resp, err := f.st.Client().Get(context.Background(), f.st.Key("batchtest/same"))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "2" {
		t.Errorf("batchtest/same = %v, want the last value 2", resp.Kvs)
	}
}

// A batch takes the queue's writes in order up to store.MaxBatchOps,
// skipping (and keeping queued, in order) the writes of keys in flight
// and the later writes of a key held back; what it leaves is the rest of
// the queue in its order.
func TestWriterTakesBatchesInQueueOrder(t *testing.T) {
	w := &writer{inFlight: map[string]bool{"k/busy": true}}
	key := func(i int) string { return fmt.Sprintf("k/%04d", i) }
	var want []string
	w.queue = append(w.queue, &writeReq{put: store.BatchPut{Key: "k/busy"}})
	for i := range 3 * store.MaxBatchOps {
		w.queue = append(w.queue, &writeReq{put: store.BatchPut{Key: key(i)}})
		if i == 5 {
			// A second write of a key in flight, and one of a key after a held one.
			w.queue = append(w.queue, &writeReq{put: store.BatchPut{Key: "k/busy"}})
		}
	}
	keys := func(rs []*writeReq) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.put.Key)
		}
		return out
	}
	for i := range store.MaxBatchOps {
		want = append(want, key(i))
	}
	w.mu.Lock()
	batch := w.takeLocked()
	w.mu.Unlock()
	if got := keys(batch); !slices.Equal(got, want) {
		t.Fatalf("first batch %v,\nwant %v", got, want)
	}
	wantRest := []string{"k/busy", "k/busy"}
	for i := store.MaxBatchOps; i < 3*store.MaxBatchOps; i++ {
		wantRest = append(wantRest, key(i))
	}
	if got := keys(w.queue); !slices.Equal(got, wantRest) {
		t.Fatalf("left queued %v,\nwant %v", got, wantRest)
	}
	for _, k := range want {
		if !w.inFlight[k] {
			t.Errorf("%s taken but not marked in flight", k)
		}
	}
	if w.inFlight[key(store.MaxBatchOps)] {
		t.Errorf("%s marked in flight but left queued", key(store.MaxBatchOps))
	}
}

// A batch with a conditional delete carries one write fewer (etcd counts
// the nested transaction's operation against the outer one's limit): a
// delete that would be the batch's last write waits for the next batch,
// and one taken first makes the batch stop a write short.
func TestWriterLeavesRoomForAConditionalDelete(t *testing.T) {
	w := &writer{inFlight: map[string]bool{}}
	key := func(i int) string { return fmt.Sprintf("k/%04d", i) }
	for i := range store.MaxBatchOps - 1 {
		w.queue = append(w.queue, &writeReq{put: store.BatchPut{Key: key(i)}})
	}
	w.queue = append(w.queue, &writeReq{put: store.BatchPut{Key: "k/gone", DeleteAt: 7}})
	for i := range store.MaxBatchOps {
		w.queue = append(w.queue, &writeReq{put: store.BatchPut{Key: key(1000 + i)}})
	}
	w.mu.Lock()
	first := w.takeLocked()
	second := w.takeLocked()
	w.mu.Unlock()
	if len(first) != store.MaxBatchOps-1 || slices.ContainsFunc(first, func(r *writeReq) bool { return r.put.DeleteAt != 0 }) {
		t.Fatalf("first batch: %d writes (a delete among them: %v); want the %d puts before the delete", len(first),
			slices.ContainsFunc(first, func(r *writeReq) bool { return r.put.DeleteAt != 0 }), store.MaxBatchOps-1)
	}
	if len(second) != store.MaxBatchOps-1 || second[0].put.Key != "k/gone" {
		t.Fatalf("second batch: %d writes starting with %s; want %d starting with the delete of k/gone", len(second), second[0].put.Key, store.MaxBatchOps-1)
	}
	// The store refuses a full batch with a delete in it, naming the limit.
	f := startHub(t, Config{Secrets: fakeSecrets{}})
	puts := []store.BatchPut{{Key: "k/gone", DeleteAt: 7}}
	for i := range store.MaxBatchOps - 1 {
		puts = append(puts, store.BatchPut{Key: key(i), Value: []byte("v")})
	}
	if _, err := f.st.PutBatch(context.Background(), puts); err == nil || !strings.Contains(err.Error(), fmt.Sprint(store.MaxBatchOps-1)) {
		t.Errorf("PutBatch of %d writes with a conditional delete: %v; want an error naming the limit %d", len(puts), err, store.MaxBatchOps-1)
	}
	if _, err := f.st.PutBatch(context.Background(), puts[:store.MaxBatchOps-1]); err != nil {
		t.Errorf("PutBatch of %d writes with a conditional delete: %v", store.MaxBatchOps-1, err)
	}
}

// A posted write is queued without a waiter and stored; past maxPosted
// queued writes (a store that does not keep up) a post is refused and
// queues nothing.
func TestWriterPostIsBoundedAndStored(t *testing.T) {
	stalled := &writer{inFlight: map[string]bool{}, running: true} // no drain: the queue only grows
	for i := range maxPosted {
		if !stalled.post(store.BatchPut{Key: fmt.Sprintf("k/%05d", i)}) {
			t.Fatalf("post %d of %d refused", i+1, maxPosted)
		}
	}
	if stalled.post(store.BatchPut{Key: "k/over"}) || len(stalled.queue) != maxPosted {
		t.Fatalf("a post past %d queued writes was queued (%d queued)", maxPosted, len(stalled.queue))
	}

	f := startHub(t, Config{})
	w := newWriter(f.st)
	if !w.post(store.BatchPut{Key: "posted/one", Value: []byte("v")}) {
		t.Fatal("post to an idle writer refused")
	}
	waitFor(t, "the posted write stored", func() bool {
		resp, err := f.st.Client().Get(context.Background(), f.st.Key("posted/one"))
		return err == nil && len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == "v"
	})
}
