package sim

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

const (
	realm          = "contoso.com"
	issuerPassword = "Corr3ct-Horse-Battery"
	exchangeURL    = "https://autodiscover.contoso.com/autodiscover/metadata/json/1"
	sharepointURL  = "https://sp.contoso.com/_layouts/15/metadata/json/1"
	lyncURL        = "https://pool01.contoso.com/metadata/json/1"
	autodiscover   = "https://autodiscover.contoso.com/autodiscover/autodiscover.svc"
)

// fixtures are generated once: RSA key generation is the slow part of
// these tests.
var fixtures = sync.OnceValues(func() (*testFixtures, error) {
	f := &testFixtures{signing: map[string]*x509.Certificate{}}
	b, err := certs.Generate(certs.Template{CommonName: realm, DNSNames: []string{realm, "fabrikam.com"}})
	if err != nil {
		return nil, err
	}
	f.issuer = b
	if f.pfx, err = certs.EncodePFX(b, issuerPassword); err != nil {
		return nil, err
	}
	for _, u := range []string{exchangeURL, sharepointURL, lyncURL} {
		b, err := certs.Generate(certs.Template{CommonName: u})
		if err != nil {
			return nil, err
		}
		f.signing[u] = b.Cert
	}
	return f, nil
})

type testFixtures struct {
	issuer  *certs.Bundle
	pfx     []byte
	signing map[string]*x509.Certificate // partner signing certificate by metadata URL
}

func fix(t *testing.T) *testFixtures {
	t.Helper()
	f, err := fixtures()
	if err != nil {
		t.Fatalf("fixtures: %v", err)
	}
	return f
}

// fetcher is a fake metadata download: it serves the fixtures' signing
// certificates, fails for the URLs in fail, and records every call.
type fetcher struct {
	mu    sync.Mutex
	f     *testFixtures
	fail  map[string]error
	calls []string
	// pub overrides what a URL publishes (a rotation's next key).
	pub map[string][]*x509.Certificate
}

func (m *fetcher) fetch(_ context.Context, url, serviceName, realm string) (*metadata.Document, []*x509.Certificate, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, url)
	if err := m.fail[url]; err != nil {
		return nil, nil, err
	}
	c, ok := m.f.signing[url]
	if !ok {
		return nil, nil, fmt.Errorf("fetch %s: no such host", url)
	}
	if realm == "" {
		realm = "contoso.com"
	}
	list := []*x509.Certificate{c}
	if l, ok := m.pub[url]; ok {
		list = l
	}
	return &metadata.Document{ServiceName: serviceName, Realm: realm, Issuer: serviceName + "@" + realm}, list, nil
}

func (m *fetcher) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.calls)
}

type env struct {
	t      *testing.T
	shared string
	fetch  *fetcher
	now    time.Time
}

func newEnv(t *testing.T) *env {
	return &env{t: t, shared: t.TempDir(), fetch: &fetcher{f: fix(t)}, now: time.Now()}
}

func (e *env) host(name string, p pb.Product, version string) *Sim {
	e.t.Helper()
	s, err := New(Config{
		Host:          name,
		StateDir:      filepath.Join(e.shared, "..", "state-"+name),
		SharedDir:     e.shared,
		Products:      []*pb.DetectedProduct{{Product: p, Version: version}},
		Now:           func() time.Time { return e.now },
		FetchMetadata: e.fetch.fetch,
	})
	if err != nil {
		e.t.Fatalf("New(%s): %v", name, err)
	}
	return s
}

func secrets(t *testing.T) []*pb.SecretMaterial {
	return []*pb.SecretMaterial{{Name: "oauth-2026", Pfx: fix(t).pfx, Password: issuerPassword}}
}

func lyncConfig(host string, primary bool) *pb.HostConfig {
	return &pb.HostConfig{
		Host:                    host,
		Deployment:              "pool01",
		Product:                 pb.Product_PRODUCT_LYNC,
		ProductVersion:          "2015",
		DeploymentHosts:         []string{"fe01.contoso.com", "fe02.contoso.com"},
		Realm:                   realm,
		ServiceName:             products.LyncID,
		DefaultSipDomain:        realm,
		MetadataUrl:             lyncURL,
		TokenIssuer:             &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: "oauth-2026"}},
		ExchangeAutodiscoverUrl: autodiscover,
		RemovePartners:          []string{"app"},
		Primary:                 primary,
		Partners: []*pb.Partner{
			{Name: "microsoft.exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE,
				ApplicationIdentifier: products.ExchangeID, MetadataUrl: exchangeURL,
				TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true},
			{Name: "microsoft.sharepoint", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT,
				ApplicationIdentifier: products.SharePointID, MetadataUrl: sharepointURL,
				TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true},
		},
	}
}

func noErrors(t *testing.T, errs []*pb.ItemError) {
	t.Helper()
	for _, e := range errs {
		t.Errorf("item %s: %s", e.GetItem(), e.GetMessage())
	}
}

func verify(t *testing.T, s *Sim, cfg *pb.HostConfig) *pb.StatusReport {
	t.Helper()
	r, err := s.Verify(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return r
}

func item(t *testing.T, r *pb.StatusReport, name string) *pb.ItemStatus {
	t.Helper()
	for _, it := range r.GetItems() {
		if it.GetItem() == name {
			return it
		}
	}
	t.Fatalf("report has no item %s; items: %v", name, r.GetItems())
	return nil
}

// allOK fails unless every item of the report is OK.
func allOK(t *testing.T, r *pb.StatusReport) {
	t.Helper()
	if len(r.GetItems()) == 0 {
		t.Fatal("report has no items")
	}
	for _, it := range r.GetItems() {
		if it.GetState() != pb.ItemState_ITEM_STATE_OK {
			t.Errorf("item %s is %s: %s", it.GetItem(), it.GetState(), it.GetMessage())
		}
	}
}

func wantItem(t *testing.T, r *pb.StatusReport, name string, state pb.ItemState, msg string) {
	t.Helper()
	it := item(t, r, name)
	if it.GetState() != state || !strings.Contains(it.GetMessage(), msg) {
		t.Errorf("item %s = %s %q, want %s containing %q", name, it.GetState(), it.GetMessage(), state, msg)
	}
}

func readLync(t *testing.T, shared string) *LyncGlobal {
	t.Helper()
	ds, err := ReadDeploymentStore(shared, "pool01")
	if err != nil {
		t.Fatal(err)
	}
	if ds.Lync == nil {
		t.Fatalf("store of pool01 holds %s, not lync", ds.Product)
	}
	return ds.Lync
}

func lyncPartner(g *LyncGlobal, name string) *CsPartnerApplication {
	for _, a := range g.PartnerApplications {
		if a.Identity == name {
			return a
		}
	}
	return nil
}

// TestLyncSeedReconciliation reproduces the seed article's script on a
// store an administrator left behind.
func TestLyncSeedReconciliation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := fix(t)
	crm := &CsPartnerApplication{Identity: "contoso.crm", ApplicationIdentifier: "5d2a8c1e-0000-0000-0000-000000000001",
		MetadataURL: "https://crm.contoso.com/metadata/json/1", Realm: realm, ApplicationTrustLevel: "Application", Enabled: true}
	shpCached := [][]byte{f.signing[sharepointURL].Raw}
	seeded := &DeploymentStore{Deployment: "pool01", Product: "lync", Lync: &LyncGlobal{
		PartnerApplications: []*CsPartnerApplication{
			{Identity: "app", ApplicationIdentifier: "12345678-0000-0000-0000-000000000000", MetadataURL: "https://old.contoso.com/metadata/json/1", Realm: realm, ApplicationTrustLevel: "Full", Enabled: true},
			crm,
			{Identity: "microsoft.exchange", ApplicationIdentifier: "00000009-0000-0ff1-ce00-000000000000", MetadataURL: exchangeURL, Realm: realm, ApplicationTrustLevel: "Full", Enabled: true},
			{Identity: "microsoft.sharepoint", ApplicationIdentifier: products.SharePointID, MetadataURL: sharepointURL, Realm: realm,
				ApplicationTrustLevel: "Application", Enabled: true, AcceptSecurityIdentifierInformation: true, CachedCertificates: shpCached},
		},
	}}
	if _, err := writeStore(e.shared, seeded, nil); err != nil {
		t.Fatal(err)
	}

	fe01 := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	cfg := lyncConfig("fe01.contoso.com", true)
	noErrors(t, fe01.Apply(context.Background(), cfg, secrets(t)))

	g := readLync(t, e.shared)
	if a := lyncPartner(g, "app"); a != nil {
		t.Errorf("stale partner app is still registered: %+v", a)
	}
	ex := lyncPartner(g, "microsoft.exchange")
	if ex == nil || ex.ApplicationIdentifier != products.ExchangeID || ex.ApplicationTrustLevel != "Full" || !ex.Enabled {
		t.Errorf("microsoft.exchange = %+v, want recreated with %s at Full", ex, products.ExchangeID)
	} else if !slices.EqualFunc(ex.CachedCertificates, [][]byte{f.signing[exchangeURL].Raw}, func(a, b []byte) bool { return string(a) == string(b) }) {
		t.Error("recreated microsoft.exchange did not cache its metadata's signing certificate")
	}
	shp := lyncPartner(g, "microsoft.sharepoint")
	if shp == nil || shp.ApplicationTrustLevel != "Full" {
		t.Errorf("microsoft.sharepoint = %+v, want ApplicationTrustLevel Full", shp)
	} else if !shp.AcceptSecurityIdentifierInformation || !sameCertificates(shp.CachedCertificates, shpCached) {
		t.Errorf("Set-CsPartnerApplication changed more than the trust level: %+v", shp)
	}
	if got := lyncPartner(g, "contoso.crm"); got == nil || fmt.Sprint(*got) != fmt.Sprint(*crm) {
		t.Errorf("the administrator's own partner contoso.crm = %+v, want it left alone as %+v", got, crm)
	}
	// Only the recreated partner downloaded metadata: the trust level is set in place.
	if !slices.Equal(e.fetch.calls, []string{exchangeURL}) {
		t.Errorf("metadata downloads = %v, want only %s", e.fetch.calls, exchangeURL)
	}
	want := CsOAuthConfiguration{ServiceName: products.LyncID, Realm: realm, ExchangeAutodiscoverURL: autodiscover}
	if g.OAuthConfiguration != want {
		t.Errorf("CsOAuthConfiguration = %+v, want %+v", g.OAuthConfiguration, want)
	}
	// Import-CsCertificate -Identity Global: the CMS holds the certificate
	// with its key and replicates both to every Front End.
	if tp := certs.Thumbprint(f.issuer.Cert); g.OAuthTokenIssuer == nil || g.OAuthTokenIssuer.Thumbprint != tp || g.OAuthTokenIssuer.PrivateKey == "" {
		t.Errorf("global OAuthTokenIssuer = %v, want %s with its key for the CMS to replicate", g.OAuthTokenIssuer != nil, tp)
	}

	r := verify(t, fe01, cfg)
	allOK(t, r)
	if !r.GetPrimary() {
		t.Error("report.Primary is false on the primary")
	}
	wantOAuth := &pb.OAuthConfiguration{ServiceName: products.LyncID, Realm: realm, ExchangeAutodiscoverUrl: autodiscover, IssuerThumbprint: certs.Thumbprint(f.issuer.Cert)}
	if r.GetOauth().String() != wantOAuth.String() {
		t.Errorf("report.Oauth = %v, want %v", r.GetOauth(), wantOAuth)
	}
	if ic := r.GetIssuerCertificate(); ic.GetThumbprint() != certs.Thumbprint(f.issuer.Cert) || !ic.GetHasPrivateKey() {
		t.Errorf("report.IssuerCertificate = %v", ic)
	}
	var rows []string
	for _, p := range r.GetPartners() {
		rows = append(rows, fmt.Sprintf("%s %s %s %s %v", p.GetIdentity(), p.GetName(), p.GetApplicationIdentifier(), products.TrustLevelName(p.GetTrustLevel()), p.GetEnabled()))
	}
	wantRows := []string{
		"contoso.crm contoso.crm 5d2a8c1e-0000-0000-0000-000000000001 Application true",
		"microsoft.exchange microsoft.exchange " + products.ExchangeID + " Full true",
		"microsoft.sharepoint microsoft.sharepoint " + products.SharePointID + " Full true",
	}
	if !slices.Equal(rows, wantRows) {
		t.Errorf("report.Partners =\n%s\nwant\n%s", strings.Join(rows, "\n"), strings.Join(wantRows, "\n"))
	}

	ps, err := fe01.Partners(context.Background(), "pool01")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 || ps[1].Name != "microsoft.exchange" || len(ps[1].Certificates) != 1 || !ps[1].Certificates[0].Equal(f.signing[exchangeURL]) || ps[1].TrustLevel != pb.TrustLevel_TRUST_LEVEL_FULL {
		t.Errorf("Partners = %+v", ps)
	}
}

func fileState(t *testing.T, path string) (os.FileInfo, []byte) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi, data
}

func TestApplyIsIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fe01 := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	cfg := lyncConfig("fe01.contoso.com", true)
	noErrors(t, fe01.Apply(context.Background(), cfg, secrets(t)))

	files := []string{
		filepath.Join(e.shared, "pool01", storeFile),
		filepath.Join(fe01.cfg.StateDir, hostFile),
		fe01.keyPath(certs.Thumbprint(fix(t).issuer.Cert)),
	}
	type state struct {
		fi   os.FileInfo
		data []byte
	}
	var before []state
	for _, p := range files {
		fi, data := fileState(t, p)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, fi.Mode().Perm())
		}
		before = append(before, state{fi, data})
	}
	downloads := e.fetch.count()

	noErrors(t, fe01.Apply(context.Background(), cfg, secrets(t)))
	for i, p := range files {
		fi, data := fileState(t, p)
		// An atomic write replaces the file, so the same file means no write.
		if !os.SameFile(before[i].fi, fi) || !fi.ModTime().Equal(before[i].fi.ModTime()) || string(data) != string(before[i].data) {
			t.Errorf("the second Apply rewrote %s", p)
		}
	}
	if n := e.fetch.count(); n != downloads {
		t.Errorf("the second Apply downloaded metadata %d times", n-downloads)
	}
	allOK(t, verify(t, fe01, cfg))
}

func TestHostStoreHoldsNoKeyMaterial(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fe01 := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	noErrors(t, fe01.Apply(context.Background(), lyncConfig("fe01.contoso.com", true), secrets(t)))
	for _, p := range []string{filepath.Join(fe01.cfg.StateDir, hostFile), filepath.Join(e.shared, "pool01", storeFile)} {
		_, data := fileState(t, p)
		// The deployment store is the CMS, which holds the imported key to
		// replicate it (as Lync's CMS does); the host store names keys kept
		// in owner-only files. Neither holds the PFX or its password.
		if strings.Contains(string(data), issuerPassword) || (strings.HasSuffix(p, hostFile) && strings.Contains(string(data), "PRIVATE KEY")) {
			t.Errorf("%s holds key material or the PFX password", p)
		}
	}
	keys, err := os.ReadDir(filepath.Join(fe01.cfg.StateDir, keysDir))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 { // the Default certificate's and the issuer's
		t.Errorf("keys directory holds %d files, want 2", len(keys))
	}
	fi, err := os.Stat(filepath.Join(fe01.cfg.StateDir, keysDir))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("keys directory: %v, mode %v, want 0700", err, fi.Mode().Perm())
	}
}

func TestNonPrimaryPendingUntilPrimaryApplies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fe01 := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	fe02 := e.host("fe02.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	cfg1, cfg2 := lyncConfig("fe01.contoso.com", true), lyncConfig("fe02.contoso.com", false)

	noErrors(t, fe02.Apply(context.Background(), cfg2, secrets(t)))
	if _, err := os.Stat(filepath.Join(e.shared, "pool01", storeFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a non-primary Apply wrote the deployment store (stat: %v)", err)
	}
	r := verify(t, fe02, cfg2)
	wantItem(t, r, driver.ItemProduct, pb.ItemState_ITEM_STATE_OK, "")
	for _, it := range []string{driver.ItemIssuerCertificate, driver.ItemOAuthConfiguration, driver.PartnerItem("microsoft.exchange"), driver.PartnerItem("microsoft.sharepoint")} {
		wantItem(t, r, it, pb.ItemState_ITEM_STATE_PENDING, "waiting for the primary")
	}
	wantItem(t, r, driver.PartnerItem("microsoft.exchange"), pb.ItemState_ITEM_STATE_PENDING, "partner microsoft.exchange: not registered")
	wantItem(t, r, driver.RemovePartnerItem("app"), pb.ItemState_ITEM_STATE_OK, "")

	noErrors(t, fe01.Apply(context.Background(), cfg1, secrets(t)))
	allOK(t, verify(t, fe02, cfg2))
	allOK(t, verify(t, fe01, cfg1))

	c1, k1, _, err := fe01.SigningCertificates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c2, k2, all, err := fe02.SigningCertificates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !c1.Equal(c2) || !c1.Equal(fix(t).issuer.Cert) || k1 == nil || k2 == nil || len(all) != 1 {
		t.Errorf("SigningCertificates differ between the Front Ends or from the PFX")
	}
}

func TestIssuerSecretWrongPassword(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fe01 := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	cfg := lyncConfig("fe01.contoso.com", true)
	const wrong = "Wrong-Password-4711"
	errs := fe01.Apply(context.Background(), cfg, []*pb.SecretMaterial{{Name: "oauth-2026", Pfx: fix(t).pfx, Password: wrong}})
	if len(errs) != 1 || errs[0].GetItem() != driver.ItemIssuerCertificate {
		t.Fatalf("Apply errors = %v, want one on %s", errs, driver.ItemIssuerCertificate)
	}
	msg := errs[0].GetMessage()
	if !strings.Contains(msg, "secret oauth-2026") || !strings.Contains(msg, "fe01.contoso.com") || !strings.Contains(msg, "wrong password") {
		t.Errorf("message %q does not name the secret, the host and the cause", msg)
	}
	if strings.Contains(msg, wrong) || strings.Contains(msg, issuerPassword) {
		t.Errorf("message %q contains a password", msg)
	}
	// The other items went ahead.
	r := verify(t, fe01, cfg)
	wantItem(t, r, driver.PartnerItem("microsoft.exchange"), pb.ItemState_ITEM_STATE_OK, "")
	wantItem(t, r, driver.ItemOAuthConfiguration, pb.ItemState_ITEM_STATE_OK, "")
	wantItem(t, r, driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_FAILED, "is (not set), want the certificate of secret oauth-2026")

	// A secret that was not delivered at all.
	errs = fe01.Apply(context.Background(), cfg, nil)
	if len(errs) != 1 || errs[0].GetItem() != driver.ItemIssuerCertificate || !strings.Contains(errs[0].GetMessage(), "secret oauth-2026 was not delivered") {
		t.Errorf("Apply without the secret = %v", errs)
	}
}

func TestIssuerByThumbprint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fe01 := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	cfg := lyncConfig("fe01.contoso.com", true)

	cfg.TokenIssuer = &pb.TokenIssuer{Source: &pb.TokenIssuer_Thumbprint{Thumbprint: "0123456789ABCDEF0123456789ABCDEF01234567"}}
	errs := fe01.Apply(context.Background(), cfg, nil)
	if len(errs) != 1 || errs[0].GetItem() != driver.ItemIssuerCertificate {
		t.Fatalf("Apply errors = %v, want one on %s", errs, driver.ItemIssuerCertificate)
	}
	if want := "Set-CsCertificate -Thumbprint 0123456789ABCDEF0123456789ABCDEF01234567 on host fe01.contoso.com: no certificate with that thumbprint in the local computer's Personal store"; errs[0].GetMessage() != want {
		t.Errorf("message = %q, want %q", errs[0].GetMessage(), want)
	}
	wantItem(t, verify(t, fe01, cfg), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_FAILED, "is (not set), want 0123456789ABCDEF0123456789ABCDEF01234567")

	// The seed's alternative: the Default certificate, by thumbprint, typed
	// in lower case with spaces.
	def := fe01.host.DefaultThumbprint
	cert, key, ok := fe01.LocalCertificate(def)
	if !ok || key == nil || cert.Subject.CommonName != "fe01.contoso.com" {
		t.Fatalf("LocalCertificate(Default) = %v, %v, %v", cert, key, ok)
	}
	typed := strings.ToLower(def[:20] + " " + def[20:])
	cfg.TokenIssuer = &pb.TokenIssuer{Source: &pb.TokenIssuer_Thumbprint{Thumbprint: typed}}
	noErrors(t, fe01.Apply(context.Background(), cfg, nil))
	r := verify(t, fe01, cfg)
	if r.GetOauth().GetIssuerThumbprint() != def {
		t.Errorf("issuer thumbprint = %s, want %s", r.GetOauth().GetIssuerThumbprint(), def)
	}
	// A certificate named by thumbprint never met the controller's checks,
	// so the Front End checks it against the SIP domains: this Default
	// certificate's CN is the host, a name under contoso.com, which
	// qualifies (Microsoft: the SIP domain in the subject) with a warning
	// that it is not exactly the default SIP domain; strict rules refuse it.
	wantItem(t, r, driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_OK, "not exactly the default SIP domain contoso.com (rule subject-cn)")
	cfg.CertificateRules = certs.CertificateRulesStrict
	wantItem(t, verify(t, fe01, cfg), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_FAILED, "rule subject-cn")
}

func TestTamperedStoreFailsVerify(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fe01 := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	fe02 := e.host("fe02.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	cfg1, cfg2 := lyncConfig("fe01.contoso.com", true), lyncConfig("fe02.contoso.com", false)
	noErrors(t, fe01.Apply(context.Background(), cfg1, secrets(t)))
	noErrors(t, fe02.Apply(context.Background(), cfg2, secrets(t)))

	if err := SetTrustLevel(e.shared, "pool01", "microsoft.exchange", pb.TrustLevel_TRUST_LEVEL_APPLICATION); err != nil {
		t.Fatal(err)
	}
	if err := RemovePartner(e.shared, "pool01", "microsoft.sharepoint"); err != nil {
		t.Fatal(err)
	}
	r := verify(t, fe01, cfg1)
	wantItem(t, r, driver.PartnerItem("microsoft.exchange"), pb.ItemState_ITEM_STATE_FAILED, "partner microsoft.exchange: ApplicationTrustLevel is Application, want Full")
	wantItem(t, r, driver.PartnerItem("microsoft.sharepoint"), pb.ItemState_ITEM_STATE_FAILED, "partner microsoft.sharepoint: not registered")
	wantItem(t, r, driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_OK, "")
	// The non-primary sees the same replica and waits for the primary.
	r = verify(t, fe02, cfg2)
	wantItem(t, r, driver.PartnerItem("microsoft.exchange"), pb.ItemState_ITEM_STATE_PENDING, "ApplicationTrustLevel is Application, want Full")

	// Swap fe02's copy of the issuer certificate: only fe02 fails.
	issuer := certs.Thumbprint(fix(t).issuer.Cert)
	if err := fe02.ReplaceLocalIssuerCertificate(); err != nil {
		t.Fatal(err)
	}
	swapped := ""
	for _, c := range fe02.host.Certificates {
		if c.FriendlyName == friendlyIssuer {
			swapped = c.Thumbprint
		}
	}
	if swapped == "" || swapped == issuer {
		t.Fatalf("no swapped certificate in fe02's store")
	}
	it := item(t, verify(t, fe02, cfg2), driver.ItemIssuerCertificate)
	if it.GetState() != pb.ItemState_ITEM_STATE_FAILED || !strings.Contains(it.GetMessage(), "fe02.contoso.com") ||
		!strings.Contains(it.GetMessage(), issuer) || !strings.Contains(it.GetMessage(), swapped) {
		t.Errorf("fe02 issuer-certificate = %s %q, want FAILED naming fe02, %s and %s", it.GetState(), it.GetMessage(), issuer, swapped)
	}
	if _, _, _, err := fe02.SigningCertificates(context.Background()); err == nil {
		t.Error("SigningCertificates on fe02 succeeded without the issuer certificate")
	}
	wantItem(t, verify(t, fe01, cfg1), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_OK, "")

	// Applying again corrects all of it.
	noErrors(t, fe01.Apply(context.Background(), cfg1, secrets(t)))
	noErrors(t, fe02.Apply(context.Background(), cfg2, secrets(t)))
	allOK(t, verify(t, fe01, cfg1))
	allOK(t, verify(t, fe02, cfg2))

	// Helpers refuse what the products would refuse.
	if err := RemovePartner(e.shared, "pool01", "nonexistent"); err == nil {
		t.Error("RemovePartner of a missing partner succeeded")
	}
	if err := SetTrustLevel(e.shared, "pool01", "microsoft.exchange", pb.TrustLevel_TRUST_LEVEL_UNSPECIFIED); err == nil {
		t.Error("SetTrustLevel(UNSPECIFIED) succeeded")
	}
}

func TestMetadataFailureFailsOnlyThatPartner(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.fetch.fail = map[string]error{sharepointURL: errors.New("fetch metadata from " + sharepointURL + ": connection refused")}
	fe01 := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	cfg := lyncConfig("fe01.contoso.com", true)
	errs := fe01.Apply(context.Background(), cfg, secrets(t))
	if len(errs) != 1 || errs[0].GetItem() != driver.PartnerItem("microsoft.sharepoint") {
		t.Fatalf("Apply errors = %v, want one on partner/microsoft.sharepoint", errs)
	}
	want := "the metadata document could not be downloaded from the URL in the MetadataUrl parameter or downloaded data is not a valid metadata document: fetch metadata from " + sharepointURL + ": connection refused"
	if errs[0].GetMessage() != want {
		t.Errorf("message = %q\nwant %q", errs[0].GetMessage(), want)
	}
	r := verify(t, fe01, cfg)
	wantItem(t, r, driver.PartnerItem("microsoft.sharepoint"), pb.ItemState_ITEM_STATE_FAILED, "not registered")
	wantItem(t, r, driver.PartnerItem("microsoft.exchange"), pb.ItemState_ITEM_STATE_OK, "")
	wantItem(t, r, driver.ItemOAuthConfiguration, pb.ItemState_ITEM_STATE_OK, "")
	wantItem(t, r, driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_OK, "")

	// A failing new metadata URL leaves the registered partner as it was.
	delete(e.fetch.fail, sharepointURL)
	noErrors(t, fe01.Apply(context.Background(), cfg, secrets(t)))
	moved := "https://sp2.contoso.com/_layouts/15/metadata/json/1"
	e.fetch.fail[moved] = errors.New("no such host")
	cfg.Partners[1].MetadataUrl = moved
	cfg.Partners[1].TrustLevel = pb.TrustLevel_TRUST_LEVEL_USER
	errs = fe01.Apply(context.Background(), cfg, secrets(t))
	if len(errs) != 1 || errs[0].GetItem() != driver.PartnerItem("microsoft.sharepoint") {
		t.Fatalf("Apply errors = %v, want one on partner/microsoft.sharepoint", errs)
	}
	if shp := lyncPartner(readLync(t, e.shared), "microsoft.sharepoint"); shp.MetadataURL != sharepointURL || shp.ApplicationTrustLevel != "Full" {
		t.Errorf("a failed Set-CsPartnerApplication changed the partner: %+v", shp)
	}
	wantItem(t, verify(t, fe01, cfg), driver.PartnerItem("microsoft.sharepoint"), pb.ItemState_ITEM_STATE_FAILED,
		"partner microsoft.sharepoint: MetadataUrl is "+sharepointURL+", want "+moved+"; ApplicationTrustLevel is Full, want User")
}

func TestWrongProduct(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		detected *pb.DetectedProduct
		want     string
	}{
		{"other product", &pb.DetectedProduct{Product: pb.Product_PRODUCT_EXCHANGE, Version: "2019"},
			"host fe01.contoso.com runs Exchange Server 2019, not Lync / Skype for Business Server"},
		{"2010", &pb.DetectedProduct{Product: pb.Product_PRODUCT_LYNC, Version: "2010"},
			"host fe01.contoso.com: Lync / Skype for Business Server 2010 does not support server-to-server OAuth"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			s, err := New(Config{Host: "fe01.contoso.com", StateDir: t.TempDir(), SharedDir: e.shared, Products: []*pb.DetectedProduct{tt.detected}})
			if err != nil {
				t.Fatal(err)
			}
			cfg := lyncConfig("fe01.contoso.com", true)
			errs := s.Apply(context.Background(), cfg, secrets(t))
			if len(errs) != 1 || errs[0].GetItem() != driver.ItemProduct || !strings.Contains(errs[0].GetMessage(), tt.want) {
				t.Errorf("Apply = %v, want one product error containing %q", errs, tt.want)
			}
			r := verify(t, s, cfg)
			if len(r.GetItems()) != 1 {
				t.Errorf("Verify items = %v, want only the product item", r.GetItems())
			}
			wantItem(t, r, driver.ItemProduct, pb.ItemState_ITEM_STATE_FAILED, tt.want)
			if _, err := os.Stat(filepath.Join(e.shared, "pool01")); !errors.Is(err, os.ErrNotExist) {
				t.Error("a refused configuration wrote the deployment store")
			}
			got, _ := s.Detect(context.Background())
			if len(got) != 1 || got[0].GetProduct() != tt.detected.GetProduct() {
				t.Errorf("Detect = %v", got)
			}
		})
	}
}

func TestRestartKeepsTheHostStore(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fe01 := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	cfg := lyncConfig("fe01.contoso.com", true)
	noErrors(t, fe01.Apply(context.Background(), cfg, secrets(t)))
	again := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	if again.host.DefaultThumbprint != fe01.host.DefaultThumbprint {
		t.Error("a restart generated a new Default certificate")
	}
	allOK(t, verify(t, again, cfg))
	if _, err := New(Config{Host: "fe02.contoso.com", StateDir: fe01.cfg.StateDir, SharedDir: e.shared}); err == nil || !strings.Contains(err.Error(), "belongs to host fe01.contoso.com") {
		t.Errorf("New on another host's state directory: %v", err)
	}
}

func exchangeConfig(host string, primary bool) *pb.HostConfig {
	return &pb.HostConfig{
		Host: host, Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ProductVersion: "2019",
		DeploymentHosts: []string{"ex01.contoso.com", "ex02.contoso.com"}, ServiceName: products.ExchangeID,
		MetadataUrl: exchangeURL, Primary: primary,
		Partners: []*pb.Partner{
			{Name: "LyncEnterprise-pool01", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC,
				ApplicationIdentifier: products.LyncID, MetadataUrl: lyncURL, TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true},
			{Name: "SharePointEnterprise-sharepoint", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT,
				ApplicationIdentifier: products.SharePointID, MetadataUrl: sharepointURL, TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true},
		},
	}
}

// TestExchangeEndToEnd runs an organization of two servers on the default
// Auth Certificate, which Exchange copies to every server.
func TestExchangeEndToEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ex01 := e.host("ex01.contoso.com", pb.Product_PRODUCT_EXCHANGE, "2019")
	ex02 := e.host("ex02.contoso.com", pb.Product_PRODUCT_EXCHANGE, "2019")
	cfg1, cfg2 := exchangeConfig("ex01.contoso.com", true), exchangeConfig("ex02.contoso.com", false)

	// Before the organization exists (setup has not run) ex02 waits.
	noErrors(t, ex02.Apply(context.Background(), cfg2, nil))
	wantItem(t, verify(t, ex02, cfg2), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_PENDING, "no token-issuer certificate")

	noErrors(t, ex01.Apply(context.Background(), cfg1, nil))
	r1 := verify(t, ex01, cfg1)
	allOK(t, r1)
	ds0, err := ReadDeploymentStore(e.shared, "exchange")
	if err != nil {
		t.Fatal(err)
	}
	auth := ds0.Exchange.AuthConfig.CurrentCertificateThumbprint
	if r1.GetIssuerCertificate().GetSubject() != "CN=Microsoft Exchange Server Auth Certificate" || r1.GetOauth().GetIssuerThumbprint() != auth || auth == "" {
		t.Errorf("issuer = %v, oauth = %v, want the organization's Auth Certificate %s", r1.GetIssuerCertificate(), r1.GetOauth(), auth)
	}
	// Exchange's realm stays blank: nothing sets it.
	if r1.GetOauth().GetServiceName() != products.ExchangeID || r1.GetOauth().GetRealm() != "" {
		t.Errorf("report.Oauth = %v, want Exchange's ServiceName and a blank realm", r1.GetOauth())
	}
	// ex02 has the organization's settings and the Auth Certificate the
	// organization copies to every server.
	r2 := verify(t, ex02, cfg2)
	wantItem(t, r2, driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_OK, "")
	wantItem(t, r2, driver.PartnerItem("LyncEnterprise-pool01"), pb.ItemState_ITEM_STATE_OK, "")
	noErrors(t, ex02.Apply(context.Background(), cfg2, nil))
	allOK(t, verify(t, ex02, cfg2))

	c1, _, _, err := ex01.SigningCertificates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c2, k2, _, err := ex02.SigningCertificates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !c1.Equal(c2) || k2 == nil {
		t.Error("ex01 and ex02 sign with different certificates")
	}

	ds, err := ReadDeploymentStore(e.shared, "exchange")
	if err != nil {
		t.Fatal(err)
	}
	org := ds.Exchange
	if org == nil || org.AuthConfig.CurrentCertificateThumbprint != auth || org.AuthConfig.ServiceName != products.ExchangeID || org.AuthConfig.Realm != "" {
		t.Fatalf("AuthConfig = %+v", org)
	}
	// Configure-EnterprisePartnerApplication.ps1 chose the names; they are
	// matched by identifier and metadata URL.
	if len(org.PartnerApplications) != 2 || !strings.HasPrefix(org.PartnerApplications[0].Name, "LyncEnterprise-") ||
		org.PartnerApplications[0].AuthMetadataURL != lyncURL || org.PartnerApplications[0].LinkedAccount == "" || len(org.PartnerApplications[0].CachedCertificates) != 1 {
		t.Errorf("PartnerApplications = %+v", org.PartnerApplications)
	}

	// A primary move keeps the organization's Auth Certificate.
	cfg1.Primary, cfg2.Primary = false, true
	noErrors(t, ex02.Apply(context.Background(), cfg2, nil))
	allOK(t, verify(t, ex02, cfg2))
	if got := verify(t, ex02, cfg2).GetOauth().GetIssuerThumbprint(); got != auth {
		t.Errorf("after the primary moved the issuer is %s, want %s", got, auth)
	}

	// ex01, which published its Auth Certificate, loses its copy: FAILED,
	// not PENDING; its next apply installs the organization's copy again.
	if err := ex01.ReplaceLocalIssuerCertificate(); err != nil {
		t.Fatal(err)
	}
	wantItem(t, verify(t, ex01, cfg1), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_FAILED,
		"host ex01.contoso.com: the local certificate store does not hold the issuer certificate "+auth)
	noErrors(t, ex01.Apply(context.Background(), cfg1, nil))
	allOK(t, verify(t, ex01, cfg1))

	// Disabling a partner behind s2strust's back is found; Exchange has no trust level.
	if err := SetTrustLevel(e.shared, "exchange", "LyncEnterprise-pool01", pb.TrustLevel_TRUST_LEVEL_USER); err == nil {
		t.Error("SetTrustLevel on an Exchange partner succeeded")
	}
	cfg2.Partners[0].Enabled = false
	wantItem(t, verify(t, ex02, cfg2), driver.PartnerItem("LyncEnterprise-pool01"), pb.ItemState_ITEM_STATE_FAILED, "Enabled is True, want False")
}

func sharepointConfig() *pb.HostConfig {
	return &pb.HostConfig{
		Host: "sp01.contoso.com", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ProductVersion: "2019",
		DeploymentHosts: []string{"sp01.contoso.com"}, ServiceName: products.SharePointID,
		MetadataUrl: sharepointURL, Primary: true,
		TokenIssuer: &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: "oauth-2026"}},
		Partners: []*pb.Partner{
			{Name: "exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE,
				ApplicationIdentifier: products.ExchangeID, MetadataUrl: exchangeURL, Enabled: true},
			{Name: "pool01", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC,
				ApplicationIdentifier: products.LyncID, MetadataUrl: lyncURL, Enabled: true, TrustBroker: true},
		},
	}
}

func TestSharePointEndToEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sp01 := e.host("sp01.contoso.com", pb.Product_PRODUCT_SHAREPOINT, "2019")
	cfg := sharepointConfig()
	noErrors(t, sp01.Apply(context.Background(), cfg, secrets(t)))
	r := verify(t, sp01, cfg)
	allOK(t, r)

	ds, err := ReadDeploymentStore(e.shared, "sharepoint")
	if err != nil {
		t.Fatal(err)
	}
	farm := ds.SharePoint
	// The farm's realm stays its id: nothing sets it.
	if farm == nil || farm.FarmID == "" || farm.AuthenticationRealm != farm.FarmID || farm.SecurityTokenServiceCertificate.Thumbprint != certs.Thumbprint(fix(t).issuer.Cert) {
		t.Fatalf("farm = %+v", farm)
	}
	var got []string
	for _, i := range farm.TrustedSecurityTokenIssuers {
		got = append(got, fmt.Sprintf("%s %s %s %v %d", i.Name, i.RegisteredIssuerName, i.MetadataEndPoint, i.IsTrustBroker, len(i.CachedCertificates)))
	}
	want := []string{
		"exchange " + products.ExchangeID + "@" + realm + " " + exchangeURL + " false 1",
		"pool01 " + products.LyncID + "@" + realm + " " + lyncURL + " true 1",
	}
	if !slices.Equal(got, want) {
		t.Errorf("trusted security token issuers =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if p := r.GetPartners(); len(p) != 2 || p[1].GetApplicationIdentifier() != products.LyncID || p[1].GetRealm() != realm || !p[1].GetTrustBroker() {
		t.Errorf("report.Partners = %v", p)
	}

	// A registered issuer name that is wrong (another realm) is recreated.
	cfg.Partners[0].Realm = "fabrikam.com"
	wantItem(t, verify(t, sp01, cfg), driver.PartnerItem("exchange"), pb.ItemState_ITEM_STATE_FAILED,
		"partner exchange: Realm is "+realm+", want fabrikam.com")
	noErrors(t, sp01.Apply(context.Background(), cfg, secrets(t)))
	allOK(t, verify(t, sp01, cfg))
	if err := SetTrustLevel(e.shared, "sharepoint", "pool01", pb.TrustLevel_TRUST_LEVEL_FULL); err == nil {
		t.Error("SetTrustLevel on a SharePoint issuer succeeded")
	}
}

func TestConfigForAnotherDeploymentProduct(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fe01 := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	noErrors(t, fe01.Apply(context.Background(), lyncConfig("fe01.contoso.com", true), secrets(t)))
	// A SharePoint host misconfigured into the Lync pool's store.
	sp := e.host("sp01.contoso.com", pb.Product_PRODUCT_SHAREPOINT, "2019")
	cfg := sharepointConfig()
	cfg.Deployment = "pool01"
	errs := sp.Apply(context.Background(), cfg, secrets(t))
	if len(errs) != 1 || errs[0].GetItem() != driver.ItemProduct || !strings.Contains(errs[0].GetMessage(), "holds a lync deployment, not sharepoint") {
		t.Errorf("Apply = %v", errs)
	}
	cfg.Deployment = "../pool01"
	if errs := sp.Apply(context.Background(), cfg, secrets(t)); len(errs) != 1 || errs[0].GetItem() != driver.ItemProduct {
		t.Errorf("Apply with a path as deployment = %v", errs)
	}
}

func sameCertificates(a, b [][]byte) bool {
	return slices.EqualFunc(a, b, func(x, y []byte) bool { return string(x) == string(y) })
}

// TestLyncRollKeepsPreviousUntilRemoved: after a roll the old certificate
// stays as the previous one, published beside the current one, until it
// expires; then the plan removes it with Remove-CsCertificate -Previous.
func TestLyncRollKeepsPreviousUntilRemoved(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	clock := time.Now()
	var mu sync.Mutex
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	fe01, err := New(Config{Host: "fe01.contoso.com", StateDir: t.TempDir(), SharedDir: e.shared, Now: now,
		Products: []*pb.DetectedProduct{{Product: pb.Product_PRODUCT_LYNC, Version: "2015"}}, FetchMetadata: e.fetch.fetch})
	if err != nil {
		t.Fatal(err)
	}
	cfg := lyncConfig("fe01.contoso.com", true)
	noErrors(t, fe01.Apply(context.Background(), cfg, secrets(t)))
	oldT := certs.Thumbprint(fix(t).issuer.Cert)

	next, err := certs.Generate(certs.Template{CommonName: realm, DNSNames: []string{realm, "fabrikam.com"}, NotBefore: clock.Add(-time.Hour), NotAfter: clock.AddDate(2, 0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if err := RollIssuerCertificate(e.shared, "pool01", next, clock.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// The roll is the operator's: the topology no longer names a secret.
	cfg.TokenIssuer = nil
	mu.Lock()
	clock = clock.Add(2 * time.Minute)
	mu.Unlock()
	noErrors(t, fe01.Apply(context.Background(), cfg, nil))
	g := readLync(t, e.shared)
	if g.OAuthTokenIssuer.Thumbprint != certs.Thumbprint(next.Cert) || g.PreviousOAuthTokenIssuer == nil || g.PreviousOAuthTokenIssuer.Thumbprint != oldT {
		t.Fatalf("after the roll: current %s, previous %v; want %s and %s", g.OAuthTokenIssuer.Thumbprint, g.PreviousOAuthTokenIssuer != nil, certs.Thumbprint(next.Cert), oldT)
	}
	_, _, all, err := fe01.SigningCertificates(context.Background())
	if err != nil || len(all) != 2 {
		t.Fatalf("published certificates = %d (%v), want the current and the previous", len(all), err)
	}
	if res := fe01.ApplyPlan(context.Background(), cfg, nil, true); slices.ContainsFunc(res.Ops, func(o reconcile.Op) bool { return o.Kind == reconcile.KindRemovePreviousIssuer }) {
		t.Error("the previous certificate is removed before it expires")
	}
	// Once the previous certificate has expired, the plan removes it.
	mu.Lock()
	clock = fix(t).issuer.Cert.NotAfter.Add(time.Hour)
	mu.Unlock()
	res := fe01.ApplyPlan(context.Background(), cfg, nil, false)
	i := slices.IndexFunc(res.Ops, func(o reconcile.Op) bool { return o.Kind == reconcile.KindRemovePreviousIssuer })
	if i < 0 || res.Ops[i].Command() != "Remove-CsCertificate -Identity 'Global' -Type OAuthTokenIssuer -Previous -Confirm:$false" {
		t.Fatalf("plan after expiry = %s, want Remove-CsCertificate -Previous", reconcile.Redacted(res.Ops))
	}
	if g := readLync(t, e.shared); g.PreviousOAuthTokenIssuer != nil {
		t.Error("the previous certificate is still there after Remove-CsCertificate -Previous")
	}
}

// TestSharePointQueuedSigningCertificate: a certificate queued with
// Set-SPSecurityTokenServiceConfig -QueueSigningCertificate is published
// beside the current one and shows as the next issuer, as rotation needs.
func TestSharePointQueuedSigningCertificate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sp01 := e.host("sp01.contoso.com", pb.Product_PRODUCT_SHAREPOINT, "2019")
	cfg := sharepointConfig()
	cfg.TokenIssuer = nil
	noErrors(t, sp01.Apply(context.Background(), cfg, nil))
	next, err := certs.Generate(certs.Template{CommonName: "SharePoint Security Token Service"})
	if err != nil {
		t.Fatal(err)
	}
	if err := StageNextIssuerCertificate(e.shared, "sharepoint", next.Cert, time.Now()); err != nil {
		t.Fatal(err)
	}
	_, _, all, err := sp01.SigningCertificates(context.Background())
	if err != nil || len(all) != 2 || !all[1].Equal(next.Cert) {
		t.Fatalf("published = %d certificates (%v), want the current and the queued one", len(all), err)
	}
	st, err := sp01.Read(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Issuer.Next != certs.Thumbprint(next.Cert) || st.STS.QueuedSigningThumbprint != st.Issuer.Next {
		t.Errorf("issuer %+v, STS %+v; want the queued certificate as next", st.Issuer, st.STS)
	}
	allOK(t, verify(t, sp01, cfg))
}
