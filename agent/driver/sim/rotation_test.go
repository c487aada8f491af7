package sim

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/s2stoken"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

const (
	nextSecret   = "oauth-2027"
	nextPassword = "N3xt-Horse-Battery"
	fabrikamURL  = "https://autodiscover.fabrikam.com/autodiscover/metadata/json/1"
)

// clock is a settable clock shared by every host of a test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// nextIssuer is a new token-issuer certificate for the pool, valid from
// now, as a delivered secret.
func nextIssuer(t *testing.T, now time.Time) (*certs.Bundle, *pb.SecretMaterial) {
	t.Helper()
	b, err := certs.Generate(certs.Template{CommonName: realm, DNSNames: []string{realm, "fabrikam.com"}, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(2, 0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	pfx, err := certs.EncodePFX(b, nextPassword)
	if err != nil {
		t.Fatal(err)
	}
	return b, &pb.SecretMaterial{Name: nextSecret, Pfx: pfx, Password: nextPassword, Thumbprint: certs.Thumbprint(b.Cert)}
}

// probeTally counts the probes sent from some hosts to others, by target.
type probeTally struct {
	sent, failed map[string]int
	reasons      map[string][]string
}

func newTally() *probeTally {
	return &probeTally{sent: map[string]int{}, failed: map[string]int{}, reasons: map[string][]string{}}
}

func (pt *probeTally) run(ctx context.Context, from map[*Sim]*pb.HostConfig) {
	for s, cfg := range from {
		for _, p := range s.Probe(ctx, cfg) {
			pt.sent[p.GetTargetHost()]++
			if !p.GetOk() {
				pt.failed[p.GetTargetHost()]++
				pt.reasons[p.GetTargetHost()] = append(pt.reasons[p.GetTargetHost()], p.GetReason()+": "+p.GetDetail())
			}
		}
	}
}

func selfCheck(t *testing.T, checks []*pb.MetadataCheck, host string) *pb.MetadataCheck {
	t.Helper()
	for _, c := range checks {
		if c.GetPartner() == "" && strings.HasPrefix(c.GetUrl(), "https://"+host+"/") {
			return c
		}
	}
	t.Fatalf("no self check of %s in %v", host, checks)
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

// TestLyncRotationOverHTTPS rotates a Lync pool's token-issuer certificate
// through the four phases while its Front Ends keep probing two Exchange
// organizations that trust it: "exchange" refreshes its cached copy of the
// pool's metadata during the rotation, "fabrikam" never does. Every probe
// to the refreshed organization is accepted across the activation; the
// other one rejects the tokens signed with the new key as soon as the pool
// rolls to it.
func TestLyncRotationOverHTTPS(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	clk := &clock{t: time.Now()}
	w.now = clk.now
	lnFE1 := w.listen("fe01.contoso.com", "pool01.contoso.com")
	lnFE2 := w.listen("fe02.contoso.com")
	lnEX1 := w.listen("ex01.contoso.com", "autodiscover.contoso.com")
	lnEX2 := w.listen("ex02.contoso.com")
	lnFAB := w.listen("ex11.fabrikam.com", "autodiscover.fabrikam.com")
	fe01 := w.host(lnFE1, pb.Product_PRODUCT_LYNC, "2015", "fe01.contoso.com", "pool01.contoso.com")
	fe02 := w.host(lnFE2, pb.Product_PRODUCT_LYNC, "2015", "fe02.contoso.com")
	ex01 := w.host(lnEX1, pb.Product_PRODUCT_EXCHANGE, "2019", "ex01.contoso.com", "autodiscover.contoso.com")
	ex02 := w.host(lnEX2, pb.Product_PRODUCT_EXCHANGE, "2019", "ex02.contoso.com")
	ex11 := w.host(lnFAB, pb.Product_PRODUCT_EXCHANGE, "2019", "ex11.fabrikam.com", "autodiscover.fabrikam.com")
	ctx := context.Background()

	cfgFE1, cfgEX1 := trustConfigs()
	cfgFE1.DeploymentHosts = []string{"fe01.contoso.com", "fe02.contoso.com"}
	cfgFE1.TrustedBy = []*pb.TrustTarget{
		{Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ServiceName: products.ExchangeID, Hosts: []string{"ex01.contoso.com", "ex02.contoso.com"}, MetadataUrl: exchangeURL},
		{Deployment: "fabrikam", Product: pb.Product_PRODUCT_EXCHANGE, ServiceName: products.ExchangeID, Hosts: []string{"ex11.fabrikam.com"}, MetadataUrl: fabrikamURL},
	}
	cfgEX1.DeploymentHosts = []string{"ex01.contoso.com", "ex02.contoso.com"}
	cfgEX1.TrustedBy[0].Hosts = []string{"fe01.contoso.com", "fe02.contoso.com"}
	cfgFAB := proto.Clone(cfgEX1).(*pb.HostConfig)
	cfgFAB.Host, cfgFAB.Deployment, cfgFAB.DeploymentHosts = "ex11.fabrikam.com", "fabrikam", []string{"ex11.fabrikam.com"}
	cfgFAB.MetadataUrl, cfgFAB.Endpoint, cfgFAB.TrustedBy = fabrikamURL, "autodiscover.fabrikam.com", nil
	// The pool trusts only the contoso organization; fabrikam only receives.
	pool := func() (*pb.HostConfig, *pb.HostConfig) {
		c2 := proto.Clone(cfgFE1).(*pb.HostConfig)
		c2.Host, c2.Primary = "fe02.contoso.com", false
		return cfgFE1, c2
	}
	org := func() (*pb.HostConfig, *pb.HostConfig) {
		c2 := proto.Clone(cfgEX1).(*pb.HostConfig)
		c2.Host, c2.Primary = "ex02.contoso.com", false
		return cfgEX1, c2
	}
	applyAll := func(sec []*pb.SecretMaterial) {
		t.Helper()
		f1, f2 := pool()
		e1, e2 := org()
		noErrors(t, fe01.Apply(ctx, f1, sec))
		noErrors(t, fe02.Apply(ctx, f2, sec))
		noErrors(t, ex01.Apply(ctx, e1, nil))
		noErrors(t, ex02.Apply(ctx, e2, nil))
		noErrors(t, ex11.Apply(ctx, cfgFAB, nil))
	}
	tally := newTally()
	probe := func() {
		f1, f2 := pool()
		tally.run(ctx, map[*Sim]*pb.HostConfig{fe01: f1, fe02: f2})
	}

	// The estate before: the pool publishes first, then the organizations
	// register it; everything verifies and every probe passes.
	_ = fe01.Apply(ctx, cfgFE1, secrets(t)) // microsoft.exchange fails: Exchange publishes nothing yet
	noErrors(t, ex01.Apply(ctx, cfgEX1, nil))
	applyAll(secrets(t))
	old := certs.Thumbprint(fix(t).issuer.Cert)
	newB, newSecret := nextIssuer(t, clk.now())
	nw := certs.Thumbprint(newB.Cert)
	both := append(secrets(t), newSecret)
	probe()
	if n := tally.failed["ex01.contoso.com"] + tally.failed["ex02.contoso.com"] + tally.failed["ex11.fabrikam.com"]; n != 0 {
		t.Fatalf("before the rotation %d probes failed: %v", n, tally.reasons)
	}

	// 1. Stage: the primary imports NEW with -Roll -EffectiveDate once; the
	// CMS replicates it; every Front End reports it and publishes both keys.
	eff := clk.now().Add(time.Hour)
	cfgFE1.NextTokenIssuer = &pb.NextTokenIssuer{Secret: nextSecret, SecretThumbprint: nw, Effective: timestamppb.New(eff)}
	f1, f2 := pool()
	res := fe01.ApplyPlan(ctx, f1, both, false)
	noErrors(t, res.Errors)
	if i := slices.IndexFunc(res.Ops, func(o reconcile.Op) bool { return o.Kind == reconcile.KindStageNextIssuer }); i < 0 ||
		res.Ops[i].Command() != fmt.Sprintf("Import-CsCertificate -Identity 'Global' -Type OAuthTokenIssuer -Path <redacted> -Password <redacted> -Roll -EffectiveDate ([datetime]'%s')", eff.UTC().Format(time.RFC3339)) {
		t.Errorf("stage plan on fe01 = %s", reconcile.Redacted(res.Ops))
	}
	if res := fe02.ApplyPlan(ctx, f2, both, true); len(res.Ops) != 0 {
		t.Errorf("fe02 plans %s; the CMS replicates the staged certificate", reconcile.Redacted(res.Ops))
	}
	for s, cfg := range map[*Sim]*pb.HostConfig{fe01: f1, fe02: f2} {
		noErrors(t, s.Apply(ctx, cfg, both))
		r := verify(t, s, cfg)
		allOK(t, r)
		if o := r.GetOauth(); o.GetIssuerThumbprint() != old || o.GetNextIssuerThumbprint() != nw || !o.GetNextIssuerEffective().AsTime().Equal(eff.Truncate(time.Second)) && !o.GetNextIssuerEffective().AsTime().Equal(eff) {
			t.Errorf("%s oauth = %v, want current %s, next %s at %s", cfg.GetHost(), o, old, nw, eff)
		}
		if c := selfCheck(t, s.CheckMetadata(ctx, cfg), cfg.GetHost()); !c.GetOk() || !hasAll(c.GetThumbprints(), old, nw) || c.GetDeployment() != "pool01" {
			t.Errorf("%s self check = %v, want both %s and %s published", cfg.GetHost(), c, old, nw)
		}
	}
	probe()

	// 2. Refresh: the contoso organization must cache both keys; fabrikam
	// is left alone. A partner that does not publish an expected key fails
	// its item, naming the partner, the URL and what it publishes.
	cfgEX1.Partners[0].ExpectedSigningThumbprints = []string{old, nw}
	e1, e2 := org()
	if r := verify(t, ex02, e2); wantState(t, r, driver.PartnerItem("LyncEnterprise-pool01")) != pb.ItemState_ITEM_STATE_PENDING {
		t.Errorf("ex02 before the primary refreshed: %v, want the partner PENDING", r.GetItems())
	}
	res = ex01.ApplyPlan(ctx, e1, nil, false)
	noErrors(t, res.Errors)
	if !slices.ContainsFunc(res.Ops, func(o reconcile.Op) bool {
		return o.Kind == reconcile.KindRefreshPartnerMetadata && strings.HasPrefix(o.Command(), "Set-PartnerApplication -Identity 'LyncEnterprise-") && strings.HasSuffix(o.Command(), "' -RefreshAuthMetadata -Confirm:$false")
	}) {
		t.Errorf("refresh plan on ex01 = %s", reconcile.Redacted(res.Ops))
	}
	for s, cfg := range map[*Sim]*pb.HostConfig{ex01: e1, ex02: e2} {
		noErrors(t, s.Apply(ctx, cfg, nil))
		r := verify(t, s, cfg)
		allOK(t, r)
		if p := r.GetPartners(); len(p) != 1 || !hasAll(p[0].GetCachedThumbprints(), old, nw) {
			t.Errorf("%s partners = %v, want both keys cached", cfg.GetHost(), p)
		}
	}
	bogus := strings.Repeat("AB", 20)
	bad := proto.Clone(cfgFAB).(*pb.HostConfig)
	bad.Partners[0].ExpectedSigningThumbprints = []string{old, bogus}
	errs := ex11.Apply(ctx, bad, nil)
	msg := itemErr(errs, driver.PartnerItem("LyncEnterprise-pool01"))
	if len(errs) != 1 || !strings.Contains(msg, "LyncEnterprise-") || !strings.Contains(msg, lyncURL) || !strings.Contains(msg, old) || !strings.Contains(msg, nw) ||
		!strings.Contains(msg, "expected "+bogus+" is not published") {
		t.Errorf("refresh of a key nobody publishes: %v", errs)
	}
	wantItem(t, verify(t, ex11, bad), driver.PartnerItem("LyncEnterprise-pool01"), pb.ItemState_ITEM_STATE_FAILED, bogus)
	// That refresh was fabrikam's only one: put its cache back to the old key,
	// as an organization that never refreshed has it.
	if err := setCached(w.shared, "fabrikam", fix(t).issuer.Cert.Raw); err != nil {
		t.Fatal(err)
	}
	probe()

	// 3. Activate: the pool's token issuer becomes NEW. Lync makes it current
	// at the EffectiveDate by itself: until then the item waits and the old
	// key signs.
	cfgFE1.NextTokenIssuer = nil
	cfgFE1.TokenIssuer = &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: nextSecret}, SecretThumbprint: nw}
	f1, f2 = pool()
	sec := []*pb.SecretMaterial{newSecret}
	res = fe01.ApplyPlan(ctx, f1, sec, false)
	noErrors(t, res.Errors)
	if slices.ContainsFunc(res.Ops, func(o reconcile.Op) bool { return o.Item == driver.ItemIssuerCertificate }) {
		t.Errorf("activation before the EffectiveDate plans %s; Lync rolls by itself", reconcile.Redacted(res.Ops))
	}
	wantItem(t, verify(t, fe01, f1), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_PENDING, "waits for EffectiveDate "+eff.UTC().Format(time.RFC3339))
	probe()
	if n := tally.failed["ex11.fabrikam.com"]; n != 0 {
		t.Fatalf("fabrikam refused %d probes signed with the old key: %v", n, tally.reasons)
	}
	clk.add(time.Hour + time.Minute)
	for s, cfg := range map[*Sim]*pb.HostConfig{fe01: f1, fe02: f2} {
		for _, p := range s.Probe(ctx, cfg) {
			if p.GetIssuerThumbprint() != nw {
				t.Errorf("probe from %s to %s signed with %s, want %s after the EffectiveDate", cfg.GetHost(), p.GetTargetHost(), p.GetIssuerThumbprint(), nw)
			}
		}
	}
	probe()
	for s, cfg := range map[*Sim]*pb.HostConfig{fe01: f1, fe02: f2} {
		noErrors(t, s.Apply(ctx, cfg, sec))
		r := verify(t, s, cfg)
		allOK(t, r)
		if o := r.GetOauth(); o.GetIssuerThumbprint() != nw || o.GetNextIssuerThumbprint() != "" || o.GetPreviousIssuerThumbprint() != old {
			t.Errorf("%s oauth after the roll = %v, want current %s, previous %s", cfg.GetHost(), o, nw, old)
		}
	}
	probe()

	// 4. Retire: the previous certificate goes; partners expect NEW only.
	cfgFE1.RetirePreviousIssuer = true
	cfgEX1.Partners[0].ExpectedSigningThumbprints = []string{nw}
	f1, f2 = pool()
	res = fe01.ApplyPlan(ctx, f1, sec, false)
	noErrors(t, res.Errors)
	if !slices.ContainsFunc(res.Ops, func(o reconcile.Op) bool {
		return o.Command() == "Remove-CsCertificate -Identity 'Global' -Type OAuthTokenIssuer -Previous -Confirm:$false"
	}) {
		t.Errorf("retire plan on fe01 = %s", reconcile.Redacted(res.Ops))
	}
	applyAll(sec)
	for s, cfg := range map[*Sim]*pb.HostConfig{fe01: f1, fe02: f2} {
		r := verify(t, s, cfg)
		allOK(t, r)
		if o := r.GetOauth(); o.GetPreviousIssuerThumbprint() != "" {
			t.Errorf("%s still reports previous %s", cfg.GetHost(), o.GetPreviousIssuerThumbprint())
		}
		if c := selfCheck(t, s.CheckMetadata(ctx, cfg), cfg.GetHost()); !slices.Equal(c.GetThumbprints(), []string{nw}) {
			t.Errorf("%s publishes %v after retiring, want %s only", cfg.GetHost(), c.GetThumbprints(), nw)
		}
	}
	probe()

	// The refreshed organization accepted every probe; fabrikam, which
	// kept its old copy, refused those signed with the new key.
	for _, h := range []string{"ex01.contoso.com", "ex02.contoso.com"} {
		if tally.sent[h] < 10 || tally.failed[h] != 0 {
			t.Errorf("probes to %s: %d sent, %d failed (%v); want 0 failed", h, tally.sent[h], tally.failed[h], tally.reasons[h])
		}
	}
	if f := tally.failed["ex11.fabrikam.com"]; f == 0 || f != 6 {
		t.Errorf("probes to ex11 (not refreshed): %d failed of %d, want the 6 signed with the new key refused", f, tally.sent["ex11.fabrikam.com"])
	}
	for _, r := range tally.reasons["ex11.fabrikam.com"] {
		if !strings.HasPrefix(r, string(s2stoken.ReasonUnknownKey)+":") {
			t.Errorf("ex11 refused a probe with %q, want %s", r, s2stoken.ReasonUnknownKey)
		}
	}
}

func wantState(t *testing.T, r *pb.StatusReport, name string) pb.ItemState {
	t.Helper()
	return item(t, r, name).GetState()
}

// setCached replaces the cached certificates of every partner of an
// Exchange organization, behind s2strust's back.
func setCached(shared, deployment string, der ...[]byte) error {
	ds, old, _, err := openStore(shared, deployment)
	if err != nil {
		return err
	}
	for _, a := range ds.Exchange.PartnerApplications {
		a.CachedCertificates = der
	}
	_, err = writeStore(shared, ds, old)
	return err
}

// TestExchangeRotationOverHTTPS rotates an Exchange organization's auth
// certificate (two servers) while its servers keep probing a Lync pool
// that refreshes its copy of the organization's metadata: each server
// imports the next certificate itself, the primary stages and publishes
// it, and each server signs with the new key only after its own IIS reset
// (the disruptive step a rollout paces). The pool accepts every probe.
func TestExchangeRotationOverHTTPS(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	lnFE := w.listen("fe01.contoso.com", "pool01.contoso.com")
	lnEX1 := w.listen("ex01.contoso.com", "autodiscover.contoso.com")
	lnEX2 := w.listen("ex02.contoso.com")
	fe01 := w.host(lnFE, pb.Product_PRODUCT_LYNC, "2015", "fe01.contoso.com", "pool01.contoso.com")
	ex01 := w.host(lnEX1, pb.Product_PRODUCT_EXCHANGE, "2019", "ex01.contoso.com", "autodiscover.contoso.com")
	ex02 := w.host(lnEX2, pb.Product_PRODUCT_EXCHANGE, "2019", "ex02.contoso.com")
	ctx := context.Background()
	cfgFE, ex1 := trustConfigs()
	ex1.DeploymentHosts = []string{"ex01.contoso.com", "ex02.contoso.com"}
	cfgFE.TrustedBy[0].Hosts = ex1.DeploymentHosts
	org := func() (*pb.HostConfig, *pb.HostConfig) {
		c2 := proto.Clone(ex1).(*pb.HostConfig)
		c2.Host, c2.Primary = "ex02.contoso.com", false
		return ex1, c2
	}
	_ = fe01.Apply(ctx, cfgFE, secrets(t)) // microsoft.exchange fails: Exchange publishes nothing yet
	e1, e2 := org()
	noErrors(t, ex01.Apply(ctx, e1, nil))
	noErrors(t, ex02.Apply(ctx, e2, nil))
	noErrors(t, fe01.Apply(ctx, cfgFE, secrets(t)))
	old := verify(t, ex01, e1).GetOauth().GetIssuerThumbprint()
	newB, newSecret := nextIssuer(t, time.Now())
	nw := certs.Thumbprint(newB.Cert)
	sec := []*pb.SecretMaterial{newSecret}
	tally := newTally()
	probe := func() map[string]string {
		e1, e2 := org()
		signed := map[string]string{}
		for s, cfg := range map[*Sim]*pb.HostConfig{ex01: e1, ex02: e2} {
			for _, p := range s.Probe(ctx, cfg) {
				tally.sent[p.GetTargetHost()]++
				if !p.GetOk() {
					tally.failed[p.GetTargetHost()]++
					tally.reasons[p.GetTargetHost()] = append(tally.reasons[p.GetTargetHost()], cfg.GetHost()+": "+p.GetReason()+": "+p.GetDetail())
				}
				signed[cfg.GetHost()] = p.GetIssuerThumbprint()
			}
		}
		return signed
	}
	probe()

	// 1. Stage: ex02 imports its own copy; the primary imports and stages.
	stage := &pb.NextTokenIssuer{Secret: nextSecret, SecretThumbprint: nw, Effective: timestamppb.New(time.Now().Add(48 * time.Hour))}
	ex1.NextTokenIssuer = stage
	e1, e2 = org()
	noErrors(t, ex02.Apply(ctx, e2, sec))
	wantItem(t, verify(t, ex02, e2), reconcile.ItemNextIssuer, pb.ItemState_ITEM_STATE_PENDING, "AuthConfig NextCertificateThumbprint")
	noErrors(t, ex01.Apply(ctx, e1, sec))
	noErrors(t, ex02.Apply(ctx, e2, sec))
	for s, cfg := range map[*Sim]*pb.HostConfig{ex01: e1, ex02: e2} {
		r := verify(t, s, cfg)
		allOK(t, r)
		if r.GetOauth().GetNextIssuerThumbprint() != nw {
			t.Errorf("%s oauth = %v, want next %s", cfg.GetHost(), r.GetOauth(), nw)
		}
		if c := selfCheck(t, s.CheckMetadata(ctx, cfg), cfg.GetHost()); !hasAll(c.GetThumbprints(), old, nw) {
			t.Errorf("%s publishes %v, want %s and %s", cfg.GetHost(), c.GetThumbprints(), old, nw)
		}
	}
	probe()

	// 2. Refresh: the pool caches both.
	cfgFE.Partners[0].ExpectedSigningThumbprints = []string{old, nw}
	noErrors(t, fe01.Apply(ctx, cfgFE, secrets(t)))
	r := verify(t, fe01, cfgFE)
	allOK(t, r)
	if p := r.GetPartners(); len(p) != 1 || !hasAll(p[0].GetCachedThumbprints(), old, nw) {
		t.Errorf("fe01 partners = %v, want both keys cached", p)
	}
	probe()

	// 3. Activate: the primary publishes and resets its IIS; ex02 still
	// signs with the old key until its own reset.
	ex1.NextTokenIssuer = nil
	ex1.TokenIssuer = &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: nextSecret}, SecretThumbprint: nw}
	e1, e2 = org()
	res := ex01.ApplyPlan(ctx, e1, sec, false)
	noErrors(t, res.Errors)
	if got := commands(res.Ops); !slices.Equal(got, []string{"Set-AuthConfig -PublishCertificate -Confirm:$false", "iisreset -noforce"}) {
		t.Errorf("ex01 activation = %q", got)
	}
	if signed := probe(); signed["ex01.contoso.com"] != nw || signed["ex02.contoso.com"] != old {
		t.Errorf("after the publish probes are signed with %v, want ex01 %s and ex02 (not reset) %s", signed, nw, old)
	}
	res = ex02.ApplyPlan(ctx, e2, sec, true)
	if len(res.Ops) != 1 || res.Ops[0].Kind != reconcile.KindResetIIS || !res.Ops[0].Disruptive || res.Ops[0].PrimaryOnly {
		t.Errorf("ex02 plan after the publish = %s, want its own disruptive IIS reset", reconcile.Redacted(res.Ops))
	}
	wantItem(t, verify(t, ex02, e2), reconcile.ItemIISReset, pb.ItemState_ITEM_STATE_FAILED, "started with auth certificate "+old)
	noErrors(t, ex02.Apply(ctx, e2, sec))
	if signed := probe(); signed["ex01.contoso.com"] != nw || signed["ex02.contoso.com"] != nw {
		t.Errorf("after both resets probes are signed with %v, want %s", signed, nw)
	}
	for s, cfg := range map[*Sim]*pb.HostConfig{ex01: e1, ex02: e2} {
		r := verify(t, s, cfg)
		allOK(t, r)
		if o := r.GetOauth(); o.GetIssuerThumbprint() != nw || o.GetPreviousIssuerThumbprint() != old {
			t.Errorf("%s oauth = %v", cfg.GetHost(), o)
		}
	}

	// 4. Retire.
	ex1.RetirePreviousIssuer = true
	cfgFE.Partners[0].ExpectedSigningThumbprints = []string{nw}
	e1, e2 = org()
	noErrors(t, ex01.Apply(ctx, e1, sec))
	noErrors(t, ex02.Apply(ctx, e2, sec))
	noErrors(t, fe01.Apply(ctx, cfgFE, secrets(t)))
	for s, cfg := range map[*Sim]*pb.HostConfig{ex01: e1, ex02: e2} {
		r := verify(t, s, cfg)
		allOK(t, r)
		if o := r.GetOauth(); o.GetPreviousIssuerThumbprint() != "" {
			t.Errorf("%s still reports previous %s", cfg.GetHost(), o.GetPreviousIssuerThumbprint())
		}
		if c := selfCheck(t, s.CheckMetadata(ctx, cfg), cfg.GetHost()); !slices.Equal(c.GetThumbprints(), []string{nw}) {
			t.Errorf("%s publishes %v after retiring, want %s only", cfg.GetHost(), c.GetThumbprints(), nw)
		}
	}
	probe()
	if h := "fe01.contoso.com"; tally.sent[h] < 10 || tally.failed[h] != 0 {
		t.Errorf("probes to fe01: %d sent, %d failed (%v); want 0 failed", tally.sent[h], tally.failed[h], tally.reasons[h])
	}
}

func commands(ops []reconcile.Op) []string {
	out := make([]string, len(ops))
	for i, o := range ops {
		out[i] = o.Command()
	}
	return out
}

// TestSharePointSigningFollowsRestarts: after the primary's
// -ImportSigningCertificate, a farm server whose IIS app pools and Timer
// Service started with the old STS certificate signs with it until its
// own IIS reset and Timer Service restart; the primary, which restarts
// right after its import, signs with the new one at once.
func TestSharePointSigningFollowsRestarts(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ln1, ln2 := w.listen("sp01.contoso.com", "sp.contoso.com"), w.listen("sp02.contoso.com")
	sp01 := w.host(ln1, pb.Product_PRODUCT_SHAREPOINT, "2019", "sp01.contoso.com", "sp.contoso.com")
	sp02 := w.host(ln2, pb.Product_PRODUCT_SHAREPOINT, "2019", "sp02.contoso.com")
	ctx := context.Background()
	farm := func() (*pb.HostConfig, *pb.HostConfig) {
		c1 := &pb.HostConfig{Host: "sp01.contoso.com", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ProductVersion: "2019",
			DeploymentHosts: []string{"sp01.contoso.com", "sp02.contoso.com"}, ServiceName: products.SharePointID,
			MetadataUrl: "https://sp.contoso.com/_layouts/15/metadata/json/1", Endpoint: "https://sp.contoso.com", Primary: true, DefaultSipDomain: realm}
		c2 := proto.Clone(c1).(*pb.HostConfig)
		c2.Host, c2.Primary = "sp02.contoso.com", false
		return c1, c2
	}
	signer := func(s *Sim) string {
		t.Helper()
		sc, err := s.signing()
		if err != nil {
			t.Fatal(err)
		}
		return sc.thumbprint
	}
	c1, c2 := farm()
	noErrors(t, sp01.Apply(ctx, c1, nil))
	noErrors(t, sp02.Apply(ctx, c2, nil))
	old := verify(t, sp01, c1).GetOauth().GetIssuerThumbprint()
	if old == "" || signer(sp01) != old || signer(sp02) != old {
		t.Fatalf("before the rotation: issuer %q, sp01 signs with %s, sp02 with %s", old, signer(sp01), signer(sp02))
	}
	newB, newSecret := nextIssuer(t, time.Now())
	nw := certs.Thumbprint(newB.Cert)
	sec := []*pb.SecretMaterial{newSecret}
	c1.NextTokenIssuer = &pb.NextTokenIssuer{Secret: nextSecret, SecretThumbprint: nw}
	noErrors(t, sp01.Apply(ctx, c1, sec))

	c1, c2 = farm()
	issuer := &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: nextSecret}, SecretThumbprint: nw}
	c1.TokenIssuer, c2.TokenIssuer = issuer, issuer
	res := sp01.ApplyPlan(ctx, c1, sec, false)
	noErrors(t, res.Errors)
	if got, want := commands(res.Ops), []string{"Set-SPSecurityTokenServiceConfig -ImportSigningCertificate <redacted> -Confirm:$false", "iisreset -noforce", "Restart-Service -Name 'SPTimerV4'"}; !slices.Equal(got, want) {
		t.Errorf("sp01 activation = %q, want %q", got, want)
	}
	if a, b := signer(sp01), signer(sp02); a != nw || b != old {
		t.Errorf("after the import sp01 signs with %s and sp02 with %s, want %s and (not restarted) %s", a, b, nw, old)
	}
	wantItem(t, verify(t, sp02, c2), reconcile.ItemIISReset, pb.ItemState_ITEM_STATE_FAILED, "started with STS signing certificate "+old)
	res = sp02.ApplyPlan(ctx, c2, sec, false)
	noErrors(t, res.Errors)
	if got, want := commands(res.Ops), []string{"iisreset -noforce", "Restart-Service -Name 'SPTimerV4'"}; !slices.Equal(got, want) {
		t.Errorf("sp02 plan after the import = %q, want %q", got, want)
	}
	if b := signer(sp02); b != nw {
		t.Errorf("after its restarts sp02 signs with %s, want %s", b, nw)
	}
	allOK(t, verify(t, sp02, c2))
	allOK(t, verify(t, sp01, c1))
}
