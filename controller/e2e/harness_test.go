package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/s2strust/s2strust/controller/convergence"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/agent/driver/sim"
	agentmetrics "github.com/s2strust/s2strust/agent/metrics"
	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/agent/syncer"
	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/simnet"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// logCapture keeps every log line of the package's tests, so a test can
// assert that no secret ever reaches a log.
var logCapture = &lockedBuffer{}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if testing.Verbose() {
		os.Stderr.Write(p)
	}
	return b.buf.Write(p)
}

func testLogs() string {
	logCapture.mu.Lock()
	defer logCapture.mu.Unlock()
	return logCapture.buf.String()
}

// testLogger logs at debug level into logCapture (and stderr with -v).
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(logCapture, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// controller is a controller running in-process on loopback with mTLS.
type controller struct {
	t      *testing.T
	dir    string
	addr   string
	cancel context.CancelFunc
	done   chan error
	adjust func(*app.ServeConfig)
}

func startController(t *testing.T, dir, listen string) *controller {
	t.Helper()
	return startControllerWith(t, dir, listen, nil)
}

// startControllerWith starts a controller whose configuration adjust may change.
func startControllerWith(t *testing.T, dir, listen string, adjust func(*app.ServeConfig)) *controller {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	cfg := app.ServeConfig{DataDir: dir, Listen: listen, Logger: testLogger(t).With("component", "controller"),
		PresenceTTL: 10 * time.Second, Ready: func(a string) { ready <- a }}
	if adjust != nil {
		adjust(&cfg)
	}
	go func() { done <- app.Serve(ctx, cfg) }()
	c := &controller{t: t, dir: dir, cancel: cancel, done: done, adjust: adjust}
	select {
	case c.addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("controller did not start: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("controller did not start within 60s")
	}
	t.Cleanup(c.stop)
	return c
}

func (c *controller) stop() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	if err := <-c.done; err != nil {
		c.t.Errorf("controller stopped with error: %v", err)
	}
	c.cancel = nil
}

// restart stops the controller and starts it again on the same address
// and data directory.
func (c *controller) restart() *controller {
	c.stop()
	return startControllerWith(c.t, c.dir, c.addr, c.adjust)
}

func (c *controller) ca() *pki.CA {
	c.t.Helper()
	files := pki.Files{Dir: app.PKIDir(c.dir)}
	certPEM, err := os.ReadFile(files.CACert())
	if err != nil {
		c.t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(files.CAKey())
	if err != nil {
		c.t.Fatal(err)
	}
	ca, err := pki.LoadCA(certPEM, keyPEM)
	if err != nil {
		c.t.Fatal(err)
	}
	return ca
}

// etcd opens a client to the controller's embedded etcd.
func (c *controller) etcd() *clientv3.Client {
	c.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdembed.ClientEndpoint(filepath.Join(c.dir, "etcd"))}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	return cli
}

// admin dials the controller with the data dir's admin identity.
func (c *controller) admin() *grpc.ClientConn {
	c.t.Helper()
	conn, err := app.Dial(app.ClientConfig{DataDir: c.dir, Addr: c.addr})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return conn
}

// hostTLS is a client TLS config for an agent identity naming host.
func (c *controller) hostTLS(host string) *tls.Config {
	c.t.Helper()
	ca := c.ca()
	certPEM, keyPEM, err := ca.IssueHost(host, time.Now(), time.Hour)
	if err != nil {
		c.t.Fatal(err)
	}
	cfg, err := pki.ClientTLSConfig(certPEM, keyPEM, ca.CertPEM(), "127.0.0.1")
	if err != nil {
		c.t.Fatal(err)
	}
	return cfg
}

// countingDriver counts Apply calls and Desired messages.
type countingDriver struct {
	driver.Driver
	applies atomic.Int64
	// roundAt and probedAt are when the last round of metadata checks
	// and trust probes began and ended (unix nanoseconds).
	roundAt, probedAt atomic.Int64
	// fail, when set and it returns errors, fails Apply with them.
	fail func(*pb.HostConfig) []*pb.ItemError
}

func (d *countingDriver) Apply(ctx context.Context, cfg *pb.HostConfig, s []*pb.SecretMaterial) []*pb.ItemError {
	d.applies.Add(1)
	if d.fail != nil {
		if errs := d.fail(cfg); len(errs) > 0 {
			return errs
		}
	}
	return d.Driver.Apply(ctx, cfg, s)
}

// ApplyPlan forwards to the sim, counting applies: the wrapper must keep
// the driver a syncer.Planner (which monitor mode needs).
func (d *countingDriver) ApplyPlan(ctx context.Context, cfg *pb.HostConfig, s []*pb.SecretMaterial, monitor bool) reconcile.Result {
	if !monitor {
		d.applies.Add(1)
		if d.fail != nil {
			if errs := d.fail(cfg); len(errs) > 0 {
				return reconcile.Result{Errors: errs}
			}
		}
	}
	return d.Driver.(syncer.Planner).ApplyPlan(ctx, cfg, s, monitor)
}

// CheckMetadata forwards to the sim: the wrapper must keep the driver a Prober.
func (d *countingDriver) CheckMetadata(ctx context.Context, cfg *pb.HostConfig) []*pb.MetadataCheck {
	d.roundAt.Store(time.Now().UnixNano())
	return d.Driver.(driver.Prober).CheckMetadata(ctx, cfg)
}

// Probe forwards to the sim, noting when it probed.
func (d *countingDriver) Probe(ctx context.Context, cfg *pb.HostConfig) []*pb.TrustProbe {
	out := d.Driver.(driver.Prober).Probe(ctx, cfg)
	d.probedAt.Store(time.Now().UnixNano())
	return out
}

// sinceProbe is how long ago the driver last probed, 0 while a round
// (checks, then probes) runs; false before the first.
func (d *countingDriver) sinceProbe() (time.Duration, bool) {
	at := d.probedAt.Load()
	if at != 0 && d.roundAt.Load() > at {
		return 0, true
	}
	return time.Since(time.Unix(0, at)), at != 0
}

// agent is an agent running in-process.
type agent struct {
	t        *testing.T
	host     string
	stateDir string
	simDir   string
	product  string
	drv      *countingDriver
	sim      *sim.Sim
	opts     agentOpts
	a        *syncer.Agent
	received atomic.Int64
	// secretsSeen counts pushes that carried key material.
	secretsSeen atomic.Int64
	cancel      context.CancelFunc
	done        chan error
	mu          sync.Mutex
}

type agentOpts struct {
	driftInterval time.Duration
	// probeInterval is the agent's periodic probe interval (0: the default).
	probeInterval time.Duration
	autoCorrect   bool
	// network, when set, gives the sim its HTTPS listener, certificate,
	// resolver and trust store, so it serves and downloads metadata and
	// runs trust probes.
	network *simnet.Network
	// clientTLS, when set, is the agent's identity (an enrolled one).
	clientTLS *tls.Config
	// alsoReplicas are more controller addresses, after the one the agent
	// is started with, that it fails over to in order (as s2s-agent's
	// --controller a,b does).
	alsoReplicas []string
	// resolve adds --resolve mappings to the network's: the one way a test
	// may point a name at loopback (a loopback IP literal is refused).
	resolve []string
	// fail injects apply failures (see countingDriver).
	fail func(*pb.HostConfig) []*pb.ItemError
	// metrics, when set, gives each agent its metrics recorder.
	metrics func(host string) agentmetrics.Recorder
	// monitor runs the agent in monitor mode (--apply=false).
	monitor bool
}

func startAgent(t *testing.T, c *controller, host, product, stateDir, simDir string, o agentOpts) *agent {
	t.Helper()
	name, ver, _ := cutProduct(product)
	p, ok := products.Parse(name)
	if !ok {
		t.Fatalf("bad product %q", product)
	}
	scfg := sim.Config{Host: host, StateDir: filepath.Join(stateDir, "sim"), SharedDir: simDir,
		Products: []*pb.DetectedProduct{{Product: p, Version: ver}}}
	if n := o.network; n != nil {
		resolve, err := metadata.ParseResolve(append(n.Resolve(), o.resolve...))
		if err != nil {
			t.Fatal(err)
		}
		scfg.FetchOptions = metadata.FetcherOptions{RootCAs: n.Roots, Resolve: resolve, Timeout: 5 * time.Second}
		scfg.Fetcher = metadata.NewFetcher(scfg.FetchOptions)
		scfg.ServerTLS = n.Hosts[host].TLS
		lis, err := n.Hosts[host].Take()
		if err != nil {
			t.Fatal(err)
		}
		scfg.Listener = lis
	}
	s, err := sim.New(scfg)
	if err != nil {
		t.Fatal(err)
	}
	clientTLS := o.clientTLS
	if clientTLS == nil {
		clientTLS = c.hostTLS(host)
	}
	target, dialOpts := c.addr, []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(clientTLS))}
	if len(o.alsoReplicas) > 0 {
		r := manual.NewBuilderWithScheme("e2e-replicas")
		state := resolver.State{}
		for _, a := range append([]string{c.addr}, o.alsoReplicas...) {
			state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
		}
		r.InitialState(state)
		target, dialOpts = r.Scheme()+":///replicas", append(dialOpts, grpc.WithResolvers(r))
	}
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		t.Fatal(err)
	}
	ag := &agent{t: t, host: host, stateDir: stateDir, simDir: simDir, product: product, drv: &countingDriver{Driver: s, fail: o.fail}, sim: s, opts: o}
	if o.driftInterval == 0 {
		o.driftInterval = time.Hour
	}
	var rec agentmetrics.Recorder
	if o.metrics != nil {
		rec = o.metrics(host)
	}
	a, err := syncer.New(syncer.Config{Host: host, Conn: conn, Driver: ag.drv, StateDir: stateDir, Logger: testLogger(t).With("agent", host),
		DriftInterval: o.driftInterval, ProbeInterval: o.probeInterval, AutoCorrect: o.autoCorrect, VerifyInterval: 50 * time.Millisecond, PendingTimeout: time.Second,
		Monitor:     o.monitor,
		BackoffBase: 20 * time.Millisecond, BackoffMax: 300 * time.Millisecond, Metrics: rec,
		OnDesired: func(d *pb.Desired) {
			ag.received.Add(1)
			if len(d.GetSecrets()) > 0 {
				ag.secretsSeen.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ag.a = a
	ctx, cancel := context.WithCancel(context.Background())
	ag.cancel = cancel
	ag.done = make(chan error, 1)
	go func() {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.Serve(ctx) }()
		err := a.Run(ctx)
		wg.Wait() // the sim has closed its listener: a restart may bind it again
		conn.Close()
		ag.done <- err
	}()
	t.Cleanup(ag.stop)
	return ag
}

func cutProduct(s string) (string, string, bool) {
	for i := range s {
		if s[i] == ':' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func (a *agent) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cancel == nil {
		return
	}
	a.cancel()
	if err := <-a.done; err != nil {
		a.t.Errorf("agent %s stopped with error: %v", a.host, err)
	}
	a.cancel = nil
}

// waitFor polls cond until it holds or the deadline passes; it never
// sleeps for a fixed time to let something happen.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last state: %s", timeout, what, last)
		}
		<-tick.C
	}
}

// converged reports whether every host of the fleet has converged on
// revision rev (convergence.Converged).
func converged(ctx context.Context, fleet pb.FleetServiceClient, rev uint64) (bool, string) {
	resp, err := fleet.ListHosts(ctx, &pb.ListHostsRequest{})
	if err != nil {
		return false, err.Error()
	}
	if len(resp.GetHosts()) == 0 {
		return false, "no hosts"
	}
	for _, h := range resp.GetHosts() {
		if why := convergence.Why(h, rev); why != "" {
			return false, fmt.Sprintf("%s (result %v, connected %v)", why, h.GetLastResult(), h.GetConnected())
		}
	}
	return true, ""
}
