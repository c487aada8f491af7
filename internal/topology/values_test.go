package topology

import (
	"errors"
	"strings"
	"testing"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// hostile are the values of the injection matrix: quotes of every kind,
// PowerShell's subexpression and escape character, command separators,
// line breaks and bidirectional overrides.
var hostile = []string{
	`'`, `"`, "\u2018", "\u2019", "\u201A", "\u201B", "\u201C", "\u201D", "\u201E",
	"$(calc)", "`whoami`", ";", "|", "&", "\n", "\r", "\u2028",
	"\u202A", "\u202B", "\u202C", "\u202D", "\u202E", "\u2066", "\u2067", "\u2068", "\u2069", "\u200E", "\u200F", "\u061C",
}

// TestInjectionMatrix puts each hostile value into each free-text field
// and expects a refusal naming the field, with the value escaped in the
// message. The one field that keeps some of them is the topology's
// display name: ASCII quotes, ';', '|' and '&' are ordinary text there (the
// plan quotes it when it shows it); everything else is refused there too.
func TestInjectionMatrix(t *testing.T) {
	const lync, exchange, sharepoint = 0, 1, 2
	type field struct {
		path string
		set  func(*Topology, string)
		// keep lists the hostile values the field legitimately holds.
		keep string
		// get reads the normalized value back, for fields that trim
		// surrounding white space: it must then hold no hostile rune.
		get func(*Topology) string
	}
	const trimmed = "\n\r\u2028"
	dns := func(h string) string { return "a" + h + ".contoso.com" }
	url := func(h string) string { return "https://x.contoso.com/a" + h + "b" }
	// The version and the trust level are trimmed of surrounding white
	// space (a trailing line break included) and then matched against their
	// few accepted values: kept, as the clean normalized value.
	fields := []field{
		{"name", func(t *Topology, h string) { t.Name = "con" + h + "toso" }, `'";|&`, nil},
		{"sipDomains.default", func(t *Topology, h string) { t.SIPDomains.Default = dns(h) }, "", nil},
		{"sipDomains.additional[0]", func(t *Topology, h string) { t.SIPDomains.Additional[0] = dns(h) }, "", nil},
		{"realm", func(t *Topology, h string) { t.Realm = dns(h) }, "", nil},
		{"deployments[0].realm", func(t *Topology, h string) { t.Deployments[lync].Realm = dns(h) }, "", nil},
		{"deployments[0].name", func(t *Topology, h string) { t.Deployments[lync].Name = "pool" + h }, "", nil},
		{"deployments[0].version", func(t *Topology, h string) { t.Deployments[lync].Version = "2015" + h }, trimmed,
			func(t *Topology) string { return t.Deployments[lync].Version }},
		{"deployments[0].hosts[0]", func(t *Topology, h string) { t.Deployments[lync].Hosts[0] = dns(h) }, "", nil},
		{"deployments[1].hosts[1]", func(t *Topology, h string) { t.Deployments[exchange].Hosts[1] = dns(h) }, "", nil},
		{"deployments[0].poolFqdn", func(t *Topology, h string) { t.Deployments[lync].PoolFQDN = dns(h) }, "", nil},
		{"deployments[1].autodiscoverFqdn", func(t *Topology, h string) { t.Deployments[exchange].AutodiscoverFQDN = dns(h) }, "", nil},
		{"deployments[2].webAppUrl", func(t *Topology, h string) { t.Deployments[sharepoint].WebAppURL = url(h) }, "", nil},
		{"deployments[1].metadataUrl", func(t *Topology, h string) { t.Deployments[exchange].MetadataURL = url(h) }, "", nil},
		{"deployments[0].exchangeAutodiscoverUrl", func(t *Topology, h string) { t.Deployments[lync].ExchangeAutodiscoverURL = url(h) }, "", nil},
		{"deployments[0].tokenIssuer.secret", func(t *Topology, h string) { t.Deployments[lync].TokenIssuer.Secret = "oauth" + h + "2026" }, "", nil},
		{"deployments[0].removePartners[0]", func(t *Topology, h string) { t.Deployments[lync].RemovePartners[0] = "app" + h }, "", nil},
		{"trusts[1].metadataUrl", func(t *Topology, h string) { t.Trusts[1].MetadataURL = url(h) }, "", nil},
		{"trusts[0].trustLevel", func(t *Topology, h string) { t.Trusts[0].TrustLevel = "Full" + h }, trimmed,
			func(t *Topology) string { return t.Trusts[0].TrustLevel }},
		{"trusts[2].from", func(t *Topology, h string) { t.Trusts[2].From = "pool01" + h }, "", nil},
	}
	for _, f := range fields {
		for _, h := range hostile {
			top := contoso(t)
			f.set(top, h)
			err := Validate(top)
			keep := h != "" && len([]rune(h)) == 1 && strings.ContainsRune(f.keep, []rune(h)[0])
			if keep {
				if err != nil {
					t.Errorf("%s with %q: refused, but it is legitimate there: %v", f.path, h, err)
				}
				if f.get != nil && textProblem(f.get(top)) != "" {
					t.Errorf("%s with %q: kept as %q", f.path, h, f.get(top))
				}
				continue
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Errorf("%s with %q: accepted (err %v); want it refused naming the field", f.path, h, err)
				continue
			}
			named := false
			for _, v := range e.Violations {
				if v.Field == f.path {
					named = true
				}
			}
			if !named {
				t.Errorf("%s with %q: refused, but not naming the field: %v", f.path, h, err)
			}
			// The message shows the value escaped: no raw control or bidi character.
			for _, v := range e.Violations {
				if r := []rune(h)[0]; hostileRune(r) != "" && !strings.ContainsRune("`\u2018\u2019\u201A\u201B\u201C\u201D\u201E", r) && strings.ContainsRune(v.String(), r) {
					t.Errorf("%s with %q: the error shows the character raw: %q", f.path, h, v.String())
				}
			}
		}
	}
}

// TestThumbprintDropsInvisibleMarks: a thumbprint is normalized, not
// refused, when it carries the invisible marks Windows' certificate dialog
// copies along; what remains must be 40 hex digits.
func TestThumbprintDropsInvisibleMarks(t *testing.T) {
	top := contoso(t)
	top.Deployments[0].TokenIssuer = &TokenIssuer{Thumbprint: "\u200e3b9a1f0c" + strings.Repeat("0", 32)}
	if err := Validate(top); err != nil {
		t.Fatal(err)
	}
	if got := top.Deployments[0].TokenIssuer.Thumbprint; got != "3B9A1F0C"+strings.Repeat("0", 32) {
		t.Errorf("thumbprint %q", got)
	}
	top.Deployments[0].TokenIssuer = &TokenIssuer{Thumbprint: "3b9a1f0c" + strings.Repeat("0", 31) + "'"}
	checkViolations(t, Validate(top), []string{`deployments[0].tokenIssuer.thumbprint: "3B9A1F0C0000000000000000000000000000000'": a thumbprint is 40 hexadecimal digits, the certificate's SHA-1 as Windows shows it, e.g. 3B9A1F…`})
}

func TestValidRealm(t *testing.T) {
	tests := []struct {
		realm   string
		product pb.Product
		want    string // "" when valid
	}{
		{"contoso.com", pb.Product_PRODUCT_LYNC, ""},
		{"Contoso.COM", pb.Product_PRODUCT_LYNC, ""},
		{"contoso", pb.Product_PRODUCT_LYNC, ""},
		{"2d5c7a1e-8f3b-4c6d-9e0a-1b2c3d4e5f60", pb.Product_PRODUCT_SHAREPOINT, ""},
		{"*", pb.Product_PRODUCT_EXCHANGE, ""},
		{"*", pb.Product_PRODUCT_LYNC, `realm "*": "*" is only what Exchange publishes in its metadata, not a realm to set; accepted: a DNS name such as contoso.com or a GUID`},
		{"*", pb.Product_PRODUCT_UNSPECIFIED, `realm "*": "*" is only what Exchange publishes`},
		{"contoso com", pb.Product_PRODUCT_LYNC, `realm "contoso com": not a realm; accepted: a DNS name such as contoso.com, or a GUID such as a SharePoint farm id`},
		{"contoso.com'", pb.Product_PRODUCT_LYNC, "not a realm"},
		{"contoso.com$(x)", pb.Product_PRODUCT_LYNC, `has "$(" (PowerShell's subexpression)`},
		{"contoso.com\u202e", pb.Product_PRODUCT_LYNC, `realm "contoso.com\u202e": has bidirectional-override characters (U+202E)`},
		{"{2d5c7a1e-8f3b-4c6d-9e0a-1b2c3d4e5f60}", pb.Product_PRODUCT_SHAREPOINT, "not a realm"},
		{"", pb.Product_PRODUCT_LYNC, "not a realm"},
	}
	for _, tc := range tests {
		err := ValidRealm(tc.realm, tc.product)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("ValidRealm(%q, %v) = %v; want nil", tc.realm, tc.product, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("ValidRealm(%q, %v) = %v; want an error containing %s", tc.realm, tc.product, err, tc.want)
		}
		if fv := checkRealm("deployments[1].realm", tc.realm, tc.product); (fv == nil) != (tc.want == "") || (fv != nil && fv.Field != "deployments[1].realm") {
			t.Errorf("checkRealm(%q, %v) = %+v", tc.realm, tc.product, fv)
		}
	}
}

func TestURLQueryAndPath(t *testing.T) {
	top := contoso(t)
	top.Trusts[0].MetadataURL = "https://x.contoso.com/metadata/json/1?a=1&b=2"
	if err := Validate(top); err != nil {
		t.Errorf("a query of unreserved characters, '=' and '&' is refused: %v", err)
	}
	top.Trusts[0].MetadataURL = "https://x.contoso.com/meta%27data"
	checkViolations(t, Validate(top), []string{`trusts[0].metadataUrl: "https://x.contoso.com/meta%27data": a metadata URL: its path has '%'; accepted: a path of letters, digits, '-', '.', '_', '~' and '/'`})
	top.Trusts[0].MetadataURL = "https://x.contoso.com/m?a='1'"
	checkViolations(t, Validate(top), []string{`trusts[0].metadataUrl: "https://x.contoso.com/m?a='1'": a metadata URL: its query has '\''; accepted: letters, digits, '-', '.', '_', '~', '/', '=' and '&'`})
}
