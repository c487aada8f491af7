package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// pinPrefix starts every CA pin, as kubeadm's discovery-token-ca-cert-hash.
const pinPrefix = "sha256:"

// CAPin is the pin of a CA certificate: "sha256:" and the lower-case hex
// SHA-256 of its SubjectPublicKeyInfo. Pinning the key rather than the
// certificate keeps a pin valid across a re-signed CA certificate with the
// same key.
func CAPin(ca *x509.Certificate) string {
	sum := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	return pinPrefix + hex.EncodeToString(sum[:])
}

// ParseCAPin checks the form of a pin and returns it normalized (lower
// case): "sha256:" and 64 hex digits.
func ParseCAPin(pin string) (string, error) {
	p := strings.ToLower(strings.TrimSpace(pin))
	hexPart, ok := strings.CutPrefix(p, pinPrefix)
	if !ok {
		return "", fmt.Errorf("ca pin %q: want sha256:<64 hex digits>", pin)
	}
	if b, err := hex.DecodeString(hexPart); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("ca pin %q: want sha256:<64 hex digits>", pin)
	}
	return p, nil
}

// PinnedCA returns the certificate in caPEM whose key matches pin; it fails
// when none does, so an enrolling agent trusts nothing it was not told to.
func PinnedCA(caPEM []byte, pin string) (*x509.Certificate, error) {
	want, err := ParseCAPin(pin)
	if err != nil {
		return nil, err
	}
	for rest := caPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse ca certificate: %w", err)
		}
		if CAPin(c) == want && c.IsCA {
			return c, nil
		}
	}
	return nil, fmt.Errorf("no ca certificate matches the pin %s", want)
}

// NormalizeHost lower-cases a host FQDN, drops one trailing dot and checks
// it as host identities require (see IssueHost).
func NormalizeHost(fqdn string) (string, error) { return normalizeFQDN(fqdn) }

// oidSubjectAltName is the only extension a host CSR may request.
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// CheckHostCSR refuses a certificate request that asks for more than the
// host identity for fqdn: a subject other than empty or CN=fqdn, a SAN
// other than the DNS name fqdn, or any other requested extension. The CA
// would ignore these anyway (SignHostCSR issues only the host profile);
// refusing them tells the requester its CSR is not what it thinks.
func CheckHostCSR(csrDER []byte, fqdn string) error {
	name, err := normalizeFQDN(fqdn)
	if err != nil {
		return err
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return fmt.Errorf("parse request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("check request signature: %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return err
	}
	if cn := strings.ToLower(strings.TrimSuffix(csr.Subject.CommonName, ".")); cn != "" && cn != name {
		return fmt.Errorf("request names CN %q, not the host %s", csr.Subject.CommonName, name)
	}
	for _, d := range csr.DNSNames {
		if strings.ToLower(strings.TrimSuffix(d, ".")) != name {
			return fmt.Errorf("request names %q, not the host %s", d, name)
		}
	}
	if len(csr.IPAddresses)+len(csr.URIs)+len(csr.EmailAddresses) > 0 {
		return fmt.Errorf("request asks for IP, URI or e-mail names; a host identity is named by the controller")
	}
	for _, e := range csr.Extensions {
		if !e.Id.Equal(oidSubjectAltName) {
			return fmt.Errorf("request asks for extension %s; a host request may carry only its subject alternative name", e.Id)
		}
	}
	return nil
}

// NewHostCSR makes a new ECDSA P-256 key on this host and a certificate
// request for fqdn signed with it. The key never leaves the caller: only
// the request goes to the controller.
func NewHostCSR(fqdn string) (csrDER, keyPEMOut []byte, err error) {
	name, err := normalizeFQDN(fqdn)
	if err != nil {
		return nil, nil, err
	}
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cnFor(name)}, DNSNames: []string{name}}
	csrDER, err = x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate request for %s: %w", name, err)
	}
	if keyPEMOut, err = keyPEM(key); err != nil {
		return nil, nil, err
	}
	return csrDER, keyPEMOut, nil
}

func cnFor(name string) string {
	if len(name) > maxNameLen {
		return ""
	}
	return name
}

// EnrollTLSConfig is the TLS configuration of an agent enrolling with a
// join token: it has no client certificate and no CA file yet, only the CA
// pin from `token create`. It accepts the controller only if the chain the
// controller sends contains a CA whose key matches pin, the leaf verifies
// against that CA for serverName (the dialled host; empty means the
// dialer's), and the leaf carries the controller identity.
func EnrollTLSConfig(pin, serverName string) (*tls.Config, error) {
	want, err := ParseCAPin(pin)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: serverName}
	// The standard verification needs a CA we do not have yet; the pinned
	// one comes in the server's own chain and is checked here instead.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the server presented no certificate")
		}
		roots := x509.NewCertPool()
		found := false
		for _, c := range cs.PeerCertificates[1:] {
			if c.IsCA && CAPin(c) == want {
				roots.AddCert(c)
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%w %s", ErrNoPin, want)
		}
		opts := x509.VerifyOptions{Roots: roots, DNSName: cs.ServerName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("verify the server's certificate against the pinned CA: %w", err)
		}
		return RequireControllerIdentity(cs)
	}
	return cfg, nil
}

// ErrNoPin is what an enrolling client's handshake wraps when the
// controller's chain does not contain the pinned CA.
var ErrNoPin = errors.New("the server's certificate chain holds no CA matching the pin")
