package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/controller/pagetoken"
	"github.com/s2strust/s2strust/controller/secrets"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// contosoHosts are the hosts of examples.Contoso, sorted.
var contosoHosts = []string{"ex01.contoso.com", "ex02.contoso.com", "fe01.contoso.com", "fe02.contoso.com", "sp01.contoso.com"}

// fleetFixture is a controller in-process: a hub on a real embedded etcd
// with the contoso example, its Sync, fleet and admin services on loopback
// gRPC behind the real interceptors (insecure access), and a fleet client.
type fleetFixture struct {
	*hubFixture
	fleet pb.FleetServiceClient
	svc   *FleetService
	// conn reaches every service; secrets is the secret API's store.
	conn     *grpc.ClientConn
	secrets  *secrets.Store
	stopEtcd func()
}

// startFleet starts the fixture; before runs on the store before the hub
// starts (to store what an older controller left).
func startFleet(t *testing.T, before func(context.Context, *store.Store)) *fleetFixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := etcdembed.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stopEtcd := func() { once.Do(srv.Close) }
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	st := store.New(cli, "")
	if _, _, err := st.PutTopology(ctx, "contoso", examples.Contoso, "test", time.Now(), nil, nil); err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(ctx, st)
	}
	hub := NewHub(Config{Store: st, Logger: slog.New(slog.DiscardHandler), PresenceTTL: 3 * time.Second, Secrets: fakeSecrets{}})
	hubDone := make(chan error, 1)
	go func() { hubDone <- hub.Run(ctx) }()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	access := Access{Insecure: true, Logger: slog.New(slog.DiscardHandler)}
	gs := grpc.NewServer(grpc.UnaryInterceptor(access.UnaryInterceptor), grpc.StreamInterceptor(access.StreamInterceptor))
	svc := NewFleetService(hub)
	svc.ReadTimeout, svc.WatchInterval = 300*time.Millisecond, 200*time.Millisecond
	pb.RegisterAgentServiceServer(gs, NewAgentService(hub, 0, true))
	pb.RegisterFleetServiceServer(gs, svc)
	topo := NewTopologyService(hub, nil)
	pb.RegisterTopologyServiceServer(gs, topo)
	pb.RegisterRolloutServiceServer(gs, NewRolloutService(hub, topo))
	pb.RegisterRotationServiceServer(gs, NewRotationService(hub, topo))
	pb.RegisterAuditServiceServer(gs, NewAuditService(hub))
	sec := secrets.New(st, make([]byte, 32), nil)
	pb.RegisterSecretServiceServer(gs, secrets.NewService(sec, hub.SecretView()))
	serveDone := make(chan error, 1)
	go func() { serveDone <- gs.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		hub.Stopping()
		gs.Stop()
		<-serveDone
		cancel()
		<-hubDone
		cli.Close()
		stopEtcd()
	})
	select {
	case <-hub.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("hub not ready within 30s")
	}
	return &fleetFixture{hubFixture: &hubFixture{addr: lis.Addr().String(), hub: hub, st: st}, fleet: pb.NewFleetServiceClient(conn), svc: svc,
		conn: conn, secrets: sec, stopEtcd: stopEtcd}
}

func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually waits until cond holds, failing with its last reason after 20s.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s: %s", what, why)
		}
		time.Sleep(20 * time.Millisecond) // polling an API for a condition, not timing
	}
}

// listAll pages through ListHosts with the given page size.
func listAll(t *testing.T, f *fleetFixture, dep string, size int32) (hosts []*pb.Host, pages int) {
	t.Helper()
	req := &pb.ListHostsRequest{Deployment: dep, PageSize: size}
	for {
		resp, err := f.fleet.ListHosts(callCtx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		hosts = append(hosts, resp.GetHosts()...)
		if resp.GetNextPageToken() == "" {
			return hosts, pages
		}
		if pages > 10 {
			t.Fatalf("more than 10 pages of %d", size)
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

func hostNames(hosts []*pb.Host) []string {
	var out []string
	for _, h := range hosts {
		out = append(out, h.GetHost())
	}
	return out
}

// fieldOf returns the code and the one field violation of a refused call.
func fieldOf(err error) (codes.Code, string) {
	st := status.Convert(err)
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == 1 {
			return st.Code(), br.GetFieldViolations()[0].GetField()
		}
	}
	return st.Code(), ""
}

func TestListHostsPages(t *testing.T) {
	f := startFleet(t, nil)
	for _, size := range []int32{1, 2, 3, 5, 0, 5000} {
		hosts, pages := listAll(t, f, "", size)
		if got := hostNames(hosts); !slices.Equal(got, contosoHosts) {
			t.Errorf("page size %d: hosts %v, want %v", size, got, contosoHosts)
		}
		want := 1
		if size > 0 && size < 5 {
			want = (5 + int(size) - 1) / int(size)
		}
		if pages != want {
			t.Errorf("page size %d: %d pages, want %d", size, pages, want)
		}
		for _, h := range hosts {
			if h.GetName() != "hosts/"+h.GetHost() {
				t.Errorf("host %s has name %q", h.GetHost(), h.GetName())
			}
		}
	}
	if got, _ := listAll(t, f, "exchange", 1); !slices.Equal(hostNames(got), []string{"ex01.contoso.com", "ex02.contoso.com"}) {
		t.Errorf("exchange, one per page: %v", hostNames(got))
	}

	first, err := f.fleet.ListHosts(callCtx(t), &pb.ListHostsRequest{Deployment: "exchange", PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		req   *pb.ListHostsRequest
		field string
		msg   string
	}{
		"garbage token":           {&pb.ListHostsRequest{PageToken: "not-a-token"}, "page_token", "not-a-token"},
		"short token":             {&pb.ListHostsRequest{PageToken: "AQ"}, "page_token", "not a page token"},
		"token of another filter": {&pb.ListHostsRequest{Deployment: "pool01", PageToken: first.GetNextPageToken()}, "page_token", `deployment "exchange", not "pool01"`},
		"negative size":           {&pb.ListHostsRequest{PageSize: -1}, "page_size", "-1"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := f.fleet.ListHosts(callCtx(t), tc.req)
			if code, field := fieldOf(err); code != codes.InvalidArgument || field != tc.field || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("ListHosts = %v (%s, field %q), want INVALID_ARGUMENT naming %s with %q", err, code, field, tc.field, tc.msg)
			}
		})
	}
}

func TestGetHostByName(t *testing.T) {
	f := startFleet(t, nil)
	a := f.connect(t, "ex01.contoso.com")
	a.waitPush(t, "to ex01", func(*pb.Desired) bool { return true })
	for _, req := range []*pb.GetHostRequest{{Name: "hosts/ex01.contoso.com"}, {Host: "ex01.contoso.com"}, {Name: "hosts/ex01.contoso.com", Host: "ignored"}} {
		resp, err := f.fleet.GetHost(callCtx(t), req)
		if err != nil || resp.GetHost().GetName() != "hosts/ex01.contoso.com" || resp.GetHost().GetDeployment() != "exchange" || resp.GetStale() != nil {
			t.Errorf("GetHost(%v) = %v, %v", req, resp, err)
		}
	}
	for _, tc := range []struct {
		req   *pb.GetHostRequest
		code  codes.Code
		field string
	}{
		{&pb.GetHostRequest{Name: "ex01.contoso.com"}, codes.InvalidArgument, "name"},
		{&pb.GetHostRequest{Name: "hosts/"}, codes.InvalidArgument, "name"},
		{&pb.GetHostRequest{Name: "hosts/a/b"}, codes.InvalidArgument, "name"},
		{&pb.GetHostRequest{}, codes.InvalidArgument, "name"},
		{&pb.GetHostRequest{Name: "hosts/nope.contoso.com"}, codes.NotFound, ""},
	} {
		_, err := f.fleet.GetHost(callCtx(t), tc.req)
		if code, field := fieldOf(err); code != tc.code || field != tc.field {
			t.Errorf("GetHost(%v) = %v, want %s naming %q", tc.req, err, tc.code, tc.field)
		}
	}
}

// waitApplied waits until ListHosts shows every given host applied its
// desired version.
func waitApplied(t *testing.T, f *fleetFixture, hosts ...string) {
	t.Helper()
	eventually(t, "hosts applied", func() (bool, string) {
		got, _ := listAll(t, f, "", 0)
		for _, h := range got {
			if slices.Contains(hosts, h.GetHost()) && (h.GetAppliedVersion() == 0 || h.GetAppliedVersion() != h.GetDesiredVersion()) {
				return false, fmt.Sprintf("%s applied %d of %d", h.GetHost(), h.GetAppliedVersion(), h.GetDesiredVersion())
			}
		}
		return true, ""
	})
}

// With etcd stopped, the fleet reads answer from the controller's last
// view, marked stale with its age and the reason, and show what the hosts
// had applied; WatchHosts says it is stale.
func TestFleetReadsWhileEtcdIsDown(t *testing.T) {
	t.Parallel()
	f := startFleet(t, nil)
	for _, h := range contosoHosts {
		f.connect(t, h)
	}
	waitApplied(t, f, contosoHosts...)
	if err := f.st.PutProto(callCtx(t), store.HostReportKey("ex01.contoso.com"), &pb.StatusReport{AppliedVersion: 42}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the report in the view", func() (bool, string) {
		r, err := f.hub.view.report("ex01.contoso.com")
		return err == nil && r.GetAppliedVersion() == 42, fmt.Sprint(r, err)
	})
	fresh, err := f.fleet.ListHosts(callCtx(t), &pb.ListHostsRequest{})
	if err != nil || fresh.GetStale() != nil {
		t.Fatalf("ListHosts with etcd up: stale %v, %v", fresh.GetStale(), err)
	}
	watch, err := f.fleet.WatchHosts(callCtx(t), &pb.WatchHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.GetInitialComplete() {
			break
		}
	}

	f.stopEtcd()

	// Twice: while the hub has not noticed yet (the read times out), and
	// once it has (answered at once).
	for i := range 2 {
		resp, err := f.fleet.ListHosts(callCtx(t), &pb.ListHostsRequest{})
		if err != nil {
			t.Fatalf("ListHosts with etcd down: %v", err)
		}
		st := resp.GetStale()
		if st == nil || st.GetAsOf() == nil || st.GetAgeMs() < 0 || st.GetReason() == "" {
			t.Fatalf("ListHosts with etcd down: stale %v, want it marked with age and reason", st)
		}
		if got := hostNames(resp.GetHosts()); !slices.Equal(got, contosoHosts) {
			t.Errorf("stale hosts %v, want %v", got, contosoHosts)
		}
		for j, h := range resp.GetHosts() {
			if h.GetAppliedVersion() == 0 || h.GetAppliedVersion() != fresh.GetHosts()[j].GetAppliedVersion() {
				t.Errorf("stale view of %s: applied %d, was %d", h.GetHost(), h.GetAppliedVersion(), fresh.GetHosts()[j].GetAppliedVersion())
			}
		}
		g, err := f.fleet.GetHost(callCtx(t), &pb.GetHostRequest{Name: "hosts/ex01.contoso.com"})
		if err != nil || g.GetStale() == nil || g.GetStatus().GetAppliedVersion() != 42 || g.GetHost().GetAppliedVersion() == 0 {
			t.Errorf("GetHost with etcd down = %v, %v; want the last report, stale", g, err)
		}
		tr, err := f.fleet.GetTrustReport(callCtx(t), &pb.GetTrustReportRequest{})
		if err != nil || tr.GetStale() == nil || len(tr.GetEdges()) == 0 {
			t.Errorf("GetTrustReport with etcd down = %d edges, stale %v, %v", len(tr.GetEdges()), tr.GetStale(), err)
		}
		topo := NewTopologyService(f.hub, nil)
		cur, err := topo.GetTopology(callCtx(t), &pb.GetTopologyRequest{})
		if err != nil || cur.GetStale() == nil || cur.GetTopology().GetName() != "contoso" || cur.GetTopology().GetDocument() == "" {
			t.Errorf("GetTopology with etcd down = %v, %v; want the current revision, stale", cur, err)
		}
		if _, err := topo.GetTopology(callCtx(t), &pb.GetTopologyRequest{Revision: 1}); status.Code(toStatus(err)) != codes.Unavailable {
			t.Errorf("GetTopology of an old revision with etcd down: %v, want UNAVAILABLE", err)
		}
		if i == 0 {
			eventually(t, "the hub to notice etcd is gone", func() (bool, string) {
				lost, _ := f.hub.view.lostReason()
				return lost != "", "still following"
			})
		}
	}
	for {
		m, err := watch.Recv()
		if err != nil {
			t.Fatalf("WatchHosts with etcd down: %v", err)
		}
		if m.GetStale() != nil {
			break
		}
	}
}

func TestWatchHosts(t *testing.T) {
	f := startFleet(t, nil)
	ctx, cancel := context.WithCancel(callCtx(t))
	defer cancel()
	watch, err := f.fleet.WatchHosts(ctx, &pb.WatchHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var initial []*pb.Host
	for {
		m, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		initial = append(initial, m.GetHosts()...)
		if m.GetInitialComplete() {
			break
		}
	}
	if got := hostNames(initial); !slices.Equal(got, contosoHosts) {
		t.Fatalf("snapshot %v, want %v", got, contosoHosts)
	}
	exchange, err := f.fleet.WatchHosts(ctx, &pb.WatchHostsRequest{Deployment: "exchange"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := exchange.Recv(); err != nil || !m.GetInitialComplete() || !slices.Equal(hostNames(m.GetHosts()), []string{"ex01.contoso.com", "ex02.contoso.com"}) {
		t.Errorf("snapshot of exchange: %v, %v", m, err)
	}
	for _, h := range initial {
		if h.GetConnected() || h.GetAppliedVersion() != 0 {
			t.Errorf("snapshot of %s: connected %v, applied %d before any agent", h.GetHost(), h.GetConnected(), h.GetAppliedVersion())
		}
	}
	// An agent connects and applies: its host comes again, ending applied.
	f.connect(t, "sp01.contoso.com")
	for {
		m, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range m.GetHosts() {
			if h.GetHost() != "sp01.contoso.com" {
				t.Errorf("change of %s, which did not change", h.GetHost())
			}
		}
		if i := slices.IndexFunc(m.GetHosts(), func(h *pb.Host) bool { return h.GetAppliedVersion() != 0 }); i >= 0 {
			if h := m.GetHosts()[i]; !h.GetConnected() || h.GetAppliedVersion() != h.GetDesiredVersion() {
				t.Errorf("sp01 after its ACK: %v", h)
			}
			break
		}
	}
	// ex02 leaves the topology: its name comes as removed.
	doc := strings.Replace(string(examples.Contoso), "hosts: [ex01.contoso.com, ex02.contoso.com]", "hosts: [ex01.contoso.com]", 1)
	if doc == string(examples.Contoso) {
		t.Fatal("the example changed: cannot remove ex02")
	}
	if _, _, err := f.st.PutTopology(callCtx(t), "contoso", []byte(doc), "test", time.Now(), nil, nil); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.GetRemoved()) > 0 {
			if !slices.Equal(m.GetRemoved(), []string{"hosts/ex02.contoso.com"}) {
				t.Errorf("removed %v, want [hosts/ex02.contoso.com]", m.GetRemoved())
			}
			break
		}
	}
}

// A controller started on the layout before the split moves the host
// keys and shows what they held.
func TestHubMigratesHostLayout(t *testing.T) {
	f := startFleet(t, func(ctx context.Context, st *store.Store) {
		b, err := proto.Marshal(&pb.Host{Host: "ex01.contoso.com", AppliedVersion: 7, AgentVersion: "old"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Client().Put(ctx, st.Key("hosts/ex01.contoso.com/state"), string(b)); err != nil {
			t.Fatal(err)
		}
		r, _ := proto.Marshal(&pb.StatusReport{AppliedVersion: 7})
		if _, err := st.Client().Put(ctx, st.Key("hosts/ex01.contoso.com/report"), string(r)); err != nil {
			t.Fatal(err)
		}
	})
	g, err := f.fleet.GetHost(callCtx(t), &pb.GetHostRequest{Name: "hosts/ex01.contoso.com"})
	if err != nil || g.GetHost().GetAppliedVersion() != 7 || g.GetHost().GetAgentVersion() != "old" || g.GetStatus().GetAppliedVersion() != 7 {
		t.Fatalf("GetHost after migration = %v, %v", g, err)
	}
	left, err := f.st.Client().Get(callCtx(t), f.st.Key("hosts/"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || left.Count != 0 {
		t.Errorf("%d keys left in the old layout (%v)", left.Count, err)
	}
}

func TestTrustReportPages(t *testing.T) {
	f := startFleet(t, nil)
	all, err := f.fleet.GetTrustReport(callCtx(t), &pb.GetTrustReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.GetEdges()) < 3 || all.GetNextPageToken() != "" || len(all.GetRealms()) != 3 {
		t.Fatalf("whole report: %d edges, %d realms, next %q", len(all.GetEdges()), len(all.GetRealms()), all.GetNextPageToken())
	}
	var paged []*pb.TrustEdge
	req := &pb.GetTrustReportRequest{PageSize: 1}
	for pages := 1; ; pages++ {
		resp, err := f.fleet.GetTrustReport(callCtx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetEdges()) != 1 || (pages == 1) != (len(resp.GetRealms()) == 3) {
			t.Fatalf("page %d: %d edges, %d realms", pages, len(resp.GetEdges()), len(resp.GetRealms()))
		}
		paged = append(paged, resp.GetEdges()...)
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if len(paged) != len(all.GetEdges()) {
		t.Fatalf("%d edges in pages of one, %d at once", len(paged), len(all.GetEdges()))
	}
	for i := range paged {
		if !proto.Equal(paged[i], all.GetEdges()[i]) {
			t.Errorf("edge %d differs paged: %v / %v", i, paged[i], all.GetEdges()[i])
		}
		if i > 0 && paged[i-1].GetFrom()+paged[i-1].GetTo() > paged[i].GetFrom()+paged[i].GetTo() && paged[i-1].GetFrom() >= paged[i].GetFrom() {
			t.Errorf("edges out of order: %s→%s before %s→%s", paged[i-1].GetFrom(), paged[i-1].GetTo(), paged[i].GetFrom(), paged[i].GetTo())
		}
	}
	_, err = f.fleet.GetTrustReport(callCtx(t), &pb.GetTrustReportRequest{PageToken: "AAAA"})
	if code, field := fieldOf(err); code != codes.InvalidArgument || field != "page_token" {
		t.Errorf("bad token: %v", err)
	}
}

func TestBoundEdge(t *testing.T) {
	e := &pb.TrustEdge{}
	for i := range 250 {
		e.Probes = append(e.Probes, &pb.TrustProbeResult{FromHost: fmt.Sprint(i), Probe: &pb.TrustProbe{Ok: i%50 != 7}})
		e.Problems = append(e.Problems, fmt.Sprint("problem ", i))
	}
	boundEdge(e)
	if e.GetProbesTotal() != 250 || e.GetProblemsTotal() != 250 || len(e.GetProbes()) != maxEdgeProbes || len(e.GetProblems()) != maxEdgeProblems {
		t.Fatalf("bounded to %d/%d probes, %d/%d problems", len(e.GetProbes()), e.GetProbesTotal(), len(e.GetProblems()), e.GetProblemsTotal())
	}
	for i := range 5 {
		if e.GetProbes()[i].GetProbe().GetOk() {
			t.Errorf("probe %d kept is ok; the 5 failed ones come first", i)
		}
	}
	if last := e.GetProblems()[maxEdgeProblems-1]; !strings.Contains(last, "and 201 more") {
		t.Errorf("last problem %q does not count the rest", last)
	}
}

// HOST_VIEW_FULL pages carry each host's report, and only their own
// hosts' reports.
func TestListHostsFullView(t *testing.T) {
	f := startFleet(t, func(ctx context.Context, st *store.Store) {
		// A host no longer in the topology, between two that are.
		if err := st.PutProto(ctx, store.HostReportKey("ex01a.contoso.com"), &pb.StatusReport{AppliedVersion: 9}); err != nil {
			t.Fatal(err)
		}
		for i, h := range contosoHosts {
			if err := st.PutProto(ctx, store.HostReportKey(h), &pb.StatusReport{AppliedVersion: uint64(i + 1)}); err != nil {
				t.Fatal(err)
			}
		}
	})
	for _, dep := range []string{"", "exchange"} {
		req := &pb.ListHostsRequest{Deployment: dep, View: pb.HostView_HOST_VIEW_FULL, PageSize: 2}
		got := map[string]uint64{}
		for {
			resp, err := f.fleet.ListHosts(callCtx(t), req)
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetStatuses()) != len(resp.GetHosts()) {
				t.Errorf("deployment %q: %d reports for %v", dep, len(resp.GetStatuses()), hostNames(resp.GetHosts()))
			}
			for h, r := range resp.GetStatuses() {
				got[h] = r.GetAppliedVersion()
			}
			if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
				break
			}
		}
		want := map[string]uint64{"ex01.contoso.com": 1, "ex02.contoso.com": 2}
		if dep == "" {
			want["fe01.contoso.com"], want["fe02.contoso.com"], want["sp01.contoso.com"] = 3, 4, 5
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("deployment %q: reports %v, want %v", dep, got, want)
		}
	}
}

// ListHostIdentities pages the union of identities, revocations and the
// topology's hosts in name order, whichever source a host comes from.
func TestListHostIdentitiesPages(t *testing.T) {
	f := startFleet(t, func(ctx context.Context, st *store.Store) {
		// Identities of hosts outside the topology, sorting after and
		// before its hosts, and a revoked one.
		for _, h := range []string{"aa.contoso.com", "zz1.contoso.com", "zz2.contoso.com"} {
			if _, err := st.Client().Put(ctx, st.Key("identities/"+h), `{"serial":"01"}`); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := st.Client().Put(ctx, st.Key("revoked/fe015.contoso.com"), `{}`); err != nil {
			t.Fatal(err)
		}
	})
	ids, _, err := NewIdentities(callCtx(t), f.st, nil)
	if err != nil {
		t.Fatal(err)
	}
	svc := NewHostIdentityService(ids, f.hub, nil, 0)
	want := append([]string{"aa.contoso.com"}, contosoHosts...)
	want = append(want, "fe015.contoso.com", "zz1.contoso.com", "zz2.contoso.com")
	slices.Sort(want)
	for _, size := range []int32{1, 2, 3, 0} {
		var got []string
		req := &pb.ListHostIdentitiesRequest{PageSize: size}
		for pages := 0; ; pages++ {
			resp, err := svc.ListHostIdentities(callCtx(t), req)
			if err != nil {
				t.Fatal(err)
			}
			if size > 0 && len(resp.GetHosts()) > int(size) || pages > 20 {
				t.Fatalf("page size %d: page %d holds %d", size, pages, len(resp.GetHosts()))
			}
			for _, h := range resp.GetHosts() {
				got = append(got, h.GetHost())
			}
			if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
				break
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("page size %d: %v, want %v", size, got, want)
		}
	}
	if _, err := svc.ListHostIdentities(callCtx(t), &pb.ListHostIdentitiesRequest{PageToken: "zz1.contoso.com"}); err == nil {
		t.Error("a host name as page token was accepted")
	}
}

// Revisions and the audit trail page with opaque tokens; the numbers
// their tokens were before are refused naming page_token.
func TestRevisionAndAuditTokens(t *testing.T) {
	f := startFleet(t, nil)
	ctx := callCtx(t)
	for i := range 3 {
		doc := strings.Replace(string(examples.Contoso), "name: contoso", fmt.Sprintf("name: contoso%d", i), 1)
		if _, _, err := f.st.PutTopology(ctx, "contoso", []byte(doc), "test", time.Now(), nil, []byte(`{"kind":"topology","who":"test"}`)); err != nil {
			t.Fatal(err)
		}
	}
	topo := NewTopologyService(f.hub, nil)
	var seqs []uint64
	req := &pb.ListTopologyRevisionsRequest{PageSize: 1}
	for {
		resp, err := topo.ListTopologyRevisions(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetRevisions() {
			seqs = append(seqs, r.GetSequence())
		}
		if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" || len(seqs) > 10 {
			break
		}
	}
	if fmt.Sprint(seqs) != "[4 3 2 1]" {
		t.Errorf("revisions paged: %v, want [4 3 2 1]", seqs)
	}
	audit := NewAuditService(f.hub)
	n := 0
	areq := &pb.ListAuditRecordsRequest{PageSize: 2}
	for pages := 0; pages < 10; pages++ {
		resp, err := audit.ListAuditRecords(ctx, areq)
		if err != nil {
			t.Fatal(err)
		}
		n += len(resp.GetRecords())
		if areq.PageToken = resp.GetNextPageToken(); areq.PageToken == "" {
			break
		}
	}
	if n != 3 {
		t.Errorf("%d audit records paged, want 3", n)
	}
	var te *topology.Error
	if _, err := topo.ListTopologyRevisions(ctx, &pb.ListTopologyRevisionsRequest{PageToken: "12"}); !errors.As(err, &te) || te.Violations[0].Field != "page_token" {
		t.Errorf("numeric revisions token: %v", err)
	}
	if _, err := audit.ListAuditRecords(ctx, &pb.ListAuditRecordsRequest{PageToken: "12"}); !errors.As(err, &te) || te.Violations[0].Field != "page_token" {
		t.Errorf("numeric audit token: %v", err)
	}
	// A token of one list is not one of another.
	tok := pagetoken.Encode("ListAuditRecords", "5")
	if _, err := topo.ListTopologyRevisions(ctx, &pb.ListTopologyRevisionsRequest{PageToken: tok}); !errors.As(err, &te) || !strings.Contains(err.Error(), "another list") {
		t.Errorf("audit token for revisions: %v", err)
	}
}

// The view loads a prefix larger than one read page.
func TestRangeAtPages(t *testing.T) {
	f := startFleet(t, nil)
	ctx := callCtx(t)
	for i := range 2500 {
		if _, err := f.st.Client().Put(ctx, f.st.Key(fmt.Sprintf("hostreport/h%05d.contoso.com", i)), "x"); err != nil {
			t.Fatal(err)
		}
	}
	now, err := f.st.Client().Get(ctx, "none")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.Client().Put(ctx, f.st.Key("hostreport/later.contoso.com"), "x"); err != nil {
		t.Fatal(err)
	}
	kvs, err := rangeAt(ctx, f.st.Client(), f.st.HostReportPrefix(), now.Header.Revision)
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 2500 || string(kvs[2499].Key) != f.st.Key("hostreport/h02499.contoso.com") {
		t.Errorf("%d keys at the revision, want 2500 (the later one not among them)", len(kvs))
	}
}
