package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapp "github.com/s2strust/s2strust/agent/app"
	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// loopbackDialer resolves every name to the controller's loopback address,
// as DNS would resolve ctl.example.test to the controller's machine.
func loopbackDialer(addr string) func(ctx context.Context, _ string) (net.Conn, error) {
	return func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

func hostConnected(ctx context.Context, conn pb.FleetServiceClient, host string) (bool, string) {
	resp, err := conn.ListHosts(ctx, &pb.ListHostsRequest{})
	if err != nil {
		return false, err.Error()
	}
	for _, h := range resp.GetHosts() {
		if h.GetHost() == host {
			return h.GetConnected(), fmt.Sprintf("%s connected %v", host, h.GetConnected())
		}
	}
	return false, host + " not listed"
}

// TestServeTLSSAN: a controller serving --tls-san ctl.example.test is
// reached by the admin client and by an agent under that name; restarted
// without the flag, its certificate no longer names it and the client's
// error says so instead of asking whether serve is running.
func TestServeTLSSAN(t *testing.T) {
	dir := t.TempDir()
	sans := []string{"ctl.example.test"}
	c := startControllerWith(t, filepath.Join(dir, "controller"), "127.0.0.1:0", func(cfg *app.ServeConfig) { cfg.TLS.SANs = sans })
	_, port, _ := net.SplitHostPort(c.addr)
	name := "ctl.example.test:" + port
	ctx := context.Background()

	admin, err := app.Dial(app.ClientConfig{DataDir: c.dir, Addr: name, Dialer: loopbackDialer(c.addr)})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	fleet := pb.NewFleetServiceClient(admin)
	if _, err := pb.NewSecretServiceClient(admin).PutSecret(ctx, secretRequest(t, "oauth-2026")); err != nil {
		t.Fatal(err)
	}
	if _, err := pb.NewTopologyServiceClient(admin).ApplyTopology(ctx, &pb.ApplyTopologyRequest{Immediate: true, Document: examples.Contoso}); err != nil {
		t.Fatalf("apply as ctl.example.test: %v", err)
	}

	// The agent, as s2s-agent enroll and run do it: enrolled with a join
	// token, then running on the stored identity, the controller by name.
	host := "fe01.contoso.com"
	tok, err := pb.NewJoinTokenServiceClient(admin).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Host: host})
	if err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "agent-state")
	if _, err := agentapp.Enroll(ctx, agentapp.EnrollConfig{Controller: name, Dialer: loopbackDialer(c.addr), Host: host,
		Token: tok.GetToken(), CAPin: tok.GetCaPin(), StateDir: stateDir}); err != nil {
		t.Fatalf("enroll through ctl.example.test: %v", err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- agentapp.Run(actx, agentapp.Config{Controller: name, ControllerDialer: loopbackDialer(c.addr), Host: host,
			Driver: "sim", SimProducts: []string{"lync:2015"}, StateDir: stateDir,
			DriftInterval: time.Hour, Logger: testLogger(t).With("agent", host)})
	}()
	waitFor(t, waitTimeout, host+" connected through ctl.example.test", func() (bool, string) { return hostConnected(ctx, fleet, host) })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("agent: %v", err)
	}

	// Without the flag the serving certificate is reissued without the name.
	sans = nil
	c = c.restart()
	_, port, _ = net.SplitHostPort(c.addr)
	admin2, err := app.Dial(app.ClientConfig{DataDir: c.dir, Addr: "ctl.example.test:" + port, Dialer: loopbackDialer(c.addr)})
	if err != nil {
		t.Fatal(err)
	}
	defer admin2.Close()
	_, err = pb.NewFleetServiceClient(admin2).ListHosts(ctx, &pb.ListHostsRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `certificate does not name \"ctl.example.test\" (it names localhost`) || !strings.Contains(err.Error(), "--tls-san ctl.example.test") {
		t.Errorf("list hosts as ctl.example.test without --tls-san: %v, want UNAVAILABLE saying the certificate does not name it", err)
	}
	// By its loopback address it still answers.
	if _, err := pb.NewFleetServiceClient(c.admin()).ListHosts(ctx, &pb.ListHostsRequest{}); err != nil {
		t.Errorf("list hosts by address: %v", err)
	}
}

func TestServeRefusesBadTLSSAN(t *testing.T) {
	for _, bad := range []string{"bad name", "-lead.example.test", "ctl_example.test"} {
		dir := t.TempDir()
		err := app.Serve(context.Background(), app.ServeConfig{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger(t), TLS: app.ServeTLS{SANs: []string{bad}}})
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("--tls-san %q", bad)) {
			t.Errorf("serve --tls-san %q: %v, want an error naming the value", bad, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "pki", "server.crt")); !os.IsNotExist(err) {
			t.Errorf("serve --tls-san %q left a server certificate behind (%v)", bad, err)
		}
	}
}

// TestReplicasShareOneCA: two replicas on one etcd cluster use the CA the
// first one stored; an agent whose certificate replica A issued syncs with
// replica B after A is gone.
func TestReplicasShareOneCA(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	etcd, err := etcdembed.Start(ctx, filepath.Join(dir, "external-etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	key := filepath.Join(dir, "secret.key")
	external := func(c *app.ServeConfig) {
		c.EtcdEndpoints = []string{etcd.Endpoint()}
		c.SecretKeyFile = key
	}
	a := startControllerWith(t, filepath.Join(dir, "a"), "127.0.0.1:0", external)
	b := startControllerWith(t, filepath.Join(dir, "b"), "127.0.0.1:0", external)
	if !bytes.Equal(a.ca().CertPEM(), b.ca().CertPEM()) {
		t.Fatal("replicas a and b use different CAs")
	}
	if _, err := pb.NewSecretServiceClient(a.admin()).PutSecret(ctx, secretRequest(t, "oauth-2026")); err != nil {
		t.Fatal(err)
	}
	if _, err := pb.NewTopologyServiceClient(a.admin()).ApplyTopology(ctx, &pb.ApplyTopologyRequest{Immediate: true, Document: examples.Contoso}); err != nil {
		t.Fatal(err)
	}
	// The CA key is sealed in etcd, never there in the clear.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "/s2strust/pki/ca")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read the stored CA: %v, %v", resp, err)
	}
	caKey, err := a.ca().KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(resp.Kvs[0].Value, caKey) || bytes.Contains(resp.Kvs[0].Value, []byte("PRIVATE KEY")) {
		t.Error("the stored CA holds its private key in the clear")
	}
	// An agent enrolled at replica A, given both replicas, moves to B when A dies.
	host := "ex01.contoso.com"
	tok, err := pb.NewJoinTokenServiceClient(a.admin()).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Host: host})
	if err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "agents", host)
	if _, err := agentapp.Enroll(ctx, agentapp.EnrollConfig{Controller: a.addr, Host: host, Token: tok.GetToken(), CAPin: tok.GetCaPin(), StateDir: stateDir}); err != nil {
		t.Fatalf("enroll at replica a: %v", err)
	}
	started := time.Now()
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- agentapp.Run(actx, agentapp.Config{Controller: a.addr + "," + b.addr, Host: host, Driver: "sim", SimProducts: []string{"exchange:2019"},
			StateDir: stateDir, DriftInterval: time.Hour, Logger: testLogger(t).With("agent", host)})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	idsB := pb.NewHostIdentityServiceClient(b.admin())
	openedSince := func(t0 time.Time) func() (bool, string) {
		return func() (bool, string) {
			h, s := identityOf(ctx, idsB, host)
			return h != nil && h.GetLastSeen().AsTime().After(t0), s
		}
	}
	waitFor(t, waitTimeout, host+" opened a stream", openedSince(started))
	killed := time.Now()
	a.stop()
	waitFor(t, waitTimeout, host+" opened a stream at replica b after a was stopped", openedSince(killed))
	waitFor(t, waitTimeout, host+" connected at b", func() (bool, string) {
		return hostConnected(ctx, pb.NewFleetServiceClient(b.admin()), host)
	})
	// Revoked through another replica, C: B's watch of the deny list ends
	// the stream there.
	c := startControllerWith(t, filepath.Join(dir, "c"), "127.0.0.1:0", external)
	if _, err := pb.NewHostIdentityServiceClient(c.admin()).RevokeHost(ctx, &pb.RevokeHostRequest{Host: host}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, host+" disconnected from b after its revocation at c", func() (bool, string) {
		ok, s := hostConnected(ctx, pb.NewFleetServiceClient(b.admin()), host)
		return !ok, s
	})

	// A replica with another secret key cannot open the CA and says why.
	other := filepath.Join(dir, "other.key")
	err = app.Serve(ctx, app.ServeConfig{DataDir: filepath.Join(dir, "d"), Listen: "127.0.0.1:0", Logger: testLogger(t),
		EtcdEndpoints: []string{etcd.Endpoint()}, SecretKeyFile: other})
	if err == nil || !strings.Contains(err.Error(), "same --secret-key") {
		t.Errorf("replica with another secret key: %v, want an error about --secret-key", err)
	}
}

// writeOperatorCA writes an intermediate CA under a new root, as an
// organisation's PKI would hand one out, and returns its files.
func writeOperatorCA(t *testing.T, dir, name string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	now := time.Now()
	root, err := certs.Generate(certs.Template{CommonName: name + " root", IsCA: true, ECDSA: true, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(2, 0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := certs.Generate(certs.Template{CommonName: name + " issuing CA", IsCA: true, ECDSA: true, Issuer: root, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(inter.Key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: inter.Cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, inter.Cert
}

// TestOperatorCA: with --ca-cert/--ca-key the fleet's identities come
// from the organisation's intermediate CA; a replica given another CA than
// the stored one refuses to start, naming both.
func TestOperatorCA(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, inter := writeOperatorCA(t, dir, "contoso")
	withCA := func(cfg *app.ServeConfig) { cfg.TLS.CACertFile, cfg.TLS.CAKeyFile = certFile, keyFile }
	c := startControllerWith(t, filepath.Join(dir, "controller"), "127.0.0.1:0", withCA)
	if !c.ca().Cert.Equal(inter) {
		t.Fatalf("the data dir's CA is %q, want the operator's %q", c.ca().Cert.Subject, inter.Subject)
	}
	ctx := context.Background()
	tok, err := pb.NewJoinTokenServiceClient(c.admin()).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Host: "fe01.contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetCaPin() != pki.CAPin(inter) {
		t.Errorf("token pin %s, want the operator CA's %s", tok.GetCaPin(), pki.CAPin(inter))
	}
	if _, err := agentapp.Enroll(ctx, agentapp.EnrollConfig{Controller: c.addr, Host: "fe01.contoso.com", Token: tok.GetToken(), CAPin: tok.GetCaPin(), StateDir: filepath.Join(dir, "agent")}); err != nil {
		t.Fatalf("enroll under the operator CA: %v", err)
	}
	c.stop()

	otherCert, otherKey, _ := writeOperatorCA(t, dir, "fabrikam")
	err = app.Serve(ctx, app.ServeConfig{DataDir: c.dir, Listen: "127.0.0.1:0", Logger: testLogger(t),
		TLS: app.ServeTLS{CACertFile: otherCert, CAKeyFile: otherKey}})
	if err == nil || !strings.Contains(err.Error(), "fabrikam issuing CA") || !strings.Contains(err.Error(), "contoso issuing CA") {
		t.Errorf("serve with another operator CA: %v, want a refusal naming both CAs", err)
	}
	err = app.Serve(ctx, app.ServeConfig{DataDir: c.dir, Listen: "127.0.0.1:0", Logger: testLogger(t), TLS: app.ServeTLS{CACertFile: otherCert}})
	if err == nil || !strings.Contains(err.Error(), "--ca-cert and --ca-key go together") {
		t.Errorf("serve with --ca-cert alone: %v", err)
	}
}

// TestFailoverResyncsWithoutReapplying: agents that know two replicas and
// are current when theirs dies move to the other one, which sends them
// nothing, and they apply nothing.
func TestFailoverResyncsWithoutReapplying(t *testing.T) {
	dir := t.TempDir()
	etcd, err := etcdembed.Start(context.Background(), filepath.Join(dir, "external-etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	key := filepath.Join(dir, "secret.key")
	external := func(c *app.ServeConfig) {
		c.EtcdEndpoints = []string{etcd.Endpoint()}
		c.SecretKeyFile = key
	}
	b := startControllerWith(t, filepath.Join(dir, "b"), "127.0.0.1:0", external)
	f := startFleetWith(t, examples.Contoso, agentOpts{alsoReplicas: []string{b.addr}}, external)
	f.waitConverged(f.apply(examples.Contoso))
	before, sessions := f.received(), f.sessions()
	applies := map[string]int64{}
	for h, a := range f.agents {
		applies[h] = a.drv.applies.Load()
	}
	f.c.stop()
	fleetB := pb.NewFleetServiceClient(b.admin())
	waitFor(t, waitTimeout, "every agent to move to replica b", func() (bool, string) {
		for h, a := range f.agents {
			if a.a.Sessions() <= sessions[h] {
				return false, h + " has not reconnected"
			}
		}
		resp, err := fleetB.ListHosts(context.Background(), &pb.ListHostsRequest{})
		if err != nil {
			return false, err.Error()
		}
		return len(resp.GetHosts()) == len(f.agents), fmt.Sprintf("b lists %d hosts", len(resp.GetHosts()))
	})
	if after := f.received(); !equalCounts(before, after) {
		t.Errorf("pushes after failover: before %v, after %v; current agents must be sent nothing", before, after)
	}
	for h, a := range f.agents {
		if n := a.drv.applies.Load(); n != applies[h] {
			t.Errorf("%s applied %d times after failover, want none", h, n-applies[h])
		}
	}
}
