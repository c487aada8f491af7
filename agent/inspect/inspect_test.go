package inspect

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/s2strust/s2strust/agent/app"
	"github.com/s2strust/s2strust/agent/driver/sim"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// lyncHost makes a configured simulated Front End: the pool installed,
// Exchange registered at trust level Application, the realm set, the
// Default certificate the token issuer. It returns the agent options that
// find it and the issuer's thumbprint.
func lyncHost(t *testing.T) (app.Config, string) {
	t.Helper()
	dir := t.TempDir()
	cfg := app.Config{Host: "fe01.contoso.com", Driver: "sim", StateDir: filepath.Join(dir, "agent"), SimDir: filepath.Join(dir, "shared")}
	s, err := sim.New(sim.Config{Host: cfg.Host, StateDir: filepath.Join(cfg.StateDir, "sim"), SharedDir: cfg.SimDir,
		Products: []*pb.DetectedProduct{{Product: pb.Product_PRODUCT_LYNC, Version: "2015"}}})
	if err != nil {
		t.Fatal(err)
	}
	hc := &pb.HostConfig{Host: cfg.Host, Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ProductVersion: "2015",
		DeploymentHosts: []string{cfg.Host}, ServiceName: products.LyncID, DefaultSipDomain: "contoso.com", Realm: "contoso.com",
		Endpoint: "pool01.contoso.com", MetadataUrl: "https://pool01.contoso.com/metadata/json/1", Primary: true,
		TokenIssuer: &pb.TokenIssuer{Source: &pb.TokenIssuer_Existing{Existing: "Default"}},
		Partners: []*pb.Partner{{Name: "microsoft.exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE,
			ApplicationIdentifier: products.ExchangeID, MetadataUrl: "https://autodiscover.contoso.com/autodiscover/metadata/json/1",
			TrustLevel: pb.TrustLevel_TRUST_LEVEL_APPLICATION, Enabled: true}}}
	_ = s.Apply(context.Background(), hc, nil)
	rep, err := s.Verify(context.Background(), hc)
	if err != nil {
		t.Fatal(err)
	}
	issuer := rep.GetOauth().GetIssuerThumbprint()
	if issuer == "" || len(rep.GetPartners()) != 1 {
		t.Fatalf("the sim did not configure the pool: %v", rep)
	}
	return cfg, issuer
}

func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	if err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestInspectSimLyncHost(t *testing.T) {
	cfg, issuer := lyncHost(t)
	before := tree(t, filepath.Dir(cfg.StateDir))

	var table bytes.Buffer
	if err := Run(context.Background(), Options{Agent: cfg, Product: "lync:2015", Deployment: "pool01"}, &table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"# host fe01.contoso.com, deployment pool01, lync 2015\n\nPS> Get-CsPartnerApplication\n",
		"\nPS> Get-CsPartnerApplication\n\n",
		"Identity              : microsoft.exchange\n",
		"MetadataUrl           : https://autodiscover.contoso.com/autodiscover/metadata/json/1\n",
		"ApplicationTrustLevel : Application\n",
		"Enabled               : True\n",
		"\nPS> Get-CsOAuthConfiguration\n\nIdentity                : Global\nServiceName             : " + products.LyncID + "\nRealm                   : contoso.com\n",
		"\nPS> Get-CsCertificate -Type OAuthTokenIssuer\n\nUse                : OAuthTokenIssuer\nThumbprint         : " + issuer + "\n",
		"\nPS> Get-CsCertificate -Type Default\n\nUse              : Default\nThumbprint       : " + issuer + "\n",
		"\nPS> Get-ChildItem Cert:\\LocalMachine\\My\n\n",
		"HasPrivateKey    : True\n",
	} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}

	// JSON, with the product found by the driver (--sim-product).
	cfg.SimProducts = []string{"lync:2015"}
	var js bytes.Buffer
	if err := Run(context.Background(), Options{Agent: cfg, Deployment: "pool01", Output: "json"}, &js); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Host, Deployment, Product, Version string
		Sections                           []struct {
			Command string
			Objects []map[string]any
		}
	}
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
		t.Fatalf("inspect -o json is not JSON: %v\n%s", err, js.String())
	}
	if doc.Host != "fe01.contoso.com" || doc.Product != "lync" || doc.Version != "2015" || doc.Deployment != "pool01" {
		t.Errorf("json header %+v", doc)
	}
	got := map[string][]map[string]any{}
	for _, s := range doc.Sections {
		got[s.Command] = s.Objects
	}
	pa := got["Get-CsPartnerApplication"]
	if len(pa) != 1 || pa[0]["Identity"] != "microsoft.exchange" || pa[0]["ApplicationIdentifier"] != products.ExchangeID ||
		pa[0]["ApplicationTrustLevel"] != "Application" || pa[0]["Enabled"] != true {
		t.Errorf("Get-CsPartnerApplication in json: %v", pa)
	}
	if o := got["Get-CsOAuthConfiguration"]; len(o) != 1 || o[0]["Realm"] != "contoso.com" || o[0]["ServiceName"] != products.LyncID {
		t.Errorf("Get-CsOAuthConfiguration in json: %v", o)
	}
	if c := got["Get-CsCertificate -Type OAuthTokenIssuer"]; len(c) != 1 || c[0]["Thumbprint"] != issuer || c[0]["NotAfter"] == "" {
		t.Errorf("Get-CsCertificate -Type OAuthTokenIssuer in json: %v", c)
	}

	after := tree(t, filepath.Dir(cfg.StateDir))
	if len(after) != len(before) {
		t.Errorf("inspect changed the set of files: %d before, %d after", len(before), len(after))
	}
	for p, b := range before {
		if after[p] != b {
			t.Errorf("inspect changed %s", p)
		}
	}
}

func TestInspectRefusals(t *testing.T) {
	cfg, _ := lyncHost(t)
	wrongState := cfg
	wrongState.StateDir = filepath.Join(t.TempDir(), "nowhere")
	wrongShared := cfg
	wrongShared.SimDir = t.TempDir()
	two := cfg
	two.SimProducts = []string{"lync:2015", "exchange:2019"}
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"no deployment", Options{Agent: cfg, Product: "lync:2015"}, "--deployment is required with the sim driver"},
		{"bad output", Options{Agent: cfg, Product: "lync:2015", Deployment: "pool01", Output: "yaml"}, `-o "yaml": want table or json`},
		{"bad product", Options{Agent: cfg, Product: "lync2010", Deployment: "pool01"}, `--product "lync2010"`},
		{"no host store", Options{Agent: wrongState, Product: "lync:2015", Deployment: "pool01"}, "host fe01.contoso.com has no simulated host store"},
		{"no deployment store", Options{Agent: wrongShared, Product: "lync:2015", Deployment: "pool01"}, "deployment pool01 has no simulated store"},
		{"other deployment", Options{Agent: cfg, Product: "lync:2015", Deployment: "pool02"}, "deployment pool02 has no simulated store"},
		{"two products", Options{Agent: two, Deployment: "pool01"}, "host fe01.contoso.com runs lync:2015 and exchange:2019; name the one"},
		{"another product", Options{Agent: cfg, Product: "exchange:2019", Deployment: "pool01"}, "read the configuration of host fe01.contoso.com"},
		{"powershell missing", Options{Agent: app.Config{Host: cfg.Host, Driver: "powershell", PowerShell: filepath.Join(t.TempDir(), "powershell.exe"), StateDir: t.TempDir()}, Product: "lync:2015"}, "--powershell"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := Run(context.Background(), tc.o, &out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run = %v, want an error containing %q", err, tc.want)
			}
			if out.Len() != 0 {
				t.Errorf("a refused inspect printed %q", out.String())
			}
		})
	}
	if _, err := os.Stat(wrongState.StateDir); !os.IsNotExist(err) {
		t.Errorf("a refused inspect created %s (%v)", wrongState.StateDir, err)
	}
}
