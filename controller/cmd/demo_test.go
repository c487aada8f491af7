package cmd

import (
	"bytes"
	"context"
	"errors"
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
	var out bytes.Buffer
	root := NewRoot(&out)
	root.SetArgs([]string{"demo", "--once", "--dir", t.TempDir(), "--timeout", "90s"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("demo --once: %v\n%s", err, out.String())
	}
	got := out.String()
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
