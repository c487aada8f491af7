package secrets

import (
	"context"

	"github.com/s2strust/s2strust/controller/pagetoken"
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
func (s *Service) ListSecrets(ctx context.Context, req *pb.ListSecretsRequest) (*pb.ListSecretsResponse, error) {
	size, err := pagetoken.Size(req.GetPageSize(), 100, 1000)
	if err != nil {
		return nil, err
	}
	after := ""
	if tok := req.GetPageToken(); tok != "" {
		if after, err = pagetoken.Decode("ListSecrets", tok); err != nil {
			return nil, err
		}
	}
	list, more, err := s.store.ListPage(ctx, after, size)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListSecretsResponse{Secrets: list}
	if more && len(list) > 0 {
		resp.NextPageToken = pagetoken.Encode("ListSecrets", list[len(list)-1].GetName())
	}
	return resp, nil
}
