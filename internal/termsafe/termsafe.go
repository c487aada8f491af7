// Package termsafe makes text that came from elsewhere — an agent, a
// metadata server, a file — safe to show on an operator's terminal. Such
// text may carry escape sequences that a terminal acts on (clearing the
// screen, rewriting a line, setting the window title), line breaks that
// forge table rows or log lines, and bidirectional controls or invisible
// characters that make a terminal show something other than what the text
// is. Every CLI table and message renders outside strings through String or
// Text, one function for all, so none is forgotten.
package termsafe

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// String returns s with every character escaped that a terminal would act
// on or that would make it show other text than s holds: C0 and C1 control
// characters and DEL (as \n, \r, \t, \x1b …), the Unicode line and
// paragraph separators, the bidirectional controls (U+202A–U+202E,
// U+2066–U+2069, U+200E, U+200F, U+061C) and every other invisible format
// character (Unicode category Cf, such as U+200B or U+FEFF), as \u202e;
// and bytes that are not UTF-8, as \xff. Everything else, letters of any
// script included, is unchanged, and s is returned as is when nothing
// needs escaping. A backslash is not escaped: the output is for reading,
// not for parsing back.
func String(s string) string { return escape(s, false) }

// Text is String for messages of several lines: it keeps '\n' and escapes
// everything else String does.
func Text(s string) string { return escape(s, true) }

// Strings applies String to each element, for lists joined by the caller.
func Strings(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = String(s)
	}
	return out
}

func escape(s string, keepNewlines bool) string {
	i := strings.IndexFunc(s, func(r rune) bool { return unsafe(r, keepNewlines) })
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	b.WriteString(s[:i])
	for rest := s[i:]; rest != ""; {
		r, n := utf8.DecodeRuneInString(rest)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, rest[0])
		case !unsafe(r, keepNewlines):
			b.WriteString(rest[:n])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r <= 0xFFFF:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
		rest = rest[n:]
	}
	return b.String()
}

// unsafe reports whether r must be escaped.
func unsafe(r rune, keepNewlines bool) bool {
	switch {
	case r == '\n':
		return !keepNewlines
	case r == utf8.RuneError:
		// Invalid UTF-8 decodes to RuneError; a real U+FFFD is harmless
		// but is escaped too, which keeps the loop simple.
		return true
	case unicode.IsControl(r), r == '\u2028', r == '\u2029':
		return true
	case unicode.Is(unicode.Cf, r):
		// Cf holds the bidirectional controls (U+202A–U+202E,
		// U+2066–U+2069, U+200E, U+200F, U+061C) and the other invisible
		// format characters.
		return true
	}
	return false
}
