package powershell

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func TestEncodingForWindows(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want PFXEncoding
		err  bool
	}{
		{v: "6.3.9600.0", want: PFXLegacy3DES},     // Windows Server 2012 R2
		{v: "10.0.14393.0", want: PFXLegacy3DES},   // Windows Server 2016
		{v: "10.0.16299.0", want: PFXModernAES},    // 1709, the first with PBES2 import
		{v: "10.0.17763.0", want: PFXModernAES},    // Windows Server 2019
		{v: "10.0.20348.2652", want: PFXModernAES}, // Windows Server 2022
		{v: "10.0", err: true},
		{v: "ten.0.1", err: true},
		{v: "", err: true},
	} {
		got, err := EncodingForWindows(tc.v)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("EncodingForWindows(%q) = %q, %v; want %q (error %v)", tc.v, got, err, tc.want, tc.err)
		}
	}
}

func TestProductVersion(t *testing.T) {
	se := []string{"Skype for Business Server Subscription Edition, Core Components"}
	for _, tc := range []struct {
		p     pb.Product
		raw   string
		names []string
		want  string
		err   string
	}{
		{p: pb.Product_PRODUCT_LYNC, raw: "5.0.8308.0", want: "2013"},
		{p: pb.Product_PRODUCT_LYNC, raw: "6.0.9319.0", want: "2015"},
		{p: pb.Product_PRODUCT_LYNC, raw: "7.0.2046.0", want: "2019"},
		{p: pb.Product_PRODUCT_LYNC, raw: "7.0.2046.0", names: se, want: "SE"},
		{p: pb.Product_PRODUCT_LYNC, raw: "4.0.7577.0", err: "Lync Server 2010"},
		{p: pb.Product_PRODUCT_EXCHANGE, raw: "15.00.1497.002", want: "2013"},
		{p: pb.Product_PRODUCT_EXCHANGE, raw: "15.01.2507.006", want: "2016"},
		{p: pb.Product_PRODUCT_EXCHANGE, raw: "15.02.1544.004", want: "2019"},
		{p: pb.Product_PRODUCT_EXCHANGE, raw: "15.02.2562.017", names: []string{"Microsoft Exchange Server Subscription Edition"}, want: "SE"},
		{p: pb.Product_PRODUCT_EXCHANGE, raw: "14.03.0513.000", err: "Exchange Server 2010"},
		{p: pb.Product_PRODUCT_SHAREPOINT, raw: "15.0.5545.1000", want: "2013"},
		{p: pb.Product_PRODUCT_SHAREPOINT, raw: "16.0.4351.1000", want: "2016"},
		{p: pb.Product_PRODUCT_SHAREPOINT, raw: "16.0.10337.12109", want: "2019"},
		{p: pb.Product_PRODUCT_SHAREPOINT, raw: "16.0.17928.20238", want: "SE"},
		{p: pb.Product_PRODUCT_SHAREPOINT, raw: "14.0.7015.1000", err: "SharePoint Server 2010"},
		{p: pb.Product_PRODUCT_SHAREPOINT, raw: "", err: "does not know"},
	} {
		got, err := productVersion(tc.p, tc.raw, tc.names)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("productVersion(%v, %q) = %q, %v; want error %q", tc.p, tc.raw, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("productVersion(%v, %q) = %q, %v; want %q", tc.p, tc.raw, got, err, tc.want)
		}
	}
}

func TestParseBearerChallenge(t *testing.T) {
	for _, tc := range []struct {
		h    string
		want map[string]string
		err  string
	}{
		{h: `Bearer realm="9f11c5ea",client_id="00000003-0000-0ff1-ce00-000000000000"`, want: map[string]string{"realm": "9f11c5ea", "client_id": "00000003-0000-0ff1-ce00-000000000000"}},
		{h: `NTLM, Bearer realm="r", client_id="c", trusted_issuers="00000001-0000-0000-c000-000000000000@*"`, want: map[string]string{"realm": "r", "client_id": "c", "trusted_issuers": "00000001-0000-0000-c000-000000000000@*"}},
		{h: `Basic Realm="", Bearer client_id=c1`, want: map[string]string{"client_id": "c1"}},
		{h: `Bearer realm="a \"quoted\" realm"`, want: map[string]string{"realm": `a "quoted" realm`}},
		{h: `Negotiate, NTLM`, err: "no Bearer challenge"},
		{h: `Bearer realm="unterminated`, err: "unterminated"},
		{h: ``, err: "no Bearer challenge"},
	} {
		got, err := ParseBearerChallenge(tc.h)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseBearerChallenge(%q) = %v, %v; want error %q", tc.h, got, err, tc.err)
			}
			continue
		}
		if err != nil || len(got) != len(tc.want) {
			t.Errorf("ParseBearerChallenge(%q) = %v, %v; want %v", tc.h, got, err, tc.want)
			continue
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("ParseBearerChallenge(%q)[%s] = %q, want %q", tc.h, k, got[k], v)
			}
		}
	}
}

func FuzzParseBearerChallenge(f *testing.F) {
	f.Add(`NTLM, Bearer realm="r",client_id="00000003-0000-0ff1-ce00-000000000000"`)
	f.Add(`Bearer realm="a \"b\"", x=y`)
	f.Add(`Basic Realm=""`)
	f.Fuzz(func(t *testing.T, h string) {
		params, err := ParseBearerChallenge(h)
		if err == nil && params == nil {
			t.Fatalf("ParseBearerChallenge(%q): no error and no parameters", h)
		}
	})
}

func TestCheckMetadataAndProbe(t *testing.T) {
	fakeEnv(t, "normal")
	b, err := certs.Generate(certs.Template{CommonName: "acme-s2s.example", NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	// A Lync document signed by b.Cert.
	doc, _ := json.Marshal(metadata.Build(products.LyncID, "acme-s2s.example", "pool01.acme-s2s.example", []*x509.Certificate{b.Cert}))
	t.Setenv("S2S_TEST_LYNC_METADATA", string(doc))
	d := testDriver(t, "fe01.acme-s2s.example")
	cfg := lyncConfig()
	cfg.TrustedBy = []*pb.TrustTarget{{Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ServiceName: products.SharePointID, Hosts: []string{"sp01.acme-s2s.example"}},
		{Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ServiceName: products.ExchangeID, Hosts: []string{"ex01.acme-s2s.example"}}}
	checks := d.CheckMetadata(context.Background(), cfg)
	if len(checks) != 4 {
		t.Fatalf("%d metadata checks, want 3 and the self check", len(checks))
	}
	// The host's own document, from its own name.
	if c := checks[3]; c.GetPartner() != "" || c.GetDeployment() != cfg.GetDeployment() || c.GetUrl() != "https://fe01.acme-s2s.example/metadata/json/1" {
		t.Errorf("self check: %v", c)
	}
	if c := checks[0]; !c.GetOk() || len(c.GetThumbprints()) != 1 || c.GetThumbprints()[0] != certs.Thumbprint(b.Cert) {
		t.Errorf("own metadata: %v", c)
	}
	for i, want := range map[int]string{1: "could not be resolved", 2: "not JSON"} {
		c := checks[i]
		if c.GetOk() || !strings.Contains(c.GetError(), want) || !strings.Contains(c.GetError(), "MetadataUrl parameter") {
			t.Errorf("check %s: %v; want a seed-style error with %q", c.GetPartner(), c, want)
		}
	}
	probes := d.Probe(context.Background(), cfg)
	if len(probes) != 2 {
		t.Fatalf("probes %v", probes)
	}
	if p := probes[0]; !p.GetOk() || !strings.Contains(p.GetDetail(), "9f11c5ea-2df9-4950-8dcf-da8cd7aa4eff") {
		t.Errorf("realm discovery probe: %v", p)
	}
	if p := probes[1]; p.GetOk() || p.GetReason() != "not-probed" || !strings.Contains(p.GetDetail(), "Test-CsExStorageConnectivity") || !strings.Contains(p.GetDetail(), "probeAccounts.sipUri") {
		t.Errorf("exchange probe without a test user: %v", p)
	}
	// With the topology's test user, Lync's own test proves the edge.
	cfg.ProbeSipUri = "sip:probe@acme-s2s.example"
	probes = d.Probe(context.Background(), cfg)
	if p := probes[1]; !p.GetOk() || !strings.Contains(p.GetDetail(), "Test-CsExStorageConnectivity: Test passed.") {
		t.Errorf("exchange probe with probeAccounts.sipUri: %v", p)
	}
}

// TestTranslateCoversEveryKind: every operation the shared reconciler can
// plan for a product has a script operation, and that operation exists in
// the product's script.
func TestTranslateCoversEveryKind(t *testing.T) {
	partner := &pb.Partner{Name: "p", Product: pb.Product_PRODUCT_LYNC, MetadataUrl: "https://x.example/metadata/json/1", Enabled: true}
	cases := map[pb.Product][]reconcile.Op{
		pb.Product_PRODUCT_LYNC: {
			{Kind: reconcile.KindImportIssuer, Secret: "s"}, {Kind: reconcile.KindAssignIssuer, Thumbprint: "T"},
			{Kind: reconcile.KindRemovePreviousIssuer}, {Kind: reconcile.KindSetOAuth, ServiceName: products.LyncID},
			{Kind: reconcile.KindSetRealm, Realm: "r"}, {Kind: reconcile.KindNewPartner, Partner: partner},
			{Kind: reconcile.KindSetPartner, Name: "p", Partner: partner, Set: []string{"Enabled"}}, {Kind: reconcile.KindRemovePartner, Name: "p"},
			{Kind: reconcile.KindStageNextIssuer, Secret: "s", Thumbprint: "T", EffectiveDate: testNow},
			{Kind: reconcile.KindStageNextIssuer, Thumbprint: "T", EffectiveDate: testNow},
			{Kind: reconcile.KindRefreshPartnerMetadata, Name: "p", Partner: partner},
		},
		pb.Product_PRODUCT_EXCHANGE: {
			{Kind: reconcile.KindImportIssuer, Secret: "s"}, {Kind: reconcile.KindAssignIssuer, Thumbprint: "T"},
			{Kind: reconcile.KindSetRealm, Realm: "r"}, {Kind: reconcile.KindNewPartner, Partner: partner},
			{Kind: reconcile.KindNewPartner, Partner: &pb.Partner{Name: "hr", Product: pb.Product_PRODUCT_UNSPECIFIED}},
			{Kind: reconcile.KindSetPartner, Name: "p", Partner: partner}, {Kind: reconcile.KindRemovePartner, Name: "p"},
			{Kind: reconcile.KindResetIIS},
			{Kind: reconcile.KindImportNextIssuer, Secret: "s"}, {Kind: reconcile.KindStageNextIssuer, Thumbprint: "T", EffectiveDate: testNow},
			{Kind: reconcile.KindStageNextIssuer, Thumbprint: "T"}, {Kind: reconcile.KindActivateNextIssuer},
			{Kind: reconcile.KindRemovePreviousIssuer}, {Kind: reconcile.KindRefreshPartnerMetadata, Name: "p", Partner: partner},
		},
		pb.Product_PRODUCT_SHAREPOINT: {
			{Kind: reconcile.KindImportIssuer, Secret: "s"}, {Kind: reconcile.KindAssignIssuer, Thumbprint: "T"},
			{Kind: reconcile.KindSetRealm, Realm: "r"}, {Kind: reconcile.KindNewPartner, Partner: partner},
			{Kind: reconcile.KindSetPartner, Name: "p", Partner: partner}, {Kind: reconcile.KindRemovePartner, Name: "p"},
			{Kind: reconcile.KindSetAppPermission, AppID: products.ExchangeID}, {Kind: reconcile.KindSetSTS},
			{Kind: reconcile.KindStageNextIssuer, Secret: "s"}, {Kind: reconcile.KindActivateNextIssuer, Secret: "s"},
			{Kind: reconcile.KindRefreshPartnerMetadata, Name: "p", Partner: partner},
		},
	}
	scripts := Scripts()
	for p, ops := range cases {
		shell, _ := productShell(p)
		body := string(scripts[scriptOf[shell]])
		for _, op := range ops {
			c, err := translate(&pb.HostConfig{Product: p}, op)
			if err != nil {
				t.Errorf("%v %s: %v", p, op.Kind, err)
				continue
			}
			if !strings.Contains(body, "'"+c.op+"' = {") {
				t.Errorf("%v %s: script %s has no operation %s", p, op.Kind, scriptOf[shell], c.op)
			}
		}
	}
	if _, err := translate(&pb.HostConfig{Product: pb.Product_PRODUCT_LYNC}, reconcile.Op{Kind: reconcile.KindResetIIS}); err == nil {
		t.Error("an IIS reset on Lync translated to a script operation")
	}
}

// TestGoldenMatchesScripts ties the golden files to the scripts: every
// operation a script defines has a golden exchange, every golden
// operation exists in its script, every request argument is one the
// script reads, and every result field is one its projections write.
func TestGoldenMatchesScripts(t *testing.T) {
	scripts := Scripts()
	common := string(scripts["common.ps1"])
	opRE := regexp.MustCompile(`(?m)^    '([a-z-]+)' = \{`)
	for shell, file := range scriptOf {
		body := string(scripts[file])
		defined := map[string]bool{}
		for _, m := range opRE.FindAllStringSubmatch(body, -1) {
			defined[m[1]] = true
		}
		files, _ := filepath.Glob(filepath.Join("testdata", "golden", shell, "*.json"))
		have := map[string]bool{}
		for _, f := range files {
			op := strings.TrimSuffix(filepath.Base(f), ".json")
			op, _, _ = strings.Cut(op, "@")
			have[op] = true
			if !defined[op] {
				t.Errorf("golden %s: script %s has no operation %s", f, file, op)
			}
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var g golden
			if err := json.Unmarshal(raw, &g); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			var req map[string]any
			_ = json.Unmarshal(g.Request, &req)
			for k := range req {
				if !strings.Contains(body+common, "'"+k+"'") {
					t.Errorf("golden %s: argument %s is read nowhere in %s", f, k, file)
				}
			}
			for _, k := range jsonKeys(g.Response) {
				if !regexp.MustCompile(`(?m)(^|[{;.]|\s)` + regexp.QuoteMeta(k) + `\s*=\s`).MatchString(body + common) {
					t.Errorf("golden %s: result field %s is written by no projection in %s", f, k, file)
				}
			}
		}
		var missing []string
		for op := range defined {
			if !have[op] {
				missing = append(missing, op)
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			t.Errorf("script %s: no golden exchange for %v", file, missing)
		}
	}
}

// jsonKeys lists every object key in a JSON value.
func jsonKeys(raw json.RawMessage) []string {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return nil
	}
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				out = append(out, k)
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(v)
	return out
}
