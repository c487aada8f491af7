package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestDiscoverReproducesTheEstate checks brownfield discovery on a
// converged fleet: fed back to apply --dry-run, discover's topology plans
// no change; and, as an estate is adopted, with agents newly installed in
// monitor mode and a topology that names only the deployments and their
// hosts, discover finds from the agents' reports the trusts, realm, token
// issuer and autodiscover URL the estate has, compiling to exactly what
// the full topology does.
func TestDiscoverReproducesTheEstate(t *testing.T) {
	f := startFleet(t, examples.Contoso, agentOpts{})
	rev := f.apply(examples.Contoso)
	f.waitConverged(rev)
	f.waitEdges("every edge to pass", func(_ string, e *pb.TrustEdge) bool { return e.GetOk() })

	discovered := f.discover(func(h *pb.Host, r *pb.StatusReport) bool { return r.GetAppliedVersion() == rev })
	file := filepath.Join(t.TempDir(), "discovered.yaml")
	if err := os.WriteFile(file, discovered, 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := f.cli("apply", "-f", file, "--dry-run")
	if err != nil {
		t.Fatalf("apply --dry-run of the discovered topology: %v\n%s\ntopology:\n%s", err, out, discovered)
	}
	if !strings.Contains(out, "0 of 5 hosts change\n") {
		t.Errorf("the discovered topology plans changes:\n%s\ntopology:\n%s", out, discovered)
	}

	// The skeleton an administrator starts from: no trusts, no realm, no
	// issuer, no autodiscover URL. Applied, it changes nothing on the hosts.
	sk, err := topology.Load("contoso.yaml", examples.Contoso)
	if err != nil {
		t.Fatal(err)
	}
	sk.Realm, sk.Trusts = "", []topology.Trust{}
	for i := range sk.Deployments {
		sk.Deployments[i].Realm, sk.Deployments[i].TokenIssuer, sk.Deployments[i].ExchangeAutodiscoverURL = "", nil, ""
	}
	skeleton, err := sk.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	for _, absent := range []string{"oauth-2026", `"realm"`, "autodiscover.svc", `"from"`} {
		if bytes.Contains(skeleton, []byte(absent)) {
			t.Fatalf("the skeleton still holds %s:\n%s", absent, skeleton)
		}
	}
	for h, a := range f.agents {
		a.stop()
		if err := os.Remove(filepath.Join(a.stateDir, "agent-state.json")); err != nil {
			t.Fatal(err)
		}
		f.agents[h] = startAgent(t, f.c, h, a.product, a.stateDir, a.simDir, agentOpts{network: f.network, monitor: true})
	}
	rev2 := f.apply(skeleton)
	discovered = f.discover(func(h *pb.Host, r *pb.StatusReport) bool {
		return r.GetMonitor() && h.GetLastResult().GetMonitor() && h.GetLastResult().GetVersion() == rev2
	})
	got, err := topology.Load("discovered.yaml", discovered)
	if err != nil {
		t.Fatalf("discovered topology: %v\n%s", err, discovered)
	}
	want, err := topology.Load("contoso.yaml", examples.Contoso)
	if err != nil {
		t.Fatal(err)
	}
	gotCfgs, err := topology.Compile(got)
	if err != nil {
		t.Fatal(err)
	}
	wantCfgs, _ := topology.Compile(want)
	if len(gotCfgs) != len(wantCfgs) {
		t.Fatalf("discovered %d hosts, want %d", len(gotCfgs), len(wantCfgs))
	}
	for i := range wantCfgs {
		if !proto.Equal(gotCfgs[i], wantCfgs[i]) {
			t.Errorf("host %s: discovered\n%v\nwant\n%v", wantCfgs[i].GetHost(), gotCfgs[i], wantCfgs[i])
		}
	}
	if len(got.Trusts) != 5 {
		t.Errorf("discovered %d trusts from the skeleton, want contoso's 5:\n%s", len(got.Trusts), discovered)
	}
}

// discover waits until every host is connected and ready says its report
// is the one to discover from, runs s2s-controller discover and returns
// the topology it wrote, failing on conflicts.
func (f *fleet) discover(ready func(*pb.Host, *pb.StatusReport) bool) []byte {
	f.t.Helper()
	fleetAPI := pb.NewFleetServiceClient(f.conn)
	waitFor(f.t, waitTimeout, "every host to report", func() (bool, string) {
		hosts, err := fleetAPI.ListHosts(context.Background(), &pb.ListHostsRequest{})
		if err != nil {
			return false, err.Error()
		}
		for _, h := range hosts.GetHosts() {
			got, err := fleetAPI.GetHost(context.Background(), &pb.GetHostRequest{Host: h.GetHost()})
			if err != nil {
				return false, err.Error()
			}
			if !h.GetConnected() || got.GetStatus() == nil || !ready(got.GetHost(), got.GetStatus()) {
				return false, fmt.Sprintf("%s: connected %v, last result %v, report applied %d monitor %v", h.GetHost(), h.GetConnected(),
					got.GetHost().GetLastResult(), got.GetStatus().GetAppliedVersion(), got.GetStatus().GetMonitor())
			}
		}
		return true, ""
	})
	out, errOut, err := f.cli("discover")
	if err != nil || strings.Contains(errOut, "conflict") {
		f.t.Fatalf("discover: %v\nstderr:\n%s\nstdout:\n%s", err, errOut, out)
	}
	if !bytes.HasPrefix([]byte(out), []byte("# discovered from the reports of 5 of 5 hosts; 0 conflicts\n")) {
		f.t.Errorf("discover's header:\n%s", out)
	}
	return []byte(out)
}
