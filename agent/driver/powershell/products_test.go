package powershell

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// issuerSecret is a generated token-issuer PFX as the controller delivers it.
func issuerSecret(t *testing.T, name string) (*pb.SecretMaterial, string) {
	t.Helper()
	b, err := certs.Generate(certs.Template{CommonName: "acme-s2s.example", DNSNames: []string{"acme-s2s.example"},
		NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(365 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	const pw = "controller-side password"
	pfx, err := certs.EncodePFX(b, pw)
	if err != nil {
		t.Fatal(err)
	}
	tp := certs.Thumbprint(b.Cert)
	return &pb.SecretMaterial{Name: name, Pfx: pfx, Password: pw, Thumbprint: tp}, tp
}

func keyFileLines(t *testing.T, log string) []string {
	t.Helper()
	b, _ := os.ReadFile(log)
	return regexp.MustCompile(`(?m)^PFX (\S+) (.*)$`).FindAllString(string(b), -1)
}

func TestExchangeApplyGolden(t *testing.T) {
	log := fakeEnv(t, "normal")
	secret, tp := issuerSecret(t, "auth-2026")
	t.Setenv("S2S_TEST_THUMBPRINT", tp)
	d := testDriver(t, "ex01.acme-s2s.example")
	cfg := &pb.HostConfig{
		Host: "ex01.acme-s2s.example", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ProductVersion: "2016",
		DeploymentHosts: []string{"ex01.acme-s2s.example"}, ServiceName: products.ExchangeID, Endpoint: "autodiscover.acme-s2s.example",
		MetadataUrl: "https://autodiscover.acme-s2s.example/autodiscover/metadata/json/1", Primary: true,
		TokenIssuer: &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: "auth-2026"}, SecretThumbprint: tp},
		Partners: []*pb.Partner{
			{Name: "pool01", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ApplicationIdentifier: products.LyncID,
				MetadataUrl: "https://pool01.acme-s2s.example/metadata/json/1", Enabled: true},
			{Name: "sharepoint", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ApplicationIdentifier: products.SharePointID,
				MetadataUrl: "https://sp.acme-s2s.example/_layouts/15/metadata/json/1", Enabled: true},
		},
	}
	if errs := d.Apply(context.Background(), cfg, []*pb.SecretMaterial{secret}); len(errs) > 0 {
		for _, e := range errs {
			t.Errorf("item %s: %s", e.Item, e.Message)
		}
		t.FailNow()
	}
	_, ops, stdin := requests(t, log)
	for _, want := range []string{"import-exchange-certificate", "set-auth-config", "configure-partner-application", "set-partner-application", "iisreset"} {
		if !slices.Contains(ops, want) {
			t.Errorf("apply sent no %s request (sent %v)", want, ops)
		}
	}
	// The IIS reset is the last change; the driver then reads which auth
	// certificate the app pools started with.
	if n := len(ops); n < 2 || ops[n-2] != "iisreset" || ops[n-1] != "get-auth-config" {
		t.Errorf("requests %v: want the IIS reset last, then get-auth-config", ops)
	}
	// The key file: owner-only, opened by its one-time password, in the
	// 3DES encryption Windows Server 2016 (build 14393) imports, and gone
	// after the import.
	kf := keyFileLines(t, log)
	if len(kf) != 1 {
		t.Fatalf("key files seen by the worker: %v, want one", kf)
	}
	for _, w := range []string{"mode=600", " opens ", string(PFXLegacy3DES)} {
		if !strings.Contains(kf[0], w) {
			t.Errorf("key file %s: want %q", kf[0], w)
		}
	}
	path := strings.Fields(kf[0])[1]
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("key file %s still exists after the import (%v)", path, err)
	}
	// The controller's password never reaches the worker; the one-time
	// one does, on standard input only.
	if strings.Contains(stdin, secret.GetPassword()) {
		t.Error("the controller's PFX password was sent to the worker")
	}
}

func TestSharePointApplyGolden(t *testing.T) {
	log := fakeEnv(t, "normal")
	secret, tp := issuerSecret(t, "sts-2026")
	t.Setenv("S2S_TEST_THUMBPRINT", tp)
	d := testDriver(t, "sp01.acme-s2s.example")
	cfg := &pb.HostConfig{
		Host: "sp01.acme-s2s.example", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ProductVersion: "SE",
		DeploymentHosts: []string{"sp01.acme-s2s.example"}, ServiceName: products.SharePointID, Endpoint: "https://sp.acme-s2s.example",
		MetadataUrl: "https://sp.acme-s2s.example/_layouts/15/metadata/json/1", Primary: true,
		TokenIssuer: &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: "sts-2026"}, SecretThumbprint: tp},
		Partners: []*pb.Partner{
			{Name: "exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ApplicationIdentifier: products.ExchangeID,
				MetadataUrl: "https://autodiscover.acme-s2s.example/autodiscover/metadata/json/1", Enabled: true, Realm: "*"},
			{Name: "lync", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ApplicationIdentifier: products.LyncID,
				MetadataUrl: "https://pool01.acme-s2s.example/metadata/json/1", Enabled: true, TrustBroker: true},
		},
	}
	if errs := d.Apply(context.Background(), cfg, []*pb.SecretMaterial{secret}); len(errs) > 0 {
		for _, e := range errs {
			t.Errorf("item %s: %s", e.Item, e.Message)
		}
		t.FailNow()
	}
	_, ops, _ := requests(t, log)
	for _, want := range []string{"get-app-principal-permission", "import-signing-certificate", "new-trusted-issuer", "set-app-principal-permission", "set-sts-http"} {
		if !slices.Contains(ops, want) {
			t.Errorf("apply sent no %s request (sent %v)", want, ops)
		}
	}
	kf := keyFileLines(t, log)
	if len(kf) != 1 || !strings.Contains(kf[0], string(PFXModernAES)) || !strings.Contains(kf[0], " opens ") {
		t.Fatalf("key files seen by the worker: %v, want one AES-256 file for Windows Server 2022", kf)
	}
}

func TestDetectGolden(t *testing.T) {
	fakeEnv(t, "normal")
	d := testDriver(t, "fe01.acme-s2s.example")
	got, err := d.Detect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].GetProduct() != pb.Product_PRODUCT_LYNC || got[0].GetVersion() != "2019" {
		t.Fatalf("detect = %v, want Lync 2019", got)
	}
}
