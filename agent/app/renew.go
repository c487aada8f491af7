package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// renewer keeps the agent's certificate fresh: well before it expires (a
// third of its lifetime before), it asks the controller for a new one over
// the agent's own connection, with a key made here, stores it in the state
// dir and presents it from the next handshake on, without a restart.
type renewer struct {
	host     string
	stateDir string
	caPEM    []byte
	log      *slog.Logger

	mu   sync.Mutex
	pair *tls.Certificate
	leaf *x509.Certificate
}

// newRenewer takes over t's client certificate so it can be swapped.
func newRenewer(host, stateDir string, t *tls.Config, caPEM []byte, log *slog.Logger) (*renewer, error) {
	if len(t.Certificates) != 1 {
		return nil, errors.New("renew: want exactly one client certificate")
	}
	pair := t.Certificates[0]
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("renew: parse the agent certificate: %w", err)
	}
	r := &renewer{host: host, stateDir: stateDir, caPEM: caPEM, log: log, pair: &pair, leaf: leaf}
	t.Certificates = nil
	t.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.pair, nil
	}
	return r, nil
}

// renewAt is when a certificate is renewed: when a third of its lifetime
// is left, with a little jitter so a fleet enrolled together spreads out.
func renewAt(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(pki.IssuedAt(leaf))
	if life <= 0 {
		return time.Now()
	}
	jitter := time.Duration(rand.Int64N(int64(life/20) + 1))
	return leaf.NotAfter.Add(-life/3 - jitter)
}

// Run renews until ctx ends. A failed renewal is retried with backoff; the
// old certificate stays in use meanwhile.
func (r *renewer) Run(ctx context.Context, conn *grpc.ClientConn) error {
	backoff := time.Second
	for {
		r.mu.Lock()
		at := renewAt(r.leaf)
		r.mu.Unlock()
		if err := sleepUntil(ctx, at); err != nil {
			return nil
		}
		if err := r.renew(ctx, conn); err != nil {
			r.log.Warn("certificate renewal failed; retrying", "host", r.host, "error", err, "retry_in", backoff)
			if sleepUntil(ctx, time.Now().Add(backoff)) != nil {
				return nil
			}
			backoff = min(2*backoff, 5*time.Minute)
			continue
		}
		backoff = time.Second
	}
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

func (r *renewer) renew(ctx context.Context, conn *grpc.ClientConn) error {
	csr, keyPEM, err := pki.NewHostCSR(r.host)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := pb.NewHostIdentityServiceClient(conn).RenewHostCertificate(cctx, &pb.RenewHostCertificateRequest{Csr: csr})
	if err != nil {
		return err
	}
	// The new certificate must come from the CA this agent already trusts.
	block, _ := pem.Decode(r.caPEM)
	if block == nil {
		return errors.New("no CA certificate to check the renewed certificate against")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return err
	}
	leaf, err := checkEnrolled(&pb.EnrollResponse{CertificatePem: resp.GetCertificatePem(), CaPem: r.caPEM}, r.host, pki.CAPin(ca))
	if err != nil {
		return fmt.Errorf("the renewed certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(resp.GetCertificatePem(), keyPEM)
	if err != nil {
		return err
	}
	if err := storeIdentity(r.stateDir, resp.GetCertificatePem(), keyPEM, r.caPEM); err != nil {
		return err
	}
	r.mu.Lock()
	r.pair, r.leaf = &pair, leaf
	r.mu.Unlock()
	r.log.Info("certificate renewed", "host", r.host, "not_after", leaf.NotAfter.UTC(), "serial", leaf.SerialNumber.Text(16))
	return nil
}

// storeIdentity writes an identity into the state dir, all owner-only.
func storeIdentity(stateDir string, certPEM, keyPEM, caPEM []byte) error {
	dir := IdentityDir(stateDir)
	if err := pki.WriteIdentity(dir, "agent", certPEM, keyPEM, caPEM); err != nil {
		return err
	}
	for _, p := range []string{dir, filepath.Join(dir, "agent.key"), filepath.Join(dir, "agent.crt"), filepath.Join(dir, "ca.crt")} {
		mode := os.FileMode(0o600)
		if p == dir {
			mode = 0o700
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
	}
	return nil
}
