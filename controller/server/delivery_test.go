package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/controller/secrets"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/deploy/examples"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// fakeSecrets hands out a placeholder PFX for any name.
type fakeSecrets struct{}

func (fakeSecrets) SecretVersions(_ context.Context, refs []secrets.Ref) ([]*pb.SecretMaterial, error) {
	var out []*pb.SecretMaterial
	for _, r := range refs {
		out = append(out, &pb.SecretMaterial{Name: r.Name, Pfx: []byte("pfx of " + r.Name), Password: "pw"})
	}
	return out, nil
}

// testAgent is one host's Sync stream that acks every push and keeps them.
type testAgent struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	pushes []*pb.Desired
}

func (a *testAgent) stop() { a.cancel(); <-a.done }

// waitPush waits for a push satisfying want and returns it.
func (a *testAgent) waitPush(t *testing.T, what string, want func(*pb.Desired) bool) *pb.Desired {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		a.mu.Lock()
		for _, d := range a.pushes {
			if want(d) {
				a.mu.Unlock()
				return d
			}
		}
		n := len(a.pushes)
		a.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no push %s within 20s (%d pushes)", what, n)
		}
		select {
		case <-a.done:
			t.Fatalf("stream ended before a push %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// hubFixture is a hub on a real embedded etcd with the contoso example
// applied, serving Sync on loopback.
type hubFixture struct {
	addr string
	hub  *Hub
	st   *store.Store
}

func startHub(t testing.TB, cfg Config) *hubFixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := etcdembed.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	st := store.New(cli, "")
	if _, _, err := st.PutTopology(ctx, "contoso", examples.Contoso, "test", time.Now(), nil, nil); err != nil {
		t.Fatal(err)
	}
	cfg.Store, cfg.Logger = st, slog.New(slog.DiscardHandler)
	hub := NewHub(cfg)
	hubDone := make(chan error, 1)
	go func() { hubDone <- hub.Run(ctx) }()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterAgentServiceServer(gs, NewAgentService(hub, 0, true))
	serveDone := make(chan error, 1)
	go func() { serveDone <- gs.Serve(lis) }()
	t.Cleanup(func() {
		hub.Stopping()
		gs.Stop()
		<-serveDone
		cancel()
		<-hubDone
		cli.Close()
		srv.Close()
	})
	return &hubFixture{addr: lis.Addr().String(), hub: hub, st: st}
}

// connect opens host's Sync stream (the service trusts the hello's host
// name, as with --insecure) and acks every push.
func (f *hubFixture) connect(t *testing.T, host string) *testAgent {
	t.Helper()
	return f.connectHello(t, &pb.Hello{Host: host})
}

// connectHello is connect with the given Hello; an agent whose Hello says
// monitor answers every push as a monitor-mode agent does, with a monitor
// Nack.
func (f *hubFixture) connectHello(t *testing.T, hello *pb.Hello) *testAgent {
	t.Helper()
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &testAgent{cancel: cancel, done: make(chan struct{})}
	stream, err := pb.NewAgentServiceClient(conn).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(a.done)
		defer conn.Close()
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			d := resp.GetDesired()
			if d == nil {
				continue
			}
			a.mu.Lock()
			a.pushes = append(a.pushes, d)
			a.mu.Unlock()
			answer := &pb.SyncRequest{Message: &pb.SyncRequest_Ack{Ack: &pb.Ack{Version: d.GetVersion(), Nonce: d.GetNonce(), Hash: d.GetHash()}}}
			if hello.GetMonitor() {
				answer = &pb.SyncRequest{Message: &pb.SyncRequest_Nack{Nack: &pb.Nack{Version: d.GetVersion(), Nonce: d.GetNonce(), Hash: d.GetHash(), Monitor: true,
					Errors: []*pb.ItemError{{Item: "monitor", Message: "monitor mode: 3 operations planned, none applied"}}}}}
			}
			if err := stream.Send(answer); err != nil {
				return
			}
		}
	}()
	t.Cleanup(a.stop)
	return a
}

func primaryIs(want bool) func(*pb.Desired) bool {
	return func(d *pb.Desired) bool { return d.GetConfig().GetPrimary() == want }
}

// TestLyncIssuerDelivery checks which pushes carry the pool's token-issuer
// PFX: every Front End's by default (today's sim imports it on each), only
// the pool's primary's by default (DeliverLyncIssuerToEveryHost unset), as the CMS
// replicates what Import-CsCertificate -Identity Global imported once.
// When the primary moves, the new one gets the key material.
func TestLyncIssuerDelivery(t *testing.T) {
	for _, primaryOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("primary-only=%v", primaryOnly), func(t *testing.T) {
			f := startHub(t, Config{Secrets: fakeSecrets{}, DeliverLyncIssuerToEveryHost: !primaryOnly, PrimaryGrace: 100 * time.Millisecond, PresenceTTL: 5 * time.Second})
			fe01 := f.connect(t, "fe01.contoso.com")
			first := fe01.waitPush(t, "to fe01 as the pool's primary", primaryIs(true))
			fe02 := f.connect(t, "fe02.contoso.com")
			second := fe02.waitPush(t, "to fe02 as a secondary", primaryIs(false))
			ex01 := f.connect(t, "ex01.contoso.com")
			exchange := ex01.waitPush(t, "to ex01", func(*pb.Desired) bool { return true })

			if len(first.GetSecrets()) != 1 || first.GetSecrets()[0].GetName() != "oauth-2026" {
				t.Errorf("the primary's push carries secrets %v, want oauth-2026", first.GetSecrets())
			}
			if got := len(second.GetSecrets()) > 0; got == primaryOnly {
				t.Errorf("the secondary Front End's push carries key material: %v (primary only: %v)", got, primaryOnly)
			}
			if len(exchange.GetSecrets()) != 0 {
				t.Errorf("ex01's push carries key material it does not use: %v", exchange.GetSecrets())
			}

			// fe01 goes away: after the grace period fe02 is the primary
			// and must import the certificate itself.
			fe01.stop()
			promoted := fe02.waitPush(t, "to fe02 as the new primary", primaryIs(true))
			if len(promoted.GetSecrets()) != 1 {
				t.Errorf("the new primary's push carries secrets %v, want oauth-2026", promoted.GetSecrets())
			}
		})
	}
}
