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
	view  View
}

// View is the controller's last view of the stored secrets (their
// descriptions, never their sealed part), which ListSecrets answers from
// while etcd does not answer.
type View interface {
	// ReadOrStale runs read against etcd. It returns nil when etcd
	// answered; a stale mark when it did not and the caller is to answer
	// from SecretsAfter; an error when read failed otherwise or there is
	// no view to answer from.
	ReadOrStale(ctx context.Context, read func(context.Context) error) (*pb.Staleness, error)
	// SecretsAfter describes up to limit secrets named after after,
	// sorted by name, as last seen, and says whether more follow.
	SecretsAfter(after string, limit int) ([]*pb.Secret, bool)
}

// NewService returns the secret API over s; view, when not nil, answers
// ListSecrets while etcd does not.
func NewService(s *Store, view View) *Service { return &Service{store: s, view: view} }

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
	var list []*pb.Secret
	var more bool
	read := func(ctx context.Context) error {
		var err error
		list, more, err = s.store.ListPage(ctx, after, size)
		return err
	}
	var stale *pb.Staleness
	if s.view == nil {
		err = read(ctx)
	} else {
		stale, err = s.view.ReadOrStale(ctx, read)
	}
	if err != nil {
		return nil, err
	}
	if stale != nil {
		list, more = s.view.SecretsAfter(after, size)
	}
	resp := &pb.ListSecretsResponse{Secrets: list, Stale: stale}
	if more && len(list) > 0 {
		resp.NextPageToken = pagetoken.Encode("ListSecrets", list[len(list)-1].GetName())
	}
	return resp, nil
}
