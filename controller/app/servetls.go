package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
)

// ServeTLS is the controller's serving identity.
type ServeTLS struct {
	// SANs are names and IP addresses added to the serving certificate
	// that the development CA issues (--tls-san); the certificate is
	// reissued when the list changes.
	SANs []string
	// CertFile and KeyFile are the organisation's own serving certificate
	// and key (--tls-cert, --tls-key) instead of one from the development
	// CA. The certificate must carry the controller identity URI
	// (pki.ControllerURI), which agents and admin clients require.
	CertFile, KeyFile string
	// ClientCAFile holds more CA certificates trusted for client
	// certificates (--client-ca), besides the fleet's CA.
	ClientCAFile string
	// CACertFile and CAKeyFile are an operator-provided (intermediate) CA
	// that becomes the fleet's CA (--ca-cert, --ca-key) instead of one the
	// first replica makes. It is stored in etcd sealed like a made one, so
	// other replicas may start without the flags; a replica given another
	// CA than the stored one refuses to start.
	CACertFile, CAKeyFile string
}

// check refuses a bad combination or value, naming the flag and value.
func (t ServeTLS) check() error {
	for _, n := range t.SANs {
		if err := pki.CheckServerName(n); err != nil {
			return fmt.Errorf("--tls-san %q: %w", n, err)
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if (t.CACertFile == "") != (t.CAKeyFile == "") {
		return errors.New("--ca-cert and --ca-key go together")
	}
	if t.CertFile != "" && len(t.SANs) > 0 {
		return errors.New("--tls-san names what the development CA issues; with --tls-cert the names are those of your certificate")
	}
	return nil
}

// startTimeout bounds the store reads and writes of the CA at start, so a
// store without quorum fails the start clearly instead of hanging.
const startTimeout = 30 * time.Second

// serverTLS prepares the controller's TLS configuration: the fleet's CA
// (shared through the store by every replica), the development PKI in the
// data dir under that CA, and the serving certificate — the development
// CA's for the listen address, the host name and --tls-san, or the
// organisation's own.
func serverTLS(ctx context.Context, cfg ServeConfig, lis net.Listener, st *store.Store, secretKey []byte, denied func(*x509.Certificate) error, log *slog.Logger) (*tls.Config, *pki.CA, error) {
	if err := cfg.TLS.check(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	dir := PKIDir(cfg.DataDir)
	now := time.Now()
	var operatorCA *pki.CA
	if cfg.TLS.CACertFile != "" {
		var err error
		if operatorCA, err = loadOperatorCA(cfg.TLS.CACertFile, cfg.TLS.CAKeyFile, now); err != nil {
			return nil, nil, err
		}
	}
	ca, created, err := SharedCA(ctx, st, secretKey, func() (*pki.CA, error) {
		if operatorCA != nil {
			return operatorCA, nil
		}
		// A data dir from before the CA was shared keeps its CA, so the
		// agents it issued stay valid.
		if local, err := pki.LoadDevCA(dir); err != nil || local != nil {
			return local, err
		}
		return pki.NewCA(pki.DevCAName, now)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("prepare the fleet's CA: %w", err)
	}
	if operatorCA != nil && !operatorCA.Cert.Equal(ca.Cert) {
		return nil, nil, fmt.Errorf("--ca-cert %s (%q) is not the fleet's CA stored in etcd (%q): every replica must use the same CA",
			cfg.TLS.CACertFile, operatorCA.Cert.Subject.String(), ca.Cert.Subject.String())
	}
	if created {
		log.Info("stored the fleet's CA in etcd, sealed with the secret key", "ca", ca.Cert.Subject.CommonName)
	}
	host, _, _ := net.SplitHostPort(lis.Addr().String())
	var names []string
	if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
		names = append(names, host)
	}
	if hn, err := os.Hostname(); err == nil && strings.Contains(hn, ".") && pki.CheckServerName(hn) == nil {
		names = append(names, hn)
	}
	names = append(names, cfg.TLS.SANs...)
	files, replaced, err := pki.InstallDevPKI(dir, ca, names, now)
	if err != nil {
		return nil, nil, fmt.Errorf("prepare PKI in %s: %w", dir, err)
	}
	if replaced {
		log.Warn("the data dir held another CA than the fleet's (stored in etcd by the first replica); identities it issued no longer verify", "dir", dir)
	}
	certFile, keyFile := files.ServerCert(), files.ServerKey()
	if cfg.TLS.CertFile != "" {
		certFile, keyFile = cfg.TLS.CertFile, cfg.TLS.KeyFile
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("read server certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("read server key: %w", err)
	}
	if cfg.TLS.CertFile != "" {
		if err := checkControllerCert(certPEM); err != nil {
			return nil, nil, fmt.Errorf("--tls-cert %s: %w", certFile, err)
		}
	}
	clientCA := ca.CertPEM()
	if cfg.TLS.ClientCAFile != "" {
		more, err := os.ReadFile(cfg.TLS.ClientCAFile)
		if err != nil {
			return nil, nil, fmt.Errorf("read --client-ca: %w", err)
		}
		clientCA = append(append(clientCA, '\n'), more...)
	}
	tlsCfg, err := pki.ServerTLSConfig(certPEM, keyPEM, clientCA)
	if err != nil {
		return nil, nil, err
	}
	// A client certificate is asked for, verified when given, and required
	// by every method but enrollment and health (server.Policy).
	tlsCfg.ClientAuth = tls.VerifyClientCertIfGiven
	// A revoked host's certificate fails the handshake itself.
	tlsCfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.VerifiedChains) > 0 && len(cs.VerifiedChains[0]) > 0 {
			return denied(cs.VerifiedChains[0][0])
		}
		return nil
	}
	// Session tickets that a restarted controller, or another replica,
	// still opens: reconnecting agents resume their sessions.
	keys, err := sharedTicketKeys(ctx, st, secretKey)
	if err != nil {
		return nil, nil, err
	}
	keys.Install(tlsCfg)
	// The chain includes the fleet's CA, so an enrolling agent that knows
	// only the CA's pin can check the controller (pki.EnrollTLSConfig).
	if cfg.TLS.CertFile == "" {
		tlsCfg.Certificates[0].Certificate = append(tlsCfg.Certificates[0].Certificate, ca.Cert.Raw)
	}
	return tlsCfg, ca, nil
}

// loadOperatorCA loads --ca-cert/--ca-key: a CA certificate (the first
// in the file; an intermediate's bundle may follow it) and its key, valid
// now.
func loadOperatorCA(certFile, keyFile string, now time.Time) (*pki.CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read --ca-cert: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read --ca-key: %w", err)
	}
	ca, err := pki.LoadCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert %s: %w", certFile, err)
	}
	if now.Before(ca.Cert.NotBefore) || now.After(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("--ca-cert %s: not valid now (valid %s to %s)", certFile,
			ca.Cert.NotBefore.UTC().Format(time.RFC3339), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return ca, nil
}

// checkControllerCert refuses an operator's serving certificate that
// agents would refuse: one without the controller identity URI.
func checkControllerCert(certPEM []byte) error {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return errors.New("no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return fmt.Errorf("parse certificate: %w", err)
	}
	if id, err := pki.IdentityFromCert(leaf); err != nil || id.Kind != pki.KindServer {
		return fmt.Errorf("the certificate does not carry the URI SAN %s, which agents and admin clients require of the controller; have your CA add it", pki.ControllerURI)
	}
	return nil
}
