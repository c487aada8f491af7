package app

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// EnrollConfig configures `s2s-agent enroll`.
type EnrollConfig struct {
	Controller string
	Host       string
	// Token and CAPin come from `s2s-controller token create`.
	Token, CAPin string
	// StateDir receives the identity, in IdentityDir(StateDir).
	StateDir string
	// Dialer, when set, makes the connection (tests).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	Logger *slog.Logger
}

// IdentityDir is where enroll stores the agent's identity in a state dir:
// agent.key, agent.crt and ca.crt, all owner-only in an owner-only
// directory. `run` uses them when --ca, --cert and --key are not given.
func IdentityDir(stateDir string) string { return filepath.Join(stateDir, "identity") }

// Enroll makes a key on this host, sends a certificate request with the
// join token, checks what comes back against the CA pin, and stores the
// identity. The key never leaves the host. It returns the certificate's
// expiry.
func Enroll(ctx context.Context, cfg EnrollConfig) (time.Time, error) {
	host, err := pki.NormalizeHost(cfg.Host)
	if err != nil {
		return time.Time{}, fmt.Errorf("--host: %w", err)
	}
	if cfg.Controller == "" {
		return time.Time{}, errors.New("--controller is required, e.g. controller.contoso.com:7443")
	}
	if cfg.Token == "" {
		return time.Time{}, errors.New("--token is required (from `s2s-controller token create --host " + host + "`)")
	}
	if cfg.StateDir == "" {
		return time.Time{}, errors.New("--state-dir is required")
	}
	pin, err := pki.ParseCAPin(cfg.CAPin)
	if err != nil {
		return time.Time{}, fmt.Errorf("--ca-pin: %w", err)
	}
	serverName, _, err := net.SplitHostPort(cfg.Controller)
	if err != nil {
		return time.Time{}, fmt.Errorf("--controller %q: want HOST:PORT: %w", cfg.Controller, err)
	}
	tlsCfg, err := pki.EnrollTLSConfig(pin, serverName)
	if err != nil {
		return time.Time{}, err
	}
	csr, keyPEM, err := pki.NewHostCSR(host)
	if err != nil {
		return time.Time{}, err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(pki.ClientCredentials(tlsCfg))}
	target := cfg.Controller
	if cfg.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(cfg.Dialer))
		target = "passthrough:///" + target
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return time.Time{}, fmt.Errorf("connect to controller %s: %w", cfg.Controller, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := pb.NewEnrollmentServiceClient(conn).Enroll(ctx, &pb.EnrollRequest{Host: host, Token: cfg.Token, Csr: csr})
	if err != nil {
		return time.Time{}, fmt.Errorf("enroll %s at %s: %w", host, cfg.Controller, err)
	}
	leaf, err := checkEnrolled(resp, host, pin)
	if err != nil {
		return time.Time{}, fmt.Errorf("enroll %s: the controller's answer: %w", host, err)
	}
	dir := IdentityDir(cfg.StateDir)
	if err := storeIdentity(cfg.StateDir, resp.GetCertificatePem(), keyPEM, resp.GetCaPem()); err != nil {
		return time.Time{}, fmt.Errorf("enroll %s: %w", host, err)
	}
	if cfg.Logger != nil {
		cfg.Logger.Info("enrolled", "host", host, "controller", cfg.Controller, "dir", dir, "not_after", leaf.NotAfter.UTC())
	}
	return leaf.NotAfter, nil
}

// checkEnrolled verifies the issued certificate: the CA is the pinned one
// and the certificate is this host's identity from that CA.
func checkEnrolled(resp *pb.EnrollResponse, host, pin string) (*x509.Certificate, error) {
	ca, err := pki.PinnedCA(resp.GetCaPem(), pin)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(resp.GetCertificatePem())
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("verify the issued certificate: %w", err)
	}
	id, err := pki.IdentityFromCert(leaf)
	if err != nil {
		return nil, err
	}
	if id != (pki.Identity{Kind: pki.KindHost, Name: host}) {
		return nil, fmt.Errorf("issued certificate identifies %s, not host/%s", id, host)
	}
	return leaf, nil
}

// enrolledFiles returns the identity that enroll or a renewal stored in
// the state dir: when --ca, --cert and --key are all unset and it exists,
// or when it is a later certificate for the same host than --cert (a
// renewal of it).
func enrolledFiles(cfg Config) (ca, cert, key string, ok bool) {
	if cfg.StateDir == "" {
		return "", "", "", false
	}
	dir := IdentityDir(cfg.StateDir)
	ca, cert, key = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key")
	stored := readLeaf(cert)
	if stored == nil {
		return "", "", "", false
	}
	if cfg.CA == "" && cfg.Cert == "" && cfg.Key == "" {
		return ca, cert, key, true
	}
	given := readLeaf(cfg.Cert)
	if given == nil || !stored.NotAfter.After(given.NotAfter) {
		return "", "", "", false
	}
	gid, err1 := pki.IdentityFromCert(given)
	sid, err2 := pki.IdentityFromCert(stored)
	if err1 != nil || err2 != nil || gid != sid {
		return "", "", "", false
	}
	return ca, cert, key, true
}

func readLeaf(file string) *x509.Certificate {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil
	}
	return c
}
