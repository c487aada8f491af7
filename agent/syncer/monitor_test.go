package syncer

import (
	"context"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/agent/driver/powershell"
	"github.com/s2strust/s2strust/agent/driver/sim"
	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func TestMonitorModeRefusals(t *testing.T) {
	s := newSim(t, t.TempDir())
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"driver that does not plan", Config{Driver: &fakeDriver{}, Monitor: true}, "monitor mode (--apply=false) needs a driver that plans; driver fake does not"},
		{"auto-correct", Config{Driver: s, Monitor: true, AutoCorrect: true}, "--auto-correct changes the host, monitor mode (--apply=false) changes nothing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Host, tc.cfg.Conn, tc.cfg.StateDir = "fe01.contoso.com", &downConn{}, t.TempDir()
			if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func newSim(t *testing.T, dir string) *sim.Sim {
	t.Helper()
	s, err := sim.New(sim.Config{Host: "fe01.contoso.com", StateDir: filepath.Join(dir, "host"), SharedDir: filepath.Join(dir, "shared"),
		Products: []*pb.DetectedProduct{{Product: pb.Product_PRODUCT_LYNC, Version: "2015"}}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMonitorPlansAndChangesNothing runs one Desired through an agent in
// monitor mode against a sim whose pool is installed but has no partner:
// the report carries the one New-CsPartnerApplication it would run, the
// Nack's first item says so, and neither the product's stores nor the
// agent's own state change.
func TestMonitorPlansAndChangesNothing(t *testing.T) {
	t.Run("planner", func(t *testing.T) { testMonitor(t, func(s *sim.Sim) driver.Driver { return s }) })
	// A driver that only reads and executes is planned by the shared
	// reconciler, which executes nothing in monitor mode.
	t.Run("backend only", func(t *testing.T) {
		testMonitor(t, func(s *sim.Sim) driver.Driver {
			return struct {
				driver.Driver
				reconcile.Backend
			}{s, s}
		})
	})
}

func testMonitor(t *testing.T, wrap func(*sim.Sim) driver.Driver) {
	dir := t.TempDir()
	s := newSim(t, dir)
	cfg := &pb.HostConfig{Host: "fe01.contoso.com", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ProductVersion: "2015",
		DeploymentHosts: []string{"fe01.contoso.com"}, ServiceName: products.LyncID, DefaultSipDomain: "contoso.com",
		Endpoint: "pool01.contoso.com", MetadataUrl: "https://pool01.contoso.com/metadata/json/1", Primary: true,
		TokenIssuer: &pb.TokenIssuer{Source: &pb.TokenIssuer_Existing{Existing: "Default"}}}
	// Installed and configured by hand, without partners.
	_ = s.Apply(context.Background(), cfg, nil)
	before := readTree(t, dir)

	agentDir := t.TempDir()
	drv := wrap(s)
	if _, ok := drv.(Planner); ok != (drv == driver.Driver(s)) {
		t.Fatalf("the wrapped driver %T is a Planner: %v", drv, ok)
	}
	a, err := New(Config{Host: cfg.GetHost(), Conn: &downConn{}, Driver: drv, StateDir: agentDir, Monitor: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	want := cfg
	want.Partners = []*pb.Partner{{Name: "microsoft.exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE,
		ApplicationIdentifier: products.ExchangeID, MetadataUrl: "https://autodiscover.contoso.com/autodiscover/metadata/json/1",
		TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true}}
	o, errs := a.process(context.Background(), &pb.Desired{Version: 7, Nonce: "n1", Hash: "h7", Config: want}, true)
	if o != monitored {
		t.Errorf("outcome %v, want monitored", o)
	}
	if len(errs) == 0 || errs[0].GetItem() != ItemMonitor || errs[0].GetMessage() != "1 operation planned, nothing applied (monitor mode, --apply=false)" {
		t.Errorf("monitor Nack errors %v, want the monitor item first, counting 1 operation", errs)
	}
	rep := a.last
	if !rep.GetMonitor() {
		t.Error("the report does not say monitor mode")
	}
	plan := rep.GetPlan()
	if len(plan) != 1 || plan[0].GetCommand() != "New-CsPartnerApplication -Identity 'microsoft.exchange' -ApplicationTrustLevel Full -MetadataUrl 'https://autodiscover.contoso.com/autodiscover/metadata/json/1'" ||
		plan[0].GetItem() != "partner/microsoft.exchange" || !plan[0].GetPrimaryOnly() {
		t.Errorf("plan %v, want the one New-CsPartnerApplication", plan)
	}
	after := readTree(t, dir)
	if len(after) != len(before) {
		t.Errorf("store files: %d before, %d after", len(before), len(after))
	}
	for p, b := range before {
		if after[p] != b {
			t.Errorf("monitor mode changed %s", p)
		}
	}
	if v, h := a.Applied(); v != 0 || h != "" {
		t.Errorf("Applied = %d %q, want nothing committed", v, h)
	}
	if _, err := os.Stat(filepath.Join(agentDir, stateFile)); !os.IsNotExist(err) {
		t.Errorf("monitor mode wrote %s (%v)", stateFile, err)
	}
}

// Both drivers are Planners, so both report their plans.
var (
	_ Planner = (*sim.Sim)(nil)
	_ Planner = (*powershell.Driver)(nil)
)

// TestMonitorDriftCheckPlansTheCorrection: an agent restarted in monitor
// mode on a host that applied its configuration before reports the drift
// of that configuration and the operations correcting it would take, and
// corrects nothing.
func TestMonitorDriftCheckPlansTheCorrection(t *testing.T) {
	dir := t.TempDir()
	s := newSim(t, dir)
	cfg := &pb.HostConfig{Host: "fe01.contoso.com", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ProductVersion: "2015",
		DeploymentHosts: []string{"fe01.contoso.com"}, ServiceName: products.LyncID, DefaultSipDomain: "contoso.com",
		Endpoint: "pool01.contoso.com", MetadataUrl: "https://pool01.contoso.com/metadata/json/1", Primary: true,
		TokenIssuer: &pb.TokenIssuer{Source: &pb.TokenIssuer_Existing{Existing: "Default"}},
		Partners: []*pb.Partner{{Name: "microsoft.exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE,
			ApplicationIdentifier: products.ExchangeID, MetadataUrl: "https://autodiscover.contoso.com/autodiscover/metadata/json/1",
			TrustLevel: pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true}}}
	_ = s.Apply(context.Background(), cfg, nil)
	agentDir := t.TempDir()
	if _, err := saveState(agentDir, 3, "h3", cfg); err != nil {
		t.Fatal(err)
	}
	if err := sim.RemovePartner(filepath.Join(dir, "shared"), "pool01", "microsoft.exchange"); err != nil {
		t.Fatal(err)
	}
	before := readTree(t, dir)
	a, err := New(Config{Host: cfg.GetHost(), Conn: &downConn{}, Driver: s, StateDir: agentDir, Monitor: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	a.checkDrift(context.Background())
	rep := a.last
	if d := rep.GetDrift(); len(d) != 1 || d[0].GetItem() != "partner/microsoft.exchange" || d[0].GetCorrected() {
		t.Errorf("drift %v, want the removed partner, uncorrected", d)
	}
	if p := rep.GetPlan(); !rep.GetMonitor() || len(p) != 1 || p[0].GetCmdlet() != "New-CsPartnerApplication" {
		t.Errorf("monitor %v plan %v, want the New-CsPartnerApplication that would correct it", rep.GetMonitor(), p)
	}
	after := readTree(t, dir)
	for p, b := range before {
		if after[p] != b {
			t.Errorf("the drift check in monitor mode changed %s", p)
		}
	}
	if v, h := a.Applied(); v != 3 || h != "h3" {
		t.Errorf("Applied = %d %q, want the state it had", v, h)
	}
}
