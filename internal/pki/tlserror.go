package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
)

// ExplainTLSError says in words what is wrong with the controller's
// certificate when a client's handshake fails: a name it does not carry, a
// CA the client does not trust, an expired certificate, or a certificate
// without the controller identity. It returns "" for an error that is not
// about the server's certificate (a refused connection, a timeout), which
// callers then report as an unreachable controller.
func ExplainTLSError(err error) string {
	if err == nil {
		return ""
	}
	var hn x509.HostnameError
	var hnp *x509.HostnameError
	var ua x509.UnknownAuthorityError
	var uap *x509.UnknownAuthorityError
	var inv x509.CertificateInvalidError
	var invp *x509.CertificateInvalidError
	switch {
	case errors.As(err, &hn):
		return explainHostname(hn)
	case errors.As(err, &hnp):
		return explainHostname(*hnp)
	case errors.As(err, &ua), errors.As(err, &uap):
		return "the controller's certificate was not issued by the trusted CA (--ca): this client trusts another controller's or another organisation's CA"
	case errors.As(err, &inv):
		return explainInvalid(inv)
	case errors.As(err, &invp):
		return explainInvalid(*invp)
	case errors.Is(err, ErrNotController):
		return "the server's certificate is from the trusted CA but is not the controller's (no " + ControllerURI + "): is this address another host's HTTPS endpoint?"
	}
	var alert tls.AlertError
	if errors.As(err, &alert) || strings.Contains(err.Error(), "remote error: tls:") {
		return "the controller refused this client's certificate (" + remoteAlert(err) + "): it is expired, revoked or from another CA"
	}
	return ""
}

func explainHostname(e x509.HostnameError) string {
	var names []string
	if e.Certificate != nil {
		names = append(names, e.Certificate.DNSNames...)
		for _, ip := range e.Certificate.IPAddresses {
			names = append(names, ip.String())
		}
	}
	return fmt.Sprintf("the controller's certificate does not name %q (it names %s): dial one of those names, or start serve with --tls-san %s",
		e.Host, strings.Join(names, ", "), e.Host)
}

func explainInvalid(e x509.CertificateInvalidError) string {
	if e.Reason == x509.Expired && e.Cert != nil {
		return fmt.Sprintf("the controller's certificate is expired or not yet valid (valid %s to %s, now %s)",
			e.Cert.NotBefore.UTC().Format(time.RFC3339), e.Cert.NotAfter.UTC().Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339))
	}
	return "the controller's certificate is not valid here: " + e.Error()
}

func remoteAlert(err error) string {
	s := err.Error()
	if i := strings.Index(s, "remote error: tls: "); i >= 0 {
		return strings.TrimSpace(s[i+len("remote error: tls: "):])
	}
	return s
}

// ClientCredentials wraps TLS transport credentials for a controller client
// so that a failed handshake says what is wrong (ExplainTLSError) in the
// error that gRPC turns into the call's UNAVAILABLE status.
func ClientCredentials(cfg *tls.Config) credentials.TransportCredentials {
	return explainingCreds{credentials.NewTLS(cfg)}
}

type explainingCreds struct {
	credentials.TransportCredentials
}

func (c explainingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		if why := ExplainTLSError(err); why != "" {
			return nil, nil, fmt.Errorf("tls handshake with %s: %s: %w", authority, why, err)
		}
	}
	return conn, info, err
}

func (c explainingCreds) Clone() credentials.TransportCredentials {
	return explainingCreds{c.TransportCredentials.Clone()}
}
