// Package app wires the agent process together: the connection to the
// controller, the product driver and the sync loop.
package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/agent/driver/powershell"
	"github.com/s2strust/s2strust/agent/driver/sim"
	"github.com/s2strust/s2strust/agent/metrics"
	"github.com/s2strust/s2strust/agent/syncer"
	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/metricshttp"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Config configures `s2s-agent run`.
type Config struct {
	Controller string
	Host       string
	// CA, Cert and Key are PEM files of the agent's identity.
	CA, Cert, Key string
	// TLS overrides the files (the demo passes its identities in memory).
	TLS      *tls.Config
	Insecure bool
	// ControllerDialer, when set, makes the connections to the controller
	// (tests resolve the controller's name to loopback with it); the TLS
	// server name stays the host of Controller.
	ControllerDialer func(ctx context.Context, addr string) (net.Conn, error)
	// Driver is "sim" or "powershell".
	Driver string
	// PowerShell is the powershell.exe the powershell driver runs.
	PowerShell string
	StateDir   string
	// SimDir is where simulated deployment stores live; hosts of one
	// deployment must share it (default: <state-dir>/sim-shared).
	SimDir string
	// SimProducts are the products the sim reports as installed, e.g. "lync:2015".
	SimProducts   []string
	DriftInterval time.Duration
	// ProbeInterval is how often every edge is probed again while nothing
	// else probes it (syncer.Config.ProbeInterval).
	ProbeInterval time.Duration
	AutoCorrect   bool
	// VerifyInterval is how often a pending verification is retried.
	VerifyInterval time.Duration
	// PendingTimeout is how long a verification may wait on the primary before a NACK.
	PendingTimeout time.Duration
	// Resolve overrides name resolution for metadata downloads and trust
	// probes, as curl's --resolve: "host=ip:port" (any port) or
	// "host:port=ip:port". Real deployments use DNS.
	Resolve []string
	// MetadataCA is a PEM file of CAs trusted for partners' HTTPS
	// endpoints, in addition to none: when empty, the system roots.
	MetadataCA string
	// MetadataRoots overrides MetadataCA (the demo passes its CA in memory).
	MetadataRoots *x509.CertPool
	// SimListen is where the sim serves this host's HTTPS endpoints
	// (metadata document, S2S probe endpoint); empty serves nothing.
	SimListen string
	// SimListener overrides SimListen (the demo passes listeners in memory).
	SimListener net.Listener
	// SimTLSCert and SimTLSKey are the PEM files of the sim's HTTPS
	// certificate, covering the host's FQDN and its deployment's endpoint.
	SimTLSCert, SimTLSKey string
	// SimServerTLS overrides SimTLSCert and SimTLSKey.
	SimServerTLS *tls.Config
	// MetricsListen serves Prometheus metrics over HTTP on this address
	// (--metrics-listen); empty serves none. A bare port or ":port" binds
	// loopback only (see metricshttp.ResolveAddr).
	MetricsListen string
	// MetricsReady, when set, is called with the metrics URL once it is served.
	MetricsReady func(url string)
	// Monitor runs the agent read-only (--apply=false): it reads,
	// verifies, probes and reports the plan it would execute, and changes
	// nothing (see package syncer).
	Monitor bool
	Logger  *slog.Logger
}

// Run runs the agent until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	host := strings.ToLower(strings.TrimSpace(cfg.Host))
	if host == "" || !strings.Contains(host, ".") {
		return fmt.Errorf("--host %q: the host's fully qualified domain name is required, e.g. fe01.contoso.com", cfg.Host)
	}
	if cfg.StateDir == "" {
		return fmt.Errorf("--state-dir is required")
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory %s: %w", cfg.StateDir, err)
	}
	var metricsLis net.Listener
	if cfg.MetricsListen != "" {
		var err error
		if metricsLis, err = metricshttp.Listen("--metrics-listen", cfg.MetricsListen); err != nil {
			return err
		}
		defer metricsLis.Close()
	}
	drv, err := NewDriver(cfg)
	if err != nil {
		return err
	}
	mets := metrics.New(host, drv.Name(), syncer.Version)
	if c, ok := drv.(io.Closer); ok {
		// The powershell driver's workers.
		defer c.Close()
	}
	conn, ren, err := dial(cfg, log)
	if err != nil {
		return err
	}
	defer conn.Close()
	g, ctx := errgroup.WithContext(ctx)
	if ren != nil {
		g.Go(func() error { return ren.Run(ctx, conn) })
	}
	if srv, ok := drv.(interface{ Serve(context.Context) error }); ok {
		g.Go(func() error { return srv.Serve(ctx) })
	}
	a, err := syncer.New(syncer.Config{
		Host: host, Conn: conn, Driver: drv, StateDir: cfg.StateDir, Logger: log,
		DriftInterval: cfg.DriftInterval, ProbeInterval: cfg.ProbeInterval, AutoCorrect: cfg.AutoCorrect, VerifyInterval: cfg.VerifyInterval, PendingTimeout: cfg.PendingTimeout,
		Monitor: cfg.Monitor,
		Metrics: mets,
	})
	if err != nil {
		return err
	}
	log.Info("agent starting", "host", host, "controller", cfg.Controller, "driver", drv.Name(), "state_dir", cfg.StateDir, "monitor", cfg.Monitor)
	g.Go(func() error { return a.Run(ctx) })
	if metricsLis != nil {
		g.Go(func() error { return metricshttp.Serve(ctx, metricsLis, mets.Registry(), log) })
		url := metricshttp.URL(metricsLis)
		log.Info("metrics served", "url", url)
		if cfg.MetricsReady != nil {
			cfg.MetricsReady(url)
		}
	}
	return g.Wait()
}

// fetchOptions is this host's vantage point for outbound HTTPS.
func fetchOptions(cfg Config) (metadata.FetcherOptions, error) {
	var o metadata.FetcherOptions
	resolve, err := metadata.ParseResolve(cfg.Resolve)
	if err != nil {
		return o, fmt.Errorf("--resolve: %w", err)
	}
	o.Resolve = resolve
	o.RootCAs = cfg.MetadataRoots
	if o.RootCAs == nil && cfg.MetadataCA != "" {
		b, err := os.ReadFile(cfg.MetadataCA)
		if err != nil {
			return o, fmt.Errorf("read --metadata-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return o, fmt.Errorf("--metadata-ca %s: no PEM certificates in it", cfg.MetadataCA)
		}
		o.RootCAs = pool
	}
	return o, nil
}

// simServer prepares the sim's HTTPS listener and certificate, if any.
func simServer(cfg Config) (net.Listener, *tls.Config, error) {
	tlsCfg := cfg.SimServerTLS
	if tlsCfg == nil && cfg.SimTLSCert != "" {
		pair, err := tls.LoadX509KeyPair(cfg.SimTLSCert, cfg.SimTLSKey)
		if err != nil {
			return nil, nil, fmt.Errorf("--sim-tls-cert/--sim-tls-key: %w", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	lis := cfg.SimListener
	if lis == nil && cfg.SimListen != "" {
		if tlsCfg == nil {
			return nil, nil, fmt.Errorf("--sim-listen needs --sim-tls-cert and --sim-tls-key")
		}
		var err error
		lis, err = net.Listen("tcp", cfg.SimListen)
		if err != nil {
			return nil, nil, fmt.Errorf("--sim-listen: %w", err)
		}
	}
	return lis, tlsCfg, nil
}

// NewDriver builds the product driver cfg names for cfg.Host: what `run`
// uses, and `inspect` too, so both see the host the same way. The sim
// serves HTTPS only when cfg names a listener.
func NewDriver(cfg Config) (driver.Driver, error) {
	host := strings.ToLower(strings.TrimSpace(cfg.Host))
	if host == "" || !strings.Contains(host, ".") {
		return nil, fmt.Errorf("--host %q: the host's fully qualified domain name is required, e.g. fe01.contoso.com", cfg.Host)
	}
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("--state-dir is required")
	}
	switch cfg.Driver {
	case "", "sim":
		var detected []*pb.DetectedProduct
		for _, s := range cfg.SimProducts {
			name, ver, _ := strings.Cut(s, ":")
			p, ok := products.Parse(name)
			if !ok || ver == "" {
				return nil, fmt.Errorf("--sim-product %q: want PRODUCT:VERSION with PRODUCT lync, exchange or sharepoint, e.g. lync:2015", s)
			}
			detected = append(detected, &pb.DetectedProduct{Product: p, Version: products.NormalizeVersion(ver)})
		}
		shared := cfg.SimDir
		if shared == "" {
			shared = filepath.Join(cfg.StateDir, "sim-shared")
		}
		opts, err := fetchOptions(cfg)
		if err != nil {
			return nil, err
		}
		lis, tlsCfg, err := simServer(cfg)
		if err != nil {
			return nil, err
		}
		return sim.New(sim.Config{Host: host, StateDir: filepath.Join(cfg.StateDir, "sim"), SharedDir: shared, Products: detected,
			Listener: lis, ServerTLS: tlsCfg, FetchOptions: opts, Fetcher: metadata.NewFetcher(opts)})
	case "powershell":
		return powershell.New(powershell.Config{Host: host, Executable: cfg.PowerShell, StateDir: filepath.Join(cfg.StateDir, "powershell"), Logger: cfg.Logger})
	}
	return nil, fmt.Errorf("--driver %q: want sim or powershell", cfg.Driver)
}

// KeepaliveClientParameters make the agent ping a quiet controller
// connection every 10 s (gRPC's floor for clients; the controller permits
// pings every 5 s) and give it up when 10 s pass without an answer: a dead
// controller or a blackholed path is noticed within about 20 s, and the
// agent reconnects (to another replica, behind a load balancer).
func KeepaliveClientParameters() keepalive.ClientParameters {
	return keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}
}

func dial(cfg Config, log *slog.Logger) (*grpc.ClientConn, *renewer, error) {
	var ren *renewer
	addrs, err := controllerAddrs(cfg.Controller)
	if err != nil {
		return nil, nil, err
	}
	opts := []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4 << 20)),
		grpc.WithKeepaliveParams(KeepaliveClientParameters()),
		grpc.WithInitialWindowSize(64 << 10),
		grpc.WithInitialConnWindowSize(64 << 10),
	}
	switch {
	case cfg.Insecure:
		// Plaintext only to a controller on this host, as the controller
		// itself serves plaintext on loopback only.
		host, _, err := net.SplitHostPort(addrs[0])
		if ip := net.ParseIP(host); err != nil || len(addrs) > 1 || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
			return nil, nil, fmt.Errorf("--controller %q: --insecure connects to a loopback address only (127.0.0.1 or ::1)", cfg.Controller)
		}
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	case cfg.TLS != nil:
		opts = append(opts, grpc.WithTransportCredentials(pki.ClientCredentials(cfg.TLS)))
	default:
		if ca, cert, key, ok := enrolledFiles(cfg); ok {
			cfg.CA, cfg.Cert, cfg.Key = ca, cert, key
		}
		if cfg.CA == "" || cfg.Cert == "" || cfg.Key == "" {
			return nil, nil, fmt.Errorf("--ca, --cert and --key are required, unless `s2s-agent enroll` stored an identity in --state-dir (or --insecure against a controller run with --insecure)")
		}
		t, err := loadTLS(cfg.CA, cfg.Cert, cfg.Key, addrs[0])
		if err != nil {
			return nil, nil, err
		}
		if len(addrs) > 1 {
			t.ServerName = "" // each replica's address names its own
		}
		caPEM, err := os.ReadFile(cfg.CA)
		if err != nil {
			return nil, nil, fmt.Errorf("read --ca: %w", err)
		}
		if ren, err = newRenewer(strings.ToLower(strings.TrimSuffix(cfg.Host, ".")), cfg.StateDir, t, caPEM, log); err != nil {
			return nil, nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(pki.ClientCredentials(t)))
	}
	if cfg.ControllerDialer != nil {
		opts = append(opts, grpc.WithContextDialer(cfg.ControllerDialer))
	}
	target := addrs[0]
	switch {
	case len(addrs) > 1:
		var ropts []grpc.DialOption
		target, ropts = replicaTarget(addrs)
		opts = append(opts, ropts...)
	case cfg.ControllerDialer != nil:
		target = "passthrough:///" + target // the dialer resolves; no DNS lookup first
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to controller %s: %w", cfg.Controller, err)
	}
	return conn, ren, nil
}

func loadTLS(caFile, certFile, keyFile, addr string) (*tls.Config, error) {
	read := func(what, p string) ([]byte, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", what, err)
		}
		return b, nil
	}
	ca, err := read("--ca", caFile)
	if err != nil {
		return nil, err
	}
	cert, err := read("--cert", certFile)
	if err != nil {
		return nil, err
	}
	key, err := read("--key", keyFile)
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return pki.ClientTLSConfig(cert, key, ca, host)
}
