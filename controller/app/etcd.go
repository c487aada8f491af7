package app

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EtcdClientConfig is how the controller authenticates to an external
// etcd cluster. The cluster should give the controller a user whose role
// grants read and write on the controller's key prefix only (README:
// "External etcd").
type EtcdClientConfig struct {
	// CA verifies the etcd servers' certificates (--etcd-ca).
	CA string
	// Cert and Key are the controller's etcd client certificate (--etcd-cert,
	// --etcd-key); both or neither.
	Cert, Key string
	// Username is the controller's etcd user (--etcd-username).
	Username string
	// PasswordFile holds that user's password (--etcd-password-file), so it
	// never appears in a process listing.
	PasswordFile string
}

func (c EtcdClientConfig) empty() bool { return c == EtcdClientConfig{} }

// apply validates c and sets the client's TLS and credentials. Every
// error names the flag at fault.
func (c EtcdClientConfig) apply(cfg *clientv3.Config) error {
	if (c.Cert == "") != (c.Key == "") {
		return errors.New("--etcd-cert and --etcd-key go together: give both or neither")
	}
	if c.CA != "" || c.Cert != "" {
		info := transport.TLSInfo{TrustedCAFile: c.CA, CertFile: c.Cert, KeyFile: c.Key}
		for flag, f := range map[string]string{"--etcd-ca": c.CA, "--etcd-cert": c.Cert, "--etcd-key": c.Key} {
			if f == "" {
				continue
			}
			if _, err := os.Stat(f); err != nil {
				return fmt.Errorf("%s %s: %w", flag, f, err)
			}
		}
		if c.CA != "" {
			b, err := os.ReadFile(c.CA)
			if err != nil {
				return fmt.Errorf("read --etcd-ca: %w", err)
			}
			// etcd's loader accepts a file without a certificate, and every
			// connection would then fail with an obscure TLS error.
			if !x509.NewCertPool().AppendCertsFromPEM(b) {
				return fmt.Errorf("--etcd-ca %s holds no PEM certificate", c.CA)
			}
		}
		tc, err := info.ClientConfig()
		if err != nil {
			return fmt.Errorf("etcd client TLS (--etcd-ca %q, --etcd-cert %q, --etcd-key %q): %w", c.CA, c.Cert, c.Key, err)
		}
		cfg.TLS = tc
	}
	if (c.Username == "") != (c.PasswordFile == "") {
		return errors.New("--etcd-username and --etcd-password-file go together: give both or neither")
	}
	if c.Username != "" {
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return fmt.Errorf("read --etcd-password-file: %w", err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return fmt.Errorf("--etcd-password-file %s is empty", c.PasswordFile)
		}
		cfg.Username, cfg.Password = c.Username, pw
	}
	return nil
}

// CredentialName is the systemd credential the controller looks for as
// its secret key (LoadCredential=secret.key:/path).
const CredentialName = "secret.key"

// SecretKeyPath is the key file the controller uses: flag when given;
// else the systemd credential when $CREDENTIALS_DIRECTORY holds one, so
// the key lives apart from the data it seals; else <dataDir>/secret.key.
func SecretKeyPath(flag, dataDir string, getenv func(string) string) string {
	if flag != "" {
		return flag
	}
	if d := getenv("CREDENTIALS_DIRECTORY"); d != "" {
		p := filepath.Join(d, CredentialName)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return filepath.Join(dataDir, "secret.key")
}
