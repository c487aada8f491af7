package server

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
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
	// Audit, when set, records every refused call (who, from where, what).
	Audit func(ctx context.Context, method string, err error)
	// Identities, when set, refuses revoked host certificates at every
	// call and ends a host's streams when it is revoked.
	Identities *Identities
}

// UnaryInterceptor authorizes calls, maps errors to statuses and logs
// failures once.
func (a Access) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if _, err := a.authorize(ctx, info.FullMethod); err != nil {
		a.refused(ctx, info.FullMethod, err)
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
//
// Its frame stays on the stack of every open stream's handler, so the
// work before and after the call is in functions of their own.
func (a Access) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	id, err := a.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		a.refused(ss.Context(), info.FullMethod, err)
		return err
	}
	if leaf := pki.LeafFromContext(ss.Context()); a.Identities != nil && id.Kind == pki.KindHost && leaf != nil {
		err = a.Identities.serveHost(id, leaf, srv, ss, handler, a.log())
	} else {
		err = handler(srv, ss)
	}
	if err != nil {
		err = a.failed(info.FullMethod, err)
	}
	return err
}

// failed maps a failed call's error to its status and logs it.
func (a Access) failed(method string, err error) error {
	err = toStatus(err)
	a.logFailure(method, err)
	return err
}

// serveHost runs the handler of a host's stream, which a revocation of the
// host ends at once, through the stream's context.
func (ids *Identities) serveHost(id pki.Identity, leaf *x509.Certificate, srv any, ss grpc.ServerStream, handler grpc.StreamHandler, log *slog.Logger) error {
	ctx, cancel := context.WithCancelCause(ss.Context())
	defer cancel(nil)
	ctx = context.WithValue(ctx, streamEndKey{}, cancel)
	t := ids.track(id.Name, leaf, cancel)
	defer ids.untrack(t)
	ids.seen(id.Name, leaf)
	if err := ids.Check(leaf); err != nil { // revoked between authorize and track
		return status.Error(codes.Unauthenticated, err.Error())
	}
	err := handler(srv, ctxStream{ss, ctx})
	if errors.Is(context.Cause(ctx), ErrRevoked) {
		return revokedStream(ctx, id, log)
	}
	return err
}

// streamEndKey is the context key of the function that ends a host's
// stream, which serveHost made for revocations (see streamContext).
type streamEndKey struct{}

// streamContext returns the context of a stream and the function that
// ends it: the one serveHost made for a host's stream (a revocation ends
// it too; the cause tells which ended it), else a new one. The handler
// then makes no second context of its own, which every idle stream would
// hold (with its list of children).
func streamContext(parent context.Context) (context.Context, context.CancelCauseFunc) {
	if end, ok := parent.Value(streamEndKey{}).(context.CancelCauseFunc); ok {
		return parent, end
	}
	return context.WithCancelCause(parent)
}

// revokedStream logs and returns the end of a revoked host's stream.
func revokedStream(ctx context.Context, id pki.Identity, log *slog.Logger) error {
	log.Warn("stream ended: host revoked", "host", id.Name, "from", peerAddr(ctx))
	return status.Errorf(codes.Unauthenticated, "%s: %v", id, ErrRevoked)
}

// refused logs a refused call and, when the access has an audit hook,
// records it.
func (a Access) refused(ctx context.Context, method string, err error) {
	a.log().Warn("call refused", "method", method, "from", peerAddr(ctx), "error", err)
	if a.Audit != nil {
		a.Audit(ctx, method, err)
	}
}

// ctxStream is a server stream with a context of our own, so that the
// access layer can end it.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }

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
