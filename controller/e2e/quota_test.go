package e2e

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/server"
	"github.com/s2strust/s2strust/deploy/examples"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// The acceptance figures are 30 s of flooding and 1,000 silent
// streams; the defaults keep the tests fast while showing the mechanism.
var (
	floodFor     = flag.Duration("quota-flood", 2*time.Second, "how long TestAFloodingAgentCannotStarveTheFleet floods")
	silentStream = flag.Int("quota-silent-streams", 200, "how many streams TestStreamsThatNeverSayHelloAreClosed opens")
)

// rawAgent is a gRPC connection with an agent identity and no agent logic:
// the hostile agent of these tests.
func rawAgent(t *testing.T, c *controller, host string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(c.hostTLS(host))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func hello(host string) *pb.SyncRequest {
	return &pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: &pb.Hello{Host: host, AgentVersion: "hostile", Driver: "none"}}}
}

func report(i int) *pb.SyncRequest {
	// Each report differs from the last, so each would be written.
	return &pb.SyncRequest{Message: &pb.SyncRequest_Status{Status: &pb.StatusReport{
		Clock: timestamppb.New(time.Now().Add(time.Duration(i%2) * time.Hour)),
		Items: []*pb.ItemStatus{{Item: "flood", State: pb.ItemState_ITEM_STATE_OK, Message: fmt.Sprintf("report %d", i)}}}}}
}

// countWrites counts the etcd events under /s2strust/ whose key holds one
// of the needles, from revision from+1 until ctx ends.
func countWrites(ctx context.Context, cli *clientv3.Client, from int64, needles ...string) *atomic.Int64 {
	n := &atomic.Int64{}
	wc := cli.Watch(ctx, "/s2strust/", clientv3.WithPrefix(), clientv3.WithRev(from+1))
	go func() {
		for wr := range wc {
			for _, ev := range wr.Events {
				for _, s := range needles {
					if strings.Contains(string(ev.Kv.Key), s) {
						n.Add(1)
					}
				}
			}
		}
	}()
	return n
}

func TestAFloodingAgentCannotStarveTheFleet(t *testing.T) {
	lim := server.AgentLimits{ReportsPerSecond: 5, ReportBurst: 5, HellosPerSecond: 2, HelloBurst: 3}
	f := startFleetWith(t, examples.Contoso, agentOpts{}, func(c *app.ServeConfig) { c.AgentLimits = lim })
	ctx := context.Background()
	rev1 := f.apply(examples.Contoso)
	f.waitConverged(rev1)

	cli := f.c.etcd()
	defer cli.Close()
	start, err := cli.Get(ctx, "/s2strust/none")
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	reporterWrites := countWrites(wctx, cli, start.Header.Revision, "/rogue-reports.contoso.com")
	helloWrites := countWrites(wctx, cli, start.Header.Revision, "/rogue-hellos.contoso.com")

	fctx, stopFlood := context.WithCancel(ctx)
	defer stopFlood()
	began := time.Now()
	var wg sync.WaitGroup
	var sent, opened, refused atomic.Int64
	var last atomic.Int64
	var stopReports atomic.Bool
	// One agent sends reports as fast as the stream takes them.
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn := rawAgent(t, f.c, "rogue-reports.contoso.com")
		stream, err := pb.NewAgentServiceClient(conn).Sync(fctx)
		if err != nil {
			t.Error(err)
			return
		}
		if err := stream.Send(hello("rogue-reports.contoso.com")); err != nil {
			t.Error(err)
			return
		}
		i := 0
		for ; !stopReports.Load(); i++ {
			if err := stream.Send(report(i)); err != nil {
				t.Errorf("report stream failed: %v", err)
				return
			}
			sent.Add(1)
		}
		// The stream stays open: the last report waits for its budget.
		last.Store(int64(i))
		if err := stream.Send(report(i)); err != nil {
			t.Errorf("report stream failed: %v", err)
		}
		<-fctx.Done()
	}()
	// Another opens streams as fast as the controller answers them, for the
	// flood's length and at least until it has tried twice as many as the
	// Hello budget admits (on a slow machine each accepted stream takes a
	// while; refused ones are quick), within a hard bound.
	hctx, stopHellos := context.WithTimeout(ctx, waitTimeout)
	defer stopHellos()
	enough := func() bool {
		admitted := float64(lim.HelloBurst) + lim.HellosPerSecond*time.Since(began).Seconds() + 1
		return opened.Load() >= int64(2*admitted)+1
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn := rawAgent(t, f.c, "rogue-hellos.contoso.com")
		for hctx.Err() == nil && (fctx.Err() == nil || !enough()) {
			sctx, cancel := context.WithCancel(hctx)
			stream, err := pb.NewAgentServiceClient(conn).Sync(sctx)
			if err == nil {
				err = stream.Send(hello("rogue-hellos.contoso.com"))
			}
			if err == nil {
				_, err = stream.Recv()
			}
			cancel()
			opened.Add(1)
			if status.Code(err) == codes.ResourceExhausted {
				refused.Add(1)
			}
		}
	}()

	// Meanwhile the fleet takes a change and converges.
	changed := bytes.Replace(examples.Contoso, []byte("removePartners: [app]"), []byte("removePartners: [app, legacy]"), 1)
	rev2 := f.apply(changed)
	f.waitConverged(rev2)
	waitFor(t, waitTimeout, "the flood to run its course", func() (bool, string) {
		return time.Since(began) >= *floodFor, ""
	})
	stopReports.Store(true)

	// The newest report is stored in the end; the ones it replaced never were.
	waitFor(t, waitTimeout, "the newest report to be stored", func() (bool, string) {
		n := last.Load()
		resp, err := cli.Get(ctx, "/s2strust/hostreport/rogue-reports.contoso.com")
		if n == 0 || err != nil || len(resp.Kvs) == 0 {
			return false, fmt.Sprint(err)
		}
		return bytes.HasSuffix(resp.Kvs[0].Value, []byte(fmt.Sprintf("report %d", n))), string(resp.Kvs[0].Value)
	})
	stopFlood()
	wg.Wait()
	elapsed := time.Since(began).Seconds()
	end, err := cli.Get(ctx, "/s2strust/none")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitTimeout, "the write counters to catch up", func() (bool, string) {
		resp, err := cli.Get(ctx, "/s2strust/none")
		return err == nil && resp.Header.Revision >= end.Header.Revision, ""
	})

	// Each stored report may also move the host's clock offset (one write
	// each); the reporter's stream adds its presence and first state.
	maxReports := float64(lim.ReportBurst) + lim.ReportsPerSecond*elapsed + 1
	if got, bound := reporterWrites.Load(), int64(2*maxReports)+3; got > bound || got == 0 {
		t.Errorf("the reporting agent caused %d etcd writes in %.1fs (sent %d reports); want 1..%d", got, elapsed, sent.Load(), bound)
	}
	if sent.Load() < 10*int64(2*maxReports) {
		t.Errorf("the flood sent only %d reports: too few to show the limit", sent.Load())
	}
	// Each accepted Hello writes presence, state, and clears presence.
	maxHellos := float64(lim.HelloBurst) + lim.HellosPerSecond*elapsed + 1
	if got, bound := helloWrites.Load(), int64(3*maxHellos); got > bound || got == 0 {
		t.Errorf("the reconnecting agent caused %d etcd writes with %d streams in %.1fs; want 1..%d", got, opened.Load(), elapsed, bound)
	}
	if refused.Load() == 0 || opened.Load() < 2*int64(maxHellos) {
		t.Errorf("of %d streams opened, %d were refused as over the Hello rate; want most refused", opened.Load(), refused.Load())
	}
	t.Logf("in %.1fs: %d reports sent → %d writes; %d streams opened, %d refused → %d writes", elapsed, sent.Load(), reporterWrites.Load(), opened.Load(), refused.Load(), helloWrites.Load())
}

func TestStreamsThatNeverSayHelloAreClosed(t *testing.T) {
	const timeout = 300 * time.Millisecond
	c := startControllerWith(t, t.TempDir(), "127.0.0.1:0", func(c *app.ServeConfig) {
		c.AgentLimits = server.AgentLimits{HelloTimeout: timeout}
	})
	n := *silentStream
	const conns = 4
	var closed, wrong atomic.Int64
	var firstWrong atomic.Value
	for i := range conns {
		conn := rawAgent(t, c, fmt.Sprintf("silent%d.contoso.com", i))
		for range n / conns {
			stream, err := pb.NewAgentServiceClient(conn).Sync(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				_, err := stream.Recv()
				st := status.Convert(err)
				if st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "no hello within "+timeout.String()) {
					wrong.Add(1)
					firstWrong.CompareAndSwap(nil, err.Error())
				}
				closed.Add(1)
			}()
		}
	}
	waitFor(t, waitTimeout, "every silent stream to be closed", func() (bool, string) {
		return closed.Load() == int64(n/conns*conns), fmt.Sprintf("%d of %d closed", closed.Load(), n)
	})
	if wrong.Load() > 0 {
		t.Errorf("%d streams ended otherwise than with DeadlineExceeded \"no hello within %s\"; first: %v", wrong.Load(), timeout, firstWrong.Load())
	}
}

func TestASecondStreamReplacesTheFirstOnceItHasEnded(t *testing.T) {
	c := startController(t, t.TempDir(), "127.0.0.1:0")
	const host = "twice.contoso.com"
	first, second := rawAgent(t, c, host), rawAgent(t, c, host)
	a, err := pb.NewAgentServiceClient(first).Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Send(hello(host)); err != nil {
		t.Fatal(err)
	}
	if m, err := a.Recv(); err != nil || m.GetUpToDate() == nil {
		t.Fatalf("first stream: %v, %v; want up to date", m, err)
	}
	b, err := pb.NewAgentServiceClient(second).Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Send(hello(host)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("first stream ended with %v; want Canceled once the second says hello", err)
	}
	if m, err := b.Recv(); err != nil || m.GetUpToDate() == nil {
		t.Fatalf("second stream: %v, %v; want up to date", m, err)
	}
	// Both ends are named in the log.
	waitFor(t, waitTimeout, "the replacement to be logged with both peers", func() (bool, string) {
		for _, line := range strings.Split(testLogs(), "\n") {
			if strings.Contains(line, "second stream for one host") && strings.Contains(line, "host="+host) &&
				strings.Contains(line, "first_peer=127.0.0.1:") && strings.Contains(line, "second_peer=127.0.0.1:") {
				return true, ""
			}
		}
		return false, "no log line"
	})
}

func TestOversizedAgentMessagesAreRefused(t *testing.T) {
	c := startController(t, t.TempDir(), "127.0.0.1:0")
	const host = "big.contoso.com"
	conn := rawAgent(t, c, host)
	long := strings.Repeat("x", server.DefaultMaxStringBytes+1)
	var many []*pb.ItemStatus
	for i := range 40 {
		many = append(many, &pb.ItemStatus{Item: fmt.Sprint(i), Message: strings.Repeat("y", 2000)})
	}
	tests := []struct {
		name    string
		msg     *pb.SyncRequest
		code    codes.Code
		field   string
		message string
	}{
		{"a long string", &pb.SyncRequest{Message: &pb.SyncRequest_Status{Status: &pb.StatusReport{Items: []*pb.ItemStatus{{Item: "a"}, {Item: "b", Message: long}}}}},
			codes.InvalidArgument, "status.items[1].message", fmt.Sprintf("status.items[1].message from host %s is %d bytes, over the limit of 4096 bytes", host, len(long))},
		{"a long nack", &pb.SyncRequest{Message: &pb.SyncRequest_Nack{Nack: &pb.Nack{Errors: []*pb.ItemError{{Item: long}}}}},
			codes.InvalidArgument, "nack.errors[0].item", "over the limit of 4096 bytes"},
		{"a big report", &pb.SyncRequest{Message: &pb.SyncRequest_Status{Status: &pb.StatusReport{Items: many}}},
			codes.ResourceExhausted, "status", "over the limit of 65536 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := pb.NewAgentServiceClient(conn).Sync(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(hello(host)); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(tc.msg); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			_, err = stream.Recv()
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.message) {
				t.Fatalf("stream ended with %v; want %s naming %q", err, tc.code, tc.message)
			}
			var fields []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
					}
				}
			}
			if len(fields) != 1 || fields[0] != tc.field {
				t.Errorf("field violations %v; want [%s]", fields, tc.field)
			}
		})
	}
	// Nothing of it was stored.
	cli := c.etcd()
	defer cli.Close()
	resp, err := cli.Get(context.Background(), "/s2strust/hostreport/"+host)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 {
		t.Errorf("a refused report was stored: %d bytes", len(resp.Kvs[0].Value))
	}
}

func TestKeyMaterialIsSentOncePerChangeNotOncePerHello(t *testing.T) {
	f := startFleetWith(t, examples.Contoso, agentOpts{}, func(c *app.ServeConfig) {
		c.AgentLimits = server.AgentLimits{SecretResendInterval: time.Hour, HelloBurst: 100}
	})
	// The pool's agents go before anything is applied; a client with
	// fe01's identity, so the pool's primary and the one host that gets its
	// token-issuer PFX, says hello again and again and never applies anything.
	const host = "fe01.contoso.com"
	f.agents[host].stop()
	f.agents["fe02.contoso.com"].stop()
	f.apply(examples.Contoso)
	conn := rawAgent(t, f.c, host)
	open := func() (pb.AgentService_SyncClient, *pb.SyncResponse, context.CancelFunc) {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := pb.NewAgentServiceClient(conn).Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(hello(host)); err != nil {
			t.Fatal(err)
		}
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return stream, m, cancel
	}
	withSecrets := func(m *pb.SyncResponse) bool { return len(m.GetDesired().GetSecrets()) > 0 }
	first, m, cancel := open()
	for m.GetUpToDate() != nil || !m.GetDesired().GetConfig().GetPrimary() {
		// The controller may not have seen the new revision yet, or not yet
		// made this host the pool's primary (fe02's role lasts its grace):
		// it pushes as soon as it does.
		var err error
		if m, err = first.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	if !withSecrets(m) {
		t.Fatalf("first hello of a host that has applied nothing: %v; want the desired state with its key material", m)
	}
	cancel()
	var stream pb.AgentService_SyncClient
	for i := range 5 {
		s, m, cancel := open()
		if withSecrets(m) || m.GetUpToDate() == nil {
			t.Fatalf("hello %d for the same desired state: got %v; want up to date, no key material", i+2, m)
		}
		if i < 4 {
			cancel()
		} else {
			stream = s
			defer cancel()
		}
	}
	// A change sends it again, at once.
	changed := bytes.Replace(examples.Contoso, []byte("removePartners: [app]"), []byte("removePartners: [app, legacy]"), 1)
	f.apply(changed)
	m, err := stream.Recv()
	if err != nil || !withSecrets(m) {
		t.Fatalf("after a change: %v, %v; want the new desired state with its key material", m, err)
	}
}
