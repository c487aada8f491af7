package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/metrics"
	"time"

	"google.golang.org/grpc"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/convergence"
	"github.com/s2strust/s2strust/controller/pagetoken"
	"github.com/s2strust/s2strust/controller/server"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// controllerProc is a controller running in this process.
type controllerProc struct {
	addr   string
	cancel context.CancelFunc
	done   chan error
	// grpcStopped receives how long the gRPC server's graceful stop took.
	grpcStopped chan time.Duration
}

// startController starts a controller on listen and waits until it serves.
func startController(ctx context.Context, dataDir, listen string, obs server.SyncObserver, log *slog.Logger) (*controllerProc, error) {
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ready := make(chan string, 1)
	done := make(chan error, 1)
	grpcStopped := make(chan time.Duration, 1)
	go func() {
		done <- app.Serve(cctx, app.ServeConfig{DataDir: dataDir, Listen: listen, Logger: log, StreamObserver: obs,
			GRPCStopped: func(took time.Duration) { grpcStopped <- took },
			Ready:       func(addr string) { ready <- addr }})
	}()
	t := time.NewTimer(2 * time.Minute)
	defer t.Stop()
	select {
	case addr := <-ready:
		return &controllerProc{addr: addr, cancel: cancel, done: done, grpcStopped: grpcStopped}, nil
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

// harness is a controller in this process with a fleet of simulated
// agents in child processes, and the admin client that drives them.
type harness struct {
	log     *slog.Logger
	dataDir string
	layout  fleetLayout
	ctrl    *controllerProc
	admin   *grpc.ClientConn
	topo    pb.TopologyServiceClient
	hostsvc pb.FleetServiceClient

	serverTLS *tls.Config // the controller's, for the floor
	agents    *fleet
	acks      *ackRecorder // the controller's stored ACKs and pushes
	issuer    *pb.SecretMaterial
	caCert    []byte // the controller's CA, for the agents' identities
	caKey     []byte
	real      *realAgent // the s2s-agent process, when one runs
	// connectRate paces the agents' first connections, agents a second
	// (0: all at once).
	connectRate float64
	rev         uint64 // the revision last applied
	realms      int    // realms applied so far
}

// newHarness starts a controller in dataDir, stores the deployments'
// token-issuer secret, and starts the agents' processes (argv), which
// issue a certificate per agent from the controller's development CA.
func newHarness(ctx context.Context, dataDir string, agents, deployments int, argv []string, timeout time.Duration, log *slog.Logger) (*harness, error) {
	h := &harness{log: log, dataDir: dataDir, layout: newLayout(agents, deployments)}
	h.acks = newAckRecorder(h.layout.index())
	ctrl, err := startController(ctx, dataDir, "127.0.0.1:0", h.acks, log)
	if err != nil {
		return nil, err
	}
	h.ctrl = ctrl
	if err := h.init(ctx, argv, timeout); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *harness) init(ctx context.Context, argv []string, timeout time.Duration) error {
	files := pki.Files{Dir: app.PKIDir(h.dataDir)}
	var pem [4][]byte
	for i, p := range []string{files.CACert(), files.CAKey(), files.ServerCert(), files.ServerKey()} {
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read the controller's development PKI: %w", err)
		}
		pem[i] = b
	}
	h.caCert, h.caKey = pem[0], pem[1]
	var err error
	if h.serverTLS, err = pki.ServerTLSConfig(pem[2], pem[3], pem[0]); err != nil {
		return err
	}
	h.admin, err = app.Dial(app.ClientConfig{DataDir: h.dataDir, Addr: h.ctrl.addr})
	if err != nil {
		return err
	}
	h.topo = pb.NewTopologyServiceClient(h.admin)
	h.hostsvc = pb.NewFleetServiceClient(h.admin)
	if err := h.putIssuer(ctx); err != nil {
		return err
	}
	h.agents, err = startFleet(ctx, argv, h.layout.hosts, pem[0], pem[1], timeout)
	return err
}

// issuerSecret is the token-issuer secret every benchmark deployment
// names, so every push carries key material read from the store.
const issuerSecret = "bench-issuer"

// putIssuer stores the deployments' token-issuer certificate.
func (h *harness) putIssuer(ctx context.Context) error {
	now := time.Now()
	b, err := certs.Generate(certs.Template{CommonName: "bench.example", DNSNames: []string{"bench.example"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0)})
	if err != nil {
		return fmt.Errorf("generate the benchmark's token-issuer certificate: %w", err)
	}
	const password = "bench-Passw0rd"
	pfx, err := certs.EncodePFX(b, password)
	if err != nil {
		return err
	}
	resp, err := pb.NewSecretServiceClient(h.admin).PutSecret(ctx, &pb.PutSecretRequest{Name: issuerSecret, Pfx: pfx, Password: password})
	if err != nil {
		return fmt.Errorf("store the benchmark's token-issuer secret: %w", err)
	}
	h.issuer = &pb.SecretMaterial{Name: issuerSecret, Pfx: pfx, Password: password, Thumbprint: resp.GetSecret().GetCertificate().GetThumbprint()}
	return nil
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
	answered := h.agents.expectAnswers()
	start := time.Now()
	if err := h.agents.start(ctx, h.ctrl.addr, pb.AgentService_Sync_FullMethodName, h.connectRate); err != nil {
		return 0, err
	}
	if err := answered.wait(ctx, timeout, "agents connected to the controller"); err != nil {
		return 0, err
	}
	return h.agents.lastAnswer().Sub(start), nil
}

// commitRun is one commit's figures.
type commitRun struct {
	latencies []time.Duration // per host, commit to ACK stored
	apply     time.Duration   // the ApplyTopology call
	cpu       time.Duration   // the controller process's CPU time until all were stored
	allocated int64           // bytes the process allocated meanwhile
	gcs       int64           // garbage collections meanwhile
}

// gcCounters reads the bytes this process has allocated and the garbage
// collections it has run (runtime/metrics: no stop of the world).
func gcCounters() (allocated, cycles int64) {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64()), int64(s[1].Value.Uint64())
}

// commit applies a change touching every host and returns, per host, the
// time from the start of ApplyTopology to the controller having stored
// its ACK of the new revision.
func (h *harness) commit(ctx context.Context, timeout time.Duration) (commitRun, error) {
	var r commitRun
	acked := h.acks.expect(h.rev)
	cpu0 := processCPU()
	alloc0, gcs0 := gcCounters()
	origin := time.Now()
	took, err := h.applyNext(ctx)
	r.apply = took
	if err != nil {
		return r, err
	}
	if err := acked.wait(ctx, timeout, fmt.Sprintf("ACKs of revision %d stored", h.rev)); err != nil {
		return r, err
	}
	r.cpu = processCPU() - cpu0
	alloc1, gcs1 := gcCounters()
	r.allocated, r.gcs = alloc1-alloc0, gcs1-gcs0
	r.latencies = h.acks.latencies(origin)
	return r, nil
}

// waitFleet waits until ListHosts shows every host connected and at the
// current revision, applied hash equal to desired; it returns how many
// hosts it last saw so.
func (h *harness) waitFleet(ctx context.Context, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, err := h.hostsCurrent(ctx)
		if err == nil && n == h.layout.want() {
			return n, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return n, fmt.Errorf("list hosts: %w", err)
			}
			return n, fmt.Errorf("after %s ListHosts shows %d of %d hosts connected at revision %d", timeout, n, h.layout.want(), h.rev)
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

// restartRun is what one controller restart cost.
type restartRun struct {
	// stop is the gRPC server's graceful stop (every stream drained),
	// exit the whole controller's (its embedded etcd closed too).
	stop, exit, startup, resync time.Duration
	resyncP50                   time.Duration // half the agents had reconnected
	resent                      int64         // Desired the controllers sent meanwhile
	drains                      int64         // drain messages the agents received
	resumed                     int64         // reconnections that resumed their TLS session
}

// restart stops the controller, starts it again on the same address and
// data directory, and waits until every agent has reconnected. resync is
// measured from the start of the stop (the agents are told to come back
// from then on) to the last agent's first answer; resent counts the
// Desired messages the controller sent from the stop until ListHosts
// shows the whole fleet connected and current again.
func (h *harness) restart(ctx context.Context, timeout time.Duration) (restartRun, error) {
	var r restartRun
	pushed, drains, resumed := h.acks.pushed.Load(), h.agents.drains.Load(), h.agents.resumed.Load()
	answered := h.agents.expectAnswers()
	start := time.Now()
	if err := h.ctrl.stop(); err != nil {
		return r, err
	}
	r.exit = time.Since(start)
	select {
	case r.stop = <-h.ctrl.grpcStopped:
	default:
		return r, errors.New("the controller stopped without stopping its gRPC server")
	}
	started := time.Now()
	ctrl, err := startController(ctx, h.dataDir, h.ctrl.addr, h.acks, h.log)
	if err != nil {
		return r, err
	}
	h.ctrl = ctrl
	r.startup = time.Since(started)
	if err := answered.wait(ctx, timeout, "agents reconnected after the restart"); err != nil {
		return r, err
	}
	r.resync = h.agents.lastAnswer().Sub(start)
	r.resyncP50, _, _ = percentiles(h.agents.answerTimes(start))
	if _, err := h.waitFleet(ctx, timeout); err != nil {
		return r, err
	}
	r.resent = h.acks.pushed.Load() - pushed
	r.drains = h.agents.drains.Load() - drains
	r.resumed = h.agents.resumed.Load() - resumed
	return r, nil
}

// startReal starts the real agent (binary, s2s-agent) as realHost and
// waits until the controller shows it applied the current revision.
func (h *harness) startReal(ctx context.Context, binary, dir string, timeout time.Duration) error {
	r, err := startRealAgent(binary, dir, h.ctrl.addr, h.caCert, h.caKey)
	if err != nil {
		return err
	}
	h.real = r
	deadline := time.Now().Add(timeout)
	for {
		resp, err := h.hostsvc.GetHost(ctx, &pb.GetHostRequest{Host: realHost})
		if x := resp.GetHost(); err == nil && x.GetConnected() && convergence.Converged(x, h.rev) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: the real agent (%s) has not applied revision %d after %s (its log: %s): %v", binary, h.rev, timeout, filepath.Join(dir, "agent.log"), err)
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// close stops the agents and the controller.
func (h *harness) close() error {
	var errs []error
	if h.real != nil {
		errs = append(errs, h.real.stop())
		h.real = nil
	}
	if h.agents != nil {
		errs = append(errs, h.agents.close())
		h.agents = nil
	}
	if h.admin != nil {
		errs = append(errs, h.admin.Close())
		h.admin = nil
	}
	errs = append(errs, h.ctrl.stop())
	return errors.Join(errs...)
}

// floorRun is what the floor measured.
type floorRun struct {
	connectAll time.Duration
	commits    [][]time.Duration // per run, per host: push to ACK read
	mem        memDelta
}

// runFloor connects the same agents, with the same identities, to a bare
// gRPC server and fans one Desired per host out to them, runs times.
func runFloor(ctx context.Context, h *harness, runs int, timeout time.Duration) (floorRun, error) {
	var out floorRun
	desired, err := h.layout.compiled("floor.bench.example", h.issuer)
	if err != nil {
		return out, err
	}
	acks := newAckRecorder(h.layout.index())
	fs, err := startFloor(h.serverTLS, acks.record)
	if err != nil {
		return out, err
	}
	defer fs.stop()
	before := sampleMemory()
	answered := h.agents.expectAnswers()
	start := time.Now()
	if err := h.agents.start(ctx, fs.addr(), floorMethod, h.connectRate); err != nil {
		return out, err
	}
	if err := answered.wait(ctx, timeout, "agents connected to the floor server"); err != nil {
		return out, err
	}
	out.connectAll = h.agents.lastAnswer().Sub(start)
	// Idle: every stream open, nothing outstanding.
	out.mem = memoryDelta(before, sampleMemory(), len(h.layout.hosts))
	for run := range runs {
		version := uint64(run + 1)
		for host, d := range desired {
			d.Version, d.Nonce = version, fmt.Sprintf("floor-%d-%s", version, host)
		}
		acked := acks.expect(version - 1)
		origin := time.Now()
		if n := fs.fanOut(desired); n != len(desired) {
			return out, fmt.Errorf("the floor server reached %d of %d streams", n, len(desired))
		}
		if err := acked.wait(ctx, timeout, "the floor read every ACK"); err != nil {
			return out, err
		}
		out.commits = append(out.commits, acks.latencies(origin))
	}
	if err := h.agents.stop(ctx); err != nil {
		return out, err
	}
	return out, nil
}
