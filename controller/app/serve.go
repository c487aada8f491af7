// Package app wires the controller process together: the store (embedded
// or external etcd), the PKI, the gRPC services, and their shutdown.
package app

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/s2strust/s2strust/controller/rollout"
	"github.com/s2strust/s2strust/controller/rotation"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"go.uber.org/zap"

	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/controller/metrics"
	"github.com/s2strust/s2strust/controller/secrets"
	"github.com/s2strust/s2strust/controller/server"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/atomicfile"
	"github.com/s2strust/s2strust/internal/metricshttp"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/secretbox"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// stopDeadline bounds a graceful stop of the gRPC server: agents' streams
// are drained within a second (server.Hub.Stopping); admin calls still
// running after this are cut off.
const stopDeadline = 1500 * time.Millisecond

// MaxMessageSize bounds every gRPC message the controller receives or sends.
const MaxMessageSize = 4 << 20

// ServeConfig configures `s2s-controller serve`.
type ServeConfig struct {
	// DataDir holds the embedded etcd, the development PKI and the address file.
	DataDir string
	// Listen is the gRPC listen address.
	Listen string
	// EtcdEndpoints selects an existing etcd cluster instead of the embedded one.
	EtcdEndpoints []string
	// EtcdPrefix is the key prefix in etcd.
	EtcdPrefix string
	// EtcdClient is how the controller authenticates to an external etcd
	// (--etcd-endpoints): client TLS and an etcd user.
	EtcdClient EtcdClientConfig
	// EtcdQuotaBytes is the embedded etcd's space quota (0: etcdembed's default).
	EtcdQuotaBytes int64
	// EtcdCompactionRetention is the history the embedded etcd keeps
	// (0: etcdembed's default; negative: no auto-compaction).
	EtcdCompactionRetention time.Duration
	// Insecure serves plaintext, on loopback only.
	Insecure bool
	Logger   *slog.Logger
	// TLS is the serving identity (--tls-san, --tls-cert, --tls-key, --client-ca).
	TLS ServeTLS
	// HostCertTTL is the lifetime of certificates issued at enrollment.
	HostCertTTL time.Duration
	// PresenceTTL is the agents' presence lease TTL (default 10s).
	PresenceTTL time.Duration
	// StreamsPerSecond bounds new agent streams (default 1000/s).
	StreamsPerSecond float64
	// AgentLimits bound what each agent identity may cost (see server.AgentLimits).
	AgentLimits server.AgentLimits
	// SecretKeyFile is the AES-256 key sealing secrets in etcd; replicas
	// sharing an etcd cluster need the same one. Default: the systemd
	// credential secret.key when $CREDENTIALS_DIRECTORY holds one, else
	// <data-dir>/secret.key (see SecretKeyPath).
	SecretKeyFile string
	// Ready, when set, is called with the listening address once serving.
	Ready func(addr string)
	// UIListen serves the web dashboard on this address; off when empty.
	UIListen string
	// UIReady, when set, is called with the dashboard's URL once it listens.
	UIReady func(url string)
	// ElectionTTL is the lease TTL of the controllers' leader election
	// (default 10s): how long a dead leader holds on before another
	// replica takes over its rollouts and primary choices.
	ElectionTTL time.Duration
	// RolloutInterval is how often the leader looks at the newest rollout
	// when nothing wakes it (default 1s).
	RolloutInterval time.Duration
	// ReplicaID names this replica in the election (default random).
	ReplicaID string
	// MetricsListen serves Prometheus metrics over HTTP on this address
	// (--metrics-listen); empty serves none. A bare port or ":port" binds
	// loopback only (see metricshttp.ResolveAddr).
	MetricsListen string
	// MetricsReady, when set, is called with the metrics URL once it is served.
	MetricsReady func(url string)
	// GRPCStopped, when set, is called with how long the gRPC server's
	// graceful stop took (every agent stream drained), before the store
	// is closed.
	GRPCStopped func(took time.Duration)
	// StreamObserver, when set, hears what happens on the agents' Sync
	// streams (the benchmark counts pushes and stored ACKs with it).
	StreamObserver server.SyncObserver
}

// TransportOptions are the controller's gRPC transport settings, shared
// with the benchmark's bare fan-out so the two differ only in what the
// controller does per stream.
func TransportOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
		// Small per-stream windows keep an idle agent stream cheap.
		grpc.InitialWindowSize(64 << 10),
		grpc.InitialConnWindowSize(64 << 10),
		// Agents send little and rarely: no read buffer of gRPC's own (the
		// TLS connection below buffers a record already; 4 KiB per idle
		// connection otherwise), and write buffers shared rather than held
		// per idle connection.
		grpc.ReadBufferSize(0),
		grpc.WriteBufferSize(4 << 10),
		grpc.SharedWriteBuffer(true),
		grpc.KeepaliveParams(KeepaliveServerParameters()),
		grpc.KeepaliveEnforcementPolicy(KeepaliveEnforcementPolicy()),
	}
}

// KeepaliveServerParameters make the controller ping a quiet agent
// connection every 10 s and drop it when 10 s pass without an answer: a
// blackholed agent (a host powered off, a firewall dropping packets) is
// noticed within about 20 s, not when TCP gives up minutes later, so its
// stream ends, its presence goes and a pending push shows as such.
func KeepaliveServerParameters() keepalive.ServerParameters {
	return keepalive.ServerParameters{Time: 10 * time.Second, Timeout: 10 * time.Second}
}

// KeepaliveEnforcementPolicy lets agents ping every 5 s or more, also
// between streams (agent/app pings every 10 s); a client pinging more
// often is sent GOAWAY.
func KeepaliveEnforcementPolicy() keepalive.EnforcementPolicy {
	return keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}
}

// AddrFile is where serve writes its listening address, for the admin commands.
func AddrFile(dataDir string) string { return filepath.Join(dataDir, "controller.addr") }

// PKIDir is the development PKI directory of a data dir.
func PKIDir(dataDir string) string { return filepath.Join(dataDir, "pki") }

// Serve runs the controller until ctx ends, then stops gracefully.
func Serve(ctx context.Context, cfg ServeConfig) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.DataDir == "" {
		cfg.DataDir = "./s2s-data"
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory %s: %w", cfg.DataDir, err)
	}
	lis, err := listen(cfg.Listen, cfg.Insecure)
	if err != nil {
		return err
	}
	defer lis.Close()
	var metricsLis net.Listener
	if cfg.MetricsListen != "" {
		if metricsLis, err = metricshttp.Listen("--metrics-listen", cfg.MetricsListen); err != nil {
			return err
		}
		defer metricsLis.Close()
	}
	// The metrics are kept whether served or not: counting costs little,
	// and the code paths stay the same either way.
	mets := metrics.New(metrics.Config{})

	if cfg.Insecure {
		log.Warn("serving WITHOUT TLS (--insecure): anyone on this host can act as admin or as any agent; loopback only")
	}

	cli, emb, closeStore, err := openStore(ctx, cfg, log, mets.EtcdUnaryInterceptor())
	if err != nil {
		return err
	}
	defer closeStore()
	var quota int64
	if emb != nil {
		quota = emb.QuotaBytes()
	}
	st := store.New(cli, cfg.EtcdPrefix, store.WithQuotaBytes(quota))
	keyFile := SecretKeyPath(cfg.SecretKeyFile, cfg.DataDir, os.Getenv)
	key, err := secretbox.LoadOrCreateKey(keyFile)
	if err != nil {
		return fmt.Errorf("load the secret key: %w", err)
	}
	log.Info("secret key loaded", "file", keyFile)
	ids, idsRev, err := server.NewIdentities(ctx, st, log)
	if err != nil {
		return err
	}
	refusals := server.NewRefusalAuditor(st, log)
	var creds grpc.ServerOption
	var ca *pki.CA
	var tlsCfg *tls.Config
	if !cfg.Insecure {
		if tlsCfg, ca, err = serverTLS(ctx, cfg, lis, st, key, ids.Check, log); err != nil {
			return err
		}
		verify := tlsCfg.VerifyConnection
		tlsCfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if err := verify(cs); err != nil {
				return err
			}
			mets.Handshake(cs.DidResume)
			return nil
		}
		creds = grpc.Creds(refusals.ServerCredentials(credentials.NewTLS(tlsCfg)))
	}
	sec := secrets.New(st, key, nil)
	id := cfg.ReplicaID
	if id == "" {
		id = randomID()
	}
	ttl := cfg.ElectionTTL
	if ttl == 0 {
		ttl = 10 * time.Second
	}
	elector := rollout.NewElector(cli, st.Key("election"), id, ttl, log)
	hub := server.NewHub(server.Config{Store: st, Logger: log, PresenceTTL: cfg.PresenceTTL, Secrets: sec, Limits: cfg.AgentLimits, ID: id, Leadership: elector, Observer: mets, StreamObserver: cfg.StreamObserver})
	engine := &rollout.Engine{Store: rollout.NewStore(st), Source: server.NewRolloutSource(hub), Fence: elector.Fence, Interval: cfg.RolloutInterval, Log: log}
	access := server.Access{Insecure: cfg.Insecure, Logger: log, Audit: refusals.Record, Identities: ids}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(access.UnaryInterceptor),
		grpc.ChainStreamInterceptor(access.StreamInterceptor),
	}
	opts = append(opts, TransportOptions()...)
	if creds != nil {
		opts = append(opts, creds)
	}
	gs := grpc.NewServer(opts...)
	topoSvc := server.NewTopologyService(hub, sec)
	topoSvc.SetMaxResponseBytes(MaxMessageSize)
	pb.RegisterTopologyServiceServer(gs, topoSvc)
	pb.RegisterSecretServiceServer(gs, secrets.NewService(sec, hub.SecretView()))
	fleet := server.NewFleetService(hub)
	mets.SetFleet(fleet)
	pb.RegisterFleetServiceServer(gs, fleet)
	rollouts := server.NewRolloutService(hub, topoSvc)
	pb.RegisterRolloutServiceServer(gs, rollouts)
	rotations := server.NewRotationService(hub, topoSvc)
	pb.RegisterRotationServiceServer(gs, rotations)
	rotEngine := &rotation.Engine{Store: rotations.Rotations(), Rollouts: rollout.NewStore(st), Source: server.NewRotationSource(hub),
		Applier: rotations, Fence: elector.Fence, Interval: cfg.RolloutInterval, Log: log}
	pb.RegisterAuditServiceServer(gs, server.NewAuditService(hub))
	pb.RegisterAgentServiceServer(gs, server.NewAgentService(hub, cfg.StreamsPerSecond, cfg.Insecure))
	if ca != nil {
		enroll := server.NewEnrollment(st, ca, cfg.HostCertTTL, log)
		pb.RegisterEnrollmentServiceServer(gs, enroll)
		pb.RegisterJoinTokenServiceServer(gs, enroll.JoinTokens())
		pb.RegisterHostIdentityServiceServer(gs, server.NewHostIdentityService(ids, hub, ca, cfg.HostCertTTL))
	}
	pb.RegisterStoreServiceServer(gs, store.NewService(st, log))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)

	addr := lis.Addr().String()
	if err := atomicfile.Write(AddrFile(cfg.DataDir), []byte(addr+"\n"), 0o644); err != nil {
		return err
	}
	// A stopped controller leaves no address behind for admin commands to try.
	defer func() {
		if b, err := os.ReadFile(AddrFile(cfg.DataDir)); err == nil && strings.TrimSpace(string(b)) == addr {
			_ = os.Remove(AddrFile(cfg.DataDir))
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return hub.Run(gctx) })
	g.Go(func() error { return ids.Run(gctx, idsRev) })
	if emb != nil {
		// An embedded etcd that stops by itself (a full disk) stops the
		// controller, with etcd's reason in the log, instead of leaving it
		// serving on a dead store.
		g.Go(func() error { return emb.Wait(gctx) })
	}
	if cfg.UIListen != "" {
		g.Go(func() error { return serveUI(gctx, cfg, fleet, rollouts, tlsCfg, log) })
	}
	g.Go(func() error {
		select {
		case <-hub.Ready():
		case <-gctx.Done():
			return nil
		}
		// Only the leader advances rollouts and chooses primaries; having
		// ignored changes while it did not lead, it looks at all of them.
		return elector.Run(gctx, func(lctx context.Context) {
			hub.ReselectAll(lctx)
			done := make(chan struct{})
			go func() {
				defer close(done)
				rotEngine.Lead(lctx)
			}()
			engine.Lead(lctx, nil)
			<-done
		})
	})
	g.Go(func() error {
		// Connections wait in the listen backlog until the state is loaded:
		// after a restart the whole fleet reconnects at once, and thousands
		// of TLS handshakes (agents' streams wait for Ready anyway) would
		// otherwise take the CPU the load needs (a start of 30 s or more at
		// 10,000 agents). A load that fails (no quorum, a full store)
		// serves at once, and a slow one after serveWait, so that admin
		// calls (defragment) reach a controller that cannot load.
		if !waitServe(gctx, hub.Ready(), hub.LoadFailed(), serveWait) {
			return nil
		}
		if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve gRPC on %s: %w", addr, err)
		}
		return nil
	})
	if metricsLis != nil {
		g.Go(func() error { return metricshttp.Serve(gctx, metricsLis, mets.Registry(), log) })
		url := metricshttp.URL(metricsLis)
		log.Info("metrics served", "url", url)
		if cfg.MetricsReady != nil {
			cfg.MetricsReady(url)
		}
	}
	g.Go(func() error {
		select {
		case <-hub.Ready():
		case <-gctx.Done():
			return nil
		}
		hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		log.Info("controller serving", "addr", addr, "data_dir", cfg.DataDir, "tls", !cfg.Insecure)
		if cfg.Ready != nil {
			cfg.Ready(addr)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		start := time.Now()
		hs.Shutdown()
		// No new connections or streams from here on; the agents' streams
		// are told when to come back and end (within a second), and
		// whatever is left is closed at the stop deadline.
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		hub.Stopping()
		t := time.NewTimer(max(stopDeadline-time.Since(start), 0))
		defer t.Stop()
		select {
		case <-stopped:
		case <-t.C:
			log.Warn("graceful stop timed out; closing remaining streams and calls", "after", stopDeadline)
			gs.Stop()
			<-stopped
		}
		took := time.Since(start)
		log.Info("gRPC server stopped", "took", took.Round(time.Millisecond))
		if cfg.GRPCStopped != nil {
			cfg.GRPCStopped(took)
		}
		return nil
	})
	return g.Wait()
}

// serveWait bounds how long a controller whose state is still loading
// leaves new connections waiting before it serves them anyway.
const serveWait = 10 * time.Second

// waitServe waits until the state is loaded (ready), its load failed, or
// wait passed: true, time to serve; false, ctx ended first.
func waitServe(ctx context.Context, ready, failed <-chan struct{}, wait time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ready:
	case <-failed:
	case <-t.C:
	case <-ctx.Done():
		return false
	}
	return true
}

func listen(addr string, insecure bool) (net.Listener, error) {
	if addr == "" {
		addr = "127.0.0.1:7443"
	}
	if insecure {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: %w", addr, err)
		}
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("--listen %q: --insecure serves plaintext on a loopback address only (127.0.0.1 or ::1)", addr)
		}
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return lis, nil
}

func openStore(ctx context.Context, cfg ServeConfig, log *slog.Logger, intercept grpc.UnaryClientInterceptor) (*clientv3.Client, *etcdembed.Server, func(), error) {
	endpoints := cfg.EtcdEndpoints
	var emb *etcdembed.Server
	ccfg := clientv3.Config{
		DialTimeout:        5 * time.Second,
		MaxCallSendMsgSize: MaxMessageSize,
		MaxCallRecvMsgSize: 64 << 20,
		Logger:             zap.NewNop(),
		DialOptions:        []grpc.DialOption{grpc.WithChainUnaryInterceptor(intercept)},
	}
	if len(endpoints) == 0 {
		if !cfg.EtcdClient.empty() {
			return nil, nil, nil, errors.New("--etcd-ca, --etcd-cert, --etcd-key, --etcd-username and --etcd-password-file need --etcd-endpoints: the embedded etcd listens on a private unix socket only")
		}
		if cfg.EtcdQuotaBytes < 0 {
			return nil, nil, nil, fmt.Errorf("--etcd-quota-bytes %d: want a number of bytes above 0", cfg.EtcdQuotaBytes)
		}
		dir := filepath.Join(cfg.DataDir, "etcd")
		var err error
		emb, err = etcdembed.StartConfig(ctx, etcdembed.Config{Dir: dir, Logger: log,
			QuotaBytes: cfg.EtcdQuotaBytes, CompactionRetention: cfg.EtcdCompactionRetention})
		if err != nil {
			return nil, nil, nil, err
		}
		endpoints = []string{emb.Endpoint()}
		log.Info("embedded etcd started", "dir", dir, "quota_bytes", emb.QuotaBytes())
	} else if err := cfg.EtcdClient.apply(&ccfg); err != nil {
		return nil, nil, nil, err
	}
	ccfg.Endpoints = endpoints
	cli, err := clientv3.New(ccfg)
	if err != nil {
		if emb != nil {
			emb.Close()
		}
		return nil, nil, nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	return cli, emb, func() {
		cli.Close() // clients before the server
		if emb != nil {
			emb.Close()
		}
	}, nil
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
