package drivertest

import (
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/certs"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// NextIssuerSecret is the secret a rotation stages as the next issuer.
const NextIssuerSecret = "oauth-2027"

// RotationWorld is a World in which a certificate rotation can run: a
// second issuer certificate, and partner metadata documents whose signing
// certificates change as the issuer stages its next one.
type RotationWorld interface {
	World
	// NextSecrets is the key material of NextIssuerSecret: a PFX whose
	// certificate passes the rules as Secrets' does, with its thumbprint.
	NextSecrets(t *testing.T) []*pb.SecretMaterial
	// Publish makes the metadata document at url publish signing
	// certificates list from now on: what a partner that refreshes finds.
	Publish(t *testing.T, url string, list []*x509.Certificate)
}

// RunRotation runs the rotation scenarios, each in a world of its own.
func RunRotation(t *testing.T, newWorld func(t *testing.T) RotationWorld) {
	for _, sc := range []struct {
		name string
		run  func(t *testing.T, w RotationWorld)
	}{
		{"exchange auth certificate rotation: stage, refresh, activate, retire", exchangeRotation},
		{"lync stages its next issuer once, on the primary", lyncStage},
		{"sharepoint queues the next signing certificate, then imports it", sharePointRotation},
	} {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			sc.run(t, newWorld(t))
		})
	}
}

func nextCert(t *testing.T, w RotationWorld) (*x509.Certificate, string) {
	t.Helper()
	m := w.NextSecrets(t)[0]
	b, err := certs.LoadPFX(m.GetPfx(), m.GetPassword())
	if err != nil {
		t.Fatalf("next secret: %v", err)
	}
	return b.Cert, certs.Thumbprint(b.Cert)
}

func opsOf(ops []reconcile.Op, kind reconcile.Kind) []reconcile.Op {
	return slices.DeleteFunc(slices.Clone(ops), func(o reconcile.Op) bool { return o.Kind != kind })
}

func wantItemState(t *testing.T, r *pb.StatusReport, item string, state pb.ItemState) {
	t.Helper()
	if it := itemState(t, r, item); it.GetState() != state {
		t.Errorf("item %s = %s %q, want %s", item, it.GetState(), it.GetMessage(), state)
	}
}

func cachedOf(t *testing.T, r *pb.StatusReport, url string) []string {
	t.Helper()
	for _, p := range r.GetPartners() {
		if strings.EqualFold(p.GetMetadataUrl(), url) {
			return p.GetCachedThumbprints()
		}
	}
	t.Fatalf("no partner with metadata URL %s in %v", url, r.GetPartners())
	return nil
}

func hasAll(have []string, want ...string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// exchangeRotation rotates the Exchange organization's auth certificate
// (two servers) while a Lync pool and a SharePoint farm trust it: every
// server imports the next certificate, the primary stages it; the partners
// refresh their copies of its metadata; the primary publishes it (an IIS
// reset follows); the previous one is cleared.
func exchangeRotation(t *testing.T, w RotationWorld) {
	ex1, ex2 := ExchangeConfig("ex01.contoso.com", true), ExchangeConfig("ex02.contoso.com", false)
	fe, sp := LyncConfig("fe01.contoso.com", true), SharePointConfig("sp01.contoso.com")
	ex01 := w.Host(t, "ex01.contoso.com", pb.Product_PRODUCT_EXCHANGE, "2019")
	ex02 := w.Host(t, "ex02.contoso.com", pb.Product_PRODUCT_EXCHANGE, "2019")
	fe01 := w.Host(t, "fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	sp01 := w.Host(t, "sp01.contoso.com", pb.Product_PRODUCT_SHAREPOINT, "2019")
	next, nt := nextCert(t, w)
	// What the organization's metadata publishes before the rotation.
	before, err := certs.Generate(certs.Template{CommonName: "Microsoft Exchange Server Auth Certificate"})
	if err != nil {
		t.Fatal(err)
	}
	w.Publish(t, ExchangeURL, []*x509.Certificate{before.Cert})
	pt := certs.Thumbprint(before.Cert)
	noErrors(t, apply(t, ex01, ex1, nil))
	noErrors(t, apply(t, ex02, ex2, nil))
	noErrors(t, apply(t, fe01, fe, w.Secrets(t)))
	noErrors(t, apply(t, sp01, sp, nil))
	old := read(t, ex01, ex1).Issuer.Current
	if old == "" {
		t.Fatal("the organization has no current auth certificate")
	}

	// 1. Stage: ex02 imports its own copy and waits for the primary, which
	// imports, stages and resets IIS.
	eff := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	stage := &pb.NextTokenIssuer{Secret: NextIssuerSecret, SecretThumbprint: nt, Effective: timestamppb.New(eff)}
	ex1.NextTokenIssuer, ex2.NextTokenIssuer = stage, stage
	sec := w.NextSecrets(t)
	ops := plan(t, ex02, ex2, sec)
	if len(ops) != 1 || ops[0].Kind != reconcile.KindImportNextIssuer || ops[0].PrimaryOnly {
		t.Errorf("ex02 stage plan = %s, want its own Import-ExchangeCertificate only", reconcile.Redacted(ops))
	}
	noErrors(t, apply(t, ex02, ex2, sec))
	wantItemState(t, verify(t, ex02, ex2), reconcile.ItemNextIssuer, pb.ItemState_ITEM_STATE_PENDING)
	if lc := read(t, ex02, ex2).Find(nt); lc == nil || !lc.HasPrivateKey {
		t.Errorf("ex02 does not hold the next certificate %s with its key", nt)
	}
	ops = plan(t, ex01, ex1, sec)
	if len(opsOf(ops, reconcile.KindImportNextIssuer)) != 1 || len(opsOf(ops, reconcile.KindStageNextIssuer)) != 1 || len(opsOf(ops, reconcile.KindResetIIS)) != 1 {
		t.Errorf("ex01 stage plan = %s, want import, Set-AuthConfig -NewCertificateThumbprint and an IIS reset", reconcile.Redacted(ops))
	}
	noErrors(t, apply(t, ex01, ex1, sec))
	for b, cfg := range map[reconcile.Backend]*pb.HostConfig{ex01: ex1, ex02: ex2} {
		r := verify(t, b, cfg)
		allOK(t, r)
		if o := r.GetOauth(); o.GetIssuerThumbprint() != old || o.GetNextIssuerThumbprint() != nt || !o.GetNextIssuerEffective().AsTime().Equal(eff) {
			t.Errorf("%s oauth = %v, want current %s, next %s at %s", cfg.GetHost(), o, old, nt, eff)
		}
	}
	if ops := plan(t, ex01, ex1, sec); len(ops) != 0 {
		t.Errorf("stage plan once staged = %s", reconcile.Redacted(ops))
	}

	// 2. Refresh: the organization's metadata now publishes both; each
	// partner refreshes its copy and reports both cached.
	w.Publish(t, ExchangeURL, []*x509.Certificate{before.Cert, next})
	fe.Partners[0].ExpectedSigningThumbprints = []string{pt, nt}
	sp.Partners[0].ExpectedSigningThumbprints = []string{pt, nt}
	for b, cfg := range map[reconcile.Backend]*pb.HostConfig{fe01: fe, sp01: sp} {
		wantItemState(t, verify(t, b, cfg), driver.PartnerItem(cfg.Partners[0].GetName()), pb.ItemState_ITEM_STATE_FAILED)
		ops := plan(t, b, cfg, nil)
		if len(opsOf(ops, reconcile.KindRefreshPartnerMetadata)) != 1 {
			t.Errorf("%s refresh plan = %s", cfg.GetHost(), reconcile.Redacted(ops))
		}
		noErrors(t, apply(t, b, cfg, w.Secrets(t)))
		r := verify(t, b, cfg)
		allOK(t, r)
		if c := cachedOf(t, r, ExchangeURL); !hasAll(c, pt, nt) {
			t.Errorf("%s caches %v for the organization, want %s and %s", cfg.GetHost(), c, pt, nt)
		}
		if ops := plan(t, b, cfg, nil); len(ops) != 0 {
			t.Errorf("%s plan after the refresh = %s", cfg.GetHost(), reconcile.Redacted(ops))
		}
	}
	// A key the organization does not publish fails the partner, naming it.
	bogus := strings.Repeat("0A", 20)
	fe.Partners[0].ExpectedSigningThumbprints = []string{pt, nt, bogus}
	res := apply(t, fe01, fe, w.Secrets(t))
	if len(res.Errors) != 1 || res.Errors[0].GetItem() != driver.PartnerItem("microsoft.exchange") ||
		!strings.Contains(res.Errors[0].GetMessage(), ExchangeURL) || !strings.Contains(res.Errors[0].GetMessage(), bogus) {
		t.Errorf("refresh for a key nobody publishes: %v", res.Errors)
	}
	fe.Partners[0].ExpectedSigningThumbprints = []string{pt, nt}

	// 3. Activate: the organization's auth certificate becomes the staged
	// one, by -PublishCertificate on the primary (then an IIS reset), never
	// a fresh import.
	ex1.NextTokenIssuer, ex2.NextTokenIssuer = nil, nil
	issuer := &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: NextIssuerSecret}, SecretThumbprint: nt}
	ex1.TokenIssuer, ex2.TokenIssuer = issuer, issuer
	ops = plan(t, ex02, ex2, sec)
	if len(ops) != 0 {
		t.Errorf("ex02 activation plan before the primary = %s", reconcile.Redacted(ops))
	}
	wantItemState(t, verify(t, ex02, ex2), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_PENDING)
	ops = plan(t, ex01, ex1, sec)
	if len(opsOf(ops, reconcile.KindActivateNextIssuer)) != 1 || len(opsOf(ops, reconcile.KindImportIssuer)) != 0 || len(opsOf(ops, reconcile.KindResetIIS)) != 1 ||
		!opsOf(ops, reconcile.KindResetIIS)[0].Disruptive {
		t.Errorf("ex01 activation plan = %s, want Set-AuthConfig -PublishCertificate and a disruptive IIS reset", reconcile.Redacted(ops))
	}
	noErrors(t, apply(t, ex01, ex1, sec))
	// ex02's app pools still sign with the old certificate: it resets its
	// own IIS (disruptive, host scope: the rollout paces the servers).
	ops = plan(t, ex02, ex2, sec)
	if rs := opsOf(ops, reconcile.KindResetIIS); len(ops) != 1 || len(rs) != 1 || !rs[0].Disruptive || rs[0].PrimaryOnly {
		t.Errorf("ex02 plan after the publish = %s, want its own IIS reset", reconcile.Redacted(ops))
	}
	wantItemState(t, verify(t, ex02, ex2), reconcile.ItemIISReset, pb.ItemState_ITEM_STATE_FAILED)
	noErrors(t, apply(t, ex02, ex2, sec))
	for b, cfg := range map[reconcile.Backend]*pb.HostConfig{ex01: ex1, ex02: ex2} {
		r := verify(t, b, cfg)
		allOK(t, r)
		if o := r.GetOauth(); o.GetIssuerThumbprint() != nt || o.GetNextIssuerThumbprint() != "" || o.GetPreviousIssuerThumbprint() != old {
			t.Errorf("%s oauth after activation = %v, want current %s, previous %s", cfg.GetHost(), o, nt, old)
		}
	}

	// 4. Retire: -ClearPreviousCertificate on the primary.
	ex1.RetirePreviousIssuer, ex2.RetirePreviousIssuer = true, true
	wantItemState(t, verify(t, ex02, ex2), reconcile.ItemPreviousIssuer, pb.ItemState_ITEM_STATE_PENDING)
	ops = plan(t, ex01, ex1, sec)
	if rm := opsOf(ops, reconcile.KindRemovePreviousIssuer); len(rm) != 1 || rm[0].Command() != "Set-AuthConfig -ClearPreviousCertificate -Confirm:$false" {
		t.Errorf("ex01 retire plan = %s", reconcile.Redacted(ops))
	}
	noErrors(t, apply(t, ex01, ex1, sec))
	for b, cfg := range map[reconcile.Backend]*pb.HostConfig{ex01: ex1, ex02: ex2} {
		r := verify(t, b, cfg)
		allOK(t, r)
		if o := r.GetOauth(); o.GetPreviousIssuerThumbprint() != "" || o.GetIssuerThumbprint() != nt {
			t.Errorf("%s oauth after retiring = %v", cfg.GetHost(), o)
		}
	}
	if ops := plan(t, ex01, ex1, sec); len(ops) != 0 {
		t.Errorf("plan once retired = %s", reconcile.Redacted(ops))
	}
}

// lyncStage stages a pool's next issuer with Import-CsCertificate -Roll
// -EffectiveDate on the primary only; the other Front End sees it through
// the CMS and plans nothing.
func lyncStage(t *testing.T, w RotationWorld) {
	fe1, fe2 := LyncConfig("fe01.contoso.com", true), LyncConfig("fe02.contoso.com", false)
	fe01 := w.Host(t, "fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	fe02 := w.Host(t, "fe02.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	noErrors(t, apply(t, fe01, fe1, w.Secrets(t)))
	fe2.TokenIssuer = fe1.TokenIssuer
	noErrors(t, apply(t, fe02, fe2, w.Secrets(t)))
	old := read(t, fe01, fe1).Issuer.Current
	_, nt := nextCert(t, w)
	eff := time.Now().Add(72 * time.Hour).UTC().Truncate(time.Second)
	stage := &pb.NextTokenIssuer{Secret: NextIssuerSecret, SecretThumbprint: nt, Effective: timestamppb.New(eff)}
	fe1.NextTokenIssuer, fe2.NextTokenIssuer = stage, stage
	sec := append(w.Secrets(t), w.NextSecrets(t)...)
	wantItemState(t, verify(t, fe02, fe2), reconcile.ItemNextIssuer, pb.ItemState_ITEM_STATE_PENDING)
	if ops := plan(t, fe02, fe2, sec); len(ops) != 0 {
		t.Errorf("fe02 plan = %s; the primary stages for the pool", reconcile.Redacted(ops))
	}
	ops := plan(t, fe01, fe1, sec)
	want := "Import-CsCertificate -Identity 'Global' -Type OAuthTokenIssuer -Path <redacted> -Password <redacted> -Roll -EffectiveDate ([datetime]'" + eff.Format(time.RFC3339) + "')"
	if st := opsOf(ops, reconcile.KindStageNextIssuer); len(ops) != 1 || len(st) != 1 || st[0].Command() != want {
		t.Errorf("fe01 plan = %s, want %s", reconcile.Redacted(ops), want)
	}
	noErrors(t, apply(t, fe01, fe1, sec))
	for b, cfg := range map[reconcile.Backend]*pb.HostConfig{fe01: fe1, fe02: fe2} {
		r := verify(t, b, cfg)
		allOK(t, r)
		if o := r.GetOauth(); o.GetIssuerThumbprint() != old || o.GetNextIssuerThumbprint() != nt || !o.GetNextIssuerEffective().AsTime().Equal(eff) {
			t.Errorf("%s oauth = %v, want current %s and next %s at %s", cfg.GetHost(), o, old, nt, eff)
		}
	}
	if ops := plan(t, fe01, fe1, sec); len(ops) != 0 {
		t.Errorf("plan once staged = %s", reconcile.Redacted(ops))
	}

	// The pool's metadata now publishes both: an Exchange organization that
	// trusts it refreshes with -RefreshAuthMetadata on its primary.
	next, _ := nextCert(t, w)
	before, err := certs.Generate(certs.Template{CommonName: Realm})
	if err != nil {
		t.Fatal(err)
	}
	w.Publish(t, LyncURL, []*x509.Certificate{before.Cert})
	ex := ExchangeConfig("ex01.contoso.com", true)
	ex.Partners = ex.Partners[:1]
	ex01 := w.Host(t, "ex01.contoso.com", pb.Product_PRODUCT_EXCHANGE, "2019")
	noErrors(t, apply(t, ex01, ex, nil))
	pt := certs.Thumbprint(before.Cert)
	if c := cachedOf(t, verify(t, ex01, ex), LyncURL); !slices.Equal(c, []string{pt}) {
		t.Errorf("ex01 caches %v for the pool, want %s", c, pt)
	}
	w.Publish(t, LyncURL, []*x509.Certificate{before.Cert, next})
	ex.Partners[0].ExpectedSigningThumbprints = []string{pt, nt}
	// Nothing changes the cached copy but a refresh.
	if c := cachedOf(t, verify(t, ex01, ex), LyncURL); !slices.Equal(c, []string{pt}) {
		t.Errorf("ex01 caches %v for the pool before refreshing, want %s", c, pt)
	}
	ops = plan(t, ex01, ex, nil)
	if rf := opsOf(ops, reconcile.KindRefreshPartnerMetadata); len(rf) != 1 || !strings.HasSuffix(rf[0].Command(), "' -RefreshAuthMetadata -Confirm:$false") {
		t.Errorf("ex01 refresh plan = %s", reconcile.Redacted(ops))
	}
	noErrors(t, apply(t, ex01, ex, nil))
	r := verify(t, ex01, ex)
	allOK(t, r)
	if c := cachedOf(t, r, LyncURL); !hasAll(c, pt, nt) {
		t.Errorf("ex01 caches %v for the pool after refreshing, want %s and %s", c, pt, nt)
	}
}

// sharePointRotation queues the farm's next STS signing certificate
// (-QueueSigningCertificate), then makes it the signing one
// (-ImportSigningCertificate) and, as Microsoft's "Replace the STS
// certificate" procedure does on every server of the farm, resets IIS and
// restarts the SharePoint Timer Service: the primary right after its
// import, the other server once it sees the new certificate. A farm keeps
// no previous certificate to retire.
func sharePointRotation(t *testing.T, w RotationWorld) {
	farm := []string{"sp01.contoso.com", "sp02.contoso.com"}
	cfg, cfg2 := SharePointConfig("sp01.contoso.com"), SharePointConfig("sp02.contoso.com")
	cfg2.Primary = false
	cfg.DeploymentHosts, cfg2.DeploymentHosts = farm, farm
	sp01 := w.Host(t, "sp01.contoso.com", pb.Product_PRODUCT_SHAREPOINT, "2019")
	sp02 := w.Host(t, "sp02.contoso.com", pb.Product_PRODUCT_SHAREPOINT, "2019")
	noErrors(t, apply(t, sp01, cfg, nil))
	noErrors(t, apply(t, sp02, cfg2, nil))
	old := read(t, sp01, cfg).Issuer.Current
	_, nt := nextCert(t, w)
	sec := w.NextSecrets(t)
	cfg.NextTokenIssuer = &pb.NextTokenIssuer{Secret: NextIssuerSecret, SecretThumbprint: nt}
	cfg2.NextTokenIssuer = cfg.NextTokenIssuer
	wantItemState(t, verify(t, sp01, cfg), reconcile.ItemNextIssuer, pb.ItemState_ITEM_STATE_FAILED)
	ops := plan(t, sp01, cfg, sec)
	if st := opsOf(ops, reconcile.KindStageNextIssuer); len(ops) != 1 || len(st) != 1 || st[0].Command() != "Set-SPSecurityTokenServiceConfig -QueueSigningCertificate <redacted> -Confirm:$false" {
		t.Errorf("stage plan = %s", reconcile.Redacted(ops))
	}
	noErrors(t, apply(t, sp01, cfg, sec))
	r := verify(t, sp01, cfg)
	allOK(t, r)
	if o := r.GetOauth(); o.GetIssuerThumbprint() != old || o.GetNextIssuerThumbprint() != nt {
		t.Errorf("oauth once queued = %v, want current %s and next %s", o, old, nt)
	}

	cfg.NextTokenIssuer, cfg2.NextTokenIssuer = nil, nil
	issuer := &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: NextIssuerSecret}, SecretThumbprint: nt}
	cfg.TokenIssuer, cfg2.TokenIssuer = issuer, issuer
	// sp02 waits for the primary, restarting nothing for nothing.
	if ops := plan(t, sp02, cfg2, sec); len(ops) != 0 {
		t.Errorf("sp02 activation plan before the primary = %s", reconcile.Redacted(ops))
	}
	wantItemState(t, verify(t, sp02, cfg2), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_PENDING)
	ops = plan(t, sp01, cfg, sec)
	if act := opsOf(ops, reconcile.KindActivateNextIssuer); len(ops) != 3 || len(act) != 1 || act[0].Command() != "Set-SPSecurityTokenServiceConfig -ImportSigningCertificate <redacted> -Confirm:$false" ||
		ops[1].Command() != "iisreset -noforce" || ops[2].Command() != "Restart-Service -Name 'SPTimerV4'" || !ops[1].Disruptive || !ops[2].Disruptive {
		t.Errorf("activation plan = %s, want the import, then a disruptive IIS reset and Timer Service restart", reconcile.Redacted(ops))
	}
	noErrors(t, apply(t, sp01, cfg, sec))
	// sp02's processes still sign with the old certificate: it restarts
	// its own (disruptive, host scope: the rollout paces the servers).
	ops = plan(t, sp02, cfg2, sec)
	if len(ops) != 2 || len(opsOf(ops, reconcile.KindResetIIS)) != 1 || len(opsOf(ops, reconcile.KindRestartTimer)) != 1 ||
		slices.ContainsFunc(ops, func(o reconcile.Op) bool { return o.PrimaryOnly || !o.Disruptive }) {
		t.Errorf("sp02 plan after the import = %s, want its own IIS reset and Timer Service restart", reconcile.Redacted(ops))
	}
	wantItemState(t, verify(t, sp02, cfg2), reconcile.ItemIISReset, pb.ItemState_ITEM_STATE_FAILED)
	noErrors(t, apply(t, sp02, cfg2, sec))
	cfg.RetirePreviousIssuer, cfg2.RetirePreviousIssuer = true, true
	for b, c := range map[reconcile.Backend]*pb.HostConfig{sp01: cfg, sp02: cfg2} {
		r = verify(t, b, c)
		allOK(t, r)
		if o := r.GetOauth(); o.GetIssuerThumbprint() != nt || o.GetNextIssuerThumbprint() != "" || o.GetPreviousIssuerThumbprint() != "" {
			t.Errorf("%s oauth once activated = %v, want current %s alone", c.GetHost(), o, nt)
		}
		if ops := plan(t, b, c, sec); len(ops) != 0 {
			t.Errorf("%s plan once activated = %s", c.GetHost(), reconcile.Redacted(ops))
		}
	}
}
