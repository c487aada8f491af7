package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// rotationCerts are the certificates of the rotation tests: the current
// one, the next one, and a next one that breaks the rules (expired).
type rotationCerts struct {
	old, next, expired *certs.Bundle
	nextPFX, badPFX    []byte
}

var rotationFixtures = sync.OnceValues(func() (*rotationCerts, error) {
	now := time.Now()
	gen := func(nb, na time.Time) (*certs.Bundle, error) {
		return certs.Generate(certs.Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com"}, NotBefore: nb, NotAfter: na, KeyBits: 2048})
	}
	var rc rotationCerts
	var err error
	if rc.old, err = gen(now.Add(-time.Hour), now.AddDate(1, 0, 0)); err != nil {
		return nil, err
	}
	if rc.next, err = gen(now.Add(-time.Hour), now.AddDate(2, 0, 0)); err != nil {
		return nil, err
	}
	if rc.expired, err = gen(now.Add(-48*time.Hour), now.Add(-24*time.Hour)); err != nil {
		return nil, err
	}
	if rc.nextPFX, err = certs.EncodePFX(rc.next, "pw"); err != nil {
		return nil, err
	}
	if rc.badPFX, err = certs.EncodePFX(rc.expired, "pw"); err != nil {
		return nil, err
	}
	return &rc, nil
})

func rot(t *testing.T) *rotationCerts {
	t.Helper()
	rc, err := rotationFixtures()
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

const (
	oldSecret  = "issuer@v1"
	newSecret  = "issuer@v2"
	partnerURL = "https://pool01.contoso.com/metadata/json/1"
)

// rotCase is a host of a deployment of product p being rotated from the
// fixtures' old certificate to the next one.
type rotCase struct {
	t       *testing.T
	p       pb.Product
	primary bool
	now     time.Time
	eff     time.Time
}

func (rc rotCase) cfg() *pb.HostConfig {
	f := rot(rc.t)
	cfg := &pb.HostConfig{
		Host: "h1.contoso.com", Deployment: "d", Product: rc.p, Primary: rc.primary, DefaultSipDomain: "contoso.com",
		TokenIssuer: &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: oldSecret}, SecretThumbprint: certs.Thumbprint(f.old.Cert)},
	}
	if rc.p == pb.Product_PRODUCT_LYNC {
		cfg.ServiceName = products.LyncID
	}
	return cfg
}

func (rc rotCase) staging() *pb.HostConfig {
	cfg := rc.cfg()
	cfg.NextTokenIssuer = &pb.NextTokenIssuer{Secret: newSecret, SecretThumbprint: certs.Thumbprint(rot(rc.t).next.Cert), Effective: timestamppb.New(rc.eff)}
	return cfg
}

func (rc rotCase) activating() *pb.HostConfig {
	cfg := rc.cfg()
	cfg.TokenIssuer = &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: newSecret}, SecretThumbprint: certs.Thumbprint(rot(rc.t).next.Cert)}
	return cfg
}

// state is the actual state with the old certificate current and in the
// local store; local lists further certificates of the local store.
func (rc rotCase) state(local ...*certs.Bundle) *State {
	f := rot(rc.t)
	st := &State{Product: rc.p, Issuer: Issuer{Current: certs.Thumbprint(f.old.Cert)}}
	if rc.p == pb.Product_PRODUCT_LYNC {
		st.OAuth.ServiceName = products.LyncID
	}
	for _, b := range append([]*certs.Bundle{f.old}, local...) {
		st.Certificates = append(st.Certificates, Certificate{Thumbprint: certs.Thumbprint(b.Cert), Cert: b.Cert, HasPrivateKey: true})
	}
	return st
}

func commands(ops []Op) []string {
	out := make([]string, len(ops))
	for i, o := range ops {
		out[i] = o.Command()
	}
	return out
}

func statusOf(t *testing.T, items []*pb.ItemStatus, item string) *pb.ItemStatus {
	t.Helper()
	for _, it := range items {
		if it.GetItem() == item {
			return it
		}
	}
	t.Fatalf("no item %s in %v", item, items)
	return nil
}

func wantStatus(t *testing.T, items []*pb.ItemStatus, item string, state pb.ItemState, parts ...string) {
	t.Helper()
	it := statusOf(t, items, item)
	if it.GetState() != state {
		t.Errorf("item %s = %s %q, want %s", item, it.GetState(), it.GetMessage(), state)
	}
	for _, p := range parts {
		if !strings.Contains(it.GetMessage(), p) {
			t.Errorf("item %s message %q lacks %q", item, it.GetMessage(), p)
		}
	}
}

func allItemsOK(t *testing.T, items []*pb.ItemStatus) {
	t.Helper()
	for _, it := range items {
		if it.GetState() != pb.ItemState_ITEM_STATE_OK {
			t.Errorf("item %s = %s %q, want OK", it.GetItem(), it.GetState(), it.GetMessage())
		}
	}
}

func TestRotationStage(t *testing.T) {
	f := rot(t)
	now := time.Now().UTC().Truncate(time.Second)
	eff := now.Add(48 * time.Hour)
	effS := eff.Format(time.RFC3339)
	nt := certs.Thumbprint(f.next.Cert)
	for _, tc := range []struct {
		p       pb.Product
		primary bool
		// local: this host already holds the next certificate.
		local bool
		want  []string
		state pb.ItemState
	}{
		{pb.Product_PRODUCT_LYNC, true, false, []string{
			"Import-CsCertificate -Identity 'Global' -Type OAuthTokenIssuer -Path <redacted> -Password <redacted> -Roll -EffectiveDate ([datetime]'" + effS + "')"}, pb.ItemState_ITEM_STATE_FAILED},
		{pb.Product_PRODUCT_LYNC, false, false, nil, pb.ItemState_ITEM_STATE_PENDING},
		{pb.Product_PRODUCT_EXCHANGE, true, false, []string{
			"Import-ExchangeCertificate -FileData <redacted> -Password <redacted> -PrivateKeyExportable:$false",
			"Set-AuthConfig -NewCertificateThumbprint '" + nt + "' -NewCertificateEffectiveDate ([datetime]'" + effS + "') -Force",
			"iisreset -noforce"}, pb.ItemState_ITEM_STATE_FAILED},
		// Every Exchange server imports its own copy, the primary's
		// Set-AuthConfig aside.
		{pb.Product_PRODUCT_EXCHANGE, false, false, []string{
			"Import-ExchangeCertificate -FileData <redacted> -Password <redacted> -PrivateKeyExportable:$false"}, pb.ItemState_ITEM_STATE_FAILED},
		{pb.Product_PRODUCT_EXCHANGE, false, true, nil, pb.ItemState_ITEM_STATE_PENDING},
		{pb.Product_PRODUCT_SHAREPOINT, true, false, []string{
			"Set-SPSecurityTokenServiceConfig -QueueSigningCertificate <redacted> -Confirm:$false"}, pb.ItemState_ITEM_STATE_FAILED},
	} {
		t.Run(fmt.Sprintf("%s primary=%v local=%v", products.Name(tc.p), tc.primary, tc.local), func(t *testing.T) {
			rc := rotCase{t: t, p: tc.p, primary: tc.primary, now: now, eff: eff}
			var local []*certs.Bundle
			if tc.local {
				local = append(local, f.next)
			}
			in := Input{Config: rc.staging(), State: rc.state(local...), Now: now}
			if got := commands(Plan(in)); !slices.Equal(got, tc.want) {
				t.Errorf("plan = %q\nwant %q", got, tc.want)
			}
			wantStatus(t, Check(in), ItemNextIssuer, tc.state, nt)
			wantStatus(t, Check(in), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_OK)

			// Staged: the deployment records it; the next item is OK everywhere.
			st := rc.state(f.next)
			st.Issuer.Next, st.Issuer.NextEffective = nt, eff
			in = Input{Config: rc.staging(), State: st, Now: now}
			if ops := Plan(in); len(ops) != 0 {
				t.Errorf("plan once staged = %q", commands(ops))
			}
			allItemsOK(t, Check(in))
			if !slices.Contains(Items(in.Config), ItemNextIssuer) {
				t.Errorf("Items = %v, want %s", Items(in.Config), ItemNextIssuer)
			}
		})
	}
}

// TestRotationStageRedate: a staged Lync or Exchange certificate with
// another effective date is staged again with the date, not re-imported.
func TestRotationStageRedate(t *testing.T) {
	f := rot(t)
	now := time.Now().UTC().Truncate(time.Second)
	eff := now.Add(48 * time.Hour)
	nt := certs.Thumbprint(f.next.Cert)
	for p, want := range map[pb.Product]string{
		pb.Product_PRODUCT_LYNC:     "Set-CsCertificate -Identity 'Global' -Type OAuthTokenIssuer -Thumbprint '" + nt + "' -Roll -EffectiveDate ([datetime]'" + eff.Format(time.RFC3339) + "')",
		pb.Product_PRODUCT_EXCHANGE: "Set-AuthConfig -NewCertificateThumbprint '" + nt + "' -NewCertificateEffectiveDate ([datetime]'" + eff.Format(time.RFC3339) + "') -Force",
	} {
		rc := rotCase{t: t, p: p, primary: true, now: now, eff: eff}
		st := rc.state(f.next)
		st.Issuer.Next, st.Issuer.NextEffective = nt, eff.Add(time.Hour)
		in := Input{Config: rc.staging(), State: st, Now: now}
		if got := commands(Plan(in)); len(got) == 0 || got[0] != want {
			t.Errorf("%s: plan = %q, want %q first", p, got, want)
		}
		wantStatus(t, Check(in), ItemNextIssuer, pb.ItemState_ITEM_STATE_FAILED, "becomes current at "+eff.Add(time.Hour).Format(time.RFC3339))
	}
}

// TestRotationStageRules: a next certificate that breaks the certificate
// rules fails its item, naming the rule, in Check (from the host's store)
// and in Apply (from the delivered secret, before the product sees it).
func TestRotationStageRules(t *testing.T) {
	f := rot(t)
	now := time.Now()
	bad := certs.Thumbprint(f.expired.Cert)
	for _, p := range []pb.Product{pb.Product_PRODUCT_LYNC, pb.Product_PRODUCT_EXCHANGE, pb.Product_PRODUCT_SHAREPOINT} {
		rc := rotCase{t: t, p: p, primary: true, now: now, eff: now.Add(time.Hour)}
		cfg := rc.staging()
		cfg.NextTokenIssuer.SecretThumbprint = bad
		st := rc.state(f.expired)
		st.Issuer.Next, st.Issuer.NextEffective = bad, rc.eff
		wantStatus(t, Check(Input{Config: cfg, State: st, Now: now}), ItemNextIssuer, pb.ItemState_ITEM_STATE_FAILED, bad, "(rule "+certs.RuleExpired+")")

		b := &fakeBackend{st: rc.state()}
		res := Apply(context.Background(), b, cfg, []*pb.SecretMaterial{{Name: newSecret, Pfx: f.badPFX, Password: "pw"}}, now, false)
		var msg string
		for _, e := range res.Errors {
			if e.GetItem() == ItemNextIssuer {
				msg = e.GetMessage()
			}
		}
		if !strings.Contains(msg, "breaks the certificate rules") || !strings.Contains(msg, "(rule "+certs.RuleExpired+")") || !strings.Contains(msg, newSecret) {
			t.Errorf("%s: Apply errors %v, want the next item failing on rule %s", p, res.Errors, certs.RuleExpired)
		}
		if slices.ContainsFunc(b.executed, func(o Op) bool { return o.Item == ItemNextIssuer }) {
			t.Errorf("%s: executed %q for a certificate that breaks the rules", p, commands(b.executed))
		}
	}
}

func TestRotationRefresh(t *testing.T) {
	f := rot(t)
	now := time.Now()
	old, nt := certs.Thumbprint(f.old.Cert), certs.Thumbprint(f.next.Cert)
	for p, want := range map[pb.Product]string{
		pb.Product_PRODUCT_EXCHANGE:   "Set-PartnerApplication -Identity 'LyncEnterprise-1' -RefreshAuthMetadata -Confirm:$false",
		pb.Product_PRODUCT_LYNC:       "Set-CsPartnerApplication -Identity 'LyncEnterprise-1' -MetadataUrl '" + partnerURL + "' -Confirm:$false",
		pb.Product_PRODUCT_SHAREPOINT: "Set-SPTrustedSecurityTokenIssuer -Identity 'LyncEnterprise-1' -MetadataEndPoint '" + partnerURL + "' -Confirm:$false",
	} {
		t.Run(products.Name(p), func(t *testing.T) {
			for _, primary := range []bool{true, false} {
				rc := rotCase{t: t, p: p, primary: primary, now: now}
				cfg := rc.cfg()
				partner := &pb.Partner{Name: "LyncEnterprise-1", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ApplicationIdentifier: products.LyncID,
					MetadataUrl: partnerURL, Enabled: true, TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, ExpectedSigningThumbprints: []string{old, strings.ToLower(nt)}}
				cfg.Partners = []*pb.Partner{partner}
				st := rc.state()
				st.Partners = []Partner{{Name: "LyncEnterprise-1", ApplicationIdentifier: products.LyncID, MetadataURL: partnerURL, Enabled: true,
					TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, CachedThumbprints: []string{old}}}
				in := Input{Config: cfg, State: st, Now: now}
				got := commands(Plan(in))
				switch {
				case primary && (len(got) == 0 || got[0] != want):
					t.Errorf("primary plan = %q, want %q first", got, want)
				case !primary && len(got) != 0:
					t.Errorf("non-primary plan = %q, want nothing", got)
				}
				state := pb.ItemState_ITEM_STATE_FAILED
				if !primary {
					state = pb.ItemState_ITEM_STATE_PENDING
				}
				wantStatus(t, Check(in), driver.PartnerItem("LyncEnterprise-1"), state, partnerURL, "holds "+old, "lacking expected "+nt)

				st.Partners[0].CachedThumbprints = []string{nt, old}
				if got := Plan(in); len(got) != 0 {
					t.Errorf("plan with both cached = %q", commands(got))
				}
				allItemsOK(t, Check(in))

				partner.ExpectedSigningThumbprints = []string{"not-a-thumbprint"}
				wantStatus(t, Check(in), driver.PartnerItem("LyncEnterprise-1"), pb.ItemState_ITEM_STATE_FAILED, "not-a-thumbprint", "not a thumbprint")
			}
		})
	}
}

// TestRotationRefreshStillMissing: when the partner does not publish an
// expected key even after the refresh, Apply fails the partner's item
// naming it, its URL and what it publishes.
func TestRotationRefreshStillMissing(t *testing.T) {
	f := rot(t)
	old, nt := certs.Thumbprint(f.old.Cert), certs.Thumbprint(f.next.Cert)
	rc := rotCase{t: t, p: pb.Product_PRODUCT_EXCHANGE, primary: true, now: time.Now()}
	cfg := rc.cfg()
	cfg.Partners = []*pb.Partner{{Name: "LyncEnterprise-1", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ApplicationIdentifier: products.LyncID,
		MetadataUrl: partnerURL, Enabled: true, ExpectedSigningThumbprints: []string{old, nt}}}
	st := rc.state()
	st.Partners = []Partner{{Name: "LyncEnterprise-1", ApplicationIdentifier: products.LyncID, MetadataURL: partnerURL, Enabled: true, CachedThumbprints: []string{old}}}
	for _, publishes := range [][]string{{old}, {old, nt}} {
		b := &fakeBackend{st: st, refreshTo: publishes}
		res := Apply(context.Background(), b, cfg, nil, time.Now(), false)
		var msg string
		for _, e := range res.Errors {
			if e.GetItem() == driver.PartnerItem("LyncEnterprise-1") {
				msg = e.GetMessage()
			}
		}
		if len(publishes) == 1 {
			if !strings.Contains(msg, "LyncEnterprise-1") || !strings.Contains(msg, partnerURL) || !strings.Contains(msg, "holds "+old) || !strings.Contains(msg, "expected "+nt+" is not published") {
				t.Errorf("refresh that finds no %s: errors %v", nt, res.Errors)
			}
		} else if len(res.Errors) != 0 {
			t.Errorf("refresh that finds both: errors %v", res.Errors)
		}
		if !slices.ContainsFunc(b.executed, func(o Op) bool { return o.Kind == KindRefreshPartnerMetadata }) {
			t.Errorf("no refresh executed: %q", commands(b.executed))
		}
	}
}

func TestRotationActivate(t *testing.T) {
	f := rot(t)
	now := time.Now().UTC().Truncate(time.Second)
	eff := now.Add(time.Hour)
	old, nt := certs.Thumbprint(f.old.Cert), certs.Thumbprint(f.next.Cert)
	staged := func(rc rotCase) *State {
		st := rc.state(f.next)
		st.Issuer.Next, st.Issuer.NextEffective = nt, eff
		return st
	}
	t.Run("lync waits for its EffectiveDate", func(t *testing.T) {
		for _, primary := range []bool{true, false} {
			rc := rotCase{t: t, p: pb.Product_PRODUCT_LYNC, primary: primary, now: now, eff: eff}
			in := Input{Config: rc.activating(), State: staged(rc), Now: now}
			if ops := Plan(in); len(ops) != 0 {
				t.Errorf("plan = %q; Lync rolls by itself, nothing is re-imported", commands(ops))
			}
			wantStatus(t, Check(in), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_PENDING, EffectiveDateWait+" "+eff.Format(time.RFC3339))
			if msg := statusOf(t, Check(in), driver.ItemIssuerCertificate).GetMessage(); strings.Contains(msg, PendingSuffix) {
				t.Errorf("primary=%v: %q says it waits for the primary; it waits for the date", primary, msg)
			}
			// Rolled: the new one current, the old one previous.
			st := rc.state(f.next)
			st.Issuer = Issuer{Current: nt, Previous: old}
			in = Input{Config: rc.activating(), State: st, Now: eff.Add(time.Minute)}
			if ops := Plan(in); len(ops) != 0 {
				t.Errorf("plan after the roll = %q", commands(ops))
			}
			allItemsOK(t, Check(in))
			// A roll that happened while staging is fine too.
			in.Config = rc.staging()
			allItemsOK(t, Check(in))
		}
	})
	t.Run("exchange publishes then resets IIS", func(t *testing.T) {
		rc := rotCase{t: t, p: pb.Product_PRODUCT_EXCHANGE, primary: true, now: now, eff: eff}
		in := Input{Config: rc.activating(), State: staged(rc), Now: now}
		ops := Plan(in)
		if got, want := commands(ops), []string{"Set-AuthConfig -PublishCertificate -Confirm:$false", "iisreset -noforce"}; !slices.Equal(got, want) {
			t.Errorf("plan = %q, want %q", got, want)
		}
		if len(ops) == 2 && (!ops[1].Disruptive || ops[1].Kind != KindResetIIS || ops[0].Kind != KindActivateNextIssuer) {
			t.Errorf("ops = %+v, want activation then a disruptive IIS reset", ops)
		}
		wantStatus(t, Check(in), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_FAILED, nt, "staged as the next certificate")

		// Another server: it waits for the primary, then resets its own IIS
		// once the organization's current certificate changed.
		rc.primary = false
		in = Input{Config: rc.activating(), State: staged(rc), Now: now}
		if ops := Plan(in); len(ops) != 0 {
			t.Errorf("non-primary plan before the publish = %q", commands(ops))
		}
		wantStatus(t, Check(in), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_PENDING, PendingSuffix)
		st := rc.state(f.next)
		st.Issuer = Issuer{Current: nt, Previous: old}
		st.IISIssuer = old
		in = Input{Config: rc.activating(), State: st, Now: now}
		ops = Plan(in)
		if got := commands(ops); !slices.Equal(got, []string{"iisreset -noforce"}) || ops[0].PrimaryOnly || !ops[0].Disruptive {
			t.Errorf("non-primary plan after the publish = %q %+v", got, ops)
		}
		wantStatus(t, Check(in), ItemIISReset, pb.ItemState_ITEM_STATE_FAILED, "started with auth certificate "+old)
		st.IISIssuer = nt
		allItemsOK(t, Check(in))
		// A server that lacks the certificate cannot sign with it: it
		// imports it from the delivered secret.
		st = staged(rc)
		st.Certificates = st.Certificates[:1]
		in = Input{Config: rc.activating(), State: st, Now: now}
		if got := commands(Plan(in)); !slices.Equal(got, []string{"Import-ExchangeCertificate -FileData <redacted> -Password <redacted> -PrivateKeyExportable:$false"}) {
			t.Errorf("plan without the local copy = %q", got)
		}
		wantStatus(t, Check(in), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_FAILED, "does not hold the staged auth certificate "+nt)
	})
	t.Run("sharepoint imports the queued certificate as the signing one", func(t *testing.T) {
		rc := rotCase{t: t, p: pb.Product_PRODUCT_SHAREPOINT, primary: true, now: now, eff: eff}
		in := Input{Config: rc.activating(), State: staged(rc), Now: now}
		ops := Plan(in)
		// Microsoft's procedure resets IIS and restarts the Timer Service
		// on every server after the import: the primary right after it.
		if got := commands(ops); !slices.Equal(got, []string{"Set-SPSecurityTokenServiceConfig -ImportSigningCertificate <redacted> -Confirm:$false", "iisreset -noforce", "Restart-Service -Name 'SPTimerV4'"}) ||
			ops[0].Kind != KindActivateNextIssuer || ops[0].Secret != newSecret || ops[1].Kind != KindResetIIS || ops[2].Kind != KindRestartTimer ||
			!ops[1].Disruptive || !ops[2].Disruptive || ops[1].Item != driver.ItemIssuerCertificate || ops[2].Item != driver.ItemIssuerCertificate {
			t.Errorf("plan = %q %+v", got, ops)
		}
		st := rc.state(f.next)
		st.Issuer = Issuer{Current: nt}
		in = Input{Config: rc.activating(), State: st, Now: now}
		allItemsOK(t, Check(in))

		// Another server of the farm: nothing before the primary's import
		// (no restart for nothing); after it, while its processes still
		// started with the old certificate, its own IIS reset and Timer
		// Service restart, disruptive and host scope.
		rc.primary = false
		in = Input{Config: rc.activating(), State: staged(rc), Now: now}
		if ops := Plan(in); len(ops) != 0 {
			t.Errorf("non-primary plan before the import = %q", commands(ops))
		}
		st = rc.state(f.next)
		st.Issuer = Issuer{Current: nt}
		st.IISIssuer = old
		in = Input{Config: rc.activating(), State: st, Now: now}
		ops = Plan(in)
		if got := commands(ops); !slices.Equal(got, []string{"iisreset -noforce", "Restart-Service -Name 'SPTimerV4'"}) ||
			slices.ContainsFunc(ops, func(o Op) bool { return o.PrimaryOnly || !o.Disruptive || o.Item != ItemIISReset }) {
			t.Errorf("non-primary plan after the import = %q %+v", got, ops)
		}
		wantStatus(t, Check(in), ItemIISReset, pb.ItemState_ITEM_STATE_FAILED, "started with STS signing certificate "+old, "the farm's current one is "+nt)
		st.IISIssuer = nt
		allItemsOK(t, Check(in))
		if ops := Plan(in); len(ops) != 0 {
			t.Errorf("plan once restarted = %q", commands(ops))
		}
	})
}

func TestRotationRetire(t *testing.T) {
	f := rot(t)
	now := time.Now()
	old, nt := certs.Thumbprint(f.old.Cert), certs.Thumbprint(f.next.Cert)
	for p, want := range map[pb.Product][]string{
		pb.Product_PRODUCT_LYNC:       {"Remove-CsCertificate -Identity 'Global' -Type OAuthTokenIssuer -Previous -Confirm:$false"},
		pb.Product_PRODUCT_EXCHANGE:   {"Set-AuthConfig -ClearPreviousCertificate -Confirm:$false", "iisreset -noforce"},
		pb.Product_PRODUCT_SHAREPOINT: nil,
	} {
		for _, primary := range []bool{true, false} {
			rc := rotCase{t: t, p: p, primary: primary, now: now}
			cfg := rc.activating()
			cfg.RetirePreviousIssuer = true
			st := rc.state(f.next)
			st.Issuer = Issuer{Current: nt, Previous: old, PreviousNotAfter: f.old.Cert.NotAfter}
			if p == pb.Product_PRODUCT_SHAREPOINT {
				st.Issuer.Previous = ""
			}
			in := Input{Config: cfg, State: st, Now: now}
			got := commands(Plan(in))
			switch {
			case primary && !slices.Equal(got, want):
				t.Errorf("%s primary plan = %q, want %q", p, got, want)
			case !primary && len(got) != 0:
				t.Errorf("%s non-primary plan = %q", p, got)
			}
			switch {
			case p == pb.Product_PRODUCT_SHAREPOINT:
				allItemsOK(t, Check(in))
			case primary:
				wantStatus(t, Check(in), ItemPreviousIssuer, pb.ItemState_ITEM_STATE_FAILED, old)
			default:
				wantStatus(t, Check(in), ItemPreviousIssuer, pb.ItemState_ITEM_STATE_PENDING, old)
			}
			st.Issuer.Previous = ""
			allItemsOK(t, Check(in))
			// An expired previous certificate is removed once, not twice.
			st.Issuer.Previous = old
			in.Now = f.old.Cert.NotAfter.Add(time.Hour)
			if n := len(slices.DeleteFunc(Plan(in), func(o Op) bool { return o.Kind != KindRemovePreviousIssuer })); primary && p != pb.Product_PRODUCT_SHAREPOINT && n != 1 {
				t.Errorf("%s: %d removals of the previous certificate, want 1", p, n)
			}
		}
	}
}

// TestRotationReport: the report carries the next and previous issuer.
func TestRotationReport(t *testing.T) {
	eff := time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)
	r := &pb.StatusReport{}
	Describe(r, pb.Product_PRODUCT_LYNC, &State{Issuer: Issuer{Current: "A", Next: "B", NextEffective: eff, Previous: "C"}})
	if o := r.GetOauth(); o.GetIssuerThumbprint() != "A" || o.GetNextIssuerThumbprint() != "B" || !o.GetNextIssuerEffective().AsTime().Equal(eff) || o.GetPreviousIssuerThumbprint() != "C" {
		t.Errorf("oauth = %v", o)
	}
	r = &pb.StatusReport{}
	Describe(r, pb.Product_PRODUCT_LYNC, &State{Issuer: Issuer{Current: "A"}})
	if o := r.GetOauth(); o.GetNextIssuerThumbprint() != "" || o.GetNextIssuerEffective() != nil || o.GetPreviousIssuerThumbprint() != "" {
		t.Errorf("oauth without a rotation = %v", o)
	}
}

// fakeBackend records the operations executed; a refresh caches refreshTo.
type fakeBackend struct {
	st        *State
	refreshTo []string
	executed  []Op
}

func (b *fakeBackend) Read(context.Context, *pb.HostConfig) (*State, error) { return b.st, nil }

func (b *fakeBackend) Execute(_ context.Context, _ *pb.HostConfig, op Op, _ []*pb.SecretMaterial) error {
	b.executed = append(b.executed, op)
	if op.Kind == KindRefreshPartnerMetadata {
		for i := range b.st.Partners {
			if b.st.Partners[i].Name == op.Name {
				b.st.Partners[i].CachedThumbprints = b.refreshTo
				return nil
			}
		}
		return errors.New("no such partner")
	}
	return nil
}

// TestExchangeIssuerImportNotExportable: the current auth certificate is
// imported as the driver's script imports it (and as a rotation's next one
// is): its private key not exportable.
func TestExchangeIssuerImportNotExportable(t *testing.T) {
	rc := rotCase{t: t, p: pb.Product_PRODUCT_EXCHANGE, primary: true, now: time.Now()}
	in := Input{Config: rc.cfg(), State: &State{Product: pb.Product_PRODUCT_EXCHANGE}, Now: rc.now}
	ops := Plan(in)
	i := slices.IndexFunc(ops, func(o Op) bool { return o.Kind == KindImportIssuer })
	if i < 0 {
		t.Fatalf("plan = %q, want an import of the issuer", commands(ops))
	}
	if got, want := ops[i].Command(), "Import-ExchangeCertificate -FileData <redacted> -Password <redacted> -PrivateKeyExportable:$false"; got != want {
		t.Errorf("import = %q, want %q", got, want)
	}
}
