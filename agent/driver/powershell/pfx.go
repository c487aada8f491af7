package powershell

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/s2strust/s2strust/internal/certs"
)

// pbes2MinBuild is the first Windows build that imports PKCS#12 files
// encrypted with PBES2 AES256-SHA256: Windows 10 1709 (build 16299);
// Windows Server 2019 is build 17763. Windows Server 2016 (build 14393)
// and older import only the legacy 3DES-SHA1 encryption, and report a
// wrong password for anything else.
// https://learn.microsoft.com/windows/win32/api/wincrypt/ns-wincrypt-pkcs12_pbes2_export_params
const pbes2MinBuild = 16299

// PFXEncoding names the PKCS#12 encryption chosen for a host.
type PFXEncoding string

// The two encodings the driver writes.
const (
	PFXLegacy3DES PFXEncoding = "3DES-SHA1"
	PFXModernAES  PFXEncoding = "AES256-SHA256"
)

// EncodingForWindows returns the encryption that Windows osVersion
// ([System.Environment]::OSVersion.Version, e.g. "10.0.14393.0") can
// import. An unparsable version is an error rather than a guess: a wrong
// guess fails the import with a misleading "wrong password".
func EncodingForWindows(osVersion string) (PFXEncoding, error) {
	parts := strings.Split(strings.TrimSpace(osVersion), ".")
	if len(parts) < 3 {
		return "", fmt.Errorf("windows version %q: want MAJOR.MINOR.BUILD", osVersion)
	}
	var n [3]int
	for i := range n {
		v, err := strconv.Atoi(parts[i])
		if err != nil || v < 0 {
			return "", fmt.Errorf("windows version %q: want MAJOR.MINOR.BUILD", osVersion)
		}
		n[i] = v
	}
	if n[0] > 10 || (n[0] == 10 && n[2] >= pbes2MinBuild) {
		return PFXModernAES, nil
	}
	return PFXLegacy3DES, nil
}

// EncodeForWindows writes b as a PKCS#12 file that Windows osVersion can
// import, under password.
func EncodeForWindows(b *certs.Bundle, osVersion, password string) ([]byte, PFXEncoding, error) {
	enc, err := EncodingForWindows(osVersion)
	if err != nil {
		return nil, "", err
	}
	if b == nil || b.Cert == nil || b.Key == nil {
		return nil, "", errors.New("encode the key file: no certificate with a private key")
	}
	e := pkcs12.Modern2023
	if enc == PFXLegacy3DES {
		e = pkcs12.LegacyDES
	}
	data, err := e.Encode(b.Key, b.Cert, b.Chain, password)
	if err != nil {
		return nil, "", fmt.Errorf("encode the key file (%s) for certificate %s: %w", enc, certs.Thumbprint(b.Cert), err)
	}
	return data, enc, nil
}

// keyFile is a PFX written for one import: readable by the agent's own
// account alone, under a one-time password, removed by Remove whatever
// happened (the script removes it too, in its finally block).
type keyFile struct {
	Path     string
	Password string
	// Thumbprint is the certificate's.
	Thumbprint string
}

// writeKeyFile re-encodes b for the host's Windows under a fresh random
// password and writes it into dir.
func writeKeyFile(dir string, b *certs.Bundle, osVersion string) (*keyFile, error) {
	pw := make([]byte, 32)
	if _, err := rand.Read(pw); err != nil {
		return nil, err
	}
	password := base64.RawURLEncoding.EncodeToString(pw)
	data, _, err := EncodeForWindows(b, osVersion, password)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create key directory %s: %w", dir, err)
	}
	name := make([]byte, 12)
	if _, err := rand.Read(name); err != nil {
		return nil, err
	}
	p := filepath.Join(dir, "import-"+base64.RawURLEncoding.EncodeToString(name)+".pfx")
	if err := writeOwnerOnly(p, data); err != nil {
		os.Remove(p)
		return nil, fmt.Errorf("write key file %s: %w", p, err)
	}
	return &keyFile{Path: p, Password: password, Thumbprint: certs.Thumbprint(b.Cert)}, nil
}

// Remove deletes the key file; a file already gone is fine.
func (k *keyFile) Remove() error {
	if err := os.Remove(k.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove key file %s: %w", k.Path, err)
	}
	return nil
}

// removeStaleKeyFiles deletes key files an agent killed mid-import left.
func removeStaleKeyFiles(dir string) {
	matches, _ := filepath.Glob(filepath.Join(dir, "import-*.pfx"))
	for _, m := range matches {
		os.Remove(m)
	}
}
