// Package certs handles the token-issuer certificate that S2S OAuth depends
// on: thumbprints in the form Windows shows them, PFX files as operators
// export them, certificate generation for the demo and tests, and the
// Lync / Skype for Business certificate rules (SPEC.md §2) checked before
// anything is rolled out.
//
// Nothing in this package ever puts key material or a password into an error,
// a Finding or a [pb.CertificateInfo].
package certs

import (
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// thumbprintLen is the number of hex digits in a SHA-1 thumbprint.
const thumbprintLen = 2 * sha1.Size

// Thumbprint returns the certificate's thumbprint as Windows shows it: the
// upper-case hex SHA-1 of its DER encoding, without separators.
func Thumbprint(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// X5T returns the certificate's x5t as used in auth metadata documents and in
// the header of S2S actor tokens: the base64url encoding, without padding, of
// the SHA-1 of its DER encoding.
func X5T(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// NormalizeThumbprint turns a thumbprint as a user typed or pasted it into the
// canonical form [Thumbprint] returns. It accepts lower case and ignores
// white space, colons (as OpenSSL prints fingerprints) and invisible Unicode
// format characters — notably U+200E LEFT-TO-RIGHT MARK, which the Windows
// certificate dialog puts in front of a thumbprint copied from it. What
// remains must be exactly 40 hexadecimal digits; otherwise the error quotes
// the value as given, with invisible characters escaped, so the user can see
// what is wrong with it.
func NormalizeThumbprint(s string) (string, error) {
	var b strings.Builder
	b.Grow(thumbprintLen)
	digits := 0
	for i, r := range s {
		switch {
		case r == ':' || unicode.IsSpace(r) || unicode.Is(unicode.Cf, r):
			continue
		case r == utf8.RuneError && !validAt(s, i):
			return "", fmt.Errorf("thumbprint %s: not valid UTF-8", quoteValue(s))
		case isHexDigit(r):
			digits++
			if digits <= thumbprintLen {
				b.WriteRune(unicode.ToUpper(r))
			}
		default:
			return "", fmt.Errorf("thumbprint %s: %q is not a hexadecimal digit; want 40 hexadecimal digits (a SHA-1 thumbprint)", quoteValue(s), r)
		}
	}
	if digits != thumbprintLen {
		return "", fmt.Errorf("thumbprint %s: has %d hexadecimal digits, want 40 (a SHA-1 thumbprint)", quoteValue(s), digits)
	}
	return b.String(), nil
}

// validAt reports whether the rune at byte offset i of s is a correctly
// encoded U+FFFD rather than an invalid byte that range decoded as one.
func validAt(s string, i int) bool {
	_, size := utf8.DecodeRuneInString(s[i:])
	return size == 3
}

func isHexDigit(r rune) bool {
	return ('0' <= r && r <= '9') || ('a' <= r && r <= 'f') || ('A' <= r && r <= 'F')
}

// maxQuotedValue bounds how much of a user's value an error message repeats.
const maxQuotedValue = 100

// quoteValue quotes s for an error message, escaping invisible characters and
// shortening very long values.
func quoteValue(s string) string {
	if len(s) <= maxQuotedValue {
		return fmt.Sprintf("%+q", s)
	}
	cut := maxQuotedValue
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%+q… (%d bytes)", s[:cut], len(s))
}
