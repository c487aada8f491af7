package powershell

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func exchangeConfig() *pb.HostConfig {
	return &pb.HostConfig{Host: "ex01.acme-s2s.example", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ProductVersion: "2016",
		ServiceName: products.ExchangeID, Primary: true}
}

func TestProductTests(t *testing.T) {
	fakeEnv(t, "normal")
	d := testDriver(t, "fe01.acme-s2s.example")
	r, err := d.TestExStorageConnectivity(context.Background(), lyncConfig(), "sip:probe@acme-s2s.example")
	if err != nil || !r.OK || r.Output != "Test passed." {
		t.Fatalf("Test-CsExStorageConnectivity: %+v, %v", r, err)
	}
	if _, err := d.TestExStorageConnectivity(context.Background(), exchangeConfig(), "sip:x@y"); err == nil || !strings.Contains(err.Error(), "ex01.acme-s2s.example") {
		t.Fatalf("Test-CsExStorageConnectivity on Exchange: %v", err)
	}

	ex := testDriver(t, "ex01.acme-s2s.example")
	o, err := ex.TestOAuthConnectivity(context.Background(), exchangeConfig(), "EWS", "https://pool01.acme-s2s.example/", "probe@acme-s2s.example")
	if err != nil || o.ResultType != "Success" {
		t.Fatalf("Test-OAuthConnectivity: %+v, %v", o, err)
	}
	// A cmdlet this product version lacks: a structured error naming it.
	_, err = ex.TestOAuthConnectivity(context.Background(), exchangeConfig(), "EWS", "https://pool01.acme-s2s.example/", "old-version@acme-s2s.example")
	e := wantError(t, err, "exchange", "test-oauth-connectivity", "Test-OAuthConnectivity", "is not available in this shell", "S2SCommandNotFound")
	if e.Record == nil || e.Record.Cmdlet != "Test-OAuthConnectivity" {
		t.Errorf("record %+v", e.Record)
	}
}

// TestLyncVerifyNonPrimary: a Front End that is not the primary reads its
// replica (-LocalStore) and reports the deployment's items as waiting on
// the primary rather than failing, through the shared reconciler.
func TestLyncVerifyNonPrimary(t *testing.T) {
	log := fakeEnv(t, "normal")
	d := testDriver(t, "fe01.acme-s2s.example")
	cfg := lyncConfig()
	cfg.Primary = false
	r, err := d.Verify(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, _, stdin := requests(t, log)
	if !strings.Contains(stdin, `"localStore":true`) {
		t.Errorf("a non-primary Front End did not read its local store: %s", stdin)
	}
	states := map[string]pb.ItemState{}
	for _, it := range r.GetItems() {
		states[it.GetItem()] = it.GetState()
	}
	if states["product"] != pb.ItemState_ITEM_STATE_OK {
		t.Errorf("product item %v", states["product"])
	}
	if s := states["partner/microsoft.exchange"]; s != pb.ItemState_ITEM_STATE_PENDING {
		t.Errorf("partner/microsoft.exchange is %v on a non-primary host, want PENDING (items: %v)", s, r.GetItems())
	}
	if len(r.GetPartners()) != 2 {
		t.Errorf("reported partners %v, want the replica's two", r.GetPartners())
	}
}

func TestLyncIssuerRoll(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	c := func(t, eff string, notAfter time.Time) csCertificate {
		return csCertificate{Thumbprint: t, EffectiveDate: eff, NotAfter: notAfter.Format(time.RFC3339)}
	}
	st := lyncIssuers([]csCertificate{
		c("CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC", now.Add(2*day).Format(time.RFC3339), now.Add(700*day)),
		c("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", now.Add(-400*day).Format(time.RFC3339), now.Add(-day)),
		c("BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", now.Add(-10*day).Format(time.RFC3339), now.Add(300*day)),
	}, now)
	if st.Current != "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB" || st.Next != "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC" ||
		st.Previous != "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" || !st.PreviousNotAfter.Equal(now.Add(-day)) || !st.NextEffective.Equal(now.Add(2*day)) {
		t.Fatalf("issuer during a roll: %+v", st)
	}
}

func TestExchangeRotationSteps(t *testing.T) {
	fakeEnv(t, "normal")
	d := testDriver(t, "ex01.acme-s2s.example")
	cfg := exchangeConfig()
	ctx := context.Background()
	eff := time.Date(2026, 6, 3, 0, 0, 0, 0, time.UTC)
	if err := d.StageAuthCertificate(ctx, cfg, "55555555 55555555 55555555 55555555 55555555", eff); err != nil {
		t.Fatalf("stage: %v", err)
	}
	if err := d.PublishAuthCertificate(ctx, cfg); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if err := d.ClearPreviousAuthCertificate(ctx, cfg); err != nil {
		t.Fatalf("clear previous: %v", err)
	}
	if err := d.RefreshPartnerMetadata(ctx, cfg, "LyncEnterprise-acme"); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if err := d.StageAuthCertificate(ctx, cfg, "not a thumbprint", eff); err == nil || !strings.Contains(err.Error(), "ex01.acme-s2s.example") {
		t.Fatalf("a bad thumbprint: %v", err)
	}
	if err := d.PublishAuthCertificate(ctx, lyncConfig()); err == nil || !strings.Contains(err.Error(), "fe01.acme-s2s.example") {
		t.Fatalf("an Exchange step on a Lync host: %v", err)
	}
}

// TestExchangeProbesWithTheTopologysMailbox: an Exchange host proves its
// edges with Test-OAuthConnectivity and the topology's test mailbox, once
// per target deployment; without one it says which field to set.
func TestExchangeProbesWithTheTopologysMailbox(t *testing.T) {
	fakeEnv(t, "normal")
	ex := testDriver(t, "ex01.acme-s2s.example")
	cfg := exchangeConfig()
	cfg.TrustedBy = []*pb.TrustTarget{{Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ServiceName: products.LyncID,
		Hosts: []string{"fe01.acme-s2s.example", "fe02.acme-s2s.example"}, MetadataUrl: "https://pool01.acme-s2s.example/metadata/json/1"}}
	for _, p := range ex.Probe(context.Background(), cfg) {
		if p.GetOk() || p.GetReason() != "not-probed" || !strings.Contains(p.GetDetail(), "probeAccounts.mailbox") {
			t.Errorf("probe of %s without a mailbox: %v", p.GetTargetHost(), p)
		}
	}
	cfg.ProbeMailbox = "probe@acme-s2s.example"
	probes := ex.Probe(context.Background(), cfg)
	if len(probes) != 2 {
		t.Fatalf("probes %v", probes)
	}
	for _, p := range probes {
		if !p.GetOk() || p.GetDetail() != "Test-OAuthConnectivity: Success" {
			t.Errorf("probe of %s with the mailbox: %v", p.GetTargetHost(), p)
		}
	}
}

// TestExchangeRotationOpsThroughExecute: the reconciler's rotation
// operations reach the scripts with the requests the golden exchanges
// record (the fake answers only a request it knows), and an unknown
// request fails.
func TestExchangeRotationOpsThroughExecute(t *testing.T) {
	fakeEnv(t, "normal")
	d := testDriver(t, "ex01.acme-s2s.example")
	cfg := exchangeConfig()
	ctx := context.Background()
	eff := time.Date(2026, 6, 3, 0, 0, 0, 0, time.UTC)
	partner := &pb.Partner{Name: "LyncEnterprise-acme", MetadataUrl: "https://pool01.acme-s2s.example/metadata/json/1"}
	for _, op := range []reconcile.Op{
		{Item: reconcile.ItemNextIssuer, Kind: reconcile.KindStageNextIssuer, Cmdlet: "Set-AuthConfig", Thumbprint: "5555555555555555555555555555555555555555", EffectiveDate: eff},
		{Item: "issuer-certificate", Kind: reconcile.KindActivateNextIssuer, Cmdlet: "Set-AuthConfig"},
		{Item: reconcile.ItemPreviousIssuer, Kind: reconcile.KindRemovePreviousIssuer, Cmdlet: "Set-AuthConfig"},
		{Item: "partner/LyncEnterprise-acme", Kind: reconcile.KindRefreshPartnerMetadata, Cmdlet: "Set-PartnerApplication", Name: "LyncEnterprise-acme", Partner: partner},
	} {
		if err := d.Execute(ctx, cfg, op, nil); err != nil {
			t.Errorf("%s: %v", op.Kind, err)
		}
	}
	other := reconcile.Op{Kind: reconcile.KindStageNextIssuer, Cmdlet: "Set-AuthConfig", Thumbprint: "6666666666666666666666666666666666666666", EffectiveDate: eff}
	if err := d.Execute(ctx, cfg, other, nil); err == nil {
		t.Error("a request no golden exchange records was answered")
	}
}
