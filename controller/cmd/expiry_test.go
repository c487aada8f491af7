package cmd

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/internal/certs"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestExpiryWarnings: status and status --trust warn of token-issuer
// certificates that expire within 30 and 60 days, Lync's known from its
// secret before any host reported, Exchange's from its hosts' reports.
func TestExpiryWarnings(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	now := time.Now()
	b, err := certs.Generate(certs.Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com", "fabrikam.com"}, KeyBits: 2048,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(20 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	pfx, err := certs.EncodePFX(b, "expiring-Passw0rd")
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", writeFile(t, "i.pfx", pfx), "--password-file", writeFile(t, "i.pw", []byte("expiring-Passw0rd")))
	mustRun(t, dir, "apply", "-f", contosoFile(t))

	ex, err := certs.Generate(certs.Template{CommonName: "Microsoft Exchange Server Auth Certificate", NotBefore: now.Add(-time.Hour), NotAfter: now.Add(50 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	reportAs(t, dir, "ex01.contoso.com", &pb.StatusReport{IssuerCertificate: certs.Info(ex.Cert, true)})

	lync := "warning: pool01's OAuthTokenIssuer certificate " + certs.Thumbprint(b.Cert) + " expires in 20 days"
	exchange := "warning: exchange's auth certificate " + certs.Thumbprint(ex.Cert) + " expires in 50 days"
	waitFor(t, "both expiry warnings in status", func() (bool, string) {
		out, err := run(t, dir, "status") // exits non-zero: no agent is connected
		if ExitCode(err) != exitDisconnected {
			return false, fmt.Sprintf("%v\n%s", err, out)
		}
		return strings.Contains(out, lync) && strings.Contains(out, "within 30 days: rotate it now") &&
			strings.Contains(out, exchange) && strings.Contains(out, "within 60 days: plan its rotation"), out
	})
	out, _ := run(t, dir, "status", "--trust") // exits non-zero: no edge works without agents
	wantContains(t, "status --trust", out, lync, exchange)
	wantNotContains(t, "status --trust", out, "warning: sharepoint")
}
