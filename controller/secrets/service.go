package secrets

import (
	"context"

	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Service implements pb.SecretServiceServer.
type Service struct {
	pb.UnimplementedSecretServiceServer
	store *Store
}

// NewService returns the secret API over s.
func NewService(s *Store) *Service { return &Service{store: s} }

// PutSecret implements the RPC; see the proto for its contract.
func (s *Service) PutSecret(ctx context.Context, req *pb.PutSecretRequest) (*pb.PutSecretResponse, error) {
	who := "anonymous (insecure)"
	if id, err := pki.IdentityFromContext(ctx); err == nil {
		who = id.String()
	}
	sec, changed, err := s.store.PutVersion(WithCaller(ctx, who), req.GetName(), req.GetPfx(), req.GetPassword(), req.GetNewVersion())
	if err != nil {
		return nil, err
	}
	return &pb.PutSecretResponse{Secret: sec, Changed: changed}, nil
}

// ListSecrets implements the RPC; see the proto for its contract.
func (s *Service) ListSecrets(ctx context.Context, _ *pb.ListSecretsRequest) (*pb.ListSecretsResponse, error) {
	list, err := s.store.List(ctx)
	if err != nil {
		return nil, err
	}
	return &pb.ListSecretsResponse{Secrets: list}, nil
}
