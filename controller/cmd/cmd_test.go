package cmd

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testLogger writes the controller's log to stderr only when -v.
func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startController runs a controller in-process on loopback with mTLS and
// its data in dir, and stops it when the test ends. The admin commands find
// it through dir's address file and development PKI, as they would find a
// real `s2s-controller serve --data-dir dir`.
func startController(t *testing.T, dir string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- app.Serve(ctx, app.ServeConfig{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger(),
			Ready: func(a string) { ready <- a }})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("controller did not start: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		<-done
		t.Fatal("controller did not start within 60s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller stopped with error: %v", err)
		}
	})
}

// run runs one s2s-controller command line against dataDir, as a user
// would, and returns what it printed.
func run(t *testing.T, dataDir string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	root := NewRoot(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"--data-dir", dataDir}, args...))
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// mustRun is run for a command that must succeed.
func mustRun(t *testing.T, dataDir string, args ...string) string {
	t.Helper()
	out, err := run(t, dataDir, args...)
	if err != nil {
		t.Fatalf("s2s-controller %s: %v\noutput:\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// mustFail is run for a command that must fail.
func mustFail(t *testing.T, dataDir string, args ...string) (string, error) {
	t.Helper()
	out, err := run(t, dataDir, args...)
	if err == nil {
		t.Fatalf("s2s-controller %s succeeded, want an error; output:\n%s", strings.Join(args, " "), out)
	}
	return out, err
}

func wantContains(t *testing.T, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%s does not contain %q:\n%s", what, w, got)
		}
	}
}

func wantNotContains(t *testing.T, what, got string, nots ...string) {
	t.Helper()
	for _, n := range nots {
		if strings.Contains(got, n) {
			t.Errorf("%s contains %q, which it must not:\n%s", what, n, got)
		}
	}
}

// wantRPCError checks that err came back from the controller as an
// exitError (exit code 1) whose text holds wants.
func wantRPCError(t *testing.T, err error, wants ...string) {
	t.Helper()
	var ee *exitError
	if !errors.As(err, &ee) {
		t.Errorf("error %q is a %T, want an *exitError from the RPC", err, err)
	} else if ee.code != 1 || ExitCode(err) != 1 {
		t.Errorf("exit code %d (ExitCode %d), want 1", ee.code, ExitCode(err))
	}
	wantContains(t, "error", err.Error(), wants...)
}

// writeFile writes data to name in a new temporary directory and returns
// its path.
func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// issuer is a token-issuer certificate as a PFX file with its password
// file.
type issuer struct {
	cert             *x509.Certificate
	pfxFile, pwFile  string
	password         string
	thumbprint, subj string
}

// newIssuer makes a token-issuer certificate for contoso.com with the
// given SANs, RSA 2048, valid from an hour ago for a year.
func newIssuer(t *testing.T, password string, dnsNames ...string) issuer {
	t.Helper()
	now := time.Now()
	b, err := certs.Generate(certs.Template{CommonName: "contoso.com", DNSNames: dnsNames, KeyBits: 2048,
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0)})
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
		pwFile:     writeFile(t, "issuer.pw", []byte(password+"\r\n")), // as Notepad saves it
		password:   password,
		thumbprint: certs.Thumbprint(b.Cert),
		subj:       b.Cert.Subject.String(),
	}
}

// contosoFile copies deploy/examples/contoso.yaml, after the replacements
// old → new (each of which must apply), to a temporary contoso.yaml.
func contosoFile(t *testing.T, oldNew ...string) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "deploy", "examples", "contoso.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	for i := 0; i+1 < len(oldNew); i += 2 {
		if !strings.Contains(s, oldNew[i]) {
			t.Fatalf("contoso.yaml no longer contains %q; update the test", oldNew[i])
		}
		s = strings.Replace(s, oldNew[i], oldNew[i+1], 1)
	}
	return writeFile(t, "contoso.yaml", []byte(s))
}

// tableRows splits a tabwriter table into its header and rows, each a map
// from column name to the cell, cut at the header's column positions.
func tableRows(t *testing.T, table string) []map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(table, "\n"), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatalf("no table header in:\n%s", table)
	}
	header := lines[0]
	type col struct {
		name  string
		start int
	}
	var cols []col
	for _, m := range regexp.MustCompile(`\S+( \S+)*`).FindAllStringIndex(header, -1) {
		cols = append(cols, col{header[m[0]:m[1]], m[0]})
	}
	var rows []map[string]string
	for _, l := range lines[1:] {
		if l == "" {
			break // the table ends at the first blank line
		}
		row := map[string]string{}
		for i, c := range cols {
			end := len(l)
			if i+1 < len(cols) {
				end = min(cols[i+1].start, len(l))
			}
			if c.start < end {
				row[c.name] = strings.TrimSpace(l[c.start:end])
			}
		}
		rows = append(rows, row)
	}
	return rows
}

// waitFor reruns a command until check accepts its output or the deadline
// passes; it never sleeps a fixed time to let something happen.
func waitFor(t *testing.T, what string, check func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := check()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last state:\n%s", what, state)
		}
		<-tick.C
	}
}

var contosoHosts = []string{"ex01.contoso.com", "ex02.contoso.com", "fe01.contoso.com", "fe02.contoso.com", "sp01.contoso.com"}

func TestSecretPutAndList(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	const password = "Corr3ct-horse-battery"
	iss := newIssuer(t, password, "contoso.com", "fabrikam.com")
	if iss.subj != "CN=contoso.com" {
		t.Fatalf("subject %q, want CN=contoso.com", iss.subj)
	}

	out := mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	want := fmt.Sprintf("stored secret oauth-2026 version 1: certificate %s (CN=contoso.com)\n", iss.thumbprint)
	if out != want {
		t.Errorf("first put printed %q, want %q", out, want)
	}
	out = mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	want = fmt.Sprintf("unchanged secret oauth-2026 version 1: certificate %s (CN=contoso.com)\n", iss.thumbprint)
	if out != want {
		t.Errorf("second put printed %q, want %q", out, want)
	}

	const wrong = "Wr0ng-horse-battery"
	wrongFile := writeFile(t, "wrong.pw", []byte(wrong+"\n"))
	out, err := mustFail(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", wrongFile)
	wantRPCError(t, err, "put secret oauth-2026", "InvalidArgument", "wrong password")
	wantNotContains(t, "error", err.Error(), wrong, password)
	wantNotContains(t, "output", out, wrong, password)
	if out != "" {
		t.Errorf("a refused put printed %q, want nothing", out)
	}

	// A certificate that is not the PFX's: the stored one must be untouched.
	out, err = mustFail(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pwFile, "--password-file", iss.pwFile)
	wantRPCError(t, err, "put secret oauth-2026", "InvalidArgument", "not a valid PFX file")
	wantNotContains(t, "error", err.Error(), password)

	other := newIssuer(t, "another-Passw0rd", "contoso.com")
	mustRun(t, dir, "secret", "put", "contoso-only", "--pfx", other.pfxFile, "--password-file", other.pwFile)

	out = mustRun(t, dir, "secret", "list")
	wantNotContains(t, "secret list", out, password, "another-Passw0rd", wrong)
	rows := tableRows(t, out)
	if len(rows) != 2 {
		t.Fatalf("secret list has %d rows, want 2:\n%s", len(rows), out)
	}
	wantRows := []map[string]string{
		{"NAME": "contoso-only", "THUMBPRINT": other.thumbprint, "SUBJECT": "CN=contoso.com", "SANS": "contoso.com",
			"NOT BEFORE": other.cert.NotBefore.UTC().Format("2006-01-02"), "NOT AFTER": other.cert.NotAfter.UTC().Format("2006-01-02")},
		{"NAME": "oauth-2026", "THUMBPRINT": iss.thumbprint, "SUBJECT": "CN=contoso.com", "SANS": "contoso.com,fabrikam.com",
			"NOT BEFORE": iss.cert.NotBefore.UTC().Format("2006-01-02"), "NOT AFTER": iss.cert.NotAfter.UTC().Format("2006-01-02")},
	}
	for i, w := range wantRows {
		for k, v := range w {
			if rows[i][k] != v {
				t.Errorf("secret list row %d column %s = %q, want %q\n%s", i, k, rows[i][k], v, out)
			}
		}
	}
}

func TestApplyGetStatus(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	file := contosoFile(t)

	// Nothing applied yet: get topology says so and how to fix it.
	_, err := mustFail(t, dir, "get", "topology")
	wantRPCError(t, err, "get topology: NotFound", "no topology has been applied yet", "s2s-controller apply -f FILE")

	out := mustRun(t, dir, "apply", "-f", file, "--dry-run")
	wantContains(t, "dry-run output", out,
		"fe01.contoso.com (pool01, lync):\n",
		"partner/microsoft.exchange",
		"5 of 5 hosts change\n",
		"dry run: nothing stored (current revision 0)\n")
	var fe01 []string
	inFE01 := false
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "fe01.contoso.com "):
			inFE01 = true
		case !strings.HasPrefix(l, "  "):
			inFE01 = false
		case inFE01:
			fe01 = append(fe01, l)
		}
	}
	if !containsLine(fe01, "partner/microsoft.exchange") || !containsLine(fe01, "partner/microsoft.sharepoint") {
		t.Errorf("fe01's plan lacks its partners Exchange and SharePoint: %q\nwhole plan:\n%s", fe01, out)
	}
	if out := mustRun(t, dir, "get", "revisions"); len(tableRows(t, out)) != 0 {
		t.Errorf("a dry run stored a revision:\n%s", out)
	}
	_, err = mustFail(t, dir, "get", "topology")
	wantRPCError(t, err, "NotFound")

	out = mustRun(t, dir, "apply", "-f", file)
	m := regexp.MustCompile(`(?m)^applied: revision \d+ \(version (\d+)\)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("apply printed no `applied: revision N (version V)`:\n%s", out)
	}
	rev := m[1]
	wantContains(t, "apply output", out, "fe01.contoso.com (pool01, lync):\n", "5 of 5 hosts change\n")

	out = mustRun(t, dir, "apply", "-f", file)
	wantContains(t, "second apply", out, "0 of 5 hosts change\n", "unchanged: revision 1 (version "+rev+") is already this topology\n")
	wantNotContains(t, "second apply", out, "applied:")

	out = mustRun(t, dir, "get", "topology", "-o", "yaml")
	wantContains(t, "topology yaml", out, "# revision 1 (version "+rev+"), applied ", "name: contoso\n", "pool01")
	if !strings.HasPrefix(out, "# revision 1 (version "+rev+"), applied ") {
		t.Errorf("topology yaml does not start with its revision comment:\n%s", out)
	}

	// The same revision by its number and by its version.
	for _, flag := range [][]string{{"--revision", "1"}, {"--version", rev}} {
		if got := mustRun(t, dir, append([]string{"get", "topology"}, flag...)...); got != out {
			t.Errorf("get topology %s:\n%s\nwant the current one:\n%s", flag, got, out)
		}
	}
	_, err = mustFail(t, dir, "get", "topology", "--revision", "7")
	wantContains(t, "error", err.Error(), "--revision 7: no such revision")

	out = mustRun(t, dir, "get", "topology", "-o", "json")
	var doc struct {
		Name        string `json:"name"`
		Deployments []struct {
			Name  string   `json:"name"`
			Hosts []string `json:"hosts"`
		} `json:"deployments"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("get topology -o json is not JSON: %v\n%s", err, out)
	}
	if doc.Name != "contoso" || len(doc.Deployments) != 3 || doc.Deployments[0].Name != "pool01" ||
		strings.Join(doc.Deployments[0].Hosts, ",") != "fe01.contoso.com,fe02.contoso.com" {
		t.Errorf("get topology -o json: %+v, want contoso with pool01 (fe01, fe02) first of 3 deployments\n%s", doc, out)
	}
	_, err = mustFail(t, dir, "get", "topology", "-o", "xml")
	wantContains(t, "error", err.Error(), `-o "xml": want yaml or json`)
	_, err = mustFail(t, dir, "get", "topology", "-o", "table")
	wantContains(t, "error", err.Error(), `-o "table": want yaml or json`)

	out = mustRun(t, dir, "get", "revisions")
	rows := tableRows(t, out)
	if len(rows) != 1 || rows[0]["VERSION"] != rev || rows[0]["NAME"] != "contoso" || !strings.Contains(rows[0]["APPLIED BY"], "admin") {
		t.Errorf("get revisions: want one revision %s of contoso applied by the admin:\n%s", rev, out)
	}

	// The controller learns of the new revision through its etcd watch, so
	// the hosts appear shortly after the apply returns.
	waitFor(t, "5 hosts at revision "+rev, func() (bool, string) {
		out, err := run(t, dir, "get", "hosts")
		if err != nil {
			return false, err.Error()
		}
		rows := tableRows(t, out)
		if len(rows) != 5 {
			return false, out
		}
		for _, r := range rows {
			if r["DESIRED"] != rev {
				return false, out
			}
		}
		return true, out
	})
	out = mustRun(t, dir, "get", "hosts")
	rows = tableRows(t, out)
	for i, r := range rows {
		if r["HOST"] != contosoHosts[i] || r["CONNECTED"] != "no" || r["APPLIED"] != "0" || r["LAST RESULT"] != "-" {
			t.Errorf("get hosts row %d: %v, want host %s, not connected, nothing applied", i, r, contosoHosts[i])
		}
	}
	wantProducts := map[string]string{"ex01.contoso.com": "exchange 2019", "fe01.contoso.com": "lync 2015", "sp01.contoso.com": "sharepoint 2019"}
	for _, r := range rows {
		if w, ok := wantProducts[r["HOST"]]; ok && r["PRODUCT"] != w {
			t.Errorf("get hosts: %s product %q, want %q", r["HOST"], r["PRODUCT"], w)
		}
	}

	out = mustRun(t, dir, "get", "hosts", "-o", "json")
	if !json.Valid([]byte(out)) {
		t.Fatalf("get hosts -o json is not JSON:\n%s", out)
	}
	var list pb.ListHostsResponse
	if err := protojson.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("get hosts -o json is not a ListHostsResponse: %v\n%s", err, out)
	}
	if len(list.GetHosts()) != 5 {
		t.Fatalf("get hosts -o json has %d hosts, want 5:\n%s", len(list.GetHosts()), out)
	}
	for i, h := range list.GetHosts() {
		if h.GetHost() != contosoHosts[i] || h.GetConnected() || strconv.FormatUint(h.GetDesiredVersion(), 10) != rev {
			t.Errorf("get hosts -o json host %d: %v, want %s not connected, desired %s", i, h, contosoHosts[i], rev)
		}
	}
	out = mustRun(t, dir, "get", "hosts", "-o", "yaml")
	if !strings.HasPrefix(out, "hosts:\n- host: ex01.contoso.com\n") || strings.Count(out, "\n- host: ") != 5 {
		t.Errorf("get hosts -o yaml does not list the 5 hosts:\n%s", out)
	}
	_, err = mustFail(t, dir, "get", "hosts", "-o", "xml")
	wantContains(t, "error", err.Error(), `-o "xml"`, "table, json or yaml")

	// No agent is connected: status says so first, names the hosts and
	// exits non-zero.
	out, err = mustFail(t, dir, "status")
	if ExitCode(err) != exitDisconnected || err.Error() != "disconnected: "+strings.Join(contosoHosts, ", ") {
		t.Errorf("status: exit %d, error %q; want %d naming every host disconnected", ExitCode(err), err, exitDisconnected)
	}
	if !strings.HasPrefix(out, "5 hosts: 0 converged, 0 pending, 0 NACK, 0 drift, 5 disconnected\ntrust edges: 0 ok, 5 failing\n\n") {
		t.Errorf("status does not start with its summary:\n%s", out)
	}
	_, hostsTable, _ := strings.Cut(out, "\n\n")
	hostsTable, _, _ = strings.Cut(hostsTable, "\n\n")
	if rows := tableRows(t, hostsTable); len(rows) != 5 || rows[0]["STATE"] != "disconnected" || rows[0]["REPORTED"] != "-" {
		t.Errorf("status has no 5-host table after the summary, each host disconnected:\n%s", out)
	}
	for _, h := range contosoHosts {
		re := regexp.MustCompile(`(?m)^=== ` + regexp.QuoteMeta(h) + ` \(.*\)\nno status report yet$`)
		if !re.MatchString(out) {
			t.Errorf("status has no `=== %s (…)` section saying no status report yet:\n%s", h, out)
		}
	}
	wantContains(t, "status", out, "=== fe01.contoso.com (pool01, ", "=== sp01.contoso.com (sharepoint, ")
}

func containsLine(lines []string, sub string) bool {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

// TestApplyRefused applies contoso.yaml, then documents that must be
// refused, and checks that each refusal names what is wrong and leaves the
// stored revision as it was.
func TestApplyRefused(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	narrow := newIssuer(t, "narrow-Passw0rd", "contoso.com")
	mustRun(t, dir, "secret", "put", "contoso-only", "--pfx", narrow.pfxFile, "--password-file", narrow.pwFile)

	out := mustRun(t, dir, "apply", "-f", contosoFile(t))
	m := regexp.MustCompile(`(?m)^applied: revision \d+ \(version (\d+)\)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("apply printed no `applied: revision N (version V)`:\n%s", out)
	}
	rev := m[1]
	stored := mustRun(t, dir, "get", "topology", "-o", "json")

	tests := []struct {
		name string
		// file is the topology to apply; args are added to `apply -f file`.
		file func(t *testing.T) string
		args []string
		want []string
	}{{
		name: "unknown field",
		file: func(t *testing.T) string {
			return contosoFile(t, "autodiscoverFqdn: autodiscover", "autoDiscoverFqdn: autodiscover")
		},
		want: []string{"InvalidArgument", "contoso.yaml:", "deployments[1]", `unknown field "autoDiscoverFqdn"`, `did you mean "autodiscoverFqdn"`},
	}, {
		name: "unsupported Exchange version",
		file: func(t *testing.T) string {
			return contosoFile(t, `product: exchange, version: "2019"`, `product: exchange, version: "2010"`)
		},
		want: []string{"InvalidArgument", "deployments[1].version", `"2010"`, "Exchange Server 2010", "ex01.contoso.com"},
	}, {
		// Every violation is reported, not just the first.
		name: "two violations",
		file: func(t *testing.T) string {
			return contosoFile(t, `product: exchange, version: "2019"`, `product: exchange, version: "2010"`,
				"{from: pool01, to: sharepoint}", "{from: pool01, to: nowhere}")
		},
		want: []string{"InvalidArgument", `deployments[1].version: "2010"`, `trusts[3].to: "nowhere": no such deployment`},
	}, {
		// Only a warning under standard rules: see TestApplyCertificateRules.
		name: "strict rules: token issuer without an additional SIP domain in its SAN",
		file: func(t *testing.T) string {
			return contosoFile(t, "tokenIssuer: {secret: oauth-2026}", "tokenIssuer: {secret: contoso-only}",
				"apiVersion: s2strust/v1\n", "apiVersion: s2strust/v1\ncertificateRules: strict\n")
		},
		want: []string{"InvalidArgument", "deployments[0].tokenIssuer.secret", `"contoso-only"`, narrow.thumbprint,
			"SAN does not list fabrikam.com", "(rule san-additional-domain)"},
	}, {
		name: "token issuer secret not uploaded",
		file: func(t *testing.T) string {
			return contosoFile(t, "tokenIssuer: {secret: oauth-2026}", "tokenIssuer: {secret: oauth-2027}")
		},
		want: []string{"InvalidArgument", "deployments[0].tokenIssuer.secret", `"oauth-2027"`, "no such secret", "s2s-controller secret put oauth-2027"},
	}, {
		name: "stale expected revision",
		file: func(t *testing.T) string {
			return contosoFile(t, "removePartners: [app]", "removePartners: [app, old]")
		},
		args: []string{"--expected-revision", "999"},
		want: []string{"FailedPrecondition", "expected revision 999"},
	}, {
		name: "stale expected revision on a dry run",
		file: func(t *testing.T) string {
			return contosoFile(t, "removePartners: [app]", "removePartners: [app, old]")
		},
		args: []string{"--expected-revision", "999", "--dry-run"},
		want: []string{"FailedPrecondition", "expected revision 999"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := tt.file(t)
			out, err := mustFail(t, dir, append([]string{"apply", "-f", file}, tt.args...)...)
			wantRPCError(t, err, append([]string{"apply " + file + ": "}, tt.want...)...)
			if out != "" {
				t.Errorf("a refused apply printed %q, want nothing", out)
			}
			wantNotContains(t, "error", err.Error(), "pfx-Passw0rd", "narrow-Passw0rd")

			rows := tableRows(t, mustRun(t, dir, "get", "revisions"))
			if len(rows) != 1 || rows[0]["VERSION"] != rev {
				t.Errorf("after a refused apply, revisions are %v, want only %s", rows, rev)
			}
			if got := mustRun(t, dir, "get", "topology", "-o", "json"); got != stored {
				t.Errorf("a refused apply changed the stored topology:\n%s\nwas:\n%s", got, stored)
			}
		})
	}

	// The right expected revision applies.
	out = mustRun(t, dir, "apply", "-f", contosoFile(t, "removePartners: [app]", "removePartners: [app, old]"), "--expected-revision", rev)
	if !regexp.MustCompile(`(?m)^applied: revision \d+ \(version \d+\)$`).MatchString(out) || strings.Contains(out, "(version "+rev+")\n") {
		t.Errorf("apply --expected-revision %s: want a new revision:\n%s", rev, out)
	}
	if rows := tableRows(t, mustRun(t, dir, "get", "revisions")); len(rows) != 2 {
		t.Errorf("after a second apply, %d revisions, want 2", len(rows))
	}
}

func TestCertsIssueAgent(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(t.TempDir(), "agents", "fe01")

	// Before the controller ever ran there is no CA to issue from.
	_, err := mustFail(t, dir, "certs", "issue-agent", "--host", "fe01.contoso.com", "--out", out)
	wantContains(t, "error", err.Error(), "development CA", "s2s-controller serve")
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed issue-agent created %s (stat: %v)", out, err)
	}

	// serve creates the development PKI with this function on first start.
	if _, _, err := pki.EnsureDevPKI(app.PKIDir(dir), []string{"127.0.0.1"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	printed := mustRun(t, dir, "certs", "issue-agent", "--host", "FE01.contoso.com", "--out", out)
	if want := "issued agent certificate for fe01.contoso.com into " + out + " (agent.crt, agent.key, ca.crt)\n"; printed != want {
		t.Errorf("issue-agent printed %q, want %q", printed, want)
	}

	cert := readCert(t, filepath.Join(out, "agent.crt"))
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://s2strust/host/fe01.contoso.com" {
		t.Errorf("agent.crt URI SANs %v, want spiffe://s2strust/host/fe01.contoso.com", cert.URIs)
	}
	ca := readCert(t, filepath.Join(out, "ca.crt"))
	dataCA := readCert(t, pki.Files{Dir: app.PKIDir(dir)}.CACert())
	if !ca.Equal(dataCA) {
		t.Error("ca.crt is not the data dir's CA")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("agent.crt does not verify as a client certificate under ca.crt: %v", err)
	}
	if d := time.Until(cert.NotAfter); d < 364*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("agent.crt expires in %s, want the default of a year", d)
	}

	for name, want := range map[string]os.FileMode{"agent.key": 0o600, "agent.crt": 0o644, "ca.crt": 0o644} {
		fi, err := os.Stat(filepath.Join(out, name))
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	if _, err := pki.LoadCA(mustRead(t, filepath.Join(out, "agent.crt")), mustRead(t, filepath.Join(out, "agent.key"))); err == nil {
		t.Error("agent.crt loads as a CA")
	}
	if _, err := pki.ClientTLSConfig(mustRead(t, filepath.Join(out, "agent.crt")), mustRead(t, filepath.Join(out, "agent.key")),
		mustRead(t, filepath.Join(out, "ca.crt")), "127.0.0.1"); err != nil {
		t.Errorf("agent.crt and agent.key do not make a client identity: %v", err)
	}

	_, err = mustFail(t, dir, "certs", "issue-agent", "--out", out)
	wantContains(t, "error", err.Error(), `"host" not set`)
	_, err = mustFail(t, dir, "certs", "issue-agent", "--host", "not a host name", "--out", filepath.Join(t.TempDir(), "bad"))
	wantContains(t, "error", err.Error(), "not a host name")
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readCert(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	block, rest := pem.Decode(mustRead(t, name))
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("%s is not one PEM certificate", name)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parse %s: %v", name, err)
	}
	return cert
}

// TestAdminWithoutController runs each admin command against a data dir no
// controller ever used: each must say how to start one or point at one.
func TestAdminWithoutController(t *testing.T) {
	dir := t.TempDir()
	file := contosoFile(t)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com")
	for _, args := range [][]string{
		{"apply", "-f", file},
		{"apply", "-f", file, "--dry-run"},
		{"get", "topology"},
		{"get", "hosts"},
		{"get", "revisions"},
		{"status"},
		{"status", "--trust"},
		{"secret", "list"},
		{"secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			out, err := mustFail(t, dir, args...)
			wantContains(t, "error", err.Error(), "find the controller", "s2s-controller serve --data-dir "+dir, "--controller")
			wantNotContains(t, "error", err.Error(), "pfx-Passw0rd")
			if out != "" {
				t.Errorf("printed %q, want nothing", out)
			}
		})
	}
}

// TestServeInsecureLoopbackOnly checks that plaintext serving refuses any
// address but loopback, at once and before it starts anything.
func TestServeInsecureLoopbackOnly(t *testing.T) {
	for _, listen := range []string{"0.0.0.0:0", "[::]:0", ":0", "192.0.2.1:0"} {
		t.Run(listen, func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			var out bytes.Buffer
			go func() {
				root := NewRoot(&out)
				root.SetArgs([]string{"--data-dir", dir, "serve", "--insecure", "--listen", listen})
				done <- root.ExecuteContext(ctx)
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				cancel()
				<-done
				t.Fatalf("serve --insecure --listen %s did not return within 10s; it must refuse at once", listen)
			}
			if err == nil {
				t.Fatalf("serve --insecure --listen %s returned no error", listen)
			}
			wantContains(t, "error", err.Error(), "--insecure", "loopback", listen)
			if _, err := os.Stat(app.AddrFile(dir)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused serve wrote %s (stat: %v)", app.AddrFile(dir), err)
			}
			if _, err := os.Stat(filepath.Join(dir, "etcd")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused serve started etcd in %s (stat: %v)", dir, err)
			}
		})
	}
}
