// Package simnet lays out the network of a simulated fleet on loopback:
// an enterprise CA, one HTTPS listener per host with a certificate naming
// the host and its deployment's endpoint (pool FQDN, autodiscover FQDN,
// SharePoint web application), and the name overrides that make
// https://pool01.contoso.com/metadata/json/1 reach the simulated pool. The
// demo and the end-to-end tests use it; real deployments use DNS and the
// hosts' own certificates.
package simnet

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/topology"
)

// Host is one simulated host's HTTPS side.
type Host struct {
	// Name is the host's FQDN.
	Name string
	// Listener is bound on 127.0.0.1; the host's sim serves on it.
	Listener net.Listener
	// TLS holds the host's server certificate.
	TLS *tls.Config

	mu    sync.Mutex
	taken bool
}

// Take returns the host's listener for a sim to serve on: the one bound at
// New the first time, a new one on the same address after that (a
// restarted host keeps its address, so partners' resolvers still reach it).
func (h *Host) Take() (net.Listener, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.taken {
		h.taken = true
		return h.Listener, nil
	}
	lis, err := net.Listen("tcp", h.Listener.Addr().String())
	if err != nil {
		return nil, fmt.Errorf("listen again for simulated host %s: %w", h.Name, err)
	}
	return lis, nil
}

// Network is a simulated fleet's network.
type Network struct {
	// Roots trusts the enterprise CA that issued every host's certificate.
	Roots *x509.CertPool
	// Hosts by FQDN.
	Hosts   map[string]*Host
	resolve map[string]string
}

// New creates a listener and a certificate for every host of t.
func New(t *topology.Topology) (*Network, error) {
	now := time.Now()
	ca, err := certs.Generate(certs.Template{CommonName: t.Name + " simulated enterprise CA", IsCA: true, ECDSA: true, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0)})
	if err != nil {
		return nil, fmt.Errorf("create simulated enterprise CA: %w", err)
	}
	n := &Network{Roots: x509.NewCertPool(), Hosts: map[string]*Host{}, resolve: map[string]string{}}
	n.Roots.AddCert(ca.Cert)
	for _, d := range t.Deployments {
		endpoint := endpointName(d)
		for i, h := range d.Hosts {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				n.Close()
				return nil, fmt.Errorf("listen for simulated host %s: %w", h, err)
			}
			names := []string{h}
			if endpoint != "" {
				names = append(names, endpoint)
			}
			b, err := certs.Generate(certs.Template{CommonName: h, DNSNames: names, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
				ECDSA: true, Issuer: ca, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0)})
			if err != nil {
				lis.Close()
				n.Close()
				return nil, fmt.Errorf("certificate for simulated host %s: %w", h, err)
			}
			cert := tls.Certificate{Certificate: [][]byte{b.Cert.Raw, ca.Cert.Raw}, PrivateKey: b.Key, Leaf: b.Cert}
			n.Hosts[h] = &Host{Name: h, Listener: lis, TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
			n.resolve[h] = lis.Addr().String()
			// The deployment's endpoint name reaches its first host, as a
			// load balancer's virtual IP would.
			if i == 0 && endpoint != "" {
				n.resolve[endpoint] = lis.Addr().String()
			}
		}
	}
	return n, nil
}

// endpointName is the DNS name behind a deployment's metadata URL.
func endpointName(d topology.Deployment) string {
	switch {
	case d.PoolFQDN != "":
		return d.PoolFQDN
	case d.AutodiscoverFQDN != "":
		return d.AutodiscoverFQDN
	case d.WebAppURL != "":
		if u, err := url.Parse(d.WebAppURL); err == nil {
			return u.Hostname()
		}
	}
	return ""
}

// Resolve is the name overrides in --resolve form, host=ip:port, sorted.
func (n *Network) Resolve() []string {
	out := make([]string, 0, len(n.resolve))
	for k, v := range n.resolve {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// Close closes the listeners no sim has taken over.
func (n *Network) Close() {
	for _, h := range n.Hosts {
		h.mu.Lock()
		if !h.taken {
			h.Listener.Close()
		}
		h.mu.Unlock()
	}
}
