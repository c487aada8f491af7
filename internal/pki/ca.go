package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

const (
	// caLifetime is the validity of a CA made by NewCA.
	caLifetime = 10 * 365 * 24 * time.Hour
	// backdate moves NotBefore into the past so that a peer whose clock is a
	// little behind the issuer's accepts a certificate issued just now.
	backdate = 5 * time.Minute
)

// CA is a certificate authority that signs s2strust certificates. Key is a
// crypto.Signer so that it may live outside this process (an HSM or KMS)
// except where KeyPEM has to export it.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA creates a self-signed CA with a new ECDSA P-256 key, valid for ten
// years from now. MaxPathLen 0 forbids intermediate CAs beneath it, so every
// certificate that chains to it was issued by this package.
func NewCA(commonName string, now time.Time) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("create ca: empty common name")
	}
	key, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("create ca %q: %w", commonName, err)
	}
	tmpl := &x509.Certificate{
		// SerialNumber nil: CreateCertificate picks a random RFC 5280 serial.
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"s2strust"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create ca %q: sign certificate: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("create ca %q: parse certificate: %w", commonName, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA parses a CA certificate and its private key from PEM. The key may
// be PKCS #8, SEC 1 (EC) or PKCS #1 (RSA) and must match the certificate,
// which must be a CA allowed to sign certificates. Only the first
// certificate in certPEM is used.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	cert := pair.Leaf
	if cert == nil {
		if cert, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("load ca: parse certificate: %w", err)
		}
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("load ca %q: certificate is not a ca", cert.Subject.CommonName)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("load ca %q: key usage does not allow signing certificates", cert.Subject.CommonName)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("load ca %q: private key %T cannot sign", cert.Subject.CommonName, pair.PrivateKey)
	}
	return &CA{Cert: cert, Key: signer}, nil
}

// CertPEM returns the CA certificate in PEM, the trust anchor to hand to
// every peer.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// KeyPEM returns the CA private key as PKCS #8 PEM, unencrypted; the caller
// must store it encrypted or owner-readable only. It fails for a key that
// cannot be exported.
func (ca *CA) KeyPEM() ([]byte, error) {
	b, err := keyPEM(ca.Key)
	if err != nil {
		return nil, fmt.Errorf("export ca key: %w", err)
	}
	return b, nil
}

// IssueServer issues the controller's serving certificate (ExtKeyUsage
// serverAuth) with a new key for the given DNS names and IP literals. It is
// the controller profile: the only certificate this package ever issues
// with the identity URI spiffe://s2strust/server, which agents and admin
// clients require of the controller (see ClientTLSConfig), so that no
// host's certificate — not even a host's own HTTPS certificate from the
// same CA (IssueHTTPS) — can stand in for the controller. DNS names are
// lower-cased; duplicates are dropped. See issue for how now and ttl set
// the validity.
func (ca *CA) IssueServer(names []string, now time.Time, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	tmpl, err := serverTemplate(names)
	if err != nil {
		return nil, nil, fmt.Errorf("issue server certificate: %w", err)
	}
	tmpl.URIs = []*url.URL{Identity{Kind: KindServer}.uri()}
	certPEM, keyPEM, err = ca.issueWithNewKey(tmpl, now, ttl)
	if err != nil {
		return nil, nil, fmt.Errorf("issue server certificate for %s: %w", strings.Join(names, ", "), err)
	}
	return certPEM, keyPEM, nil
}

// IssueHTTPS issues a plain HTTPS serving certificate (ExtKeyUsage
// serverAuth) with a new key for the given names, as a host's product
// endpoints use (the sim's metadata document and S2S endpoint). It carries
// no identity URI, so a controller client refuses it even when it names
// the controller's address.
func (ca *CA) IssueHTTPS(names []string, now time.Time, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	tmpl, err := serverTemplate(names)
	if err != nil {
		return nil, nil, fmt.Errorf("issue https certificate: %w", err)
	}
	certPEM, keyPEM, err = ca.issueWithNewKey(tmpl, now, ttl)
	if err != nil {
		return nil, nil, fmt.Errorf("issue https certificate for %s: %w", strings.Join(names, ", "), err)
	}
	return certPEM, keyPEM, nil
}

func serverTemplate(names []string) (*x509.Certificate, error) {
	dns, ips, err := parseServerNames(names)
	if err != nil {
		return nil, err
	}
	cn := "s2strust server"
	if len(dns) > 0 && len(dns[0]) <= maxNameLen {
		cn = dns[0]
	}
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: []string{"s2strust"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    dns,
		IPAddresses: ips,
	}, nil
}

// IssueAdmin issues a client certificate (ExtKeyUsage clientAuth) with a
// new key for the administrator name, identified as
// spiffe://s2strust/admin/<name>. A name is 1 to 64 letters, digits, '.',
// '-' or '_'.
func (ca *CA) IssueAdmin(name string, now time.Time, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := validateAdminName(name); err != nil {
		return nil, nil, fmt.Errorf("issue admin certificate: %w", err)
	}
	return ca.IssueAdminRole(name, RoleAdmin, now, ttl)
}

// IssueAdminRole issues an admin certificate (as IssueAdmin does) with the
// given role: spiffe://s2strust/admin/<name> for RoleAdmin,
// spiffe://s2strust/admin/<name>/<role> for RoleOperator and RoleViewer.
func (ca *CA) IssueAdminRole(name string, role Role, now time.Time, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := validateAdminName(name); err != nil {
		return nil, nil, fmt.Errorf("issue admin certificate: %w", err)
	}
	if role < RoleViewer || role > RoleAdmin {
		return nil, nil, fmt.Errorf("issue admin certificate for %q: role %d is not admin, operator or viewer", name, role)
	}
	certPEM, keyPEM, err = ca.issueWithNewKey(clientTemplate(Identity{Kind: KindAdmin, Name: name, Role: role}), now, ttl)
	if err != nil {
		return nil, nil, fmt.Errorf("issue admin certificate for %q: %w", name, err)
	}
	return certPEM, keyPEM, nil
}

// IssueHost issues a client certificate (ExtKeyUsage clientAuth) with a new
// key for the agent on host fqdn, identified as
// spiffe://s2strust/host/<fqdn>. The fqdn is lower-cased and a trailing dot
// dropped; it must have at least two DNS labels and not be an IP address.
func (ca *CA) IssueHost(fqdn string, now time.Time, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	name, err := normalizeFQDN(fqdn)
	if err != nil {
		return nil, nil, fmt.Errorf("issue host certificate: %w", err)
	}
	certPEM, keyPEM, err = ca.issueWithNewKey(clientTemplate(Identity{Kind: KindHost, Name: name}), now, ttl)
	if err != nil {
		return nil, nil, fmt.Errorf("issue host certificate for %s: %w", name, err)
	}
	return certPEM, keyPEM, nil
}

// SignHostCSR issues a host certificate for fqdn (as IssueHost does) to the
// public key of a DER-encoded PKCS #10 request, so the agent's private key
// never leaves the agent. The request's signature is checked (proof that
// the requester holds the key); its subject, SANs and extensions are
// ignored: the caller decides which host is named, typically from a
// one-time join token. Keys must be ECDSA P-256/P-384/P-521, Ed25519 or RSA
// of at least 2048 bits.
func (ca *CA) SignHostCSR(csrDER []byte, fqdn string, now time.Time, ttl time.Duration) (certPEM []byte, err error) {
	name, err := normalizeFQDN(fqdn)
	if err != nil {
		return nil, fmt.Errorf("sign host csr: %w", err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("sign host csr for %s: parse request: %w", name, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("sign host csr for %s: check request signature: %w", name, err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("sign host csr for %s: %w", name, err)
	}
	certPEM, err = ca.issue(clientTemplate(Identity{Kind: KindHost, Name: name}), csr.PublicKey, now, ttl)
	if err != nil {
		return nil, fmt.Errorf("sign host csr for %s: %w", name, err)
	}
	return certPEM, nil
}

// clientTemplate is the certificate template for an admin or host identity.
// The CN repeats the name for readers (left empty if longer than X.509
// allows); only the URI SAN identifies.
func clientTemplate(id Identity) *x509.Certificate {
	var subject pkix.Name
	subject.Organization = []string{"s2strust"}
	if len(id.Name) <= maxNameLen {
		subject.CommonName = id.Name
	}
	return &x509.Certificate{
		Subject:     subject,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{id.uri()},
	}
}

func (ca *CA) issueWithNewKey(tmpl *x509.Certificate, now time.Time, ttl time.Duration) (certPEM, keyPEMOut []byte, err error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = ca.issue(tmpl, key.Public(), now, ttl)
	if err != nil {
		return nil, nil, err
	}
	keyPEMOut, err = keyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEMOut, nil
}

// issue signs tmpl for pub. The certificate is valid from shortly before
// now (see backdate) until now+ttl, but never beyond the CA's own NotAfter:
// a leaf outliving its CA would fail verification anyway, and capping it
// keeps renewal logic honest about the real expiry.
func (ca *CA) issue(tmpl *x509.Certificate, pub crypto.PublicKey, now time.Time, ttl time.Duration) ([]byte, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("ca has no certificate or key")
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("ttl %s is not positive", ttl)
	}
	if now.Before(ca.Cert.NotBefore) || !now.Before(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("ca %q is not valid at %s (valid %s to %s)", ca.Cert.Subject.CommonName,
			now.UTC().Format(time.RFC3339), ca.Cert.NotBefore.UTC().Format(time.RFC3339), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	t := *tmpl
	t.BasicConstraintsValid = true
	t.IsCA = false
	t.NotBefore = now.Add(-backdate)
	t.NotAfter = now.Add(ttl)
	if t.NotAfter.After(ca.Cert.NotAfter) {
		t.NotAfter = ca.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, &t, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func newKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ecdsa p-256 key: %w", err)
	}
	return key, nil
}

func keyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// checkPublicKey rejects key types and sizes we do not want to certify.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("unsupported ecdsa curve %s", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("rsa key of %d bits is shorter than 2048", k.N.BitLen())
		}
		return nil
	default:
		return fmt.Errorf("unsupported public key type %T", pub)
	}
}

// parseServerNames splits names into lower-case DNS names and IP addresses,
// in the order given, without duplicates.
func parseServerNames(names []string) (dns []string, ips []net.IP, err error) {
	if len(names) == 0 {
		return nil, nil, errors.New("no server names")
	}
	seen := make(map[string]bool)
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			if key := ip.String(); !seen[key] {
				seen[key] = true
				ips = append(ips, ip)
			}
			continue
		}
		d := strings.ToLower(strings.TrimSuffix(n, "."))
		if err := validateDNSName(d); err != nil {
			return nil, nil, fmt.Errorf("server name %q: %w", n, err)
		}
		if !seen[d] {
			seen[d] = true
			dns = append(dns, d)
		}
	}
	return dns, ips, nil
}

// CheckServerName checks one name for a serving certificate: an IP literal
// or a DNS name (letters, digits, inner hyphens, dot-separated labels; a
// trailing dot is allowed). It is how `serve --tls-san` refuses a bad
// value before anything is issued.
func CheckServerName(name string) error {
	_, _, err := parseServerNames([]string{name})
	return err
}

// IssuedAt is when this package issued cert: its NotBefore plus the
// backdate that issue applies (to within the second that X.509 times
// keep). A deny list compares it with the time of a revocation.
func IssuedAt(cert *x509.Certificate) time.Time { return cert.NotBefore.Add(backdate) }
