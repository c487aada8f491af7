package certs

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

var sentinels = []error{ErrWrongPassword, ErrNoPrivateKey, ErrCorrupt}

// assertOneSentinel checks that err wraps want and no other sentinel, and that
// it repeats no password.
func assertOneSentinel(t *testing.T, err, want error, passwords ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("error = nil, want %v", want)
	}
	for _, s := range sentinels {
		if errors.Is(err, s) != (s == want) {
			t.Errorf("errors.Is(%q, %q) = %v", err, s, errors.Is(err, s))
		}
	}
	for _, p := range passwords {
		if p != "" && strings.Contains(err.Error(), p) {
			t.Errorf("error %q contains the password", err)
		}
	}
}

// caAndLeaf makes an issuing CA and an end-entity certificate it signed.
func caAndLeaf(t *testing.T, ecdsa bool) (ca, leaf *Bundle) {
	t.Helper()
	ca = generate(t, Template{CommonName: "Contoso Issuing CA", IsCA: true, ECDSA: ecdsa})
	leaf = generate(t, Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com"}, Issuer: ca, ECDSA: ecdsa})
	return ca, leaf
}

func assertBundle(t *testing.T, got *Bundle, want *Bundle, chain ...*x509.Certificate) {
	t.Helper()
	if !got.Cert.Equal(want.Cert) {
		t.Errorf("Cert = %s, want %s", describe(got.Cert), describe(want.Cert))
	}
	if !got.Key.(interface{ Equal(crypto.PrivateKey) bool }).Equal(want.Key) {
		t.Error("Key differs from the one encoded")
	}
	if len(got.Chain) != len(chain) {
		t.Fatalf("Chain has %d certificates, want %d", len(got.Chain), len(chain))
	}
	for i := range chain {
		if !got.Chain[i].Equal(chain[i]) {
			t.Errorf("Chain[%d] = %s, want %s", i, describe(got.Chain[i]), describe(chain[i]))
		}
	}
}

func TestPFXRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name     string
		ecdsa    bool
		password string
	}{
		{name: "RSA", password: "Pa55w.rd-ümlaut"},
		{name: "ECDSA", ecdsa: true, password: "another one"},
		{name: "empty password", password: ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ca, leaf := caAndLeaf(t, tt.ecdsa)
			data, err := EncodePFX(leaf, tt.password)
			if err != nil {
				t.Fatal(err)
			}
			got, err := LoadPFX(data, tt.password)
			if err != nil {
				t.Fatal(err)
			}
			assertBundle(t, got, leaf, ca.Cert)
		})
	}
}

// TestLoadPFXLeafLast covers files that list the chain before the end-entity
// certificate, as Windows' PFXExportCertStoreEx writes them: the certificate
// returned is the one the key belongs to.
func TestLoadPFXLeafLast(t *testing.T) {
	ca, leaf := caAndLeaf(t, false)
	root := generate(t, Template{CommonName: "Contoso Root", IsCA: true})
	data, err := pkcs12.Modern.Encode(leaf.Key, root.Cert, []*x509.Certificate{ca.Cert, leaf.Cert}, "pw")
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadPFX(data, "pw")
	if err != nil {
		t.Fatal(err)
	}
	assertBundle(t, got, leaf, root.Cert, ca.Cert)
}

func TestLoadPFXOpenSSLFixture(t *testing.T) {
	// Triple-DES with a SHA-1 MAC: what Windows Server 2012 R2 and older
	// export, and what OpenSSL makes with the options in testdata/README.md.
	got, err := LoadPFX(readFile(t, fixtureOpenSSL3DES), fixturePassword)
	if err != nil {
		t.Fatal(err)
	}
	if tp := Thumbprint(got.Cert); tp != fixtureThumbprint {
		t.Errorf("thumbprint = %s, want %s", tp, fixtureThumbprint)
	}
	if got.Key == nil {
		t.Error("no key")
	}
}

func TestLoadPFXErrors(t *testing.T) {
	const password = "correct horse battery staple"
	_, leaf := caAndLeaf(t, false)
	good, err := EncodePFX(leaf, password)
	if err != nil {
		t.Fatal(err)
	}
	trustStore, err := pkcs12.Modern.EncodeTrustStore([]*x509.Certificate{leaf.Cert}, password)
	if err != nil {
		t.Fatal(err)
	}
	passwordless, err := pkcs12.Passwordless.Encode(leaf.Key, leaf.Cert, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	other := generate(t, Template{CommonName: "other", ECDSA: true})
	mismatched, err := pkcs12.Modern.Encode(other.Key, leaf.Cert, nil, password)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		data     []byte
		password string
		want     error
		mention  string
	}{
		{name: "wrong password", data: good, password: "Tr0ub4dor&3", want: ErrWrongPassword, mention: "decode PFX: wrong password"},
		{name: "empty password for a protected file", data: good, password: "", want: ErrWrongPassword},
		{name: "password no PFX can have", data: good, password: "pass🔑word", want: ErrWrongPassword, mention: "outside the Basic Multilingual Plane"},
		{name: "password given for a file without one", data: passwordless, password: password, want: ErrWrongPassword, mention: "the file has no password"},
		{name: "certificates only, Java trust store", data: trustStore, password: password, want: ErrNoPrivateKey, mention: "the certificate " + Thumbprint(leaf.Cert) + " (CN=contoso.com)"},
		{name: "certificates only, wrong password", data: trustStore, password: "nope", want: ErrWrongPassword},
		{name: "certificates only, OpenSSL -nokeys", data: readFile(t, fixtureOpenSSLNoKeys), password: fixturePassword, want: ErrNoPrivateKey, mention: "export the certificate again with its private key"},
		{name: "key of another certificate", data: mismatched, password: password, want: ErrCorrupt, mention: "belongs to none of its 1 certificates"},
		{name: "empty", data: nil, password: password, want: ErrCorrupt, mention: "the file is empty"},
		{name: "garbage", data: []byte("this is not a certificate"), password: password, want: ErrCorrupt, mention: "not a valid PFX file: the data is not a DER-encoded PKCS#12 structure"},
		{name: "PEM instead of PFX", data: []byte("\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), password: password, want: ErrCorrupt, mention: "it is PEM text"},
		{name: "DER certificate instead of PFX", data: leaf.Cert.Raw, password: password, want: ErrCorrupt, mention: "it is a certificate (.cer) without its private key"},
		{name: "truncated", data: good[:len(good)/2], password: password, want: ErrCorrupt, mention: "truncated"},
		{name: "trailing data", data: append(bytes.Clone(good), 0, 0), password: password, want: ErrCorrupt, mention: "2 bytes of unexpected data follow"},
		{name: "a DER structure that is not PKCS#12", data: []byte{0x30, 0x03, 0x02, 0x01, 0x07}, password: password, want: ErrCorrupt, mention: "not a valid PFX file: pkcs12:"},
		{name: "too large", data: bytes.Repeat([]byte{0x30}, MaxPFXSize+1), password: password, want: ErrCorrupt, mention: "decode PFX: not a valid PFX file: the file is 1048577 bytes, over the 1048576-byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := LoadPFX(tt.data, tt.password)
			if b != nil {
				t.Errorf("LoadPFX returned a bundle with error %v", err)
			}
			assertOneSentinel(t, err, tt.want, tt.password, password)
			if tt.mention != "" && err != nil && !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

func TestEncodePFXErrors(t *testing.T) {
	_, leaf := caAndLeaf(t, false)
	other := generate(t, Template{CommonName: "other"})
	if _, err := EncodePFX(&Bundle{Cert: leaf.Cert}, "pw"); !errors.Is(err, ErrNoPrivateKey) {
		t.Errorf("EncodePFX without key: %v, want ErrNoPrivateKey", err)
	}
	if _, err := EncodePFX(&Bundle{Cert: leaf.Cert, Key: other.Key}, "pw"); err == nil || !strings.Contains(err.Error(), "does not belong to the certificate") {
		t.Errorf("EncodePFX with another certificate's key: %v", err)
	}
	if _, err := EncodePFX(nil, "pw"); err == nil {
		t.Error("EncodePFX(nil) succeeded")
	}
}

func TestGenerate(t *testing.T) {
	ca := generate(t, Template{CommonName: "Contoso Issuing CA", IsCA: true})
	leaf := generate(t, Template{CommonName: "fe1.contoso.com", DNSNames: []string{"fe1.contoso.com"}, Issuer: ca})

	if !ca.Cert.IsCA || ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 || len(ca.Cert.ExtKeyUsage) != 0 {
		t.Errorf("CA certificate: IsCA %v, KeyUsage %v, ExtKeyUsage %v", ca.Cert.IsCA, ca.Cert.KeyUsage, ca.Cert.ExtKeyUsage)
	}
	if leaf.Cert.IsCA {
		t.Error("leaf is a CA")
	}
	if bits := leaf.Key.(crypto.Signer).Public(); bits == nil {
		t.Fatal("no public key")
	}
	if n := leaf.Cert.PublicKey.(interface{ Size() int }).Size() * 8; n != DefaultKeyBits {
		t.Errorf("default key size %d, want %d", n, DefaultKeyBits)
	}
	if d := leaf.Cert.NotAfter.Sub(leaf.Cert.NotBefore); d < 365*24*time.Hour {
		t.Errorf("default validity %v, want a year", d)
	}
	if len(leaf.Chain) != 1 || !leaf.Chain[0].Equal(ca.Cert) {
		t.Errorf("leaf chain %v, want the CA", leaf.Chain)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := leaf.Cert.Verify(x509.VerifyOptions{DNSName: "fe1.contoso.com", Roots: roots}); err != nil {
		t.Errorf("leaf does not verify as a server certificate under its CA: %v", err)
	}

	now := time.Now()
	for _, tt := range []struct {
		name    string
		tmpl    Template
		mention string
	}{
		{name: "NotAfter before NotBefore", tmpl: Template{CommonName: "x", NotBefore: now, NotAfter: now.Add(-time.Hour)}, mention: "is not after NotBefore"},
		{name: "issuer without key", tmpl: Template{CommonName: "x", Issuer: &Bundle{Cert: ca.Cert}}, mention: "no private key"},
		{name: "issuer without certificate", tmpl: Template{CommonName: "x", Issuer: &Bundle{Key: ca.Key}}, mention: "issuer has no certificate"},
		{name: "RSA key too small to make", tmpl: Template{CommonName: "x", KeyBits: 512}, mention: "create key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Generate(tt.tmpl)
			if err == nil || !strings.Contains(err.Error(), tt.mention) || !strings.Contains(err.Error(), `generate certificate "x"`) {
				t.Errorf("Generate: %v, want an error mentioning %q", err, tt.mention)
			}
		})
	}
}

func FuzzLoadPFX(f *testing.F) {
	for _, path := range []string{fixturePFX, fixtureOpenSSL3DES, fixtureOpenSSLNoKeys} {
		data := readFile(f, path)
		f.Add(data, fixturePassword)
		f.Add(data, "wrong")
		f.Add(data[:len(data)-1], fixturePassword)
	}
	f.Add([]byte{}, "")
	f.Add([]byte("garbage"), "")
	f.Add([]byte{0x30, 0x80, 0x02, 0x01, 0x03}, "x")
	f.Add(readFile(f, fixtureDER), fixturePassword)
	// The shapes the loader decrypts itself: an RC2-40 certificate safe, and
	// a key bag inside an encrypted safe.
	b := generate(f, Template{CommonName: "contoso.com", ECDSA: true})
	legacy, err := pkcs12.LegacyRC2.Encode(b.Key, b.Cert, nil, fixturePassword)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(legacy, fixturePassword)
	modern, err := pkcs12.Modern2023.Encode(b.Key, b.Cert, nil, fixturePassword)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(nestedPFX(f, bagsOf(f, modern, fixturePassword), fixturePassword), fixturePassword)

	f.Fuzz(func(t *testing.T, data []byte, password string) {
		b, err := LoadPFX(data, password)
		if err != nil {
			n := 0
			for _, s := range sentinels {
				if errors.Is(err, s) {
					n++
				}
			}
			if n != 1 || b != nil {
				t.Fatalf("LoadPFX error %q wraps %d sentinels, bundle %v", err, n, b)
			}
			return
		}
		if b.Cert == nil || b.Key == nil {
			t.Fatalf("LoadPFX succeeded without certificate or key: %+v", b)
		}
		if !publicKeysEqual(b.Key.(crypto.Signer).Public(), b.Cert.PublicKey) {
			t.Fatal("LoadPFX returned a key that does not belong to its certificate")
		}
	})
}
