package cmd

import (
	"encoding/json"
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
	wantRPCError(t, err, "Unauthenticated", "--cert is from another CA than the controller's")
	wantNotContains(t, "error", err.Error(), "is `s2s-controller serve` running")
}

// TestRolesAndTokens: a viewer can list hosts and cannot apply; only an
// admin makes join tokens, printed with the CA pin.
func TestRolesAndTokens(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	out := filepath.Join(t.TempDir(), "ids")
	got := mustRun(t, dir, "certs", "issue-admin", "--name", "alice", "--role", "viewer", "--out", out)
	wantContains(t, "issue-admin", got, "alice (role viewer)")
	for _, f := range []string{"alice.crt", "alice.key", "ca.crt"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := mustFail(t, dir, "certs", "issue-admin", "--name", "bob", "--role", "root", "--out", out); err == nil || !strings.Contains(err.Error(), `role "root"`) {
		t.Errorf("issue-admin --role root: %v, want an error naming the role", err)
	}
	viewer := []string{"--ca", filepath.Join(out, "ca.crt"), "--cert", filepath.Join(out, "alice.crt"), "--key", filepath.Join(out, "alice.key")}
	mustRun(t, dir, append([]string{"get", "hosts"}, viewer...)...)
	_, err := mustFail(t, dir, append([]string{"apply", "-f", contosoFile(t)}, viewer...)...)
	wantRPCError(t, err, "PermissionDenied", "needs the role admin", "admin/alice/viewer has the role viewer")
	_, err = mustFail(t, dir, append([]string{"token", "create", "--host", "fe01.contoso.com"}, viewer...)...)
	wantRPCError(t, err, "PermissionDenied", "needs the role admin")

	js := mustRun(t, dir, "token", "create", "--host", "fe01.contoso.com", "--ttl", "30m", "-o", "json")
	var tok struct {
		Token string `json:"token"`
		CAPin string `json:"caPin"`
		Host  string `json:"host"`
	}
	if err := json.Unmarshal([]byte(js), &tok); err != nil {
		t.Fatalf("token create -o json: %v\n%s", err, js)
	}
	ca, err := pki.LoadDevCA(app.PKIDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	if tok.Token == "" || tok.CAPin != pki.CAPin(ca.Cert) || tok.Host != "fe01.contoso.com" {
		t.Errorf("token create -o json = %s; want a token, the CA's pin %s and the host", js, pki.CAPin(ca.Cert))
	}
	text := mustRun(t, dir, "token", "create", "--host", "fe01.contoso.com")
	wantContains(t, "token create", text, "ca pin: "+pki.CAPin(ca.Cert), "s2s-agent enroll --controller ADDR --host fe01.contoso.com --token ")
	_, err = mustFail(t, dir, "token", "create", "--host", "fe01.contoso.com", "--ttl", "48h")
	wantRPCError(t, err, "InvalidArgument", "ttl")
}

// TestGetAudit: every change made here appears in `get audit` with its
// identity, and the apply's record was written at the revision it made.
func TestGetAudit(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	iss := newIssuer(t, "Corr3ct-horse-battery", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	applied := mustRun(t, dir, "apply", "-f", contosoFile(t))
	mustRun(t, dir, "token", "create", "--host", "fe01.contoso.com")
	out := filepath.Join(t.TempDir(), "ids")
	mustRun(t, dir, "certs", "issue-admin", "--name", "vera", "--role", "viewer", "--out", out)
	viewer := []string{"--ca", filepath.Join(out, "ca.crt"), "--cert", filepath.Join(out, "vera.crt"), "--key", filepath.Join(out, "vera.key")}
	mustFail(t, dir, append([]string{"secret", "put", "x", "--pfx", iss.pfxFile, "--password-file", iss.pwFile}, viewer...)...)

	var list struct {
		Records []struct {
			Kind, Who, What, Result, From string
			Revision                      string
		} `json:"records"`
	}
	js := mustRun(t, dir, "get", "audit", "-o", "json")
	if err := json.Unmarshal([]byte(js), &list); err != nil {
		t.Fatalf("get audit -o json: %v\n%s", err, js)
	}
	var rev string
	for _, line := range strings.Split(applied, "\n") {
		// "applied: revision 1 (version 4)": the audit record carries the
		// etcd revision of its transaction, the version.
		if _, v, ok := strings.Cut(line, "(version "); ok && strings.HasPrefix(line, "applied: revision ") {
			rev = strings.TrimSuffix(v, ")")
		}
	}
	want := []struct{ kind, who, what, result, rev string }{
		{"secret", "admin/admin", "put secret oauth-2026 version 1 (certificate " + iss.thumbprint, "ok", ""},
		{"topology", "admin/admin", "apply topology contoso", "ok", rev},
		{"token", "admin/admin", "create join token for fe01.contoso.com", "ok", ""},
		{"refused", "admin/vera/viewer", "call /s2strust.v1.SecretService/PutSecret", "refused: ", ""},
	}
	if len(list.Records) != len(want) {
		t.Fatalf("get audit lists %d records, want %d:\n%s", len(list.Records), len(want), js)
	}
	for i, w := range want {
		r := list.Records[i]
		if r.Kind != w.kind || r.Who != w.who || !strings.HasPrefix(r.What, w.what) || !strings.HasPrefix(r.Result, w.result) || r.From == "" {
			t.Errorf("record %d = %+v, want kind %s by %s, what %q…, result %q…, and an address", i, r, w.kind, w.who, w.what, w.result)
		}
		if w.rev != "" && r.Revision != w.rev {
			t.Errorf("record %d at revision %s, want the apply's revision %s (one transaction)", i, r.Revision, w.rev)
		}
	}
	if strings.Contains(js, iss.password) {
		t.Error("the audit trail holds the PFX password")
	}
	table := mustRun(t, dir, "get", "audit", "--who", "admin/vera/viewer")
	if rows := tableRows(t, table); len(rows) != 1 || rows[0]["KIND"] != "refused" {
		t.Errorf("get audit --who admin/vera/viewer:\n%s\nwant the one refusal", table)
	}
	// The refusal's result is longer than a table cell: cut there, whole in -o json.
	refusal := list.Records[len(list.Records)-1].Result
	if rows := tableRows(t, table); len(refusal) <= maxCell || len(rows) != 1 || !strings.HasSuffix(rows[0]["RESULT"], "…") ||
		!strings.HasPrefix(refusal, strings.TrimSuffix(rows[0]["RESULT"], "…")) || !strings.Contains(table, "-o json shows it whole") {
		t.Errorf("get audit: the refusal's result %q is not cut with a note:\n%s", refusal, table)
	}
	wantContains(t, "get audit -o json", js, refusal)
	if rows := tableRows(t, mustRun(t, dir, "get", "audit", "--since", "2099-01-01T00:00:00Z")); len(rows) != 0 {
		t.Errorf("get audit --since the future lists %d records", len(rows))
	}
	_, err := mustFail(t, dir, "get", "audit", "--since", "yesterday")
	wantContains(t, "error", err.Error(), `--since "yesterday"`)
}

func TestHostRevokeAndList(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	got := mustRun(t, dir, "host", "revoke", "FE01.contoso.com")
	wantContains(t, "host revoke", got, "revoked FE01.contoso.com at ")
	got = mustRun(t, dir, "host", "revoke", "fe01.contoso.com")
	wantContains(t, "host revoke again", got, "was already revoked")
	rows := tableRows(t, mustRun(t, dir, "host", "list"))
	if len(rows) != 1 || rows[0]["HOST"] != "fe01.contoso.com" || rows[0]["DEPLOYMENT"] != "(unassigned)" || rows[0]["REVOKED"] == "-" {
		t.Errorf("host list = %v, want fe01.contoso.com unassigned and revoked", rows)
	}
	_, err := mustFail(t, dir, "host", "revoke", "fe01")
	wantRPCError(t, err, "InvalidArgument", "fe01")
}
