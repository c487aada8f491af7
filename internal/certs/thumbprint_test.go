package certs

import (
	"crypto/x509"
	"regexp"
	"strings"
	"testing"
)

// The fixture certificate's fingerprints as OpenSSL computes them, an
// independent implementation (see testdata/README.md):
//
//	openssl x509 -inform DER -in testdata/contoso.cer -noout -fingerprint -sha1
//	openssl dgst -sha1 -binary testdata/contoso.cer | basenc --base64url  (padding dropped)
const (
	fixtureThumbprint = "C98CBC932FDD92071D62BD6F5B3C7BE24D17A200"
	fixtureX5T        = "yYy8ky_dkgcdYr1vWzx74k0XogA"
)

func mustParse(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestThumbprintAndX5TKnownVector(t *testing.T) {
	cert := mustParse(t, readFile(t, fixtureDER))
	if got := Thumbprint(cert); got != fixtureThumbprint {
		t.Errorf("Thumbprint = %s, want %s", got, fixtureThumbprint)
	}
	if got := X5T(cert); got != fixtureX5T {
		t.Errorf("X5T = %s, want %s", got, fixtureX5T)
	}
}

func TestNormalizeThumbprint(t *testing.T) {
	const want = "3A1F0C5B9E2D4A6F8B7C1D3E5F708192A3B4C5D6"
	tests := []struct {
		name    string
		in      string
		wantErr string // substring of the error; empty for success
	}{
		{name: "canonical", in: want},
		{name: "lower case", in: strings.ToLower(want)},
		{name: "mixed case", in: "3a1F0c5B9e2D4a6F8b7C1d3E5f708192A3b4C5d6"},
		{name: "spaces as in the Windows dialog", in: "3a 1f 0c 5b 9e 2d 4a 6f 8b 7c 1d 3e 5f 70 81 92 a3 b4 c5 d6"},
		{name: "colons as OpenSSL prints", in: "3A:1F:0C:5B:9E:2D:4A:6F:8B:7C:1D:3E:5F:70:81:92:A3:B4:C5:D6"},
		{name: "left-to-right mark copied from Windows", in: "\u200e3a 1f 0c 5b 9e 2d 4a 6f 8b 7c 1d 3e 5f 70 81 92 a3 b4 c5 d6"},
		{name: "surrounding white space and tabs", in: " \t" + want + "\r\n"},
		{name: "byte order mark", in: "\ufeff" + want},
		{name: "empty", in: "", wantErr: `thumbprint "": has 0 hexadecimal digits, want 40`},
		{name: "only a mark", in: "\u200e", wantErr: `thumbprint "\u200e": has 0 hexadecimal digits`}, // escaped, so the user sees it
		{name: "39 digits", in: want[:39], wantErr: `thumbprint "` + want[:39] + `": has 39 hexadecimal digits, want 40`},
		{name: "41 digits", in: want + "0", wantErr: "has 41 hexadecimal digits"},
		{name: "SHA-256 length", in: want + want[:24], wantErr: "has 64 hexadecimal digits"},
		{name: "not hex", in: "3G1F0C5B9E2D4A6F8B7C1D3E5F708192A3B4C5D6", wantErr: `thumbprint "3G1F0C5B9E2D4A6F8B7C1D3E5F708192A3B4C5D6": 'G' is not a hexadecimal digit`},
		{name: "dashes", in: "3A-1F-0C-5B-9E-2D-4A-6F-8B-7C-1D-3E-5F-70-81-92-A3-B4-C5-D6", wantErr: `'-' is not a hexadecimal digit`},
		{name: "invalid UTF-8", in: want[:20] + "\xff" + want[20:], wantErr: "not valid UTF-8"},
		{name: "long value is shortened", in: strings.Repeat("z", 500), wantErr: "… (500 bytes)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizeThumbprint(tt.in)
			if tt.wantErr == "" {
				if err != nil || got != want {
					t.Fatalf("NormalizeThumbprint(%+q) = %q, %v; want %q, nil", tt.in, got, err, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("NormalizeThumbprint(%+q) = %q, nil; want error containing %q", tt.in, got, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NormalizeThumbprint(%+q) error %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestThumbprintRoundTripsThroughNormalize(t *testing.T) {
	b := generate(t, Template{CommonName: "contoso.com", ECDSA: true})
	tp := Thumbprint(b.Cert)
	if !regexp.MustCompile(`^[0-9A-F]{40}$`).MatchString(tp) {
		t.Fatalf("Thumbprint = %q, want 40 upper-case hex digits", tp)
	}
	if n, err := NormalizeThumbprint(strings.ToLower(tp)); err != nil || n != tp {
		t.Errorf("NormalizeThumbprint(lower(%s)) = %q, %v", tp, n, err)
	}
}

var canonicalThumbprint = regexp.MustCompile(`^[0-9A-F]{40}$`)

func FuzzNormalizeThumbprint(f *testing.F) {
	for _, s := range []string{
		"3A1F0C5B9E2D4A6F8B7C1D3E5F708192A3B4C5D6",
		"\u200e3a 1f 0c 5b 9e 2d 4a 6f 8b 7c 1d 3e 5f 70 81 92 a3 b4 c5 d6",
		"3A:1F:0C:5B:9E:2D:4A:6F:8B:7C:1D:3E:5F:70:81:92:A3:B4:C5:D6",
		"", "\xff", "zz", strings.Repeat("a", 41),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := NormalizeThumbprint(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "thumbprint ") {
				t.Fatalf("error %q does not name the thumbprint", err)
			}
			return
		}
		if !canonicalThumbprint.MatchString(got) {
			t.Fatalf("NormalizeThumbprint(%+q) = %q, not 40 upper-case hex digits", s, got)
		}
		if again, err := NormalizeThumbprint(got); err != nil || again != got {
			t.Fatalf("not idempotent: %q -> %q, %v", got, again, err)
		}
		if lower, err := NormalizeThumbprint(strings.ToLower(s)); err != nil || lower != got {
			t.Fatalf("case-sensitive: %+q -> %q, %v; want %q", strings.ToLower(s), lower, err, got)
		}
	})
}
