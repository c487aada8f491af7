package server

import (
	"context"
	"fmt"

	"github.com/s2strust/s2strust/controller/rollout"
	"github.com/s2strust/s2strust/controller/rotation"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// compiled is one topology revision compiled for every host.
type compiled struct {
	revision    uint64
	sequence    uint64 // 0 for a record stored before sequence numbers
	name        string
	hash        string                    // the document's, as stored
	hosts       map[string]*pb.HostConfig // by host, Primary unset
	order       []string                  // hosts sorted
	deployments map[string][]string       // deployment → hosts in topology order
	// pins are the secret versions the revision's hosts use; a secret
	// without a pin (a revision stored before pins) uses its newest.
	pins map[string]store.SecretPin
	// shared holds, by host, the desired state of a host that is not its
	// deployment's primary, when it depends on nothing but the revision
	// (no secret, or a pinned one): built once and shared, never modified,
	// however often the desired-state cache is reset (every primary
	// change). Guarded by the hub's mu.
	shared map[string]*desired
}

// desired is what a host should have now.
type desired struct {
	version uint64
	hash    string
	config  *pb.HostConfig
}

// setTopology compiles a stored topology and makes it current, together
// with the targets of latest, the newest rollout when the revision was
// stored: a revision stored with a rollout reaches only the hosts the
// rollout released, from the first moment it is current.
func (h *Hub) setTopology(ctx context.Context, value []byte, rev int64, latest *pb.Rollout) error {
	rec, err := store.DecodeTopology(value, rev)
	if err != nil {
		return err
	}
	c, err := h.compiledRecord(rec)
	if err != nil {
		return err
	}
	targets := targetsOf(latest, c)
	have, err := h.loadRevisions(ctx, targets, c)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.topo = c
	close(h.topoChanged)
	h.topoChanged = make(chan struct{})
	h.latest = latest
	h.installTargetsLocked(targets, have)
	h.resetDesiredLocked()
	h.mu.Unlock()
	h.cfg.Observer.TopologyCurrent(rec.Revision, rec.AppliedAt)
	for d := range c.deployments {
		h.reselect(ctx, d)
	}
	h.notifyAll()
	h.log.Info("topology revision current", "revision", rev, "name", rec.Name, "hosts", len(c.order), "held_back", len(targets))
	return nil
}

// targetsOf is the per-host targets a rollout sets while c is current:
// none (every host on c) unless the rollout rolls c's document out.
func targetsOf(r *pb.Rollout, c *compiled) map[string]uint64 {
	if r == nil || c == nil || r.GetDocumentHash() != c.hash {
		return nil
	}
	return rollout.Targets(r)
}

// rolloutChanged takes the newest rollout's targets when it rolls out the
// current revision. A rollout created for a revision not stored yet
// changes nothing until that revision is current (setTopology).
func (h *Hub) rolloutChanged(ctx context.Context, r *pb.Rollout) {
	h.mu.Lock()
	h.latest = r
	c := h.topo
	h.mu.Unlock()
	if c == nil || r.GetDocumentHash() != c.hash {
		return
	}
	if err := h.SetTargets(ctx, rollout.Targets(r)); err != nil {
		h.log.Error("rollout targets", "rollout", r.GetName(), "error", err)
	}
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
	return newCompiled(rec, t, cfgs), nil
}

// newCompiled is the compiled form of record rec, whose document is t
// (loaded, so normalized) compiled to cfgs.
func newCompiled(rec *store.TopologyRecord, t *topology.Topology, cfgs []*pb.HostConfig) *compiled {
	// A rotation's phase, stored beside the document, is part of the
	// hosts' desired state.
	rotation.Overlay(cfgs, rec.Rotation)
	c := &compiled{revision: rec.Revision, sequence: rec.Sequence, name: rec.Name, hash: rec.Hash,
		hosts: make(map[string]*pb.HostConfig, len(cfgs)), order: make([]string, 0, len(cfgs)),
		deployments: make(map[string][]string, len(t.Deployments)), pins: rec.Secrets}
	for _, cfg := range cfgs {
		c.hosts[cfg.GetHost()] = cfg
		c.order = append(c.order, cfg.GetHost())
	}
	// The deployments' host lists come from the topology, once each: the
	// host configurations no longer carry them.
	for _, d := range t.Deployments {
		c.deployments[d.Name] = d.Hosts
	}
	return c
}

// desiredFor returns the host's desired state, nil when the host is not in
// its target revision. A state not cached yet is built (a clone of the
// host's configuration and its hash) outside the hub's lock: after a
// commit every stream asks at once, and building 10,000 states one after
// the other under one mutex would hold back every push behind them.
func (h *Hub) desiredFor(host string) *desired {
	h.mu.Lock()
	if d, ok := h.desired[host]; ok {
		h.mu.Unlock()
		return d
	}
	in, ok := h.desiredInputLocked(host)
	if !ok {
		h.mu.Unlock()
		return nil
	}
	if in.cached != nil {
		h.desired[host] = in.cached
		h.mu.Unlock()
		return in.cached
	}
	gen := h.desiredGen
	h.mu.Unlock()
	return h.keepIfCurrent(host, gen, in, in.build())
}

// keepIfCurrent caches d, built outside h.mu from in as read at generation
// gen, and returns it; if the inputs changed since (the topology, a
// primary or a secret), it returns the state built anew instead.
func (h *Hub) keepIfCurrent(host string, gen uint64, in desiredInput, d *desired) *desired {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.desiredGen != gen {
		return h.desiredLocked(host)
	}
	if cur, ok := h.desired[host]; ok {
		return cur // another caller built it first
	}
	h.keepDesiredLocked(host, in, d)
	return d
}

// desiredLocked is desiredFor with h.mu held, building under it.
func (h *Hub) desiredLocked(host string) *desired {
	if d, ok := h.desired[host]; ok {
		return d
	}
	in, ok := h.desiredInputLocked(host)
	if !ok {
		return nil
	}
	if in.cached != nil {
		h.desired[host] = in.cached
		return in.cached
	}
	d := in.build()
	h.keepDesiredLocked(host, in, d)
	return d
}

// desiredInput is what a host's desired state is built from, read under
// h.mu; build needs no lock.
type desiredInput struct {
	c          *compiled
	base       *pb.HostConfig
	primary    bool
	secret     string // the token issuer's secret, "" for none
	thumbprint string // its pinned or newest thumbprint
	shareable  bool   // the same for every stream of the revision
	cached     *desired
}

// desiredInputLocked reads the inputs of host's desired state; false when
// the host is not in its target revision. h.mu must be held.
func (h *Hub) desiredInputLocked(host string) (desiredInput, bool) {
	c := h.targetLocked(host)
	if c == nil {
		return desiredInput{}, false
	}
	base, ok := c.hosts[host]
	if !ok {
		return desiredInput{}, false
	}
	in := desiredInput{c: c, base: base, primary: h.primaries[base.GetDeployment()] == host, secret: base.GetTokenIssuer().GetSecret()}
	p, pinned := c.pins[in.secret]
	in.shareable = !in.primary && (in.secret == "" || pinned)
	if in.shareable {
		in.cached = c.shared[host]
	}
	if in.secret != "" {
		// The version the host's target revision pins; storing a newer one
		// changes nothing here. Without a pin, the newest version:
		// replacing it changes the desired state.
		if pinned {
			in.thumbprint = p.Thumbprint
		} else {
			in.thumbprint = h.secretThumbprints[in.secret]
		}
	}
	return in, true
}

// build makes the desired state: the host's configuration as compiled,
// copied (shallowly) only when the host has something of its own, and its
// hash.
func (in desiredInput) build() *desired {
	cfg := in.base
	if in.primary || in.secret != "" {
		// Everything but the fields set below stays shared with the
		// compiled configuration (the partners, the deployment's host
		// list): no one modifies it.
		cfg = copyHostConfig(in.base)
		cfg.Primary = in.primary
	}
	if in.secret != "" {
		cfg.TokenIssuer = withThumbprint(in.base.GetTokenIssuer(), in.thumbprint)
	}
	// cfg is base itself for a host with nothing of its own: every
	// stream's push shares it, and nothing modifies it.
	return &desired{version: in.c.revision, hash: topology.Hash(cfg), config: cfg}
}

// keepDesiredLocked caches d, built from in, as host's desired state.
func (h *Hub) keepDesiredLocked(host string, in desiredInput, d *desired) {
	if in.shareable {
		if in.c.shared == nil {
			in.c.shared = map[string]*desired{}
		}
		in.c.shared[host] = d
	}
	h.desired[host] = d
}

// withThumbprint is a copy of ti (its source shared: nobody modifies it)
// with the secret's thumbprint set. TestWithThumbprint fails when a field
// of TokenIssuer is not copied here.
func withThumbprint(ti *pb.TokenIssuer, thumbprint string) *pb.TokenIssuer {
	return &pb.TokenIssuer{Source: ti.GetSource(), SecretThumbprint: thumbprint}
}

// copyHostConfig is a shallow copy of a host configuration, field by field:
// it is made for most hosts at every commit (each has its own token-issuer
// thumbprint), and through protoreflect it was 4% of a 10,000-host
// commit's CPU. TestCopyHostConfigCopiesEveryField fails when a field
// of HostConfig is not copied here.
func copyHostConfig(m *pb.HostConfig) *pb.HostConfig {
	return &pb.HostConfig{
		Host:                    m.Host,
		Deployment:              m.Deployment,
		Product:                 m.Product,
		ProductVersion:          m.ProductVersion,
		DeploymentHosts:         m.DeploymentHosts,
		Realm:                   m.Realm,
		ServiceName:             m.ServiceName,
		DefaultSipDomain:        m.DefaultSipDomain,
		AdditionalSipDomains:    m.AdditionalSipDomains,
		MetadataUrl:             m.MetadataUrl,
		TokenIssuer:             m.TokenIssuer,
		Partners:                m.Partners,
		RemovePartners:          m.RemovePartners,
		ExchangeAutodiscoverUrl: m.ExchangeAutodiscoverUrl,
		Primary:                 m.Primary,
		TopologyName:            m.TopologyName,
		Endpoint:                m.Endpoint,
		TrustedBy:               m.TrustedBy,
		ConfirmRealmChange:      m.ConfirmRealmChange,
		MetadataNetworks:        m.MetadataNetworks,
		ProbeSipUri:             m.ProbeSipUri,
		ProbeMailbox:            m.ProbeMailbox,
		NextTokenIssuer:         m.NextTokenIssuer,
		RetirePreviousIssuer:    m.RetirePreviousIssuer,
		CertificateRules:        m.CertificateRules,
	}
}

// targetLocked returns the compiled revision host should run: its target
// when one is set, otherwise the current revision. nil when the target
// revision is not loaded (SetTargets loads every revision it names).
// h.mu must be held.
func (h *Hub) targetLocked(host string) *compiled {
	if h.topo == nil {
		return nil
	}
	rev, ok := h.targets[host]
	if !ok || rev == h.topo.revision {
		return h.topo
	}
	return h.revisions[rev]
}

// SetTargets sets the revision each named host should run; every other
// host runs the current revision. It is the desired-state cache's one
// input besides the topology, modelled on go-control-plane's snapshot
// cache: a rollout names the hosts outside its released waves with the
// revision they have, so they keep it while the current revision moves
// on. nil (or an empty map) puts every host on the current revision.
//
// Every revision named is loaded from etcd before anything changes; an
// unknown revision is an error naming it and changes nothing. Hosts whose
// target moved get their new desired state at once.
func (h *Hub) SetTargets(ctx context.Context, targets map[string]uint64) error {
	h.mu.Lock()
	cur := h.topo
	h.mu.Unlock()
	have, err := h.loadRevisions(ctx, targets, cur)
	if err != nil {
		return err
	}
	h.mu.Lock()
	if h.topo != cur {
		// The topology moved meanwhile: its own targets were set with it.
		h.mu.Unlock()
		return nil
	}
	moved := h.installTargetsLocked(targets, have)
	h.forgetDesiredLocked(moved...)
	h.mu.Unlock()
	for _, host := range moved {
		h.notify(host)
	}
	return nil
}

// loadRevisions compiles every revision targets name that is not cur,
// reusing those compiled already.
func (h *Hub) loadRevisions(ctx context.Context, targets map[string]uint64, cur *compiled) (map[uint64]*compiled, error) {
	h.mu.Lock()
	have := map[uint64]*compiled{}
	for rev, c := range h.revisions {
		have[rev] = c
	}
	if h.topo != nil {
		have[h.topo.revision] = h.topo
	}
	h.mu.Unlock()
	if cur != nil {
		have[cur.revision] = cur
	}
	for _, rev := range targets {
		if _, ok := have[rev]; ok || rev == 0 {
			continue // 0: a host new in the revision rolled out waits for its wave
		}
		rec, err := h.cfg.Store.TopologyRevision(ctx, rev)
		if err != nil {
			return nil, fmt.Errorf("target revision %d: %w", rev, err)
		}
		c, err := h.compileRecord(rec)
		if err != nil {
			return nil, fmt.Errorf("compile target revision %d: %w", rev, err)
		}
		have[rev] = c
	}
	return have, nil
}

// installTargetsLocked makes targets current and returns the hosts whose
// target moved. h.mu must be held.
func (h *Hub) installTargetsLocked(targets map[string]uint64, have map[uint64]*compiled) []string {
	old := h.targets
	h.targets = make(map[string]uint64, len(targets))
	h.revisions = map[uint64]*compiled{}
	for host, rev := range targets {
		h.targets[host] = rev
		if c := have[rev]; c != nil && (h.topo == nil || rev != h.topo.revision) {
			h.revisions[rev] = c
		}
	}
	var moved []string
	for host, rev := range h.targets {
		if o, ok := old[host]; !ok || o != rev {
			moved = append(moved, host)
		}
	}
	for host := range old {
		if _, ok := h.targets[host]; !ok {
			moved = append(moved, host)
		}
	}
	return moved
}

// Targets returns a copy of the per-host targets SetTargets set.
func (h *Hub) Targets() map[string]uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]uint64, len(h.targets))
	for k, v := range h.targets {
		out[k] = v
	}
	return out
}
