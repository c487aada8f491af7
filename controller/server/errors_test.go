package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/topology"
)

const nothingChanged = "the store is unavailable (etcd has no quorum or cannot be reached); nothing was changed: "

func TestToStatus(t *testing.T) {
	permission := status.Error(codes.PermissionDenied, "fe01 may not call this")
	tests := []struct {
		name     string
		err      error
		wantCode codes.Code
		wantMsg  string
		same     bool // the very error comes back
	}{
		{name: "conflict", err: fmt.Errorf("apply topology: %w", store.ErrConflict),
			wantCode: codes.FailedPrecondition, wantMsg: "apply topology: revision conflict"},
		{name: "not found", err: fmt.Errorf("topology revision 9: %w", store.ErrNotFound),
			wantCode: codes.NotFound, wantMsg: "topology revision 9: not found"},
		{name: "deadline", err: fmt.Errorf("read current topology: %w", context.DeadlineExceeded),
			wantCode: codes.Unavailable, wantMsg: nothingChanged + "read current topology: context deadline exceeded"},
		{name: "no leader wrapped", err: fmt.Errorf("store topology: %w", rpctypes.ErrNoLeader),
			wantCode: codes.Unavailable, wantMsg: nothingChanged + "store topology: etcdserver: no leader"},
		{name: "etcd timeout", err: fmt.Errorf("store topology: %w", rpctypes.ErrTimeout),
			wantCode: codes.Unavailable, wantMsg: nothingChanged + "store topology: etcdserver: request timed out"},
		{name: "grpc unavailable wrapped", err: fmt.Errorf("read hosts: %w", status.Error(codes.Unavailable, "connection refused")),
			wantCode: codes.Unavailable, wantMsg: nothingChanged + "read hosts: rpc error: code = Unavailable desc = connection refused"},
		{name: "canceled", err: fmt.Errorf("read hosts: %w", context.Canceled),
			wantCode: codes.Canceled, wantMsg: "read hosts: context canceled"},
		{name: "direct status", err: permission, wantCode: codes.PermissionDenied, wantMsg: "fe01 may not call this", same: true},
		{name: "plain", err: errors.New("encode topology: boom"), wantCode: codes.Internal, wantMsg: "encode topology: boom"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := toStatus(tc.err)
			st, ok := status.FromError(got)
			if !ok {
				t.Fatalf("toStatus(%v) = %v (%T), not a status", tc.err, got, got)
			}
			if st.Code() != tc.wantCode || st.Message() != tc.wantMsg {
				t.Errorf("toStatus(%v) = %s %q; want %s %q", tc.err, st.Code(), st.Message(), tc.wantCode, tc.wantMsg)
			}
			if tc.same && got != tc.err {
				t.Errorf("toStatus changed a status made on purpose: %v", got)
			}
			if len(st.Details()) != 0 {
				t.Errorf("unexpected details %v", st.Details())
			}
		})
	}
	if toStatus(nil) != nil {
		t.Error("toStatus(nil) is not nil")
	}
}

func TestToStatusInvalidTopology(t *testing.T) {
	te := &topology.Error{File: "contoso.yaml", Violations: []topology.FieldViolation{
		{Field: "deployments[0].version", Value: "2010", Description: "one of 2013, 2015, 2019", Line: 9, Column: 14},
		{Field: "trusts[2].to", Description: "required"},
	}}
	for _, err := range []error{te, fmt.Errorf("apply topology: %w", te)} {
		got := toStatus(err)
		st, _ := status.FromError(got)
		if st.Code() != codes.InvalidArgument || st.Message() != te.Error() {
			t.Errorf("toStatus(%v) = %s %q; want InvalidArgument %q", err, st.Code(), st.Message(), te.Error())
		}
		want := &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "deployments[0].version", Description: `"2010": one of 2013, 2015, 2019`},
			{Field: "trusts[2].to", Description: "required"},
		}}
		details := st.Details()
		if len(details) != 1 {
			t.Fatalf("details = %v; want one BadRequest", details)
		}
		br, ok := details[0].(*errdetails.BadRequest)
		if !ok || !proto.Equal(br, want) {
			t.Errorf("detail = %v; want %v", details[0], want)
		}
	}
}

// identities issues an admin and a host certificate from a new CA and
// returns contexts carrying them as verified TLS peers, as grpc-go does for
// a call over mTLS.
func identities(t *testing.T) (admin, host context.Context) {
	t.Helper()
	now := time.Now()
	ca, err := pki.NewCA("test CA", now)
	if err != nil {
		t.Fatal(err)
	}
	peerCtx := func(certPEM []byte) context.Context {
		block, _ := pem.Decode(certPEM)
		if block == nil {
			t.Fatal("issued certificate is not PEM")
		}
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		info := credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf, ca.Cert}}}}
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: info})
	}
	adminPEM, _, err := ca.IssueAdmin("alice", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hostPEM, _, err := ca.IssueHost("fe01.contoso.com", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return peerCtx(adminPEM), peerCtx(hostPEM)
}

func TestAuthorize(t *testing.T) {
	admin, host := identities(t)
	noPeer := context.Background()
	notTLS := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: nil})
	unverified := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{}})
	const (
		apply    = "/s2strust.v1.TopologyService/ApplyTopology"
		list     = "/s2strust.v1.FleetService/ListHosts"
		secret   = "/s2strust.v1.SecretService/PutSecret"
		sync     = "/s2strust.v1.AgentService/Sync"
		health   = "/grpc.health.v1.Health/Check"
		reflectV = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	)
	tests := []struct {
		name     string
		access   Access
		ctx      context.Context
		method   string
		wantCode codes.Code
		wantMsg  []string
	}{
		{name: "no peer", ctx: noPeer, method: apply, wantCode: codes.Unauthenticated, wantMsg: []string{apply, "no grpc peer"}},
		{name: "no tls", ctx: notTLS, method: list, wantCode: codes.Unauthenticated, wantMsg: []string{list, "not authenticated with tls"}},
		{name: "no verified chain", ctx: unverified, method: sync, wantCode: codes.Unauthenticated, wantMsg: []string{sync, "no verified client certificate"}},
		{name: "admin applies topology", ctx: admin, method: apply},
		{name: "admin lists hosts", ctx: admin, method: list},
		{name: "admin puts secret", ctx: admin, method: secret},
		{name: "admin syncs", ctx: admin, method: sync, wantCode: codes.PermissionDenied, wantMsg: []string{sync, "needs an agent identity", "alice"}},
		{name: "host syncs", ctx: host, method: sync},
		{name: "host lists hosts", ctx: host, method: list, wantCode: codes.PermissionDenied, wantMsg: []string{list, "needs an admin identity", "fe01.contoso.com", "may only call AgentService"}},
		{name: "host applies topology", ctx: host, method: apply, wantCode: codes.PermissionDenied, wantMsg: []string{apply, "needs an admin identity"}},
		{name: "host puts secret", ctx: host, method: secret, wantCode: codes.PermissionDenied, wantMsg: []string{secret, "needs an admin identity"}},
		{name: "host health", ctx: host, method: health},
		{name: "admin health", ctx: admin, method: health},
		{name: "host reflection", ctx: host, method: reflectV, wantCode: codes.PermissionDenied, wantMsg: []string{reflectV, "needs an admin identity"}},
		{name: "anonymous health", ctx: unverified, method: health},
		{name: "anonymous enrollment", ctx: unverified, method: "/s2strust.v1.EnrollmentService/Enroll"},
		{name: "anonymous join token", ctx: unverified, method: "/s2strust.v1.JoinTokenService/CreateJoinToken", wantCode: codes.Unauthenticated},
		{name: "host join token", ctx: host, method: "/s2strust.v1.JoinTokenService/CreateJoinToken", wantCode: codes.PermissionDenied},
		{name: "unknown method", ctx: admin, method: "/s2strust.v1.TopologyService/DeleteEverything", wantCode: codes.PermissionDenied, wantMsg: []string{"no access rule"}},
		{name: "anonymous reflection", ctx: unverified, method: reflectV, wantCode: codes.Unauthenticated},
		{name: "admin reflection", ctx: admin, method: reflectV},
		{name: "insecure apply", access: Access{Insecure: true}, ctx: noPeer, method: apply},
		{name: "insecure sync", access: Access{Insecure: true}, ctx: noPeer, method: sync},
		{name: "insecure host lists", access: Access{Insecure: true}, ctx: host, method: list},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.access.authorize(tc.ctx, tc.method)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("authorize(%s) = %v; want code %s", tc.method, err, tc.wantCode)
			}
			for _, w := range tc.wantMsg {
				if !strings.Contains(status.Convert(err).Message(), w) {
					t.Errorf("message %q does not mention %q", status.Convert(err).Message(), w)
				}
			}
		})
	}
}

func TestUnaryInterceptor(t *testing.T) {
	admin, host := identities(t)
	a := Access{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	info := &grpc.UnaryServerInfo{FullMethod: "/s2strust.v1.TopologyService/ApplyTopology"}

	called := false
	_, err := a.UnaryInterceptor(host, "req", info, func(context.Context, any) (any, error) {
		called = true
		return "resp", nil
	})
	if status.Code(err) != codes.PermissionDenied || called {
		t.Fatalf("host call: err %v, handler called %v; want PermissionDenied before the handler", err, called)
	}

	resp, err := a.UnaryInterceptor(admin, "req", info, func(_ context.Context, req any) (any, error) {
		return req.(string) + "-ok", nil
	})
	if err != nil || resp != "req-ok" {
		t.Fatalf("admin call = %v, %v; want req-ok", resp, err)
	}

	// Handler errors are mapped to statuses at this boundary.
	_, err = a.UnaryInterceptor(admin, "req", info, func(context.Context, any) (any, error) {
		return nil, fmt.Errorf("apply: %w", store.ErrConflict)
	})
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != "apply: revision conflict" {
		t.Errorf("handler conflict = %v; want FailedPrecondition", err)
	}
}
