package powershell

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

var testNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func testDriver(t *testing.T, host string) *Driver {
	t.Helper()
	d, err := New(Config{Host: host, Executable: os.Args[0], StateDir: t.TempDir(), CallTimeout: 10 * time.Second,
		StartTimeout: 10 * time.Second, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// lyncConfig is the golden Lync scenario: a stale partner to remove, a
// missing one to create, one at the wrong trust level, unset OAuth
// settings and the Default certificate to make the issuer.
func lyncConfig() *pb.HostConfig {
	return &pb.HostConfig{
		Host: "fe01.acme-s2s.example", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ProductVersion: "2019",
		DeploymentHosts: []string{"fe01.acme-s2s.example"}, ServiceName: products.LyncID, DefaultSipDomain: "acme-s2s.example",
		MetadataUrl: "https://pool01.acme-s2s.example/metadata/json/1", Endpoint: "pool01.acme-s2s.example",
		TokenIssuer:             &pb.TokenIssuer{Source: &pb.TokenIssuer_Thumbprint{Thumbprint: "89ABCDEF0123456789ABCDEF0123456789ABCDEF"}},
		ExchangeAutodiscoverUrl: "https://autodiscover.acme-s2s.example/autodiscover/autodiscover.svc",
		RemovePartners:          []string{"app"},
		Primary:                 true,
		Partners: []*pb.Partner{
			{Name: "microsoft.exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ApplicationIdentifier: products.ExchangeID,
				MetadataUrl: "https://autodiscover.acme-s2s.example/autodiscover/metadata/json/1", TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true},
			{Name: "microsoft.sharepoint", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ApplicationIdentifier: products.SharePointID,
				MetadataUrl: "https://sp.acme-s2s.example/_layouts/15/metadata/json/1", TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true},
		},
	}
}

// requests returns the ops of the fake worker's logged requests, in order.
func requests(t *testing.T, log string) (args string, ops []string, lines string) {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var reqs []string
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(l, "ARGS "):
			args += l + "\n"
		case strings.HasPrefix(l, "REQ "):
			reqs = append(reqs, l)
			if m := regexp.MustCompile(`"op":"([^"]+)"`).FindStringSubmatch(l); m != nil {
				ops = append(ops, m[1])
			}
		}
	}
	return args, ops, strings.Join(reqs, "\n")
}

func TestLyncApplyGolden(t *testing.T) {
	log := fakeEnv(t, "normal")
	d := testDriver(t, "fe01.acme-s2s.example")
	cfg := lyncConfig()
	if errs := d.Apply(context.Background(), cfg, nil); len(errs) > 0 {
		for _, e := range errs {
			t.Errorf("item %s: %s", e.Item, e.Message)
		}
		t.FailNow()
	}
	_, ops, _ := requests(t, log)
	for _, want := range []string{"init", "get-partner-applications", "get-oauth-configuration", "get-certificates",
		"remove-partner-application", "new-partner-application", "set-partner-application", "set-oauth-configuration", "set-issuer-certificate"} {
		if !slices.Contains(ops, want) {
			t.Errorf("apply sent no %s request (sent %v)", want, ops)
		}
	}
	if ops[0] != "init" || slices.Index(ops, "remove-partner-application") > slices.Index(ops, "new-partner-application") {
		t.Errorf("request order %v: want init first and the stale partner removed before the new one is created", ops)
	}
}

// TestAcceptanceNothingOnTheCommandLine is the acceptance check:
// with a stand-in powershell executable, neither the process arguments nor
// the embedded scripts hold any of the topology's host names, realms or
// URLs; the JSON on standard input carries them.
func TestAcceptanceNothingOnTheCommandLine(t *testing.T) {
	log := fakeEnv(t, "normal")
	d := testDriver(t, "fe01.acme-s2s.example")
	cfg := lyncConfig()
	if errs := d.Apply(context.Background(), cfg, nil); len(errs) > 0 {
		t.Fatalf("apply: %v", errs)
	}
	args, _, stdin := requests(t, log)
	if args == "" {
		t.Fatal("the fake worker logged no command line")
	}
	// Host names, realms, URLs and thumbprints. (Partner names are not in
	// the list for the scripts: "microsoft.exchange" is also the Exchange
	// session's fixed ConfigurationName, Microsoft.Exchange.)
	values := []string{cfg.GetHost(), cfg.GetDefaultSipDomain(), cfg.GetExchangeAutodiscoverUrl(), cfg.GetEndpoint(), cfg.GetMetadataUrl(),
		cfg.GetTokenIssuer().GetThumbprint(), "acme-s2s"}
	for _, p := range cfg.GetPartners() {
		values = append(values, p.GetMetadataUrl())
		if strings.Contains(args, p.GetName()) {
			t.Errorf("the command line %s contains partner name %q", args, p.GetName())
		}
	}
	for _, v := range values {
		if strings.Contains(strings.ToLower(args), strings.ToLower(v)) {
			t.Errorf("the command line %s contains %q", args, v)
		}
		for name, body := range Scripts() {
			if strings.Contains(strings.ToLower(string(body)), strings.ToLower(v)) {
				t.Errorf("embedded script %s contains %q", name, v)
			}
		}
	}
	// What must travel on standard input did.
	for _, v := range []string{"microsoft.exchange", "https://autodiscover.acme-s2s.example/autodiscover/metadata/json/1",
		"https://autodiscover.acme-s2s.example/autodiscover/autodiscover.svc", "89ABCDEF0123456789ABCDEF0123456789ABCDEF"} {
		if !strings.Contains(stdin, v) {
			t.Errorf("standard input does not carry %q", v)
		}
	}
	// The fixed arguments, and the script from the driver's state directory.
	want := append(append([]string(nil), WorkerArgs...), filepath.Join(d.cfg.StateDir, "scripts", "lync.ps1"))
	for _, a := range want {
		if !strings.Contains(args, a) {
			t.Errorf("command line %s lacks %q", args, a)
		}
	}
}

func TestNewMissingPowerShell(t *testing.T) {
	p := filepath.Join(t.TempDir(), "WindowsPowerShell", "v1.0", "powershell.exe")
	_, err := New(Config{Host: "fe01.acme-s2s.example", Executable: p, StateDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "--powershell") || !strings.Contains(err.Error(), p) {
		t.Fatalf("New with a missing executable: %v; want an error naming --powershell and %s", err, p)
	}
}

func TestVersionRefusedByName(t *testing.T) {
	fakeEnv(t, "normal")
	d := testDriver(t, "fe01.acme-s2s.example")
	cfg := lyncConfig()
	cfg.ProductVersion = "2015"
	errs := d.Apply(context.Background(), cfg, nil)
	if len(errs) != 1 || errs[0].Item != "product" {
		t.Fatalf("apply on a 2019 host declared 2015: %v; want one product error", errs)
	}
	for _, w := range []string{"fe01.acme-s2s.example", "Skype for Business", "2019", "2015", "pool01"} {
		if !strings.Contains(errs[0].Message, w) {
			t.Errorf("error %q does not name %q", errs[0].Message, w)
		}
	}
}

func TestModuleMissingIsProductError(t *testing.T) {
	fakeEnv(t, "no-module")
	d := testDriver(t, "fe01.acme-s2s.example")
	errs := d.Apply(context.Background(), lyncConfig(), nil)
	if len(errs) != 1 || errs[0].Item != "product" || !strings.Contains(errs[0].Message, "is not installed") || !strings.Contains(errs[0].Message, "Import-Module") {
		t.Fatalf("apply without the module: %v", errs)
	}
}

// TestScriptsRewrittenBeforeStart: a script edited on disk after the agent
// started is replaced by the embedded one before a worker runs it.
func TestScriptsRewrittenBeforeStart(t *testing.T) {
	fakeEnv(t, "normal")
	d := testDriver(t, "fe01.acme-s2s.example")
	p := filepath.Join(d.cfg.StateDir, "scripts", "lync.ps1")
	if err := os.WriteFile(p, []byte("Invoke-Expression $input\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Verify(context.Background(), lyncConfig()); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	if string(got) != string(Scripts()["lync.ps1"]) {
		t.Fatal("the worker started with a script edited on disk")
	}
}
