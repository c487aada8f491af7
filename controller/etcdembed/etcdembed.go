// Package etcdembed runs a single-node etcd inside the controller process,
// the default store when no --etcd-endpoints are given. It listens on a
// unix socket in its data directory only, so nothing outside the host can
// reach it and tests can run many side by side without port clashes.
package etcdembed

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is a running embedded etcd.
type Server struct {
	etcd     *embed.Etcd
	endpoint string
}

// Start starts an embedded etcd with its data in dir and waits until it
// serves, or ctx ends.
func Start(ctx context.Context, dir string) (*Server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create etcd data directory %s: %w", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("resolve etcd data directory %s: %w", dir, err)
	}
	sock := filepath.Join(abs, "etcd.sock")
	// A socket left by a killed process would make the listen fail.
	_ = os.Remove(sock)
	cfg := embed.NewConfig()
	cfg.Name = "s2strust"
	cfg.Dir = filepath.Join(abs, "member-data")
	clientURL := url.URL{Scheme: "unix", Host: sock}
	peerURL, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{*peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("start embedded etcd in %s: %w", dir, err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("start embedded etcd in %s: not ready after 60s", dir)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("start embedded etcd in %s: %w", dir, ctx.Err())
	}
	return &Server{etcd: e, endpoint: "unix://" + sock}, nil
}

// Endpoint is the client URL to give to clientv3.
func (s *Server) Endpoint() string { return s.endpoint }

// Err reports a fatal error of the running server.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the server. Close every client first.
func (s *Server) Close() {
	s.etcd.Close()
}
