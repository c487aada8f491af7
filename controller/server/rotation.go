package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/pagetoken"
	"github.com/s2strust/s2strust/controller/rotation"
	"github.com/s2strust/s2strust/controller/secrets"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// DefaultEffectiveDelay is how long after a rotation's start its new
// certificate becomes effective when the request names no time: long
// enough for the stage and refresh phases of a large fleet to finish
// first (Lync switches at the effective date by itself).
const DefaultEffectiveDelay = time.Hour

// ExpiryMargin is how long before the current certificate expires the new
// one must be effective at the latest (issue 8: "the date at least 24 h
// before the current certificate expires").
const ExpiryMargin = 24 * time.Hour

// RotationSource is the fleet as the rotation engine reads it.
type RotationSource struct{ RolloutSource }

// NewRotationSource returns the rotation engine's view of the fleet.
func NewRotationSource(hub *Hub) *RotationSource {
	return &RotationSource{RolloutSource{hub: hub}}
}

// Configs implements rotation.Source: the hub's compiled current revision.
func (s *RotationSource) Configs(context.Context) (uint64, []*pb.HostConfig, error) {
	c := s.hub.currentCompiled()
	if c == nil {
		return 0, nil, nil
	}
	out := make([]*pb.HostConfig, 0, len(c.order))
	for _, h := range c.order {
		out = append(out, c.hosts[h])
	}
	return c.revision, out, nil
}

// RotationService implements pb.RotationServiceServer, and
// rotation.Applier for the engine.
type RotationService struct {
	pb.UnimplementedRotationServiceServer
	hub       *Hub
	topo      *TopologyService
	rotations *rotation.Store
	// stored reads rotations for the read calls: from etcd, or from the
	// hub's last view while etcd does not answer.
	stored recordReader[*rotation.Stored, []byte]
}

// NewRotationService returns the rotation API; topo's store holds the
// revisions of the phases.
func NewRotationService(hub *Hub, topo *TopologyService) *RotationService {
	rs := rotation.NewStore(hub.cfg.Store)
	return &RotationService{hub: hub, topo: topo, rotations: rs, stored: recordReader[*rotation.Stored, []byte]{
		hub: hub, what: "rotations", keeps: viewRotations, kept: keptRotations,
		get: rs.Get, list: rs.List,
		decode: func(k kept[[]byte]) (*rotation.Stored, error) {
			return rs.Decode([]byte(rs.Key(k.id)), k.val, k.modRev)
		},
	}}
}

// Rotations returns the rotations store.
func (s *RotationService) Rotations() *rotation.Store { return s.rotations }

// CreateRotation implements the RPC; see the proto for its contract.
func (s *RotationService) CreateRotation(ctx context.Context, req *pb.CreateRotationRequest) (*pb.CreateRotationResponse, error) {
	if id := req.GetRequestId(); id != "" && !req.GetValidateOnly() {
		list, err := s.rotations.List(ctx, 20, 0)
		if err != nil {
			return nil, err
		}
		for _, r := range list {
			if r.Rotation.GetRequestId() == id {
				return &pb.CreateRotationResponse{Rotation: r.Rotation}, nil // a retry
			}
		}
	}
	r, err := s.plan(ctx, req)
	if err != nil {
		return nil, err
	}
	active, err := s.rotations.Active(ctx)
	if err != nil {
		return nil, err
	}
	if active != nil {
		return nil, rotation.Busy(active.Rotation)
	}
	if req.GetValidateOnly() {
		return &pb.CreateRotationResponse{Rotation: r}, nil
	}
	stored, err := s.rotations.Create(ctx, r)
	if err != nil {
		return nil, err
	}
	s.hub.log.Info("rotation created", "rotation", stored.Rotation.GetName(), "deployment", r.GetDeployment(),
		"from", r.GetOldThumbprint(), "to", r.GetNewThumbprint(), "start", r.GetStartTime().AsTime(), "effective", r.GetEffectiveTime().AsTime(), "by", r.GetCreatedBy())
	return &pb.CreateRotationResponse{Rotation: stored.Rotation}, nil
}

// plan checks a request against the current topology, the secrets and
// the hosts' reports, and returns the rotation to store.
func (s *RotationService) plan(ctx context.Context, req *pb.CreateRotationRequest) (*pb.Rotation, error) {
	now := s.hub.cfg.Now()
	dep := req.GetDeployment()
	if dep == "" {
		return nil, invalid("deployment", "", "the deployment whose token-issuer certificate to rotate")
	}
	st := s.hub.cfg.Store
	cur, err := st.CurrentTopology(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("no topology has been applied yet: nothing to rotate: %w", store.ErrConflict)
	}
	if err != nil {
		return nil, err
	}
	t, err := topology.Load("stored revision", cur.Document)
	if err != nil {
		return nil, fmt.Errorf("load current revision %d: %w", cur.Revision, err)
	}
	var d *topology.Deployment
	var names []string
	for i := range t.Deployments {
		names = append(names, t.Deployments[i].Name)
		if t.Deployments[i].Name == dep {
			d = &t.Deployments[i]
		}
	}
	if d == nil {
		return nil, invalid("deployment", dep, fmt.Sprintf("is not a deployment of topology %s (it has %s)", t.Name, strings.Join(names, ", ")))
	}
	product, _ := products.Parse(d.Product)
	if want := req.GetProduct(); want != pb.Product_PRODUCT_UNSPECIFIED && want != product {
		return nil, invalid("deployment", dep, fmt.Sprintf("is a %s deployment, not %s: rotate its token issuer with `s2s-controller rotate %s`",
			products.DisplayName(product), products.DisplayName(want), RotateCommand(product)))
	}

	// The new certificate.
	ref := req.GetSecret()
	name, version, err := rotation.ParseSecretRef(ref)
	if err != nil {
		return nil, invalid("secret", ref, err.Error())
	}
	if ref == "" {
		return nil, invalid("secret", "", "the secret holding the new certificate (NAME, NAME@vN)")
	}
	if err := secrets.ValidName(name); err != nil {
		return nil, invalid("secret", ref, err.Error())
	}
	version, info, err := secrets.Resolve(ctx, st, name, version)
	if errors.Is(err, store.ErrNotFound) {
		return nil, invalid("secret", ref, fmt.Sprintf("no such secret or version: upload the new certificate with `s2s-controller secret put %s --new-version --pfx FILE --password-file FILE`", name))
	}
	if err != nil {
		return nil, err
	}
	for _, o := range t.Deployments {
		if o.Name != dep && o.TokenIssuer != nil && o.TokenIssuer.Secret == name {
			return nil, fmt.Errorf("secret %q is also the token issuer of deployment %s: a rotation changes one deployment; give %s a secret of its own: %w", name, o.Name, dep, store.ErrConflict)
		}
	}
	newRef := rotation.SecretRef(name, version)
	cfgs, err := topology.Compile(t)
	if err != nil {
		return nil, err
	}
	var host *pb.HostConfig
	var depHosts []string
	for _, c := range cfgs {
		if c.GetDeployment() == dep {
			if host == nil {
				host = c
			}
			depHosts = append(depHosts, c.GetHost())
		}
	}
	if s.hub.cfg.Secrets == nil {
		return nil, fmt.Errorf("this controller cannot open secrets: %w", store.ErrConflict)
	}
	mat, err := s.hub.cfg.Secrets.SecretVersions(ctx, []secrets.Ref{{Name: name, Version: version}})
	if err != nil {
		return nil, err
	}
	b, err := certs.LoadPFXContext(ctx, mat[0].GetPfx(), mat[0].GetPassword())
	if err != nil {
		return nil, invalid("secret", newRef, err.Error())
	}
	var bad []topology.FieldViolation
	for _, f := range certs.Check(b.Cert, b.Key != nil, certs.RequirementsFor(host, now)) {
		if f.Severity == certs.SeverityError {
			bad = append(bad, topology.FieldViolation{Field: "secret", Value: newRef, Description: f.Message})
		}
	}
	if len(bad) > 0 {
		return nil, &topology.Error{Violations: bad}
	}

	// The current certificate: the secret version the revision pins, or
	// what the deployment's hosts report.
	r := &pb.Rotation{
		Deployment: dep, Product: product, NewSecret: newRef, NewThumbprint: info.GetThumbprint(), NewNotAfter: info.GetNotAfter(),
		CreateTime: timestamppb.New(now), UpdateTime: timestamppb.New(now), CreatedBy: callerName(ctx), RequestId: req.GetRequestId(),
	}
	if ti := d.TokenIssuer; ti != nil && ti.Secret != "" {
		pin, ok := cur.Secrets[ti.Secret]
		v, oldInfo, err := secrets.Resolve(ctx, st, ti.Secret, pin.Version)
		if err != nil {
			return nil, fmt.Errorf("read the current token-issuer secret %s of %s: %w", ti.Secret, dep, err)
		}
		if !ok {
			pin.Version = v
		}
		r.OldSecret, r.OldThumbprint, r.OldNotAfter = rotation.SecretRef(ti.Secret, v), oldInfo.GetThumbprint(), oldInfo.GetNotAfter()
	} else {
		reports, _, err := (&FleetService{hub: s.hub}).allReports(ctx)
		if err != nil {
			return nil, err
		}
		for _, h := range depHosts {
			rep := reports[h]
			if tp := rep.GetIssuerCertificate().GetThumbprint(); tp != "" {
				r.OldThumbprint, r.OldNotAfter = tp, rep.GetIssuerCertificate().GetNotAfter()
				break
			}
			if tp := rep.GetOauth().GetIssuerThumbprint(); tp != "" && r.OldThumbprint == "" {
				r.OldThumbprint = tp
			}
		}
		if r.OldThumbprint == "" {
			return nil, fmt.Errorf("no host of deployment %s has reported its current token-issuer certificate yet: start its agents first: %w", dep, store.ErrConflict)
		}
	}
	if strings.EqualFold(r.GetOldThumbprint(), r.GetNewThumbprint()) {
		return nil, invalid("secret", newRef, fmt.Sprintf("holds certificate %s, the one deployment %s signs with now: upload the new certificate with `s2s-controller secret put %s --new-version` and name that version",
			r.GetNewThumbprint(), dep, name))
	}

	// When.
	start := now
	if req.GetStartTime() != nil {
		start = req.GetStartTime().AsTime()
		if start.Before(now) {
			return nil, invalid("start_time", start.UTC().Format(time.RFC3339), fmt.Sprintf("is in the past (it is %s now): give a time to come, or none to start now", now.UTC().Format(time.RFC3339)))
		}
	}
	effective := start.Add(DefaultEffectiveDelay)
	if req.GetEffectiveTime() != nil {
		effective = req.GetEffectiveTime().AsTime()
		if effective.Before(start) {
			return nil, invalid("effective_time", effective.UTC().Format(time.RFC3339), fmt.Sprintf("is before the rotation starts (%s): the new certificate is staged and refreshed first", start.UTC().Format(time.RFC3339)))
		}
	}
	effective = effective.UTC().Truncate(time.Second)
	if na := r.GetOldNotAfter(); na != nil {
		if latest := na.AsTime().Add(-ExpiryMargin); effective.After(latest) {
			return nil, invalid("effective_time", effective.Format(time.RFC3339), fmt.Sprintf("is later than 24 hours before the current certificate %s expires (%s): make it effective at %s at the latest",
				rotation.Short(r.GetOldThumbprint()), na.AsTime().UTC().Format(time.RFC3339), latest.UTC().Format(time.RFC3339)))
		}
	}
	if nb := info.GetNotBefore(); nb != nil && effective.Before(nb.AsTime()) {
		return nil, invalid("effective_time", effective.Format(time.RFC3339), fmt.Sprintf("is before the new certificate is valid (from %s)", nb.AsTime().UTC().Format(time.RFC3339)))
	}
	r.StartTime, r.EffectiveTime = timestamppb.New(start), timestamppb.New(effective)
	return rotation.New(r), nil
}

// RotateCommand is the CLI's rotate subcommand for a product's
// token-issuer certificate.
func RotateCommand(p pb.Product) string {
	switch p {
	case pb.Product_PRODUCT_EXCHANGE:
		return "auth-certificate"
	case pb.Product_PRODUCT_SHAREPOINT:
		return "sts-certificate"
	}
	return "issuer"
}

// ApplyPhase implements rotation.Applier: it stores the revision of r's
// current phase (the current document, from activate on naming the new
// secret, with the phase beside it) with a rollout planned from the
// topology's rollout: section, never all at once, and one host at a time
// when activating Exchange (each server's IIS reset interrupts it).
func (s *RotationService) ApplyPhase(ctx context.Context, r *pb.Rotation) (uint64, uint64, string, error) {
	st := s.hub.cfg.Store
	cur, err := st.CurrentTopology(ctx)
	if err != nil {
		return 0, 0, "", err
	}
	t, err := topology.Load("stored revision", cur.Document)
	if err != nil {
		return 0, 0, "", err
	}
	phase := r.GetCurrentPhase()
	doc := cur.Document
	pins := map[string]store.SecretPin{}
	for k, v := range cur.Secrets {
		pins[k] = v
	}
	if phase == pb.RotationPhase_ROTATION_PHASE_ACTIVATE || phase == pb.RotationPhase_ROTATION_PHASE_RETIRE {
		name, version, err := rotation.ParseSecretRef(r.GetNewSecret())
		if err != nil {
			return 0, 0, "", err
		}
		used := map[string]bool{}
		for i := range t.Deployments {
			d := &t.Deployments[i]
			if d.Name == r.GetDeployment() {
				d.TokenIssuer = &topology.TokenIssuer{Secret: name}
			}
			if d.TokenIssuer != nil && d.TokenIssuer.Secret != "" {
				used[d.TokenIssuer.Secret] = true
			}
		}
		if doc, err = t.Canonical(); err != nil {
			return 0, 0, "", err
		}
		if t, err = topology.Load("rotation", doc); err != nil {
			return 0, 0, "", fmt.Errorf("the document naming secret %s: %w", name, err)
		}
		pins[name] = store.SecretPin{Version: version, Thumbprint: r.GetNewThumbprint()}
		for k := range pins {
			if !used[k] {
				delete(pins, k)
			}
		}
	}
	overlay := rotation.OverlayOf(r, phase)
	hash := store.RecordHash(doc, overlay)
	if cur.Hash == hash {
		// Stored before (a retry after a crash): its rollout is the newest
		// one of that revision, if any.
		ro, err := s.hub.rollouts.Get(ctx, 0)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return 0, 0, "", err
		}
		name := ""
		if ro != nil && ro.Rollout.GetDocumentHash() == hash {
			name = ro.Rollout.GetName()
		}
		return cur.Revision, cur.Sequence, name, nil
	}
	next, err := topology.Compile(t)
	if err != nil {
		return 0, 0, "", err
	}
	strategy, err := rolloutStrategy(t, next, nil)
	if err != nil {
		return 0, 0, "", err
	}
	strategy.Immediate = false
	if phase == pb.RotationPhase_ROTATION_PHASE_ACTIVATE && r.GetProduct() == pb.Product_PRODUCT_EXCHANGE {
		strategy.MaxUnavailable = 1 // one IIS reset at a time
	}
	who := fmt.Sprintf("%s (created by %s)", r.GetName(), r.GetCreatedBy())
	ro, err := s.hub.planRollout(ctx, strategy, hash, next, who, "", cur.Revision)
	if err != nil {
		return 0, 0, "", err
	}
	audit := rotationAudit(r, who, s.hub.cfg.Now(), pins)
	expected := cur.Revision
	var also store.WithTopology
	var stored *pb.Rollout
	if ro != nil {
		also = s.hub.withRollout(ro, &stored)
	}
	rev, seq, _, err := st.PutTopologyWith(ctx, t.Name, doc, pins, overlay, who, s.hub.cfg.Now(), &expected, audit, also)
	if err != nil {
		return 0, 0, "", err
	}
	name := ""
	if stored != nil {
		name = stored.GetName()
	}
	return rev, seq, name, nil
}

// GetRotation implements the RPC; see the proto for its contract.
func (s *RotationService) GetRotation(ctx context.Context, req *pb.GetRotationRequest) (*pb.GetRotationResponse, error) {
	id, err := rotation.ParseName(req.GetName())
	if err != nil {
		return nil, err
	}
	r, stale, err := s.stored.read(ctx, id)
	if err != nil {
		return nil, err
	}
	return &pb.GetRotationResponse{Rotation: r.Rotation, Stale: stale}, nil
}

func (s *RotationService) get(ctx context.Context, name string) (*rotation.Stored, error) {
	id, err := rotation.ParseName(name)
	if err != nil {
		return nil, err
	}
	return s.rotations.Get(ctx, id)
}

// ListRotations implements the RPC; see the proto for its contract.
func (s *RotationService) ListRotations(ctx context.Context, req *pb.ListRotationsRequest) (*pb.ListRotationsResponse, error) {
	size, err := pagetoken.Size(req.GetPageSize(), 20, 100)
	if err != nil {
		return nil, err
	}
	// The token is opaque (the newest rotation number not yet listed,
	// inside pagetoken's checksummed envelope), as every List's is.
	var before uint64
	if tok := req.GetPageToken(); tok != "" {
		c, err := pagetoken.Decode("ListRotations", tok)
		if err != nil {
			return nil, err
		}
		n, err := strconv.ParseUint(c, 10, 64)
		if err != nil || n == 0 {
			return nil, invalid("page_token", tok, "a next_page_token from a previous ListRotations response")
		}
		before = n
	}
	list, stale, err := s.stored.page(ctx, size+1, before)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListRotationsResponse{Stale: stale}
	for i, r := range list {
		if i == size {
			resp.NextPageToken = pagetoken.Encode("ListRotations", strconv.FormatUint(list[i-1].ID, 10))
			break
		}
		resp.Rotations = append(resp.Rotations, r.Rotation)
	}
	return resp, nil
}

// CancelRotation implements the RPC; see the proto for its contract.
func (s *RotationService) CancelRotation(ctx context.Context, req *pb.CancelRotationRequest) (*pb.CancelRotationResponse, error) {
	who := callerName(ctx)
	for range 10 {
		cur, err := s.get(ctx, req.GetName())
		if err != nil {
			return nil, err
		}
		r := proto.Clone(cur.Rotation).(*pb.Rotation)
		if err := rotation.Cancel(r, who, s.hub.cfg.Now()); err != nil {
			return nil, err
		}
		if proto.Equal(r, cur.Rotation) {
			return &pb.CancelRotationResponse{Rotation: r}, nil
		}
		if _, err := s.rotations.Update(ctx, cur, r, nil); err != nil {
			if errors.Is(err, store.ErrConflict) {
				continue // the engine moved it meanwhile: look again
			}
			return nil, err
		}
		return &pb.CancelRotationResponse{Rotation: r}, nil
	}
	return nil, fmt.Errorf("%s changed concurrently 10 times in a row: %w", req.GetName(), store.ErrConflict)
}

// WatchRotation implements the RPC; see the proto for its contract.
func (s *RotationService) WatchRotation(req *pb.WatchRotationRequest, stream pb.RotationService_WatchRotationServer) error {
	ctx := stream.Context()
	id, err := rotation.ParseName(req.GetName())
	if err != nil {
		return err
	}
	if err := s.hub.untilLoaded(ctx); err != nil {
		return err
	}
	cur, stale, err := s.stored.read(ctx, id)
	if err != nil {
		return toStatus(err)
	}
	send := func(r *rotation.Stored, stale *pb.Staleness) error {
		return stream.Send(&pb.WatchRotationResponse{Rotation: r.Rotation, Stale: stale})
	}
	finished := func(r *rotation.Stored) bool { return rotation.Finished(r.Rotation) }
	return s.stored.watch(ctx, cur.ID, cur, cur.ModRev, stale, finished, send)
}

// runningRotation refuses a change of the topology while a rotation's
// phases are under way: its revisions carry the phase, an apply would
// supersede it and stop the rotation half-way.
func (h *Hub) runningRotation(ctx context.Context) error {
	active, err := rotation.NewStore(h.cfg.Store).Active(ctx)
	if err != nil || active == nil || active.Rotation.GetState() != pb.RotationState_ROTATION_STATE_RUNNING {
		return err
	}
	r := active.Rotation
	return fmt.Errorf("rotation %s of deployment %s is running (phase %s): apply after it finishes (`s2s-controller rotate status -w`), or abort the rollout of its phase to stop it: %w",
		r.GetName(), r.GetDeployment(), rotation.PhaseName(r.GetCurrentPhase()), store.ErrConflict)
}

// rotationAudit records a phase's revision: which rotation, phase and
// certificates, by thumbprint and secret version only.
func rotationAudit(r *pb.Rotation, who string, now time.Time, pins map[string]store.SecretPin) []byte {
	what := fmt.Sprintf("rotation %s of deployment %s: phase %s (%s → %s)", r.GetName(), r.GetDeployment(), rotation.PhaseName(r.GetCurrentPhase()), r.GetOldThumbprint(), r.GetNewThumbprint())
	rec := map[string]any{"kind": "topology", "who": r.GetCreatedBy(), "by": who, "when": now.UTC(), "what": what, "result": "ok", "changes": []string{what}, "secrets": pins}
	b, _ := json.Marshal(rec)
	return b
}
