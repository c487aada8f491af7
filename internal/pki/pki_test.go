package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newTestCA(t *testing.T, now time.Time) *CA {
	t.Helper()
	ca, err := NewCA("test CA", now)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func parseCertPEM(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("no CERTIFICATE block in %q", b)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	return cert
}

// certWithURIs signs a client certificate with arbitrary URI SANs, as a
// careless or hostile issuer might, to test what IdentityFromCert accepts.
func certWithURIs(t *testing.T, ca *CA, cn string, uris ...string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		NotBefore:   ca.Cert.NotBefore,
		NotAfter:    ca.Cert.NotAfter,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("parse %q: %v", s, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestNewCA(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ca := newTestCA(t, now)
	c := ca.Cert
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v MaxPathLen=%d MaxPathLenZero=%v, want a CA with path length 0",
			c.IsCA, c.BasicConstraintsValid, c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("KeyUsage %v lacks CertSign", c.KeyUsage)
	}
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if want := now.AddDate(10, 0, 0); c.NotAfter.Before(want.Add(-3*24*time.Hour)) || c.NotAfter.After(want) {
		t.Errorf("NotAfter %s, want about 10 years after %s", c.NotAfter, now)
	}
	if c.NotBefore.After(now) {
		t.Errorf("NotBefore %s is after now %s", c.NotBefore, now)
	}
	if c.Subject.CommonName != "test CA" {
		t.Errorf("CN %q, want %q", c.Subject.CommonName, "test CA")
	}
}

func TestLoadCA(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(ca.CertPEM(), keyPEM)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !bytes.Equal(loaded.Cert.Raw, ca.Cert.Raw) {
		t.Error("loaded CA certificate differs")
	}
	certPEM, _, err := loaded.IssueAdmin("alice", now, time.Hour)
	if err != nil {
		t.Fatalf("issue with loaded CA: %v", err)
	}
	if err := parseCertPEM(t, certPEM).CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("certificate from loaded CA does not verify against original: %v", err)
	}

	other := newTestCA(t, now)
	otherKey, err := other.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	leafCert, leafKey, err := ca.IssueAdmin("bob", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name            string
		certPEM, keyPEM []byte
		want            string
	}{
		{"key of another CA", ca.CertPEM(), otherKey, "does not match"},
		{"leaf certificate", leafCert, leafKey, "not a ca"},
		{"no key", ca.CertPEM(), nil, "load ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadCA(tc.certPEM, tc.keyPEM)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadCA error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestIssuedCertificates(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ca := newTestCA(t, now)

	srvPEM, srvKey, err := ca.IssueServer([]string{"Controller.Example.com.", "10.0.0.1", "localhost", "controller.example.com"}, now, 24*time.Hour)
	if err != nil {
		t.Fatalf("IssueServer: %v", err)
	}
	adminPEM, adminKey, err := ca.IssueAdmin("alice", now, 24*time.Hour)
	if err != nil {
		t.Fatalf("IssueAdmin: %v", err)
	}
	hostPEM, hostKey, err := ca.IssueHost("EX01.Contoso.COM.", now, 24*time.Hour)
	if err != nil {
		t.Fatalf("IssueHost: %v", err)
	}
	for _, p := range []struct {
		name     string
		cert     []byte
		key      []byte
		usage    x509.ExtKeyUsage
		cn       string
		identity Identity
	}{
		{"server", srvPEM, srvKey, x509.ExtKeyUsageServerAuth, "controller.example.com", Identity{Kind: KindServer}},
		{"admin", adminPEM, adminKey, x509.ExtKeyUsageClientAuth, "alice", Identity{Kind: KindAdmin, Name: "alice", Role: RoleAdmin}},
		{"host", hostPEM, hostKey, x509.ExtKeyUsageClientAuth, "ex01.contoso.com", Identity{Kind: KindHost, Name: "ex01.contoso.com"}},
	} {
		t.Run(p.name, func(t *testing.T) {
			if _, err := tls.X509KeyPair(p.cert, p.key); err != nil {
				t.Fatalf("key does not match certificate: %v", err)
			}
			c := parseCertPEM(t, p.cert)
			roots := x509.NewCertPool()
			roots.AddCert(ca.Cert)
			if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{p.usage}}); err != nil {
				t.Errorf("verify for %v: %v", p.usage, err)
			}
			if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != p.usage {
				t.Errorf("ExtKeyUsage %v, want only %v", c.ExtKeyUsage, p.usage)
			}
			if c.IsCA {
				t.Error("leaf is a CA")
			}
			if c.Subject.CommonName != p.cn {
				t.Errorf("CN %q, want %q", c.Subject.CommonName, p.cn)
			}
			if !c.NotAfter.Equal(now.Add(24 * time.Hour)) {
				t.Errorf("NotAfter %s, want %s", c.NotAfter, now.Add(24*time.Hour))
			}
			id, err := IdentityFromCert(c)
			if err != nil || id != p.identity {
				t.Errorf("IdentityFromCert = %v, %v; want %v", id, err, p.identity)
			}
		})
	}

	srv := parseCertPEM(t, srvPEM)
	if got, want := strings.Join(srv.DNSNames, ","), "controller.example.com,localhost"; got != want {
		t.Errorf("server DNSNames %q, want %q", got, want)
	}
	if len(srv.IPAddresses) != 1 || !srv.IPAddresses[0].Equal(net.ParseIP("10.0.0.1")) {
		t.Errorf("server IPAddresses %v, want [10.0.0.1]", srv.IPAddresses)
	}
	if got := srv.URIs; len(got) != 1 || got[0].String() != "spiffe://s2strust/server" {
		t.Errorf("server URIs %v, want [spiffe://s2strust/server]", got)
	}
	host := parseCertPEM(t, hostPEM)
	if got := host.URIs; len(got) != 1 || got[0].String() != "spiffe://s2strust/host/ex01.contoso.com" {
		t.Errorf("host URIs %v", got)
	}
}

func TestIssueValidity(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ca := newTestCA(t, now)

	certPEM, _, err := ca.IssueHost("ex01.contoso.com", now, 50*365*24*time.Hour)
	if err != nil {
		t.Fatalf("IssueHost with long ttl: %v", err)
	}
	if got := parseCertPEM(t, certPEM).NotAfter; !got.Equal(ca.Cert.NotAfter) {
		t.Errorf("NotAfter %s, want capped at CA NotAfter %s", got, ca.Cert.NotAfter)
	}
	for _, tc := range []struct {
		name string
		now  time.Time
		ttl  time.Duration
		want string
	}{
		{"zero ttl", now, 0, "not positive"},
		{"negative ttl", now, -time.Hour, "not positive"},
		{"after ca expiry", ca.Cert.NotAfter.Add(time.Second), time.Hour, "not valid at"},
		{"before ca start", ca.Cert.NotBefore.Add(-time.Second), time.Hour, "not valid at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ca.IssueHost("ex01.contoso.com", tc.now, tc.ttl)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("IssueHost error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestIssueRejectsInvalidNames(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	for _, fqdn := range []string{
		"", "web01", ".", "a..contoso.com", "-a.contoso.com", "a-.contoso.com", "a_b.contoso.com",
		"ex 01.contoso.com", "ex01.contoso.com/x", "1.2.3.4", "::1", "host.123",
		strings.Repeat("a", 64) + ".contoso.com", strings.Repeat("abcdefghi.", 26) + "com",
	} {
		if _, _, err := ca.IssueHost(fqdn, now, time.Hour); err == nil || !strings.Contains(err.Error(), "invalid fqdn") {
			t.Errorf("IssueHost(%q) error %v, want invalid fqdn", fqdn, err)
		}
	}
	for _, name := range []string{"", ".", "..", "a/b", "a b", "alice@contoso", strings.Repeat("a", 65)} {
		if _, _, err := ca.IssueAdmin(name, now, time.Hour); err == nil || !strings.Contains(err.Error(), "admin name") {
			t.Errorf("IssueAdmin(%q) error %v, want an admin name error", name, err)
		}
	}
	for _, names := range [][]string{nil, {""}, {"a_b.example.com"}, {"localhost", "bad name"}} {
		if _, _, err := ca.IssueServer(names, now, time.Hour); err == nil {
			t.Errorf("IssueServer(%q) succeeded, want error", names)
		}
	}
}

func TestIdentityFromCert(t *testing.T) {
	ca := newTestCA(t, time.Now())
	for _, tc := range []struct {
		name    string
		cert    *x509.Certificate
		want    Identity
		wantErr string
	}{
		{"admin", certWithURIs(t, ca, "alice", "spiffe://s2strust/admin/alice"), Identity{KindAdmin, "alice", RoleAdmin}, ""},
		{"host", certWithURIs(t, ca, "ex01.contoso.com", "spiffe://s2strust/host/ex01.contoso.com"), Identity{KindHost, "ex01.contoso.com", RoleNone}, ""},
		{"server", certWithURIs(t, ca, "controller", "spiffe://s2strust/server"), Identity{Kind: KindServer}, ""},
		{"CN is ignored", certWithURIs(t, ca, "admin", "spiffe://s2strust/host/ex01.contoso.com"), Identity{KindHost, "ex01.contoso.com", RoleNone}, ""},
		{"other URI schemes are ignored", certWithURIs(t, ca, "x", "https://example.com/admin/root", "spiffe://s2strust/admin/alice"), Identity{KindAdmin, "alice", RoleAdmin}, ""},
		{"no URI", certWithURIs(t, ca, "admin"), Identity{}, "no spiffe URI SAN"},
		{"only a non-spiffe URI", certWithURIs(t, ca, "admin", "https://s2strust/admin/admin"), Identity{}, "no spiffe URI SAN"},
		{"two identities", certWithURIs(t, ca, "x", "spiffe://s2strust/host/ex01.contoso.com", "spiffe://s2strust/admin/alice"), Identity{}, "want exactly one"},
		{"other trust domain", certWithURIs(t, ca, "x", "spiffe://example.org/admin/alice"), Identity{}, "trust domain"},
		{"upper-case host", certWithURIs(t, ca, "x", "spiffe://s2strust/host/EX01.contoso.com"), Identity{}, "canonical"},
		{"host not fqdn", certWithURIs(t, ca, "x", "spiffe://s2strust/host/ex01"), Identity{}, "invalid fqdn"},
		{"empty admin", certWithURIs(t, ca, "x", "spiffe://s2strust/admin/"), Identity{}, "admin name is empty"},
		{"nested path", certWithURIs(t, ca, "x", "spiffe://s2strust/admin/a/b"), Identity{}, "path is not"},
		{"unknown kind", certWithURIs(t, ca, "x", "spiffe://s2strust/root/x"), Identity{}, "path is not"},
		{"server with name", certWithURIs(t, ca, "x", "spiffe://s2strust/server/x"), Identity{}, "path is not"},
		{"query", certWithURIs(t, ca, "x", "spiffe://s2strust/admin/alice?x=1"), Identity{}, "query"},
		{"escaped path", certWithURIs(t, ca, "x", "spiffe://s2strust/admin/al%2Fice"), Identity{}, "escaping"},
		{"user info", certWithURIs(t, ca, "x", "spiffe://u@s2strust/admin/alice"), Identity{}, "user"},
		{"nil", nil, Identity{}, "no certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := IdentityFromCert(tc.cert)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("IdentityFromCert = %v, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("IdentityFromCert = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestIdentityString(t *testing.T) {
	for _, tc := range []struct {
		id   Identity
		want string
	}{
		{Identity{KindAdmin, "alice", RoleAdmin}, "admin/alice"},
		{Identity{KindHost, "ex01.contoso.com", RoleNone}, "host/ex01.contoso.com"},
		{Identity{Kind: KindServer}, "server"},
		{Identity{}, "unknown"},
	} {
		if got := tc.id.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.id, got, tc.want)
		}
	}
}

func TestSignHostCSR(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ca := newTestCA(t, now)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// The requester asks for everything it should not get.
	evil, _ := url.Parse("spiffe://s2strust/admin/root")
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "admin", Organization: []string{"evil"}},
		DNSNames:       []string{"controller.example.com"},
		EmailAddresses: []string{"root@example.com"},
		URIs:           []*url.URL{evil},
	}, key)
	if err != nil {
		t.Fatal(err)
	}

	certPEM, err := ca.SignHostCSR(csrDER, "Web01.Contoso.com.", now, time.Hour)
	if err != nil {
		t.Fatalf("SignHostCSR: %v", err)
	}
	c := parseCertPEM(t, certPEM)
	id, err := IdentityFromCert(c)
	if err != nil || id != (Identity{KindHost, "web01.contoso.com", RoleNone}) {
		t.Errorf("IdentityFromCert = %v, %v; want host/web01.contoso.com", id, err)
	}
	if c.Subject.CommonName != "web01.contoso.com" || len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != "s2strust" {
		t.Errorf("subject %q, want CN=web01.contoso.com,O=s2strust", c.Subject)
	}
	if len(c.URIs) != 1 || len(c.DNSNames) != 0 || len(c.EmailAddresses) != 0 {
		t.Errorf("SANs URIs=%v DNS=%v email=%v, want only the host URI", c.URIs, c.DNSNames, c.EmailAddresses)
	}
	if !key.PublicKey.Equal(c.PublicKey) {
		t.Error("certificate is not for the CSR's public key")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify as client certificate: %v", err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now}); err == nil {
		t.Error("host certificate verifies for serverAuth, want clientAuth only")
	}

	tampered := bytes.Clone(csrDER)
	tampered[len(tampered)-1] ^= 0xff
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p224CSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, p224)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		der  []byte
		fqdn string
		want string
	}{
		{"bad signature", tampered, "web01.contoso.com", "signature"},
		{"garbage", []byte("not a csr"), "web01.contoso.com", "parse request"},
		{"invalid fqdn", csrDER, "web01", "invalid fqdn"},
		{"ip as fqdn", csrDER, "10.0.0.1", "invalid fqdn"},
		{"weak curve", p224CSR, "web01.contoso.com", "unsupported ecdsa curve"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ca.SignHostCSR(tc.der, tc.fqdn, now, time.Hour)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("SignHostCSR error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestTLSConfigErrors(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	certPEM, keyPEM, err := ca.IssueAdmin("alice", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := ca.IssueAdmin("bob", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ServerTLSConfig(certPEM, keyPEM, []byte("junk")); err == nil || !strings.Contains(err.Error(), "no ca certificate") {
		t.Errorf("ServerTLSConfig with bad ca pem: %v", err)
	}
	if _, err := ClientTLSConfig(certPEM, otherKey, ca.CertPEM(), "localhost"); err == nil || !strings.Contains(err.Error(), "load key pair") {
		t.Errorf("ClientTLSConfig with mismatched key: %v", err)
	}
}

// handshake runs a real TLS handshake over loopback TCP. The server writes
// one byte after its handshake and the client reads it: in TLS 1.3 the
// client finishes before the server has judged its certificate, and the
// read is where the client learns the verdict.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (server tls.ConnectionState, serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		state tls.ConnectionState
		err   error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, serverCfg)
		err = tc.Handshake()
		if err == nil {
			_, err = tc.Write([]byte{1})
		}
		done <- result{tc.ConnectionState(), err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, clientCfg)
	clientErr = tc.Handshake()
	if clientErr == nil {
		_, clientErr = io.ReadFull(tc, make([]byte, 1))
	}
	if clientErr != nil {
		c.Close() // unblock a server still waiting for us
	}
	r := <-done
	return r.state, r.err, clientErr
}

func TestHandshake(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now.Add(-3*time.Hour)) // old enough to have issued the expired certificate
	other := newTestCA(t, now)

	srvCert, srvKey, err := ca.IssueServer([]string{"localhost", "127.0.0.1"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serverCfg, err := ServerTLSConfig(srvCert, srvKey, ca.CertPEM())
	if err != nil {
		t.Fatalf("ServerTLSConfig: %v", err)
	}
	client := func(t *testing.T, certPEM, keyPEM, caPEM []byte, name string) *tls.Config {
		t.Helper()
		cfg, err := ClientTLSConfig(certPEM, keyPEM, caPEM, name)
		if err != nil {
			t.Fatalf("ClientTLSConfig: %v", err)
		}
		return cfg
	}
	adminCert, adminKey, err := ca.IssueAdmin("alice", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hostCert, hostKey, err := ca.IssueHost("ex01.contoso.com", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expiredCert, expiredKey, err := ca.IssueHost("ex02.contoso.com", now.Add(-2*time.Hour), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreignCert, foreignKey, err := other.IssueAdmin("alice", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)

	for _, tc := range []struct {
		name          string
		client        *tls.Config
		wantID        Identity
		wantServerErr string // "" means the server must accept
		wantClientErr string // "" means the client must accept, unless the server refused
	}{
		{name: "admin", client: client(t, adminCert, adminKey, ca.CertPEM(), "localhost"), wantID: Identity{KindAdmin, "alice", RoleAdmin}},
		{name: "host by IP", client: client(t, hostCert, hostKey, ca.CertPEM(), "127.0.0.1"), wantID: Identity{KindHost, "ex01.contoso.com", RoleNone}},
		{name: "no client certificate", client: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "localhost"},
			wantServerErr: "certificate"},
		{name: "client certificate from another CA", client: client(t, foreignCert, foreignKey, ca.CertPEM(), "localhost"),
			wantServerErr: "unknown authority"},
		{name: "server certificate as client certificate", client: client(t, srvCert, srvKey, ca.CertPEM(), "localhost"),
			wantServerErr: "key usage"},
		{name: "expired client certificate", client: client(t, expiredCert, expiredKey, ca.CertPEM(), "localhost"),
			wantServerErr: "expired"},
		{name: "client trusts another CA", client: client(t, adminCert, adminKey, other.CertPEM(), "localhost"),
			wantServerErr: "-", wantClientErr: "unknown authority"},
		{name: "wrong server name", client: client(t, adminCert, adminKey, ca.CertPEM(), "controller.example.com"),
			wantServerErr: "-", wantClientErr: "controller.example.com"},
		{name: "TLS 1.2 client", client: func() *tls.Config {
			c := client(t, adminCert, adminKey, ca.CertPEM(), "localhost")
			c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return c
		}(), wantServerErr: "version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state, serverErr, clientErr := handshake(t, serverCfg, tc.client)
			switch tc.wantServerErr {
			case "":
				if serverErr != nil || clientErr != nil {
					t.Fatalf("handshake failed: server %v, client %v", serverErr, clientErr)
				}
				chains := state.VerifiedChains
				if len(chains) == 0 {
					t.Fatal("server has no verified client chain")
				}
				id, err := IdentityFromCert(chains[0][0])
				if err != nil || id != tc.wantID {
					t.Errorf("client identity %v, %v; want %v", id, err, tc.wantID)
				}
			case "-": // the client refuses first; the server only sees the alert
				if serverErr == nil {
					t.Error("server accepted the connection")
				}
			default:
				if serverErr == nil || !strings.Contains(serverErr.Error(), tc.wantServerErr) {
					t.Errorf("server error %v, want one containing %q", serverErr, tc.wantServerErr)
				}
				if clientErr == nil {
					t.Error("client completed a connection that the server refused")
				}
			}
			if tc.wantClientErr != "" && (clientErr == nil || !strings.Contains(clientErr.Error(), tc.wantClientErr)) {
				t.Errorf("client error %v, want one containing %q", clientErr, tc.wantClientErr)
			}
		})
	}
}

func TestKeyPEMUnexportable(t *testing.T) {
	ca := newTestCA(t, time.Now())
	ca.Key = opaqueSigner{ca.Key.(*ecdsa.PrivateKey)}
	if _, err := ca.KeyPEM(); err == nil {
		t.Error("KeyPEM of an opaque signer succeeded")
	}
	// An opaque signer (an HSM, say) still issues.
	if _, _, err := ca.IssueAdmin("alice", time.Now(), time.Hour); err != nil {
		t.Errorf("issue with opaque signer: %v", err)
	}
}

type opaqueSigner struct{ *ecdsa.PrivateKey }
