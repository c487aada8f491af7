package topology

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// withRules is contoso.yaml with a certificateRules line (none when rules is empty).
func withRules(t *testing.T, rules string) []byte {
	t.Helper()
	doc := readFile(t, "contoso.yaml")
	if rules == "" {
		return doc
	}
	return append(append([]byte{}, doc...), []byte("certificateRules: "+rules+"\n")...)
}

func TestCertificateRules(t *testing.T) {
	tests := []struct {
		name, rules string
		want        string // the normalized value
		wantHost    string // HostConfig.certificate_rules
	}{
		{"absent", "", CertificateRulesStandard, ""},
		{"standard", "standard", CertificateRulesStandard, ""},
		{"strict", "strict", CertificateRulesStrict, CertificateRulesStrict},
		{"strict in capitals", "Strict", CertificateRulesStrict, CertificateRulesStrict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			top, err := Load("contoso.yaml", withRules(t, tc.rules))
			if err != nil {
				t.Fatal(err)
			}
			if top.CertificateRules != tc.want {
				t.Errorf("CertificateRules = %q; want %q", top.CertificateRules, tc.want)
			}
			c, err := top.Canonical()
			if err != nil {
				t.Fatal(err)
			}
			if want := `"certificateRules": "` + tc.want + `"`; !bytes.Contains(c, []byte(want)) {
				t.Errorf("canonical form lacks %s:\n%s", want, c)
			}
			y, err := top.YAML()
			if err != nil {
				t.Fatal(err)
			}
			if got := mustCanonical(t, "canonical.yaml", y); !bytes.Equal(got, c) {
				t.Errorf("canonical YAML loads to another topology:\n%s\nwant:\n%s", got, c)
			}
			cl := top.clone()
			if cl.CertificateRules != tc.want {
				t.Errorf("clone's CertificateRules = %q; want %q", cl.CertificateRules, tc.want)
			}
			cfgs, err := Compile(top)
			if err != nil {
				t.Fatal(err)
			}
			for _, cfg := range cfgs {
				if cfg.GetCertificateRules() != tc.wantHost {
					t.Errorf("host %s: certificate_rules = %q; want %q", cfg.GetHost(), cfg.GetCertificateRules(), tc.wantHost)
				}
			}
		})
	}
}

func TestCertificateRulesStrictChangesEveryHost(t *testing.T) {
	standard, strict := compileFile(t, "contoso.yaml"), mustCompile(t, withRules(t, "strict"))
	for _, hp := range Plan(standard, strict) {
		if len(hp.GetItems()) == 0 || !strings.Contains(hp.GetItems()[0].GetDetail(), "certificate rules (none) -> strict") {
			t.Errorf("plan for %s: %v; want a host update naming the certificate rules", hp.GetHost(), hp.GetItems())
		}
	}
}

func TestCertificateRulesRefused(t *testing.T) {
	_, err := Load("t.yaml", withRules(t, "lenient"))
	lines := bytes.Count(readFile(t, "contoso.yaml"), []byte("\n"))
	want := []string{`t.yaml:` + strconv.Itoa(lines+1) + `:19: certificateRules: "lenient": unknown certificate rules; accepted: standard (the default), strict`}
	if err == nil {
		t.Fatal("certificateRules: lenient accepted")
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Errorf("error:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

func mustCompile(t *testing.T, doc []byte) []*pb.HostConfig {
	t.Helper()
	top, err := Load("t.yaml", doc)
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := Compile(top)
	if err != nil {
		t.Fatal(err)
	}
	return cfgs
}
