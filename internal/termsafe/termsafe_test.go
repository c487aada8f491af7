package termsafe

import (
	"strings"
	"testing"
	"unicode"
)

func TestString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"fe01.contoso.com", "fe01.contoso.com"},
		{"日本語 é ‘quoted’ “q” $(x) `y`", "日本語 é ‘quoted’ “q” $(x) `y`"},
		{"a\nb\r\tc", `a\nb\r\tc`},
		{"\x1b[2J\x1b]0;pwned\x07", `\x1b[2J\x1b]0;pwned\x07`},
		{"del\x7f c1\u0085\u009b", `del\x7f c1\u0085\u009b`},
		{"evil\u202egnp.exe", `evil\u202egnp.exe`},
		{"\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u200e\u200f\u061c", `\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u200e\u200f\u061c`},
		{"zero\u200bwidth\ufeff", `zero\u200bwidth\ufeff`},
		{"line\u2028sep\u2029", `line\u2028sep\u2029`},
		{"tag\U000e0041", `tag\U000e0041`},
		{"bad\xff\xfe utf8", `bad\xff\xfe utf8`},
	}
	for _, tc := range tests {
		if got := String(tc.in); got != tc.want {
			t.Errorf("String(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
	if got := Text("one\ntwo\x1b[0m\u202e"); got != "one\ntwo\\x1b[0m\\u202e" {
		t.Errorf("Text kept or escaped the wrong things: %q", got)
	}
}

// FuzzString: whatever comes in, nothing a terminal acts on comes out, and
// safe text passes unchanged.
func FuzzString(f *testing.F) {
	for _, s := range []string{"", "plain", "a\nb", "\x1b[31m", "\u202e", "\xff", "日本"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := String(s)
		for _, r := range out {
			if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029' || r == '\ufffd' {
				t.Fatalf("String(%q) = %q still holds %U", s, out, r)
			}
		}
		if !strings.ContainsFunc(s, func(r rune) bool { return unsafe(r, false) }) && out != s {
			t.Fatalf("String(%q) = %q changed safe text", s, out)
		}
		if strings.Contains(Text(s), "\x1b") {
			t.Fatalf("Text(%q) holds an escape character", s)
		}
	})
}
