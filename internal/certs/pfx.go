package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// MaxPFXSize is the largest PFX file LoadPFX accepts. A token-issuer
// certificate with its key and a long chain takes a few kilobytes; anything
// near this size is not what an operator meant to upload.
const MaxPFXSize = 1 << 20

// Bundle is a certificate with its issuing chain and, when known, its private
// key.
type Bundle struct {
	// Cert is the end-entity certificate.
	Cert *x509.Certificate
	// Chain holds the other certificates that came with Cert (issuers,
	// possibly a root), in the order they came.
	Chain []*x509.Certificate
	// Key is Cert's private key, or nil when absent.
	Key crypto.PrivateKey
}

// Sentinel errors LoadPFX and EncodePFX wrap; test for them with errors.Is.
var (
	// ErrWrongPassword means the PFX password does not open the file.
	ErrWrongPassword = errors.New("wrong password")
	// ErrNoPrivateKey means the PFX holds certificates but no private key.
	ErrNoPrivateKey = errors.New("no private key")
	// ErrCorrupt means the data is not a PFX file this package can read:
	// damaged, truncated, too large, of an unsupported kind, or holding a key
	// that belongs to none of its certificates.
	ErrCorrupt = errors.New("not a valid PFX file")
)

// errLibNoKey is the text go-pkcs12's DecodeChain returns for a file that has
// certificates but no key bag; the library has no sentinel for it. The
// cert-only fixture made by OpenSSL keeps this dependency tested.
const errLibNoKey = "pkcs12: private key missing"

// LoadPFX decodes a PKCS#12 (PFX) file as Windows, OpenSSL or EncodePFX write
// it. The end-entity certificate is the one matching the private key, wherever
// it sits in the file (some Windows exports list the chain first); the others become
// the chain. Every error wraps exactly one of ErrWrongPassword,
// ErrNoPrivateKey or ErrCorrupt and never contains the password. Its work is
// bounded (MaxPFXSize, MaxPFXIterations); LoadPFXContext also stops at a
// deadline.
func LoadPFX(data []byte, password string) (*Bundle, error) {
	return LoadPFXContext(context.Background(), data, password)
}

// LoadPFXContext is LoadPFX under ctx: it checks ctx before each key
// derivation it runs itself and before handing the file to go-pkcs12, and
// then returns ctx's error (wrapped, with no sentinel). The library's own
// work cannot be interrupted, but it is bounded by MaxPFXIterations, which
// counts every derivation the file asks for, those inside encrypted safes
// included: about a second of CPU at most.
func LoadPFXContext(ctx context.Context, data []byte, password string) (*Bundle, error) {
	switch {
	case len(data) == 0:
		return nil, fmt.Errorf("decode PFX: %w: the file is empty", ErrCorrupt)
	case len(data) > MaxPFXSize:
		return nil, fmt.Errorf("decode PFX: %w: the file is %d bytes, over the %d-byte limit", ErrCorrupt, len(data), MaxPFXSize)
	}
	if err := checkDER(data); err != nil {
		return nil, fmt.Errorf("decode PFX: %w: %v", ErrCorrupt, err)
	}
	n := pfxIterations(data, MaxPFXIterations)
	if n > MaxPFXIterations {
		return nil, fmt.Errorf("decode PFX: %w: its key derivations ask for more than %d iterations in all; export it again with ordinary settings", ErrCorrupt, MaxPFXIterations)
	}
	if err := checkEncryptedSafes(ctx, data, password, MaxPFXIterations-n); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("decode PFX: %w", err)
	}
	key, first, rest, err := pkcs12.DecodeChain(data, password)
	if err != nil {
		return nil, classifyDecodeError(data, password, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("decode PFX: %w: unsupported private key type %T", ErrCorrupt, key)
	}
	all := append([]*x509.Certificate{first}, rest...)
	for i, c := range all {
		if publicKeysEqual(signer.Public(), c.PublicKey) {
			chain := make([]*x509.Certificate, 0, len(all)-1)
			chain = append(chain, all[:i]...)
			chain = append(chain, all[i+1:]...)
			return &Bundle{Cert: c, Chain: chain, Key: key}, nil
		}
	}
	return nil, fmt.Errorf("decode PFX: %w: its private key belongs to none of its %d certificates (first: %s)", ErrCorrupt, len(all), describe(first))
}

// checkDER explains, better than the ASN.1 decoder's error, data that is not
// one DER structure: the usual cases are PEM text, a truncated upload, or a
// .cer certificate.
func checkDER(data []byte) error {
	var v asn1.RawValue
	rest, err := asn1.Unmarshal(data, &v)
	switch {
	case bytes.HasPrefix(bytes.TrimSpace(data), []byte("-----BEGIN")):
		return errors.New("it is PEM text; a PFX file is binary (convert with openssl pkcs12 -export, or export from Windows as .pfx)")
	case err != nil || v.Class != asn1.ClassUniversal || v.Tag != asn1.TagSequence || !v.IsCompound:
		return errors.New("the data is not a DER-encoded PKCS#12 structure (truncated, or another format)")
	case len(rest) != 0:
		return fmt.Errorf("%d bytes of unexpected data follow the PKCS#12 structure", len(rest))
	}
	if _, err := x509.ParseCertificate(data); err == nil {
		return errors.New("it is a certificate (.cer) without its private key; export it from Windows as .pfx with the private key")
	}
	return nil
}

// classifyDecodeError maps a go-pkcs12 decoding error onto the package's
// sentinels.
func classifyDecodeError(data []byte, password string, err error) error {
	if errors.Is(err, pkcs12.ErrIncorrectPassword) {
		return fmt.Errorf("decode PFX: %w", ErrWrongPassword)
	}
	for _, r := range password {
		if r > 0xFFFF {
			// PKCS#12 passwords are UCS-2 strings: no file can have this one.
			return fmt.Errorf("decode PFX: %w: the password has a character outside the Basic Multilingual Plane, which no PFX password can contain", ErrWrongPassword)
		}
	}
	if password != "" && passwordOpens(data, "") {
		// Asked without decrypting a key bag: the empty password was never
		// checked against the bound (checkEncryptedSafes used password).
		return fmt.Errorf("decode PFX: %w: the file has no password", ErrWrongPassword)
	}
	// The password is checked (by the MAC) before any bag is read, so from
	// here on it was right. A Java-style trust store is a PFX of certificates
	// only; so is one exported from OpenSSL with -nokeys, which DecodeChain
	// reports with errLibNoKey.
	if certs, terr := pkcs12.DecodeTrustStore(data, password); terr == nil && len(certs) > 0 {
		return fmt.Errorf("decode PFX: %w: the file holds only %s; export the certificate again with its private key", ErrNoPrivateKey, countCerts(certs))
	}
	if err.Error() == errLibNoKey {
		return fmt.Errorf("decode PFX: %w: the file holds only certificates; export the certificate again with its private key", ErrNoPrivateKey)
	}
	return fmt.Errorf("decode PFX: %w: %v", ErrCorrupt, err)
}

func countCerts(certs []*x509.Certificate) string {
	if len(certs) == 1 {
		return "the certificate " + describe(certs[0])
	}
	return fmt.Sprintf("%d certificates, the first %s", len(certs), describe(certs[0]))
}

// EncodePFX writes b as a PKCS#12 file protected by password, with modern
// algorithms ([pkcs12.Modern]: PBES2 with AES-256-CBC and a SHA-256 MAC).
// OpenSSL 1.1.1 and later and Windows Server 2019 and later read it; Windows
// Server 2016 and older cannot, and report a wrong password. b must carry a
// private key that matches b.Cert.
func EncodePFX(b *Bundle, password string) ([]byte, error) {
	if b == nil || b.Cert == nil {
		return nil, errors.New("encode PFX: no certificate")
	}
	if b.Key == nil {
		return nil, fmt.Errorf("encode PFX for %s: %w", describe(b.Cert), ErrNoPrivateKey)
	}
	signer, ok := b.Key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("encode PFX for %s: unsupported private key type %T", describe(b.Cert), b.Key)
	}
	if !publicKeysEqual(signer.Public(), b.Cert.PublicKey) {
		return nil, fmt.Errorf("encode PFX for %s: the private key does not belong to the certificate", describe(b.Cert))
	}
	data, err := pkcs12.Modern.Encode(b.Key, b.Cert, b.Chain, password)
	if err != nil {
		return nil, fmt.Errorf("encode PFX for %s: %w", describe(b.Cert), err)
	}
	return data, nil
}

// publicKeysEqual reports whether a and b are the same public key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// describe names a certificate in messages: its thumbprint and subject.
func describe(cert *x509.Certificate) string {
	subject := cert.Subject.String()
	if subject == "" {
		subject = "no subject"
	}
	return fmt.Sprintf("%s (%s)", Thumbprint(cert), subject)
}
