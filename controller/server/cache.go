package server

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// compiled is one topology revision compiled for every host.
type compiled struct {
	revision    uint64
	name        string
	hosts       map[string]*pb.HostConfig // by host, Primary unset
	order       []string                  // hosts sorted
	deployments map[string][]string       // deployment → hosts in topology order
}

// desired is what a host should have now.
type desired struct {
	version uint64
	hash    string
	config  *pb.HostConfig
}

// setTopology compiles a stored topology and makes it current.
func (h *Hub) setTopology(ctx context.Context, value []byte, rev int64) error {
	rec, err := store.DecodeTopology(value, rev)
	if err != nil {
		return err
	}
	c, err := compileDocument(rec)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.topo = c
	h.desired = map[string]*desired{}
	h.mu.Unlock()
	for d := range c.deployments {
		h.reselect(ctx, d)
	}
	h.notifyAll()
	h.log.Info("topology revision current", "revision", rev, "name", rec.Name, "hosts", len(c.order))
	return nil
}

func compileDocument(rec *store.TopologyRecord) (*compiled, error) {
	t, err := topology.Load("stored revision", rec.Document)
	if err != nil {
		return nil, err
	}
	cfgs, err := topology.Compile(t)
	if err != nil {
		return nil, err
	}
	c := &compiled{revision: rec.Revision, name: rec.Name, hosts: map[string]*pb.HostConfig{}, deployments: map[string][]string{}}
	for _, cfg := range cfgs {
		c.hosts[cfg.GetHost()] = cfg
		c.order = append(c.order, cfg.GetHost())
		if _, ok := c.deployments[cfg.GetDeployment()]; !ok {
			c.deployments[cfg.GetDeployment()] = cfg.GetDeploymentHosts()
		}
	}
	return c, nil
}

// desiredFor returns the host's desired state, nil when the host is not in
// the current topology.
func (h *Hub) desiredFor(host string) *desired {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.desiredLocked(host)
}

func (h *Hub) desiredLocked(host string) *desired {
	if d, ok := h.desired[host]; ok {
		return d
	}
	if h.topo == nil {
		return nil
	}
	base, ok := h.topo.hosts[host]
	if !ok {
		return nil
	}
	cfg := proto.Clone(base).(*pb.HostConfig)
	cfg.Primary = h.primaries[cfg.GetDeployment()] == host
	if name := cfg.GetTokenIssuer().GetSecret(); name != "" {
		// A secret replaced under the same name changes the desired state.
		cfg.TokenIssuer.SecretThumbprint = h.secretThumbprints[name]
	}
	d := &desired{version: h.topo.revision, hash: topology.Hash(cfg), config: cfg}
	h.desired[host] = d
	return d
}
