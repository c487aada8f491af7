package syncer

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// probingDriver is a fakeDriver that checks metadata and probes: one
// metadata check and one probe, whose result the test sets, and a
// verification whose item the test may change.
type probingDriver struct {
	fakeDriver
	rounds atomic.Int64
	mu     sync.Mutex
	reason string // the probe's failure reason; empty: it passes
	item   string // the verification's one item
}

func (d *probingDriver) Verify(context.Context, *pb.HostConfig) (*pb.StatusReport, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	item := d.item
	if item == "" {
		item = "oauth"
	}
	return &pb.StatusReport{Items: []*pb.ItemStatus{{Item: item, State: pb.ItemState_ITEM_STATE_OK}}}, nil
}

func (d *probingDriver) CheckMetadata(context.Context, *pb.HostConfig) []*pb.MetadataCheck {
	return []*pb.MetadataCheck{{Deployment: "pool01", Url: "https://pool01.contoso.com/metadata/json/1", Ok: true, Thumbprints: []string{"AB"}}}
}

func (d *probingDriver) Probe(context.Context, *pb.HostConfig) []*pb.TrustProbe {
	d.rounds.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	return []*pb.TrustProbe{{ToDeployment: "exchange", TargetHost: "ex01.contoso.com", Ok: d.reason == "", Reason: d.reason, IssuerThumbprint: "AB"}}
}

func (d *probingDriver) set(f func(*probingDriver)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d)
}

// startReports serves a controller that hands on every status report
// and dials it.
func startReports(t *testing.T) (*reportsServer, *grpc.ClientConn) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	rs := &reportsServer{reports: make(chan *pb.StatusReport, 64)}
	pb.RegisterAgentServiceServer(srv, rs)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return rs, conn
}

// TestPeriodicProbes runs an agent whose drift checks are an hour apart:
// its probes still run every ProbeInterval, a report goes out when their
// result changes (a failure, then the recovery) and none while it stays
// the same.
func TestPeriodicProbes(t *testing.T) {
	rs, conn := startReports(t)
	dir := t.TempDir()
	cfg := testConfig("2015")
	if _, err := saveState(dir, 1, topology.Hash(cfg), cfg); err != nil {
		t.Fatal(err)
	}
	drv := &probingDriver{}
	a, err := New(Config{Host: "fe01.contoso.com", Conn: conn, Driver: drv, StateDir: dir,
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		DriftInterval: time.Hour, ClockCheckInterval: time.Hour, ProbeInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(ctx, a)
	defer func() { cancel(); <-done }()

	next := func(what string) *pb.StatusReport {
		t.Helper()
		select {
		case r := <-rs.reports:
			return r
		case <-time.After(30 * time.Second):
			t.Fatalf("no status report %s within 30s", what)
		}
		return nil
	}
	// waitRounds waits until the driver has probed n more times.
	waitRounds := func(n int64) {
		t.Helper()
		want := drv.rounds.Load() + n
		deadline := time.Now().Add(30 * time.Second)
		for drv.rounds.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("%d probe rounds within 30s, want %d: no periodic probes", drv.rounds.Load(), want)
			}
			time.Sleep(5 * time.Millisecond) // polling a counter, not waiting for an effect
		}
	}
	if r := next("at start"); len(r.GetProbes()) != 1 || !r.GetProbes()[0].GetOk() {
		t.Fatalf("first report's probes %v, want the one passing probe", r.GetProbes())
	}
	// Rounds that find the same say nothing.
	waitRounds(3)
	select {
	case r := <-rs.reports:
		t.Fatalf("a report although no probe result changed: %v", r)
	default:
	}
	drv.set(func(d *probingDriver) { d.reason = "unknown-key" })
	if r := next("after the probe failed"); len(r.GetProbes()) != 1 || r.GetProbes()[0].GetOk() || r.GetProbes()[0].GetReason() != "unknown-key" {
		t.Fatalf("report after the failure has probes %v, want the failed one", r.GetProbes())
	}
	drv.set(func(d *probingDriver) { d.reason = "" })
	if r := next("after the probe passed again"); len(r.GetProbes()) != 1 || !r.GetProbes()[0].GetOk() {
		t.Fatalf("report after the recovery has probes %v, want the passing one", r.GetProbes())
	}
}

// TestEveryReportCarriesTheLatestProbes: a report that only verified (an
// apply's, a drift check's) carries the metadata checks and probes of
// the last round, so the controller never sees them vanish between rounds.
func TestEveryReportCarriesTheLatestProbes(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig("2015")
	if _, err := saveState(dir, 1, topology.Hash(cfg), cfg); err != nil {
		t.Fatal(err)
	}
	drv := &probingDriver{reason: "unreachable"}
	a, err := New(Config{Host: "fe01.contoso.com", Conn: &downConn{}, Driver: drv, StateDir: dir,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a.checkDrift(ctx)
	first := a.last
	if p := first.GetProbes(); len(p) != 1 || p[0].GetReason() != "unreachable" || len(first.GetMetadata()) != 1 {
		t.Fatalf("drift check report: probes %v metadata %v, want one of each", p, first.GetMetadata())
	}
	// A new configuration is applied and verified: the report of its
	// verification comes before the probes of the new configuration and
	// keeps the last ones; the one going with the ACK (applied version 2)
	// carries probes of the new configuration.
	drv.set(func(d *probingDriver) { d.item = "partner/microsoft.exchange"; d.reason = "" })
	var reports []*pb.StatusReport
	a.cfg.Metrics = reportsSeen(func(r *pb.StatusReport) { reports = append(reports, r) })
	next := testConfig("2019")
	if o, errs := a.process(ctx, &pb.Desired{Version: 2, Nonce: "n2", Hash: topology.Hash(next), Config: next}, true); o != done {
		t.Fatalf("process: %v %v", o, errs)
	}
	if len(reports) < 2 {
		t.Fatalf("%d reports while applying, want the verification's and the probes'", len(reports))
	}
	rep := reports[0]
	if rep.GetAppliedVersion() != 1 || len(rep.GetItems()) != 1 || rep.GetItems()[0].GetItem() != "partner/microsoft.exchange" {
		t.Fatalf("the first report while applying is not the new verification: %v", rep)
	}
	if p := rep.GetProbes(); len(p) != 1 || p[0].GetReason() != "unreachable" || len(rep.GetMetadata()) != 1 || !rep.GetMetadata()[0].GetOk() {
		t.Errorf("the verification's report has probes %v metadata %v, want the last round's", p, rep.GetMetadata())
	}
	// The failure carried on is dated by the report that first had it, so
	// the controller counts it once.
	failedSince := first.GetProbes()[0].GetSince()
	if failedSince == nil || !proto.Equal(rep.GetProbes()[0].GetSince(), failedSince) || !proto.Equal(failedSince, first.GetClock()) {
		t.Errorf("the failure's since: %v in the first report (clock %v), %v carried on; want the first report's clock in both", failedSince, first.GetClock(), rep.GetProbes()[0].GetSince())
	}
	// Before the ACK the new configuration is probed: a new result, dated anew.
	passed := a.last
	if p := passed.GetProbes(); len(p) != 1 || !p[0].GetOk() || passed.GetAppliedVersion() != 2 || !proto.Equal(p[0].GetSince(), passed.GetClock()) {
		t.Errorf("the report with the ACK: probes %v, applied %d, clock %v; want the passing probe at version 2, since this report", p, passed.GetAppliedVersion(), passed.GetClock())
	}
	// A round with the same result keeps its date.
	drv.set(func(d *probingDriver) { d.item = "oauth" })
	a.observe(ctx, nil)
	a.checkDrift(ctx)
	if p := a.last.GetProbes(); len(p) != 1 || !proto.Equal(p[0].GetSince(), passed.GetClock()) || proto.Equal(a.last.GetClock(), passed.GetClock()) {
		t.Errorf("after more rounds with the same result: since %v (report clock %v), want %v kept", p[0].GetSince(), a.last.GetClock(), passed.GetClock())
	}
}

func TestNegativeProbeIntervalRefused(t *testing.T) {
	_, err := New(Config{Host: "fe01.contoso.com", Conn: &downConn{}, Driver: &fakeDriver{}, StateDir: t.TempDir(), ProbeInterval: -time.Second})
	if err == nil || !strings.Contains(err.Error(), "probe interval -1s is negative") {
		t.Errorf("New with ProbeInterval -1s = %v, want the refusal naming the value", err)
	}
}

// reportsSeen is a metrics.Recorder that hands on every report.
type reportsSeen func(*pb.StatusReport)

func (f reportsSeen) Applied(time.Duration, string) {}
func (f reportsSeen) Reported(r *pb.StatusReport)   { f(r) }
func (f reportsSeen) Synced(time.Time)              {}
func (f reportsSeen) Connected(bool)                {}
