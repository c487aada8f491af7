package pki

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// TestIdentityFromContextGRPC runs the standard health service behind a
// real gRPC server with mTLS on loopback; an interceptor records what
// IdentityFromContext says about each caller.
func TestIdentityFromContextGRPC(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	srvCert, srvKey, err := ca.IssueServer([]string{"localhost"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serverCfg, err := ServerTLSConfig(srvCert, srvKey, ca.CertPEM())
	if err != nil {
		t.Fatal(err)
	}

	type seen struct {
		id  Identity
		err error
	}
	calls := make(chan seen, 1)
	capture := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		id, err := IdentityFromContext(ctx)
		calls <- seen{id, err}
		return handler(ctx, req)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(serverCfg)), grpc.UnaryInterceptor(capture))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	adminCert, adminKey, err := ca.IssueAdmin("alice", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hostCert, hostKey, err := ca.IssueHost("ex01.contoso.com", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name            string
		certPEM, keyPEM []byte
		want            Identity
	}{
		{"admin", adminCert, adminKey, Identity{KindAdmin, "alice", RoleAdmin}},
		{"host", hostCert, hostKey, Identity{KindHost, "ex01.contoso.com", RoleNone}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clientCfg, err := ClientTLSConfig(tc.certPEM, tc.keyPEM, ca.CertPEM(), "localhost")
			if err != nil {
				t.Fatal(err)
			}
			conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(clientCfg)))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("health status %v, want SERVING", resp.GetStatus())
			}
			got := <-calls
			if got.err != nil || got.id != tc.want {
				t.Errorf("IdentityFromContext = %v, %v; want %v", got.id, got.err, tc.want)
			}
		})
	}

	t.Run("no client certificate", func(t *testing.T) {
		roots, err := certPool(ca.CertPEM())
		if err != nil {
			t.Fatal(err)
		}
		clientCfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: "localhost"}
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(clientCfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("Check without client certificate: %v, want Unavailable", err)
		}
		select {
		case got := <-calls:
			t.Errorf("handler reached without a client certificate: %v, %v", got.id, got.err)
		default:
		}
	})
}

func TestIdentityFromContextWithoutTLS(t *testing.T) {
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want string
	}{
		{"no peer", context.Background(), "no grpc peer"},
		{"insecure peer", peer.NewContext(context.Background(), &peer.Peer{Addr: addr}), "not authenticated with tls"},
		{"tls without client certificate", peer.NewContext(context.Background(), &peer.Peer{Addr: addr, AuthInfo: credentials.TLSInfo{}}), "no verified client certificate"},
		{"nil tls info", peer.NewContext(context.Background(), &peer.Peer{Addr: addr, AuthInfo: (*credentials.TLSInfo)(nil)}), "nil tls info"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := IdentityFromContext(tc.ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("IdentityFromContext = %v, %v; want error containing %q", id, err, tc.want)
			}
		})
	}
}
