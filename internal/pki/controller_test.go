package pki

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestControllerIdentityPinned: a host's HTTPS certificate from the same CA,
// naming the very address a client dials, is refused as the controller;
// only the controller profile passes.
func TestControllerIdentityPinned(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now.Add(-3*time.Hour))
	other := newTestCA(t, now)
	adminCert, adminKey, err := ca.IssueAdmin("alice", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serverFor := func(certPEM, keyPEM []byte) *tls.Config {
		t.Helper()
		cfg, err := ServerTLSConfig(certPEM, keyPEM, ca.CertPEM())
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	ctlCert, ctlKey, err := ca.IssueServer([]string{"localhost"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	httpsCert, httpsKey, err := ca.IssueHTTPS([]string{"localhost", "fe01.contoso.com"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if c := parseCertPEM(t, httpsCert); len(c.URIs) != 0 {
		t.Fatalf("https certificate carries URIs %v, want none", c.URIs)
	}
	expiredCert, expiredKey, err := ca.IssueServer([]string{"localhost"}, now.Add(-2*time.Hour), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client := func(caPEM []byte, name string) *tls.Config {
		t.Helper()
		cfg, err := ClientTLSConfig(adminCert, adminKey, caPEM, name)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	for _, tc := range []struct {
		name        string
		server      *tls.Config
		client      *tls.Config
		wantExplain string // "" means the handshake must succeed
	}{
		{"controller profile", serverFor(ctlCert, ctlKey), client(ca.CertPEM(), "localhost"), ""},
		{"host https certificate", serverFor(httpsCert, httpsKey), client(ca.CertPEM(), "localhost"), "not the controller's"},
		{"name mismatch", serverFor(ctlCert, ctlKey), client(ca.CertPEM(), "ctl.example.test"), `does not name "ctl.example.test" (it names localhost): dial one of those names, or start serve with --tls-san ctl.example.test`},
		{"unknown ca", serverFor(ctlCert, ctlKey), client(other.CertPEM(), "localhost"), "not issued by the trusted CA"},
		{"expired", serverFor(expiredCert, expiredKey), client(ca.CertPEM(), "localhost"), "expired or not yet valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, serverErr, clientErr := handshake(t, tc.server, tc.client)
			if tc.wantExplain == "" {
				if serverErr != nil || clientErr != nil {
					t.Fatalf("handshake failed: server %v, client %v", serverErr, clientErr)
				}
				return
			}
			if clientErr == nil {
				t.Fatal("client accepted the server")
			}
			if got := ExplainTLSError(clientErr); !strings.Contains(got, tc.wantExplain) {
				t.Errorf("ExplainTLSError(%v) = %q, want it to contain %q", clientErr, got, tc.wantExplain)
			}
		})
	}
}

func TestExplainTLSErrorOther(t *testing.T) {
	if got := ExplainTLSError(errors.New("dial tcp 127.0.0.1:1: connect: connection refused")); got != "" {
		t.Errorf("a refused connection explained as %q, want \"\" (not a certificate problem)", got)
	}
	if got := ExplainTLSError(errors.New("read: remote error: tls: bad certificate")); !strings.Contains(got, "refused this client's certificate (bad certificate)") {
		t.Errorf("remote alert explained as %q", got)
	}
}
