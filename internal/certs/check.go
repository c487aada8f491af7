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

// Rule ids, stable: reports and tests refer to them.
const (
	RuleSubjectCN           = "subject-cn"
	RuleSANDefaultDomain    = "san-default-domain"
	RuleSANAdditionalDomain = "san-additional-domain"
	RuleKeySize             = "key-size"
	RulePrivateKey          = "private-key"
	RuleNotYetValid         = "not-yet-valid"
	RuleExpired             = "expired"
	RuleExpiring            = "expiring"
	RuleServerAuth          = "server-auth"
	RuleSameOnAllFrontEnds  = "same-on-all-front-ends"
)

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
	// certificate (thumbprint and subject), or the hosts, and what is wrong.
	Message string
}

// String formats the finding as "severity rule: message".
func (f Finding) String() string {
	return fmt.Sprintf("%s %s: %s", f.Severity, f.Rule, f.Message)
}

// Requirements are what the deployment asks of its token-issuer certificate.
type Requirements struct {
	// DefaultSIPDomain must be the subject CN and a SAN. Empty skips the
	// subject-cn and san-… rules (the caller has no SIP domain to check).
	DefaultSIPDomain string
	// AdditionalSIPDomains must each be a SAN.
	AdditionalSIPDomains []string
	// Now is the time validity is judged at; zero means time.Now(). Pass the
	// injected clock's time.
	Now time.Time
	// ExpiryWarning is how long before NotAfter the expiring warning starts;
	// zero means DefaultExpiryWarning.
	ExpiryWarning time.Duration
}

// Check applies the Lync / Skype for Business token-issuer certificate rules
// (SPEC.md §2) to cert and returns what it breaks, in a fixed rule order; nil
// means it breaks none. hasPrivateKey says whether the certificate came with
// its private key. Host names compare case-insensitively; a wildcard SAN does
// not stand for a SIP domain, which must be listed itself.
func Check(cert *x509.Certificate, hasPrivateKey bool, req Requirements) []Finding {
	var fs []Finding
	who := describe(cert)
	add := func(rule string, sev Severity, format string, args ...any) {
		fs = append(fs, Finding{
			Rule:     rule,
			Severity: sev,
			Message:  "certificate " + who + ": " + fmt.Sprintf(format, args...),
		})
	}

	if def := req.DefaultSIPDomain; def != "" {
		if !sameHost(cert.Subject.CommonName, def) {
			cn := "empty"
			if cert.Subject.CommonName != "" {
				cn = fmt.Sprintf("%q", cert.Subject.CommonName)
			}
			add(RuleSubjectCN, SeverityError, "subject common name is %s; it must be the default SIP domain %s", cn, def)
		}
		if !slices.ContainsFunc(cert.DNSNames, func(n string) bool { return sameHost(n, def) }) {
			add(RuleSANDefaultDomain, SeverityError, "subject alternative names do not include the default SIP domain %s", def)
		}
		seen := []string{def}
		for _, d := range req.AdditionalSIPDomains {
			if d == "" || slices.ContainsFunc(seen, func(s string) bool { return sameHost(s, d) }) {
				continue
			}
			seen = append(seen, d)
			if !slices.ContainsFunc(cert.DNSNames, func(n string) bool { return sameHost(n, d) }) {
				add(RuleSANAdditionalDomain, SeverityError, "subject alternative names do not include additional SIP domain %s", d)
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

	if !hasPrivateKey {
		add(RulePrivateKey, SeverityError, "private key is missing; the token issuer signs with it, so import the certificate from a PFX that includes it")
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
		fs = append(fs, Finding{Rule: RuleSameOnAllFrontEnds, Severity: SeverityError, Message: msg})
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
