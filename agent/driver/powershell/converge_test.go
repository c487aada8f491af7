package powershell

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// writeOps are the operations that change a product.
var writeOps = []string{"new-partner-application", "set-partner-application", "remove-partner-application", "set-oauth-configuration",
	"set-issuer-certificate", "import-issuer-certificate", "configure-partner-application", "set-auth-config", "import-exchange-certificate",
	"iisreset", "new-trusted-issuer", "set-trusted-issuer", "remove-trusted-issuer", "set-app-principal-permission", "set-sts-http",
	"import-signing-certificate", "set-authentication-realm", "set-signing-certificate", "restart-timer"}

// TestConverge: against the stateful fake, apply makes the product match,
// verify then reports every item OK, and a second apply changes nothing —
// for each product, through the driver and the shared reconciler.
func TestConverge(t *testing.T) {
	for _, tc := range []struct {
		name, host string
		cfg        func(t *testing.T) (*pb.HostConfig, []*pb.SecretMaterial)
	}{
		{"lync", "fe01.acme-s2s.example", func(*testing.T) (*pb.HostConfig, []*pb.SecretMaterial) { return lyncConfig(), nil }},
		{"exchange", "ex01.acme-s2s.example", func(t *testing.T) (*pb.HostConfig, []*pb.SecretMaterial) {
			secret, tp := issuerSecret(t, "auth-2026")
			t.Setenv("S2S_TEST_THUMBPRINT", tp)
			cfg := exchangeConfig()
			cfg.TokenIssuer = &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: "auth-2026"}, SecretThumbprint: tp}
			cfg.Partners = []*pb.Partner{
				{Name: "pool01", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ApplicationIdentifier: "00000004-0000-0ff1-ce00-000000000000",
					MetadataUrl: "https://pool01.acme-s2s.example/metadata/json/1", Enabled: true},
				{Name: "sharepoint", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ApplicationIdentifier: "00000003-0000-0ff1-ce00-000000000000",
					MetadataUrl: "https://sp.acme-s2s.example/_layouts/15/metadata/json/1", Enabled: true},
			}
			return cfg, []*pb.SecretMaterial{secret}
		}},
		{"sharepoint", "sp01.acme-s2s.example", func(t *testing.T) (*pb.HostConfig, []*pb.SecretMaterial) {
			secret, tp := issuerSecret(t, "sts-2026")
			t.Setenv("S2S_TEST_THUMBPRINT", tp)
			return &pb.HostConfig{
				Host: "sp01.acme-s2s.example", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ProductVersion: "SE",
				ServiceName: "00000003-0000-0ff1-ce00-000000000000", Endpoint: "https://sp.acme-s2s.example", Primary: true,
				TokenIssuer: &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: "sts-2026"}, SecretThumbprint: tp},
				Partners: []*pb.Partner{
					{Name: "exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ApplicationIdentifier: "00000002-0000-0ff1-ce00-000000000000",
						MetadataUrl: "https://autodiscover.acme-s2s.example/autodiscover/metadata/json/1", Enabled: true, Realm: "*"},
					{Name: "lync", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ApplicationIdentifier: "00000004-0000-0ff1-ce00-000000000000",
						MetadataUrl: "https://pool01.acme-s2s.example/metadata/json/1", Enabled: true, TrustBroker: true},
				},
			}, []*pb.SecretMaterial{secret}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := fakeEnv(t, "stateful")
			t.Setenv("S2S_FAKE_STATE", filepath.Join(t.TempDir(), "state.json"))
			cfg, secrets := tc.cfg(t)
			d := testDriver(t, tc.host)
			if errs := d.Apply(context.Background(), cfg, secrets); len(errs) > 0 {
				t.Fatalf("first apply: %v", errs)
			}
			_, first, _ := requests(t, log)
			if !slices.ContainsFunc(first, func(op string) bool { return slices.Contains(writeOps, op) }) {
				t.Fatalf("the first apply changed nothing (%v): the scenario tests nothing", first)
			}
			r, err := d.Verify(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range r.GetItems() {
				if it.GetState() != pb.ItemState_ITEM_STATE_OK {
					t.Errorf("after apply, item %s is %v: %s", it.GetItem(), it.GetState(), it.GetMessage())
				}
			}
			if errs := d.Apply(context.Background(), cfg, secrets); len(errs) > 0 {
				t.Fatalf("second apply: %v", errs)
			}
			_, all, _ := requests(t, log)
			var again []string
			for _, op := range all[len(first):] {
				if slices.Contains(writeOps, op) {
					again = append(again, op)
				}
			}
			if len(again) > 0 {
				t.Errorf("the second apply changed the product again: %s", strings.Join(again, ", "))
			}
		})
	}
}
