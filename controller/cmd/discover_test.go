package cmd

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestDiscoverListsConflicts has the two Front Ends of pool01 disagree on
// a partner and report one whose metadata URL belongs to no deployment,
// while no Exchange or SharePoint host reports: discover lists each
// conflict on standard error, leaves the disputed partner out of the
// topology it writes, and exits non-zero unless --allow-conflicts.
func TestDiscoverListsConflicts(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	mustRun(t, dir, "apply", "-f", contosoFile(t, "name: contoso\n", "name: contoso\ncertificateRules: strict\nmetadataNetworks: [10.0.0.0/8]\n"))

	exchange := &pb.PartnerApplication{Identity: "microsoft.exchange", Name: "microsoft.exchange", ApplicationIdentifier: products.ExchangeID,
		MetadataUrl: "https://autodiscover.contoso.com/autodiscover/metadata/json/1", TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true}
	sharePoint := &pb.PartnerApplication{Identity: "microsoft.sharepoint", Name: "microsoft.sharepoint", ApplicationIdentifier: products.SharePointID,
		MetadataUrl: "https://sp.contoso.com/_layouts/15/metadata/json/1", TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true}
	legacy := &pb.PartnerApplication{Identity: "legacy", Name: "legacy", ApplicationIdentifier: "11111111-0000-0ff1-ce00-000000000000",
		MetadataUrl: "https://legacy.contoso.com/metadata/json/1", TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true}
	oauth := &pb.OAuthConfiguration{ServiceName: products.LyncID, Realm: "contoso.com", IssuerThumbprint: iss.thumbprint}
	sfb2019 := &pb.DetectedProduct{Product: pb.Product_PRODUCT_LYNC, Version: "2019"}
	reportAs(t, dir, "fe01.contoso.com", &pb.StatusReport{Primary: true, Oauth: oauth, Partners: []*pb.PartnerApplication{exchange, sharePoint, legacy}}, sfb2019)
	reportAs(t, dir, "fe02.contoso.com", &pb.StatusReport{Oauth: oauth, Partners: []*pb.PartnerApplication{exchange, legacy}}, sfb2019)

	discover := func(args ...string) (string, string, error) {
		var out, errOut bytes.Buffer
		root := NewRoot(&out)
		root.SetErr(&errOut)
		root.SetArgs(append([]string{"--data-dir", dir, "discover"}, args...))
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		err := root.ExecuteContext(ctx)
		return out.String(), errOut.String(), err
	}
	var out, errOut string
	var err error
	waitFor(t, "both Front Ends' reports", func() (bool, string) {
		out, errOut, err = discover()
		// Reports are stored apart from the host state: wait for both.
		return strings.Contains(errOut, "partner legacy") && strings.Contains(errOut, "disagree on partner microsoft.sharepoint") &&
			strings.Contains(errOut, "its hosts run 2019"), errOut
	})
	if ExitCode(err) != exitConflicts {
		t.Errorf("discover: exit %d (%v), want %d", ExitCode(err), err, exitConflicts)
	}
	for _, want := range []string{
		"conflict: deployment pool01: its hosts disagree on partner microsoft.sharepoint: fe01.contoso.com has " + products.SharePointID,
		"; fe02.contoso.com has not registered\n",
		"conflict: deployment pool01: partner legacy is registered with metadata URL https://legacy.contoso.com/metadata/json/1, which belongs to no deployment of the topology\n",
		"conflict: deployment exchange: none of its hosts (ex01.contoso.com, ex02.contoso.com) is connected and has reported; its settings and the trusts into it are kept as the current topology declares them\n",
		"conflict: deployment sharepoint: none of its hosts (sp01.contoso.com) is connected and has reported",
		"note: host ex01.contoso.com (exchange) has not reported\n",
		"note: deployment pool01: the topology says lync 2015, its hosts run 2019\n",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("discover's standard error lacks %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(out, "conflict:") || !strings.HasPrefix(out, "# discovered from the reports of 2 of 5 hosts; 4 conflicts\n") {
		t.Errorf("standard output must hold the topology only, after its header:\n%s", out)
	}
	got, lerr := topology.Load("discovered.yaml", []byte(out))
	if lerr != nil {
		t.Fatalf("discovered topology does not load: %v\n%s", lerr, out)
	}
	var edges []string
	for _, tr := range got.Trusts {
		edges = append(edges, tr.From+"→"+tr.To)
	}
	// exchange → pool01 from the Front Ends' reports, sharepoint → pool01
	// left out (disputed); the edges into the deployments nobody reported
	// for as the current topology declares them.
	if strings.Join(edges, " ") != "exchange→pool01 pool01→exchange pool01→sharepoint exchange→sharepoint" {
		t.Errorf("discovered trusts %v", edges)
	}
	if got.CertificateRules != "strict" || strings.Join(got.MetadataNetworks, ",") != "10.0.0.0/8" {
		t.Errorf("discover dropped what no agent sees: certificateRules %q, metadataNetworks %v", got.CertificateRules, got.MetadataNetworks)
	}
	if v := got.Deployments[0].Version; v != "2019" {
		t.Errorf("pool01 discovered at version %q, want the 2019 its hosts detected", v)
	}
	if ti := got.Deployments[0].TokenIssuer; ti == nil || ti.Secret != "oauth-2026" || got.Deployments[0].Realm != "contoso.com" {
		t.Errorf("pool01 discovered with issuer %+v realm %q, want the secret oauth-2026 holding its thumbprint and realm contoso.com", ti, got.Deployments[0].Realm)
	}

	if _, errOut, err := discover("--allow-conflicts", "-o", "json"); err != nil || !strings.Contains(errOut, "conflict: ") {
		t.Errorf("discover --allow-conflicts -o json: %v, stderr:\n%s", err, errOut)
	}
	if _, _, err := discover("-o", "xml"); err == nil || !strings.Contains(err.Error(), `-o "xml": want yaml or json`) {
		t.Errorf("discover -o xml: %v", err)
	}
}
