package cmd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/s2strust/s2strust/controller/convergence"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	agentapp "github.com/s2strust/s2strust/agent/app"
	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/progress"
	"github.com/s2strust/s2strust/internal/simnet"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// DemoConfig configures a demo run.
type DemoConfig struct {
	// Topology is the document to apply; deploy/examples/contoso.yaml when empty.
	Topology     []byte
	TopologyName string
	// Dir holds everything the demo creates; a temporary directory when empty.
	Dir    string
	Listen string
	// Once exits after verification instead of serving until interrupted.
	Once    bool
	Timeout time.Duration
	Out     io.Writer
	Logger  *slog.Logger
	// UIListen serves the web dashboard there while the demo runs (not
	// with Once); off when empty.
	UIListen string
	// DashboardReady, when set, is called with the dashboard's login URL.
	DashboardReady func(loginURL string)
	// Progress, when set, shows the wait for the fleet to converge (a live
	// line on a terminal, a line per change elsewhere): standard error.
	Progress io.Writer
}

func newDemo(g *globals) *cobra.Command {
	var cfg DemoConfig
	var file string
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run a whole simulated fleet: embedded etcd, a controller and a sim agent per host of a topology (default: the example)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Out, cfg.Progress = g.out, cmd.ErrOrStderr()
			if file != "" {
				b, err := readTopology(cmd.InOrStdin(), file)
				if err != nil {
					return err
				}
				cfg.Topology, cfg.TopologyName = b, fileLabel(file)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if g.verbose {
				cfg.Logger = g.logger()
			}
			return RunDemo(ctx, cfg)
		},
	}
	c.Flags().BoolVar(&cfg.Once, "once", false, "exit after verification: 0 when every host acked and verified")
	c.Flags().StringVarP(&file, "topology", "f", "", "topology file to run, YAML or JSON (- reads standard input): a sim agent for each of its hosts (default: the embedded deploy/examples/contoso.yaml)")
	// --file was the flag's first name; scripts that use it keep working.
	c.Flags().StringVar(&file, "file", "", "the same as --topology")
	_ = c.Flags().MarkHidden("file")
	c.Flags().StringVar(&cfg.Dir, "dir", "", "keep the demo's files here (default: a temporary directory, removed at exit)")
	c.Flags().StringVar(&cfg.Listen, "listen", "127.0.0.1:0", "controller listen address")
	c.Flags().DurationVar(&cfg.Timeout, "timeout", 2*time.Minute, "how long to wait for every host to ack")
	c.Flags().StringVar(&cfg.UIListen, "ui-listen", "127.0.0.1:0", "serve the web dashboard on this address while the demo runs (not with --once); empty: none")
	return c
}

// RunDemo starts a controller and one sim agent per host, applies the
// topology, waits for every host to ack and prints what they verified.
func RunDemo(ctx context.Context, cfg DemoConfig) error {
	out := cfg.Out
	if cfg.Topology == nil {
		cfg.Topology, cfg.TopologyName = examples.Contoso, "contoso.yaml"
	}
	t, err := topology.Load(cfg.TopologyName, cfg.Topology)
	if err != nil {
		// topology.Load's errors name the file and every field at fault.
		return fmt.Errorf("demo topology: %w", err)
	}
	dir := cfg.Dir
	if dir == "" {
		dir, err = os.MkdirTemp("", "s2strust-demo-")
		if err != nil {
			return fmt.Errorf("create demo directory: %w", err)
		}
		defer os.RemoveAll(dir)
	}
	logFile, err := os.OpenFile(filepath.Join(dir, "demo.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open demo log: %w", err)
	}
	defer logFile.Close()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	defer func() { cancel(); _ = g.Wait() }()

	dataDir := filepath.Join(dir, "controller")
	ready, uiReady := make(chan string, 1), make(chan string, 1)
	metricsURL := make(chan string, 1)
	uiListen := cfg.UIListen
	if cfg.Once {
		uiListen = ""
	}
	g.Go(func() error {
		return app.Serve(gctx, app.ServeConfig{DataDir: dataDir, Listen: cfg.Listen, Logger: log.With("component", "controller"),
			Ready: func(addr string) { ready <- addr }, MetricsListen: "127.0.0.1:0", MetricsReady: func(url string) { metricsURL <- url },
			UIListen: uiListen, UIReady: func(u string) { uiReady <- u }})
	})
	var addr string
	select {
	case addr = <-ready:
	case <-gctx.Done():
		return fmt.Errorf("controller did not start: %w", g.Wait())
	}
	fmt.Fprintf(out, "controller listening on %s (data in %s, logs in %s)\n", addr, dataDir, logFile.Name())
	// Served before the controller is ready, so the URL is there by now.
	fmt.Fprintf(out, "Prometheus metrics: curl %s\n", <-metricsURL)
	var dashboard string
	if uiListen != "" {
		if dashboard, err = demoDashboard(gctx, uiReady, dataDir, out, cfg.DashboardReady); err != nil {
			return err
		}
	}
	conn, err := app.Dial(app.ClientConfig{DataDir: dataDir, Addr: addr})
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := demoSecrets(ctx, conn, t, out); err != nil {
		return err
	}
	network, err := simnet.New(t)
	if err != nil {
		return err
	}
	defer network.Close()
	if err := startDemoAgents(gctx, g, t, network, dataDir, dir, addr, log); err != nil {
		return err
	}
	resp, err := pb.NewTopologyServiceClient(conn).ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: cfg.Topology, Filename: cfg.TopologyName})
	if err != nil {
		return rpcError("apply "+cfg.TopologyName, err)
	}
	printWarnings(out, resp.GetWarnings())
	fmt.Fprintf(out, "applied topology %q as revision %d (version %d); waiting for %d hosts to apply and verify\n", t.Name, resp.GetSequence(), resp.GetRevision(), resp.GetHostsTotal())
	fleet := pb.NewFleetServiceClient(conn)
	deadline := time.Now().Add(cfg.Timeout)
	var counter *progress.Counter
	if cfg.Progress != nil {
		counter = progress.New(cfg.Progress, "hosts converged on revision "+fmt.Sprint(resp.GetSequence()), int(resp.GetHostsTotal()))
	}
	failures, waitErr := waitConverged(ctx, fleet, resp.GetRevision(), cfg.Timeout, func(done, total int, waiting string) {
		if counter != nil {
			counter.Set(done, total, waiting)
		}
	})
	if counter != nil {
		counter.Done()
	}
	var trust *pb.GetTrustReportResponse
	if waitErr == nil && len(failures) == 0 {
		fmt.Fprintf(out, "every host acked revision %d; waiting for every trust edge's probe\n", resp.GetSequence())
		trust, failures, waitErr = waitTrusted(ctx, fleet, time.Until(deadline))
	}
	details, err := fetchStatus(ctx, fleet, "")
	if err != nil {
		return err
	}
	fmt.Fprintln(out)
	printStatus(out, details)
	// What each deployment's primary ran: the shared reconciler's plan,
	// the exact cmdlets (secrets redacted).
	var primaries []hostDetail
	for _, d := range details {
		if d.host.GetPrimary() {
			primaries = append(primaries, d)
		}
	}
	if len(primaries) > 0 {
		fmt.Fprintf(out, "\nWhat the deployments' primaries ran (s2s-controller status --plan):\n\n")
		printPlans(out, primaries)
	}
	if trust != nil {
		fmt.Fprintf(out, "\nTrust report (s2s-controller status --trust):\n\n")
		printTrust(out, trust.GetEdges())
		fmt.Fprintln(out)
		printRealms(out, trust.GetRealms())
		fmt.Fprintln(out)
	}
	pkiDir := app.PKIDir(dataDir)
	fmt.Fprintf(out, "Inspect it with grpcurl:\n  go tool grpcurl -cacert %s -cert %s -key %s %s list\n  go tool grpcurl -cacert %s -cert %s -key %s %s s2strust.v1.FleetService/ListHosts\n\n",
		filepath.Join(pkiDir, "ca.crt"), filepath.Join(pkiDir, "admin.crt"), filepath.Join(pkiDir, "admin.key"), addr,
		filepath.Join(pkiDir, "ca.crt"), filepath.Join(pkiDir, "admin.crt"), filepath.Join(pkiDir, "admin.key"), addr)
	if waitErr != nil || len(failures) > 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "demo failed:")
		if waitErr != nil {
			fmt.Fprintf(&b, " %v", waitErr)
		}
		for _, f := range failures {
			fmt.Fprintf(&b, "\n  %s", safe(f))
		}
		return &exitError{code: 2, err: fmt.Errorf("%s", b.String())}
	}
	fmt.Fprintf(out, "every host applied revision %d and verified it; every trust edge's probe passed\n", resp.GetSequence())
	if cfg.Once {
		return nil
	}
	if dashboard != "" {
		// The login URL scrolled away with the status above.
		fmt.Fprintf(out, "dashboard: %s (log in with the URL printed at the start, or `s2s-controller ui token --data-dir %s`)\n", dashboard, dataDir)
	}
	fmt.Fprintln(out, "serving until Ctrl-C")
	<-ctx.Done()
	return nil
}

// demoLoginTTL is how long the demo's printed login token lasts.
const demoLoginTTL = 15 * time.Minute

// demoDashboard waits for the dashboard and prints its URL with a login
// token, so that the fleet can be watched converging.
func demoDashboard(ctx context.Context, uiReady <-chan string, dataDir string, out io.Writer, notify func(string)) (string, error) {
	var dash string
	select {
	case dash = <-uiReady:
	case <-ctx.Done():
		return "", fmt.Errorf("dashboard did not start: %w", context.Cause(ctx))
	}
	u, err := app.NewLoginURL(dataDir, dash, demoLoginTTL)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(out, "dashboard: %s\n  (the login token works once, for %s; for another: s2s-controller ui token --data-dir %s;\n  the browser does not know the development CA %s: import it, or accept the warning)\n",
		u, demoLoginTTL, dataDir, filepath.Join(app.PKIDir(dataDir), "ca.crt"))
	if notify != nil {
		notify(u)
	}
	return dash, nil
}

// demoSecrets makes and uploads a token-issuer certificate for every
// secret the topology names: CN the default SIP domain, the SAN listing
// every SIP domain, RSA 2048, serverAuth.
func demoSecrets(ctx context.Context, conn *grpc.ClientConn, t *topology.Topology, out io.Writer) error {
	done := map[string]bool{}
	for _, d := range t.Deployments {
		if d.TokenIssuer == nil || d.TokenIssuer.Secret == "" || done[d.TokenIssuer.Secret] {
			continue
		}
		name := d.TokenIssuer.Secret
		done[name] = true
		now := time.Now()
		b, err := certs.Generate(certs.Template{
			CommonName: t.SIPDomains.Default,
			DNSNames:   append([]string{t.SIPDomains.Default}, t.SIPDomains.Additional...),
			NotBefore:  now.Add(-time.Hour), NotAfter: now.AddDate(2, 0, 0), KeyBits: 2048,
		})
		if err != nil {
			return fmt.Errorf("generate token-issuer certificate: %w", err)
		}
		pw := make([]byte, 12)
		_, _ = rand.Read(pw)
		pfx, err := certs.EncodePFX(b, hex.EncodeToString(pw))
		if err != nil {
			return err
		}
		resp, err := pb.NewSecretServiceClient(conn).PutSecret(ctx, &pb.PutSecretRequest{Name: name, Pfx: pfx, Password: hex.EncodeToString(pw)})
		if err != nil {
			return rpcError("put secret "+name, err)
		}
		fmt.Fprintf(out, "uploaded token-issuer certificate %s (%s) as secret %q\n", safe(resp.GetSecret().GetCertificate().GetThumbprint()), safe(resp.GetSecret().GetCertificate().GetSubject()), name)
	}
	return nil
}

func startDemoAgents(ctx context.Context, g *errgroup.Group, t *topology.Topology, network *simnet.Network, dataDir, dir, addr string, log *slog.Logger) error {
	files := pki.Files{Dir: app.PKIDir(dataDir)}
	caPEM, err := os.ReadFile(files.CACert())
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(files.CAKey())
	if err != nil {
		return err
	}
	ca, err := pki.LoadCA(caPEM, keyPEM)
	if err != nil {
		return err
	}
	for _, d := range t.Deployments {
		for _, host := range d.Hosts {
			certPEM, keyPEM, err := ca.IssueHost(host, time.Now(), 24*time.Hour)
			if err != nil {
				return err
			}
			tlsCfg, err := pki.ClientTLSConfig(certPEM, keyPEM, caPEM, "127.0.0.1")
			if err != nil {
				return err
			}
			lis, err := network.Hosts[host].Take()
			if err != nil {
				return err
			}
			cfg := agentapp.Config{
				Controller: addr, Host: host, TLS: tlsCfg, Driver: "sim",
				StateDir:       filepath.Join(dir, "agents", host),
				SimDir:         filepath.Join(dir, "sim"),
				SimProducts:    []string{d.Product + ":" + d.Version},
				DriftInterval:  5 * time.Second,
				VerifyInterval: 100 * time.Millisecond,
				PendingTimeout: 2 * time.Second,
				Resolve:        network.Resolve(),
				MetadataRoots:  network.Roots,
				SimListener:    lis,
				SimServerTLS:   network.Hosts[host].TLS,
				Logger:         log.With("component", "agent", "agent", host),
			}
			g.Go(func() error { return agentapp.Run(ctx, cfg) })
		}
	}
	return nil
}

// waitTrusted polls the trust report until every edge is ok or timeout
// passes; it returns the last report and one line per failing edge.
func waitTrusted(ctx context.Context, fleet pb.FleetServiceClient, timeout time.Duration) (*pb.GetTrustReportResponse, []string, error) {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var failing []string
		resp, err := trustReport(ctx, fleet)
		if err == nil {
			for _, e := range resp.GetEdges() {
				if !e.GetOk() {
					failing = append(failing, fmt.Sprintf("trust edge %s → %s: %s", e.GetFrom(), e.GetTo(), strings.Join(e.GetProblems(), "; ")))
				}
			}
			if len(failing) == 0 {
				return resp, nil, nil
			}
		}
		if time.Now().After(deadline) {
			return resp, failing, fmt.Errorf("not every trust edge works within %s", timeout)
		}
		select {
		case <-ctx.Done():
			return resp, failing, ctx.Err()
		case <-tick.C:
		}
	}
}

// waitConverged polls the fleet until every host has converged on revision
// rev (convergence.Converged), or timeout passes. A NACK is not final: agents retry and ACK
// late once, say, a partner's metadata becomes reachable. So it gives up
// early only when every host still missing has NACKed and nothing has
// changed for nackSettle. It returns one line per host that failed. Each
// poll's count of converged hosts goes to progress, with the first host
// still awaited.
func waitConverged(ctx context.Context, fleet pb.FleetServiceClient, rev uint64, timeout time.Duration, progress func(done, total int, waiting string)) ([]string, error) {
	const nackSettle = 10 * time.Second
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last []string
	lastChange := time.Now()
	for {
		resp, err := listHosts(ctx, fleet, &pb.ListHostsRequest{})
		if err == nil {
			var now []string
			allNacked := true
			done, waiting := 0, ""
			for _, h := range resp.GetHosts() {
				lr := h.GetLastResult()
				if !convergence.Converged(h, rev) && waiting == "" {
					waiting = "waiting for " + h.GetHost()
				}
				switch {
				case convergence.Converged(h, rev):
					done++
				case lr.GetKind() == pb.ResultKind_RESULT_KIND_NACK && lr.GetVersion() >= rev:
					now = append(now, fmt.Sprintf("%s: %s", h.GetHost(), resultText(lr)))
				default:
					allNacked = false
					now = append(now, fmt.Sprintf("%s: has not applied revision %d yet (applied %d, connected %s)", h.GetHost(), rev, h.GetAppliedVersion(), yesNo(h.GetConnected())))
				}
			}
			if len(resp.GetHosts()) > 0 {
				progress(done, len(resp.GetHosts()), waiting)
			}
			// No hosts yet: the controller has not taken the revision in.
			if len(now) == 0 && len(resp.GetHosts()) > 0 {
				return nil, nil
			}
			if strings.Join(now, "\n") != strings.Join(last, "\n") {
				lastChange = time.Now()
			}
			last = now
			if allNacked && len(now) > 0 && time.Since(lastChange) > nackSettle {
				return last, nil
			}
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("not every host converged within %s", timeout)
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-tick.C:
		}
	}
}
