package server

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Reads queued together, more than one transaction holds, each get their
// own key's value as stored, or none for a key that does not exist.
func TestReaderAnswersEveryReadWithItsKey(t *testing.T) {
	ctx := context.Background()
	f := startHub(t, Config{})
	const n = 3*store.MaxBatchOps + 7
	var puts []store.BatchPut
	for i := range n {
		if i%3 == 0 {
			continue // never stored
		}
		b, err := storeEncoding.Marshal(&pb.Host{Host: fmt.Sprintf("h%03d.contoso.com", i), AgentVersion: fmt.Sprintf("v%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		puts = append(puts, store.BatchPut{Key: store.HostStateKey(fmt.Sprintf("h%03d.contoso.com", i)), Value: b})
	}
	for len(puts) > 0 {
		k := min(len(puts), store.MaxBatchOps)
		if _, err := f.st.PutBatch(ctx, puts[:k]); err != nil {
			t.Fatal(err)
		}
		puts = puts[k:]
	}
	r := newReader(f.st)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			host := fmt.Sprintf("h%03d.contoso.com", i)
			got := &pb.Host{}
			found, err := r.getProto(ctx, store.HostStateKey(host), got)
			switch {
			case err != nil:
				errs <- fmt.Errorf("%s: %w", host, err)
			case found != (i%3 != 0):
				errs <- fmt.Errorf("%s: found %v, want %v", host, found, i%3 != 0)
			case found && (got.GetHost() != host || got.GetAgentVersion() != fmt.Sprintf("v%d", i)):
				errs <- fmt.Errorf("%s: read %v, the state of another key", host, got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
