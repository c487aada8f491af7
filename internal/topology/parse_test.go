package topology

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// header is the start of a valid document, for tests that break what follows.
const header = `apiVersion: s2strust/v1
kind: TrustTopology
name: contoso
sipDomains: {default: contoso.com}
`

const oneDeployment = header + `deployments:
  - name: exchange
    product: exchange
    version: "2019"
    autodiscoverFqdn: autodiscover.contoso.com
    hosts: [ex01.contoso.com]
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want string // Error() of the *Error
	}{
		{"unknown field in yaml", header + `deployments:
  - name: pool01
    product: lync
    foo: bar
`, `t.yaml:8:5: deployments[0].foo: unknown field "foo"; accepted: name, product, version, poolFqdn, autodiscoverFqdn, webAppUrl, metadataUrl, hosts, tokenIssuer, exchangeAutodiscoverUrl, removePartners, realm, confirmRealmChange`},
		{"unknown field in json", `{
  "apiVersion": "s2strust/v1",
  "kind": "TrustTopology",
  "name": "contoso",
  "sipDomains": {"default": "contoso.com", "extra": ["fabrikam.com"]},
  "deployments": []
}
`, `t.yaml:5:44: sipDomains.extra: unknown field "extra"; accepted: default, additional`},
		{"every unknown field at once", header + `realms: contoso.com
deployments:
  - name: pool01
    PoolFqdn: pool01.contoso.com
    tokenIssuer: {secret: oauth-2026, password: hunter2}
trusts:
  - {from: pool01, to: exchange, level: Full}
`, strings.Join([]string{
			`t.yaml:5:1: realms: unknown field "realms"; accepted: apiVersion, kind, name, sipDomains, realm, metadataNetworks, probeAccounts, deployments, trusts, certificateRules, rollout`,
			`t.yaml:8:5: deployments[0].PoolFqdn: unknown field "PoolFqdn"; did you mean "poolFqdn"? (field names are case-sensitive)`,
			`t.yaml:9:39: deployments[0].tokenIssuer.password: unknown field "password"; accepted: secret, thumbprint, existing`,
			`t.yaml:11:34: trusts[0].level: unknown field "level"; accepted: from, to, trustLevel, enabled, metadataUrl`,
		}, "\n")},
		{"too large", header + strings.Repeat("#", MaxDocumentSize-len(header)+1),
			`t.yaml: document is 1048577 bytes; the limit is 1048576 bytes (1 MiB)`},
		{"empty", ``, `t.yaml: document is empty; expected a TrustTopology (apiVersion: s2strust/v1, kind: TrustTopology, name, sipDomains, deployments, trusts)`},
		{"only comments", "# nothing yet\n---\n", `t.yaml: document is empty; expected a TrustTopology (apiVersion: s2strust/v1, kind: TrustTopology, name, sipDomains, deployments, trusts)`},
		{"null", "~\n", `t.yaml: document is empty (null); expected a TrustTopology mapping`},
		{"two documents", oneDeployment + "---\n" + oneDeployment, `t.yaml:12:1: found 2 YAML documents; a topology file holds exactly one`},
		{"not a mapping", "- apiVersion: s2strust/v1\n", `t.yaml:1:1: expected a mapping of apiVersion, kind, name, sipDomains, realm, metadataNetworks, probeAccounts, deployments, trusts, certificateRules, rollout, found a list`},
		{"syntax error", header + "deployments: [\n", `t.yaml:5:14: invalid YAML: sequence end token ']' not found`},
		{"duplicate field", oneDeployment + "    hosts: [ex02.contoso.com]\n", `t.yaml:11:5: invalid YAML: mapping key "hosts" already defined at [10:5]`},
		{"tab indentation", header + "deployments:\n\t- name: x\n", "t.yaml:6:1: invalid YAML: found character '\t' that cannot start any token"},
		{"wrong kinds", header + `deployments:
  - name: [pool01]
    version: 2015.0
    hosts: fe01.contoso.com
    tokenIssuer: oauth-2026
trusts:
  - {from: pool01, to: exchange, enabled: "yes"}
  - {from: pool01, to: sharepoint, enabled: yes}
`, strings.Join([]string{
			`t.yaml:6:11: deployments[0].name: expected a string, found a list`,
			`t.yaml:7:14: deployments[0].version: "2015.0": expected a string, found a number; write it in quotes ("2015.0") if it is meant as text`,
			`t.yaml:8:12: deployments[0].hosts: "fe01.contoso.com": expected a list, found a string`,
			`t.yaml:9:18: deployments[0].tokenIssuer: "oauth-2026": expected a mapping of secret, thumbprint, existing, found a string`,
			`t.yaml:11:43: trusts[0].enabled: "yes": expected true or false, found a string`,
			`t.yaml:12:45: trusts[1].enabled: "yes": expected true or false, found a string`,
		}, "\n")},
		{"rollout kinds", header + "rollout: {maxUnavailable: \"1\", canary: 1, waves: [{count: 2.5}]}\n", strings.Join([]string{
			`t.yaml:5:27: rollout.maxUnavailable: "1": expected a whole number, found a string`,
			`t.yaml:5:40: rollout.canary: "1": expected true or false, found a number`,
			`t.yaml:5:59: rollout.waves[0].count: "2.5": expected a whole number, found a number`,
		}, "\n")},
		{"numbers that would change", header + "realm: 0x1F\n", `t.yaml:5:8: realm: "0x1F": expected a string, found a number; write it in quotes ("0x1F") if it is meant as text`},
		{"anchors and aliases", header + `deployments:
  - &d {name: a, product: exchange, version: "2019", autodiscoverFqdn: a.contoso.com, hosts: [a.contoso.com]}
  - *d
`, strings.Join([]string{
			`t.yaml:6:5: deployments[0]: YAML anchors and aliases are not supported in a topology; write the value out`,
			`t.yaml:7:5: deployments[1]: YAML anchors and aliases are not supported in a topology; write the value out`,
		}, "\n")},
		{"tags", header + "trusts: !!seq []\n", `t.yaml:5:9: trusts: YAML tags are not supported in a topology; write a plain or quoted value`},
		{"complex key", header + "? a\n: b\n", `t.yaml:5:1: a complex key (?) is not supported here; keys are plain field names`},
		{"merge key", header + "<<: {kind: TrustTopology}\n", `t.yaml:5:1: a merge key (<<) is not supported here; keys are plain field names`},
		{"deep flow nesting", header + "trusts: " + strings.Repeat("[", 200000), `t.yaml:5:41: document nests [ ] and { } more than 32 levels deep`},
		{"deep block nesting", header + "trusts:\n  " + strings.Repeat("- ", 200000) + "x\n", `t.yaml:6:35: line nests more than 16 block entries (- or ?)`},
		{"too many keys", header + "k0: v\n" + func() string {
			var b strings.Builder
			for i := 1; i < 50000; i++ {
				fmt.Fprintf(&b, "k%d: v\n", i)
			}
			return b.String()
		}(), `t.yaml:101:1: mapping has more than 100 keys`},
		{"not utf-8", header + "name: caf\xe9\n", `t.yaml:5:10: document is not UTF-8 text (save it as UTF-8)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			top, err := Parse("t.yaml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("Parse succeeded (%+v); want error:\n%s", top, tc.want)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T) is not an *Error", err, err)
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n%s\nwant:\n%s", err, tc.want)
			}
		})
	}
}

// TestParseAccepts covers what people write that must parse the same.
func TestParseAccepts(t *testing.T) {
	want := mustCanonical(t, "contoso.yaml", readFile(t, "contoso.yaml"))
	variants := map[string][]byte{
		"json":                  readFile(t, "contoso.json"),
		"byte order mark":       append([]byte("\uFEFF"), readFile(t, "contoso.yaml")...),
		"windows line endings":  bytes.ReplaceAll(readFile(t, "contoso.yaml"), []byte("\n"), []byte("\r\n")),
		"unquoted version":      bytes.Replace(readFile(t, "contoso.yaml"), []byte(`version: "2015"`), []byte(`version: 2015`), 1),
		"explicit defaults":     bytes.Replace(readFile(t, "contoso.yaml"), []byte(`{from: exchange, to: pool01}`), []byte(`{from: exchange, to: pool01, trustLevel: full, enabled: true}`), 1),
		"null optional fields":  bytes.Replace(readFile(t, "contoso.yaml"), []byte("{name: exchange, "), []byte("{name: exchange, metadataUrl: null, tokenIssuer: ~, "), 1),
		"document start marker": append([]byte("---\n"), readFile(t, "contoso.yaml")...),
	}
	// The realm defaults to the default SIP domain, which is what contoso.yaml says.
	for name, doc := range variants {
		t.Run(name, func(t *testing.T) {
			if got := mustCanonical(t, name, doc); !bytes.Equal(got, want) {
				t.Errorf("canonical form:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func mustCanonical(t *testing.T, name string, doc []byte) []byte {
	t.Helper()
	top, err := Load(name, doc)
	if err != nil {
		t.Fatal(err)
	}
	c, err := top.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCanonicalRoundTrip loads the canonical JSON and YAML forms back.
func TestCanonicalRoundTrip(t *testing.T) {
	for _, file := range []string{"contoso.yaml", "contoso.json", "thumbprint.yaml"} {
		t.Run(file, func(t *testing.T) {
			top, err := Load(file, readFile(t, file))
			if err != nil {
				t.Fatal(err)
			}
			c, err := top.Canonical()
			if err != nil {
				t.Fatal(err)
			}
			y, err := top.YAML()
			if err != nil {
				t.Fatal(err)
			}
			if got := mustCanonical(t, "canonical.json", c); !bytes.Equal(got, c) {
				t.Errorf("canonical JSON does not survive Load:\n%s\nwant:\n%s", got, c)
			}
			if got := mustCanonical(t, "canonical.yaml", y); !bytes.Equal(got, c) {
				t.Errorf("canonical YAML does not load to the same topology:\n%s\nwant:\n%s", got, c)
			}
		})
	}
}

func TestCanonicalInvalid(t *testing.T) {
	top := contoso(t)
	top.Trusts[0].To = "nowhere"
	if _, err := top.Canonical(); err == nil || !strings.Contains(err.Error(), `trusts[0].to: "nowhere": no such deployment`) {
		t.Errorf("Canonical of an invalid topology: error %v", err)
	}
	if _, err := top.YAML(); err == nil {
		t.Error("YAML of an invalid topology succeeded")
	}
	if top.Trusts[0].TrustLevel != "" {
		t.Error("Canonical modified the topology")
	}
}

// TestYAMLRoundTripsAwkwardText checks that YAML quotes what it must: free
// text (the topology name) that YAML would otherwise read as something
// else. Values refused as hostile (backticks, line separators) are in
// TestInjectionMatrix instead.
func TestYAMLRoundTripsAwkwardText(t *testing.T) {
	awkward := []string{
		"null", "~", "true", "yes", "No", "2019", "0x1F", "1e5", "0o17", ".inf", "-.Inf", ".NaN", ".nan", "- a", "a: b", "#x", "a #b",
		"'q'", `"dq"`, " lead", "trail ", "[x]", "{x}", "&a", "*a", "!tag", "%x", "@x", "|", ">", "---", "...",
		"<<", "=", "?", ":", ",", "é", "日本", "a\u00a0b", "\\", "a\\nb", "\uFEFFbom",
	}
	for _, s := range awkward {
		top := contoso(t)
		top.Name = s
		if err := Validate(top); err != nil {
			t.Errorf("%q is not valid text: %v", s, err)
			continue
		}
		want, err := top.Canonical()
		if err != nil {
			t.Fatal(err)
		}
		y, err := top.YAML()
		if err != nil {
			t.Errorf("YAML with %q: %v", s, err)
			continue
		}
		again, err := Load("again.yaml", y)
		if err != nil {
			t.Errorf("Load of YAML with %q: %v\n%s", s, err, y)
			continue
		}
		if got, _ := again.Canonical(); !bytes.Equal(got, want) {
			t.Errorf("%q does not survive YAML: name %q", s, again.Name)
		}
	}
}

func TestErrorIsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString(header + "deployments:\n  - name: x\n    product: exchange\n    version: '2019'\n    autodiscoverFqdn: a.contoso.com\n    hosts:\n")
	for i := range 250 {
		fmt.Fprintf(&b, "      - host%d\n", i)
	}
	_, err := Load("t.yaml", []byte(b.String()))
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not an *Error", err)
	}
	if len(e.Violations) != MaxViolations+1 {
		t.Fatalf("%d violations, want %d", len(e.Violations), MaxViolations+1)
	}
	if got, want := e.Violations[0].String(), `deployments[0].hosts[0]: "host0": not a fully qualified domain name; accepted: a server's FQDN such as fe01.contoso.com`; got != want {
		t.Errorf("first violation %s, want %s", got, want)
	}
	if got, want := e.Violations[MaxViolations].String(), "and 150 more violations"; got != want {
		t.Errorf("last violation %s, want %s", got, want)
	}
}
