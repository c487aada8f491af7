package server

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Streams that end together clear their presence in shared transactions,
// each only its own: fewer transactions than hosts, and every key gone.
func TestStreamsEndingTogetherClearPresenceInSharedTransactions(t *testing.T) {
	f := startHub(t, Config{Secrets: fakeSecrets{}})
	const n = 200
	agents := make([]*rawAgent, n)
	for i := range agents {
		agents[i] = f.open(t, &pb.Hello{Host: fmt.Sprintf("h%03d.contoso.com", i)})
	}
	for i, a := range agents {
		a.next(t, fmt.Sprintf("first answer to h%03d", i))
	}
	ctx := context.Background()
	resp, err := f.st.Client().Get(ctx, f.st.PresencePrefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != n {
		t.Fatalf("%d presence keys with %d streams open, want %d", len(resp.Kvs), n, n)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	deletes := f.st.Client().Watch(wctx, f.st.PresencePrefix(), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))

	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Go(a.cancel)
	}
	wg.Wait()
	revs := map[int64]bool{}
	gone := 0
	for gone < n {
		var wr clientv3.WatchResponse
		var ok bool
		select {
		case wr, ok = <-deletes:
		case <-time.After(20 * time.Second):
			got, err := f.st.Present(ctx)
			t.Fatalf("%d of %d presence keys cleared after 20s; present: %d %v", gone, n, len(got), err)
		}
		if !ok || wr.Err() != nil {
			t.Fatalf("watch of the presence keys ended with %d of %d cleared: %v", gone, n, wr.Err())
		}
		for _, ev := range wr.Events {
			if ev.Type != clientv3.EventTypeDelete {
				t.Fatalf("presence key %s written after its stream ended", ev.Kv.Key)
			}
			gone++
			revs[ev.Kv.ModRevision] = true
		}
	}
	if len(revs) >= n {
		t.Errorf("%d presence keys cleared in %d transactions; want them to share transactions", n, len(revs))
	}
	if got, err := f.st.Present(ctx); err != nil || len(got) != 0 {
		t.Errorf("presence after every stream ended: %v, %v; want none", got, err)
	}
}
