package server

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	rpbalpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// caller is who a method admits.
type caller int

const (
	// anyone: no client certificate needed (health probes, enrollment with
	// a join token, whose token is the credential).
	anyone caller = iota
	// agent: a host identity; the handler checks which host.
	agent
	// admin: an admin identity of at least the rule's role.
	admin
)

// rule is who may call one method.
type rule struct {
	who  caller
	role pki.Role // for admin: the least role
}

// policy is the one table of who may call which method. A method missing
// from it is refused for everyone, so a new RPC is closed until it is
// given a rule here.
var policy = map[string]rule{
	healthpb.Health_Check_FullMethodName:       {who: anyone},
	healthpb.Health_Watch_FullMethodName:       {who: anyone},
	healthpb.Health_List_FullMethodName:        {who: anyone},
	pb.EnrollmentService_Enroll_FullMethodName: {who: anyone},

	pb.AgentService_Sync_FullMethodName:                        {who: agent},
	pb.HostIdentityService_RenewHostCertificate_FullMethodName: {who: agent},

	pb.FleetService_ListHosts_FullMethodName:      {who: admin, role: pki.RoleViewer},
	pb.FleetService_GetHost_FullMethodName:        {who: admin, role: pki.RoleViewer},
	pb.FleetService_GetTrustReport_FullMethodName: {who: admin, role: pki.RoleViewer},
	pb.FleetService_WatchHosts_FullMethodName:     {who: admin, role: pki.RoleViewer},
	// Operators may ask a host to retry a rejected configuration.
	pb.FleetService_RetryHost_FullMethodName:                      {who: admin, role: pki.RoleOperator},
	pb.TopologyService_GetTopology_FullMethodName:                 {who: admin, role: pki.RoleViewer},
	pb.TopologyService_ListTopologyRevisions_FullMethodName:       {who: admin, role: pki.RoleViewer},
	pb.SecretService_ListSecrets_FullMethodName:                   {who: admin, role: pki.RoleViewer},
	pb.HostIdentityService_ListHostIdentities_FullMethodName:      {who: admin, role: pki.RoleViewer},
	pb.AuditService_ListAuditRecords_FullMethodName:               {who: admin, role: pki.RoleViewer},
	rpb.ServerReflection_ServerReflectionInfo_FullMethodName:      {who: admin, role: pki.RoleViewer},
	pb.RolloutService_ListRollouts_FullMethodName:                 {who: admin, role: pki.RoleViewer},
	pb.RolloutService_GetRollout_FullMethodName:                   {who: admin, role: pki.RoleViewer},
	pb.RolloutService_WatchRollout_FullMethodName:                 {who: admin, role: pki.RoleViewer},
	rpbalpha.ServerReflection_ServerReflectionInfo_FullMethodName: {who: admin, role: pki.RoleViewer},
	pb.RotationService_GetRotation_FullMethodName:                 {who: admin, role: pki.RoleViewer},
	pb.RotationService_ListRotations_FullMethodName:               {who: admin, role: pki.RoleViewer},
	pb.RotationService_WatchRotation_FullMethodName:               {who: admin, role: pki.RoleViewer},

	pb.TopologyService_ApplyTopology_FullMethodName:    {who: admin, role: pki.RoleAdmin},
	pb.SecretService_PutSecret_FullMethodName:          {who: admin, role: pki.RoleAdmin},
	pb.StoreService_Defragment_FullMethodName:          {who: admin, role: pki.RoleAdmin},
	pb.HostIdentityService_RevokeHost_FullMethodName:   {who: admin, role: pki.RoleAdmin},
	pb.JoinTokenService_CreateJoinToken_FullMethodName: {who: admin, role: pki.RoleAdmin},
	// A rotation puts a new certificate in use, as an apply naming it would.
	pb.RotationService_CreateRotation_FullMethodName: {who: admin, role: pki.RoleAdmin},

	// Operators run rollouts (SPEC "Security"; issue #9: "operator: also
	// rollouts and host retry").
	pb.RolloutService_PauseRollout_FullMethodName:  {who: admin, role: pki.RoleOperator},
	pb.RolloutService_ResumeRollout_FullMethodName: {who: admin, role: pki.RoleOperator},
	pb.RolloutService_AbortRollout_FullMethodName:  {who: admin, role: pki.RoleOperator},
	pb.RolloutService_UndoRollout_FullMethodName:   {who: admin, role: pki.RoleOperator},
	// Cancelling a scheduled rotation changes no host.
	pb.RotationService_CancelRotation_FullMethodName: {who: admin, role: pki.RoleOperator},
}

// authorize applies policy to one call. It returns the caller's identity
// (the zero Identity for an anonymous call) and a status error when the
// call is refused: UNAUTHENTICATED without a verified certificate where one
// is needed, PERMISSION_DENIED naming what is needed otherwise.
func (a Access) authorize(ctx context.Context, full string) (pki.Identity, error) {
	r, known := policy[full]
	if a.Insecure {
		return pki.Identity{}, nil
	}
	if !known {
		return pki.Identity{}, status.Errorf(codes.PermissionDenied, "%s has no access rule; it is closed to everyone", full)
	}
	id, err := pki.IdentityFromContext(ctx)
	if r.who == anyone {
		return id, nil // an identity, if any, only names the caller
	}
	if err != nil {
		return pki.Identity{}, status.Errorf(codes.Unauthenticated, "%s: %v", full, err)
	}
	switch r.who {
	case agent:
		if id.Kind != pki.KindHost {
			return id, status.Errorf(codes.PermissionDenied, "%s needs an agent identity, not %s", full, id)
		}
		if a.Identities != nil {
			if err := a.Identities.Check(pki.LeafFromContext(ctx)); err != nil {
				return id, status.Errorf(codes.Unauthenticated, "%s: %v", full, err)
			}
		}
	case admin:
		if id.Kind != pki.KindAdmin {
			return id, status.Errorf(codes.PermissionDenied, "%s needs an admin identity; %s may only call AgentService", full, id)
		}
		if id.Role < r.role {
			return id, status.Errorf(codes.PermissionDenied, "%s needs the role %s or above; %s has the role %s", full, r.role, id, id.Role)
		}
	default:
		return id, status.Errorf(codes.PermissionDenied, "%s: unknown access rule %d", full, r.who)
	}
	return id, nil
}

// describe is a rule in words, for documentation and tests.
func (r rule) describe() string {
	switch r.who {
	case anyone:
		return "anyone"
	case agent:
		return "agent"
	default:
		return fmt.Sprintf("admin (%s or above)", r.role)
	}
}
