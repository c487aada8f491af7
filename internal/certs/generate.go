package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"time"
)

// DefaultKeyBits is the RSA key size Generate uses when Template.KeyBits is
// zero: the minimum the Lync certificate rules accept.
const DefaultKeyBits = 2048

// Template describes a certificate for Generate. The zero value of every
// field is usable.
type Template struct {
	// CommonName is the subject CN; empty leaves the subject empty.
	CommonName string
	// DNSNames are the subject alternative names, exactly as given (Generate
	// does not add CommonName).
	DNSNames []string
	// IPAddresses are IP subject alternative names, for HTTPS endpoints
	// reached by address (simulated hosts on loopback).
	IPAddresses []net.IP
	// NotBefore defaults to one hour before now, to tolerate clock skew.
	NotBefore time.Time
	// NotAfter defaults to one year after NotBefore.
	NotAfter time.Time
	// KeyBits is the RSA key size; zero means DefaultKeyBits. Ignored when
	// ECDSA is set.
	KeyBits int
	// ECDSA makes a P-256 ECDSA key instead of RSA.
	ECDSA bool
	// NoServerAuth leaves serverAuth out of the extended key usage, which then
	// holds clientAuth only. By default an end-entity certificate gets both.
	NoServerAuth bool
	// Issuer signs the certificate; nil makes it self-signed. Issuer must
	// carry its private key.
	Issuer *Bundle
	// IsCA makes a CA certificate (basic constraints CA, key usage certSign
	// and cRLSign, no extended key usage so that it constrains nothing it
	// issues).
	IsCA bool
}

// Generate creates a key pair and a certificate for it as t describes. The
// returned Bundle's Chain is the issuer's certificate followed by the
// issuer's own chain.
func Generate(t Template) (*Bundle, error) {
	notBefore := t.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Hour)
	}
	notAfter := t.NotAfter
	if notAfter.IsZero() {
		notAfter = notBefore.AddDate(1, 0, 0)
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("generate certificate %q: NotAfter %s is not after NotBefore %s", t.CommonName, notAfter.Format(time.RFC3339), notBefore.Format(time.RFC3339))
	}

	var issuerSigner crypto.Signer
	var chain []*x509.Certificate
	if t.Issuer != nil {
		if t.Issuer.Cert == nil {
			return nil, fmt.Errorf("generate certificate %q: issuer has no certificate", t.CommonName)
		}
		s, ok := t.Issuer.Key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("generate certificate %q: issuer %s: %w", t.CommonName, describe(t.Issuer.Cert), errIssuerKey(t.Issuer.Key))
		}
		issuerSigner = s
		chain = append([]*x509.Certificate{t.Issuer.Cert}, t.Issuer.Chain...)
	}

	var key crypto.Signer
	var err error
	keyUsage := x509.KeyUsageDigitalSignature
	if t.ECDSA {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	} else {
		bits := t.KeyBits
		if bits == 0 {
			bits = DefaultKeyBits
		}
		key, err = rsa.GenerateKey(rand.Reader, bits)
		keyUsage |= x509.KeyUsageKeyEncipherment
	}
	if err != nil {
		return nil, fmt.Errorf("generate certificate %q: create key: %w", t.CommonName, err)
	}

	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate certificate %q: serial number: %w", t.CommonName, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: t.CommonName},
		DNSNames:              t.DNSNames,
		IPAddresses:           t.IPAddresses,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              keyUsage,
		BasicConstraintsValid: true,
	}
	if t.IsCA {
		tmpl.IsCA = true
		tmpl.KeyUsage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if !t.NoServerAuth {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		}
	}

	parent, signer := tmpl, key
	if issuerSigner != nil {
		parent, signer = t.Issuer.Cert, issuerSigner
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("generate certificate %q: %w", t.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("generate certificate %q: parse the result: %w", t.CommonName, err)
	}
	return &Bundle{Cert: cert, Chain: chain, Key: key}, nil
}

func errIssuerKey(k crypto.PrivateKey) error {
	if k == nil {
		return ErrNoPrivateKey
	}
	return fmt.Errorf("unsupported private key type %T", k)
}
