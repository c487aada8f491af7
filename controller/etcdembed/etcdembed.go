// Package etcdembed runs a single-node etcd inside the controller process,
// the default store when no --etcd-endpoints are given.
//
// The store decides who may mint tokens that impersonate any user, so it is
// closed to everyone but the controller: etcd listens for clients and for
// raft peers only on unix sockets inside a 0700 directory of the data dir.
// No TCP port of it exists, so no other user of the host can read the store
// or commit a forged raft message, and tests can run many side by side
// without port clashes.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// DefaultQuotaBytes is the default space quota of the embedded etcd's
// database. A controller's state is small (topology revisions, one state
// and one report per host); the quota stops a runaway writer long before
// the disk fills.
const DefaultQuotaBytes = 2 << 30

// DefaultCompactionRetention keeps an hour of history: enough for every
// watch of the controller to resume, short enough that rewritten host
// reports do not pile up.
const DefaultCompactionRetention = time.Hour

// Config configures an embedded etcd.
type Config struct {
	// Dir holds the etcd data and its sockets; it is created with mode 0700.
	Dir string
	// Logger receives etcd's own warnings and errors (default slog.Default()).
	Logger *slog.Logger
	// QuotaBytes is the space quota of the database (0: DefaultQuotaBytes).
	// Over it etcd raises the NOSPACE alarm and refuses writes until the
	// space is compacted, defragmented and the alarm disarmed.
	QuotaBytes int64
	// CompactionRetention is the history kept by periodic auto-compaction
	// (0: DefaultCompactionRetention; negative: no auto-compaction).
	CompactionRetention time.Duration
}

// Server is a running embedded etcd.
type Server struct {
	etcd     *embed.Etcd
	endpoint string
	quota    int64
	closing  *atomic.Bool
}

// Start starts an embedded etcd with its data in dir and the default
// settings; see StartConfig.
func Start(ctx context.Context, dir string) (*Server, error) {
	return StartConfig(ctx, Config{Dir: dir})
}

// SocketDir is the directory of the etcd sockets under an etcd data
// directory; it has mode 0700.
func SocketDir(dir string) string { return filepath.Join(dir, "sockets") }

// ClientEndpoint is the client URL of the embedded etcd with its data in
// dir, for tools and tests on the same host running as its owner.
func ClientEndpoint(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	return "unix://" + filepath.Join(SocketDir(abs), "client.sock")
}

// StartConfig starts an embedded etcd and waits until it serves, or ctx
// ends. A directory that cannot be created or written is refused before
// etcd starts, naming the directory and the cause.
func StartConfig(ctx context.Context, c Config) (*Server, error) {
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	abs, err := filepath.Abs(c.Dir)
	if err != nil {
		return nil, fmt.Errorf("resolve etcd data directory %s: %w", c.Dir, err)
	}
	sockDir := SocketDir(abs)
	if err := privateDir(abs); err != nil {
		return nil, err
	}
	if err := privateDir(sockDir); err != nil {
		return nil, err
	}
	if err := checkWritable(abs); err != nil {
		return nil, err
	}
	clientSock := strings.TrimPrefix(ClientEndpoint(abs), "unix://")
	peerSock := filepath.Join(sockDir, "peer.sock")
	// Sockets left by a killed process would make the listens fail; an
	// older release's socket beside the data is removed for the same reason.
	for _, s := range []string{clientSock, peerSock, filepath.Join(abs, "etcd.sock")} {
		_ = os.Remove(s)
	}
	quota := c.QuotaBytes
	if quota <= 0 {
		quota = DefaultQuotaBytes
	}
	cfg := embed.NewConfig()
	cfg.Name = "s2strust"
	cfg.Dir = filepath.Join(abs, "member-data")
	clientURL := url.URL{Scheme: "unix", Host: clientSock}
	// etcd binds the listen URL's Host as the socket path. The advertised
	// URL only names this member in the cluster (a single node dials no
	// peer); a fixed name survives the round trip through InitialCluster's
	// comma-separated text, which a path with a comma would not.
	peerURL := url.URL{Scheme: "unix", Host: peerSock}
	advPeerURL := url.URL{Scheme: "unix", Host: "s2strust-peer"}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{advPeerURL}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = cfg.Name + "=" + advPeerURL.String()
	cfg.QuotaBackendBytes = quota
	// The raft log is kept in memory until a snapshot: etcd's defaults
	// (10,000 entries, and 5,000 kept after it for a slow follower) suit a
	// cluster; this single member has no follower, and each entry is a
	// transaction of up to 128 writes, so a fleet's connecting streams
	// held some megabytes in entries already applied (about 1.5 KiB per
	// stream at 3,000 agents). A snapshot here is a small file and a cut
	// of the log, and a restart replays fewer entries.
	cfg.SnapshotCount, cfg.SnapshotCatchUpEntries = 1000, 100
	switch {
	case c.CompactionRetention == 0:
		cfg.AutoCompactionMode = embed.CompactorModePeriodic
		cfg.AutoCompactionRetention = DefaultCompactionRetention.String()
	case c.CompactionRetention > 0:
		cfg.AutoCompactionMode = embed.CompactorModePeriodic
		cfg.AutoCompactionRetention = c.CompactionRetention.String()
	}
	// etcd's own warnings and errors (a full disk, a failed fsync, the
	// NOSPACE alarm) belong in the controller's log, not nowhere.
	cfg.LogLevel = "warn"
	closing := &atomic.Bool{}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(newSlogCore(log, zap.WarnLevel, closing)))
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		closing.Store(true)
		return nil, fmt.Errorf("start embedded etcd in %s: %w", abs, err)
	}
	t := time.NewTimer(60 * time.Second)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("start embedded etcd in %s: %w", abs, err)
	case <-e.Server.StopNotify():
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("start embedded etcd in %s: it stopped before serving (see the etcd errors logged above)", abs)
	case <-t.C:
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("start embedded etcd in %s: not ready after 60s", abs)
	case <-ctx.Done():
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("start embedded etcd in %s: %w", abs, ctx.Err())
	}
	return &Server{etcd: e, endpoint: ClientEndpoint(abs), quota: quota, closing: closing}, nil
}

// privateDir creates dir with mode 0700, or tightens an existing one to it.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create etcd data directory %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("restrict etcd data directory %s to its owner: %w", dir, err)
	}
	return nil
}

// checkWritable proves dir takes a write that reaches the disk, so a full
// or read-only disk is named at start instead of surfacing later as an
// etcd panic.
func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".write-check-*")
	if err != nil {
		return fmt.Errorf("etcd data directory %s is not writable: %w", dir, err)
	}
	name := f.Name()
	defer os.Remove(name)
	_, err = f.Write(make([]byte, 4096))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("etcd data directory %s is not writable (is the disk full?): %w", dir, err)
	}
	return nil
}

// Endpoint is the client URL to give to clientv3.
func (s *Server) Endpoint() string { return s.endpoint }

// QuotaBytes is the space quota of the database.
func (s *Server) QuotaBytes() int64 { return s.quota }

// ListenURLs are every URL the server listens on, clients and peers; all
// are unix sockets.
func (s *Server) ListenURLs() []url.URL {
	cfg := s.etcd.Config()
	out := append([]url.URL{}, cfg.ListenClientUrls...)
	out = append(out, cfg.ListenPeerUrls...)
	out = append(out, cfg.ListenMetricsUrls...)
	out = append(out, cfg.ListenClientHttpUrls...)
	return out
}

// Err reports a fatal error of the running server.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Stopped is closed when the server stops by itself (a fatal error such as
// a failed write to a full disk) or after Close.
func (s *Server) Stopped() <-chan struct{} { return s.etcd.Server.StopNotify() }

// Wait returns when the server stops by itself or ctx ends; a stop by
// itself is an error naming the cause etcd reported, if any.
func (s *Server) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.etcd.Err():
		return fmt.Errorf("embedded etcd failed: %w", err)
	case <-s.etcd.Server.StopNotify():
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("embedded etcd stopped (see the etcd errors logged before; is the disk full?)")
	}
}

// Close stops the server. Close every client first.
func (s *Server) Close() {
	s.closing.Store(true)
	s.etcd.Close()
}
