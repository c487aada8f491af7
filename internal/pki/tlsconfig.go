package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ServerTLSConfig returns the controller's TLS configuration: TLS 1.3 at
// least, serving certPEM/keyPEM, and requiring every client to present a
// certificate that verifies against caPEM (for clients, that means
// ExtKeyUsage clientAuth, so a server certificate cannot log in). What the
// client may do is decided afterwards from IdentityFromContext.
func ServerTLSConfig(certPEM, keyPEM, caPEM []byte) (*tls.Config, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("server tls config: load key pair: %w", err)
	}
	pool, err := certPool(caPEM)
	if err != nil {
		return nil, fmt.Errorf("server tls config: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}, nil
}

// ClientTLSConfig returns the TLS configuration of an agent or admin client:
// TLS 1.3 at least, presenting certPEM/keyPEM, and trusting only caPEM for
// the server, whose certificate must name serverName and carry the
// controller identity (see RequireControllerIdentity). An empty serverName
// leaves it to the dialer (gRPC fills it from the target's authority).
func ClientTLSConfig(certPEM, keyPEM, caPEM []byte, serverName string) (*tls.Config, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("client tls config: load key pair: %w", err)
	}
	pool, err := certPool(caPEM)
	if err != nil {
		return nil, fmt.Errorf("client tls config: %w", err)
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{pair},
		RootCAs:          pool,
		ServerName:       serverName,
		VerifyConnection: RequireControllerIdentity,
		// Sessions the controller's tickets resume (its ticket keys
		// outlive a restart: internal/sessionticket), keyed by server
		// name; a handful, for the replicas behind one address.
		ClientSessionCache: tls.NewLRUClientSessionCache(clientSessions),
	}, nil
}

// clientSessions is how many TLS sessions a client keeps for resumption.
const clientSessions = 8

// ControllerURI is the identity URI that only the controller's serving
// certificate carries (CA.IssueServer).
const ControllerURI = "spiffe://" + TrustDomain + "/server"

// ErrNotController is what RequireControllerIdentity wraps when the peer's
// certificate chains to a trusted CA and names the dialled address, but is
// not the controller's: a host's HTTPS certificate, or one from another
// issuing profile.
var ErrNotController = errors.New("the server's certificate does not carry the controller identity " + ControllerURI)

// RequireControllerIdentity is a tls.Config.VerifyConnection hook for
// clients of the controller. It runs after the standard chain and name
// checks and refuses a leaf whose identity is not the controller's, so a
// host holding a serving certificate from the same CA (for its product
// endpoints) cannot pose as the controller to other agents.
func RequireControllerIdentity(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the server presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return fmt.Errorf("%w (%v)", ErrNotController, err)
	}
	if id.Kind != KindServer {
		return fmt.Errorf("%w (it identifies %s)", ErrNotController, id)
	}
	return nil
}

func certPool(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no ca certificate in ca pem")
	}
	return pool, nil
}
