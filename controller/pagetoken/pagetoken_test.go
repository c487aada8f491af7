package pagetoken

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/s2strust/s2strust/internal/topology"
)

func TestRoundTrip(t *testing.T) {
	for _, c := range []string{"", "fe01.contoso.com", "dep\x00host", strings.Repeat("x", 300)} {
		tok := Encode("hosts", c)
		got, err := Decode("hosts", tok)
		if err != nil || got != c {
			t.Errorf("Decode(Encode(%q)) = %q, %v", c, got, err)
		}
		if strings.Contains(tok, "contoso") {
			t.Errorf("token %q shows its cursor", tok)
		}
	}
}

func TestDecodeRefuses(t *testing.T) {
	good := Encode("hosts", "fe01.contoso.com")
	flipped := []byte(good)
	flipped[5] ^= 1
	for name, tc := range map[string]struct{ kind, tok, want string }{
		"not base64":    {"hosts", "!!!", "not base64url"},
		"too short":     {"hosts", "AQ", "not a page token"},
		"edited":        {"hosts", string(flipped), "checksum mismatch"},
		"truncated":     {"hosts", good[:len(good)-2], ""},
		"other list":    {"secrets", good, `another list ("hosts")`},
		"plain number":  {"revisions", "12345", ""},
		"wrong version": {"hosts", "AmhcdHMAeHh4eHh4eHh4", "not a page token"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Decode(tc.kind, tc.tok)
			var te *topology.Error
			if !errors.As(err, &te) || len(te.Violations) != 1 || te.Violations[0].Field != "page_token" || te.Violations[0].Value != tc.tok {
				t.Fatalf("Decode(%q) = %v, want a violation of page_token with the token", tc.tok, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

func TestSize(t *testing.T) {
	for _, c := range []struct {
		in   int32
		want int
	}{{0, 50}, {1, 1}, {50, 50}, {1000, 1000}, {1001, 1000}, {1 << 30, 1000}} {
		if got, err := Size(c.in, 50, 1000); err != nil || got != c.want {
			t.Errorf("Size(%d) = %d, %v, want %d", c.in, got, err, c.want)
		}
	}
	_, err := Size(-1, 50, 1000)
	var te *topology.Error
	if !errors.As(err, &te) || te.Violations[0].Field != "page_size" || te.Violations[0].Value != "-1" {
		t.Errorf("Size(-1) = %v, want a violation of page_size", err)
	}
}

// FuzzDecode: page tokens come from callers; Decode never panics and
// accepts only what Encode made.
func FuzzDecode(f *testing.F) {
	f.Add("hosts", Encode("hosts", "fe01.contoso.com"))
	f.Add("hosts", "")
	f.Add("audit", "AQ")
	f.Fuzz(func(t *testing.T, kind, tok string) {
		c, err := Decode(kind, tok)
		if err == nil && Encode(kind, c) != tok {
			t.Fatalf("Decode(%q, %q) = %q, which encodes to %q", kind, tok, c, Encode(kind, c))
		}
	})
}

func TestAll(t *testing.T) {
	pages := map[string]string{"": "a", "a": "b", "b": ""}
	var got []string
	err := All(context.Background(), func(_ context.Context, tok string) (string, error) {
		got = append(got, tok)
		return pages[tok], nil
	})
	if err != nil || strings.Join(got, ",") != ",a,b" {
		t.Errorf("All asked for %q (%v), want the three pages", got, err)
	}
	n := 0
	err = All(context.Background(), func(context.Context, string) (string, error) { n++; return "same", nil })
	if err == nil || n != 2 {
		t.Errorf("a token returned twice: %d calls, %v", n, err)
	}
	boom := errors.New("boom")
	if err := All(context.Background(), func(context.Context, string) (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Errorf("error of a page: %v", err)
	}
}
