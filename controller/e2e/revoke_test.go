package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	agentapp "github.com/s2strust/s2strust/agent/app"
	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func readLeafFile(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		return nil
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func identityOf(ctx context.Context, ids pb.HostIdentityServiceClient, host string) (*pb.HostIdentity, string) {
	resp, err := ids.ListHostIdentities(ctx, &pb.ListHostIdentitiesRequest{})
	if err != nil {
		return nil, err.Error()
	}
	for _, h := range resp.GetHosts() {
		if h.GetHost() == host {
			return h, h.String()
		}
	}
	return nil, host + " not listed"
}

// syncOnce opens a stream with the identity in dir and returns the first
// answer's error.
func syncOnce(t *testing.T, c *controller, dir, host string) error {
	t.Helper()
	read := func(n string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cfg, err := pki.ClientTLSConfig(read("agent.crt"), read("agent.key"), read("ca.crt"), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := pb.NewAgentServiceClient(conn).Sync(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: &pb.Hello{Host: host}}}); err != nil {
		_, err = stream.Recv()
		return err
	}
	_, err = stream.Recv()
	return err
}

// TestRenewAndRevoke: an enrolled agent with a short-lived certificate
// renews it over its connection without restarting and reconnects with
// the new one after the old one expired; `host list` shows its expiry and,
// outside any deployment, that it is unassigned; a revoked host is
// disconnected at once and cannot reconnect, and a new enrollment gives it
// a new identity.
func TestRenewAndRevoke(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := startControllerWith(t, filepath.Join(dir, "controller"), "127.0.0.1:0", func(cfg *app.ServeConfig) { cfg.HostCertTTL = 4 * time.Second })
	admin := c.admin()
	ctx := context.Background()
	const host = "ex01.contoso.com"
	tok, err := pb.NewJoinTokenServiceClient(admin).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Host: host})
	if err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "agent")
	if _, err := agentapp.Enroll(ctx, agentapp.EnrollConfig{Controller: c.addr, Host: host, Token: tok.GetToken(), CAPin: tok.GetCaPin(), StateDir: stateDir}); err != nil {
		t.Fatal(err)
	}
	certFile := filepath.Join(agentapp.IdentityDir(stateDir), "agent.crt")
	first := readLeafFile(t, certFile)
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- agentapp.Run(actx, agentapp.Config{Controller: c.addr, Host: host, Driver: "sim", SimProducts: []string{"exchange:2019"},
			StateDir: stateDir, DriftInterval: time.Hour, Logger: testLogger(t).With("agent", host)})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	ids := pb.NewHostIdentityServiceClient(admin)
	waitFor(t, waitTimeout, host+" connected and unassigned", func() (bool, string) {
		h, s := identityOf(ctx, ids, host)
		return h != nil && h.GetConnected() && h.GetDeployment() == "" && h.GetNotAfter() != nil, s
	})

	// Renewed before expiry, and used for the next connection after the
	// first certificate has expired.
	waitFor(t, waitTimeout, "the certificate renewed", func() (bool, string) {
		cur := readLeafFile(t, certFile)
		return cur != nil && cur.SerialNumber.Cmp(first.SerialNumber) != 0 && time.Now().Before(first.NotAfter), "serial unchanged"
	})
	waitFor(t, waitTimeout, "the first certificate to expire", func() (bool, string) { return time.Now().After(first.NotAfter.Add(time.Second)), "" })
	restarted := time.Now()
	c = c.restart()
	admin = c.admin()
	ids = pb.NewHostIdentityServiceClient(admin)
	// last_seen is set when a stream opens, with the serial it opened with.
	waitFor(t, waitTimeout, host+" reconnected with a renewed certificate", func() (bool, string) {
		h, s := identityOf(ctx, ids, host)
		return h != nil && h.GetConnected() && h.GetLastSeen().AsTime().After(restarted) && h.GetSerial() != first.SerialNumber.Text(16), s
	})

	// Revoked: disconnected at once, refused from then on.
	// (How fast is a measurement, not a test: the agent keeps its stream
	// for ever unless the revocation ends it, well inside the wait.)
	revoked := time.Now()
	if _, err := ids.RevokeHost(ctx, &pb.RevokeHostRequest{Host: host}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitTimeout, host+" disconnected after revocation", func() (bool, string) {
		h, s := identityOf(ctx, ids, host)
		return h != nil && !h.GetConnected() && h.GetRevokedAt() != nil, s
	})
	err = syncOnce(t, c, agentapp.IdentityDir(stateDir), host)
	if code := status.Code(err); code != codes.Unavailable && code != codes.Unauthenticated {
		t.Errorf("sync with the revoked identity: %v, want the handshake or the call refused", err)
	}
	again, err := ids.RevokeHost(ctx, &pb.RevokeHostRequest{Host: host})
	if err != nil || !again.GetAlreadyRevoked() {
		t.Errorf("revoke again: %v, %v; want already revoked", again, err)
	}
	if _, err := ids.RevokeHost(ctx, &pb.RevokeHostRequest{Host: "not a host"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("revoke an invalid name: %v, want INVALID_ARGUMENT", err)
	}

	// A new enrollment is a new identity, issued after the revocation.
	tok2, err := pb.NewJoinTokenServiceClient(admin).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Host: host})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitTimeout, "a second past the revocation", func() (bool, string) { return time.Since(revoked) > 1100*time.Millisecond, "" })
	fresh := filepath.Join(dir, "fresh")
	if _, err := agentapp.Enroll(ctx, agentapp.EnrollConfig{Controller: c.addr, Host: host, Token: tok2.GetToken(), CAPin: tok2.GetCaPin(), StateDir: fresh}); err != nil {
		t.Fatal(err)
	}
	if err := syncOnce(t, c, agentapp.IdentityDir(fresh), host); err != nil {
		t.Errorf("sync with the identity enrolled after the revocation: %v", err)
	}
	// An expired certificate of this CA is refused at the handshake, and
	// the refusal is audited with the identity it claims.
	freshLeaf := readLeafFile(t, filepath.Join(agentapp.IdentityDir(fresh), "agent.crt"))
	waitFor(t, waitTimeout, "the fresh certificate to expire", func() (bool, string) { return time.Now().After(freshLeaf.NotAfter.Add(time.Second)), "" })
	if err := syncOnce(t, c, agentapp.IdentityDir(fresh), host); status.Code(err) != codes.Unavailable {
		t.Errorf("sync with an expired certificate: %v, want the handshake refused", err)
	}
	var trail *pb.ListAuditRecordsResponse
	waitFor(t, waitTimeout, "the refused handshakes in the audit trail", func() (bool, string) {
		trail, err = pb.NewAuditServiceClient(admin).ListAuditRecords(ctx, &pb.ListAuditRecordsRequest{})
		if err != nil {
			return false, err.Error()
		}
		var expired, revoked bool
		for _, r := range trail.GetRecords() {
			if r.GetKind() != "refused" || r.GetWhat() != "TLS handshake" {
				continue
			}
			expired = expired || (r.GetWho() == "unverified host/"+host && strings.Contains(r.GetResult(), "expired"))
			revoked = revoked || strings.Contains(r.GetResult(), "revoked")
		}
		return expired && revoked, fmt.Sprintf("expired %v, revoked %v in %d records", expired, revoked, len(trail.GetRecords()))
	})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, r := range trail.GetRecords() {
		kinds = append(kinds, r.GetKind()+":"+r.GetWhat())
	}
	joined := strings.Join(kinds, "\n")
	for _, want := range []string{"identity:renew the certificate of " + host, "identity:revoke host " + host} {
		if !strings.Contains(joined, want) {
			t.Errorf("audit trail lacks %q:\n%s", want, joined)
		}
	}
}
