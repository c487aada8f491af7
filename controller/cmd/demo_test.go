package cmd

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/deploy/examples"
)

// TestDemoOnce runs `demo --once` as a newcomer would and checks what it
// prints: every host acked, Lync's partners in Get-CsPartnerApplication
// shape, the OAuth configuration, a passing trust report and the grpcurl
// command line.
func TestDemoOnce(t *testing.T) {
	var out, progress bytes.Buffer
	root := NewRoot(&out)
	root.SetErr(&progress)
	root.SetArgs([]string{"demo", "--once", "--dir", t.TempDir(), "--timeout", "90s"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("demo --once: %v\n%s", err, out.String())
	}
	got := out.String()
	// The wait shows its progress on standard error, a line per change
	// (not a terminal here), never on standard output.
	if !strings.HasSuffix(progress.String(), "5/5 hosts converged on revision 1\n") || strings.Contains(got, "hosts converged on revision") {
		t.Errorf("demo's progress on standard error:\n%s\nwant lines ending with 5/5 hosts converged, none on standard output", progress.String())
	}
	for _, host := range []string{"fe01.contoso.com", "fe02.contoso.com", "ex01.contoso.com", "ex02.contoso.com", "sp01.contoso.com"} {
		if !lineWith(got, host, "ack v") {
			t.Errorf("no acked row for %s", host)
		}
	}
	for _, want := range []string{
		"Identity                            : microsoft.exchange",
		"ApplicationIdentifier               : 00000002-0000-0ff1-ce00-000000000000",
		"Identity                            : microsoft.sharepoint",
		"ApplicationIdentifier               : 00000003-0000-0ff1-ce00-000000000000",
		"MetadataUrl                         : https://autodiscover.contoso.com/autodiscover/metadata/json/1",
		"ApplicationTrustLevel               : Full",
		"Enabled                             : True",
		"ServiceName             : 00000004-0000-0ff1-ce00-000000000000",
		"go tool grpcurl -cacert ",
		"every trust edge's probe passed",
		"Prometheus metrics: curl http://127.0.0.1:",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	edges := 0
	for _, l := range strings.Split(got, "\n") {
		if strings.Contains(l, " passed ") && strings.HasSuffix(strings.TrimSpace(l), " ok") {
			edges++
		}
	}
	if edges != 5 {
		t.Errorf("%d passing trust edges printed, want 5\n%s", edges, got)
	}
}

// TestDemoOnceFailsNamingTheHost runs the demo with a topology one of whose
// edges cannot work, and checks that it exits non-zero saying which and why.
func TestDemoOnceFailsNamingTheEdge(t *testing.T) {
	t.Parallel()
	doc := []byte(strings.Replace(string(examples.Contoso), "{from: sharepoint, to: pool01}",
		`{from: sharepoint, to: pool01, metadataUrl: "https://sp.contoso.com/not/metadata"}`, 1))
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := RunDemo(ctx, DemoConfig{Topology: doc, TopologyName: "broken.yaml", Dir: t.TempDir(), Listen: "127.0.0.1:0", Once: true, Timeout: 15 * time.Second, Out: &out})
	var ee *exitError
	if !errors.As(err, &ee) || ee.code == 0 {
		t.Fatalf("demo with a broken edge: %v, want a non-zero exit", err)
	}
	for _, want := range []string{"fe01.contoso.com", "partner/microsoft.sharepoint", "could not be downloaded", "404"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("failure %q does not mention %q", err.Error(), want)
		}
	}
}

func lineWith(text string, parts ...string) bool {
	for _, l := range strings.Split(text, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return true
		}
	}
	return false
}

// smallTopology is one Lync pool and one Exchange organization, with
// versions, names and a SIP domain unlike the contoso example's.
const smallTopology = `apiVersion: s2strust/v1
kind: TrustTopology
name: small
sipDomains: {default: example.org}
deployments:
  - {name: lync, product: lync, version: "2019", poolFqdn: pool.example.org, hosts: [fe1.example.org],
     tokenIssuer: {secret: issuer}}
  - {name: mail, product: exchange, version: "2016", autodiscoverFqdn: autodiscover.example.org, hosts: [mx1.example.org]}
trusts:
  - {from: mail, to: lync}
  - {from: lync, to: mail}
`

// TestDemoOnceOnAnyTopology runs `demo --once --topology F` on a topology
// of its own: a sim agent runs for each of its hosts, as its product and
// version, behind the HTTPS names of its deployments.
func TestDemoOnceOnAnyTopology(t *testing.T) {
	file := writeFile(t, "small.yaml", []byte(smallTopology))
	var out bytes.Buffer
	root := NewRoot(&out)
	root.SetArgs([]string{"demo", "--once", "--topology", file, "--dir", t.TempDir(), "--timeout", "60s"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("demo --once --topology %s: %v\n%s", file, err, out.String())
	}
	got := out.String()
	hostsTable := got[strings.Index(got, "HOST "):]
	rows := tableRows(t, hostsTable)
	want := map[string]string{"fe1.example.org": "lync 2019", "mx1.example.org": "exchange 2016"}
	if len(rows) != len(want) {
		t.Fatalf("hosts table has %d rows, want %d:\n%s", len(rows), len(want), got)
	}
	for _, r := range rows {
		if want[r["HOST"]] != r["PRODUCT"] || !strings.HasPrefix(r["LAST RESULT"], "ack v") || r["DRIFT"] != "-" {
			t.Errorf("host row %v, want %s acked as %q without drift", r, r["HOST"], want[r["HOST"]])
		}
	}
	for _, w := range []string{
		`applied topology "small"`,
		"Identity                            : microsoft.exchange",
		"AuthMetadataUrl       : https://pool.example.org/metadata/json/1",
		"own metadata (mail)  https://autodiscover.example.org/autodiscover/metadata/json/1  ok",
		"every trust edge's probe passed",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("demo output lacks %q:\n%s", w, got)
		}
	}
	if strings.Contains(got, "contoso") {
		t.Errorf("the demo of the small topology mentions contoso:\n%s", got)
	}
	if !lineWith(got, "lync", "mail", "1/1 passed", "ok") || !lineWith(got, "mail", "lync", "1/1 passed", "ok") {
		t.Errorf("the trust report lacks a passing row for each of the 2 edges:\n%s", got)
	}
}

// TestDemoTopologyFileErrors checks that a missing or invalid topology file
// is refused before anything starts, naming the file (and the field).
func TestDemoTopologyFileErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	invalid := writeFile(t, "invalid.yaml", []byte(strings.Replace(smallTopology, `version: "2016"`, `version: "2010"`, 1)))
	tests := []struct {
		file  string
		wants []string
	}{
		{missing, []string{"read topology file " + missing, "no such file"}},
		{invalid, []string{"demo topology", invalid, "deployments[1].version", "2010"}},
	}
	for _, tc := range tests {
		var out bytes.Buffer
		root := NewRoot(&out)
		root.SetErr(&out)
		root.SetArgs([]string{"demo", "--once", "--topology", tc.file, "--dir", t.TempDir()})
		err := root.ExecuteContext(t.Context())
		if err == nil {
			t.Fatalf("demo --topology %s succeeded:\n%s", tc.file, out.String())
		}
		for _, w := range tc.wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("demo --topology %s: error %q does not mention %q", tc.file, err, w)
			}
		}
		if strings.Contains(out.String(), "controller listening") {
			t.Errorf("demo --topology %s started a controller before refusing the file:\n%s", tc.file, out.String())
		}
	}
}

// TestDemoOnceWithTheDefaultCertificate runs the demo on the contoso
// example with the seed's Default-certificate path, tokenIssuer
// {existing: Default}: the pool's primary assigns its Default certificate
// (CN the pool) as the global OAuthTokenIssuer, every edge passes, and the
// plan shows the exact Set-CsCertificate with the Default's thumbprint.
func TestDemoOnceWithTheDefaultCertificate(t *testing.T) {
	doc := bytes.Replace(examples.Contoso, []byte("tokenIssuer: {secret: oauth-2026}"), []byte("tokenIssuer: {existing: Default}"), 1)
	if bytes.Equal(doc, examples.Contoso) {
		t.Fatal("the contoso example no longer names tokenIssuer: {secret: oauth-2026}")
	}
	file := writeFile(t, "contoso-default.yaml", doc)
	var out bytes.Buffer
	root := NewRoot(&out)
	root.SetArgs([]string{"demo", "--once", "--topology", file, "--dir", t.TempDir(), "--timeout", "90s"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("demo --once --topology %s: %v\n%s", file, err, out.String())
	}
	got := out.String()
	m := regexp.MustCompile(`Set-CsCertificate -Identity 'global' -Type OAuthTokenIssuer -Thumbprint '([0-9A-F]{40})'`).FindStringSubmatch(got)
	if m == nil {
		t.Fatalf("the demo's plans show no Set-CsCertificate of the Default certificate:\n%s", got)
	}
	// That thumbprint is the pool's issuer now: the trust report's rows
	// from pool01 name it, and every edge passed.
	if !strings.Contains(got, m[1]) || !strings.Contains(got, "every trust edge's probe passed") {
		t.Errorf("the issuer %s assigned is not the one the fleet trusts:\n%s", m[1], got)
	}
	if !lineWith(got, "pool01", "exchange", "passed", "ok") || !lineWith(got, "pool01", "sharepoint", "passed", "ok") {
		t.Errorf("pool01's edges do not pass with its Default certificate:\n%s", got)
	}
}
