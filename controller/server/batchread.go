package server

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/store"
)

// reader merges the Sync streams' reads of their host state into
// transactions, as writer merges their writes: a read waits for a
// transaction that was sent after it was queued (so it sees every write
// committed before), and a transaction carries every read queued while
// the ones before it were in flight, up to store.MaxBatchOps. A fleet
// reconnecting at once after a restart then costs some dozens of reads,
// not one round trip per stream, each waiting behind the others.
//
// The reader holds no goroutine while idle.
type reader struct {
	st    *store.Store
	slots chan struct{} // bounds the transactions in flight

	mu      sync.Mutex
	queue   []*readReq
	running bool
}

type readReq struct {
	key  string
	done chan readResult // capacity 1
}

type readResult struct {
	val []byte // nil: no such key
	err error
}

func newReader(st *store.Store) *reader {
	return &reader{st: st, slots: make(chan struct{}, writersInFlight)}
}

// getProto reads the relative key rel into m; found is false when there
// is no such key.
func (r *reader) getProto(ctx context.Context, rel string, m proto.Message) (found bool, err error) {
	q := &readReq{key: rel, done: make(chan readResult, 1)}
	r.mu.Lock()
	r.queue = append(r.queue, q)
	if !r.running {
		r.running = true
		go r.drain()
	}
	r.mu.Unlock()
	var res readResult
	select {
	case res = <-q.done:
	case <-ctx.Done():
		return false, fmt.Errorf("read %s: %w", rel, ctx.Err())
	}
	if res.err != nil || res.val == nil {
		return false, res.err
	}
	if err := proto.Unmarshal(res.val, m); err != nil {
		return false, fmt.Errorf("decode %s: %w", rel, err)
	}
	return true, nil
}

// drain sends the queue to etcd in transactions until it is empty.
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
		batch := make([]*readReq, n)
		copy(batch, r.queue)
		rest := copy(r.queue, r.queue[n:])
		clear(r.queue[rest:])
		r.queue = r.queue[:rest]
		r.mu.Unlock()
		go func() {
			defer func() { <-r.slots }()
			r.read(batch)
		}()
	}
}

func (r *reader) read(batch []*readReq) {
	keys := make([]string, len(batch))
	for i, q := range batch {
		keys[i] = q.key
	}
	ctx, cancel := storeCtx(context.Background())
	vals, err := r.st.GetBatch(ctx, keys)
	cancel()
	for i, q := range batch {
		if err != nil {
			q.done <- readResult{err: err}
			continue
		}
		q.done <- readResult{val: vals[i]}
	}
}
