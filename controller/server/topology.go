package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/pagetoken"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// MaxDocumentSize bounds a topology document: topology.MaxDocumentSize,
// checked before anything is parsed.
const MaxDocumentSize = topology.MaxDocumentSize

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
	// maxResponse bounds an ApplyTopology answer, encoded (0: the default).
	maxResponse int
}

// NewTopologyService returns the topology API. checker may be nil.
func NewTopologyService(hub *Hub, checker TopologyChecker) *TopologyService {
	return &TopologyService{hub: hub, checker: checker}
}

// DefaultMaxResponseBytes is the size an ApplyTopology answer is fitted to
// unless SetMaxResponseBytes says otherwise: gRPC's default receive limit,
// which the controller's own clients use too.
const DefaultMaxResponseBytes = 4 << 20

// SetMaxResponseBytes sets the largest ApplyTopology answer, encoded: the
// message size limit of the server and its clients. n <= 0 restores the
// default.
func (s *TopologyService) SetMaxResponseBytes(n int) { s.maxResponse = n }

func (s *TopologyService) responseLimit() int {
	if s.maxResponse <= 0 {
		return DefaultMaxResponseBytes
	}
	return s.maxResponse
}

// responseReserve is room kept in an ApplyTopology answer for what it gets
// after the commit: revision, sequence, changed and the rollout's name.
const responseReserve = 256

// fitResponse makes resp fit limit bytes encoded, with responseReserve to
// spare: it drops hosts from the end of the plan (plan_truncated) until it
// fits. An answer that does not fit even without any plan (its warnings
// alone are too large) is RESOURCE_EXHAUSTED naming both sizes; the caller
// then stores nothing.
func fitResponse(resp *pb.ApplyTopologyResponse, limit int) error {
	budget := limit - responseReserve
	size := proto.Size(resp)
	for len(resp.Plan) > 0 && size > budget {
		last := resp.Plan[len(resp.Plan)-1]
		n := proto.Size(last)
		// The field's tag and length prefix go with it.
		size -= protowire.SizeTag(3) + protowire.SizeBytes(n)
		resp.Plan = resp.Plan[:len(resp.Plan)-1]
		resp.PlanTruncated = true
	}
	if size = proto.Size(resp); size > budget {
		return status.Errorf(codes.ResourceExhausted,
			"the answer to this apply would be %d bytes encoded even without its plan (its %d warnings, and %d bytes kept for the revision's number and rollout), over the limit of %d bytes for a message; nothing was stored",
			size+responseReserve, len(resp.Warnings), responseReserve, limit)
	}
	return nil
}

// StoreRequestLimit is the largest request the store takes: etcd's
// default --max-request-bytes (1.5 MiB), which the embedded etcd keeps.
// A revision is written in one request: its record (the canonical
// document, base64 in JSON, so about 4/3 of its size, with name, hash and
// pins) and its audit record.
const StoreRequestLimit = 3 << 19

// storeRequestOverhead is room for the request's keys, comparison and
// framing beside the two values.
const storeRequestOverhead = 4 << 10

// checkStoredSize refuses, naming its size and the limit, a revision
// whose record and audit record would not fit one store request, before
// anything is stored: the canonical form of a document under
// MaxDocumentSize can still be too large once encoded.
func checkStoredSize(name string, doc []byte, pins map[string]store.SecretPin, who string, now time.Time, audit []byte, rolloutBytes int) error {
	rec := store.TopologyRecord{Name: name, Document: doc, Hash: store.DocumentHash(doc), AppliedAt: now.UTC(), AppliedBy: who, Sequence: math.MaxUint64, Secrets: pins}
	val, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode topology: %w", err)
	}
	if n := len(val) + len(audit) + rolloutBytes + storeRequestOverhead; n > StoreRequestLimit {
		with := "with its audit record"
		if rolloutBytes > 0 {
			with = fmt.Sprintf("with its audit record and its rollout (%d bytes, the rollout it supersedes included)", rolloutBytes)
		}
		return invalid("document", fmt.Sprintf("%d bytes in canonical form", len(doc)),
			fmt.Sprintf("a topology the store can take in one request: stored, %s, it takes %d bytes, over the store's limit of %d bytes (the canonical form is stored base64-encoded); split it or shorten it", with, n, StoreRequestLimit))
	}
	return nil
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
	// The current revision is read from etcd while the document is parsed.
	type currentRead struct {
		rec *store.TopologyRecord
		err error
	}
	current := make(chan currentRead, 1)
	go func() {
		rec, err := s.hub.currentRecord(ctx)
		current <- currentRead{rec, err}
	}()
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
	read := <-current
	cur, err := read.rec, read.err
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, err
	default:
		curRev = cur.Revision
		// The hub's compilation when it is current already: the current
		// revision is not parsed and compiled again for the plan.
		c, err := s.hub.currentFor(cur)
		if err != nil {
			return nil, fmt.Errorf("compile current revision %d: %w", cur.Revision, err)
		}
		prev = make([]*pb.HostConfig, 0, len(c.order))
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
	// The answer is sized now, before anything is stored: an answer too
	// large to send would fail the call after the revision was stored.
	if err := fitResponse(resp, s.responseLimit()); err != nil {
		return nil, err
	}
	who := callerName(ctx)
	if req.GetDryRun() {
		// What a real apply would store, secret pins aside (a few bytes).
		audit := s.auditRecord(who, peerAddr(ctx), t.Name, plan, nil)
		ro, err := s.hub.newRollout(ctx, t, store.DocumentHash(doc), next, withImmediate(req), who, undoOf, curRev)
		if err != nil {
			return nil, err
		}
		if err := checkStoredSize(t.Name, doc, nil, who, s.hub.cfg.Now(), audit, s.hub.rolloutBytes(ctx, ro)); err != nil {
			return nil, err
		}
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
	if req.ExpectedRevision != nil && req.GetExpectedRevision() != curRev {
		return nil, fmt.Errorf("expected revision %d, current is %d: %w", req.GetExpectedRevision(), curRev, store.ErrConflict)
	}
	if err := s.hub.runningRotation(ctx); err != nil {
		return nil, err
	}
	audit := s.auditRecord(who, peerAddr(ctx), t.Name, plan, pins)
	// The rollout is stored in the revision's own transaction: the
	// revision is never current without it, and a failed apply leaves no
	// rollout behind (nor aborts the running one).
	ro, err := s.hub.newRollout(ctx, t, store.DocumentHash(doc), next, withImmediate(req), who, undoOf, curRev)
	if err != nil {
		return nil, err
	}
	// Before anything is stored: a revision (with its rollout) the store
	// would refuse as too large fails here, naming its size and the limit.
	if err := checkStoredSize(t.Name, doc, pins, who, s.hub.cfg.Now(), audit, s.hub.rolloutBytes(ctx, ro)); err != nil {
		return nil, err
	}
	var also store.WithTopology
	var stored *pb.Rollout
	if ro != nil {
		also = s.hub.withRollout(ro, &stored)
	}
	// The hub takes this compilation when the revision becomes current,
	// which may happen before PutTopologyWith returns.
	offer := s.hub.offerCompiled(doc, t, next)
	rev, seq, changed, err := st.PutTopologyWith(ctx, t.Name, doc, pins, nil, who, s.hub.cfg.Now(), req.ExpectedRevision, audit, also)
	if err != nil || !changed {
		s.hub.withdrawCompiled(offer)
	}
	if err != nil {
		return nil, err
	}
	resp.Revision, resp.Sequence, resp.Changed = rev, seq, changed
	if stored != nil && changed {
		resp.Rollout = stored.GetName()
	}
	if changed {
		// Read your writes: the caller's next call to this controller (an
		// agent's Hello, a status) finds the revision current. Stored
		// either way: past the wait the hub takes it moments later.
		_ = s.hub.awaitRevision(ctx, rev)
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
	// Bounded like the answer: a record for a huge change lists its first
	// items, and counts them all.
	const maxChanges = 2000
	var changes []string
	total := 0
	for _, hp := range plan {
		for _, it := range hp.GetItems() {
			if total < maxChanges {
				changes = append(changes, hp.GetHost()+": "+it.GetAction()+" "+it.GetItem())
			}
			total++
		}
	}
	if total > maxChanges {
		changes = append(changes, fmt.Sprintf("… and %d more", total-maxChanges))
	}
	rec := map[string]any{"kind": "topology", "topology": name, "who": who, "from": from, "when": s.hub.cfg.Now().UTC(), "changes": changes,
		"what": fmt.Sprintf("apply topology %s (%d changes)", name, total), "result": "ok"}
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
	value, rev := s.hub.view.currentTopology()
	current := req.GetRevision() == 0 || (value != nil && req.GetRevision() == uint64(rev))
	stale, err := readOrStale(ctx, s.hub, 0, func(ctx context.Context) error {
		var err error
		if req.GetRevision() == 0 {
			rec, err = s.hub.cfg.Store.CurrentTopology(ctx)
		} else {
			rec, err = s.hub.cfg.Store.TopologyRevision(ctx, req.GetRevision())
		}
		return err
	})
	if stale != nil && !current {
		// Only the current revision is in the last view.
		stale, err = nil, fmt.Errorf("read topology revision %d: %s", req.GetRevision(), stale.GetReason())
		err = status.Error(codes.Unavailable, "the store is unavailable (etcd has no quorum or cannot be reached): "+err.Error())
	}
	if errors.Is(err, store.ErrNotFound) && req.GetRevision() == 0 {
		return nil, status.Error(codes.NotFound, "no topology has been applied yet: run `s2s-controller apply -f FILE`")
	}
	if err != nil {
		return nil, err
	}
	if stale != nil {
		if value == nil {
			return nil, status.Error(codes.NotFound, "no topology had been applied when the controller last read etcd")
		}
		// Its sequence number is stored with it (records from before
		// sequence numbers show none while etcd is down).
		if rec, err = store.DecodeTopology(value, rev); err != nil {
			return nil, err
		}
	}
	return &pb.GetTopologyResponse{Topology: revisionProto(rec, true), Stale: stale}, nil
}

// ListTopologyRevisions implements the RPC; see the proto for its contract.
func (s *TopologyService) ListTopologyRevisions(ctx context.Context, req *pb.ListTopologyRevisionsRequest) (*pb.ListTopologyRevisionsResponse, error) {
	size, err := pagetoken.Size(req.GetPageSize(), 50, 1000)
	if err != nil {
		return nil, err
	}
	var before uint64
	if tok := req.GetPageToken(); tok != "" {
		c, err := pagetoken.Decode("ListTopologyRevisions", tok)
		if err != nil {
			return nil, err
		}
		n, err := strconv.ParseUint(c, 10, 64)
		if err != nil {
			return nil, invalid("page_token", tok, "a token from a previous response")
		}
		before = n
	}
	revisions := recordReader[*store.TopologyRecord, *store.TopologyRecord]{hub: s.hub, what: "revisions", keeps: viewRevisions, kept: keptRevisions,
		list:   s.hub.cfg.Store.ListTopologyRevisions,
		decode: func(k kept[*store.TopologyRecord]) (*store.TopologyRecord, error) { return k.val, nil }}
	recs, stale, err := revisions.page(ctx, size, before)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListTopologyRevisionsResponse{Stale: stale}
	for _, r := range recs {
		resp.Revisions = append(resp.Revisions, revisionProto(r, false))
	}
	if len(recs) == size {
		resp.NextPageToken = pagetoken.Encode("ListTopologyRevisions", strconv.FormatUint(recs[len(recs)-1].Revision, 10))
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
