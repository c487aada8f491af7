package diagnose

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// farmID is the SharePoint farm's realm, its farm id in lower case.
const farmID = "5f3a1c2e-8b7d-4e61-9a0f-3c2d1b4e5a69"

// cert returns a self-signed certificate naming cn (and dnsNames) and its key.
func cert(t *testing.T, cn string, dnsNames ...string) (*x509.Certificate, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn}, DNSNames: dnsNames,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

// farm is a SharePoint web application served over HTTPS as sp.contoso.com,
// publishing its document in SharePoint's shape (no realm, no x5t,
// keyValue), and at /wrong/ the same document with Lync's serviceName.
type farm struct {
	srv     *httptest.Server
	caFile  string
	signing *x509.Certificate
}

func newFarm(t *testing.T) *farm {
	t.Helper()
	signing, _ := cert(t, "SharePoint Security Token Service")
	doc := metadata.BuildFor(pb.Product_PRODUCT_SHAREPOINT, "", farmID, "https://sp.contoso.com", []*x509.Certificate{signing})
	wrong := *doc
	wrong.ServiceName = products.LyncID
	mux := http.NewServeMux()
	mux.Handle("/_layouts/15/metadata/json/1", metadata.Handler(func() *metadata.Document { return doc }))
	mux.Handle("/wrong/_layouts/15/metadata/json/1", metadata.Handler(func() *metadata.Document { return &wrong }))
	tlsCert, key := cert(t, "sp.contoso.com", "sp.contoso.com")
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // failed handshakes are expected
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{tlsCert.Raw}, PrivateKey: key, Leaf: tlsCert}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsCert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &farm{srv: srv, caFile: caFile, signing: signing}
}

func (f *farm) addr() string { return f.srv.Listener.Addr().String() }

func TestDiagnoseMetadata(t *testing.T) {
	f := newFarm(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := closed.Addr().String()
	closed.Close()

	const url = "https://sp.contoso.com/_layouts/15/metadata/json/1"
	resolve := "sp.contoso.com=" + f.addr()
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantOut    []string // each in stdout
		wantErr    []string // each in stderr
		notWantOut []string
	}{
		{
			name:     "sharepoint document accepted",
			args:     []string{"metadata", url, "--product", "lync", "--ca", f.caFile, "--resolve", resolve},
			wantCode: ExitOK,
			wantOut: []string{
				"partner       SharePoint Server (from the URL's path; --partner to choose): serviceName 00000003-0000-0ff1-ce00-000000000000",
				"sp.contoso.com:443 -> " + f.addr() + " (--resolve mapping; DNS not asked)",
				"connected to " + f.addr() + " with TLS 1.3",
				"subject     CN=sp.contoso.com",
				"names       sp.contoso.com",
				"name sp.contoso.com: matches the certificate",
				"chain: trusted by --ca " + f.caFile,
				"status 200 OK, content type application/json",
				"serviceName  00000003-0000-0ff1-ce00-000000000000",
				"realm        " + farmID + " (from issuer)",
				"issuer       00000003-0000-0ff1-ce00-000000000000@" + farmID,
				"key 1        usage Signing, thumbprint " + Thumbprint(f.signing) + ", expires " + f.signing.NotAfter.UTC().Format("2006-01-02 15:04:05 UTC"),
				"result: a valid metadata document of SharePoint Server in realm " + farmID + " (from issuer), 1 signing key(s)",
			},
		},
		{
			name:     "wrong serviceName refused, naming serviceName",
			args:     []string{"metadata", "https://sp.contoso.com/wrong/_layouts/15/metadata/json/1", "--product", "exchange", "--ca", f.caFile, "--resolve", resolve},
			wantCode: ExitFailed,
			wantOut:  []string{"serviceName  00000004-0000-0ff1-ce00-000000000000", "result: NOT VALID"},
			wantErr: []string{
				SeedMessage("AuthMetadataUrl") + "\n",
				`cause: https://sp.contoso.com/wrong/_layouts/15/metadata/json/1 is not a valid metadata document: serviceName is "00000004-0000-0ff1-ce00-000000000000", want "00000003-0000-0ff1-ce00-000000000000"`,
			},
		},
		{
			name:     "partner chosen explicitly",
			args:     []string{"metadata", url, "--partner", "exchange", "--product", "sharepoint", "--ca", f.caFile, "--resolve", resolve},
			wantCode: ExitFailed,
			wantErr: []string{
				SeedMessage("MetadataEndPoint") + "\n",
				`serviceName is "00000003-0000-0ff1-ce00-000000000000", want "00000002-0000-0ff1-ce00-000000000000"`,
			},
		},
		{
			name:     "unreachable",
			args:     []string{"metadata", url, "--ca", f.caFile, "--resolve", "sp.contoso.com=" + dead},
			wantCode: ExitFailed,
			wantOut:  []string{"sp.contoso.com:443 -> " + dead, "no certificate received", "no answer"},
			wantErr: []string{
				SeedMessage("MetadataUrl") + "\n",
				"cause: the metadata document could not be downloaded from " + url + ": sp.contoso.com:443 resolved to " + dead + ": dial tcp " + dead + ": connect: connection refused",
			},
			notWantOut: []string{"document\n"},
		},
		{
			name:     "TLS name mismatch",
			args:     []string{"metadata", "https://other.contoso.com/_layouts/15/metadata/json/1", "--ca", f.caFile, "--resolve", "other.contoso.com=" + f.addr()},
			wantCode: ExitFailed,
			wantOut: []string{
				"connected to " + f.addr() + "\n",
				"subject     CN=sp.contoso.com", // the chain presented, although it did not verify
				"name other.contoso.com: DOES NOT MATCH: x509: certificate is valid for sp.contoso.com, not other.contoso.com",
				"chain: trusted by --ca",
			},
			wantErr: []string{"cause: the metadata document could not be downloaded from https://other.contoso.com/_layouts/15/metadata/json/1: " +
				"tls: failed to verify certificate: x509: certificate is valid for sp.contoso.com, not other.contoso.com"},
		},
		{
			name:     "untrusted chain",
			args:     []string{"metadata", url, "--resolve", resolve},
			wantCode: ExitFailed,
			wantOut:  []string{"name sp.contoso.com: matches the certificate", "chain: NOT TRUSTED by the system roots: x509: certificate signed by unknown authority"},
			wantErr:  []string{"tls: failed to verify certificate: x509: certificate signed by unknown authority"},
		},
		{
			name:     "loopback without a mapping refused",
			args:     []string{"metadata", "https://127.0.0.1:1/_layouts/15/metadata/json/1"},
			wantCode: ExitFailed,
			wantOut:  []string{"127.0.0.1 is an IP address (refused: a loopback address (this host itself); only a --resolve mapping may lead there)"},
			wantErr:  []string{"refused to fetch metadata from 127.0.0.1: it is a loopback address"},
		},
		{
			name:     "not https",
			args:     []string{"metadata", "http://sp.contoso.com/_layouts/15/metadata/json/1"},
			wantCode: ExitFailed,
			wantErr:  []string{"cause: the metadata document could not be downloaded from http://sp.contoso.com/_layouts/15/metadata/json/1: not an https URL"},
		},
		{name: "no URL", args: []string{"metadata"}, wantCode: ExitUsage, wantErr: []string{"accepts 1 arg(s), received 0"}},
		{name: "bad product", args: []string{"metadata", url, "--product", "notes"}, wantCode: ExitUsage, wantErr: []string{`--product "notes": want lync, exchange or sharepoint`}},
		{name: "bad resolve", args: []string{"metadata", url, "--resolve", "sp.contoso.com"}, wantCode: ExitUsage,
			wantErr: []string{`--resolve: resolve "sp.contoso.com": want host=ip:port or host:port=ip:port`}},
		{name: "missing CA file", args: []string{"metadata", url, "--ca", filepath.Join(t.TempDir(), "none.pem")}, wantCode: ExitUsage, wantErr: []string{"--ca: open "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(context.Background(), tt.args, &out, &errOut)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, &out, &errOut)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, &out)
				}
			}
			for _, w := range tt.notWantOut {
				if strings.Contains(out.String(), w) {
					t.Errorf("stdout has %q:\n%s", w, &out)
				}
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(errOut.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, &errOut)
				}
			}
			if tt.wantCode == ExitOK && errOut.Len() != 0 {
				t.Errorf("stderr of a passing check: %s", &errOut)
			}
		})
	}
}

// TestFetcherAcceptsSharePointShape checks that what diagnose accepts,
// partner creation (metadata.Fetcher.Fetch, not knowing the realm) accepts
// too, and refuses the wrong serviceName the same way.
func TestFetcherAcceptsSharePointShape(t *testing.T) {
	f := newFarm(t)
	roots := x509.NewCertPool()
	roots.AddCert(f.srv.Certificate())
	fetcher := metadata.NewFetcher(metadata.FetcherOptions{RootCAs: roots, Resolve: map[string]string{"sp.contoso.com": f.addr()}})
	d, signing, err := fetcher.Fetch(context.Background(), "https://sp.contoso.com/_layouts/15/metadata/json/1", products.SharePointID, "")
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if d.EffectiveRealm() != farmID || len(signing) != 1 || !signing[0].Equal(f.signing) {
		t.Fatalf("realm %q, %d signing certificates", d.EffectiveRealm(), len(signing))
	}
	_, _, err = fetcher.Fetch(context.Background(), "https://sp.contoso.com/wrong/_layouts/15/metadata/json/1", products.SharePointID, "")
	var inv *metadata.InvalidError
	if !errors.As(err, &inv) || inv.Field != "serviceName" || !strings.Contains(err.Error(), `serviceName is "00000004-0000-0ff1-ce00-000000000000", want "00000003-0000-0ff1-ce00-000000000000"`) {
		t.Fatalf("Fetch of the wrong serviceName: %v", err)
	}
}

// TestDiagnoseEscapesServerText checks that what a hostile server sends
// (here in the document's name and the certificate's subject) reaches the
// terminal escaped.
func TestDiagnoseEscapesServerText(t *testing.T) {
	signing, _ := cert(t, "evil\u202egnp.exe\x1b[31m")
	doc := metadata.BuildFor(pb.Product_PRODUCT_LYNC, "", "contoso.com", "pool01.contoso.com", []*x509.Certificate{signing})
	doc.Name = "pool\x1b]0;owned\x07\u2066"
	tlsCert, key := cert(t, "pool01.contoso.com", "pool01.contoso.com")
	srv := httptest.NewUnstartedServer(metadata.Handler(func() *metadata.Document { return doc }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{tlsCert.Raw}, PrivateKey: key, Leaf: tlsCert}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(tlsCert)
	var out bytes.Buffer
	err := Metadata(context.Background(), &out, MetadataOptions{URL: "https://pool01.contoso.com/metadata/json/1", Roots: roots,
		Resolve: map[string]string{"pool01.contoso.com": srv.Listener.Addr().String()}})
	if err != nil {
		t.Fatalf("Metadata: %v\n%s", err, &out)
	}
	for _, bad := range []string{"\x1b", "\u202e", "\u2066", "\x07"} {
		if strings.Contains(out.String(), bad) {
			t.Errorf("output carries %q raw:\n%s", bad, &out)
		}
	}
	for _, want := range []string{`name         pool\u001b]0;owned\u0007\u2066`, `subject CN=evil\u202egnp.exe\u001b[31m`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, &out)
		}
	}
	if got := escape("ok\xff\u00e9\t\n"); got != "ok\\xff\u00e9\t\n" {
		t.Errorf("escape = %q", got)
	}
}
