package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	agentapp "github.com/s2strust/s2strust/agent/app"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/simnet"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestEnrollWithJoinToken: a fresh host enrolls with a join token and
// converges with the fleet; the token works once, for its host only; the
// controller stores only the token's hash; a wrong pin trusts nothing.
func TestEnrollWithJoinToken(t *testing.T) {
	dir := t.TempDir()
	c := startController(t, filepath.Join(dir, "controller"), "127.0.0.1:0")
	admin := c.admin()
	ctx := context.Background()
	tokens := pb.NewJoinTokenServiceClient(admin)
	const host = "fe01.contoso.com"

	tok, err := tokens.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Host: "FE01.contoso.com.", Ttl: durationpb.New(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetHost() != host || tok.GetCaPin() != pki.CAPin(c.ca().Cert) {
		t.Fatalf("token for %q with pin %q; want %s and the CA's pin %s", tok.GetHost(), tok.GetCaPin(), host, pki.CAPin(c.ca().Cert))
	}
	other, err := tokens.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Host: "fe02.contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	// Only hashes are stored.
	cli := c.etcd()
	defer cli.Close()
	all, err := cli.Get(ctx, "/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range all.Kvs {
		if strings.Contains(string(kv.Key)+string(kv.Value), tok.GetToken()) {
			t.Errorf("etcd key %s holds the join token in the clear", kv.Key)
		}
	}

	enroll := func(stateDir, host, token, pin string) error {
		_, err := agentapp.Enroll(ctx, agentapp.EnrollConfig{Controller: c.addr, Host: host, Token: token, CAPin: pin, StateDir: stateDir})
		return err
	}
	wantRefused := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "join token refused: it is wrong, expired, already used or made for another host") {
			t.Errorf("%s: %v, want the one UNAUTHENTICATED refusal", what, err)
		}
	}
	stateDir := filepath.Join(dir, "agents", host)
	// A wrong pin: the agent refuses the controller before sending the token.
	wrongPin := "sha256:" + strings.Repeat("ab", 32)
	if err := enroll(stateDir, host, tok.GetToken(), wrongPin); err == nil || !strings.Contains(err.Error(), "no CA matching the pin") {
		t.Errorf("enroll with a wrong pin: %v, want a TLS refusal naming the pin", err)
	}
	wantRefused("a token made for another host", enroll(stateDir, host, other.GetToken(), tok.GetCaPin()))
	wantRefused("a made-up token", enroll(stateDir, host, "s2s.not-a-token", tok.GetCaPin()))
	wantRefused("a token for an unknown host", enroll(stateDir, "nobody.contoso.com", "s2s.not-a-token", tok.GetCaPin()))
	if _, err := os.Stat(agentapp.IdentityDir(stateDir)); !os.IsNotExist(err) {
		t.Fatalf("a refused enrollment left an identity behind (%v)", err)
	}

	// A request for more than the host's identity is refused naming the
	// field, and the token stays usable.
	anonTLS, err := pki.EnrollTLSConfig(tok.GetCaPin(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	anon, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(anonTLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	otherCSR, _, err := pki.NewHostCSR("fe02.contoso.com")
	if err != nil {
		t.Fatal(err)
	}
	_, err = pb.NewEnrollmentServiceClient(anon).Enroll(ctx, &pb.EnrollRequest{Host: host, Token: tok.GetToken(), Csr: otherCSR})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "csr") || !strings.Contains(err.Error(), "fe02.contoso.com") {
		t.Errorf("enroll with a CSR for another host: %v, want INVALID_ARGUMENT naming csr and the name", err)
	}
	// Without a client certificate nothing but enrollment and health answers.
	if _, err := pb.NewFleetServiceClient(anon).ListHosts(ctx, &pb.ListHostsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("list hosts without a client certificate: %v, want UNAUTHENTICATED", err)
	}
	if _, err := pb.NewJoinTokenServiceClient(anon).CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Host: host}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("create a token without a client certificate: %v, want UNAUTHENTICATED", err)
	}

	if err := enroll(stateDir, host, tok.GetToken(), tok.GetCaPin()); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	idDir := agentapp.IdentityDir(stateDir)
	for _, f := range []string{"", "agent.key", "agent.crt", "ca.crt"} {
		fi, err := os.Stat(filepath.Join(idDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want owner-only", filepath.Join(idDir, f), fi.Mode().Perm())
		}
	}
	if h, s := identityOf(ctx, pb.NewHostIdentityServiceClient(admin), host); h == nil || h.GetNotAfter() == nil || h.LastSeen != nil {
		t.Errorf("host list right after enrollment: %s; want the expiry and no last seen yet", s)
	}
	wantRefused("the same token again", enroll(filepath.Join(dir, "again"), host, tok.GetToken(), tok.GetCaPin()))
	// The other host's token was not used up by the refused attempt.
	if err := enroll(filepath.Join(dir, "agents", "fe02.contoso.com"), "fe02.contoso.com", other.GetToken(), other.GetCaPin()); err != nil {
		t.Errorf("enroll fe02 with its own token after a refused attempt: %v", err)
	}

	// The enrolled identity is what the agent runs with, and the fleet converges.
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(idDir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	enrolledTLS, err := pki.ClientTLSConfig(read("agent.crt"), read("agent.key"), read("ca.crt"), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	topo, err := topology.Load("contoso.yaml", examples.Contoso)
	if err != nil {
		t.Fatal(err)
	}
	network, err := simnet.New(topo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(network.Close)
	f := &fleet{t: t, dir: dir, c: c, conn: admin, agents: map[string]*agent{}, topo: topo, network: network}
	f.putIssuerSecret("oauth-2026", "contoso.com", []string{"contoso.com", "fabrikam.com"}, issuerPassword)
	for _, d := range topo.Deployments {
		for _, h := range d.Hosts {
			o := agentOpts{network: network}
			if h == host {
				o.clientTLS = enrolledTLS
			}
			f.agents[h] = startAgent(t, c, h, d.Product+":"+d.Version, filepath.Join(dir, "agents", h), filepath.Join(dir, "sim"), o)
		}
	}
	f.waitConverged(f.apply(examples.Contoso))

	// The trail holds every token event, refusals included, and pages.
	auditc := pb.NewAuditServiceClient(admin)
	trail, err := auditc.ListAuditRecords(ctx, &pb.ListAuditRecordsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var paged []*pb.AuditRecord
	req := &pb.ListAuditRecordsRequest{PageSize: 2}
	for pages := 0; ; pages++ {
		if pages > 50 {
			t.Fatal("paging does not end")
		}
		resp, err := auditc.ListAuditRecords(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		paged = append(paged, resp.GetRecords()...)
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if len(paged) != len(trail.GetRecords()) {
		t.Errorf("paged through %d records, one page holds %d", len(paged), len(trail.GetRecords()))
	}
	var enrolled, refused int
	for i, r := range trail.GetRecords() {
		if i > 0 && r.GetRevision() <= trail.GetRecords()[i-1].GetRevision() {
			t.Errorf("record %d at revision %d is not after %d", i, r.GetRevision(), trail.GetRecords()[i-1].GetRevision())
		}
		if r.GetKind() == "token" && r.GetWho() == "host/"+host && r.GetResult() == "ok" {
			enrolled++
		}
		if r.GetKind() == "token" && strings.HasPrefix(r.GetResult(), "refused") {
			refused++
		}
	}
	if enrolled != 1 || refused < 4 {
		t.Errorf("audit trail: %d enrollments of %s, %d refusals; want 1 and at least 4:\n%v", enrolled, host, refused, trail.GetRecords())
	}

	// Tokens for bad input are refused naming the field.
	for _, req := range []*pb.CreateJoinTokenRequest{{Host: "not a host"}, {Host: "fe01"}, {Host: host, Ttl: durationpb.New(48 * time.Hour)}} {
		if _, err := tokens.CreateJoinToken(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("create token %v: %v, want INVALID_ARGUMENT", req, err)
		}
	}
}
