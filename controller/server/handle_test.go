package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// A topology revision that arrives while etcd does not answer is not made
// current without the rollout it was stored with (which would release it
// to every host at once), and the hub's loop is not held by the read: the
// batch fails within the caller's deadline, and the loop loads its state
// again from a consistent snapshot once etcd is back.
func TestTopologyEventWhileEtcdIsDown(t *testing.T) {
	t.Parallel()
	f := startFleet(t, nil)
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
	resp, err := f.st.Client().Get(callCtx(t), f.st.Key("topology/current"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read the current topology: %v (%d keys)", err, len(resp.Kvs))
	}
	f.stopEtcd()
	// The same document as a newer revision: what the watch would deliver.
	next := int64(cur) + 100
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.hub.handle(ctx, []any{topologyEvent{value: resp.Kvs[0].Value, rev: next}}) }()
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("handling a topology revision waits on etcd past its deadline")
	}
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("revision %d", next)) {
		t.Fatalf("handling revision %d with etcd down: %v, want an error naming it", next, err)
	}
	if c := f.hub.currentCompiled(); c == nil || c.revision != cur {
		t.Fatalf("the hub made another revision current (%v) without reading its rollout, want %d kept", c, cur)
	}
}
