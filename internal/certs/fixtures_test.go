package certs

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// update regenerates the Go-made fixtures in testdata:
//
//	go test ./internal/certs/ -run TestFixtures -update
//
// testdata/README.md says how the OpenSSL-made ones derive from them.
var update = flag.Bool("update", false, "regenerate testdata fixtures")

const (
	// fixturePassword protects the PFX fixtures; it is a test value, not a
	// secret.
	fixturePassword = "fixture-password"
	fixturePFX      = "testdata/contoso.pfx"
	fixtureDER      = "testdata/contoso.cer"
	// Made by OpenSSL from fixturePFX; see testdata/README.md.
	fixtureOpenSSL3DES   = "testdata/openssl-3des-sha1mac.pfx"
	fixtureOpenSSLNoKeys = "testdata/openssl-nokeys.pfx"
)

// fixtureNow lies within the fixture certificate's validity.
var fixtureNow = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// fixtureRequirements are what the fixture certificate satisfies.
var fixtureRequirements = Requirements{
	DefaultSIPDomain:     "contoso.com",
	AdditionalSIPDomains: []string{"fabrikam.com"},
	Now:                  fixtureNow,
}

// TestFixtures checks that the committed PFX fixture loads and satisfies every
// rule, and with -update writes it (and its certificate's DER) anew.
func TestFixtures(t *testing.T) {
	if *update {
		b, err := Generate(Template{
			CommonName: "contoso.com",
			DNSNames:   []string{"contoso.com", "fabrikam.com", "lyncpool.contoso.com"},
			NotBefore:  time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
			NotAfter:   time.Date(2035, 1, 1, 0, 0, 0, 0, time.UTC),
		})
		if err != nil {
			t.Fatal(err)
		}
		data, err := EncodePFX(b, fixturePassword)
		if err != nil {
			t.Fatal(err)
		}
		for path, content := range map[string][]byte{fixturePFX: data, fixtureDER: b.Cert.Raw} {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, content, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("wrote %s and %s; regenerate the OpenSSL fixtures as testdata/README.md says", fixturePFX, fixtureDER)
	}

	b, err := LoadPFX(readFile(t, fixturePFX), fixturePassword)
	if err != nil {
		t.Fatalf("LoadPFX(%s): %v", fixturePFX, err)
	}
	if fs := Check(b.Cert, b.Key != nil, fixtureRequirements); len(fs) != 0 {
		t.Errorf("Check(fixture) = %v, want no findings", fs)
	}
	if der := readFile(t, fixtureDER); !b.Cert.Equal(mustParse(t, der)) {
		t.Errorf("%s is not the certificate in %s", fixtureDER, fixturePFX)
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
