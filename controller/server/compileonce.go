package server

import (
	"context"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// An apply parses and compiles its document once. The result serves the
// plan, the rollout and, handed to the hub before the revision is stored
// (offerCompiled), the watch that makes the revision current
// (compiledRecord); the plan's "before" side is the hub's current
// compilation when it is the current revision (currentFor). Only a
// revision this replica did not apply itself, or one the hub has not
// caught up with, is compiled from its stored document.

// offerCompiled hands the hub the compilation of document doc (its
// canonical form, as it will be stored), t compiled to cfgs. It replaces
// any earlier offer and returns the one it installed, for withdrawCompiled.
func (h *Hub) offerCompiled(doc []byte, t *topology.Topology, cfgs []*pb.HostConfig) *compiled {
	c := newCompiled(&store.TopologyRecord{Name: t.Name, Hash: store.DocumentHash(doc)}, t, cfgs)
	h.mu.Lock()
	h.fresh = c
	h.mu.Unlock()
	return c
}

// withdrawCompiled drops offer c when no revision took it (the apply
// failed or changed nothing).
func (h *Hub) withdrawCompiled(c *compiled) {
	h.mu.Lock()
	if h.fresh == c {
		h.fresh = nil
	}
	h.mu.Unlock()
}

// compiledRecord is the compilation of stored record rec: the offered one
// when it is of the same document (by hash; the configurations depend on
// the document only), otherwise rec's document parsed and compiled.
func (h *Hub) compiledRecord(rec *store.TopologyRecord) (*compiled, error) {
	h.mu.Lock()
	f := h.fresh
	if f != nil && f.hash == rec.Hash {
		h.fresh = nil
	}
	h.mu.Unlock()
	if f == nil || f.hash != rec.Hash {
		return h.compileRecord(rec)
	}
	c := *f
	c.revision, c.sequence, c.name, c.pins = rec.Revision, rec.Sequence, rec.Name, rec.Secrets
	return &c, nil
}

// currentRecord returns the current topology's record, as far as an
// apply needs it (revision, sequence, name, hash): from the hub's own
// compilation when etcd's current revision is the one the hub has made
// current, read from etcd otherwise (another replica committed since, or
// the hub is behind). Only the revision is read when they agree: the
// record of a large fleet is megabytes to read and decode.
func (h *Hub) currentRecord(ctx context.Context) (*store.TopologyRecord, error) {
	rev, err := h.cfg.Store.CurrentRevision(ctx)
	if err != nil {
		return nil, err
	}
	if c := h.currentCompiled(); c != nil && c.revision == rev && c.sequence != 0 {
		return &store.TopologyRecord{Revision: c.revision, Sequence: c.sequence, Name: c.name, Hash: c.hash}, nil
	}
	return h.cfg.Store.CurrentTopology(ctx)
}

// currentFor is the compilation of rec, the current revision: the hub's
// when it has made rec current already, else rec compiled.
func (h *Hub) currentFor(rec *store.TopologyRecord) (*compiled, error) {
	if c := h.currentCompiled(); c != nil && c.revision == rec.Revision && c.hash == rec.Hash {
		return c, nil
	}
	return h.compileRecord(rec)
}

// compileRecord parses and compiles a stored revision's document.
func (h *Hub) compileRecord(rec *store.TopologyRecord) (*compiled, error) {
	h.compiles.Add(1)
	return compileDocument(rec)
}
