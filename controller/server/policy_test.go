package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/s2strust/s2strust/internal/pki"
	_ "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestPolicyCoversEveryMethod: every RPC of the s2strust API has a rule,
// so none is closed by accident (or open by accident: see the table).
func TestPolicyCoversEveryMethod(t *testing.T) {
	n := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("s2strust.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				full := "/" + string(sd.FullName()) + "/" + string(sd.Methods().Get(j).Name())
				n++
				if _, ok := policy[full]; !ok {
					t.Errorf("%s has no rule in policy", full)
				}
			}
		}
		return true
	})
	if n < 10 {
		t.Fatalf("found only %d methods in the s2strust.v1 registry", n)
	}
	for m, r := range policy {
		if r.who == anyone && !strings.HasPrefix(m, "/grpc.health.v1.Health/") && m != "/s2strust.v1.EnrollmentService/Enroll" {
			t.Errorf("%s is open to anyone (%s)", m, r.describe())
		}
	}
}

func roleCtx(t *testing.T, role pki.Role) context.Context {
	t.Helper()
	now := time.Now()
	ca, err := pki.NewCA("test CA", now)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.IssueAdminRole("alice", role, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	info := credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf, ca.Cert}}}}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: info})
}

func TestRoles(t *testing.T) {
	const (
		list   = "/s2strust.v1.FleetService/ListHosts"
		apply  = "/s2strust.v1.TopologyService/ApplyTopology"
		secret = "/s2strust.v1.SecretService/PutSecret"
		token  = "/s2strust.v1.JoinTokenService/CreateJoinToken"
		refl   = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	)
	for _, tc := range []struct {
		role   pki.Role
		method string
		ok     bool
	}{
		{pki.RoleViewer, list, true},
		{pki.RoleViewer, refl, true},
		{pki.RoleViewer, apply, false},
		{pki.RoleViewer, secret, false},
		{pki.RoleOperator, list, true},
		{pki.RoleOperator, secret, false},
		{pki.RoleOperator, token, false},
		{pki.RoleAdmin, apply, true},
		{pki.RoleAdmin, secret, true},
		{pki.RoleAdmin, token, true},
	} {
		_, err := Access{}.authorize(roleCtx(t, tc.role), tc.method)
		if tc.ok {
			if err != nil {
				t.Errorf("%s calling %s: %v, want allowed", tc.role, tc.method, err)
			}
			continue
		}
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "needs the role "+policy[tc.method].role.String()) {
			t.Errorf("%s calling %s: %v, want PERMISSION_DENIED naming the role required", tc.role, tc.method, err)
		}
	}
}
