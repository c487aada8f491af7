package server

import (
	"context"
	"log/slog"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/controller/store"
)

// A hub whose state cannot be loaded says so (LoadFailed), and is not
// Ready: the controller serves its admin calls then, without waiting.
func TestLoadFailedWhenTheStateCannotBeLoaded(t *testing.T) {
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
	// A current topology that is no stored record.
	if _, err := cli.Put(ctx, st.Key("topology/current"), "not a topology record"); err != nil {
		t.Fatal(err)
	}
	hub := NewHub(Config{Store: st, Logger: slog.New(slog.DiscardHandler)})
	done := make(chan error, 1)
	go func() { done <- hub.Run(ctx) }()
	select {
	case <-hub.LoadFailed():
	case <-hub.Ready():
		t.Fatal("Ready with an unreadable current topology")
	case <-time.After(30 * time.Second):
		t.Fatal("LoadFailed not closed within 30s of a failing load")
	}
	select {
	case <-hub.Ready():
		t.Fatal("Ready with an unreadable current topology")
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A hub that loads its state is Ready and has not failed.
func TestLoadFailedNotWhenLoaded(t *testing.T) {
	f := startHub(t, Config{})
	select {
	case <-f.hub.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("not Ready within 30s")
	}
	select {
	case <-f.hub.LoadFailed():
		t.Fatal("LoadFailed after a load that succeeded")
	default:
	}
}
