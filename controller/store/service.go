package store

import (
	"context"
	"errors"
	"log/slog"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Service implements pb.StoreServiceServer. The server's access check
// admits admin identities only, as for every service but AgentService.
type Service struct {
	pb.UnimplementedStoreServiceServer
	store *Store
	log   *slog.Logger
}

// NewService returns the store maintenance API over s.
func NewService(s *Store, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{store: s, log: log}
}

// Defragment implements the RPC; see the proto for its contract.
func (s *Service) Defragment(ctx context.Context, _ *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	who := "anonymous (insecure)"
	if id, err := pki.IdentityFromContext(ctx); err == nil {
		who = id.String()
	}
	res, err := s.store.Reclaim(ctx)
	if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrGRPCPermissionDenied) {
		// Not the caller's lack of rights but the controller's etcd user's.
		return nil, status.Error(codes.FailedPrecondition, err.Error()+
			": the controller's etcd user may not maintain the cluster (etcd allows compaction, defragmentation and alarms to its root role only); run `etcdctl compact`, `etcdctl defrag` and `etcdctl alarm disarm` as etcd's root")
	}
	if err != nil {
		return nil, err
	}
	out := &pb.DefragmentResponse{CompactedRevision: res.CompactedRevision, DisarmedAlarms: int32(res.DisarmedAlarms)}
	for _, m := range res.Members {
		out.Members = append(out.Members, &pb.StoreMemberSpace{Endpoint: m.Endpoint, BeforeBytes: m.BeforeBytes, AfterBytes: m.AfterBytes})
		s.log.Info("etcd member defragmented", "by", who, "endpoint", m.Endpoint, "before_bytes", m.BeforeBytes, "after_bytes", m.AfterBytes)
	}
	s.log.Info("etcd space reclaimed", "by", who, "compacted_revision", res.CompactedRevision, "disarmed_alarms", res.DisarmedAlarms)
	return out, nil
}
