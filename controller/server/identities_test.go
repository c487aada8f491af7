package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/big"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/controller/store"
)

// A fleet reconnecting at once (a controller restart) records its hosts'
// identities in a few transactions, store.MaxBatchOps records each, and
// no stream waits for them: seen only queues.
func TestSeenRecordsIdentitiesInBatches(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := etcdembed.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := store.New(cli, "")
	ids, rev, err := NewIdentities(ctx, st, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	const hosts = 300
	notAfter := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	before := time.Now()
	for i := range hosts {
		ids.seen(fmt.Sprintf("ex%03d.contoso.com", i), &x509.Certificate{SerialNumber: big.NewInt(int64(i + 1)), NotAfter: notAfter})
	}
	start, err := cli.Get(ctx, "nothing")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cli.Get(ctx, st.Key("identities/"), clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || got.Count != 0 {
		t.Fatalf("records written before the flush loop runs: %v, %v", got.Count, err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ids.Run(runCtx, rev) }()
	defer func() {
		stop()
		<-done
	}()
	deadline := time.Now().Add(30 * time.Second)
	var got *clientv3.GetResponse
	for {
		if got, err = cli.Get(ctx, st.Key("identities/"), clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
		if len(got.Kvs) == hosts {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d identity records written after 30s", len(got.Kvs), hosts)
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	want := int64((hosts + store.MaxBatchOps - 1) / store.MaxBatchOps)
	if txns := got.Header.Revision - start.Header.Revision; txns != want {
		t.Errorf("%d records took %d transactions, want %d", hosts, txns, want)
	}
	for _, kv := range got.Kvs {
		var rec identityRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			t.Fatalf("%s: %v", kv.Key, err)
		}
		if rec.Serial == "" || !rec.NotAfter.Equal(notAfter) || rec.LastSeen.Before(before.Add(-time.Second)) {
			t.Errorf("%s: %+v", kv.Key, rec)
		}
	}
	// Seen again with the same certificate within seenEvery: no write.
	ids.seen("ex000.contoso.com", &x509.Certificate{SerialNumber: big.NewInt(1), NotAfter: notAfter})
	ids.mu.Lock()
	queued := len(ids.pending)
	ids.mu.Unlock()
	if queued != 0 {
		t.Errorf("an unchanged identity seen again within %s was queued", seenEvery)
	}
}
