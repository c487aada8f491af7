// Package rotation rotates a deployment's token-issuer certificate (Lync's
// OAuthTokenIssuer, Exchange's auth certificate, SharePoint's STS signing
// certificate) with no moment in which a partner refuses its tokens.
//
// A rotation of deployment D from certificate OLD to NEW goes through four
// phases, each a topology revision of its own delivered by a rollout
// (package controller/rollout, with its waves and gates), each gated on
// what the hosts then report (ROTATION.md):
//
//  1. stage: D's hosts get NEW as their next token issuer (effective E);
//     gate: each D host reports NEW staged, and its own metadata publishes
//     OLD and NEW.
//  2. refresh: every host trusting D expects OLD and NEW in its cached copy
//     of D's metadata; gate: each such host's cache holds both.
//  3. activate: D's token issuer becomes NEW (the document now names the
//     new secret); gate: every probe from D's hosts is signed with NEW and
//     accepted. Exchange's servers are activated one at a time.
//  4. retire: D's hosts retire OLD and partners expect NEW only; gate: no
//     previous issuer is reported and every probe passes.
//
// A phase is not part of the operator's document: it is stored beside it
// in the revision record (store.RotationOverlay) and Overlay lays it over
// the compiled host configurations (HostConfig.next_token_issuer,
// Partner.expected_signing_thumbprints, retire_previous_issuer). From the
// activate phase on, the document itself names the new secret, so that
// `get topology` shows what is true after the rotation.
//
// Step is a pure function of a stored *pb.Rotation, what the hosts report,
// its phase's rollout and a clock, tested without etcd; Store keeps
// rotations in etcd and Engine runs Step on the elected controller, every
// write fenced by its leadership, so a restart or a new leader resumes a
// rotation where the stored state says it is.
package rotation

import (
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Phases are the phases of every rotation, in order.
var Phases = []pb.RotationPhase{
	pb.RotationPhase_ROTATION_PHASE_STAGE,
	pb.RotationPhase_ROTATION_PHASE_REFRESH,
	pb.RotationPhase_ROTATION_PHASE_ACTIVATE,
	pb.RotationPhase_ROTATION_PHASE_RETIRE,
}

// PhaseName is the lower-case name of a phase ("stage", …), as the
// revision record stores it and the CLI shows it.
func PhaseName(p pb.RotationPhase) string {
	return strings.ToLower(strings.TrimPrefix(p.String(), "ROTATION_PHASE_"))
}

// StateName is the lower-case name of a rotation state.
func StateName(s pb.RotationState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "ROTATION_STATE_"))
}

// ParsePhase reads a phase name; UNSPECIFIED for an unknown one.
func ParsePhase(name string) pb.RotationPhase {
	for _, p := range Phases {
		if PhaseName(p) == name {
			return p
		}
	}
	return pb.RotationPhase_ROTATION_PHASE_UNSPECIFIED
}

// SecretRef is how a rotation names one version of a secret: "name@vN".
func SecretRef(name string, version uint64) string { return fmt.Sprintf("%s@v%d", name, version) }

// Finished reports whether a rotation is over.
func Finished(r *pb.Rotation) bool {
	switch r.GetState() {
	case pb.RotationState_ROTATION_STATE_SUCCEEDED, pb.RotationState_ROTATION_STATE_FAILED, pb.RotationState_ROTATION_STATE_CANCELLED:
		return true
	}
	return false
}

// New returns a rotation ready to store: scheduled, its four phases
// pending.
func New(r *pb.Rotation) *pb.Rotation {
	r.State = pb.RotationState_ROTATION_STATE_SCHEDULED
	r.Phases = nil
	for _, p := range Phases {
		r.Phases = append(r.Phases, &pb.RotationPhaseStatus{Phase: p, State: pb.RotationPhaseState_ROTATION_PHASE_STATE_PENDING})
	}
	return r
}

// OverlayOf is the overlay the revision of phase p of r stores.
func OverlayOf(r *pb.Rotation, p pb.RotationPhase) *store.RotationOverlay {
	name, version := splitRef(r.GetNewSecret())
	return &store.RotationOverlay{
		Rotation: r.GetName(), Deployment: r.GetDeployment(), Phase: PhaseName(p),
		OldThumbprint: r.GetOldThumbprint(), NewSecret: name, NewVersion: version, NewThumbprint: r.GetNewThumbprint(),
		Effective: r.GetEffectiveTime().AsTime().UTC(),
	}
}

// ParseSecretRef reads how an administrator names one version of a
// secret: "name" (version 0: the newest), "name@vN" or "name@N".
func ParseSecretRef(ref string) (string, uint64, error) {
	name, v, ok := strings.Cut(ref, "@")
	if !ok {
		return ref, 0, nil
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(v, "v"), 10, 64)
	if err != nil || n == 0 || name == "" {
		return "", 0, fmt.Errorf("a secret is NAME, NAME@vN or NAME@N with N a version from 1, not %q", ref)
	}
	return name, n, nil
}

func splitRef(ref string) (string, uint64) {
	name, v, _ := ParseSecretRef(ref)
	return name, v
}

// Overlay lays rotation phase o over the compiled configurations of its
// revision, in place. Outside a rotation (o nil) nothing changes.
//
//   - stage, refresh: D's hosts stage the new certificate
//     (next_token_issuer, its secret named "name@vN" as the push's key
//     material is);
//   - refresh, activate: every host trusting D expects the old and the new
//     certificate in its cached copy of D's metadata;
//   - retire: D's hosts retire the previous certificate; partners expect
//     the new one only.
//
// From activate on, the document names the new secret as D's token
// issuer: no overlay is needed for that.
func Overlay(cfgs []*pb.HostConfig, o *store.RotationOverlay) {
	if o == nil {
		return
	}
	p := ParsePhase(o.Phase)
	for _, cfg := range cfgs {
		if cfg.GetDeployment() == o.Deployment {
			switch p {
			case pb.RotationPhase_ROTATION_PHASE_STAGE, pb.RotationPhase_ROTATION_PHASE_REFRESH:
				cfg.NextTokenIssuer = &pb.NextTokenIssuer{
					Secret: SecretRef(o.NewSecret, o.NewVersion), SecretThumbprint: o.NewThumbprint, Effective: timestamppb.New(o.Effective),
				}
			case pb.RotationPhase_ROTATION_PHASE_RETIRE:
				cfg.RetirePreviousIssuer = true
			}
		}
		for _, pt := range cfg.GetPartners() {
			if pt.GetDeployment() != o.Deployment {
				continue
			}
			switch p {
			case pb.RotationPhase_ROTATION_PHASE_REFRESH, pb.RotationPhase_ROTATION_PHASE_ACTIVATE:
				pt.ExpectedSigningThumbprints = []string{o.OldThumbprint, o.NewThumbprint}
			case pb.RotationPhase_ROTATION_PHASE_RETIRE:
				pt.ExpectedSigningThumbprints = []string{o.NewThumbprint}
			}
		}
	}
}
