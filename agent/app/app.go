// Package app wires the agent process together: the connection to the
// controller, the product driver and the sync loop.
package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/agent/driver/sim"
	"github.com/s2strust/s2strust/agent/syncer"
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
	// Driver is "sim" (the only one on this platform for now).
	Driver   string
	StateDir string
	// SimDir is where simulated deployment stores live; hosts of one
	// deployment must share it (default: <state-dir>/sim-shared).
	SimDir string
	// SimProducts are the products the sim reports as installed, e.g. "lync:2015".
	SimProducts   []string
	DriftInterval time.Duration
	AutoCorrect   bool
	// VerifyInterval is how often a pending verification is retried.
	VerifyInterval time.Duration
	Logger         *slog.Logger
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
	drv, err := newDriver(cfg, host)
	if err != nil {
		return err
	}
	conn, err := dial(cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	a, err := syncer.New(syncer.Config{
		Host: host, Conn: conn, Driver: drv, StateDir: cfg.StateDir, Logger: log,
		DriftInterval: cfg.DriftInterval, AutoCorrect: cfg.AutoCorrect, VerifyInterval: cfg.VerifyInterval,
	})
	if err != nil {
		return err
	}
	log.Info("agent starting", "host", host, "controller", cfg.Controller, "driver", drv.Name(), "state_dir", cfg.StateDir)
	return a.Run(ctx)
}

func newDriver(cfg Config, host string) (driver.Driver, error) {
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
		return sim.New(sim.Config{Host: host, StateDir: filepath.Join(cfg.StateDir, "sim"), SharedDir: shared, Products: detected})
	case "powershell":
		return nil, fmt.Errorf("--driver powershell: not available in this build yet; use --driver sim")
	}
	return nil, fmt.Errorf("--driver %q: want sim or powershell", cfg.Driver)
}

func dial(cfg Config) (*grpc.ClientConn, error) {
	if cfg.Controller == "" {
		return nil, fmt.Errorf("--controller is required, e.g. controller.contoso.com:7443")
	}
	opts := []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4 << 20)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 2 * time.Minute, Timeout: 20 * time.Second, PermitWithoutStream: true}),
		grpc.WithInitialWindowSize(64 << 10),
		grpc.WithInitialConnWindowSize(64 << 10),
	}
	switch {
	case cfg.Insecure:
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	case cfg.TLS != nil:
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg.TLS)))
	default:
		if cfg.CA == "" || cfg.Cert == "" || cfg.Key == "" {
			return nil, fmt.Errorf("--ca, --cert and --key are required (or --insecure against a controller run with --insecure)")
		}
		t, err := loadTLS(cfg.CA, cfg.Cert, cfg.Key, cfg.Controller)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(t)))
	}
	conn, err := grpc.NewClient(cfg.Controller, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to controller %s: %w", cfg.Controller, err)
	}
	return conn, nil
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
