package app

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// serveGated serves a health server on a loopback listener once waitServe
// lets it, as Serve does; it returns the address and waitServe's answer.
func serveGated(t *testing.T, ctx context.Context, ready, failed <-chan struct{}, wait time.Duration) (string, <-chan bool) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	served := make(chan bool, 1)
	go func() {
		ok := waitServe(ctx, ready, failed, wait)
		served <- ok
		if ok {
			_ = gs.Serve(lis)
		}
	}()
	t.Cleanup(func() { gs.Stop(); lis.Close() })
	return lis.Addr().String(), served
}

func check(t *testing.T, addr string, timeout time.Duration) error {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	return err
}

// A controller still loading its state leaves connections unserved (they
// wait in the listen backlog, costing no handshake), and serves them once
// the state is loaded.
func TestServeWaitsForTheState(t *testing.T) {
	ready := make(chan struct{})
	addr, served := serveGated(t, context.Background(), ready, nil, time.Hour)
	if err := check(t, addr, 300*time.Millisecond); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a call before the state is loaded: %v, want it left waiting (DeadlineExceeded)", err)
	}
	close(ready)
	if !<-served {
		t.Fatal("waitServe: false after ready")
	}
	if err := check(t, addr, 30*time.Second); err != nil {
		t.Fatalf("a call once the state is loaded: %v", err)
	}
}

// A load that fails serves at once (an operator's defragment must reach a
// controller whose store is full), and so does one slower than the bound.
func TestServeWhenTheLoadFailsOrTakesTooLong(t *testing.T) {
	failed := make(chan struct{})
	close(failed)
	addr, served := serveGated(t, context.Background(), nil, failed, time.Hour)
	if !<-served {
		t.Fatal("waitServe: false after the load failed")
	}
	if err := check(t, addr, 30*time.Second); err != nil {
		t.Fatalf("a call after the load failed: %v", err)
	}
	addr, served = serveGated(t, context.Background(), nil, nil, time.Millisecond)
	if !<-served {
		t.Fatal("waitServe: false after its bound")
	}
	if err := check(t, addr, 30*time.Second); err != nil {
		t.Fatalf("a call after the bound: %v", err)
	}
}

// A controller stopped while loading never serves.
func TestServeNotWhenStoppedWhileLoading(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	_, served := serveGated(t, ctx, nil, nil, time.Hour)
	cancel()
	if <-served {
		t.Fatal("waitServe: true after its context ended")
	}
}
