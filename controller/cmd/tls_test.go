package cmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/internal/pki"
)

// TestAdminTLSErrors: a TLS failure is reported as what it is, never as
// "is serve running?".
func TestAdminTLSErrors(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	addrB, err := os.ReadFile(app.AddrFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimSpace(string(addrB))
	other, err := pki.NewCA("another CA", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	otherCA := writeFile(t, "other-ca.crt", other.CertPEM())
	_, err = mustFail(t, dir, "get", "hosts", "--ca", otherCA)
	host, _, _ := strings.Cut(addr, ":")
	wantRPCError(t, err, "list hosts: tls handshake with "+host+": the controller's certificate was not issued by the trusted CA")
	wantNotContains(t, "error", err.Error(), "is `s2s-controller serve` running")

	// An admin certificate from another CA: the controller refuses it.
	cert, key, err := other.IssueAdmin("mallory", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile := writeFile(t, "mallory.crt", cert)
	keyFile := filepath.Join(filepath.Dir(certFile), "mallory.key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = mustFail(t, dir, "get", "hosts", "--cert", certFile, "--key", keyFile)
	wantRPCError(t, err, "refused this client's certificate")
	wantNotContains(t, "error", err.Error(), "is `s2s-controller serve` running")
}
