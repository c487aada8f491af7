package topology

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Validate checks a topology and returns an *Error listing every violation,
// each naming the field, the value and what would be accepted (with the
// file, line and column when t came from Parse). It also normalizes t in
// place, so that equal meanings give equal Canonical forms: host names,
// SIP domains and FQDNs lower case; product names canonical (lync, exchange,
// sharepoint); versions via products.NormalizeVersion; thumbprints as 40
// upper-case hex digits; realm defaulted to the default SIP domain; trust
// levels spelled Full, Application or User, defaulting to Full; enabled
// defaulting to true; an absent trust list empty. Validating a valid,
// normalized topology changes nothing.
func Validate(t *Topology) error {
	if t == nil {
		return &Error{Violations: []FieldViolation{{Description: "no topology given"}}}
	}
	v := &validator{t: t, names: map[string]int{}}
	v.header()
	v.metadataNetworks()
	v.probeAccounts()
	v.deployments()
	v.trusts()
	v.removePartners()
	v.certificateRules()
	if len(v.vs) == 0 {
		return nil
	}
	sortViolations(v.vs)
	return newError(t.file, v.vs)
}

type validator struct {
	t  *Topology
	vs []FieldViolation
	// names maps each deployment name to its index (the first, if repeated).
	names map[string]int
	// product is each deployment's product; unspecified when invalid.
	product []pb.Product
	// partner maps receiver deployment index and lower-case partner name to
	// the trust edge that registers it.
	partner map[partnerKey]int
	// networks are the parsed metadataNetworks.
	networks []netip.Prefix
}

type partnerKey struct {
	receiver int
	name     string
}

func (v *validator) add(field, value, format string, args ...any) {
	p := v.t.at(field)
	v.vs = append(v.vs, FieldViolation{Field: field, Value: value, Description: fmt.Sprintf(format, args...), Line: p.line, Column: p.column})
}

func (v *validator) header() {
	t := v.t
	switch t.APIVersion {
	case APIVersion:
	case "":
		v.add("apiVersion", "", "missing; accepted: %s", APIVersion)
	default:
		v.add("apiVersion", t.APIVersion, "unsupported API version; accepted: %s", APIVersion)
	}
	switch t.Kind {
	case Kind:
	case "":
		v.add("kind", "", "missing; accepted: %s", Kind)
	default:
		v.add("kind", t.Kind, "unsupported kind; accepted: %s", Kind)
	}
	switch {
	case strings.TrimSpace(t.Name) == "":
		v.add("name", t.Name, "missing; name the topology, e.g. contoso")
	case v.addProblem("name", t.Name, textProblem(t.Name)):
	case !isText(t.Name) || len(t.Name) > 253:
		v.add("name", t.Name, "a topology name is up to 253 printable characters")
	}

	sd := &t.SIPDomains
	sd.Default = strings.ToLower(sd.Default)
	switch {
	case sd.Default == "":
		v.add("sipDomains.default", "", "missing; give the default SIP domain, e.g. contoso.com")
	case !isDNSName(sd.Default, true):
		v.add("sipDomains.default", sd.Default, "not a valid domain name; accepted: a DNS domain such as contoso.com")
	}
	seen := map[string]int{}
	for i := range sd.Additional {
		d := strings.ToLower(sd.Additional[i])
		sd.Additional[i] = d
		field := fmt.Sprintf("sipDomains.additional[%d]", i)
		if j, dup := seen[d]; dup {
			v.add(field, d, "listed twice (also sipDomains.additional[%d])", j)
			continue
		}
		seen[d] = i
		switch {
		case !isDNSName(d, true):
			v.add(field, d, "not a valid domain name; accepted: a DNS domain such as fabrikam.com")
		case d == sd.Default:
			v.add(field, d, "is the default SIP domain; list only the other SIP domains here")
		}
	}

	// The realm is Lync's OAuth realm only, and set only when declared:
	// Lync's own default is the default SIP domain, Exchange's realm is
	// blank and SharePoint's is its farm id, and s2strust changes none of
	// them unless the topology says so.
	if t.Realm != "" {
		v.addProblem("realm", t.Realm, realmProblem(t.Realm, pb.Product_PRODUCT_LYNC))
	}
}

// productFields are the deployment fields that belong to one product.
var productFields = []struct {
	name    string
	product pb.Product
}{
	{"poolFqdn", pb.Product_PRODUCT_LYNC},
	{"autodiscoverFqdn", pb.Product_PRODUCT_EXCHANGE},
	{"webAppUrl", pb.Product_PRODUCT_SHAREPOINT},
	{"exchangeAutodiscoverUrl", pb.Product_PRODUCT_LYNC},
}

// endpointField is the field that locates each product's deployment.
var endpointField = map[pb.Product]string{
	pb.Product_PRODUCT_LYNC:       "poolFqdn",
	pb.Product_PRODUCT_EXCHANGE:   "autodiscoverFqdn",
	pb.Product_PRODUCT_SHAREPOINT: "webAppUrl",
}

type hostRef struct{ deployment, index int }

func (v *validator) deployments() {
	t := v.t
	if len(t.Deployments) == 0 {
		v.add("deployments", "", "missing; a topology declares at least one deployment (a lync pool, an exchange organization or a sharepoint farm)")
	}
	v.product = make([]pb.Product, len(t.Deployments))
	hosts := map[string]hostRef{}
	for i := range t.Deployments {
		d := &t.Deployments[i]
		f := func(name string) string { return fmt.Sprintf("deployments[%d].%s", i, name) }

		switch {
		case d.Name == "":
			v.add(f("name"), "", "missing; name the deployment, e.g. pool01")
		case !isLabel(d.Name):
			v.add(f("name"), d.Name, "a deployment name is 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'")
		}
		if d.Name != "" {
			if j, dup := v.names[d.Name]; dup {
				v.add(f("name"), d.Name, "already the name of deployments[%d]; deployment names are unique", j)
			} else {
				v.names[d.Name] = i
			}
		}

		p, ok := products.Parse(d.Product)
		switch {
		case d.Product == "":
			v.add(f("product"), "", "missing; accepted: lync, exchange, sharepoint")
		case !ok:
			v.add(f("product"), d.Product, "unknown product; accepted: lync, exchange, sharepoint")
		default:
			d.Product = products.Name(p)
			v.product[i] = p
		}

		if len(d.Hosts) == 0 {
			v.add(f("hosts"), "", "missing; list the FQDN of every server of the deployment")
		}
		for k := range d.Hosts {
			h := strings.ToLower(d.Hosts[k])
			d.Hosts[k] = h
			hf := f(fmt.Sprintf("hosts[%d]", k))
			if !isDNSName(h, true) {
				v.add(hf, h, "not a fully qualified domain name; accepted: a server's FQDN such as fe01.contoso.com")
				continue
			}
			prev, dup := hosts[h]
			switch {
			case !dup:
				hosts[h] = hostRef{i, k}
			case prev.deployment == i:
				v.add(hf, h, "listed twice in deployment %q (also hosts[%d])", d.Name, prev.index)
			default:
				v.add(hf, h, "host is in both deployment %q (deployments[%d].hosts[%d]) and deployment %q; a host belongs to one deployment",
					t.Deployments[prev.deployment].Name, prev.deployment, prev.index, d.Name)
			}
		}

		d.Version = products.NormalizeVersion(d.Version)
		if v.addProblem(f("version"), d.Version, textProblem(d.Version)) {
			ok = false
		}
		if ok {
			v.version(f("version"), p, d)
		}

		d.PoolFQDN = strings.ToLower(d.PoolFQDN)
		d.AutodiscoverFQDN = strings.ToLower(d.AutodiscoverFQDN)
		if ok {
			v.productFields(i, p, d)
		}
		if d.MetadataURL != "" {
			v.httpsURL(f("metadataUrl"), d.MetadataURL, "metadata URL", false)
			v.metadataDestination(f("metadataUrl"), d.MetadataURL)
		}
		if d.TokenIssuer != nil {
			v.tokenIssuer(f("tokenIssuer"), d.TokenIssuer)
			if d.TokenIssuer.Existing != "" && ok {
				if desc, _ := products.Describe(p); !desc.DefaultCertificate {
					v.add(f("tokenIssuer.existing"), d.TokenIssuer.Existing, "%s has no certificate of type %s; name the token issuer by secret or thumbprint", products.DisplayName(p), d.TokenIssuer.Existing)
				}
			}
		}
		if ok {
			v.deploymentRealm(i, p, d)
		}
		seen := map[string]int{}
		for k, r := range d.RemovePartners {
			rf := f(fmt.Sprintf("removePartners[%d]", k))
			if j, dup := seen[strings.ToLower(r)]; dup {
				v.add(rf, r, "listed twice (also removePartners[%d])", j)
				continue
			}
			seen[strings.ToLower(r)] = k
			v.addProblem(rf, r, partnerIdentityProblem(r))
		}
	}
}

func (v *validator) version(field string, p pb.Product, d *Deployment) {
	if d.Version == "" {
		v.add(field, "", "missing; accepted: %s", strings.Join(products.SupportedVersions(p), ", "))
		return
	}
	err := products.CheckVersion(p, d.Version)
	if err == nil {
		return
	}
	msg := err.Error()
	// Name the hosts that cannot take part: "Exchange Server 2010 on
	// ex01.contoso.com does not support …".
	if what := products.DisplayName(p) + " " + d.Version + " "; strings.HasPrefix(msg, what) && len(d.Hosts) > 0 {
		msg = what + "on " + strings.Join(d.Hosts, ", ") + " " + msg[len(what):]
	}
	v.add(field, d.Version, "%s", msg)
}

func (v *validator) productFields(i int, p pb.Product, d *Deployment) {
	f := func(name string) string { return fmt.Sprintf("deployments[%d].%s", i, name) }
	values := map[string]string{
		"poolFqdn":                d.PoolFQDN,
		"autodiscoverFqdn":        d.AutodiscoverFQDN,
		"webAppUrl":               d.WebAppURL,
		"exchangeAutodiscoverUrl": d.ExchangeAutodiscoverURL,
	}
	for _, pf := range productFields {
		if pf.product != p && values[pf.name] != "" {
			v.add(f(pf.name), values[pf.name], "%s applies only to %s deployments; %s deployment takes %s",
				pf.name, products.Name(pf.product), article(products.Name(p)), endpointField[p])
		}
	}
	switch p {
	case pb.Product_PRODUCT_LYNC:
		v.fqdn(f("poolFqdn"), d.PoolFQDN, "a lync deployment needs its pool's FQDN, e.g. pool01.contoso.com")
		if d.ExchangeAutodiscoverURL != "" {
			v.httpsURL(f("exchangeAutodiscoverUrl"), d.ExchangeAutodiscoverURL, "Exchange autodiscover URL", false)
		}
	case pb.Product_PRODUCT_EXCHANGE:
		v.fqdn(f("autodiscoverFqdn"), d.AutodiscoverFQDN, "an exchange deployment needs the organization's autodiscover FQDN, e.g. autodiscover.contoso.com")
	case pb.Product_PRODUCT_SHAREPOINT:
		if d.WebAppURL == "" {
			v.add(f("webAppUrl"), "", "missing; a sharepoint deployment needs its web application's URL, e.g. https://sp.contoso.com")
		} else {
			v.httpsURL(f("webAppUrl"), d.WebAppURL, "web application URL", true)
			v.metadataDestination(f("webAppUrl"), d.WebAppURL)
		}
	}
}

func (v *validator) fqdn(field, value, need string) {
	switch {
	case value == "":
		v.add(field, "", "missing; %s", need)
	case !isDNSName(value, true):
		v.add(field, value, "not a fully qualified domain name; %s", need)
	}
}

// httpsURL checks an absolute HTTPS URL. S2S OAuth trusts metadata and
// endpoints only over TLS; "a metadata URL that is not HTTPS" is a classic
// mistake.
func (v *validator) httpsURL(field, raw, what string, root bool) {
	if !utf8.ValidString(raw) || strings.IndexFunc(raw, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		v.add(field, raw, "%s has no spaces or control characters", article(what))
		return
	}
	if v.addProblem(field, raw, textProblem(raw)) {
		return
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		v.add(field, raw, "not a valid URL (%v); accepted: an https:// URL", err)
		return
	}
	switch {
	case u.Scheme == "http":
		v.add(field, raw, "%s must use HTTPS, not HTTP: S2S OAuth trusts only what comes over TLS; accepted: https://%s%s", article(what), u.Host, u.EscapedPath())
	case u.Scheme != "https":
		v.add(field, raw, "%s must be an absolute https:// URL", article(what))
	case u.Opaque != "" || u.Host == "":
		v.add(field, raw, "%s needs a host name, as in https://host.contoso.com/…", article(what))
	case u.User != nil:
		v.add(field, raw, "%s must not carry a user name or password", article(what))
	case !isDNSName(strings.ToLower(u.Hostname()), false) && net.ParseIP(u.Hostname()) == nil:
		v.add(field, raw, "%q is not a valid host name", u.Hostname())
	case !validPort(u.Port()):
		v.add(field, raw, "port %s is out of range (1-65535)", u.Port())
	case u.Fragment != "" || strings.Contains(raw, "#"):
		v.add(field, raw, "%s has no #fragment", article(what))
	case root && (u.RawQuery != "" || u.ForceQuery):
		v.add(field, raw, "%s has no ?query", article(what))
	default:
		v.addProblem(field, raw, urlProblem(raw, what))
	}
}

// probeAccounts checks the test accounts: a sip: URI and a mailbox
// address, each user@domain, nothing a cmdlet could read as code.
func (v *validator) probeAccounts() {
	pa := v.t.ProbeAccounts
	if pa == nil {
		return
	}
	if pa.SIPURI != "" {
		rest, ok := strings.CutPrefix(strings.ToLower(pa.SIPURI), "sip:")
		user, domain, at := strings.Cut(rest, "@")
		switch {
		case v.addProblem("probeAccounts.sipUri", pa.SIPURI, textProblem(pa.SIPURI)):
		case !ok || !at || user == "" || !isDNSName(domain, false) || strings.ContainsAny(user, " '\"`$;|&()"):
			v.add("probeAccounts.sipUri", pa.SIPURI, "a SIP URI is sip:user@domain, e.g. sip:s2sprobe@contoso.com")
		}
	}
	if pa.Mailbox != "" {
		user, domain, at := strings.Cut(strings.ToLower(pa.Mailbox), "@")
		switch {
		case v.addProblem("probeAccounts.mailbox", pa.Mailbox, textProblem(pa.Mailbox)):
		case !at || user == "" || !isDNSName(domain, false) || strings.ContainsAny(user, " '\"`$;|&()"):
			v.add("probeAccounts.mailbox", pa.Mailbox, "a mailbox is user@domain, e.g. s2sprobe@contoso.com")
		}
	}
}

// metadataNetworks parses the topology's metadataNetworks, naming each
// prefix that is not one.
func (v *validator) metadataNetworks() {
	for i, c := range v.t.MetadataNetworks {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			v.add(fmt.Sprintf("metadataNetworks[%d]", i), c, "not a CIDR prefix; accepted: e.g. 10.20.0.0/16 or fd00:20::/48")
			continue
		}
		v.t.MetadataNetworks[i] = p.Masked().String()
		v.networks = append(v.networks, p.Masked())
	}
}

// metadataDestination refuses a URL whose host is an IP literal no
// partner's metadata can legitimately be at (loopback, link-local such as
// 169.254.169.254, the cloud instance metadata service, unspecified,
// multicast), or outside metadataNetworks; a name is checked again by the
// agent after it resolves it.
func (v *validator) metadataDestination(field, raw string) {
	if err := metadata.CheckURLDestination(raw, v.networks); err != nil {
		if de := (*metadata.DestinationError)(nil); errors.As(err, &de) {
			v.add(field, raw, "%s: no partner's metadata can be there; accepted: a host name or an address on the partners' networks", de.Reason)
			return
		}
		// The other refusals are the URL checks' to word.
		if msg := err.Error(); strings.Contains(msg, "loopback") || strings.Contains(msg, "neither a host name") {
			v.add(field, raw, "%v", err)
		}
	}
}

// deploymentRealm checks a deployment's own realm: a DNS name or a GUID;
// on Exchange and SharePoint only with confirmRealmChange, because it
// replaces the product's own realm (Exchange's blank one accepts tokens for
// every accepted domain; SharePoint's farm id is what its app principals
// are registered in).
func (v *validator) deploymentRealm(i int, p pb.Product, d *Deployment) {
	f := fmt.Sprintf("deployments[%d].", i)
	if d.Realm == "" {
		if d.ConfirmRealmChange {
			v.add(f+"confirmRealmChange", "true", "confirms a realm change, but deployment %q declares no realm", d.Name)
		}
		return
	}
	// A realm set on a deployment is never "*", not even Exchange's.
	if v.addProblem(f+"realm", d.Realm, realmProblem(d.Realm, pb.Product_PRODUCT_UNSPECIFIED)) {
		return
	}
	if desc, _ := products.Describe(p); desc.RealmNeedsConfirmation && !d.ConfirmRealmChange {
		what := "Exchange's AuthConfig realm is normally blank (tokens for every accepted domain are accepted); -Realm is only for a non-accepted domain"
		if p == pb.Product_PRODUCT_SHAREPOINT {
			what = "SharePoint's realm is the farm id, and changing it on a live farm breaks its existing app principals"
		}
		v.add(f+"realm", d.Realm, "%s deployment %q: %s; add confirmRealmChange: true to the deployment to change it", products.Name(p), d.Name, what)
	}
}

func (v *validator) tokenIssuer(field string, ti *TokenIssuer) {
	ti.Thumbprint = normalizeThumbprint(ti.Thumbprint)
	given := 0
	for _, s := range []string{ti.Secret, ti.Thumbprint, ti.Existing} {
		if s != "" {
			given++
		}
	}
	switch {
	case given > 1:
		v.add(field, "", "give one of secret, thumbprint and existing, not several")
	case given == 0:
		v.add(field, "", "empty; give secret (a PFX uploaded with `s2s-controller secret put`), thumbprint (a certificate already on the hosts) or existing: Default (Lync's Default certificate)")
	}
	if ti.Existing != "" {
		if strings.EqualFold(ti.Existing, "Default") {
			ti.Existing = "Default"
		} else {
			v.add(field+".existing", ti.Existing, "unknown certificate type; accepted: Default")
		}
	}
	if ti.Secret != "" {
		v.addProblem(field+".secret", ti.Secret, secretNameProblem(ti.Secret))
	}
	if ti.Thumbprint != "" && !isThumbprint(ti.Thumbprint) {
		v.add(field+".thumbprint", ti.Thumbprint, "a thumbprint is 40 hexadecimal digits, the certificate's SHA-1 as Windows shows it, e.g. 3B9A1F…")
	}
}

func (v *validator) trusts() {
	t := v.t
	if t.Trusts == nil {
		t.Trusts = []Trust{}
	}
	v.partner = map[partnerKey]int{}
	edges := map[[2]string]int{}
	for i := range t.Trusts {
		tr := &t.Trusts[i]
		f := func(name string) string { return fmt.Sprintf("trusts[%d].%s", i, name) }
		from, fromOK := v.deployment(f("from"), tr.From)
		to, toOK := v.deployment(f("to"), tr.To)
		if fromOK && toOK && from == to {
			v.add(f("to"), tr.To, "a deployment cannot trust itself (from is also %q)", tr.From)
			toOK = false
		}

		level := tr.TrustLevel
		if level == "" {
			level = "Full"
		}
		if tl, ok := products.ParseTrustLevel(level); ok {
			tr.TrustLevel = products.TrustLevelName(tl)
			if toOK && tl != pb.TrustLevel_TRUST_LEVEL_FULL && v.product[to] != pb.Product_PRODUCT_UNSPECIFIED && v.product[to] != pb.Product_PRODUCT_LYNC {
				v.add(f("trustLevel"), tr.TrustLevel, "only a lync deployment has trust levels (its ApplicationTrustLevel); %q is %s deployment, so use Full or leave trustLevel out",
					tr.To, article(products.Name(v.product[to])))
			}
		} else {
			v.add(f("trustLevel"), tr.TrustLevel, "unknown trust level; accepted: Full (the default), Application, User")
		}
		if tr.Enabled == nil {
			enabled := true
			tr.Enabled = &enabled
		} else if !*tr.Enabled && toOK && v.product[to] == pb.Product_PRODUCT_SHAREPOINT {
			// New-SPTrustedSecurityTokenIssuer has no Enabled setting.
			v.add(f("enabled"), "false", "a sharepoint deployment cannot disable a trusted security token issuer; remove the trust edge instead")
		}
		if tr.MetadataURL != "" {
			v.httpsURL(f("metadataUrl"), tr.MetadataURL, "metadata URL", false)
			v.metadataDestination(f("metadataUrl"), tr.MetadataURL)
		}
		if !fromOK || !toOK {
			continue
		}
		edge := [2]string{tr.From, tr.To}
		if j, dup := edges[edge]; dup {
			v.add(fmt.Sprintf("trusts[%d]", i), tr.From+" -> "+tr.To, "the same edge as trusts[%d]; list each edge once", j)
			continue
		}
		edges[edge] = i
		rp, pp := v.product[to], v.product[from]
		if rp == pb.Product_PRODUCT_UNSPECIFIED || pp == pb.Product_PRODUCT_UNSPECIFIED {
			continue
		}
		name := products.PartnerName(rp, pp, tr.From)
		key := partnerKey{to, strings.ToLower(name)}
		if j, dup := v.partner[key]; dup {
			v.add(f("from"), tr.From, "%s deployment %q would register both %q (trusts[%d]) and %q as partner %q; keep one of the two edges",
				products.Name(rp), tr.To, t.Trusts[j].From, j, tr.From, name)
			continue
		}
		v.partner[key] = i
	}
}

// deployment resolves a trust end to a deployment index.
func (v *validator) deployment(field, name string) (int, bool) {
	if name == "" {
		v.add(field, "", "missing; accepted: %s", v.deploymentNames())
		return 0, false
	}
	i, ok := v.names[name]
	if !ok {
		v.add(field, name, "no such deployment; accepted: %s", v.deploymentNames())
	}
	return i, ok
}

func (v *validator) deploymentNames() string {
	var names []string
	for _, d := range v.t.Deployments {
		if isLabel(d.Name) { // an invalid name is not offered, nor shown raw
			names = append(names, d.Name)
		}
	}
	if len(names) == 0 {
		return "the name of a deployment (none is declared)"
	}
	return strings.Join(dedupe(names), ", ")
}

// removePartners rejects removing a partner that a trust edge registers.
func (v *validator) removePartners() {
	for i, d := range v.t.Deployments {
		if v.names[d.Name] != i {
			continue
		}
		for k, r := range d.RemovePartners {
			j, ok := v.partner[partnerKey{i, strings.ToLower(r)}]
			if !ok {
				continue
			}
			v.add(fmt.Sprintf("deployments[%d].removePartners[%d]", i, k), r,
				"trusts[%d] (from %s) registers this partner; a partner cannot be both trusted and removed", j, v.t.Trusts[j].From)
		}
	}
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	out := s[:0]
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// isDNSName reports whether s is a lower-case DNS name: labels of a-z, 0-9
// and '-', 1-63 characters each, 253 in all, the last not all digits (which
// would make it an IP address). With fqdn it needs at least two labels.
func isDNSName(s string, fqdn bool) bool {
	if len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	if fqdn && len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if !isLabel(l) {
			return false
		}
	}
	return strings.Trim(labels[len(labels)-1], "0123456789") != ""
}

// isLabel reports whether s is a lower-case DNS label.
func isLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// article prefixes a word with "a" or "an".
func article(word string) string {
	if word != "" && strings.ContainsRune("aeiouAEIOU", rune(word[0])) {
		return "an " + word
	}
	return "a " + word
}

// validPort reports whether a URL's port is absent or 1-65535.
func validPort(p string) bool {
	if p == "" {
		return true
	}
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535
}

// isText reports whether s is UTF-8 without control characters.
func isText(s string) bool {
	return utf8.ValidString(s) && strings.IndexFunc(s, unicode.IsControl) < 0
}

// normalizeThumbprint accepts a thumbprint as people paste it: lower case,
// with spaces or colons, with the invisible marks (U+200E) that Windows'
// certificate dialog copies along; it returns upper-case hex.
func normalizeThumbprint(s string) string {
	return strings.ToUpper(strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) || r == ':' || unicode.Is(unicode.Cf, r) {
			return -1
		}
		return r
	}, s))
}

func isThumbprint(s string) bool {
	if len(s) != 40 {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'A' || c > 'F') {
			return false
		}
	}
	return true
}

// certificateRules normalizes certificateRules to lower case, defaulting to
// standard.
func (v *validator) certificateRules() {
	t := v.t
	switch r := strings.ToLower(t.CertificateRules); r {
	case "":
		t.CertificateRules = CertificateRulesStandard
	case CertificateRulesStandard, CertificateRulesStrict:
		t.CertificateRules = r
	default:
		v.add("certificateRules", t.CertificateRules, "unknown certificate rules; accepted: %s (the default), %s", CertificateRulesStandard, CertificateRulesStrict)
	}
}
