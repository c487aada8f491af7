package server

import (
	"context"
	"fmt"
	"slices"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/store"
)

// writer merges the Sync streams' etcd writes (host state, status
// reports, presence) into transactions: a write waits until a transaction
// holding it has committed, and a transaction carries every write queued
// while the ones before it were in flight, up to store.MaxBatchOps. So
// 10,000 ACKs arriving within a second cost some dozens of transactions,
// not 10,000 round trips, and each caller still learns whether its own
// write was stored: an ACK counts as recorded only once it is in etcd, as
// with one write per ACK. A crash loses only writes not yet committed,
// which no caller had been told were stored; the agent's next Hello names
// what it applied and restores them (see Sync).
//
// The writer holds no goroutine while idle: the first write starts one,
// which ends once the queue is empty.
type writer struct {
	st *store.Store
	// slots bounds the transactions in flight.
	slots chan struct{}

	mu      sync.Mutex
	queue   []*writeReq
	running bool
	// inFlight are the keys of the transactions in flight: a key's next
	// write waits until its previous one has committed, so writes of one
	// key are stored in the order they were queued.
	inFlight map[string]bool
}

// writersInFlight is how many transactions the writer (and the reader)
// keeps in flight: enough to hide etcd's commit latency, few enough that
// batches fill. etcd commits the transactions in flight together (one
// raft entry batch, one WAL sync): with 4, a restart's 10,000 reconnecting
// streams queued behind their presence and state writes and the resync
// took 12–33 s on the 2-core machine; with 16, 12.1 s in each of 3 runs.
const writersInFlight = 16

type writeReq struct {
	put  store.BatchPut
	done chan writeResult // capacity 1
}

type writeResult struct {
	rev int64
	err error
}

func newWriter(st *store.Store) *writer {
	return &writer{st: st, slots: make(chan struct{}, writersInFlight), inFlight: map[string]bool{}}
}

// storeEncoding encodes what the Sync streams store: deterministic, so
// that equal messages have equal encodings (see persistState).
var storeEncoding = proto.MarshalOptions{Deterministic: true}

// putProto stores m under the relative key rel, and returns once the
// transaction carrying it has committed, failed, or ctx ended.
func (w *writer) putProto(ctx context.Context, rel string, m proto.Message) error {
	b, err := storeEncoding.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", rel, err)
	}
	_, err = w.put(ctx, store.BatchPut{Key: rel, Value: b})
	return err
}

// put queues p and waits for its transaction; it returns the revision the
// transaction stored p at.
func (w *writer) put(ctx context.Context, p store.BatchPut) (int64, error) {
	r := &writeReq{put: p, done: make(chan writeResult, 1)}
	w.mu.Lock()
	w.enqueueLocked(r)
	w.mu.Unlock()
	select {
	case res := <-r.done:
		return res.rev, res.err
	case <-ctx.Done():
		// As with a single write that timed out, it may still be stored.
		return 0, fmt.Errorf("write %s: %w", p.Key, ctx.Err())
	}
}

// maxPosted bounds the queue post adds to: past it a best-effort write
// is dropped rather than queued behind a store that does not keep up.
const maxPosted = 4 * store.MaxBatchOps * writersInFlight

// post queues p in the writer's next transaction and returns at once,
// for a write nothing waits on (a best-effort record); queued is false,
// and nothing was queued, when the queue is already past maxPosted. An
// error storing it is not reported.
func (w *writer) post(p store.BatchPut) (queued bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queue) >= maxPosted {
		return false
	}
	w.enqueueLocked(&writeReq{put: p, done: make(chan writeResult, 1)})
	return true
}

// enqueueLocked queues r, starting drain if it is not running.
func (w *writer) enqueueLocked(r *writeReq) {
	w.queue = append(w.queue, r)
	if !w.running {
		w.running = true
		go w.drain()
	}
}

// drain sends the queue to etcd in transactions until it is empty, or
// what is left waits for keys in flight (their commit starts drain again).
func (w *writer) drain() {
	for {
		w.slots <- struct{}{}
		w.mu.Lock()
		batch := w.takeLocked()
		if len(batch) == 0 {
			w.running = false
			w.mu.Unlock()
			<-w.slots
			return
		}
		w.mu.Unlock()
		go func() {
			defer func() { <-w.slots }()
			w.commit(batch)
		}()
	}
}

// takeLocked takes, in queue order, up to store.MaxBatchOps writes for
// one transaction (store.MaxBatchOpsWithDelete with a conditional delete):
// no key twice, and no key in flight or queued earlier and not taken (a
// later write of a key goes in a later transaction, after the earlier one
// has committed). It marks the keys taken in flight.
//
// It looks no further than the transaction's last write: the writes after
// it stay queued in order, so taking a batch costs its size (and the keys
// held back before it), not the queue's length — 10,000 queued ACKs are
// taken in some 80 batches, not scanned 80 times.
func (w *writer) takeLocked() []*writeReq {
	var batch []*writeReq
	var held map[string]bool // keys left in the queue
	rest := w.queue[:0]
	i := 0
	limit := store.MaxBatchOps
	for ; i < len(w.queue) && len(batch) < limit; i++ {
		r := w.queue[i]
		k := r.put.Key
		if w.inFlight[k] || held[k] {
			if held == nil {
				held = map[string]bool{}
			}
			held[k] = true
			rest = append(rest, r)
			continue
		}
		if r.put.DeleteAt != 0 {
			// It waits for the next batch if this one is full without it.
			if limit = store.MaxBatchOpsWithDelete; len(batch) >= limit {
				break
			}
		}
		w.inFlight[k] = true
		batch = append(batch, r)
	}
	rest = append(rest, w.queue[i:]...)
	clear(w.queue[len(rest):])
	w.queue = rest
	return batch
}

func (w *writer) commit(batch []*writeReq) {
	puts := make([]store.BatchPut, len(batch))
	for i, r := range batch {
		puts[i] = r.put
	}
	ctx, cancel := storeCtx(context.Background())
	rev, err := w.st.PutBatch(ctx, puts)
	cancel()
	w.mu.Lock()
	for _, r := range batch {
		delete(w.inFlight, r.put.Key)
	}
	if len(w.queue) > 0 && !w.running {
		// Writes held back for these keys may go now.
		w.running = true
		go w.drain()
	}
	w.mu.Unlock()
	for _, r := range batch {
		r.done <- writeResult{rev: rev, err: err}
	}
}

// reader merges the Sync streams' reads of single keys (a host's state,
// read as its stream opens) into transactions, as writer does their
// writes: a read waits until a transaction holding it has answered, and
// a transaction carries every read queued while the ones before it were
// in flight, up to store.MaxBatchOps. A transaction of reads is one
// linearizable read, as each of them alone was. Like the writer it holds
// no goroutine while idle.
type reader struct {
	st    *store.Store
	slots chan struct{}

	mu      sync.Mutex
	queue   []*readReq
	running bool
}

type readReq struct {
	key  string
	done chan readResult // capacity 1
}

type readResult struct {
	value []byte // nil when the key does not exist
	err   error
}

func newReader(st *store.Store) *reader {
	return &reader{st: st, slots: make(chan struct{}, writersInFlight)}
}

// getProto reads the relative key rel into m; found says whether it exists.
func (r *reader) getProto(ctx context.Context, rel string, m proto.Message) (found bool, err error) {
	b, err := r.get(ctx, rel)
	if err != nil || b == nil {
		return false, err
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return false, fmt.Errorf("decode %s: %w", rel, err)
	}
	return true, nil
}

// get queues a read of rel and waits for its transaction: the value, nil
// when there is none.
func (r *reader) get(ctx context.Context, rel string) ([]byte, error) {
	q := &readReq{key: rel, done: make(chan readResult, 1)}
	r.mu.Lock()
	r.queue = append(r.queue, q)
	if !r.running {
		r.running = true
		go r.drain()
	}
	r.mu.Unlock()
	select {
	case res := <-q.done:
		return res.value, res.err
	case <-ctx.Done():
		return nil, fmt.Errorf("read %s: %w", rel, ctx.Err())
	}
}

// drain reads the queue in transactions until it is empty.
func (r *reader) drain() {
	for {
		r.slots <- struct{}{}
		r.mu.Lock()
		n := min(len(r.queue), store.MaxBatchOps)
		if n == 0 {
			r.running = false
			r.mu.Unlock()
			<-r.slots
			return
		}
		batch := slices.Clone(r.queue[:n])
		clear(r.queue[:n])
		r.queue = r.queue[n:]
		r.mu.Unlock()
		go func() {
			defer func() { <-r.slots }()
			r.read(batch)
		}()
	}
}

func (r *reader) read(batch []*readReq) {
	ops := make([]clientv3.Op, len(batch))
	for i, q := range batch {
		ops[i] = clientv3.OpGet(r.st.Key(q.key))
	}
	ctx, cancel := storeCtx(context.Background())
	resp, err := r.st.Client().Txn(ctx).Then(ops...).Commit()
	cancel()
	for i, q := range batch {
		var res readResult
		switch {
		case err != nil:
			res.err = fmt.Errorf("read %s: %w", q.key, err)
		case len(resp.Responses) != len(batch):
			res.err = fmt.Errorf("read %s: %d answers to %d reads", q.key, len(resp.Responses), len(batch))
		default:
			if kvs := resp.Responses[i].GetResponseRange().GetKvs(); len(kvs) > 0 {
				res.value = kvs[0].Value
			}
		}
		q.done <- res
	}
}
