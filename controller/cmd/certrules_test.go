package cmd

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/internal/certs"
)

// issuerFrom makes a token-issuer certificate from tmpl as a PFX file with
// its password file.
func issuerFrom(t *testing.T, password string, tmpl certs.Template) issuer {
	t.Helper()
	b, err := certs.Generate(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	pfx, err := certs.EncodePFX(b, password)
	if err != nil {
		t.Fatal(err)
	}
	return issuer{
		cert:       b.Cert,
		pfxFile:    writeFile(t, "issuer.pfx", pfx),
		pwFile:     writeFile(t, "issuer.pw", []byte(password)),
		password:   password,
		thumbprint: certs.Thumbprint(b.Cert),
		subj:       b.Cert.Subject.String(),
	}
}

// TestApplyCertificateRules is issue 6's acceptance for the certificate
// rules, against a real controller: an issuer certificate whose SAN lacks
// the additional SIP domain fabrikam.com is applied with a warning naming
// it; with certificateRules: strict it is refused naming it, and nothing is
// stored; a 1024-bit or an expired certificate is refused either way.
func TestApplyCertificateRules(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	now := time.Now()
	narrow := newIssuer(t, "narrow-Passw0rd", "contoso.com")
	mustRun(t, dir, "secret", "put", "contoso-only", "--pfx", narrow.pfxFile, "--password-file", narrow.pwFile)
	weak := issuerFrom(t, "weak-Passw0rd", certs.Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com", "fabrikam.com"},
		KeyBits: 1024, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0)})
	mustRun(t, dir, "secret", "put", "weak", "--pfx", weak.pfxFile, "--password-file", weak.pwFile)
	expired := issuerFrom(t, "expired-Passw0rd", certs.Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com", "fabrikam.com"},
		NotBefore: now.AddDate(-2, 0, 0), NotAfter: now.AddDate(0, 0, -3)})
	mustRun(t, dir, "secret", "put", "expired", "--pfx", expired.pfxFile, "--password-file", expired.pwFile)

	withSecret := func(t *testing.T, secret string, strict bool) string {
		edits := []string{"tokenIssuer: {secret: oauth-2026}", "tokenIssuer: {secret: " + secret + "}"}
		if strict {
			edits = append(edits, "apiVersion: s2strust/v1\n", "apiVersion: s2strust/v1\ncertificateRules: strict\n")
		}
		return contosoFile(t, edits...)
	}
	// The warning points at the tokenIssuer line and names the secret, the
	// certificate and the missing domain.
	line := 1 + strings.Count(strings.Split(string(mustRead(t, withSecret(t, "contoso-only", false))), "tokenIssuer: {secret: contoso-only}")[0], "\n")
	warning := regexp.MustCompile(`(?m)^warning: contoso\.yaml:` + strconv.Itoa(line) + `:\d+: deployments\[0\]\.tokenIssuer\.secret: "contoso-only": certificate ` +
		narrow.thumbprint + ` \(CN=contoso\.com\): SAN does not list fabrikam\.com, an additional SIP domain \(rule san-additional-domain\)$`)

	// A dry run shows the warning and stores nothing.
	out := mustRun(t, dir, "apply", "-f", withSecret(t, "contoso-only", false), "--dry-run")
	if !warning.MatchString(out) {
		t.Errorf("apply --dry-run printed no warning matching %s:\n%s", warning, out)
	}
	wantContains(t, "dry-run output", out, "dry run: nothing stored (current revision 0)\n")

	// Standard rules: applied, with the warning.
	out = mustRun(t, dir, "apply", "-f", withSecret(t, "contoso-only", false))
	if !warning.MatchString(out) {
		t.Errorf("apply printed no warning matching %s:\n%s", warning, out)
	}
	if strings.Count(out, "warning: ") != 1 {
		t.Errorf("apply printed other warnings than the SAN's:\n%s", out)
	}
	m := regexp.MustCompile(`(?m)^applied: revision \d+ \(version (\d+)\)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("apply with a warning printed no `applied: revision N`:\n%s", out)
	}
	rev := m[1]
	stored := mustRun(t, dir, "get", "topology", "-o", "json")

	refused := []struct {
		name, secret string
		strict       bool
		want         []string
	}{
		{"strict: SAN lacks fabrikam.com", "contoso-only", true, []string{narrow.thumbprint, "SAN does not list fabrikam.com", "certificateRules: strict makes this an error", "(rule san-additional-domain)"}},
		{"1024-bit", "weak", false, []string{weak.thumbprint, "RSA key is 1024 bits; at least 2048 are required (rule key-size)"}},
		{"1024-bit, strict", "weak", true, []string{weak.thumbprint, "RSA key is 1024 bits", "(rule key-size)"}},
		{"expired", "expired", false, []string{expired.thumbprint, "expired on", "(rule expired)"}},
		{"expired, strict", "expired", true, []string{expired.thumbprint, "expired on", "(rule expired)"}},
	}
	for _, tc := range refused {
		for _, dry := range []bool{false, true} {
			name := tc.name
			if dry {
				name += ", dry run"
			}
			t.Run(name, func(t *testing.T) {
				args := []string{"apply", "-f", withSecret(t, tc.secret, tc.strict)}
				if dry {
					args = append(args, "--dry-run")
				}
				out, err := mustFail(t, dir, args...)
				wantRPCError(t, err, append([]string{"InvalidArgument", `deployments[0].tokenIssuer.secret: "` + tc.secret + `"`}, tc.want...)...)
				if out != "" {
					t.Errorf("a refused apply printed %q, want nothing", out)
				}
				wantNotContains(t, "error", err.Error(), "Passw0rd")
				rows := tableRows(t, mustRun(t, dir, "get", "revisions"))
				if len(rows) != 1 || rows[0]["VERSION"] != rev {
					t.Errorf("after a refused apply, revisions are %v, want only %s", rows, rev)
				}
				if got := mustRun(t, dir, "get", "topology", "-o", "json"); got != stored {
					t.Errorf("a refused apply changed the stored topology:\n%s\nwas:\n%s", got, stored)
				}
			})
		}
	}
}

// TestSecretPutTooLarge: a PFX over the size limit is refused naming the
// limit and its size, before anything is sent, and nothing is stored.
func TestSecretPutTooLarge(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	pw := writeFile(t, "pw", []byte("pw"))
	for _, size := range []int{certs.MaxPFXSize + 1, 5 << 20} { // the second past gRPC's message limit
		_, err := mustFail(t, dir, "secret", "put", "big", "--pfx", writeFile(t, "big.pfx", make([]byte, size)), "--password-file", pw)
		wantContains(t, "error", err.Error(), "the file is "+strconv.Itoa(size)+" bytes, over the 1048576-byte limit of a PFX file")
	}
	if out := mustRun(t, dir, "secret", "list"); strings.Contains(out, "big") {
		t.Errorf("a refused upload is listed:\n%s", out)
	}
}

// TestPrintWarnings: warnings quote certificate subjects and secret names,
// which came from outside: control and bidi characters reach the terminal
// escaped.
func TestPrintWarnings(t *testing.T) {
	var b strings.Builder
	printWarnings(&b, []string{"certificate (CN=evil\x1b[2J\u202ecom): SAN does not list fabrikam.com", "second"})
	want := "warning: certificate (CN=evil\\x1b[2J\\u202ecom): SAN does not list fabrikam.com\nwarning: second\n"
	if b.String() != want {
		t.Errorf("printWarnings wrote %q, want %q", b.String(), want)
	}
}
