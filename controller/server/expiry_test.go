package server

import (
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/internal/certs"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// certExpiringIn generates a certificate that expires d from now.
func certExpiringIn(t *testing.T, now time.Time, d time.Duration) *pb.CertificateInfo {
	t.Helper()
	b, err := certs.Generate(certs.Template{CommonName: "contoso.com", NotBefore: now.AddDate(-1, 0, 0), NotAfter: now.Add(d)})
	if err != nil {
		t.Fatal(err)
	}
	return certs.Info(b.Cert, true)
}

func TestIssuerExpiryInTrustReport(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	snap := contosoSnapshot(t)
	reports := healthyReports(snap)
	in20, in50, in400 := certExpiringIn(t, now, 20*24*time.Hour), certExpiringIn(t, now, 50*24*time.Hour), certExpiringIn(t, now, 400*24*time.Hour)
	// The healthy estate's signing keys, with the generated certificates' dates.
	in20.Thumbprint, in50.Thumbprint = signingKey["pool01"], signingKey["exchange"]
	for _, h := range []string{"fe01.contoso.com", "fe02.contoso.com"} {
		reports[h].IssuerCertificate = in20
	}
	// Exchange's auth certificate as its hosts report it.
	for _, h := range []string{"ex01.contoso.com", "ex02.contoso.com"} {
		reports[h].IssuerCertificate = in50
	}
	// SharePoint has not reported: no certificate known, no warning.
	delete(reports, "sp01.contoso.com")
	resp := &pb.GetTrustReportResponse{Realms: deploymentRealms(snap, reports)}
	for _, e := range edges(snap, reports) {
		resp.Edges = append(resp.Edges, e)
	}
	issuers := map[string]*pb.CertificateInfo{"pool01": in20, "exchange": in50}
	addExpiry(resp, snap, issuers, now)

	want := map[string]string{
		"pool01":     "pool01's OAuthTokenIssuer certificate " + in20.GetThumbprint() + " expires in 20 days (on 2026-12-22), within 30 days: rotate it now",
		"exchange":   "exchange's auth certificate " + in50.GetThumbprint() + " expires in 50 days (on 2027-01-21), within 60 days: plan its rotation",
		"sharepoint": "",
	}
	for _, r := range resp.GetRealms() {
		w := want[r.GetDeployment()]
		if got := r.GetIssuerExpiryWarning(); (w == "") != (got == "") || !strings.HasPrefix(got, w) {
			t.Errorf("%s: warning %q; want %q…", r.GetDeployment(), got, w)
		}
	}
	for _, e := range resp.GetEdges() {
		w := want[e.GetFrom()]
		if got := e.GetIssuerExpiryWarning(); (w == "") != (got == "") || !strings.HasPrefix(got, w) {
			t.Errorf("edge %s → %s: warning %q; want %q…", e.GetFrom(), e.GetTo(), got, w)
		}
		if !e.GetOk() && e.GetFrom() != "sharepoint" && e.GetTo() != "sharepoint" {
			t.Errorf("edge %s → %s fails (%v): an expiry warning is not a problem", e.GetFrom(), e.GetTo(), e.GetProblems())
		}
	}

	// Far from expiry: nothing; expired: said so.
	if w := IssuerExpiryWarning("pool01", pb.Product_PRODUCT_LYNC, "AA", in400.GetNotAfter().AsTime(), now); w != "" {
		t.Errorf("400 days ahead: warning %q", w)
	}
	if w := IssuerExpiryWarning("sharepoint", pb.Product_PRODUCT_SHAREPOINT, "BB", now.Add(-time.Hour), now); !strings.Contains(w, "STS signing certificate BB expired on 2026-12-02") {
		t.Errorf("expired: warning %q", w)
	}
	if w := IssuerExpiryWarning("pool01", pb.Product_PRODUCT_LYNC, "AA", now.Add(60*24*time.Hour), now); !strings.Contains(w, "within 60 days") {
		t.Errorf("exactly 60 days ahead: warning %q", w)
	}
	if w := IssuerExpiryWarning("pool01", pb.Product_PRODUCT_LYNC, "AA", now.Add(60*24*time.Hour+time.Minute), now); w != "" {
		t.Errorf("just over 60 days ahead: warning %q", w)
	}
}
