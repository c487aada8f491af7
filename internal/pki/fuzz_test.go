package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"testing"
	"time"
)

// FuzzIdentityURI checks that the identity parser accepts only URIs that
// issuing would produce: whatever parses must print back to the same URI.
func FuzzIdentityURI(f *testing.F) {
	for _, s := range []string{
		"spiffe://s2strust/admin/alice",
		"spiffe://s2strust/host/ex01.contoso.com",
		"spiffe://s2strust/server",
		"spiffe://s2strust/host/EX01.contoso.com",
		"spiffe://s2strust/admin/a%2Fb",
		"spiffe://s2strust/admin/../admin/x",
		"spiffe://S2STRUST/admin/alice",
		"spiffe://s2strust:443/admin/alice",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		id, err := parseIdentityURI(u)
		if err != nil {
			return
		}
		if id.Kind == KindUnknown {
			t.Fatalf("%q parsed to an unknown kind", s)
		}
		if got := id.uri().String(); got != u.String() {
			t.Fatalf("%q parsed to %v, which prints as %q", s, id, got)
		}
	})
}

// FuzzSignHostCSR feeds arbitrary bytes as a CSR: signing must never panic,
// and whatever it signs names exactly the requested host.
func FuzzSignHostCSR(f *testing.F) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ca, err := NewCA("fuzz CA", now)
	if err != nil {
		f.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin"}}, key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csr)
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		certPEM, err := ca.SignHostCSR(der, "web01.contoso.com", now, time.Hour)
		if err != nil {
			return
		}
		id, err := IdentityFromCert(parseCertPEM(t, certPEM))
		if err != nil || id != (Identity{KindHost, "web01.contoso.com", RoleNone}) {
			t.Fatalf("signed certificate identifies %v, %v", id, err)
		}
	})
}
