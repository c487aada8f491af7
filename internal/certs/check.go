package certs

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Severity says whether a Finding blocks a rollout.
type Severity int

const (
	// SeverityError blocks: the certificate must not be used as it is. It is
	// the zero value, so a Finding whose severity was never set blocks.
	SeverityError Severity = iota
	// SeverityWarning informs and does not block.
	SeverityWarning
)

// String returns "error" or "warning".
func (s Severity) String() string {
	switch s {
	case SeverityError:
		return "error"
	case SeverityWarning:
		return "warning"
	default:
		return fmt.Sprintf("Severity(%d)", int(s))
	}
}

// Rule ids, stable: reports, tests and operators refer to them, and every
// Finding's message ends with "(rule <id>)".
//
// The rules are Microsoft's for the Lync / Skype for Business token issuer
// (OAuthTokenIssuer) certificate:
//   - "The OAuthTokenIssuer certificate can also be any Web server certificate
//     that includes the name of your SIP domain in the Subject field", it must
//     be the same on every Front End, and it "must be at least 2048 bits"
//     (https://learn.microsoft.com/en-us/skypeforbusiness/manage/authentication/assign-a-server-to-server-certificate);
//     the Default certificate qualifies, so a name in the SIP domain (the
//     pool FQDN) is enough: RuleDefaultSIPDomain. That the CN be exactly the
//     SIP domain is the seed author's advice, not Microsoft's: RuleSubjectCN
//     is a warning.
//   - Lync's OAuth realm is the default SIP domain, and "additional SIP
//     namespaces are added to the Subject Alternative Name list of the OAuth
//     certificate"
//     (https://learn.microsoft.com/en-us/lyncserver/lync-server-2013-managing-server-to-server-authentication-oauth-and-partner-applications):
//     RuleSANAdditionalDomain, a warning, since tokens for the default realm
//     work without it.
//   - "All server certificates must support server authorization (Server
//     EKU)"
//     (https://learn.microsoft.com/en-us/previous-versions/office/lync-server-2013/lync-server-2013-certificate-infrastructure-requirements):
//     RuleServerAuth.
//   - The token issuer signs with the private key, and Import-CsCertificate
//     -Identity Global on one Front End has the Central Management Store
//     replicate certificate and key to the others, which needs an exportable
//     key: RulePrivateKey, RulePrivateKeyExportable.
const (
	RuleSubjectCN = "subject-cn"
	// RuleDefaultSIPDomain: the default SIP domain, or a name under it,
	// must be the subject CN or a SAN.
	RuleDefaultSIPDomain    = "default-sip-domain"
	RuleSANAdditionalDomain = "san-additional-domain"
	RuleKeySize             = "key-size"
	RulePrivateKey          = "private-key"
	// RulePrivateKeyExportable: the key must be exportable. A PFX's key is
	// exportable by construction (it was exported, and whoever opens the
	// file holds it in the clear); non-exportability is a flag of a key
	// container on a Windows host, so only a driver reading the host's
	// store can know it (Requirements.KeyNotExportable).
	RulePrivateKeyExportable = "private-key-exportable"
	RuleNotYetValid          = "not-yet-valid"
	RuleExpired              = "expired"
	RuleExpiring             = "expiring"
	RuleServerAuth           = "server-auth"
	RuleSameOnAllFrontEnds   = "same-on-all-front-ends"
)

// RuleSANDefaultDomain is the id the SAN-lists-the-default-domain rule had
// before RuleDefaultSIPDomain replaced it (a Default certificate lists the
// pool, not the SIP domain, and qualifies).
//
// Deprecated: Check no longer reports it; use RuleDefaultSIPDomain.
const RuleSANDefaultDomain = "san-default-domain"

// RuleAppliesTo says whether rule binds the token-issuer certificate of a
// deployment of product: the SIP-domain, server-authentication and
// replication rules are Lync's (its certificate is a web server
// certificate of the SIP domain, replicated by the CMS); every product needs
// a valid RSA certificate of at least 2048 bits with its private key.
// PRODUCT_UNSPECIFIED binds every rule.
func RuleAppliesTo(product pb.Product, rule string) bool {
	switch product {
	case pb.Product_PRODUCT_UNSPECIFIED, pb.Product_PRODUCT_LYNC:
		return true
	}
	switch rule {
	case RulePrivateKey, RuleNotYetValid, RuleExpired, RuleExpiring, RuleKeySize:
		return true
	}
	return false
}

// MinRSAKeyBits is the smallest RSA key the certificate rules accept.
const MinRSAKeyBits = 2048

// DefaultExpiryWarning is how long before expiry Check starts warning when
// Requirements.ExpiryWarning is zero.
const DefaultExpiryWarning = 30 * 24 * time.Hour

// Finding is one broken certificate rule.
type Finding struct {
	// Rule is one of the Rule… ids.
	Rule string
	// Severity says whether the finding blocks.
	Severity Severity
	// Message is a complete sentence for an operator that names the
	// certificate (thumbprint and subject), or the hosts, and what is wrong,
	// and ends with "(rule <Rule>)".
	Message string
}

// String formats the finding as "severity: message".
func (f Finding) String() string {
	return fmt.Sprintf("%s: %s", f.Severity, f.Message)
}

// Requirements are what the deployment asks of its token-issuer certificate.
type Requirements struct {
	// Product is the deployment's product: only the rules RuleAppliesTo
	// gives for it are checked. PRODUCT_UNSPECIFIED checks every rule.
	Product pb.Product
	// DefaultSIPDomain must be, or be a parent of, the subject CN or a SAN,
	// and should be the CN. Empty skips the SIP-domain rules (the caller has
	// no SIP domain to check).
	DefaultSIPDomain string
	// AdditionalSIPDomains should each be a SAN.
	AdditionalSIPDomains []string
	// Strict makes the rules that are otherwise warnings (subject-cn,
	// san-additional-domain, expiring) errors: a topology's
	// certificateRules: strict.
	Strict bool
	// KeyNotExportable says the caller knows the private key cannot be
	// exported from the host's key store; see RulePrivateKeyExportable.
	KeyNotExportable bool
	// Now is the time validity is judged at; zero means time.Now(). Pass the
	// injected clock's time.
	Now time.Time
	// ExpiryWarning is how long before NotAfter the expiring warning starts;
	// zero means DefaultExpiryWarning.
	ExpiryWarning time.Duration
}

// RequirementsFor is what a host's configuration asks of its deployment's
// token-issuer certificate, judged at now: the product, the SIP domains
// (for Lync, whose rules they are) and strict from certificate_rules. The
// agent side checks with it what the controller checked at apply.
func RequirementsFor(cfg *pb.HostConfig, now time.Time) Requirements {
	req := Requirements{
		Product: cfg.GetProduct(),
		Strict:  cfg.GetCertificateRules() == CertificateRulesStrict,
		Now:     now,
	}
	if req.Product == pb.Product_PRODUCT_LYNC {
		req.DefaultSIPDomain = cfg.GetDefaultSipDomain()
		req.AdditionalSIPDomains = append([]string(nil), cfg.GetAdditionalSipDomains()...)
	}
	return req
}

// CertificateRulesStrict is HostConfig.certificate_rules (and the topology's
// certificateRules) for strict rules; empty or "standard" is the default.
const CertificateRulesStrict = "strict"

// Check applies the token-issuer certificate rules (see the Rule… ids) to
// cert and returns what it breaks, in a fixed rule order; nil means it
// breaks none. hasPrivateKey says whether the certificate came with its
// private key. Host names compare case-insensitively; a wildcard SAN does
// not stand for an additional SIP domain, which must be listed itself, but
// it is a name under the default SIP domain.
func Check(cert *x509.Certificate, hasPrivateKey bool, req Requirements) []Finding {
	var fs []Finding
	who := describe(cert)
	add := func(rule string, sev Severity, format string, args ...any) {
		if !RuleAppliesTo(req.Product, rule) {
			return
		}
		msg := "certificate " + who + ": " + fmt.Sprintf(format, args...)
		if sev == SeverityWarning && req.Strict {
			sev = SeverityError
			msg += "; certificateRules: strict makes this an error"
		}
		fs = append(fs, Finding{Rule: rule, Severity: sev, Message: msg + " (rule " + rule + ")"})
	}

	if def := req.DefaultSIPDomain; def != "" {
		cn := cert.Subject.CommonName
		if !inDomain(cn, def) && !slices.ContainsFunc(cert.DNSNames, func(n string) bool { return inDomain(n, def) }) {
			add(RuleDefaultSIPDomain, SeverityError, "neither the subject common name (%s) nor a subject alternative name is the default SIP domain %s or a name under it; use a web server certificate of the SIP domain, such as the pool's Default certificate", quoteOrEmpty(cn), def)
		} else if !sameHost(cn, def) {
			add(RuleSubjectCN, SeverityWarning, "subject common name is %s, not exactly the default SIP domain %s", quoteOrEmpty(cn), def)
		}
		seen := []string{def}
		for _, d := range req.AdditionalSIPDomains {
			if d == "" || slices.ContainsFunc(seen, func(s string) bool { return sameHost(s, d) }) {
				continue
			}
			seen = append(seen, d)
			if !slices.ContainsFunc(cert.DNSNames, func(n string) bool { return sameHost(n, d) }) {
				add(RuleSANAdditionalDomain, SeverityWarning, "SAN does not list %s, an additional SIP domain", d)
			}
		}
	}

	switch k := cert.PublicKey.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < MinRSAKeyBits {
			add(RuleKeySize, SeverityError, "RSA key is %d bits; at least %d are required", bits, MinRSAKeyBits)
		}
	case *ecdsa.PublicKey:
		add(RuleKeySize, SeverityError, "key is ECDSA %s; an RSA key of at least %d bits is required", k.Curve.Params().Name, MinRSAKeyBits)
	case ed25519.PublicKey:
		add(RuleKeySize, SeverityError, "key is Ed25519; an RSA key of at least %d bits is required", MinRSAKeyBits)
	default:
		add(RuleKeySize, SeverityError, "key algorithm %s is not RSA; an RSA key of at least %d bits is required", cert.PublicKeyAlgorithm, MinRSAKeyBits)
	}

	switch {
	case !hasPrivateKey:
		add(RulePrivateKey, SeverityError, "private key is missing; the token issuer signs with it, so import the certificate from a PFX that includes it")
	case req.KeyNotExportable:
		add(RulePrivateKeyExportable, SeverityError, "private key is not exportable, so the Central Management Store cannot replicate it to the other Front Ends; import it again from a PFX, marked exportable")
	}

	now := req.Now
	if now.IsZero() {
		now = time.Now()
	}
	warn := req.ExpiryWarning
	if warn == 0 {
		warn = DefaultExpiryWarning
	}
	switch {
	case now.Before(cert.NotBefore):
		add(RuleNotYetValid, SeverityError, "not valid before %s (%s from now)", stamp(cert.NotBefore), approx(cert.NotBefore.Sub(now)))
	case now.After(cert.NotAfter):
		add(RuleExpired, SeverityError, "expired on %s (%s ago)", stamp(cert.NotAfter), approx(now.Sub(cert.NotAfter)))
	case cert.NotAfter.Sub(now) <= warn:
		add(RuleExpiring, SeverityWarning, "expires on %s, in %s; roll over to a new certificate at least 24 hours before then", stamp(cert.NotAfter), approx(cert.NotAfter.Sub(now)))
	}

	// A certificate without an extended key usage extension is valid for
	// every purpose: RFC 5280 §4.2.1.12 leaves usage unrestricted, and
	// Windows (which is what finally uses the certificate) shows it as "All"
	// and accepts it for server authentication. Rejecting it would refuse
	// certificates the products work with, so only an extension that lists
	// purposes without serverAuth (or anyExtendedKeyUsage) is an error.
	if (len(cert.ExtKeyUsage) > 0 || len(cert.UnknownExtKeyUsage) > 0) &&
		!slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) &&
		!slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageAny) {
		add(RuleServerAuth, SeverityError, "extended key usage (%s) lacks server authentication; the certificate must be usable as a web server certificate", ekuNames(cert))
	}
	return fs
}

// inDomain reports whether the DNS name name is domain or a name under it
// (a wildcard such as *.contoso.com is under contoso.com).
func inDomain(name, domain string) bool {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	return d != "" && (n == d || strings.HasSuffix(n, "."+d))
}

func quoteOrEmpty(s string) string {
	if s == "" {
		return "empty"
	}
	return fmt.Sprintf("%q", s)
}

// CheckSame applies the rule that every Front End of a deployment holds the
// same token-issuer certificate. thumbprintByHost maps each Front End to the
// thumbprint it reports (any form NormalizeThumbprint accepts; empty for a
// host with no certificate). The certificate most hosts hold is taken as the
// intended one, and each host that differs gets one error naming it, sorted
// by host. When no certificate is held by more hosts than every other, there
// is no intended one and every host holding one gets an error. Hosts with no
// certificate always get one, unless no host has any.
func CheckSame(thumbprintByHost map[string]string) []Finding {
	canon := make(map[string]string, len(thumbprintByHost))
	count := map[string]int{}
	for host, t := range thumbprintByHost {
		if n, err := NormalizeThumbprint(t); err == nil {
			t = n
		} else {
			t = strings.TrimSpace(t)
		}
		canon[host] = t
		if t != "" {
			count[t]++
		}
	}
	if len(count) == 0 || (len(count) == 1 && count[firstKey(count)] == len(canon)) {
		return nil
	}

	// The majority: the most common thumbprint, if no other is as common.
	tallies := make([]tally, 0, len(count))
	for t, n := range count {
		tallies = append(tallies, tally{t, n})
	}
	slices.SortFunc(tallies, func(a, b tally) int {
		return cmp.Or(cmp.Compare(b.hosts, a.hosts), cmp.Compare(a.thumbprint, b.thumbprint))
	})
	majority := ""
	if len(tallies) == 1 || tallies[0].hosts > tallies[1].hosts {
		majority = tallies[0].thumbprint
	}

	hosts := make([]string, 0, len(canon))
	for h := range canon {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	total := len(hosts)

	var fs []Finding
	for _, h := range hosts {
		t := canon[h]
		if t != "" && t == majority {
			continue
		}
		has := "no token-issuer certificate"
		if t != "" {
			has = "certificate " + t
		}
		var msg string
		if majority != "" {
			msg = fmt.Sprintf("front end %s has %s, but %d of %d front ends have %s; every front end must have the same certificate", h, has, count[majority], total, majority)
		} else {
			msg = fmt.Sprintf("front end %s has %s, and no certificate is on a majority of the %d front ends (%s); every front end must have the same certificate", h, has, total, summarize(tallies))
		}
		fs = append(fs, Finding{Rule: RuleSameOnAllFrontEnds, Severity: SeverityError, Message: msg + " (rule " + RuleSameOnAllFrontEnds + ")"})
	}
	return fs
}

func firstKey(m map[string]int) string {
	for k := range m {
		return k
	}
	return ""
}

// HasErrors reports whether any finding has SeverityError.
func HasErrors(fs []Finding) bool {
	return slices.ContainsFunc(fs, func(f Finding) bool { return f.Severity == SeverityError })
}

// sameHost compares DNS names the way DNS does: ignoring case and a final dot.
func sameHost(a, b string) bool {
	return strings.EqualFold(strings.TrimSuffix(a, "."), strings.TrimSuffix(b, "."))
}

func stamp(t time.Time) string {
	return t.UTC().Format(time.RFC3339)
}

// approx renders a duration for people: days when it is two days or more,
// hours when it is an hour or more, else minutes.
func approx(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	case d >= 2*time.Hour:
		return fmt.Sprintf("%d hours", int(d/time.Hour))
	case d >= 2*time.Minute:
		return fmt.Sprintf("%d minutes", int(d/time.Minute))
	default:
		return "moments"
	}
}

var ekuNamesByValue = map[x509.ExtKeyUsage]string{
	x509.ExtKeyUsageAny:                            "any",
	x509.ExtKeyUsageServerAuth:                     "serverAuth",
	x509.ExtKeyUsageClientAuth:                     "clientAuth",
	x509.ExtKeyUsageCodeSigning:                    "codeSigning",
	x509.ExtKeyUsageEmailProtection:                "emailProtection",
	x509.ExtKeyUsageIPSECEndSystem:                 "ipsecEndSystem",
	x509.ExtKeyUsageIPSECTunnel:                    "ipsecTunnel",
	x509.ExtKeyUsageIPSECUser:                      "ipsecUser",
	x509.ExtKeyUsageTimeStamping:                   "timeStamping",
	x509.ExtKeyUsageOCSPSigning:                    "OCSPSigning",
	x509.ExtKeyUsageMicrosoftServerGatedCrypto:     "msSGC",
	x509.ExtKeyUsageNetscapeServerGatedCrypto:      "nsSGC",
	x509.ExtKeyUsageMicrosoftCommercialCodeSigning: "msCodeCom",
	x509.ExtKeyUsageMicrosoftKernelCodeSigning:     "msKernelCodeSigning",
}

func ekuNames(cert *x509.Certificate) string {
	var names []string
	for _, u := range cert.ExtKeyUsage {
		if n, ok := ekuNamesByValue[u]; ok {
			names = append(names, n)
		} else {
			names = append(names, fmt.Sprintf("ExtKeyUsage(%d)", int(u)))
		}
	}
	for _, oid := range cert.UnknownExtKeyUsage {
		names = append(names, oid.String())
	}
	return strings.Join(names, ", ")
}

// tally counts the front ends holding one certificate.
type tally struct {
	thumbprint string
	hosts      int
}

func summarize(tallies []tally) string {
	parts := make([]string, 0, len(tallies))
	for _, t := range tallies {
		parts = append(parts, fmt.Sprintf("%s on %d", t.thumbprint, t.hosts))
	}
	return strings.Join(parts, ", ")
}
