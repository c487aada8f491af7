package sim

import (
	"context"
	"crypto/x509"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/s2strust/s2strust/agent/driver/drivertest"
	"github.com/s2strust/s2strust/agent/reconcile"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestConformance runs the drivers' conformance suite against the sim.
func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) drivertest.World { return newConformanceWorld(t) })
}

// TestRotationConformance runs the rotation scenarios against the sim.
func TestRotationConformance(t *testing.T) {
	drivertest.RunRotation(t, func(t *testing.T) drivertest.RotationWorld { return newConformanceWorld(t) })
}

// conformanceWorld is an estate of sim hosts sharing one directory of
// deployment stores, with the fixtures' partner metadata.
type conformanceWorld struct {
	env   *env
	mu    sync.Mutex
	hosts map[string]*Sim
	next  []*pb.SecretMaterial
}

func newConformanceWorld(t *testing.T) *conformanceWorld {
	e := newEnv(t)
	e.fetch.fail = map[string]error{}
	return &conformanceWorld{env: e, hosts: map[string]*Sim{}}
}

func (w *conformanceWorld) sim(t *testing.T, host string, p pb.Product, version string) *Sim {
	w.mu.Lock()
	defer w.mu.Unlock()
	if s, ok := w.hosts[host]; ok {
		return s
	}
	s, err := New(Config{
		Host: host, StateDir: filepath.Join(t.TempDir(), host), SharedDir: w.env.shared,
		Products: []*pb.DetectedProduct{{Product: p, Version: version}}, Now: time.Now, FetchMetadata: w.env.fetch.fetch,
	})
	if err != nil {
		t.Fatalf("New(%s): %v", host, err)
	}
	w.hosts[host] = s
	return s
}

// Host returns the sim of host as a reconcile.Backend whose reads see the
// product's own work done first (installation, replication, a Lync Front
// End's Default certificate), as the sim's Apply does before it plans.
func (w *conformanceWorld) Host(t *testing.T, host string, p pb.Product, version string) reconcile.Backend {
	return preparing{w.sim(t, host, p, version)}
}

type preparing struct{ *Sim }

func (b preparing) Read(ctx context.Context, cfg *pb.HostConfig) (*reconcile.State, error) {
	b.mu.Lock()
	err := b.prepare(cfg)
	b.mu.Unlock()
	if pe := (*reconcile.ProductError)(nil); err != nil && !errors.As(err, &pe) {
		return nil, err
	}
	return b.Sim.Read(ctx, cfg)
}

func (w *conformanceWorld) Seed(t *testing.T, cfg *pb.HostConfig, partners []reconcile.Partner) {
	s := w.sim(t, cfg.GetHost(), cfg.GetProduct(), cfg.GetProductVersion())
	if err := s.Seed(cfg, partners); err != nil {
		t.Fatalf("seed %s: %v", cfg.GetDeployment(), err)
	}
}

func (w *conformanceWorld) BreakMetadata(t *testing.T, url string, broken bool) {
	w.env.fetch.mu.Lock()
	defer w.env.fetch.mu.Unlock()
	if broken {
		w.env.fetch.fail[url] = errors.New("fetch metadata from " + url + ": connection refused")
	} else {
		delete(w.env.fetch.fail, url)
	}
}

func (w *conformanceWorld) Secrets(t *testing.T) []*pb.SecretMaterial { return secrets(t) }

func (w *conformanceWorld) NextSecrets(t *testing.T) []*pb.SecretMaterial {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.next == nil {
		_, m := nextIssuer(t, time.Now())
		m.Name = drivertest.NextIssuerSecret
		w.next = []*pb.SecretMaterial{m}
	}
	return w.next
}

func (w *conformanceWorld) Publish(t *testing.T, url string, list []*x509.Certificate) {
	w.env.fetch.mu.Lock()
	defer w.env.fetch.mu.Unlock()
	if w.env.fetch.pub == nil {
		w.env.fetch.pub = map[string][]*x509.Certificate{}
	}
	w.env.fetch.pub[url] = list
}
