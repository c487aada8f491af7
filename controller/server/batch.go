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
	return &writer{st: st, slots: make(chan struct{}, writersInFlight)}
}

// putProto stores m under the relative key rel, and returns once the
// transaction carrying it has committed, failed, or ctx ended.
func (w *writer) putProto(ctx context.Context, rel string, m proto.Message) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
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

// drain sends the queue to etcd in transactions until it is empty.
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

// takeLocked takes the longest prefix of the queue that fits one
// transaction and writes no key twice (a later write of a key goes in a
// later transaction, so writes of one key stay in order).
func (w *writer) takeLocked() []*writeReq {
	n := min(len(w.queue), store.MaxBatchOps)
	seen := make(map[string]bool, n)
	for i := range n {
		k := w.queue[i].put.Key
		if seen[k] {
			n = i
			break
		}
		seen[k] = true
	}
	batch := w.queue[:n:n]
	w.queue = w.queue[n:]
	if len(w.queue) == 0 {
		w.queue = nil
	}
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
	for _, r := range batch {
		r.done <- writeResult{rev: rev, err: err}
	}
}
