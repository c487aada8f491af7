package reconcile

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// readSingleQuoted reads a PowerShell single-quoted string literal as the
// language specification (section 2.3.5.2) defines it: it starts and ends
// with any single-quote-character, and a single-quote-character doubled
// inside stands for itself. It returns the value and the rest of src.
func readSingleQuoted(t *testing.T, src string) (string, string) {
	t.Helper()
	isQuote := func(r rune) bool { return strings.ContainsRune(singleQuotes, r) }
	r, n := utf8.DecodeRuneInString(src)
	if !isQuote(r) {
		t.Fatalf("literal %q does not start with a single quote", src)
	}
	src = src[n:]
	var b strings.Builder
	for len(src) > 0 {
		r, n := utf8.DecodeRuneInString(src)
		src = src[n:]
		if !isQuote(r) {
			b.WriteRune(r)
			continue
		}
		next, m := utf8.DecodeRuneInString(src)
		if len(src) > 0 && isQuote(next) {
			b.WriteRune(next)
			src = src[m:]
			continue
		}
		return b.String(), src
	}
	t.Fatalf("unterminated literal")
	return "", ""
}

func TestQuoteRoundTripsHostileValues(t *testing.T) {
	hostile := []string{
		"", "plain", "it's", "‘curly’", "‚low‛", `"double"`, "“typographic”", "$(Remove-Item C:\\ -Recurse)",
		"`backtick`n", "a; Stop-Computer", "a | Out-File x", "a & b", "line\nbreak\r\n", "\u202Eevil\u202C",
		"''", "'''", "'; Invoke-Expression 'x", "@(1,2)", "${env:PATH}", "\x00nul",
	}
	for _, v := range hostile {
		q := Quote(v)
		got, rest := readSingleQuoted(t, q)
		if got != v || rest != "" {
			t.Errorf("Quote(%q) = %s reads back as %q with %q left over", v, q, got, rest)
		}
	}
}

func TestCommandRedactsSecretsAndQuotesValues(t *testing.T) {
	op := Op{Cmdlet: "Import-CsCertificate", Params: []Param{
		Str("Identity", "Global"), Raw("Type", "OAuthTokenIssuer"), Secret("Password"), Bool("Confirm", false),
		Date("EffectiveDate", time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)), Switch("Roll"), Str("Path", "it's"),
	}}
	want := `Import-CsCertificate -Identity 'Global' -Type OAuthTokenIssuer -Password <redacted> -Confirm:$false -EffectiveDate ([datetime]'2026-12-02T00:00:00Z') -Roll -Path 'it''s'`
	if got := op.Command(); got != want {
		t.Errorf("Command() =\n%s\nwant\n%s", got, want)
	}
}
