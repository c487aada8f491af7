package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/topology"
)

// invalid builds an INVALID_ARGUMENT error with one field violation.
func invalid(field, value, want string) error {
	return &topology.Error{Violations: []topology.FieldViolation{{Field: field, Value: value, Description: want}}}
}

// toStatus maps an error to a gRPC status, in one place: invalid input to
// INVALID_ARGUMENT with google.rpc.BadRequest, conflicts to
// FAILED_PRECONDITION, missing records to NOT_FOUND, a store without
// quorum or over its space quota to UNAVAILABLE.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	// A status made on purpose passes through; one wrapped inside an error
	// came from etcd and is mapped below.
	if _, direct := err.(interface{ GRPCStatus() *status.Status }); direct {
		return err
	}
	var te *topology.Error
	switch {
	case errors.As(err, &te):
		st := status.New(codes.InvalidArgument, te.Error())
		br := &errdetails.BadRequest{}
		for _, v := range te.Violations {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Message()})
		}
		if d, derr := st.WithDetails(br); derr == nil {
			return d.Err()
		}
		return st.Err()
	case errors.Is(err, store.ErrConflict):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, rpctypes.ErrNoSpace):
		// etcd's own RESOURCE_EXHAUSTED would read as the caller's fault.
		var nse *store.NoSpaceError
		if !errors.As(err, &nse) {
			err = &store.NoSpaceError{Err: err}
		}
		return status.Error(codes.Unavailable, "the store refuses changes, nothing was changed (reads still work): "+err.Error())
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, rpctypes.ErrNoLeader),
		errors.Is(err, rpctypes.ErrTimeout), errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrGRPCNoLeader), isUnavailable(err):
		return status.Error(codes.Unavailable, "the store is unavailable (etcd has no quorum or cannot be reached); nothing was changed: "+err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, err.Error())
}

func isUnavailable(err error) bool {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		c := se.GRPCStatus().Code()
		return c == codes.Unavailable || c == codes.DeadlineExceeded
	}
	return false
}

// Access decides which identity may call which service.
type Access struct {
	// Insecure allows every call without identity (--insecure only).
	Insecure bool
	Logger   *slog.Logger
	// CallTimeout bounds each unary call (default 5s), so that a store
	// without quorum gives a clear Unavailable instead of a hang.
	CallTimeout time.Duration
}

// open services any authenticated client may call.
func openMethod(full string) bool {
	return strings.HasPrefix(full, "/grpc.health.v1.Health/") || strings.HasPrefix(full, "/grpc.reflection.")
}

func (a Access) authorize(ctx context.Context, full string) error {
	if a.Insecure || openMethod(full) {
		return nil
	}
	id, err := pki.IdentityFromContext(ctx)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "%s: %v", full, err)
	}
	if strings.HasPrefix(full, "/s2strust.v1.AgentService/") {
		if id.Kind != pki.KindHost {
			return status.Errorf(codes.PermissionDenied, "%s needs an agent identity, not %s", full, id)
		}
		return nil // the handler checks the host name
	}
	if id.Kind != pki.KindAdmin {
		return status.Errorf(codes.PermissionDenied, "%s needs an admin identity; %s may only call AgentService", full, id)
	}
	return nil
}

// UnaryInterceptor authorizes calls, maps errors to statuses and logs
// failures once.
func (a Access) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.authorize(ctx, info.FullMethod); err != nil {
		a.log().Warn("call refused", "method", info.FullMethod, "error", err)
		return nil, err
	}
	timeout := a.CallTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := handler(ctx, req)
	if err != nil {
		err = toStatus(err)
		a.logFailure(info.FullMethod, err)
	}
	return resp, err
}

// StreamInterceptor is the streaming counterpart of UnaryInterceptor.
func (a Access) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.authorize(ss.Context(), info.FullMethod); err != nil {
		a.log().Warn("call refused", "method", info.FullMethod, "error", err)
		return err
	}
	err := handler(srv, ss)
	if err != nil {
		err = toStatus(err)
		a.logFailure(info.FullMethod, err)
	}
	return err
}

func (a Access) logFailure(method string, err error) {
	switch status.Code(err) {
	case codes.Canceled, codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition:
		a.log().Debug("call failed", "method", method, "code", status.Code(err).String(), "error", err)
	default:
		a.log().Warn("call failed", "method", method, "code", status.Code(err).String(), "error", err)
	}
}

func (a Access) log() *slog.Logger {
	if a.Logger == nil {
		return slog.Default()
	}
	return a.Logger
}
