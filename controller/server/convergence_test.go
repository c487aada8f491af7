package server

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// rawAgent is one Sync stream driven by the test: it says the given
// hello and hands over every answer; the test decides what to send back.
type rawAgent struct {
	stream pb.AgentService_SyncClient
	in     chan *pb.SyncResponse
	cancel context.CancelFunc
	done   chan struct{}
}

func (f *hubFixture) open(t *testing.T, hello *pb.Hello) *rawAgent {
	t.Helper()
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := pb.NewAgentServiceClient(conn).Sync(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	a := &rawAgent{stream: stream, in: make(chan *pb.SyncResponse, 16), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		defer conn.Close()
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			a.in <- resp
		}
	}()
	if err := stream.Send(&pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop)
	return a
}

func (a *rawAgent) stop() { a.cancel(); <-a.done }

// next returns the stream's next answer.
func (a *rawAgent) next(t *testing.T, what string) *pb.SyncResponse {
	t.Helper()
	select {
	case r := <-a.in:
		return r
	case <-a.done:
		// An answer sent just before the stream ended is still there.
		select {
		case r := <-a.in:
			return r
		default:
		}
		t.Fatalf("stream ended before %s", what)
	case <-time.After(20 * time.Second):
		t.Fatalf("no %s within 20s", what)
	}
	return nil
}

func (a *rawAgent) nack(t *testing.T, d *pb.Desired, msg string) {
	t.Helper()
	err := a.stream.Send(&pb.SyncRequest{Message: &pb.SyncRequest_Nack{Nack: &pb.Nack{Version: d.GetVersion(), Nonce: d.GetNonce(), Hash: d.GetHash(),
		Errors: []*pb.ItemError{{Item: "agent-state", Message: msg}}}}})
	if err != nil {
		t.Fatal(err)
	}
}

// waitState waits until the host's stored state satisfies ok.
func (f *hubFixture) waitState(t *testing.T, host, what string, ok func(*pb.Host) bool) *pb.Host {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := &pb.Host{}
		if _, err := f.st.GetProto(context.Background(), store.HostStateKey(host), st); err != nil {
			t.Fatal(err)
		}
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("host %s: no %s within 20s; state %v", host, what, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func nackOf(d *pb.Desired) func(*pb.Host) bool {
	return func(h *pb.Host) bool {
		lr := h.GetLastResult()
		return lr.GetKind() == pb.ResultKind_RESULT_KIND_NACK && lr.GetVersion() == d.GetVersion()
	}
}

// A NACK stops re-pushes within its stream only: the agent reconnecting
// (fixed and restarted) is sent the configuration again, and `host retry`
// sends it again on the same stream.
func TestNackIsNotFinalForever(t *testing.T) {
	f := startHub(t, Config{Secrets: fakeSecrets{}})
	const host = "ex01.contoso.com"
	a := f.open(t, &pb.Hello{Host: host})
	d := a.next(t, "first push").GetDesired()
	if d == nil {
		t.Fatal("first answer is not a push")
	}
	a.nack(t, d, "write /var/lib/s2s-agent/.state.json.tmp-123: read-only file system")
	f.waitState(t, host, "stored NACK", nackOf(d))
	// Within the stream the NACKed configuration is not pushed again
	// (a push here would send on the nil stream and panic).
	f.hub.mu.Lock()
	c := f.hub.conns[host]
	f.hub.mu.Unlock()
	if pushed, err := NewAgentService(f.hub, 0, true).maybePush(context.Background(), nil, c); pushed || err != nil {
		t.Fatalf("maybePush after a NACK on the same stream = %v, %v; want nothing pushed", pushed, err)
	}

	// Explicit retry on the same stream.
	fleet := NewFleetService(f.hub)
	resp, err := fleet.RetryHost(context.Background(), &pb.RetryHostRequest{Host: host})
	if err != nil || resp.GetVersion() != d.GetVersion() || resp.GetUpToDate() {
		t.Fatalf("RetryHost = %v, %v; want version %d sent again", resp, err, d.GetVersion())
	}
	again := a.next(t, "push after retry").GetDesired()
	if again.GetVersion() != d.GetVersion() || again.GetHash() != d.GetHash() || again.GetNonce() == d.GetNonce() {
		t.Fatalf("after retry got %v; want version %d again under a new nonce", again, d.GetVersion())
	}
	a.nack(t, again, "still read-only")
	f.waitState(t, host, "second NACK", func(h *pb.Host) bool {
		return nackOf(d)(h) && len(h.GetLastResult().GetErrors()) == 1 && h.GetLastResult().GetErrors()[0].GetMessage() == "still read-only"
	})
	a.stop()

	// The agent was fixed and restarted: its new stream gets the push.
	b := f.open(t, &pb.Hello{Host: host})
	r := b.next(t, "answer to the reconnected agent")
	if r.GetDesired().GetVersion() != d.GetVersion() {
		t.Fatalf("a reconnecting agent whose NACK is from an earlier stream was answered %v; want version %d pushed again", r, d.GetVersion())
	}

	// Bad input: a host outside the topology.
	// By resource name as by FQDN; a malformed name is refused by name.
	if _, err := fleet.RetryHost(context.Background(), &pb.RetryHostRequest{Name: "hosts/nope.contoso.com"}); status.Code(err) != codes.NotFound {
		t.Errorf("retry hosts/nope.contoso.com: %v, want NOT_FOUND", err)
	}
	if _, err := fleet.RetryHost(context.Background(), &pb.RetryHostRequest{Name: "nope.contoso.com"}); status.Code(toStatus(err)) != codes.InvalidArgument || !strings.Contains(err.Error(), "nope.contoso.com") {
		t.Errorf("retry with a bare FQDN as name: %v, want INVALID_ARGUMENT naming it", err)
	}
	if _, err := fleet.RetryHost(context.Background(), &pb.RetryHostRequest{Host: "nope.contoso.com"}); status.Code(err) != codes.NotFound {
		t.Errorf("RetryHost(unknown host) err = %v; want NOT_FOUND", err)
	}
	if _, err := fleet.RetryHost(context.Background(), &pb.RetryHostRequest{Host: "sp01.contoso.com"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("RetryHost(disconnected host) err = %v; want FAILED_PRECONDITION", err)
	}
}

// An ACK lost with the controller is recovered from the Hello: the agent
// reports the desired (version, hash) as applied and verified.
func TestLostAckRecoveredFromHello(t *testing.T) {
	f := startHub(t, Config{Secrets: fakeSecrets{}})
	const host = "ex01.contoso.com"
	a := f.open(t, &pb.Hello{Host: host})
	d := a.next(t, "first push").GetDesired()
	// The agent applies it, but its ACK never reaches the store.
	a.stop()

	b := f.open(t, &pb.Hello{Host: host, AppliedVersion: d.GetVersion(), AppliedHash: d.GetHash()})
	if r := b.next(t, "answer to the reconnected agent"); r.GetUpToDate() == nil {
		t.Fatalf("an agent that has the desired state was answered %v; want up to date", r)
	}
	st := f.waitState(t, host, "any state", func(*pb.Host) bool { return true })
	lr := st.GetLastResult()
	if lr.GetKind() != pb.ResultKind_RESULT_KIND_ACK || lr.GetVersion() != d.GetVersion() || lr.GetHash() != d.GetHash() || st.GetAppliedVersion() != d.GetVersion() {
		t.Fatalf("stored state %v; want applied %d and its ACK recorded", st, d.GetVersion())
	}

	// An agent reporting an older state is not taken as having ACKed.
	b.stop()
	c := f.open(t, &pb.Hello{Host: "ex02.contoso.com", AppliedVersion: d.GetVersion() - 1, AppliedHash: "old"})
	if r := c.next(t, "answer to ex02"); r.GetDesired() == nil {
		t.Fatalf("ex02 with an old state was answered %v; want a push", r)
	}
	if st := f.waitState(t, "ex02.contoso.com", "any state", func(*pb.Host) bool { return true }); st.GetLastResult() != nil {
		t.Fatalf("ex02's state %v; want no ACK recorded", st)
	}
}

// Killing the primary's agent does not move the primary at once: it keeps
// its role for the grace period, and no host is re-sent anything.
func TestPrimaryGraceHonouredOnKill(t *testing.T) {
	f := startHub(t, Config{Secrets: fakeSecrets{}, PrimaryGrace: time.Hour})
	// A second replica on the same etcd, with no agent of its own: it
	// learns of fe01's end from the presence watch only.
	replica := NewHub(Config{Store: f.st, Logger: slog.New(slog.DiscardHandler), PrimaryGrace: time.Hour})
	rctx, rcancel := context.WithCancel(context.Background())
	replicaDone := make(chan error, 1)
	go func() { replicaDone <- replica.Run(rctx) }()
	t.Cleanup(func() { rcancel(); <-replicaDone })
	fe01 := f.connect(t, "fe01.contoso.com")
	fe01.waitPush(t, "to fe01 as the primary", primaryIs(true))
	fe02 := f.connect(t, "fe02.contoso.com")
	fe02.waitPush(t, "to fe02 as a secondary", primaryIs(false))
	// The other replica learns the election from etcd, through its own
	// watch of the primary keys: only what it knew can it keep.
	eventually(t, "the other replica to learn fe01 is pool01's primary", func() (bool, string) {
		p := replica.snapshot().primaries["pool01"]
		return p == "fe01.contoso.com", fmt.Sprintf("it has %q", p)
	})

	fe01.stop()
	ctx := context.Background()
	cli := f.st.Client()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := cli.Get(ctx, f.st.Key("presence/fe01.contoso.com"))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("fe01's presence key outlived its stream")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A barrier: once the hub has seen this presence key, it has handled
	// every earlier presence event, fe01's deletion included.
	if _, err := cli.Put(ctx, f.st.Key("presence/barrier.contoso.com"), "test"); err != nil {
		t.Fatal(err)
	}
	for !f.hub.snapshot().present["barrier.contoso.com"] || !replica.snapshot().present["barrier.contoso.com"] {
		if time.Now().After(deadline) {
			t.Fatal("the hub never saw the barrier presence key")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p := f.hub.snapshot().primaries["pool01"]; p != "fe01.contoso.com" {
		t.Fatalf("pool01's primary is %q right after fe01's agent was killed; want fe01 kept for the grace period", p)
	}
	if p := replica.snapshot().primaries["pool01"]; p != "fe01.contoso.com" {
		t.Fatalf("the other replica has pool01's primary as %q right after fe01's agent was killed; want fe01 kept for the grace period", p)
	}
	prim, err := f.st.Primaries(ctx)
	if err != nil || prim["pool01"] != "fe01.contoso.com" {
		t.Fatalf("stored primaries %v, %v; want fe01 kept", prim, err)
	}
	fe02.mu.Lock()
	n := len(fe02.pushes)
	fe02.mu.Unlock()
	if n != 1 {
		t.Fatalf("fe02 was pushed %d times; want once (nothing re-sent when the primary's agent dies)", n)
	}
}

// The fleet view shows how long a push has been pending, by the
// controller's clock.
func TestPendingAge(t *testing.T) {
	// The clock is a one-slot channel: reading takes and puts back.
	clock := make(chan time.Time, 1)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	clock <- t0
	now := func() time.Time { v := <-clock; clock <- v; return v }
	f := startHub(t, Config{Secrets: fakeSecrets{}, Now: now})
	a := f.open(t, &pb.Hello{Host: "ex01.contoso.com"})
	d := a.next(t, "first push").GetDesired()
	<-clock
	clock <- t0.Add(90 * time.Second)
	resp, err := NewFleetService(f.hub).ListHosts(context.Background(), &pb.ListHostsRequest{Deployment: "exchange"})
	if err != nil {
		t.Fatal(err)
	}
	var ex01 *pb.Host
	for _, h := range resp.GetHosts() {
		if h.GetHost() == "ex01.contoso.com" {
			ex01 = h
		}
	}
	if ex01.GetPendingVersion() != d.GetVersion() || ex01.GetPendingMs() != 90000 || !ex01.GetPendingSince().AsTime().Equal(t0) {
		t.Fatalf("ex01 = %v; want version %d pending since %s for 90s", ex01, d.GetVersion(), t0)
	}
	if ex01.GetDesiredSequence() != 1 {
		t.Errorf("ex01's desired sequence = %d; want 1", ex01.GetDesiredSequence())
	}
	for _, h := range resp.GetHosts() {
		if h.GetHost() != "ex01.contoso.com" && (h.GetPendingVersion() != 0 || h.GetPendingSince() != nil) {
			t.Errorf("%s shows a pending push without a stream: %v", h.GetHost(), h)
		}
	}
	// Once answered, nothing is pending.
	if err := a.stream.Send(&pb.SyncRequest{Message: &pb.SyncRequest_Ack{Ack: &pb.Ack{Version: d.GetVersion(), Nonce: d.GetNonce(), Hash: d.GetHash()}}}); err != nil {
		t.Fatal(err)
	}
	f.waitState(t, "ex01.contoso.com", "ACK", func(h *pb.Host) bool { return h.GetLastResult().GetKind() == pb.ResultKind_RESULT_KIND_ACK })
	resp, err = NewFleetService(f.hub).ListHosts(context.Background(), &pb.ListHostsRequest{Deployment: "exchange"})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range resp.GetHosts() {
		if h.GetHost() == "ex01.contoso.com" && (h.GetPendingVersion() != 0 || h.GetAppliedSequence() != 1) {
			t.Errorf("after the ACK ex01 = %v; want nothing pending, applied sequence 1", h)
		}
	}
}
