package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"

	"github.com/s2strust/s2strust/agent/config"
	"github.com/s2strust/s2strust/agent/driver/sim"
	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/version"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestInspectCommand runs `s2s-agent inspect` as an administrator would on
// a simulated Exchange server, in both output formats.
func TestInspectCommand(t *testing.T) {
	dir := t.TempDir()
	state, shared := filepath.Join(dir, "state"), filepath.Join(dir, "shared")
	s, err := sim.New(sim.Config{Host: "ex01.contoso.com", StateDir: filepath.Join(state, "sim"), SharedDir: shared,
		Products: []*pb.DetectedProduct{{Product: pb.Product_PRODUCT_EXCHANGE, Version: "2019"}}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &pb.HostConfig{Host: "ex01.contoso.com", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ProductVersion: "2019",
		DeploymentHosts: []string{"ex01.contoso.com"}, ServiceName: products.ExchangeID, Endpoint: "autodiscover.contoso.com",
		MetadataUrl: "https://autodiscover.contoso.com/autodiscover/metadata/json/1", Primary: true}
	if errs := s.Apply(context.Background(), cfg, nil); len(errs) > 0 {
		t.Fatalf("apply: %v", errs)
	}
	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		root := newRoot()
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append([]string{"inspect", "--host", "ex01.contoso.com", "--state-dir", state, "--sim-dir", shared,
			"--sim-product", "exchange:2019", "--deployment", "exchange"}, args...))
		if err := root.ExecuteContext(context.Background()); err != nil {
			t.Fatalf("s2s-agent inspect %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	table := run()
	for _, want := range []string{"PS> Get-PartnerApplication | Format-List\n\n(nothing)\n", "PS> Get-AuthConfig | Format-List\n\nCurrentCertificateThumbprint  : ",
		"ServiceName                   : " + products.ExchangeID + "\n", "PS> Get-ExchangeCertificate | Format-List\n"} {
		if !strings.Contains(table, want) {
			t.Errorf("inspect lacks %q:\n%s", want, table)
		}
	}
	// The service's agent.yaml finds the host as well; its other keys are no error.
	yml := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(yml, []byte("host: ex01.contoso.com\ncontroller: controller.contoso.com:7443\nstate-dir: "+state+
		"\nsim-dir: "+shared+"\nsim-product: [exchange:2019]\napply: false\ndrift-interval: 5m\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out2 bytes.Buffer
	root := newRoot()
	root.SetOut(&out2)
	root.SetErr(&out2)
	root.SetArgs([]string{"inspect", "--config", yml, "--deployment", "exchange"})
	if err := root.ExecuteContext(context.Background()); err != nil || out2.String() != table {
		t.Errorf("inspect --config: %v\n%s\nwant the same as with flags:\n%s", err, out2.String(), table)
	}
	var doc struct {
		Product  string
		Sections []struct{ Command string }
	}
	out := run("-o", "json")
	if err := json.Unmarshal([]byte(out), &doc); err != nil || doc.Product != "exchange" || len(doc.Sections) != 3 || doc.Sections[1].Command != "Get-AuthConfig | Format-List" {
		t.Errorf("inspect -o json: %+v (%v)\n%s", doc, err, out)
	}
}

// TestRunApplyFalseIsMonitorMode checks the flag's wiring: --apply=false
// is monitor mode, which refuses --auto-correct before it connects.
func TestRunApplyFalseIsMonitorMode(t *testing.T) {
	var out bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"run", "--host", "fe01.contoso.com", "--insecure", "--controller", "127.0.0.1:1", "--state-dir", t.TempDir(),
		"--sim-product", "lync:2015", "--apply=false", "--auto-correct"})
	err := root.ExecuteContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), "monitor mode (--apply=false) changes nothing: choose one") {
		t.Errorf("run --apply=false --auto-correct = %v, want the refusal naming both flags", err)
	}
}

// TestRunRefusesNegativeProbeInterval: a negative --probe-interval stops
// the agent before it connects, naming the value.
func TestRunRefusesNegativeProbeInterval(t *testing.T) {
	var out bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"run", "--host", "fe01.contoso.com", "--insecure", "--controller", "127.0.0.1:1", "--state-dir", t.TempDir(),
		"--sim-product", "lync:2015", "--probe-interval", "-30s"})
	err := root.ExecuteContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), "probe interval -30s is negative") {
		t.Errorf("run --probe-interval -30s = %v, want the refusal naming the value", err)
	}
}

// TestWindowsAgentYAML keeps the MSI's agent.yaml in step with the run
// command's flags: every key it sets is a flag, and every value parses.
func TestWindowsAgentYAML(t *testing.T) {
	run, _, err := newRoot().Find([]string{"run"})
	if err != nil {
		t.Fatal(err)
	}
	if err := config.ApplyFile(run.Flags(), "../deploy/windows/agent.yaml"); err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]string{"driver": "powershell", "state-dir": `C:\ProgramData\s2strust\state`, "drift-interval": "5m0s", "probe-interval": "1m0s", "apply": "false"} {
		if got := run.Flags().Lookup(flag).Value.String(); got != want {
			t.Errorf("--%s from agent.yaml = %q, want %q", flag, got, want)
		}
	}
}

// TestVersionOutput: version prints one line by default, the same fields
// as JSON and YAML with -o, and refuses another format naming it and the
// accepted ones.
func TestVersionOutput(t *testing.T) {
	exec := func(args ...string) (string, error) {
		var out bytes.Buffer
		root := newRoot()
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(args)
		err := root.Execute()
		return out.String(), err
	}
	want := version.Get("s2s-agent")
	if out, err := exec("version"); err != nil || out != want.String()+"\n" {
		t.Errorf("version: %q, %v; want %q", out, err, want.String())
	}
	for _, f := range []string{"json", "yaml"} {
		out, err := exec("version", "-o", f)
		if err != nil {
			t.Fatalf("version -o %s: %v", f, err)
		}
		var got version.Info
		if f == "json" {
			err = json.Unmarshal([]byte(out), &got)
		} else {
			var m map[string]any
			if err = yaml.Unmarshal([]byte(out), &m); err == nil {
				got = version.Info{Name: m["name"].(string), Release: m["release"].(string), Go: m["go"].(string)}
				got.Commit, _ = m["commit"].(string)
				got.Modified, _ = m["modified"].(bool)
			}
		}
		if err != nil || got != want {
			t.Errorf("version -o %s: %+v (%v), want %+v:\n%s", f, got, err, want, out)
		}
	}
	out, err := exec("version", "-o", "xml")
	if err == nil || !strings.Contains(err.Error(), `-o "xml": want table, json or yaml`) || strings.Contains(out, "s2s-agent 0") {
		t.Errorf("version -o xml: %v, want refused naming the format; printed %q", err, out)
	}
}
