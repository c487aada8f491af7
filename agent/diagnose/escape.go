package diagnose

import (
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// escaper writes to w with every character a terminal could act on
// escaped: what diagnose prints comes largely from the server diagnosed
// (certificate names, the HTTP status line, the document's fields, error
// texts quoting them), and a hostile server must not be able to move the
// cursor, recolour the screen or reorder text with bidirectional controls.
// Control, format (bidi overrides, zero-width characters) and other
// non-printing characters become \uXXXX, invalid UTF-8 bytes \xNN; newlines
// and tabs pass, as the report's own layout. Each Write is escaped on its
// own; the report writes whole lines.
type escaper struct{ w io.Writer }

// Write escapes p and writes it, reporting len(p) on success.
func (e escaper) Write(p []byte) (int, error) {
	if _, err := io.WriteString(e.w, escape(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// escape is s with non-printing characters escaped (see escaper).
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' || r == '\t' || r == ' ' || unicode.IsPrint(r):
			b.WriteString(s[i : i+size])
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
		i += size
	}
	return b.String()
}
