// Package drivertest is the conformance suite every product driver runs:
// the same scenarios, through the shared reconciler (package reconcile),
// against the sim today and the PowerShell driver over its fake worker.
// A driver passes when reading and executing operations on its products
// gives the results the products' documented behaviour gives.
//
// A driver's test provides a World: hosts of an estate it can create,
// brownfield partners it can register behind s2strust's back, and partner
// metadata URLs it can break. The suite then drives only
// reconcile.Backend (Read and Execute) through reconcile.Apply and
// reconcile.Verify, as the agent does.
package drivertest

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// The estate the scenarios use.
const (
	Realm          = "contoso.com"
	LyncURL        = "https://pool01.contoso.com/metadata/json/1"
	ExchangeURL    = "https://autodiscover.contoso.com/autodiscover/metadata/json/1"
	SharePointURL  = "https://sp.contoso.com/_layouts/15/metadata/json/1"
	AutodiscoverSv = "https://autodiscover.contoso.com/autodiscover/autodiscover.svc"
	IssuerSecret   = "oauth-2026"
)

// World is an estate a driver under test manages.
type World interface {
	// Host returns the backend of host (created on first use) running
	// product p at version.
	Host(t *testing.T, host string, p pb.Product, version string) reconcile.Backend
	// Seed registers partners on cfg's deployment behind s2strust's back,
	// as an administrator's PowerShell would; the deployment is installed
	// first if it is not.
	Seed(t *testing.T, cfg *pb.HostConfig, partners []reconcile.Partner)
	// BreakMetadata makes url unreachable from every host, or reachable
	// again.
	BreakMetadata(t *testing.T, url string, broken bool)
	// Secrets is the key material of IssuerSecret: a PFX whose certificate
	// has CN contoso.com and SAN contoso.com, fabrikam.com.
	Secrets(t *testing.T) []*pb.SecretMaterial
}

// Run runs every scenario, each in a world of its own.
func Run(t *testing.T, newWorld func(t *testing.T) World) {
	for _, sc := range []struct {
		name string
		run  func(t *testing.T, w World)
	}{
		{"lync seed reconciliation", lyncSeedReconciliation},
		{"apply is idempotent", idempotent},
		{"non-primary runs no deployment-scope operation", nonPrimary},
		{"realms are never forced", realmsNeverForced},
		{"a declared realm needs confirmation and is disruptive", declaredRealm},
		{"metadata failure fails that partner only", metadataFailure},
		{"monitor mode changes nothing", monitor},
		{"existing Default certificate", existingDefault},
		{"exchange partners matched by identifier and URL", exchangeMatchByURL},
		{"sharepoint trust broker, app permission and STS", sharePoint},
	} {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			sc.run(t, newWorld(t))
		})
	}
}

// LyncConfig is a Lync pool's configuration for host.
func LyncConfig(host string, primary bool) *pb.HostConfig {
	return &pb.HostConfig{
		Host: host, Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ProductVersion: "2015",
		DeploymentHosts: []string{"fe01.contoso.com", "fe02.contoso.com"}, ServiceName: products.LyncID,
		DefaultSipDomain: Realm, AdditionalSipDomains: []string{"fabrikam.com"}, MetadataUrl: LyncURL, Endpoint: "pool01.contoso.com",
		TokenIssuer:             &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: IssuerSecret}},
		ExchangeAutodiscoverUrl: AutodiscoverSv, RemovePartners: []string{"app"}, Primary: primary,
		Partners: []*pb.Partner{
			{Name: "microsoft.exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE,
				ApplicationIdentifier: products.ExchangeID, MetadataUrl: ExchangeURL, TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true},
			{Name: "microsoft.sharepoint", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT,
				ApplicationIdentifier: products.SharePointID, MetadataUrl: SharePointURL, TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true},
		},
	}
}

// ExchangeConfig is an Exchange organization's configuration for host.
func ExchangeConfig(host string, primary bool) *pb.HostConfig {
	return &pb.HostConfig{
		Host: host, Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ProductVersion: "2019",
		DeploymentHosts: []string{"ex01.contoso.com", "ex02.contoso.com"}, ServiceName: products.ExchangeID,
		MetadataUrl: ExchangeURL, Endpoint: "autodiscover.contoso.com", Primary: primary, DefaultSipDomain: Realm,
		Partners: []*pb.Partner{
			{Name: "LyncEnterprise-pool01", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC,
				ApplicationIdentifier: products.LyncID, MetadataUrl: LyncURL, Enabled: true},
		},
	}
}

// SharePointConfig is a SharePoint farm's configuration for host.
func SharePointConfig(host string) *pb.HostConfig {
	return &pb.HostConfig{
		Host: host, Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ProductVersion: "2019",
		DeploymentHosts: []string{host}, ServiceName: products.SharePointID, MetadataUrl: SharePointURL,
		Endpoint: "https://sp.contoso.com", Primary: true, DefaultSipDomain: Realm,
		Partners: []*pb.Partner{
			{Name: "exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE,
				ApplicationIdentifier: products.ExchangeID, MetadataUrl: ExchangeURL, Enabled: true},
			{Name: "pool01", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC,
				ApplicationIdentifier: products.LyncID, MetadataUrl: LyncURL, Enabled: true, TrustBroker: true},
		},
	}
}

func now() time.Time { return time.Now() }

func apply(t *testing.T, b reconcile.Backend, cfg *pb.HostConfig, secrets []*pb.SecretMaterial) reconcile.Result {
	t.Helper()
	return reconcile.Apply(context.Background(), b, cfg, secrets, now(), false)
}

func noErrors(t *testing.T, res reconcile.Result) {
	t.Helper()
	for _, e := range res.Errors {
		t.Errorf("item %s: %s", e.GetItem(), e.GetMessage())
	}
}

func verify(t *testing.T, b reconcile.Backend, cfg *pb.HostConfig) *pb.StatusReport {
	t.Helper()
	r, err := reconcile.Verify(context.Background(), b, cfg, now())
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return r
}

func read(t *testing.T, b reconcile.Backend, cfg *pb.HostConfig) *reconcile.State {
	t.Helper()
	st, err := b.Read(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return st
}

func allOK(t *testing.T, r *pb.StatusReport) {
	t.Helper()
	for _, it := range r.GetItems() {
		if it.GetState() != pb.ItemState_ITEM_STATE_OK {
			t.Errorf("item %s is %s: %s", it.GetItem(), it.GetState(), it.GetMessage())
		}
	}
}

func itemState(t *testing.T, r *pb.StatusReport, item string) *pb.ItemStatus {
	t.Helper()
	for _, it := range r.GetItems() {
		if it.GetItem() == item {
			return it
		}
	}
	t.Fatalf("no item %s in %v", item, r.GetItems())
	return nil
}

func plan(t *testing.T, b reconcile.Backend, cfg *pb.HostConfig, secrets []*pb.SecretMaterial) []reconcile.Op {
	t.Helper()
	return reconcile.Plan(reconcile.Input{Config: cfg, State: read(t, b, cfg), Secrets: secrets, Now: now()})
}

func partner(st *reconcile.State, name string) *reconcile.Partner {
	for i := range st.Partners {
		if strings.EqualFold(st.Partners[i].Name, name) {
			return &st.Partners[i]
		}
	}
	return nil
}

// lyncSeedReconciliation is the seed article's script: a stale partner
// removed, a partner with the wrong identifier removed and created again,
// a differing trust level set, the administrator's own partner left alone.
func lyncSeedReconciliation(t *testing.T, w World) {
	cfg := LyncConfig("fe01.contoso.com", true)
	fe01 := w.Host(t, "fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	w.Seed(t, cfg, []reconcile.Partner{
		{Name: "app", ApplicationIdentifier: "12345678-0000-0000-0000-000000000000", MetadataURL: "https://old.contoso.com/metadata/json/1", Realm: Realm, TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true},
		{Name: "microsoft.exchange", ApplicationIdentifier: "00000009-0000-0ff1-ce00-000000000000", MetadataURL: ExchangeURL, Realm: Realm, TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true},
		{Name: "microsoft.sharepoint", ApplicationIdentifier: products.SharePointID, MetadataURL: SharePointURL, Realm: Realm, TrustLevel: pb.TrustLevel_TRUST_LEVEL_APPLICATION, Enabled: true},
		{Name: "contoso.crm", ApplicationIdentifier: "87654321-0000-0000-0000-000000000000", MetadataURL: "https://crm.contoso.com/metadata/json/1", Realm: Realm, TrustLevel: pb.TrustLevel_TRUST_LEVEL_APPLICATION, Enabled: true},
	})
	ops := plan(t, fe01, cfg, w.Secrets(t))
	var got []string
	for _, o := range ops {
		if strings.HasPrefix(o.Item, "partner/") || strings.HasPrefix(o.Item, "remove-partner/") {
			got = append(got, o.Item+" "+o.Cmdlet)
		}
	}
	want := []string{
		"remove-partner/app Remove-CsPartnerApplication",
		"partner/microsoft.exchange Remove-CsPartnerApplication",
		"partner/microsoft.exchange New-CsPartnerApplication",
		"partner/microsoft.sharepoint Set-CsPartnerApplication",
	}
	if !slices.Equal(got, want) {
		t.Errorf("partner operations =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, o := range ops {
		if o.Kind == reconcile.KindNewPartner && (strings.Contains(o.Command(), "-Realm") || strings.Contains(o.Command(), "-ApplicationIdentifier")) {
			t.Errorf("%s: New-CsPartnerApplication -MetadataUrl takes neither -Realm nor -ApplicationIdentifier", o.Command())
		}
	}
	noErrors(t, apply(t, fe01, cfg, w.Secrets(t)))
	allOK(t, verify(t, fe01, cfg))
	st := read(t, fe01, cfg)
	if partner(st, "app") != nil {
		t.Error("stale partner app is still registered")
	}
	if p := partner(st, "microsoft.exchange"); p == nil || p.ApplicationIdentifier != products.ExchangeID {
		t.Errorf("microsoft.exchange = %+v, want re-created with %s", p, products.ExchangeID)
	}
	if p := partner(st, "microsoft.sharepoint"); p == nil || p.TrustLevel != pb.TrustLevel_TRUST_LEVEL_FULL {
		t.Errorf("microsoft.sharepoint = %+v, want ApplicationTrustLevel Full", p)
	}
	if p := partner(st, "contoso.crm"); p == nil || p.TrustLevel != pb.TrustLevel_TRUST_LEVEL_APPLICATION {
		t.Errorf("the administrator's contoso.crm = %+v, want it left alone", p)
	}
}

func idempotent(t *testing.T, w World) {
	for _, tc := range []struct {
		cfg     *pb.HostConfig
		secrets []*pb.SecretMaterial
	}{
		{LyncConfig("fe01.contoso.com", true), w.Secrets(t)},
		{ExchangeConfig("ex01.contoso.com", true), nil},
		{SharePointConfig("sp01.contoso.com"), nil},
	} {
		b := w.Host(t, tc.cfg.GetHost(), tc.cfg.GetProduct(), tc.cfg.GetProductVersion())
		noErrors(t, apply(t, b, tc.cfg, tc.secrets))
		allOK(t, verify(t, b, tc.cfg))
		before := read(t, b, tc.cfg)
		if ops := plan(t, b, tc.cfg, tc.secrets); len(ops) != 0 {
			t.Errorf("%s: a second plan is not empty: %s", tc.cfg.GetHost(), reconcile.Redacted(ops))
		}
		if res := apply(t, b, tc.cfg, tc.secrets); len(res.Ops) != 0 || len(res.Errors) != 0 {
			t.Errorf("%s: applying again ran %s, errors %v", tc.cfg.GetHost(), reconcile.Redacted(res.Ops), res.Errors)
		}
		if after := read(t, b, tc.cfg); !reflect.DeepEqual(before, after) {
			t.Errorf("%s: applying again changed the state", tc.cfg.GetHost())
		}
	}
}

func nonPrimary(t *testing.T, w World) {
	fe01 := w.Host(t, "fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	fe02 := w.Host(t, "fe02.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	cfg1, cfg2 := LyncConfig("fe01.contoso.com", true), LyncConfig("fe02.contoso.com", false)
	for _, o := range plan(t, fe02, cfg2, nil) {
		if o.PrimaryOnly {
			t.Errorf("non-primary fe02 planned %s", o.Command())
		}
	}
	// The PFX goes to the primary only; the other Front End verifies the
	// replica the CMS gives it.
	noErrors(t, apply(t, fe01, cfg1, w.Secrets(t)))
	noErrors(t, apply(t, fe02, cfg2, nil))
	allOK(t, verify(t, fe02, cfg2))
	allOK(t, verify(t, fe01, cfg1))
}

func realmsNeverForced(t *testing.T, w World) {
	for _, cfg := range []*pb.HostConfig{ExchangeConfig("ex01.contoso.com", true), SharePointConfig("sp01.contoso.com")} {
		b := w.Host(t, cfg.GetHost(), cfg.GetProduct(), cfg.GetProductVersion())
		res := apply(t, b, cfg, nil)
		noErrors(t, res)
		for _, o := range res.Ops {
			if o.Kind == reconcile.KindSetRealm {
				t.Errorf("%s: planned %s although no realm is declared", cfg.GetHost(), o.Command())
			}
		}
		st := read(t, b, cfg)
		switch cfg.GetProduct() {
		case pb.Product_PRODUCT_EXCHANGE:
			if st.OAuth.Realm != "" {
				t.Errorf("Exchange's AuthConfig realm is %q, want it blank", st.OAuth.Realm)
			}
		case pb.Product_PRODUCT_SHAREPOINT:
			if !isGUID(st.OAuth.Realm) {
				t.Errorf("SharePoint's realm is %q, want its farm id", st.OAuth.Realm)
			}
		}
	}
}

func isGUID(s string) bool {
	if len(s) != 36 || strings.ToLower(s) != s {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdef", r) {
				return false
			}
		}
	}
	return true
}

func declaredRealm(t *testing.T, w World) {
	cfg := SharePointConfig("sp01.contoso.com")
	b := w.Host(t, cfg.GetHost(), cfg.GetProduct(), cfg.GetProductVersion())
	noErrors(t, apply(t, b, cfg, nil))
	cfg.Realm = "fabrikam.com"
	it := itemState(t, verify(t, b, cfg), driver.ItemOAuthConfiguration)
	if it.GetState() != pb.ItemState_ITEM_STATE_FAILED || !strings.Contains(it.GetMessage(), "confirmRealmChange") {
		t.Errorf("unconfirmed realm change: %s %q, want FAILED naming confirmRealmChange", it.GetState(), it.GetMessage())
	}
	for _, o := range plan(t, b, cfg, nil) {
		if o.Kind == reconcile.KindSetRealm {
			t.Errorf("an unconfirmed realm change planned %s", o.Command())
		}
	}
	cfg.ConfirmRealmChange = true
	ops := plan(t, b, cfg, nil)
	i := slices.IndexFunc(ops, func(o reconcile.Op) bool { return o.Kind == reconcile.KindSetRealm })
	if i < 0 || !ops[i].Disruptive || ops[i].Command() != "Set-SPAuthenticationRealm -Realm 'fabrikam.com' -Confirm:$false" {
		t.Fatalf("confirmed realm change planned %s, want a disruptive Set-SPAuthenticationRealm", reconcile.Redacted(ops))
	}
	noErrors(t, apply(t, b, cfg, nil))
	if st := read(t, b, cfg); st.OAuth.Realm != "fabrikam.com" {
		t.Errorf("realm = %q after the confirmed change", st.OAuth.Realm)
	}
}

func metadataFailure(t *testing.T, w World) {
	cfg := LyncConfig("fe01.contoso.com", true)
	fe01 := w.Host(t, "fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	w.BreakMetadata(t, SharePointURL, true)
	res := apply(t, fe01, cfg, w.Secrets(t))
	if len(res.Errors) != 1 || res.Errors[0].GetItem() != driver.PartnerItem("microsoft.sharepoint") ||
		!strings.Contains(res.Errors[0].GetMessage(), "could not be downloaded from the URL in the MetadataUrl parameter") {
		t.Fatalf("errors = %v, want only microsoft.sharepoint failing with the products' message", res.Errors)
	}
	r := verify(t, fe01, cfg)
	if it := itemState(t, r, driver.PartnerItem("microsoft.exchange")); it.GetState() != pb.ItemState_ITEM_STATE_OK {
		t.Errorf("microsoft.exchange is %s: %s", it.GetState(), it.GetMessage())
	}
	w.BreakMetadata(t, SharePointURL, false)
	noErrors(t, apply(t, fe01, cfg, w.Secrets(t)))
	allOK(t, verify(t, fe01, cfg))
}

func monitor(t *testing.T, w World) {
	cfg := LyncConfig("fe01.contoso.com", true)
	fe01 := w.Host(t, "fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	w.Seed(t, cfg, []reconcile.Partner{{Name: "app", ApplicationIdentifier: "12345678-0000-0000-0000-000000000000", MetadataURL: "https://old.contoso.com/metadata/json/1", Realm: Realm, TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true}})
	before := read(t, fe01, cfg)
	res := reconcile.Apply(context.Background(), fe01, cfg, w.Secrets(t), now(), true)
	if len(res.Errors) != 0 || len(res.Ops) == 0 {
		t.Fatalf("monitor: errors %v, %d operations, want a plan and no errors", res.Errors, len(res.Ops))
	}
	for _, o := range res.Ops {
		if strings.Contains(o.Command(), "Corr3ct") || (o.Kind == reconcile.KindImportIssuer && !strings.Contains(o.Command(), "-Password <redacted>")) {
			t.Errorf("%s: a secret is shown", o.Command())
		}
	}
	if after := read(t, fe01, cfg); !reflect.DeepEqual(before, after) {
		t.Error("monitor mode changed the host's state")
	}
}

func existingDefault(t *testing.T, w World) {
	cfg := LyncConfig("fe01.contoso.com", true)
	cfg.TokenIssuer = &pb.TokenIssuer{Source: &pb.TokenIssuer_Existing{Existing: "Default"}}
	fe01 := w.Host(t, "fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	noErrors(t, apply(t, fe01, cfg, nil))
	st := read(t, fe01, cfg)
	if st.DefaultThumbprint == "" || st.Issuer.Current != st.DefaultThumbprint {
		t.Fatalf("OAuthTokenIssuer is %q, want the Default certificate %q", st.Issuer.Current, st.DefaultThumbprint)
	}
	allOK(t, verify(t, fe01, cfg))
	// The other Front End verifies its replica of the pool's issuer.
	fe02 := w.Host(t, "fe02.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	cfg2 := LyncConfig("fe02.contoso.com", false)
	cfg2.TokenIssuer = cfg.TokenIssuer
	noErrors(t, apply(t, fe02, cfg2, nil))
	allOK(t, verify(t, fe02, cfg2))
}

func exchangeMatchByURL(t *testing.T, w World) {
	cfg := ExchangeConfig("ex01.contoso.com", true)
	ex01 := w.Host(t, "ex01.contoso.com", pb.Product_PRODUCT_EXCHANGE, "2019")
	// An administrator ran the script before: a partner under a name the
	// script chose. s2strust adopts it instead of creating a second one.
	w.Seed(t, cfg, []reconcile.Partner{{Name: "LyncEnterprise-a1b2c3d4", ApplicationIdentifier: products.LyncID, MetadataURL: LyncURL, Realm: Realm, Enabled: true}})
	ops := plan(t, ex01, cfg, nil)
	if slices.ContainsFunc(ops, func(o reconcile.Op) bool { return o.Kind == reconcile.KindNewPartner }) {
		t.Errorf("plan %s creates a partner although one with the identifier and URL exists", reconcile.Redacted(ops))
	}
	noErrors(t, apply(t, ex01, cfg, nil))
	allOK(t, verify(t, ex01, cfg))
	if st := read(t, ex01, cfg); len(st.Partners) != 1 {
		t.Errorf("partners = %+v, want the administrator's one", st.Partners)
	}
}

func sharePoint(t *testing.T, w World) {
	cfg := SharePointConfig("sp01.contoso.com")
	sp01 := w.Host(t, "sp01.contoso.com", pb.Product_PRODUCT_SHAREPOINT, "2019")
	noErrors(t, apply(t, sp01, cfg, nil))
	allOK(t, verify(t, sp01, cfg))
	st := read(t, sp01, cfg)
	if p := partner(st, "pool01"); p == nil || !p.TrustBroker {
		t.Errorf("pool01 = %+v, want a trust broker", p)
	}
	if p := partner(st, "exchange"); p == nil || p.TrustBroker {
		t.Errorf("exchange = %+v, want a self-issuer (not a trust broker)", p)
	}
	if !slices.ContainsFunc(st.AppPermissions, func(a reconcile.AppPermission) bool {
		return a.AppID == products.ExchangeID && a.AppOnly && a.Right == "FullControl" && a.Scope == "SiteSubscription"
	}) {
		t.Errorf("app permissions = %+v, want Exchange's SiteSubscription FullControl app-only", st.AppPermissions)
	}
	if st.STS == nil || st.STS.AllowOAuthOverHTTP || st.STS.AllowMetadataOverHTTP {
		t.Errorf("STS = %+v, want OAuth and metadata over HTTP refused", st.STS)
	}
	itemState(t, verify(t, sp01, cfg), reconcile.AppPermissionItem("exchange"))
}
