package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net"
	"strings"
	"testing"
	"time"
)

func TestCheckHostCSR(t *testing.T) {
	good, _, err := NewHostCSR("FE01.contoso.com")
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckHostCSR(good, "fe01.contoso.com"); err != nil {
		t.Fatalf("CheckHostCSR of NewHostCSR's request: %v", err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	csr := func(tmpl *x509.CertificateRequest, key any) []byte {
		t.Helper()
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-5] ^= 0xff
	for _, tc := range []struct {
		name string
		der  []byte
		want string
	}{
		{"another name", csr(&x509.CertificateRequest{DNSNames: []string{"fe02.contoso.com"}}, ec), `names "fe02.contoso.com"`},
		{"another CN", csr(&x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin"}}, ec), `CN "admin"`},
		{"an IP", csr(&x509.CertificateRequest{IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}, ec), "IP, URI or e-mail"},
		{"extra extension", csr(&x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Value: []byte{0x30, 0x03, 0x01, 0x01, 0xff}}}}, ec), "extension 2.5.29.19"},
		{"weak key", csr(&x509.CertificateRequest{}, weak), "1024 bits"},
		{"bad signature", tampered, "signature"},
		{"junk", []byte("junk"), "parse request"},
	} {
		if err := CheckHostCSR(tc.der, "fe01.contoso.com"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: CheckHostCSR = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestCAPin(t *testing.T) {
	ca := newTestCA(t, time.Now())
	pin := CAPin(ca.Cert)
	if !strings.HasPrefix(pin, "sha256:") || len(pin) != len("sha256:")+64 {
		t.Fatalf("CAPin = %q", pin)
	}
	if got, err := ParseCAPin(strings.ToUpper(pin[:7]) + strings.ToUpper(pin[7:])); err != nil || got != pin {
		t.Errorf("ParseCAPin(upper case) = %q, %v", got, err)
	}
	for _, bad := range []string{"", "sha256:", "sha1:" + pin[7:], pin + "00", "sha256:" + strings.Repeat("zz", 32)} {
		if _, err := ParseCAPin(bad); err == nil {
			t.Errorf("ParseCAPin(%q) accepted", bad)
		}
	}
	other := newTestCA(t, time.Now())
	if _, err := PinnedCA(append(other.CertPEM(), ca.CertPEM()...), pin); err != nil {
		t.Errorf("PinnedCA with the pinned CA second: %v", err)
	}
	if _, err := PinnedCA(other.CertPEM(), pin); err == nil {
		t.Error("PinnedCA accepted another CA")
	}
}

func FuzzParseCAPin(f *testing.F) {
	f.Add("sha256:" + strings.Repeat("0a", 32))
	f.Add("SHA256:")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseCAPin(s)
		if err != nil {
			return
		}
		if again, err := ParseCAPin(p); err != nil || again != p {
			t.Fatalf("ParseCAPin(%q) = %q, but that parses as %q, %v", s, p, again, err)
		}
	})
}

func FuzzCheckHostCSR(f *testing.F) {
	good, _, err := NewHostCSR("fe01.contoso.com")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		if CheckHostCSR(der, "fe01.contoso.com") != nil {
			return
		}
		// Whatever passes must be signable as the host and nothing more.
		ca := newTestCA(t, time.Now())
		if _, err := ca.SignHostCSR(der, "fe01.contoso.com", time.Now(), time.Hour); err != nil {
			t.Fatalf("CheckHostCSR accepted a request SignHostCSR refuses: %v", err)
		}
	})
}
