package server

import (
	"context"
	"fmt"
	"sync"

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

// writersInFlight is how many transactions the writer keeps in flight:
// enough to hide etcd's commit latency, few enough that batches fill.
const writersInFlight = 4

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
	w.queue = append(w.queue, r)
	if !w.running {
		w.running = true
		go w.drain()
	}
	w.mu.Unlock()
	select {
	case res := <-r.done:
		return res.rev, res.err
	case <-ctx.Done():
		// As with a single write that timed out, it may still be stored.
		return 0, fmt.Errorf("write %s: %w", p.Key, ctx.Err())
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
// one transaction: no key twice, and no key in flight or queued earlier
// and not taken (a later write of a key goes in a later transaction, after
// the earlier one has committed). It marks the keys taken in flight.
func (w *writer) takeLocked() []*writeReq {
	var batch []*writeReq
	var held map[string]bool // keys left in the queue
	rest := w.queue[:0]
	for _, r := range w.queue {
		k := r.put.Key
		if len(batch) == store.MaxBatchOps || w.inFlight[k] || held[k] {
			if held == nil {
				held = map[string]bool{}
			}
			held[k] = true
			rest = append(rest, r)
			continue
		}
		w.inFlight[k] = true
		batch = append(batch, r)
	}
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
