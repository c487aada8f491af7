// Package e2e tests the controller and agents together: real embedded
// etcd, real gRPC with mTLS on loopback, several agents at once, and
// restarts of both sides.
package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/simnet"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

const waitTimeout = 60 * time.Second

// fleet is a controller with one agent per host of a topology.
type fleet struct {
	t       *testing.T
	dir     string
	c       *controller
	conn    *grpc.ClientConn
	agents  map[string]*agent
	topo    *topology.Topology
	network *simnet.Network
}

const issuerPassword = "pfx-password-1"

// startFleet starts a controller and one agent per host of doc, each sim
// serving HTTPS on its own loopback listener. opts applies to every agent.
func startFleet(t *testing.T, doc []byte, opts agentOpts) *fleet {
	t.Helper()
	return startFleetWith(t, doc, opts, nil)
}

// startFleetWith is startFleet with a controller configuration adjust may change.
func startFleetWith(t *testing.T, doc []byte, opts agentOpts, adjust func(*app.ServeConfig)) *fleet {
	t.Helper()
	dir := t.TempDir()
	c := startControllerWith(t, filepath.Join(dir, "controller"), "127.0.0.1:0", adjust)
	f := &fleet{t: t, dir: dir, c: c, conn: c.admin(), agents: map[string]*agent{}}
	topo, err := topology.Load("contoso.yaml", doc)
	if err != nil {
		t.Fatal(err)
	}
	f.topo = topo
	f.network, err = simnet.New(topo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.network.Close)
	opts.network = f.network
	f.putIssuerSecret("oauth-2026", "contoso.com", []string{"contoso.com", "fabrikam.com"}, issuerPassword)
	for _, d := range topo.Deployments {
		for _, h := range d.Hosts {
			f.agents[h] = startAgent(t, c, h, d.Product+":"+d.Version, filepath.Join(dir, "agents", h), filepath.Join(dir, "sim"), opts)
		}
	}
	return f
}

func (f *fleet) putIssuerSecret(name, cn string, sans []string, password string) []byte {
	f.t.Helper()
	now := time.Now()
	b, err := certs.Generate(certs.Template{CommonName: cn, DNSNames: sans, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0), KeyBits: 2048})
	if err != nil {
		f.t.Fatal(err)
	}
	pfx, err := certs.EncodePFX(b, password)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := pb.NewSecretServiceClient(f.conn).PutSecret(context.Background(), &pb.PutSecretRequest{Name: name, Pfx: pfx, Password: password}); err != nil {
		f.t.Fatal(err)
	}
	return pfx
}

func (f *fleet) apply(doc []byte) uint64 {
	f.t.Helper()
	resp, err := pb.NewTopologyServiceClient(f.conn).ApplyTopology(context.Background(), &pb.ApplyTopologyRequest{Immediate: true, Document: doc, Filename: "contoso.yaml"})
	if err != nil {
		f.t.Fatalf("apply: %v", err)
	}
	return resp.GetRevision()
}

func (f *fleet) waitConverged(rev uint64) {
	f.t.Helper()
	fl := pb.NewFleetServiceClient(f.conn)
	waitFor(f.t, waitTimeout, "every host to ack revision", func() (bool, string) { return converged(context.Background(), fl, rev) })
}

func (f *fleet) sessions() map[string]int64 {
	out := map[string]int64{}
	for h, a := range f.agents {
		out[h] = a.a.Sessions()
	}
	return out
}

func (f *fleet) received() map[string]int64 {
	out := map[string]int64{}
	for h, a := range f.agents {
		out[h] = a.received.Load()
	}
	return out
}

func TestFleetAppliesVerifiesAndSurvivesRestarts(t *testing.T) {
	f := startFleet(t, examples.Contoso, agentOpts{})
	ctx := context.Background()
	rev1 := f.apply(examples.Contoso)
	f.waitConverged(rev1)

	fleetAPI := pb.NewFleetServiceClient(f.conn)
	hosts, err := fleetAPI.ListHosts(ctx, &pb.ListHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts.GetHosts()) != 5 {
		t.Fatalf("ListHosts returned %d hosts, want 5", len(hosts.GetHosts()))
	}
	primaries := map[string]string{}
	for _, h := range hosts.GetHosts() {
		if !h.GetConnected() {
			t.Errorf("%s not connected", h.GetHost())
		}
		if h.GetPrimary() {
			if p, dup := primaries[h.GetDeployment()]; dup {
				t.Errorf("deployment %s has two primaries: %s and %s", h.GetDeployment(), p, h.GetHost())
			}
			primaries[h.GetDeployment()] = h.GetHost()
		}
	}
	if len(primaries) != 3 {
		t.Errorf("primaries = %v, want one for each of 3 deployments", primaries)
	}

	// Both Front Ends see Lync's partners as Get-CsPartnerApplication shows them.
	for _, fe := range []string{"fe01.contoso.com", "fe02.contoso.com"} {
		h, err := fleetAPI.GetHost(ctx, &pb.GetHostRequest{Host: fe})
		if err != nil {
			t.Fatal(err)
		}
		rep := h.GetStatus()
		want := map[string]string{"microsoft.exchange": products.ExchangeID, "microsoft.sharepoint": products.SharePointID}
		for _, p := range rep.GetPartners() {
			id, ok := want[p.GetIdentity()]
			if !ok {
				t.Errorf("%s: unexpected partner %s", fe, p.GetIdentity())
				continue
			}
			if p.GetApplicationIdentifier() != id || p.GetTrustLevel() != pb.TrustLevel_TRUST_LEVEL_FULL || !p.GetEnabled() || !strings.HasPrefix(p.GetMetadataUrl(), "https://") {
				t.Errorf("%s: partner %+v", fe, p)
			}
			delete(want, p.GetIdentity())
		}
		if len(want) != 0 {
			t.Errorf("%s: partners missing: %v", fe, want)
		}
		if got := rep.GetOauth().GetServiceName(); got != products.LyncID {
			t.Errorf("%s: OAuth ServiceName = %q, want %s", fe, got, products.LyncID)
		}
		for _, it := range rep.GetItems() {
			if it.GetState() != pb.ItemState_ITEM_STATE_OK {
				t.Errorf("%s: item %s is %s: %s", fe, it.GetItem(), it.GetState(), it.GetMessage())
			}
		}
	}

	// Key material goes only to the host that needs it: the pool's token
	// issuer to the pool's primary only (Import-CsCertificate -Identity
	// Global runs once; the CMS replicates it to every Front End, which
	// verifies its replica).
	poolPrimary := f.primaryOf("pool01")
	needers := "the pool's primary " + poolPrimary
	for h, a := range f.agents {
		need := h == poolPrimary
		if got := a.secretsSeen.Load(); need != (got > 0) {
			t.Errorf("%s received key material in %d pushes; only %s need the pool's token issuer", h, got, needers)
		}
	}

	// A change reaches every agent and is acked.
	changed := bytes.Replace(examples.Contoso, []byte("removePartners: [app]"), []byte("removePartners: [app, legacy]"), 1)
	rev2 := f.apply(changed)
	if rev2 <= rev1 {
		t.Fatalf("revision went from %d to %d", rev1, rev2)
	}
	f.waitConverged(rev2)

	// Controller restart: versions do not go back, and current agents are
	// sent nothing. First let every host report its probes, so that what
	// the agents say again after the restart is what is stored.
	waitFor(t, waitTimeout, "every host to report its trust probes", func() (bool, string) {
		for h := range f.agents {
			g, err := fleetAPI.GetHost(ctx, &pb.GetHostRequest{Host: h})
			if err != nil {
				return false, err.Error()
			}
			if len(g.GetStatus().GetProbes()) == 0 || len(g.GetStatus().GetMetadata()) == 0 {
				return false, h + " has not reported probes"
			}
			for _, p := range g.GetStatus().GetProbes() {
				if !p.GetOk() {
					return false, h + ": probe to " + p.GetTargetHost() + " failed: " + p.GetReason()
				}
			}
		}
		return true, ""
	})
	before := f.received()
	sessions := f.sessions()
	cli := f.c.etcd()
	snap, err := cli.Get(ctx, "/s2strust/host", clientv3.WithPrefix()) // hoststate/ and hostreport/
	if err != nil {
		t.Fatal(err)
	}
	cli.Close()
	if len(snap.Kvs) < 10 {
		t.Fatalf("%d host records stored, want state and report for 5 hosts", len(snap.Kvs))
	}
	f.c = f.c.restart()
	f.conn = f.c.admin()
	fleetAPI = pb.NewFleetServiceClient(f.conn)
	waitFor(t, waitTimeout, "every agent to reconnect", func() (bool, string) {
		ok, why := converged(ctx, fleetAPI, rev2)
		if !ok {
			return false, why
		}
		for h, a := range f.agents {
			if a.a.Sessions() <= sessions[h] {
				return false, h + " not reconnected"
			}
		}
		return true, ""
	})
	if after := f.received(); !equalCounts(before, after) {
		t.Errorf("pushes after controller restart: before %v, after %v; current agents must be sent nothing", before, after)
	}
	// Reconnecting agents said what they had said before: host records are
	// written only when they change.
	cli = f.c.etcd()
	defer cli.Close()
	again, err := cli.Get(ctx, "/s2strust/host", clientv3.WithPrefix()) // hoststate/ and hostreport/
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range again.Kvs {
		if kv.ModRevision > snap.Header.Revision {
			t.Errorf("%s rewritten after the restart (revision %d > %d) though nothing changed", kv.Key, kv.ModRevision, snap.Header.Revision)

		}
	}
	top, err := pb.NewTopologyServiceClient(f.conn).GetTopology(ctx, &pb.GetTopologyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if top.GetTopology().GetRevision() != rev2 {
		t.Errorf("after restart current revision = %d, want %d", top.GetTopology().GetRevision(), rev2)
	}

	// Agent restart: it resumes from its state dir without re-applying.
	old := f.agents["ex02.contoso.com"]
	old.stop()
	na := startAgent(t, f.c, old.host, old.product, old.stateDir, old.simDir, old.opts)
	f.agents[old.host] = na
	waitFor(t, waitTimeout, "the restarted agent to reconnect", func() (bool, string) { return na.a.Sessions() > 0, "" })
	f.waitConverged(rev2)
	if n := na.drv.applies.Load(); n != 0 {
		t.Errorf("restarted agent applied %d times, want 0", n)
	}
	if n := na.received.Load(); n != 0 {
		t.Errorf("restarted agent was sent %d desired states, want 0", n)
	}

	// A newer revision after all that still reaches everyone, with a higher version.
	rev3 := f.apply(examples.Contoso)
	if rev3 <= rev2 {
		t.Fatalf("revision went from %d to %d", rev2, rev3)
	}
	f.waitConverged(rev3)
}

func equalCounts(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestInvalidTopologyIsRefusedAndChangesNothing(t *testing.T) {
	dir := t.TempDir()
	c := startController(t, filepath.Join(dir, "controller"), "127.0.0.1:0")
	conn := c.admin()
	api := pb.NewTopologyServiceClient(conn)
	ctx := context.Background()
	if _, err := pb.NewSecretServiceClient(conn).PutSecret(ctx, secretRequest(t, "oauth-2026")); err != nil {
		t.Fatal(err)
	}
	good, err := api.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Immediate: true, Document: examples.Contoso, Filename: "contoso.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name      string
		doc       []byte
		wantParts []string
	}{
		{"unknown field", bytes.Replace(examples.Contoso, []byte("    poolFqdn: pool01.contoso.com"), []byte("    poolFqdn: pool01.contoso.com\n    colour: blue"), 1),
			[]string{"contoso.yaml:", "colour"}},
		{"edge to a missing deployment", bytes.Replace(examples.Contoso, []byte("{from: pool01, to: sharepoint}"), []byte("{from: pool01, to: sharepoint2}"), 1),
			[]string{"trusts[3].to", "sharepoint2"}},
		{"exchange 2010", bytes.Replace(examples.Contoso, []byte(`version: "2019",
     autodiscoverFqdn`), []byte(`version: "2010",
     autodiscoverFqdn`), 1),
			[]string{"deployments[1].version", "2010", "ex01.contoso.com", "Exchange"}},
		{"metadata URL not https", bytes.Replace(examples.Contoso, []byte("webAppUrl: https://sp.contoso.com"), []byte("webAppUrl: http://sp.contoso.com"), 1),
			[]string{"webAppUrl", "http://sp.contoso.com", "https"}},
		{"host in two deployments", bytes.Replace(examples.Contoso, []byte("hosts: [sp01.contoso.com]"), []byte("hosts: [sp01.contoso.com, ex01.contoso.com]"), 1),
			[]string{"ex01.contoso.com", "exchange", "sharepoint"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if bytes.Equal(tc.doc, examples.Contoso) {
				t.Fatal("test case did not change the document")
			}
			_, err := api.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Immediate: true, Document: tc.doc, Filename: "contoso.yaml"})
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("code = %v (%v), want InvalidArgument", status.Code(err), err)
			}
			for _, p := range tc.wantParts {
				if !strings.Contains(status.Convert(err).Message(), p) {
					t.Errorf("message %q does not mention %q", status.Convert(err).Message(), p)
				}
			}
			if len(status.Convert(err).Details()) == 0 {
				t.Error("no google.rpc.BadRequest details")
			}
			cur, err := api.GetTopology(ctx, &pb.GetTopologyRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if cur.GetTopology().GetRevision() != good.GetRevision() {
				t.Errorf("revision moved from %d to %d", good.GetRevision(), cur.GetTopology().GetRevision())
			}
		})
	}

	t.Run("expected revision mismatch", func(t *testing.T) {
		wrong := good.GetRevision() + 100
		_, err := api.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Immediate: true, Document: examples.Contoso, ExpectedRevision: &wrong})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("code = %v, want FailedPrecondition", status.Code(err))
		}
	})
	t.Run("dry run stores nothing and plans", func(t *testing.T) {
		changed := bytes.Replace(examples.Contoso, []byte("removePartners: [app]"), []byte("removePartners: [app, legacy]"), 1)
		resp, err := api.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Immediate: true, Document: changed, DryRun: true})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetChanged() || resp.GetRevision() != good.GetRevision() {
			t.Errorf("dry run changed=%v revision=%d", resp.GetChanged(), resp.GetRevision())
		}
		planned := 0
		for _, hp := range resp.GetPlan() {
			planned += len(hp.GetItems())
		}
		if planned == 0 {
			t.Error("dry run plan is empty for a changed topology")
		}
		revs, err := api.ListTopologyRevisions(ctx, &pb.ListTopologyRevisionsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(revs.GetRevisions()) != 1 {
			t.Errorf("%d revisions stored, want 1", len(revs.GetRevisions()))
		}
	})
	t.Run("identical apply stores nothing", func(t *testing.T) {
		resp, err := api.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Immediate: true, Document: examples.Contoso})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetChanged() || resp.GetRevision() != good.GetRevision() {
			t.Errorf("changed=%v revision=%d, want unchanged %d", resp.GetChanged(), resp.GetRevision(), good.GetRevision())
		}
	})
}

func secretRequest(t *testing.T, name string) *pb.PutSecretRequest {
	t.Helper()
	now := time.Now()
	b, err := certs.Generate(certs.Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com", "fabrikam.com"}, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0), KeyBits: 2048})
	if err != nil {
		t.Fatal(err)
	}
	pfx, err := certs.EncodePFX(b, "pw-"+name)
	if err != nil {
		t.Fatal(err)
	}
	return &pb.PutSecretRequest{Name: name, Pfx: pfx, Password: "pw-" + name}
}

func TestAccessControl(t *testing.T) {
	dir := t.TempDir()
	c := startController(t, filepath.Join(dir, "controller"), "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	t.Run("reflection lists the services and health", func(t *testing.T) {
		stream, err := rpb.NewServerReflectionClient(c.admin()).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, s := range resp.GetListServicesResponse().GetService() {
			got[s.GetName()] = true
		}
		for _, want := range []string{"s2strust.v1.TopologyService", "s2strust.v1.AgentService", "s2strust.v1.FleetService", "grpc.health.v1.Health"} {
			if !got[want] {
				t.Errorf("reflection does not list %s (got %v)", want, got)
			}
		}
	})
	t.Run("no client certificate is refused", func(t *testing.T) {
		caPEM, err := os.ReadFile(pki.Files{Dir: filepath.Join(c.dir, "pki")}.CACert())
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
		conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// TLS asks for a certificate but lets the handshake through, for
		// enrollment and health; every other method refuses the call.
		_, err = pb.NewFleetServiceClient(conn).ListHosts(ctx, &pb.ListHostsRequest{})
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "no verified client certificate") {
			t.Fatalf("without a client certificate: %v, want Unauthenticated", err)
		}
		if stream, err := rpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx); err == nil {
			_ = stream.Send(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_ListServices{}})
			if _, err := stream.Recv(); status.Code(err) != codes.Unauthenticated {
				t.Errorf("reflection without a client certificate: %v, want Unauthenticated", err)
			}
		} else {
			t.Errorf("reflection stream: %v", err)
		}
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Errorf("health without a client certificate: %v, want it open to probes", err)
		}
	})
	t.Run("an agent identity may not call admin services", func(t *testing.T) {
		conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(c.hostTLS("fe01.contoso.com"))))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = pb.NewFleetServiceClient(conn).ListHosts(ctx, &pb.ListHostsRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("agent calling ListHosts: %v, want PermissionDenied", err)
		}
		_, err = pb.NewTopologyServiceClient(conn).ApplyTopology(ctx, &pb.ApplyTopologyRequest{Immediate: true, Document: examples.Contoso})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("agent calling ApplyTopology: %v, want PermissionDenied", err)
		}
	})
	t.Run("an agent may sync only as its own host", func(t *testing.T) {
		conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(c.hostTLS("fe01.contoso.com"))))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		stream, err := pb.NewAgentServiceClient(conn).Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: &pb.Hello{Host: "fe02.contoso.com"}}}); err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "fe01.contoso.com") {
			t.Fatalf("sync as another host: %v, want PermissionDenied naming the certificate's host", err)
		}
	})
	t.Run("admin may not sync", func(t *testing.T) {
		stream, err := pb.NewAgentServiceClient(c.admin()).Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(&pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: &pb.Hello{Host: "fe01.contoso.com"}}})
		_, err = stream.Recv()
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("admin calling Sync: %v, want PermissionDenied", err)
		}
	})
}

func TestControllersShareAnExternalEtcd(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	etcd, err := etcdembed.Start(ctx, filepath.Join(dir, "external-etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close) // after the controllers' cleanups, which close their clients
	key := filepath.Join(dir, "secret.key")
	external := func(c *app.ServeConfig) {
		c.EtcdEndpoints = []string{etcd.Endpoint()}
		c.SecretKeyFile = key
	}
	a := startControllerWith(t, filepath.Join(dir, "a"), "127.0.0.1:0", external)
	if _, err := os.Stat(filepath.Join(dir, "a", "etcd")); !os.IsNotExist(err) {
		t.Errorf("a controller given --etcd-endpoints started an embedded etcd too (%v)", err)
	}
	connA := a.admin()
	if _, err := pb.NewSecretServiceClient(connA).PutSecret(ctx, secretRequest(t, "oauth-2026")); err != nil {
		t.Fatal(err)
	}
	applied, err := pb.NewTopologyServiceClient(connA).ApplyTopology(ctx, &pb.ApplyTopologyRequest{Immediate: true, Document: examples.Contoso})
	if err != nil {
		t.Fatal(err)
	}
	// A second replica with its own data dir sees the same state.
	b := startControllerWith(t, filepath.Join(dir, "b"), "127.0.0.1:0", external)
	connB := b.admin()
	got, err := pb.NewTopologyServiceClient(connB).GetTopology(ctx, &pb.GetTopologyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetTopology().GetRevision() != applied.GetRevision() {
		t.Errorf("replica b sees revision %d, a applied %d", got.GetTopology().GetRevision(), applied.GetRevision())
	}
	waitFor(t, waitTimeout, "replica b to list the hosts", func() (bool, string) {
		resp, err := pb.NewFleetServiceClient(connB).ListHosts(ctx, &pb.ListHostsRequest{})
		if err != nil {
			return false, err.Error()
		}
		return len(resp.GetHosts()) == 5, fmt.Sprintf("%d hosts", len(resp.GetHosts()))
	})
	secrets, err := pb.NewSecretServiceClient(connB).ListSecrets(ctx, &pb.ListSecretsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(secrets.GetSecrets()) != 1 {
		t.Errorf("replica b lists %d secrets, want 1", len(secrets.GetSecrets()))
	}
}

// TestEtcdOutage stops the etcd cluster under a running controller and a
// connected agent, and starts it again: meanwhile the API answers
// Unavailable and changes nothing, the agent keeps its last good state,
// and afterwards everything converges without restarting the controller.
func TestEtcdOutage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	etcdDir := filepath.Join(dir, "external-etcd")
	etcd, err := etcdembed.Start(ctx, etcdDir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { etcd.Close() }()
	c := startControllerWith(t, filepath.Join(dir, "controller"), "127.0.0.1:0", func(cfg *app.ServeConfig) {
		cfg.EtcdEndpoints = []string{etcd.Endpoint()}
		cfg.PresenceTTL = 2 * time.Second
	})
	conn := c.admin()
	if _, err := pb.NewSecretServiceClient(conn).PutSecret(ctx, secretRequest(t, "oauth-2026")); err != nil {
		t.Fatal(err)
	}
	single := []byte(`apiVersion: s2strust/v1
kind: TrustTopology
name: outage
sipDomains: {default: contoso.com}
deployments:
  - {name: exchange, product: exchange, version: "2019", autodiscoverFqdn: autodiscover.contoso.com, hosts: [ex01.contoso.com]}
trusts: []
`)
	a := startAgent(t, c, "ex01.contoso.com", "exchange:2019", filepath.Join(dir, "agent"), filepath.Join(dir, "sim"), agentOpts{})
	api := pb.NewTopologyServiceClient(conn)
	resp, err := api.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Immediate: true, Document: single})
	if err != nil {
		t.Fatal(err)
	}
	fleetAPI := pb.NewFleetServiceClient(conn)
	waitFor(t, waitTimeout, "the host to ack", func() (bool, string) { return converged(ctx, fleetAPI, resp.GetRevision()) })

	etcd.Close()
	changed := bytes.Replace(single, []byte("name: outage"), []byte("name: outage2"), 1)
	waitFor(t, waitTimeout, "the API to answer Unavailable", func() (bool, string) {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		_, err := api.ApplyTopology(cctx, &pb.ApplyTopologyRequest{Immediate: true, Document: changed})
		return status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "nothing was changed"), fmt.Sprintf("%v", err)
	})
	if v, _ := a.a.Applied(); v != resp.GetRevision() {
		t.Errorf("during the outage the agent's applied version is %d, want its last good %d", v, resp.GetRevision())
	}
	// Reads answer from the controller's last view meanwhile, marked stale.
	hosts, err := fleetAPI.ListHosts(ctx, &pb.ListHostsRequest{})
	if err != nil || hosts.GetStale() == nil || hosts.GetStale().GetReason() == "" || len(hosts.GetHosts()) != 1 || hosts.GetHosts()[0].GetAppliedVersion() != resp.GetRevision() {
		t.Errorf("ListHosts during the outage = %v, %v; want ex01 at revision %d, marked stale", hosts, err, resp.GetRevision())
	}
	if g, err := fleetAPI.GetHost(ctx, &pb.GetHostRequest{Name: "hosts/ex01.contoso.com"}); err != nil || g.GetStale() == nil || g.GetHost().GetAppliedVersion() != resp.GetRevision() {
		t.Errorf("GetHost during the outage = %v, %v; want it marked stale", g, err)
	}

	etcd, err = etcdembed.Start(ctx, etcdDir)
	if err != nil {
		t.Fatal(err)
	}
	var rev2 uint64
	waitFor(t, waitTimeout, "the API to work again", func() (bool, string) {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		r, err := api.ApplyTopology(cctx, &pb.ApplyTopologyRequest{Immediate: true, Document: changed})
		if err != nil {
			return false, err.Error()
		}
		rev2 = r.GetRevision()
		return true, ""
	})
	if rev2 <= resp.GetRevision() {
		t.Fatalf("revision after the outage %d, before %d", rev2, resp.GetRevision())
	}
	waitFor(t, waitTimeout, "fleet reads to be current again", func() (bool, string) {
		hosts, err := fleetAPI.ListHosts(ctx, &pb.ListHostsRequest{})
		return err == nil && hosts.GetStale() == nil, fmt.Sprint(hosts.GetStale(), err)
	})
	waitFor(t, waitTimeout, "the host to ack the change made after the outage", func() (bool, string) { return converged(ctx, fleetAPI, rev2) })
	select {
	case err := <-c.done:
		t.Fatalf("the controller stopped during the outage: %v", err)
	default:
	}
}
