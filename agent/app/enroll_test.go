package app

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/s2strust/s2strust/internal/pki"
)

// TestEnrolledFiles: the identity in the state dir is used when no files
// are given, or when it is a later certificate for the same host than the
// given one (a renewal); never another host's.
func TestEnrolledFiles(t *testing.T) {
	now := time.Now()
	ca, err := pki.NewCA("test CA", now)
	if err != nil {
		t.Fatal(err)
	}
	write := func(dir, host string, ttl time.Duration) string {
		t.Helper()
		cert, key, err := ca.IssueHost(host, now, ttl)
		if err != nil {
			t.Fatal(err)
		}
		if err := storeIdentity(dir, cert, key, ca.CertPEM()); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(IdentityDir(dir), "agent.crt")
	}
	given := t.TempDir()
	givenCert := write(given, "fe01.contoso.com", time.Hour)
	flags := func(stateDir string) Config {
		d := IdentityDir(given)
		return Config{StateDir: stateDir, CA: filepath.Join(d, "ca.crt"), Cert: givenCert, Key: filepath.Join(d, "agent.key")}
	}

	if _, _, _, ok := enrolledFiles(Config{StateDir: t.TempDir()}); ok {
		t.Error("an empty state dir offered an identity")
	}
	renewed := t.TempDir()
	renewedCert := write(renewed, "fe01.contoso.com", 2*time.Hour)
	if _, cert, _, ok := enrolledFiles(Config{StateDir: renewed}); !ok || cert != renewedCert {
		t.Errorf("no flags: %q, %v; want the state dir's identity", cert, ok)
	}
	if _, cert, _, ok := enrolledFiles(flags(renewed)); !ok || cert != renewedCert {
		t.Errorf("a renewal of --cert: %q, %v; want the renewed identity", cert, ok)
	}
	older := t.TempDir()
	write(older, "fe01.contoso.com", 30*time.Minute)
	if _, cert, _, ok := enrolledFiles(flags(older)); ok {
		t.Errorf("an older certificate than --cert was preferred: %q", cert)
	}
	other := t.TempDir()
	write(other, "fe02.contoso.com", 2*time.Hour)
	if _, cert, _, ok := enrolledFiles(flags(other)); ok {
		t.Errorf("another host's identity was preferred over --cert: %q", cert)
	}
}
