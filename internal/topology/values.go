package topology

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Values of a topology end up inside cmdlets run on the hosts
// (Set-CsOAuthConfiguration -Realm …, New-CsPartnerApplication -MetadataUrl …,
// Remove-CsPartnerApplication -Identity …) and on operators' terminals, so
// each is checked here against what its field can legitimately hold — a
// DNS name, a GUID, a name of the products' own pattern, a URL path of
// unreserved characters — and every free-text field refuses what could
// change how PowerShell or a terminal reads it. Quoting the values when a
// plan is rendered is a second line of defence, not the only one.

// hostileRune says why r may not appear in any topology value, or "" when
// it may. PowerShell reads the typographic quotes U+2018–U+201E as quotes
// (its tokenizer treats them as ' and "), the bidirectional controls make
// a terminal show text in another order than it is, and control characters
// (newlines included) and the Unicode line separators end or rewrite lines.
func hostileRune(r rune) string {
	switch {
	case r == utf8.RuneError:
		return "invalid UTF-8"
	case unicode.IsControl(r):
		return "control characters"
	case r == 0x2028 || r == 0x2029:
		return "line separators"
	case r >= 0x202A && r <= 0x202E, r >= 0x2066 && r <= 0x2069, r == 0x200E, r == 0x200F, r == 0x061C:
		return "bidirectional-override characters"
	case r >= 0x2018 && r <= 0x201E:
		return "typographic quotes (PowerShell reads them as quotes)"
	case r == '`':
		return "backticks (PowerShell's escape character)"
	}
	return ""
}

// textProblem says what is wrong with a free-text value, or "" when
// nothing is: no control, bidirectional-override or typographic-quote
// characters, no backtick and no `$(` (PowerShell's subexpression).
func textProblem(s string) string {
	for _, r := range s {
		if why := hostileRune(r); why != "" {
			return fmt.Sprintf("has %s (U+%04X); accepted: printable text without them", why, r)
		}
	}
	if strings.Contains(s, "$(") {
		return "has \"$(\" (PowerShell's subexpression); accepted: printable text without it"
	}
	return ""
}

// CheckText is the check every free-text topology value passes; its error
// names field and the value (escaped).
func CheckText(field, value string) *FieldViolation {
	return violation(field, value, textProblem(value))
}

func violation(field, value, problem string) *FieldViolation {
	if problem == "" {
		return nil
	}
	return &FieldViolation{Field: field, Value: value, Description: problem}
}

// realmProblem says what is wrong with a realm for product p, or "";
// PRODUCT_UNSPECIFIED for a realm s2strust sets, which is never "*".
// A realm is a DNS name (Lync's default is the default SIP domain) or a
// GUID (SharePoint's default is the farm id; the hybrid realm is the
// tenant id). Exchange publishes "*" in its metadata, so "*" is a realm
// only for Exchange.
// https://learn.microsoft.com/powershell/module/skypeforbusiness/set-csoauthconfiguration
// https://learn.microsoft.com/powershell/module/sharepoint-server/set-spauthenticationrealm
func realmProblem(s string, p pb.Product) string {
	if why := textProblem(s); why != "" {
		return why
	}
	switch {
	case s == "*" && p == pb.Product_PRODUCT_EXCHANGE:
		return ""
	case s == "*":
		return `"*" is only what Exchange publishes in its metadata, not a realm to set; accepted: a DNS name such as contoso.com or a GUID`
	case isGUID(s), isDNSName(strings.ToLower(s), false):
		return ""
	}
	return "not a realm; accepted: a DNS name such as contoso.com, or a GUID such as a SharePoint farm id"
}

// checkRealm checks the realm value of field for a deployment of product p
// (PRODUCT_UNSPECIFIED when unknown: "*" is then refused).
func checkRealm(field, value string, p pb.Product) *FieldViolation {
	return violation(field, value, realmProblem(value, p))
}

// ValidRealm reports whether s may be the realm of a deployment of product
// p, and if not, why, naming the value.
func ValidRealm(s string, p pb.Product) error {
	if why := realmProblem(s, p); why != "" {
		return fmt.Errorf("realm %q: %s", s, why)
	}
	return nil
}

// isGUID reports whether s is a GUID in its usual 8-4-4-4-12 hex form.
func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range []byte(s) {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !isHex(c) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// maxPartnerIdentity bounds a partner identity's length.
const maxPartnerIdentity = 128

// partnerIdentityProblem says what is wrong with a partner identity (a
// removePartners entry), or "". The products name partner applications
// with letters, digits, '.', '-' and '_' (microsoft.exchange,
// microsoft.sharepoint, the seed's app); Lync's -Identity is an
// XdsGlobalRelativeIdentity, not free text.
// https://learn.microsoft.com/powershell/module/skypeforbusiness/remove-cspartnerapplication
func partnerIdentityProblem(s string) string {
	if why := textProblem(s); why != "" {
		return why
	}
	if namePattern(s, maxPartnerIdentity) {
		return ""
	}
	return fmt.Sprintf("a partner identity is 1-%d letters, digits, '.', '-' or '_', starting with a letter or digit, e.g. app or microsoft.exchange", maxPartnerIdentity)
}

// maxSecretName bounds a secret name's length.
const maxSecretName = 128

// secretNameProblem says what is wrong with the name of a secret, or "".
func secretNameProblem(s string) string {
	if why := textProblem(s); why != "" {
		return why
	}
	if namePattern(s, maxSecretName) {
		return ""
	}
	return fmt.Sprintf("a secret name is 1-%d letters, digits, '.', '-' or '_', starting with a letter or digit, e.g. oauth-2026", maxSecretName)
}

// namePattern reports whether s is 1-max ASCII letters, digits, '.', '-'
// and '_', starting with a letter or digit.
func namePattern(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i, c := range []byte(s) {
		alnum := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if !alnum && (i == 0 || (c != '.' && c != '-' && c != '_')) {
			return false
		}
	}
	return true
}

// urlPathProblem says what is wrong with an escaped URL path, or "": a
// path holds only RFC 3986 unreserved characters and '/', so nothing in it
// needs escaping or quoting anywhere it goes (no '%', quotes, '$', ';', …).
// https://www.rfc-editor.org/rfc/rfc3986#section-2.3
func urlPathProblem(path string) string {
	for _, c := range []byte(path) {
		if !isUnreserved(c) && c != '/' {
			return fmt.Sprintf("its path has %q; accepted: a path of letters, digits, '-', '.', '_', '~' and '/'", rune(c))
		}
	}
	return ""
}

func isUnreserved(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~'
}

// addProblem records a violation of field when problem is not "".
func (v *validator) addProblem(field, value, problem string) bool {
	if problem == "" {
		return false
	}
	v.add(field, value, "%s", problem)
	return true
}

// urlProblem checks the path and query of a raw absolute URL that
// url.Parse accepted, or returns "". The query may add '=' and '&' to the
// path's characters.
func urlProblem(raw, what string) string {
	rest := raw[strings.Index(raw, "//")+2:]
	i := strings.IndexAny(rest, "/?")
	if i < 0 {
		return ""
	}
	rest = rest[i:]
	path, query, _ := strings.Cut(rest, "?")
	if why := urlPathProblem(path); why != "" {
		return article(what) + ": " + why
	}
	for _, c := range []byte(query) {
		if !isUnreserved(c) && c != '/' && c != '=' && c != '&' {
			return fmt.Sprintf("%s: its query has %q; accepted: letters, digits, '-', '.', '_', '~', '/', '=' and '&'", article(what), rune(c))
		}
	}
	return ""
}
