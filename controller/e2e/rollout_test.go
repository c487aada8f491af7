package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/convergence"
	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/internal/simnet"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// fleetDoc is a topology of three deployments of ten hosts each; marker
// names a stale partner of pool01 and exchange, so each marker is a new
// revision that changes their hosts' configurations.
func fleetDoc(marker string) []byte { return fleetDocN(marker, 10) }

// fleetDocN is fleetDoc with n hosts per deployment.
func fleetDocN(marker string, n int) []byte {
	hosts := func(prefix string) string {
		var hs []string
		for i := 1; i <= n; i++ {
			hs = append(hs, fmt.Sprintf("%s%02d.contoso.com", prefix, i))
		}
		return "[" + strings.Join(hs, ", ") + "]"
	}
	return fmt.Appendf(nil, `apiVersion: s2strust/v1
kind: TrustTopology
name: fleet
sipDomains: {default: contoso.com}
deployments:
  - {name: pool01, product: lync, version: "2015", poolFqdn: pool01.contoso.com, hosts: %s,
     tokenIssuer: {existing: Default}, removePartners: [%s],
     exchangeAutodiscoverUrl: https://autodiscover.contoso.com/autodiscover/autodiscover.svc}
  - {name: exchange, product: exchange, version: "2019", autodiscoverFqdn: autodiscover.contoso.com, hosts: %s, removePartners: [%s]}
  - {name: sharepoint, product: sharepoint, version: "2019", webAppUrl: https://sp.contoso.com, hosts: %s}
trusts:
  - {from: exchange, to: pool01}
  - {from: pool01, to: exchange}
  - {from: pool01, to: sharepoint}
`, hosts("fe"), marker, hosts("ex"), marker, hosts("sp"))
}

// leaderOf returns the replica id holding the election: the oldest key
// under the election prefix.
func leaderOf(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	resp, err := cli.Get(context.Background(), "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var best *struct {
		rev int64
		id  string
	}
	for _, kv := range resp.Kvs {
		if !strings.Contains(string(kv.Key), "/election/") {
			continue
		}
		if best == nil || kv.CreateRevision < best.rev {
			best = &struct {
				rev int64
				id  string
			}{kv.CreateRevision, string(kv.Value)}
		}
	}
	if best == nil {
		return ""
	}
	return best.id
}

// TestRolloutAcrossReplicas is the acceptance test of rollouts: three
// controller replicas on one etcd cluster and 30 sim agents in three
// deployments. A rollout goes canary, then two waves; a failing canary
// stops the next one after wave 0 with its cause; undo brings every host
// back; stopping the leader mid-rollout hands it over to another replica,
// which finishes it without re-sending anything to hosts already done.
func TestRolloutAcrossReplicas(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	etcd, err := etcdembed.Start(ctx, filepath.Join(dir, "etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	key := filepath.Join(dir, "secret.key")
	replica := func(name string) *controller {
		return startControllerWith(t, filepath.Join(dir, name), "127.0.0.1:0", func(c *app.ServeConfig) {
			c.EtcdEndpoints = []string{etcd.Endpoint()}
			c.SecretKeyFile = key
			c.ReplicaID = name
			c.ElectionTTL = 2 * time.Second
			c.RolloutInterval = 50 * time.Millisecond
		})
	}
	a := replica("a")
	waitFor(t, waitTimeout, "replica a to lead", func() (bool, string) { l := leaderOf(t, cli); return l == "a", "leader " + l })
	b := replica("b")
	replica("c")
	connB := b.admin()
	topo, fleet, rollouts := pb.NewTopologyServiceClient(connB), pb.NewFleetServiceClient(connB), pb.NewRolloutServiceClient(connB)

	first, err := topo.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: fleetDoc("old1"), Filename: "fleet.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	if first.GetRollout() != "" {
		t.Errorf("the first revision started %s; it goes to every host at once", first.GetRollout())
	}
	var failExchange atomic.Bool
	fail := func(cfg *pb.HostConfig) []*pb.ItemError {
		if failExchange.Load() && cfg.GetProduct() == pb.Product_PRODUCT_EXCHANGE {
			return []*pb.ItemError{{Item: "auth-config", Message: "injected failure"}}
		}
		return nil
	}
	top, err := topology.Load("fleet.yaml", fleetDoc("old1"))
	if err != nil {
		t.Fatal(err)
	}
	network, err := simnet.New(top)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(network.Close)
	agents := map[string]*agent{}
	for _, d := range []struct{ prefix, product string }{{"fe", "lync:2015"}, {"ex", "exchange:2019"}, {"sp", "sharepoint:2019"}} {
		for i := 1; i <= 10; i++ {
			host := fmt.Sprintf("%s%02d.contoso.com", d.prefix, i)
			agents[host] = startAgent(t, b, host, d.product, filepath.Join(dir, "agents", host), filepath.Join(dir, "shared"), agentOpts{fail: fail, network: network})
		}
	}
	waitFor(t, waitTimeout, "all 30 hosts on the first revision", func() (bool, string) { return converged(ctx, fleet, first.GetRevision()) })

	strategy := &pb.RolloutStrategy{Waves: []*pb.RolloutWaveSpec{{Percent: 50}}, MaxUnavailable: 6, BakeTime: durationpb.New(100 * time.Millisecond)}
	apply := func(marker string, s *pb.RolloutStrategy) *pb.ApplyTopologyResponse {
		t.Helper()
		resp, err := topo.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: fleetDoc(marker), Filename: "fleet.yaml", Rollout: s})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetRollout() == "" {
			t.Fatalf("apply of %s started no rollout", marker)
		}
		return resp
	}
	get := func(name string) *pb.Rollout {
		t.Helper()
		r, err := rollouts.GetRollout(ctx, &pb.GetRolloutRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetRollout()
	}
	waitState := func(name string, want pb.RolloutState) *pb.Rollout {
		t.Helper()
		var r *pb.Rollout
		waitFor(t, waitTimeout, name+" "+want.String(), func() (bool, string) {
			r = get(name)
			return r.GetState() == want, fmt.Sprintf("%v %q wave %d", r.GetState(), r.GetReason(), r.GetCurrentWave())
		})
		return r
	}

	// 1. Canary and two waves.
	second := apply("old2", strategy)
	r := waitState(second.GetRollout(), pb.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	var sizes []int
	for _, w := range r.GetWaves() {
		sizes = append(sizes, len(w.GetHosts()))
		for _, h := range w.GetHosts() {
			if h.GetState() != pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED {
				t.Errorf("%s: %s in %s, want passed", h.GetHost(), h.GetState(), w.GetTitle())
			}
		}
	}
	if fmt.Sprint(sizes) != "[3 15 12]" || r.GetWaves()[0].GetTitle() != "canary" {
		t.Errorf("waves %v (first %q), want a canary of 3 then 15 and 12", sizes, r.GetWaves()[0].GetTitle())
	}
	for i := 0; i+1 < len(r.GetWaves()); i++ {
		if r.GetWaves()[i+1].GetStartTime().AsTime().Before(r.GetWaves()[i].GetPassedTime().AsTime()) {
			t.Errorf("wave %d started before wave %d passed", i+1, i)
		}
	}
	waitFor(t, waitTimeout, "all hosts on the second revision", func() (bool, string) { return converged(ctx, fleet, second.GetRevision()) })

	// 2. A failing canary stops the rollout after wave 0, naming host and cause.
	failExchange.Store(true)
	third := apply("old3", strategy)
	r = waitState(third.GetRollout(), pb.RolloutState_ROLLOUT_STATE_PAUSED)
	canary := ""
	for _, h := range r.GetWaves()[0].GetHosts() {
		if strings.HasPrefix(h.GetHost(), "ex") {
			canary = h.GetHost()
		}
	}
	for _, want := range []string{"paused: failure threshold reached", canary + ": NACK of revision", "injected failure"} {
		if !strings.Contains(r.GetReason(), want) {
			t.Errorf("reason %q lacks %q", r.GetReason(), want)
		}
	}
	if r.GetCurrentWave() != 0 {
		t.Errorf("stopped in wave %d, want 0", r.GetCurrentWave())
	}
	hosts, err := fleet.ListHosts(ctx, &pb.ListHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	canaries := map[string]bool{}
	for _, h := range r.GetWaves()[0].GetHosts() {
		canaries[h.GetHost()] = true
	}
	for _, h := range hosts.GetHosts() {
		if !canaries[h.GetHost()] && h.GetDesiredVersion() != second.GetRevision() {
			t.Errorf("%s outside the canary wave targets revision %d, want %d", h.GetHost(), h.GetDesiredVersion(), second.GetRevision())
		}
	}
	// Resuming a finished rollout, undoing an older one: refused.
	if _, err := rollouts.UndoRollout(ctx, &pb.UndoRolloutRequest{Name: second.GetRollout()}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "is newer") {
		t.Errorf("undo of an older rollout: %v", err)
	}
	if _, err := rollouts.PauseRollout(ctx, &pb.PauseRolloutRequest{Name: second.GetRollout()}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "succeeded") {
		t.Errorf("pause of a succeeded rollout: %v", err)
	}
	if _, err := rollouts.GetRollout(ctx, &pb.GetRolloutRequest{Name: "rollout/1"}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"rollout/1"`) {
		t.Errorf("a malformed name: %v", err)
	}
	// Bad strategies are refused naming field and value, and store nothing.
	before := mustHosts(t, fleet)
	for _, bad := range []*pb.RolloutStrategy{
		{Waves: []*pb.RolloutWaveSpec{{Hosts: []string{"nope.contoso.com"}}}},
		{Canary: proto.Bool(false)},
	} {
		_, err := topo.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: fleetDoc("old4"), Rollout: bad})
		if status.Code(err) != codes.InvalidArgument || !(strings.Contains(err.Error(), "nope.contoso.com") || strings.Contains(err.Error(), "rollout.maxUnavailable")) {
			t.Errorf("apply with strategy %v: %v, want INVALID_ARGUMENT naming the field and value", bad, err)
		}
	}
	cur0, err := topo.GetTopology(ctx, &pb.GetTopologyRequest{})
	if err != nil || cur0.GetTopology().GetRevision() != third.GetRevision() || len(mustHosts(t, fleet)) != len(before) {
		t.Errorf("a refused apply changed the current revision: %v, %v", cur0.GetTopology().GetRevision(), err)
	}

	// 3. Undo brings every host back.
	failExchange.Store(false)
	undo, err := rollouts.UndoRollout(ctx, &pb.UndoRolloutRequest{Name: third.GetRollout()})
	if err != nil {
		t.Fatal(err)
	}
	if get(third.GetRollout()).GetState() != pb.RolloutState_ROLLOUT_STATE_ABORTED {
		t.Errorf("the undone rollout is %v, want aborted", get(third.GetRollout()).GetState())
	}
	r = waitState(undo.GetRollout().GetName(), pb.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	waitFor(t, waitTimeout, "all hosts back on the second revision's document", func() (bool, string) { return converged(ctx, fleet, r.GetToRevision()) })
	prev, err := topo.GetTopology(ctx, &pb.GetTopologyRequest{Revision: second.GetRevision()})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := topo.GetTopology(ctx, &pb.GetTopologyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if cur.GetTopology().GetHash() != prev.GetTopology().GetHash() || r.GetUndoOf() != third.GetRollout() {
		t.Errorf("after undo the current document is %s (undo of %q), want revision %d's %s", cur.GetTopology().GetHash(), r.GetUndoOf(), second.GetRevision(), prev.GetTopology().GetHash())
	}

	// 4. The leader stops mid-rollout: another replica finishes it, and
	// hosts done before the handover get nothing more.
	slow := &pb.RolloutStrategy{Waves: []*pb.RolloutWaveSpec{{Percent: 50}}, MaxUnavailable: 2, BakeTime: durationpb.New(300 * time.Millisecond)}
	fifth := apply("old5", slow)
	var done map[string]int64
	waitFor(t, waitTimeout, "wave 1 under way", func() (bool, string) {
		r := get(fifth.GetRollout())
		if r.GetCurrentWave() < 1 {
			return false, fmt.Sprintf("wave %d", r.GetCurrentWave())
		}
		done = map[string]int64{}
		for _, w := range r.GetWaves() {
			for _, h := range w.GetHosts() {
				if h.GetState() == pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED {
					done[h.GetHost()] = agents[h.GetHost()].received.Load()
				}
			}
		}
		return len(done) >= 5, fmt.Sprintf("%d passed", len(done))
	})
	if get(fifth.GetRollout()).GetState() == pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatal("the rollout finished before the leader could be stopped")
	}
	// A watch of the rollout follows it to its end across the handover.
	watch, err := rollouts.WatchRollout(ctx, &pb.WatchRolloutRequest{Name: fifth.GetRollout()})
	if err != nil {
		t.Fatal(err)
	}
	watched := make(chan []*pb.Rollout, 1)
	go func() {
		var seen []*pb.Rollout
		for {
			m, err := watch.Recv()
			if err != nil {
				watched <- seen
				return
			}
			seen = append(seen, m.GetRollout())
		}
	}()
	stoppedAt := time.Now()
	a.stop()
	waitFor(t, waitTimeout, "another replica to lead", func() (bool, string) {
		l := leaderOf(t, cli)
		return l == "b" || l == "c", "leader " + l
	})
	if took := time.Since(stoppedAt); took > 2*time.Second+time.Second {
		t.Errorf("handover took %s, more than the 2s election TTL", took)
	}
	waitState(fifth.GetRollout(), pb.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	waitFor(t, waitTimeout, "all hosts on the fifth revision", func() (bool, string) { return converged(ctx, fleet, fifth.GetRevision()) })
	select {
	case seen := <-watched:
		if len(seen) < 2 || seen[len(seen)-1].GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			t.Errorf("the watch saw %d states (%v); want the rollout's progress ending succeeded", len(seen), seen)
		}
	case <-time.After(waitTimeout):
		t.Error("the watch did not end with the rollout")
	}
	// History pages newest first: rollouts 4, 3 | 2, 1.
	page, err := rollouts.ListRollouts(ctx, &pb.ListRolloutsRequest{PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	page2, err := rollouts.ListRollouts(ctx, &pb.ListRolloutsRequest{PageSize: 2, PageToken: page.GetNextPageToken()})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range append(page.GetRollouts(), page2.GetRollouts()...) {
		names = append(names, r.GetName())
	}
	if fmt.Sprint(names) != "[rollouts/4 rollouts/3 rollouts/2 rollouts/1]" || page2.GetNextPageToken() != "" {
		t.Errorf("history %v (next %q), want rollouts 4 to 1 in two pages", names, page2.GetNextPageToken())
	}
	var resent []string
	for host, n := range done {
		if got := agents[host].received.Load(); got != n {
			resent = append(resent, fmt.Sprintf("%s (%d pushes more)", host, got-n))
		}
	}
	sort.Strings(resent)
	if len(resent) > 0 {
		t.Errorf("hosts done before the handover got pushes after it: %v", resent)
	}
	for _, h := range mustHosts(t, fleet) {
		if !convergence.Converged(h, fifth.GetRevision()) {
			t.Errorf("%s: %s", h.GetHost(), convergence.Why(h, fifth.GetRevision()))
		}
	}
}

func mustHosts(t *testing.T, fleet pb.FleetServiceClient) []*pb.Host {
	t.Helper()
	resp, err := fleet.ListHosts(context.Background(), &pb.ListHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetHosts()
}

// childEnv carries a child controller's configuration (JSON) to the test
// binary re-executed as that controller (see TestMain).
const childEnv = "S2S_E2E_CHILD_CONTROLLER"

// childConfig is what a child controller is started with.
type childConfig struct {
	DataDir, SecretKeyFile, ReplicaID string
	EtcdEndpoints                     []string
	ElectionTTL, RolloutInterval      time.Duration
}

// TestMain runs the tests, or, re-executed with childEnv set, a controller
// in this process until it is killed: a replica a test can SIGKILL, which
// dies without resigning its leadership or revoking its etcd lease.
func TestMain(m *testing.M) {
	if c := os.Getenv(childEnv); c != "" {
		os.Exit(runChildController(c))
	}
	os.Exit(m.Run())
}

func runChildController(config string) int {
	var c childConfig
	if err := json.Unmarshal([]byte(config), &c); err != nil {
		fmt.Fprintf(os.Stderr, "child controller: %s: %v\n", childEnv, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := app.Serve(ctx, app.ServeConfig{DataDir: c.DataDir, Listen: "127.0.0.1:0", EtcdEndpoints: c.EtcdEndpoints, SecretKeyFile: c.SecretKeyFile,
		ReplicaID: c.ReplicaID, ElectionTTL: c.ElectionTTL, RolloutInterval: c.RolloutInterval, PresenceTTL: 10 * time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("component", "controller", "replica", c.ReplicaID),
		Ready:  func(addr string) { fmt.Printf("listening %s\n", addr) }})
	if err != nil {
		fmt.Fprintf(os.Stderr, "child controller: %v\n", err)
		return 1
	}
	return 0
}

// childController is a controller replica running in a child process.
type childController struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

// startChildController re-executes the test binary as a controller
// replica; its log goes into the package's log capture.
func startChildController(t *testing.T, c childConfig) *childController {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	cmd.Stderr = logCapture
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cc := &childController{cmd: cmd, done: make(chan error, 1)}
	addrs := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				addrs <- a
			}
		}
		cc.done <- cmd.Wait()
	}()
	t.Cleanup(cc.kill)
	select {
	case cc.addr = <-addrs:
	case err := <-cc.done:
		cc.done <- err
		t.Fatalf("child controller %s exited before serving: %v", c.ReplicaID, err)
	case <-time.After(60 * time.Second):
		t.Fatalf("child controller %s did not serve within 60s", c.ReplicaID)
	}
	return cc
}

// kill ends the child with SIGKILL: nothing runs after it, no Resign, no
// lease revoked, no stream closed cleanly.
func (c *childController) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Kill()
	<-c.done
}

// TestRolloutSurvivesAKilledLeader kills the leading replica with SIGKILL
// in the middle of a rollout: it does not resign, its election key stays
// until its lease runs out. Another replica takes over within the lease
// TTL and finishes the rollout from its state in etcd, re-sending nothing
// to the hosts already done.
func TestRolloutSurvivesAKilledLeader(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	etcd, err := etcdembed.Start(ctx, filepath.Join(dir, "etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	const ttl = 2 * time.Second
	key := filepath.Join(dir, "secret.key")
	a := startChildController(t, childConfig{DataDir: filepath.Join(dir, "a"), SecretKeyFile: key, ReplicaID: "a",
		EtcdEndpoints: []string{etcd.Endpoint()}, ElectionTTL: ttl, RolloutInterval: 50 * time.Millisecond})
	waitFor(t, waitTimeout, "replica a to lead", func() (bool, string) { l := leaderOf(t, cli); return l == "a", "leader " + l })
	b := startControllerWith(t, filepath.Join(dir, "b"), "127.0.0.1:0", func(c *app.ServeConfig) {
		c.EtcdEndpoints = []string{etcd.Endpoint()}
		c.SecretKeyFile = key
		c.ReplicaID = "b"
		c.ElectionTTL = ttl
		c.RolloutInterval = 50 * time.Millisecond
	})
	conn := b.admin()
	topo, fleet, rollouts := pb.NewTopologyServiceClient(conn), pb.NewFleetServiceClient(conn), pb.NewRolloutServiceClient(conn)
	const perDeployment = 4
	first, err := topo.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: fleetDocN("old1", perDeployment), Filename: "fleet.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	top, err := topology.Load("fleet.yaml", fleetDocN("old1", perDeployment))
	if err != nil {
		t.Fatal(err)
	}
	network, err := simnet.New(top)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(network.Close)
	agents := map[string]*agent{}
	for _, d := range []struct{ prefix, product string }{{"fe", "lync:2015"}, {"ex", "exchange:2019"}, {"sp", "sharepoint:2019"}} {
		for i := 1; i <= perDeployment; i++ {
			host := fmt.Sprintf("%s%02d.contoso.com", d.prefix, i)
			agents[host] = startAgent(t, b, host, d.product, filepath.Join(dir, "agents", host), filepath.Join(dir, "shared"), agentOpts{network: network})
		}
	}
	waitFor(t, waitTimeout, "every host on the first revision", func() (bool, string) { return converged(ctx, fleet, first.GetRevision()) })

	// The canary wave bakes for 3s: the leader is killed while it does.
	second, err := topo.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: fleetDocN("old2", perDeployment), Filename: "fleet.yaml",
		Rollout: &pb.RolloutStrategy{Waves: []*pb.RolloutWaveSpec{{Percent: 50}}, MaxUnavailable: 2, BakeTime: durationpb.New(3 * time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
	get := func() *pb.Rollout {
		t.Helper()
		r, err := rollouts.GetRollout(ctx, &pb.GetRolloutRequest{Name: second.GetRollout()})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetRollout()
	}
	waitFor(t, waitTimeout, "the canary wave to pass", func() (bool, string) {
		r := get()
		return r.GetWaves()[0].GetPassedTime() != nil, fmt.Sprintf("%v wave %d %q", r.GetState(), r.GetCurrentWave(), r.GetReason())
	})
	a.kill()
	killedAt := time.Now()
	// Read at once: until a's lease runs out nobody else leads, so this is
	// the state a left behind.
	r := get()
	if r.GetState() != pb.RolloutState_ROLLOUT_STATE_RUNNING {
		t.Fatalf("the rollout is %v (%s) at the kill, want running", r.GetState(), r.GetReason())
	}
	if l := leaderOf(t, cli); l != "a" {
		t.Fatalf("right after the kill the election is held by %q, want the dead a's key still there (not resigned)", l)
	}
	done := map[string]int64{}
	for _, w := range r.GetWaves() {
		for _, h := range w.GetHosts() {
			if h.GetState() == pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED {
				done[h.GetHost()] = agents[h.GetHost()].received.Load()
			}
		}
	}
	if len(done) < 3 || len(done) == len(agents) {
		t.Fatalf("%d of %d hosts done at the kill, want the canary wave and not all", len(done), len(agents))
	}
	waitFor(t, waitTimeout, "replica b to lead", func() (bool, string) { l := leaderOf(t, cli); return l == "b", "leader " + l })
	if took := time.Since(killedAt); took > ttl+2*time.Second {
		t.Errorf("b took %s to lead after the kill, more than the %s lease TTL (and 2s of slack)", took, ttl)
	}
	waitFor(t, waitTimeout, "the rollout to finish under b", func() (bool, string) {
		r := get()
		return r.GetState() == pb.RolloutState_ROLLOUT_STATE_SUCCEEDED, fmt.Sprintf("%v wave %d %q", r.GetState(), r.GetCurrentWave(), r.GetReason())
	})
	waitFor(t, waitTimeout, "every host on the second revision", func() (bool, string) { return converged(ctx, fleet, second.GetRevision()) })
	var resent []string
	for host, n := range done {
		if got := agents[host].received.Load(); got != n {
			resent = append(resent, fmt.Sprintf("%s (%d pushes more)", host, got-n))
		}
	}
	sort.Strings(resent)
	if len(resent) > 0 {
		t.Errorf("hosts done before the kill got pushes after it: %v", resent)
	}
	for _, w := range get().GetWaves() {
		for _, h := range w.GetHosts() {
			if h.GetState() != pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED || h.GetTargetRevision() != second.GetRevision() {
				t.Errorf("%s: %v at revision %d, want passed at %d", h.GetHost(), h.GetState(), h.GetTargetRevision(), second.GetRevision())
			}
		}
	}
}
