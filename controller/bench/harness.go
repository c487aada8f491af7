package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/s2strust/s2strust/controller/convergence"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/pagetoken"
	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// controllerProc is a controller running in this process.
type controllerProc struct {
	addr   string
	cancel context.CancelFunc
	done   chan error
}

// startController starts a controller on listen and waits until it serves.
func startController(ctx context.Context, dataDir, listen string, log *slog.Logger) (*controllerProc, error) {
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- app.Serve(cctx, app.ServeConfig{DataDir: dataDir, Listen: listen, Logger: log,
			Ready: func(addr string) { ready <- addr }})
	}()
	t := time.NewTimer(2 * time.Minute)
	defer t.Stop()
	select {
	case addr := <-ready:
		return &controllerProc{addr: addr, cancel: cancel, done: done}, nil
	case err := <-done:
		cancel()
		return nil, fmt.Errorf("start the controller in %s: %w", dataDir, err)
	case <-ctx.Done():
		cancel()
		<-done
		return nil, ctx.Err()
	case <-t.C:
		cancel()
		<-done
		return nil, fmt.Errorf("start the controller in %s: not serving after 2m", dataDir)
	}
}

// stop stops the controller and waits for it; safe to call twice.
func (c *controllerProc) stop() error {
	if c == nil || c.cancel == nil {
		return nil
	}
	c.cancel()
	c.cancel = nil
	if err := <-c.done; err != nil {
		return fmt.Errorf("stop the controller: %w", err)
	}
	return nil
}

// harness is a controller with a fleet of simulated agents, both in this
// process, and the admin client that drives them.
type harness struct {
	log     *slog.Logger
	dataDir string
	layout  fleetLayout
	ctrl    *controllerProc
	admin   *grpc.ClientConn
	topo    pb.TopologyServiceClient
	hostsvc pb.FleetServiceClient

	serverTLS *tls.Config   // the controller's, for the floor
	agentTLS  []*tls.Config // one host identity per agent
	agents    *fleet
	rev       uint64 // the revision last applied
	realms    int    // realms applied so far
}

// newHarness starts a controller in dataDir and issues a certificate per
// agent from its development CA.
func newHarness(ctx context.Context, dataDir string, agents, deployments int, log *slog.Logger) (*harness, error) {
	ctrl, err := startController(ctx, dataDir, "127.0.0.1:0", log)
	if err != nil {
		return nil, err
	}
	h := &harness{log: log, dataDir: dataDir, layout: newLayout(agents, deployments), ctrl: ctrl}
	if err := h.init(); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *harness) init() error {
	files := pki.Files{Dir: app.PKIDir(h.dataDir)}
	read := func(path string) ([]byte, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read the controller's development PKI: %w", err)
		}
		return b, nil
	}
	var pem [4][]byte
	for i, p := range []string{files.CACert(), files.CAKey(), files.ServerCert(), files.ServerKey()} {
		b, err := read(p)
		if err != nil {
			return err
		}
		pem[i] = b
	}
	ca, err := pki.LoadCA(pem[0], pem[1])
	if err != nil {
		return fmt.Errorf("load the controller's CA: %w", err)
	}
	if h.serverTLS, err = pki.ServerTLSConfig(pem[2], pem[3], pem[0]); err != nil {
		return err
	}
	if h.agentTLS, err = issueAgents(ca, h.layout.hosts); err != nil {
		return err
	}
	h.admin, err = app.Dial(app.ClientConfig{DataDir: h.dataDir, Addr: h.ctrl.addr})
	if err != nil {
		return err
	}
	h.topo = pb.NewTopologyServiceClient(h.admin)
	h.hostsvc = pb.NewFleetServiceClient(h.admin)
	return nil
}

// issueAgents issues one host certificate per host, on every core.
func issueAgents(ca *pki.CA, hosts []string) ([]*tls.Config, error) {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	out := make([]*tls.Config, len(hosts))
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	now := time.Now()
	for i, host := range hosts {
		g.Go(func() error {
			certPEM, keyPEM, err := ca.IssueHost(host, now, 24*time.Hour)
			if err != nil {
				return fmt.Errorf("issue a certificate for %s: %w", host, err)
			}
			cfg, err := pki.ClientTLSConfig(certPEM, keyPEM, ca.CertPEM(), "127.0.0.1")
			if err != nil {
				return err
			}
			cfg.RootCAs = pool // one pool for all, as one agent process would have
			out[i] = cfg
			return nil
		})
	}
	return out, g.Wait()
}

// maxHostsPerFirstApply bounds the hosts each step of applyFirst adds:
// ApplyTopology answers with the plan of every changed host, and adding a
// host plans each of its deployment's hosts, so adding the whole fleet at
// once overflows the 4 MiB message limit (about 3 KiB per host with 100
// hosts per deployment).
const maxHostsPerFirstApply = 500

// applyFirst applies the first revision, growing the topology deployment by
// deployment in steps small enough for ApplyTopology's answer.
func (h *harness) applyFirst(ctx context.Context) error {
	h.realms = 1
	realm := "r1.bench.example"
	n, hosts := 0, 0
	for n < len(h.layout.deployments) {
		hosts += len(h.layout.deployments[n])
		n++
		if n < len(h.layout.deployments) && hosts+len(h.layout.deployments[n]) <= maxHostsPerFirstApply {
			continue
		}
		resp, err := h.topo.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: h.layout.documentOf(realm, n), Filename: "bench.yaml", Immediate: true})
		if err != nil {
			return fmt.Errorf("apply the benchmark topology's first %d deployments: %w", n, err)
		}
		h.rev = resp.GetRevision()
		hosts = 0
	}
	return nil
}

// applyNext applies the topology with a new realm, which changes every
// host's configuration, at once (immediate: the bench measures the
// fan-out to every host, not a rollout's waves). It returns how long the RPC took.
func (h *harness) applyNext(ctx context.Context) (time.Duration, error) {
	h.realms++
	realm := fmt.Sprintf("r%d.bench.example", h.realms)
	start := time.Now()
	resp, err := h.topo.ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: h.layout.document(realm), Filename: "bench.yaml", Immediate: true})
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("apply the benchmark topology (realm %s): %w", realm, err)
	}
	if !resp.GetChanged() {
		return took, fmt.Errorf("apply the benchmark topology (realm %s): the controller stored no new revision", realm)
	}
	h.rev = resp.GetRevision()
	return took, nil
}

// connect starts the agents against the controller and returns the time
// until every one of them had its first answer.
func (h *harness) connect(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	h.agents = newFleet(pb.AgentService_Sync_FullMethodName, h.layout.hosts, h.agentTLS)
	answered := h.agents.expectAnswers()
	start := time.Now()
	h.agents.start(ctx, h.ctrl.addr)
	if err := answered.wait(ctx, timeout, "agents connected to the controller"); err != nil {
		return 0, err
	}
	return h.agents.lastAnswer().Sub(start), nil
}

// commit applies a change touching every host and returns, per agent,
// the time from the start of ApplyTopology to the agent's ACK of the new
// revision, and how long the ApplyTopology call itself took.
func (h *harness) commit(ctx context.Context, timeout time.Duration) ([]time.Duration, time.Duration, error) {
	acked := h.agents.expectAcks(h.rev)
	origin := time.Now()
	took, err := h.applyNext(ctx)
	if err != nil {
		return nil, took, err
	}
	if err := acked.wait(ctx, timeout, fmt.Sprintf("agents ACKed revision %d", h.rev)); err != nil {
		return nil, took, err
	}
	return h.agents.ackLatencies(origin), took, nil
}

// waitFleet waits until ListHosts shows every host connected and at the
// current revision, applied hash equal to desired; it returns how many
// hosts it last saw so.
func (h *harness) waitFleet(ctx context.Context, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, err := h.hostsCurrent(ctx)
		if err == nil && n == len(h.layout.hosts) {
			return n, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return n, fmt.Errorf("list hosts: %w", err)
			}
			return n, fmt.Errorf("after %s ListHosts shows %d of %d hosts connected at revision %d", timeout, n, len(h.layout.hosts), h.rev)
		}
		t := time.NewTimer(250 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return n, ctx.Err()
		case <-t.C:
		}
	}
}

func (h *harness) hostsCurrent(ctx context.Context) (int, error) {
	var hosts []*pb.Host
	// Paged: a page holds at most 1000 hosts.
	err := pagetoken.All(ctx, func(ctx context.Context, token string) (string, error) {
		resp, err := h.hostsvc.ListHosts(ctx, &pb.ListHostsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return "", err
		}
		hosts = append(hosts, resp.GetHosts()...)
		return resp.GetNextPageToken(), nil
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, x := range hosts {
		if x.GetConnected() && convergence.Converged(x, h.rev) {
			n++
		}
	}
	return n, nil
}

// restartResult is what a controller restart cost.
type restartResult struct {
	stop, startup, resync time.Duration
	resyncP50             time.Duration // half the agents had reconnected
	resent                int64
}

// restart stops the controller, starts it again on the same address and
// data directory, and waits until every agent has reconnected. resync is
// measured from the start of the new controller (its own startup
// included) to the last agent's first answer; resent counts the Desired
// messages agents received from the stop until ListHosts shows the whole
// fleet connected and current again.
func (h *harness) restart(ctx context.Context, timeout time.Duration) (restartResult, error) {
	var r restartResult
	before := h.agents.desired.Load()
	start := time.Now()
	if err := h.ctrl.stop(); err != nil {
		return r, err
	}
	r.stop = time.Since(start)
	answered := h.agents.expectAnswers()
	start = time.Now()
	ctrl, err := startController(ctx, h.dataDir, h.ctrl.addr, h.log)
	if err != nil {
		return r, err
	}
	h.ctrl = ctrl
	r.startup = time.Since(start)
	if err := answered.wait(ctx, timeout, "agents reconnected after the restart"); err != nil {
		return r, err
	}
	r.resync = h.agents.lastAnswer().Sub(start)
	r.resyncP50, _, _ = percentiles(h.agents.answerTimes(start))
	if _, err := h.waitFleet(ctx, timeout); err != nil {
		return r, err
	}
	r.resent = h.agents.desired.Load() - before
	return r, nil
}

// close stops the agents and the controller.
func (h *harness) close() error {
	if h.agents != nil {
		h.agents.stop()
	}
	var errs []error
	if h.admin != nil {
		errs = append(errs, h.admin.Close())
	}
	errs = append(errs, h.ctrl.stop())
	return errors.Join(errs...)
}

// floorRun is what the floor measured.
type floorRun struct {
	connectAll time.Duration
	latencies  []time.Duration
	mem        streamMemory
}

// runFloor connects the same agents, with the same identities, to a bare
// gRPC server and fans one Desired per host out to them.
func runFloor(ctx context.Context, h *harness, timeout time.Duration) (floorRun, error) {
	var out floorRun
	desired, err := h.layout.compiled("floor.bench.example", 2)
	if err != nil {
		return out, err
	}
	i := 0
	for _, d := range desired {
		i++
		d.Nonce = fmt.Sprintf("floor-%d", i)
	}
	fs, err := startFloor(h.serverTLS)
	if err != nil {
		return out, err
	}
	defer fs.stop()
	f := newFleet(floorMethod, h.layout.hosts, h.agentTLS)
	var once sync.Once
	stopAgents := func() { once.Do(f.stop) }
	defer stopAgents()
	before := sampleMemory()
	answered := f.expectAnswers()
	start := time.Now()
	f.start(ctx, fs.addr())
	if err := answered.wait(ctx, timeout, "agents connected to the floor server"); err != nil {
		return out, err
	}
	out.connectAll = f.lastAnswer().Sub(start)
	out.mem = perStream(before, sampleMemory(), len(h.layout.hosts))
	acked := f.expectAcks(1)
	origin := time.Now()
	if n := fs.fanOut(desired); n != len(desired) {
		return out, fmt.Errorf("the floor server reached %d of %d streams", n, len(desired))
	}
	if err := acked.wait(ctx, timeout, "agents ACKed the floor's push"); err != nil {
		return out, err
	}
	out.latencies = f.ackLatencies(origin)
	stopAgents()
	return out, nil
}
