package app

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"

	"github.com/s2strust/s2strust/internal/pki"
)

// LoadClientTLS reads a client identity and the CA from files; the server
// name is taken from addr's host.
func LoadClientTLS(caFile, certFile, keyFile, addr string) (*tls.Config, error) {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	cert, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read client certificate: %w", err)
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read client key: %w", err)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return pki.ClientTLSConfig(cert, key, ca, host)
}
