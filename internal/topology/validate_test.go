package topology

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// contoso parses the SPEC's example topology without validating it.
func contoso(t testing.TB) *Topology {
	t.Helper()
	top, err := Parse("contoso.yaml", readFile(t, "contoso.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return top
}

// violations returns err's violations as strings, failing unless err is an *Error.
func violations(t *testing.T, err error) []string {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *Error", err, err)
	}
	var out []string
	for _, v := range e.Violations {
		out = append(out, v.String())
	}
	return out
}

func checkViolations(t *testing.T, err error, want []string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("unexpected error:\n%v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error; want:\n%s", strings.Join(want, "\n"))
	}
	got := violations(t, err)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestValidate(t *testing.T) {
	const (
		lync       = 0
		exchange   = 1
		sharepoint = 2
	)
	no := false
	tests := []struct {
		name string
		edit func(*Topology)
		want []string
	}{
		{"valid", func(*Topology) {}, nil},

		// The document header.
		{"api version", func(t *Topology) { t.APIVersion = "s2strust/v2" },
			[]string{`apiVersion: "s2strust/v2": unsupported API version; accepted: s2strust/v1`}},
		{"no api version", func(t *Topology) { t.APIVersion = "" },
			[]string{`apiVersion: missing; accepted: s2strust/v1`}},
		{"kind", func(t *Topology) { t.Kind = "Topology" },
			[]string{`kind: "Topology": unsupported kind; accepted: TrustTopology`}},
		{"no name", func(t *Topology) { t.Name = " " },
			[]string{`name: " ": missing; name the topology, e.g. contoso`}},
		{"name with control character", func(t *Topology) { t.Name = "con\ntoso" },
			[]string{`name: "con\ntoso": has control characters (U+000A); accepted: printable text without them`}},

		// SIP domains and realm.
		{"no default sip domain", func(t *Topology) { t.SIPDomains.Default = ""; t.Realm = "contoso.com" },
			[]string{`sipDomains.default: missing; give the default SIP domain, e.g. contoso.com`}},
		{"default sip domain not a domain", func(t *Topology) { t.SIPDomains.Default = "contoso" },
			[]string{`sipDomains.default: "contoso": not a valid domain name; accepted: a DNS domain such as contoso.com`}},
		{"default sip domain is an address", func(t *Topology) { t.SIPDomains.Default = "10.0.0.1" },
			[]string{`sipDomains.default: "10.0.0.1": not a valid domain name; accepted: a DNS domain such as contoso.com`}},
		{"additional sip domains", func(t *Topology) {
			t.SIPDomains.Additional = []string{"fabrikam.com", "Fabrikam.com", "contoso.com", "bad_domain.com"}
		}, []string{
			`sipDomains.additional[1]: "fabrikam.com": listed twice (also sipDomains.additional[0])`,
			`sipDomains.additional[2]: "contoso.com": is the default SIP domain; list only the other SIP domains here`,
			`sipDomains.additional[3]: "bad_domain.com": not a valid domain name; accepted: a DNS domain such as fabrikam.com`,
		}},
		{"realm with a space", func(t *Topology) { t.Realm = "contoso com" },
			[]string{`realm: "contoso com": not a realm; accepted: a DNS name such as contoso.com, or a GUID such as a SharePoint farm id`}},

		// Deployments.
		{"no deployments", func(t *Topology) { t.Deployments = nil; t.Trusts = nil },
			[]string{`deployments: missing; a topology declares at least one deployment (a lync pool, an exchange organization or a sharepoint farm)`}},
		{"deployment without name", func(t *Topology) { t.Deployments[sharepoint].Name = ""; t.Trusts = []Trust{t.Trusts[0], t.Trusts[2]} },
			[]string{`deployments[2].name: missing; name the deployment, e.g. pool01`}},
		{"deployment name not a label", func(t *Topology) {
			t.Deployments[lync].Name = "Pool_01"
			t.Trusts = t.Trusts[4:]
			t.Deployments[lync].RemovePartners = nil
		}, []string{`deployments[0].name: "Pool_01": a deployment name is 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'`}},
		{"deployment name too long", func(t *Topology) { t.Deployments[exchange].Name = strings.Repeat("e", 64); t.Trusts = t.Trusts[1:2] },
			[]string{`deployments[1].name: "` + strings.Repeat("e", 64) + `": a deployment name is 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'`}},
		{"duplicate deployment name", func(t *Topology) { t.Deployments[sharepoint].Name = "exchange"; t.Trusts = t.Trusts[:1] },
			[]string{`deployments[2].name: "exchange": already the name of deployments[1]; deployment names are unique`}},
		{"unknown product", func(t *Topology) { t.Deployments[exchange].Product = "exchang" },
			[]string{`deployments[1].product: "exchang": unknown product; accepted: lync, exchange, sharepoint`}},
		{"no product", func(t *Topology) { t.Deployments[exchange].Product = "" },
			[]string{`deployments[1].product: missing; accepted: lync, exchange, sharepoint`}},

		// Versions: every 2010 product names its hosts, product and version.
		{"exchange 2010", func(t *Topology) { t.Deployments[exchange].Version = "2010" },
			[]string{`deployments[1].version: "2010": Exchange Server 2010 on ex01.contoso.com, ex02.contoso.com does not support server-to-server OAuth (supported: 2013, 2016, 2019, SE)`}},
		{"exchange 2010 on one host", func(t *Topology) {
			t.Deployments[exchange].Version = "2010"
			t.Deployments[exchange].Hosts = []string{"EX01.contoso.com"}
		}, []string{`deployments[1].version: "2010": Exchange Server 2010 on ex01.contoso.com does not support server-to-server OAuth (supported: 2013, 2016, 2019, SE)`}},
		{"lync 2010", func(t *Topology) { t.Deployments[lync].Version = "2010" },
			[]string{`deployments[0].version: "2010": Lync / Skype for Business Server 2010 on fe01.contoso.com, fe02.contoso.com does not support server-to-server OAuth (supported: 2013, 2015, 2019, SE)`}},
		{"sharepoint 2010", func(t *Topology) { t.Deployments[sharepoint].Version = "2010" },
			[]string{`deployments[2].version: "2010": SharePoint Server 2010 on sp01.contoso.com does not support server-to-server OAuth (supported: 2013, 2016, 2019, SE)`}},
		{"unknown version", func(t *Topology) { t.Deployments[sharepoint].Version = "2015" },
			[]string{`deployments[2].version: "2015": SharePoint Server version "2015" is not supported (supported: 2013, 2016, 2019, SE)`}},
		{"no version", func(t *Topology) { t.Deployments[lync].Version = "" },
			[]string{`deployments[0].version: missing; accepted: 2013, 2015, 2019, SE`}},

		// Hosts.
		{"no hosts", func(t *Topology) { t.Deployments[sharepoint].Hosts = nil },
			[]string{`deployments[2].hosts: missing; list the FQDN of every server of the deployment`}},
		{"host not an FQDN", func(t *Topology) { t.Deployments[lync].Hosts[1] = "FE02" },
			[]string{`deployments[0].hosts[1]: "fe02": not a fully qualified domain name; accepted: a server's FQDN such as fe01.contoso.com`}},
		{"host twice in a deployment", func(t *Topology) { t.Deployments[lync].Hosts[1] = "FE01.contoso.com" },
			[]string{`deployments[0].hosts[1]: "fe01.contoso.com": listed twice in deployment "pool01" (also hosts[0])`}},
		{"host in two deployments", func(t *Topology) {
			t.Deployments[sharepoint].Hosts = append(t.Deployments[sharepoint].Hosts, "ex02.contoso.com")
		},
			[]string{`deployments[2].hosts[1]: "ex02.contoso.com": host is in both deployment "exchange" (deployments[1].hosts[1]) and deployment "sharepoint"; a host belongs to one deployment`}},

		// Product-specific fields.
		{"lync without pool", func(t *Topology) { t.Deployments[lync].PoolFQDN = "" },
			[]string{`deployments[0].poolFqdn: missing; a lync deployment needs its pool's FQDN, e.g. pool01.contoso.com`}},
		{"lync pool not an FQDN", func(t *Topology) { t.Deployments[lync].PoolFQDN = "pool01" },
			[]string{`deployments[0].poolFqdn: "pool01": not a fully qualified domain name; a lync deployment needs its pool's FQDN, e.g. pool01.contoso.com`}},
		{"exchange without autodiscover", func(t *Topology) { t.Deployments[exchange].AutodiscoverFQDN = "" },
			[]string{`deployments[1].autodiscoverFqdn: missing; an exchange deployment needs the organization's autodiscover FQDN, e.g. autodiscover.contoso.com`}},
		{"sharepoint without web application", func(t *Topology) { t.Deployments[sharepoint].WebAppURL = "" },
			[]string{`deployments[2].webAppUrl: missing; a sharepoint deployment needs its web application's URL, e.g. https://sp.contoso.com`}},
		{"sharepoint over http", func(t *Topology) { t.Deployments[sharepoint].WebAppURL = "http://sp.contoso.com/" },
			[]string{`deployments[2].webAppUrl: "http://sp.contoso.com/": a web application URL must use HTTPS, not HTTP: S2S OAuth trusts only what comes over TLS; accepted: https://sp.contoso.com/`}},
		{"sharepoint web application with a query", func(t *Topology) { t.Deployments[sharepoint].WebAppURL = "https://sp.contoso.com/?a=b" },
			[]string{`deployments[2].webAppUrl: "https://sp.contoso.com/?a=b": a web application URL has no ?query`}},
		{"fields of other products", func(t *Topology) {
			t.Deployments[exchange].PoolFQDN = "pool01.contoso.com"
			t.Deployments[exchange].ExchangeAutodiscoverURL = "https://autodiscover.contoso.com/autodiscover/autodiscover.svc"
			t.Deployments[lync].WebAppURL = "https://sp.contoso.com"
			t.Deployments[sharepoint].AutodiscoverFQDN = "autodiscover.contoso.com"
		}, []string{
			`deployments[0].webAppUrl: "https://sp.contoso.com": webAppUrl applies only to sharepoint deployments; a lync deployment takes poolFqdn`,
			`deployments[1].poolFqdn: "pool01.contoso.com": poolFqdn applies only to lync deployments; an exchange deployment takes autodiscoverFqdn`,
			`deployments[1].exchangeAutodiscoverUrl: "https://autodiscover.contoso.com/autodiscover/autodiscover.svc": exchangeAutodiscoverUrl applies only to lync deployments; an exchange deployment takes autodiscoverFqdn`,
			`deployments[2].autodiscoverFqdn: "autodiscover.contoso.com": autodiscoverFqdn applies only to exchange deployments; a sharepoint deployment takes webAppUrl`,
		}},
		{"exchange autodiscover url over http", func(t *Topology) {
			t.Deployments[lync].ExchangeAutodiscoverURL = "http://autodiscover.contoso.com/autodiscover/autodiscover.svc"
		}, []string{`deployments[0].exchangeAutodiscoverUrl: "http://autodiscover.contoso.com/autodiscover/autodiscover.svc": an Exchange autodiscover URL must use HTTPS, not HTTP: S2S OAuth trusts only what comes over TLS; accepted: https://autodiscover.contoso.com/autodiscover/autodiscover.svc`}},

		// Metadata URLs.
		{"deployment metadata url over http", func(t *Topology) {
			t.Deployments[exchange].MetadataURL = "http://autodiscover.contoso.com/autodiscover/metadata/json/1"
		},
			[]string{`deployments[1].metadataUrl: "http://autodiscover.contoso.com/autodiscover/metadata/json/1": a metadata URL must use HTTPS, not HTTP: S2S OAuth trusts only what comes over TLS; accepted: https://autodiscover.contoso.com/autodiscover/metadata/json/1`}},
		{"trust metadata url over http", func(t *Topology) {
			t.Trusts[0].MetadataURL = "http://autodiscover.contoso.com/autodiscover/metadata/json/1"
		},
			[]string{`trusts[0].metadataUrl: "http://autodiscover.contoso.com/autodiscover/metadata/json/1": a metadata URL must use HTTPS, not HTTP: S2S OAuth trusts only what comes over TLS; accepted: https://autodiscover.contoso.com/autodiscover/metadata/json/1`}},
		{"metadata urls that are not urls", func(t *Topology) {
			t.Trusts[0].MetadataURL = "autodiscover.contoso.com/autodiscover/metadata/json/1"
			t.Trusts[1].MetadataURL = "https://sp.contoso.com/_layouts/15/metadata/json/1 "
			t.Trusts[2].MetadataURL = "https://admin:secret@pool01.contoso.com/metadata/json/1"
			t.Trusts[3].MetadataURL = "https://pool01.contoso.com/metadata/json/1#keys"
			t.Trusts[4].MetadataURL = "https://exa mple.com/"
			t.Deployments[lync].MetadataURL = "https://pool01.contoso.com:99999/metadata/json/1"
			t.Deployments[exchange].MetadataURL = "https://%zz/"
		}, []string{
			`deployments[0].metadataUrl: "https://pool01.contoso.com:99999/metadata/json/1": port 99999 is out of range (1-65535)`,
			`deployments[1].metadataUrl: "https://%zz/": not a valid URL (invalid URL escape "%zz"); accepted: an https:// URL`,
			`trusts[0].metadataUrl: "autodiscover.contoso.com/autodiscover/metadata/json/1": a metadata URL must be an absolute https:// URL`,
			`trusts[1].metadataUrl: "https://sp.contoso.com/_layouts/15/metadata/json/1 ": a metadata URL has no spaces or control characters`,
			`trusts[2].metadataUrl: "https://admin:secret@pool01.contoso.com/metadata/json/1": a metadata URL must not carry a user name or password`,
			`trusts[3].metadataUrl: "https://pool01.contoso.com/metadata/json/1#keys": a metadata URL has no #fragment`,
			`trusts[4].metadataUrl: "https://exa mple.com/": a metadata URL has no spaces or control characters`,
		}},

		{"metadata urls without a good host", func(t *Topology) {
			t.Trusts[0].MetadataURL = "https:///autodiscover/metadata/json/1"
			t.Trusts[1].MetadataURL = "https://sp_01.contoso.com/_layouts/15/metadata/json/1"
			t.Trusts[2].MetadataURL = "https://10.0.0.5/metadata/json/1"
			t.Trusts[3].MetadataURL = "HTTPS://POOL01.contoso.com:4443/metadata/json/1"
		}, []string{
			`trusts[0].metadataUrl: "https:///autodiscover/metadata/json/1": a metadata URL needs a host name, as in https://host.contoso.com/…`,
			`trusts[1].metadataUrl: "https://sp_01.contoso.com/_layouts/15/metadata/json/1": "sp_01.contoso.com" is not a valid host name`,
		}},

		// Token issuers.
		{"token issuer with both", func(t *Topology) { t.Deployments[lync].TokenIssuer.Thumbprint = strings.Repeat("ab", 20) },
			[]string{`deployments[0].tokenIssuer: give one of secret, thumbprint and existing, not several`}},
		{"empty token issuer", func(t *Topology) { t.Deployments[lync].TokenIssuer = &TokenIssuer{} },
			[]string{"deployments[0].tokenIssuer: empty; give secret (a PFX uploaded with `s2s-controller secret put`), thumbprint (a certificate already on the hosts) or existing: Default (Lync's Default certificate)"}},
		{"short thumbprint", func(t *Topology) { t.Deployments[lync].TokenIssuer = &TokenIssuer{Thumbprint: "3b 9a 1f"} },
			[]string{`deployments[0].tokenIssuer.thumbprint: "3B9A1F": a thumbprint is 40 hexadecimal digits, the certificate's SHA-1 as Windows shows it, e.g. 3B9A1F…`}},
		{"thumbprint not hex", func(t *Topology) { t.Deployments[lync].TokenIssuer = &TokenIssuer{Thumbprint: strings.Repeat("g", 40)} },
			[]string{`deployments[0].tokenIssuer.thumbprint: "` + strings.Repeat("G", 40) + `": a thumbprint is 40 hexadecimal digits, the certificate's SHA-1 as Windows shows it, e.g. 3B9A1F…`}},
		{"thumbprint as pasted", func(t *Topology) {
			t.Deployments[exchange].TokenIssuer = &TokenIssuer{Thumbprint: "\u200e3b 9a 1f 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff 01\u200e"}
		}, nil},
		{"secret with a space", func(t *Topology) { t.Deployments[lync].TokenIssuer.Secret = "oauth 2026" },
			[]string{`deployments[0].tokenIssuer.secret: "oauth 2026": a secret name is 1-128 letters, digits, '.', '-' or '_', starting with a letter or digit, e.g. oauth-2026`}},

		// Trusts.
		{"trust from nowhere", func(t *Topology) { t.Trusts[1].From = "sharepoint2" },
			[]string{`trusts[1].from: "sharepoint2": no such deployment; accepted: pool01, exchange, sharepoint`}},
		{"trust to nowhere", func(t *Topology) { t.Trusts[0].To = "pool02" },
			[]string{`trusts[0].to: "pool02": no such deployment; accepted: pool01, exchange, sharepoint`}},
		{"trust without ends", func(t *Topology) { t.Trusts[0].From = ""; t.Trusts[0].To = "" },
			[]string{
				`trusts[0].from: missing; accepted: pool01, exchange, sharepoint`,
				`trusts[0].to: missing; accepted: pool01, exchange, sharepoint`,
			}},
		{"trust in itself", func(t *Topology) { t.Trusts[0].From = "pool01" },
			[]string{`trusts[0].to: "pool01": a deployment cannot trust itself (from is also "pool01")`}},
		{"duplicate edge", func(t *Topology) {
			t.Trusts = append(t.Trusts, Trust{From: "pool01", To: "exchange", TrustLevel: "full"})
		},
			[]string{`trusts[5]: "pool01 -> exchange": the same edge as trusts[2]; list each edge once`}},
		{"unknown trust level", func(t *Topology) { t.Trusts[0].TrustLevel = "Partial" },
			[]string{`trusts[0].trustLevel: "Partial": unknown trust level; accepted: Full (the default), Application, User`}},
		{"trust levels into lync", func(t *Topology) { t.Trusts[0].TrustLevel = "user"; t.Trusts[1].TrustLevel = "APPLICATION" }, nil},
		{"trust level into exchange", func(t *Topology) { t.Trusts[2].TrustLevel = "user" },
			[]string{`trusts[2].trustLevel: "User": only a lync deployment has trust levels (its ApplicationTrustLevel); "exchange" is an exchange deployment, so use Full or leave trustLevel out`}},
		{"disabled trust", func(t *Topology) { t.Trusts[0].Enabled = &no }, nil},
		{"disabled trust into sharepoint", func(t *Topology) { t.Trusts[3].Enabled = &no },
			[]string{`trusts[3].enabled: "false": a sharepoint deployment cannot disable a trusted security token issuer; remove the trust edge instead`}},
		{"two exchanges into one pool", func(t *Topology) {
			t.Deployments = append(t.Deployments, Deployment{Name: "exchange2", Product: "exchange", Version: "2016", AutodiscoverFQDN: "autodiscover.fabrikam.com", Hosts: []string{"ex01.fabrikam.com"}})
			t.Trusts = append(t.Trusts, Trust{From: "exchange2", To: "pool01"})
		}, []string{`trusts[5].from: "exchange2": lync deployment "pool01" would register both "exchange" (trusts[0]) and "exchange2" as partner "microsoft.exchange"; keep one of the two edges`}},

		// Stale partners.
		{"remove a trusted partner", func(t *Topology) { t.Deployments[lync].RemovePartners = []string{"app", "Microsoft.Exchange"} },
			[]string{`deployments[0].removePartners[1]: "Microsoft.Exchange": trusts[0] (from exchange) registers this partner; a partner cannot be both trusted and removed`}},
		{"remove a partner twice", func(t *Topology) { t.Deployments[lync].RemovePartners = []string{"app", "APP", ""} },
			[]string{
				`deployments[0].removePartners[1]: "APP": listed twice (also removePartners[0])`,
				`deployments[0].removePartners[2]: a partner identity is 1-128 letters, digits, '.', '-' or '_', starting with a letter or digit, e.g. app or microsoft.exchange`,
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			top := contoso(t)
			top.pos = nil // compare messages here; positions have their own test
			tc.edit(top)
			checkViolations(t, Validate(top), tc.want)
		})
	}
}

// TestValidateReportsEverything checks that one pass finds every violation
// and locates each in the file.
func TestValidateReportsEverything(t *testing.T) {
	doc := `apiVersion: s2strust/v1
kind: TrustTopology
name: contoso
sipDomains: {default: contoso.com}
deployments:
  - name: pool01
    product: lync
    version: "2015"
    poolFqdn: pool01.contoso.com
    hosts: [fe01.contoso.com, fe02.contoso.com]
  - name: exchange
    product: exchange
    version: "2010"
    autodiscoverFqdn: autodiscover.contoso.com
    hosts: [ex01.contoso.com, fe02.contoso.com]
    metadataUrl: http://autodiscover.contoso.com/autodiscover/metadata/json/1
trusts:
  - {from: exchange, to: pool01}
  - {from: pool01, to: sharepoint}
`
	_, err := Load("contoso.yaml", []byte(doc))
	want := strings.Join([]string{
		`contoso.yaml:13:14: deployments[1].version: "2010": Exchange Server 2010 on ex01.contoso.com, fe02.contoso.com does not support server-to-server OAuth (supported: 2013, 2016, 2019, SE)`,
		`contoso.yaml:15:31: deployments[1].hosts[1]: "fe02.contoso.com": host is in both deployment "pool01" (deployments[0].hosts[1]) and deployment "exchange"; a host belongs to one deployment`,
		`contoso.yaml:16:18: deployments[1].metadataUrl: "http://autodiscover.contoso.com/autodiscover/metadata/json/1": a metadata URL must use HTTPS, not HTTP: S2S OAuth trusts only what comes over TLS; accepted: https://autodiscover.contoso.com/autodiscover/metadata/json/1`,
		`contoso.yaml:19:24: trusts[1].to: "sharepoint": no such deployment; accepted: pool01, exchange`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("Load error:\n%v\nwant:\n%s", err, want)
	}
	var e *Error
	if !errors.As(err, &e) || e.File != "contoso.yaml" || e.Violations[0].Field != "deployments[1].version" || e.Violations[0].Value != "2010" {
		t.Errorf("Load error %#v does not carry its fields", err)
	}
}

// TestValidateMissingFieldPosition points a missing field at its parent.
func TestValidateMissingFieldPosition(t *testing.T) {
	doc := `apiVersion: s2strust/v1
kind: TrustTopology
name: contoso
sipDomains: {default: contoso.com}
deployments:
  - name: exchange
    product: exchange
    version: "2019"
    hosts: [ex01.contoso.com]
trusts: []
`
	_, err := Load("c.yaml", []byte(doc))
	want := `c.yaml:6:5: deployments[0].autodiscoverFqdn: missing; an exchange deployment needs the organization's autodiscover FQDN, e.g. autodiscover.contoso.com`
	if err == nil || err.Error() != want {
		t.Errorf("Load error:\n%v\nwant:\n%s", err, want)
	}
}

func TestValidateNormalizes(t *testing.T) {
	top, err := Load("thumbprint.yaml", readFile(t, "thumbprint.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	d := top.Deployments[0]
	checks := []struct{ what, got, want string }{
		{"default SIP domain", top.SIPDomains.Default, "fabrikam.com"},
		// Not defaulted: s2strust sets no realm the topology does not declare.
		{"realm", top.Realm, ""},
		{"product", d.Product, "lync"},
		{"version", d.Version, "SE"},
		{"pool", d.PoolFQDN, "sfb.fabrikam.com"},
		{"host", d.Hosts[0], "fe1.fabrikam.com"},
		{"thumbprint", d.TokenIssuer.Thumbprint, "3B9A1F00112233445566778899AABBCCDDEEFF01"},
		{"trust level", top.Trusts[0].TrustLevel, "Full"},
		{"explicit trust level", top.Trusts[1].TrustLevel, "Application"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
		}
	}
	if top.Trusts[0].Enabled == nil || !*top.Trusts[0].Enabled || top.Trusts[1].Enabled == nil || *top.Trusts[1].Enabled {
		t.Errorf("enabled = %v, %v; want true (the default), false", top.Trusts[0].Enabled, top.Trusts[1].Enabled)
	}

	// Validating again changes nothing.
	before, err := top.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(top); err != nil {
		t.Fatal(err)
	}
	after, err := top.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Errorf("Validate is not idempotent:\n%s\n%s", before, after)
	}
}

func TestValidateNil(t *testing.T) {
	checkViolations(t, Validate(nil), []string{"no topology given"})
}

func TestValidateEmptyTrusts(t *testing.T) {
	top := contoso(t)
	top.Trusts = nil
	if err := Validate(top); err != nil {
		t.Fatal(err)
	}
	if top.Trusts == nil {
		t.Error("Validate left trusts nil; want an empty list, so that `trusts: []` and no trusts are one canonical form")
	}
}

func TestPosition(t *testing.T) {
	top := contoso(t)
	for _, c := range []struct {
		field        string
		line, column int
	}{
		{"deployments[0].tokenIssuer.secret", 12, 27},
		{"deployments[1].hosts[1]", 16, 76},
		{"deployments[1].webAppUrl", 15, 5}, // absent: its deployment
		{"trusts[4].to", 24, 26},
		{"nowhere", 1, 1}, // absent: the document
	} {
		if line, column := top.Position(c.field); line != c.line || column != c.column {
			t.Errorf("Position(%s) = %d:%d, want %d:%d", c.field, line, column, c.line, c.column)
		}
	}
	if line, column := (&Topology{}).Position("name"); line != 0 || column != 0 {
		t.Errorf("Position in a topology that was not parsed = %d:%d, want 0:0", line, column)
	}
}
