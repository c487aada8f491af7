package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/s2strust/s2strust/agent/driver/sim"
	"github.com/s2strust/s2strust/controller/cmd"
	"github.com/s2strust/s2strust/deploy/examples"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// cli runs one s2s-controller admin command against the fleet's
// controller, as an operator would, and returns its standard output and
// standard error.
func (f *fleet) cli(args ...string) (stdout, stderr string, err error) {
	f.t.Helper()
	var out, errOut bytes.Buffer
	root := cmd.NewRoot(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"--data-dir", f.c.dir, "--controller", f.c.addr}, args...))
	err = root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// simFiles reads every file of the simulated products: the deployment
// stores every host of a deployment shares and each host's own store with
// its keys.
func (f *fleet) simFiles() map[string]string {
	f.t.Helper()
	files := map[string]string{}
	read := func(root string) {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			files[p] = string(b)
			return err
		})
		if err != nil {
			f.t.Fatal(err)
		}
	}
	read(filepath.Join(f.dir, "sim"))
	for _, a := range f.agents {
		read(filepath.Join(a.stateDir, "sim"))
	}
	return files
}

// TestMonitorModeReportsThePlanAndChangesNothing is the read-only first
// contact: agents newly installed on configured hosts, with
// --apply=false, report the exact cmdlets they would run, the controller
// shows them as monitor-only, and not one byte of the products' stores
// changes. Restarted to apply, the same agents receive the configuration
// and converge.
func TestMonitorModeReportsThePlanAndChangesNothing(t *testing.T) {
	t.Parallel()
	f := startFleet(t, examples.Contoso, agentOpts{})
	rev := f.apply(examples.Contoso)
	f.waitConverged(rev)

	// The estate as an administrator hands it over: Exchange's partner
	// application gone from the pool, and no agent has ever run here.
	for _, a := range f.agents {
		a.stop()
		if err := os.Remove(filepath.Join(a.stateDir, "agent-state.json")); err != nil {
			t.Fatal(err)
		}
	}
	if err := sim.RemovePartner(filepath.Join(f.dir, "sim"), "pool01", "microsoft.exchange"); err != nil {
		t.Fatal(err)
	}
	before := f.simFiles()
	for h, a := range f.agents {
		f.agents[h] = startAgent(t, f.c, h, a.product, a.stateDir, a.simDir, agentOpts{network: f.network, monitor: true})
	}

	fleetAPI := pb.NewFleetServiceClient(f.conn)
	var primary string
	waitFor(t, waitTimeout, "every host to answer in monitor mode and pool01's primary to plan the partner", func() (bool, string) {
		hosts, err := fleetAPI.ListHosts(context.Background(), &pb.ListHostsRequest{})
		if err != nil {
			return false, err.Error()
		}
		for _, h := range hosts.GetHosts() {
			lr := h.GetLastResult()
			if lr.GetKind() != pb.ResultKind_RESULT_KIND_NACK || !lr.GetMonitor() || lr.GetVersion() != rev ||
				len(lr.GetErrors()) == 0 || lr.GetErrors()[0].GetItem() != "monitor" {
				return false, fmt.Sprintf("%s: last result %v", h.GetHost(), lr)
			}
			if h.GetAppliedVersion() != 0 {
				return false, fmt.Sprintf("%s: applied %d", h.GetHost(), h.GetAppliedVersion())
			}
			if h.GetPrimary() && h.GetDeployment() == "pool01" {
				primary = h.GetHost()
			}
		}
		if primary == "" {
			return false, "pool01 has no primary"
		}
		got, err := fleetAPI.GetHost(context.Background(), &pb.GetHostRequest{Host: primary})
		if err != nil {
			return false, err.Error()
		}
		rep := got.GetStatus()
		if !rep.GetMonitor() || len(rep.GetPlan()) != 1 || rep.GetPlan()[0].GetCmdlet() != "New-CsPartnerApplication" {
			return false, fmt.Sprintf("%s: monitor %v plan %v", primary, rep.GetMonitor(), rep.GetPlan())
		}
		return true, ""
	})

	out, _, err := f.cli("status", "--plan", "--host", primary)
	if err != nil {
		t.Fatalf("status --plan --host %s: %v\n%s", primary, err, out)
	}
	want := "New-CsPartnerApplication -Identity 'microsoft.exchange' -ApplicationTrustLevel Full -MetadataUrl 'https://autodiscover.contoso.com/autodiscover/metadata/json/1'"
	for _, w := range []string{"=== " + primary + " (pool01, ", "primary) MONITOR MODE: nothing applied\n", "1 operation it would execute:\n",
		"partner/microsoft.exchange", "primary-only", want, "not registered"} {
		if !strings.Contains(out, w) {
			t.Errorf("status --plan --host %s lacks %q:\n%s", primary, w, out)
		}
	}
	if strings.Contains(out, "=== ex01") {
		t.Errorf("status --plan --host %s shows other hosts:\n%s", primary, out)
	}
	t.Logf("status --plan:\n%s", out)
	out, _, err = f.cli("get", "hosts")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "NACK") || !strings.Contains(out, fmt.Sprintf("monitor v%d: 1 operation planned, nothing applied (monitor mode", rev)) {
		t.Errorf("get hosts must show monitor hosts as monitor-only, not as failing:\n%s", out)
	}

	for _, a := range f.agents {
		a.stop()
	}
	after := f.simFiles()
	if len(after) != len(before) {
		t.Errorf("monitor mode changed the set of store files: %d before, %d after", len(before), len(after))
	}
	for p, b := range before {
		if after[p] != b {
			t.Errorf("monitor mode changed %s", p)
		}
	}
	for _, a := range f.agents {
		if _, err := os.Stat(filepath.Join(a.stateDir, "agent-state.json")); !os.IsNotExist(err) {
			t.Errorf("monitor mode committed a configuration on %s (%v)", a.host, err)
		}
	}

	// Told to apply, the same agents get the configuration they NACKed in
	// monitor mode and converge; pool01 registers Exchange again.
	for h, a := range f.agents {
		f.agents[h] = startAgent(t, f.c, h, a.product, a.stateDir, a.simDir, agentOpts{network: f.network})
	}
	f.waitConverged(rev)
	// The primary may have moved with the restarts: the Front End that
	// registered the partner reports the operation it executed.
	applier := ""
	for _, h := range []string{"fe01.contoso.com", "fe02.contoso.com"} {
		got, err := fleetAPI.GetHost(context.Background(), &pb.GetHostRequest{Host: h})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetStatus().GetMonitor() {
			t.Errorf("%s still reports monitor mode after a restart to apply", h)
		}
		if plan := got.GetStatus().GetPlan(); len(plan) == 1 && plan[0].GetCmdlet() == "New-CsPartnerApplication" {
			applier = h
		}
	}
	if applier == "" {
		t.Fatal("no Front End reports the New-CsPartnerApplication it executed")
	}
	out, _, err = f.cli("status", "--plan", "--host", applier)
	if err != nil {
		t.Fatalf("status --plan --host %s: %v\n%s", applier, err, out)
	}
	if !strings.Contains(out, ") applying\n1 operation of its last apply") || !strings.Contains(out, want) {
		t.Errorf("status --plan --host %s after applying:\n%s", applier, out)
	}
}
