package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// MaxDocumentSize bounds a topology document.
const MaxDocumentSize = 1 << 20

// TopologyChecker runs checks beyond the topology's own validation that
// need the controller's state, such as the token-issuer certificate
// against the topology's SIP domains. It returns field violations that
// refuse the topology (errs) and ones that are only shown (warnings); err
// is a failure to check at all.
type TopologyChecker interface {
	CheckTopology(ctx context.Context, t *topology.Topology) (errs, warnings []topology.FieldViolation, err error)
}

// SecretPinner chooses the secret versions a topology's hosts use, stored
// with the revision (see package secrets).
type SecretPinner interface {
	Pins(ctx context.Context, t *topology.Topology) (map[string]store.SecretPin, error)
}

// MaxWarnings bounds the warnings an ApplyTopology answer lists; a last one
// counts those left out.
const MaxWarnings = topology.MaxViolations

// TopologyService implements pb.TopologyServiceServer.
type TopologyService struct {
	pb.UnimplementedTopologyServiceServer
	hub     *Hub
	checker TopologyChecker
}

// NewTopologyService returns the topology API. checker may be nil.
func NewTopologyService(hub *Hub, checker TopologyChecker) *TopologyService {
	return &TopologyService{hub: hub, checker: checker}
}

// ApplyTopology implements the RPC; see the proto for its contract.
func (s *TopologyService) ApplyTopology(ctx context.Context, req *pb.ApplyTopologyRequest) (*pb.ApplyTopologyResponse, error) {
	return s.apply(ctx, req, "")
}

// apply is ApplyTopology; undoOf names the rollout an undo undoes.
func (s *TopologyService) apply(ctx context.Context, req *pb.ApplyTopologyRequest, undoOf string) (*pb.ApplyTopologyResponse, error) {
	name := req.GetFilename()
	if name == "" {
		name = "topology"
	}
	if len(req.GetDocument()) > MaxDocumentSize {
		return nil, invalid("document", fmt.Sprintf("%d bytes", len(req.GetDocument())), fmt.Sprintf("a topology document of at most %d bytes", MaxDocumentSize))
	}
	t, err := topology.Load(name, req.GetDocument())
	if err != nil {
		return nil, s.withCurrentRealms(ctx, req.GetDocument(), err)
	}
	var warnings []string
	if s.checker != nil {
		vs, ws, err := s.checker.CheckTopology(ctx, t)
		if err != nil {
			return nil, err
		}
		if len(vs) > 0 {
			return nil, &topology.Error{File: name, Violations: vs}
		}
		warnings = renderWarnings(name, ws)
	}
	next, err := topology.Compile(t)
	if err != nil {
		return nil, err
	}
	doc, err := t.Canonical()
	if err != nil {
		return nil, err
	}
	st := s.hub.cfg.Store
	var prev []*pb.HostConfig
	var curRev uint64
	cur, err := st.CurrentTopology(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, err
	default:
		curRev = cur.Revision
		c, err := compileDocument(cur)
		if err != nil {
			return nil, fmt.Errorf("compile current revision %d: %w", cur.Revision, err)
		}
		for _, h := range c.order {
			prev = append(prev, c.hosts[h])
		}
	}
	plan := topology.Plan(prev, next)
	resp := boundedPlan(plan)
	resp.Warnings = warnings
	// A bad rollout strategy is refused by a dry run too.
	if _, err := rolloutStrategy(t, next, withImmediate(req)); err != nil {
		return nil, err
	}
	if req.GetDryRun() {
		if req.ExpectedRevision != nil && req.GetExpectedRevision() != curRev {
			return nil, fmt.Errorf("expected revision %d, current is %d: %w", req.GetExpectedRevision(), curRev, store.ErrConflict)
		}
		resp.Revision = curRev
		if cur != nil {
			resp.Sequence = cur.Sequence
		}
		return resp, nil
	}
	var pins map[string]store.SecretPin
	if p, ok := s.checker.(SecretPinner); ok {
		if pins, err = p.Pins(ctx, t); err != nil {
			return nil, err
		}
	}
	who := callerName(ctx)
	if req.ExpectedRevision != nil && req.GetExpectedRevision() != curRev {
		return nil, fmt.Errorf("expected revision %d, current is %d: %w", req.GetExpectedRevision(), curRev, store.ErrConflict)
	}
	if err := s.hub.runningRotation(ctx); err != nil {
		return nil, err
	}
	// The rollout is stored in the revision's own transaction: the
	// revision is never current without it, and a failed apply leaves no
	// rollout behind (nor aborts the running one).
	ro, err := s.hub.newRollout(ctx, t, store.DocumentHash(doc), next, withImmediate(req), who, undoOf)
	if err != nil {
		return nil, err
	}
	var also store.WithTopology
	var stored *pb.Rollout
	if ro != nil {
		also = s.hub.withRollout(ro, &stored)
	}
	rev, seq, changed, err := st.PutTopologyWith(ctx, t.Name, doc, pins, nil, who, s.hub.cfg.Now(), req.ExpectedRevision, s.auditRecord(who, peerAddr(ctx), t.Name, plan, pins), also)
	if err != nil {
		return nil, err
	}
	resp.Revision, resp.Sequence, resp.Changed = rev, seq, changed
	if stored != nil && changed {
		resp.Rollout = stored.GetName()
	}
	return resp, nil
}

// withImmediate is the request's strategy with its immediate flag.
func withImmediate(req *pb.ApplyTopologyRequest) *pb.RolloutStrategy {
	s := &pb.RolloutStrategy{}
	if req.GetRollout() != nil {
		s = proto.Clone(req.GetRollout()).(*pb.RolloutStrategy)
	}
	if req.GetImmediate() {
		s.Immediate = true
	}
	return s
}

// renderWarnings formats warnings as topology errors are formatted
// (`file:line:col: field: "value": description`), at most MaxWarnings.
func renderWarnings(file string, ws []topology.FieldViolation) []string {
	out := make([]string, 0, min(len(ws), MaxWarnings+1))
	for i, w := range ws {
		if i == MaxWarnings {
			out = append(out, fmt.Sprintf("%s: and %d more warnings", file, len(ws)-MaxWarnings))
			break
		}
		out = append(out, (&topology.Error{File: file, Violations: []topology.FieldViolation{w}}).Error())
	}
	return out
}

// MaxPlanHosts bounds the hosts listed in an ApplyTopology answer.
const MaxPlanHosts = 500

// boundedPlan keeps the hosts that change, at most MaxPlanHosts of them,
// so that the answer fits the message size limit for any fleet.
func boundedPlan(plan []*pb.HostPlan) *pb.ApplyTopologyResponse {
	resp := &pb.ApplyTopologyResponse{HostsTotal: uint32(len(plan))}
	for _, hp := range plan {
		if len(hp.GetItems()) == 0 {
			continue
		}
		resp.HostsChanged++
		if len(resp.Plan) < MaxPlanHosts {
			resp.Plan = append(resp.Plan, hp)
		} else {
			resp.PlanTruncated = true
		}
	}
	return resp
}

// auditRecord says who changed the topology to what; it is stored with the change.
func (s *TopologyService) auditRecord(who, from, name string, plan []*pb.HostPlan, pins map[string]store.SecretPin) []byte {
	var changes []string
	for _, hp := range plan {
		for _, it := range hp.GetItems() {
			changes = append(changes, hp.GetHost()+": "+it.GetAction()+" "+it.GetItem())
		}
	}
	// Bounded like the answer: a record for a huge change lists its first items.
	const maxChanges = 2000
	if n := len(changes); n > maxChanges {
		changes = append(changes[:maxChanges], fmt.Sprintf("… and %d more", n-maxChanges))
	}
	rec := map[string]any{"kind": "topology", "topology": name, "who": who, "from": from, "when": s.hub.cfg.Now().UTC(), "changes": changes,
		"what": fmt.Sprintf("apply topology %s (%d changes)", name, len(changes)), "result": "ok"}
	if len(pins) > 0 {
		// The secret versions the revision uses, by name, version and thumbprint only.
		rec["secrets"] = pins
	}
	b, _ := json.Marshal(rec)
	return b
}

// GetTopology implements the RPC; see the proto for its contract.
func (s *TopologyService) GetTopology(ctx context.Context, req *pb.GetTopologyRequest) (*pb.GetTopologyResponse, error) {
	var rec *store.TopologyRecord
	var err error
	if req.GetRevision() == 0 {
		rec, err = s.hub.cfg.Store.CurrentTopology(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Error(codes.NotFound, "no topology has been applied yet: run `s2s-controller apply -f FILE`")
		}
	} else {
		rec, err = s.hub.cfg.Store.TopologyRevision(ctx, req.GetRevision())
	}
	if err != nil {
		return nil, err
	}
	return &pb.GetTopologyResponse{Topology: revisionProto(rec, true)}, nil
}

// ListTopologyRevisions implements the RPC; see the proto for its contract.
func (s *TopologyService) ListTopologyRevisions(ctx context.Context, req *pb.ListTopologyRevisionsRequest) (*pb.ListTopologyRevisionsResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, invalid("page_size", strconv.Itoa(size), "a page size from 0 to 1000")
	case size == 0:
		size = 50
	case size > 1000:
		size = 1000
	}
	var before uint64
	if tok := req.GetPageToken(); tok != "" {
		n, err := strconv.ParseUint(tok, 10, 64)
		if err != nil {
			return nil, invalid("page_token", tok, "a token from a previous response")
		}
		before = n
	}
	recs, err := s.hub.cfg.Store.ListTopologyRevisions(ctx, size, before)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListTopologyRevisionsResponse{}
	for _, r := range recs {
		resp.Revisions = append(resp.Revisions, revisionProto(r, false))
	}
	if len(recs) == size {
		resp.NextPageToken = strconv.FormatUint(recs[len(recs)-1].Revision, 10)
	}
	return resp, nil
}

func revisionProto(r *store.TopologyRecord, withDoc bool) *pb.TopologyRevision {
	out := &pb.TopologyRevision{Revision: r.Revision, Sequence: r.Sequence, Name: r.Name, AppliedAt: timestamp(r.AppliedAt), AppliedBy: r.AppliedBy, Hash: r.Hash}
	for name, p := range r.Secrets {
		out.Secrets = append(out.Secrets, &pb.SecretVersion{Name: name, Version: p.Version, Thumbprint: p.Thumbprint})
	}
	sort.Slice(out.Secrets, func(i, j int) bool { return out.Secrets[i].GetName() < out.Secrets[j].GetName() })
	if withDoc {
		out.Document = string(r.Document)
	}
	return out
}

func callerName(ctx context.Context) string {
	id, err := pki.IdentityFromContext(ctx)
	if err != nil {
		return "anonymous (insecure)"
	}
	return id.String()
}
