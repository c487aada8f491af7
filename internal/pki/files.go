package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/s2strust/s2strust/internal/atomicfile"
)

const (
	// DevCAName is the common name of the CA that EnsureDevPKI creates.
	DevCAName = "s2strust development CA"
	// DevAdminName is the admin identity that EnsureDevPKI creates.
	DevAdminName = "admin"

	devLeafLifetime = 5 * 365 * 24 * time.Hour
	// devRenewBefore is how long before expiry EnsureDevPKI reissues the
	// server certificate.
	devRenewBefore = 30 * 24 * time.Hour

	certMode = 0o644
	keyMode  = 0o600
)

// defaultServerNames are always in the dev server certificate so that a
// controller is reachable on loopback whatever it was told to listen on.
var defaultServerNames = []string{"localhost", "127.0.0.1", "::1"}

// Files names the files of a PKI directory.
type Files struct {
	Dir string
}

// CACert is <dir>/ca.crt, the trust anchor.
func (f Files) CACert() string { return filepath.Join(f.Dir, "ca.crt") }

// CAKey is <dir>/ca.key, the CA's private key (mode 0600).
func (f Files) CAKey() string { return filepath.Join(f.Dir, "ca.key") }

// AdminCert is <dir>/admin.crt, the certificate of the dev admin identity.
func (f Files) AdminCert() string { return filepath.Join(f.Dir, "admin.crt") }

// AdminKey is <dir>/admin.key (mode 0600).
func (f Files) AdminKey() string { return filepath.Join(f.Dir, "admin.key") }

// ServerCert is <dir>/server.crt, the controller's serving certificate.
func (f Files) ServerCert() string { return filepath.Join(f.Dir, "server.crt") }

// ServerKey is <dir>/server.key (mode 0600).
func (f Files) ServerKey() string { return filepath.Join(f.Dir, "server.key") }

// EnsureDevPKI makes dir hold a working development PKI and returns its CA.
//
// Without <dir>/ca.crt it creates dir (0700), a ten-year CA named
// DevCAName, an admin identity DevAdminName and a server certificate for
// serverNames plus localhost, 127.0.0.1 and ::1 (both five years). Keys are
// written 0600 and certificates 0644, each file atomically; ca.crt is
// written last, so a crash part way leaves no ca.crt and the next call
// starts over, replacing the orphaned files of the CA that never existed.
//
// With ca.crt present it loads the CA from ca.crt and ca.key and never
// rewrites them; it issues admin.crt/admin.key only if admin.crt is missing
// and never touches an existing one; and it reissues server.crt/server.key
// when they are missing, do not match, were not signed by the CA, are
// within 30 days of expiry, or do not cover every requested name (the new
// certificate covers exactly the requested names and the defaults), or
// name one that is no longer requested.
// Calling it again with the same arguments changes nothing.
//
// It takes no lock: only one process may call it on a directory at a time.
func EnsureDevPKI(dir string, serverNames []string, now time.Time) (*CA, Files, error) {
	files := Files{Dir: dir}
	if dir == "" {
		return nil, files, errors.New("ensure dev pki: empty directory")
	}
	names := append(append([]string(nil), serverNames...), defaultServerNames...)
	if _, _, err := parseServerNames(names); err != nil {
		return nil, files, fmt.Errorf("ensure dev pki in %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, files, fmt.Errorf("ensure dev pki: create directory: %w", err)
	}

	caPEM, err := os.ReadFile(files.CACert())
	if errors.Is(err, fs.ErrNotExist) {
		ca, err := createDevPKI(files, names, now)
		if err != nil {
			return nil, files, fmt.Errorf("ensure dev pki in %s: %w", dir, err)
		}
		return ca, files, nil
	}
	if err != nil {
		return nil, files, fmt.Errorf("ensure dev pki: %w", err)
	}
	keyPEM, err := os.ReadFile(files.CAKey())
	if err != nil {
		return nil, files, fmt.Errorf("ensure dev pki: %w", err)
	}
	ca, err := LoadCA(caPEM, keyPEM)
	if err != nil {
		return nil, files, fmt.Errorf("ensure dev pki in %s: %w", dir, err)
	}
	if _, err := os.Stat(files.AdminCert()); errors.Is(err, fs.ErrNotExist) {
		if err := writeDevAdmin(ca, files, now); err != nil {
			return nil, files, fmt.Errorf("ensure dev pki in %s: %w", dir, err)
		}
	} else if err != nil {
		return nil, files, fmt.Errorf("ensure dev pki: %w", err)
	}
	if reason := serverCertStale(ca, files, names, now); reason != "" {
		if err := writeDevServer(ca, files, names, now); err != nil {
			return nil, files, fmt.Errorf("ensure dev pki in %s: reissue server certificate (%s): %w", dir, reason, err)
		}
	}
	return ca, files, nil
}

func createDevPKI(files Files, serverNames []string, now time.Time) (*CA, error) {
	ca, err := NewCA(DevCAName, now)
	if err != nil {
		return nil, err
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(files.CAKey(), keyPEM, keyMode); err != nil {
		return nil, err
	}
	if err := writeDevAdmin(ca, files, now); err != nil {
		return nil, err
	}
	if err := writeDevServer(ca, files, serverNames, now); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(files.CACert(), ca.CertPEM(), certMode); err != nil {
		return nil, err
	}
	return ca, nil
}

// writeDevAdmin writes the key before the certificate, so that a
// certificate on disk always has its key beside it.
func writeDevAdmin(ca *CA, files Files, now time.Time) error {
	certPEM, keyPEM, err := ca.IssueAdmin(DevAdminName, now, devLeafLifetime)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(files.AdminKey(), keyPEM, keyMode); err != nil {
		return err
	}
	return atomicfile.Write(files.AdminCert(), certPEM, certMode)
}

func writeDevServer(ca *CA, files Files, names []string, now time.Time) error {
	certPEM, keyPEM, err := ca.IssueServer(names, now, devLeafLifetime)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(files.ServerKey(), keyPEM, keyMode); err != nil {
		return err
	}
	return atomicfile.Write(files.ServerCert(), certPEM, certMode)
}

// serverCertStale says why the server certificate on disk must be reissued,
// or returns "" when it can stay.
func serverCertStale(ca *CA, files Files, names []string, now time.Time) string {
	certPEM, err := os.ReadFile(files.ServerCert())
	if err != nil {
		return "read certificate: " + err.Error()
	}
	keyPEM, err := os.ReadFile(files.ServerKey())
	if err != nil {
		return "read key: " + err.Error()
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err.Error()
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return err.Error()
		}
	}
	if err := leaf.CheckSignatureFrom(ca.Cert); err != nil {
		return "not signed by the ca"
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter.Add(-devRenewBefore)) {
		return "expired or about to expire"
	}
	for _, n := range names {
		if err := leaf.VerifyHostname(strings.TrimSuffix(n, ".")); err != nil {
			return fmt.Sprintf("does not cover %s", n)
		}
	}
	// A name dropped from the list (a --tls-san removed) must stop being
	// served: the certificate names exactly what was asked for.
	dns, ips, _ := parseServerNames(names)
	want := make(map[string]bool)
	for _, d := range dns {
		want[d] = true
	}
	for _, ip := range ips {
		want[ip.String()] = true
	}
	for _, d := range leaf.DNSNames {
		if !want[d] {
			return fmt.Sprintf("names %s, no longer requested", d)
		}
	}
	for _, ip := range leaf.IPAddresses {
		if !want[ip.String()] {
			return fmt.Sprintf("names %s, no longer requested", ip)
		}
	}
	if id, err := IdentityFromCert(leaf); err != nil || id.Kind != KindServer {
		return "does not carry the controller identity"
	}
	return ""
}

// LoadDevCA loads the CA of a development PKI directory, or returns nil
// and no error when the directory has none (no ca.crt).
func LoadDevCA(dir string) (*CA, error) {
	files := Files{Dir: dir}
	caPEM, err := os.ReadFile(files.CACert())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load dev ca: %w", err)
	}
	keyPEM, err := os.ReadFile(files.CAKey())
	if err != nil {
		return nil, fmt.Errorf("load dev ca: %w", err)
	}
	ca, err := LoadCA(caPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load dev ca in %s: %w", dir, err)
	}
	return ca, nil
}

// InstallDevPKI makes dir hold a development PKI under the given CA, one
// that came from elsewhere (the CA that every replica shares through the
// store). It writes ca.key and ca.crt when they are missing or hold another
// CA (ca.crt last, as EnsureDevPKI does), reissues admin.crt when it is
// missing or was not signed by ca, and reissues the server certificate
// under the same rules as EnsureDevPKI. replaced reports whether another
// CA was on disk before, so the caller can say that identities it issued
// no longer verify.
func InstallDevPKI(dir string, ca *CA, serverNames []string, now time.Time) (files Files, replaced bool, err error) {
	files = Files{Dir: dir}
	if dir == "" {
		return files, false, errors.New("install dev pki: empty directory")
	}
	names := append(append([]string(nil), serverNames...), defaultServerNames...)
	if _, _, err := parseServerNames(names); err != nil {
		return files, false, fmt.Errorf("install dev pki in %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return files, false, fmt.Errorf("install dev pki: create directory: %w", err)
	}
	onDisk, err := os.ReadFile(files.CACert())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return files, false, fmt.Errorf("install dev pki: %w", err)
	}
	if string(onDisk) != string(ca.CertPEM()) {
		replaced = len(onDisk) > 0
		keyPEM, err := ca.KeyPEM()
		if err != nil {
			return files, false, fmt.Errorf("install dev pki in %s: %w", dir, err)
		}
		if err := atomicfile.Write(files.CAKey(), keyPEM, keyMode); err != nil {
			return files, false, fmt.Errorf("install dev pki in %s: %w", dir, err)
		}
		if err := atomicfile.Write(files.CACert(), ca.CertPEM(), certMode); err != nil {
			return files, false, fmt.Errorf("install dev pki in %s: %w", dir, err)
		}
	}
	if !signedBy(files.AdminCert(), ca) {
		if err := writeDevAdmin(ca, files, now); err != nil {
			return files, replaced, fmt.Errorf("install dev pki in %s: %w", dir, err)
		}
	}
	if reason := serverCertStale(ca, files, names, now); reason != "" {
		if err := writeDevServer(ca, files, names, now); err != nil {
			return files, replaced, fmt.Errorf("install dev pki in %s: reissue server certificate (%s): %w", dir, reason, err)
		}
	}
	return files, replaced, nil
}

// signedBy reports whether the PEM certificate in file was signed by ca.
func signedBy(file string, ca *CA) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return false
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return false
	}
	return c.CheckSignatureFrom(ca.Cert) == nil
}

// WriteIdentity writes an issued identity into dir (created 0700 if
// missing): <baseName>.key (0600), then <baseName>.crt and ca.crt (0644),
// each atomically. It checks first that the key matches the certificate and
// that the certificate was signed by a CA in caPEM, so a mixed-up set is
// never written. baseName is a plain file name without extension, and not
// "ca".
func WriteIdentity(dir, baseName string, certPEM, keyPEM, caPEM []byte) error {
	if baseName == "" || baseName == "." || baseName == ".." || baseName == "ca" ||
		strings.ContainsAny(baseName, `/\`) || filepath.Base(baseName) != baseName {
		return fmt.Errorf("write identity to %s: invalid base name %q", dir, baseName)
	}
	if err := checkIdentity(certPEM, keyPEM, caPEM); err != nil {
		return fmt.Errorf("write identity %s to %s: %w", baseName, dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write identity %s: create directory: %w", baseName, err)
	}
	writes := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{baseName + ".key", keyPEM, keyMode},
		{baseName + ".crt", certPEM, certMode},
		{"ca.crt", caPEM, certMode},
	}
	for _, w := range writes {
		if err := atomicfile.Write(filepath.Join(dir, w.name), w.data, w.perm); err != nil {
			return fmt.Errorf("write identity %s: %w", baseName, err)
		}
	}
	return nil
}

func checkIdentity(certPEM, keyPEM, caPEM []byte) error {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("load key pair: %w", err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return fmt.Errorf("parse certificate: %w", err)
		}
	}
	var cas int
	for rest := caPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		ca, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("parse ca certificate: %w", err)
		}
		cas++
		if leaf.CheckSignatureFrom(ca) == nil {
			return nil
		}
	}
	if cas == 0 {
		return errors.New("no ca certificate in ca pem")
	}
	return errors.New("certificate was not signed by the given ca")
}
