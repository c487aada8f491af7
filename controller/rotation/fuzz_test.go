package rotation

import (
	"strings"
	"testing"
)

// FuzzParseName: a rotation name from an API caller either parses to an
// id that names it back, or is refused naming the field.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{"rotations/1", "rotations/-", "rotations/0007", "rotations/0", "rotation/1", "rotations/", "rotations/18446744073709551616", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		id, err := ParseName(name)
		if err != nil {
			if !strings.Contains(err.Error(), "name") {
				t.Fatalf("error %q does not name the field", err)
			}
			return
		}
		if id == 0 {
			if name != "rotations/-" {
				t.Fatalf("%q parsed as the newest", name)
			}
			return
		}
		if back, err := ParseName(Name(id)); err != nil || back != id {
			t.Fatalf("%q → %d → %q → %d, %v", name, id, Name(id), back, err)
		}
	})
}

// FuzzParseSecretRef: a secret reference from an administrator either
// parses to a name and version that SecretRef writes back as the same
// reference, or is refused quoting it.
func FuzzParseSecretRef(f *testing.F) {
	for _, s := range []string{"oauth-2026", "oauth-2026@v2", "oauth-2026@3", "oauth-2026@v0", "@v1", "a@b@v1", "x@v", "x@v18446744073709551616", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		name, v, err := ParseSecretRef(ref)
		if err != nil {
			if !strings.Contains(err.Error(), "NAME@vN") {
				t.Fatalf("error %q does not say the form", err)
			}
			return
		}
		if v == 0 {
			if name != ref || strings.Contains(ref, "@") {
				t.Fatalf("%q → %q, newest", ref, name)
			}
			return
		}
		n2, v2, err := ParseSecretRef(SecretRef(name, v))
		if err != nil || n2 != name || v2 != v {
			t.Fatalf("%q → %q %d → %q → %q %d, %v", ref, name, v, SecretRef(name, v), n2, v2, err)
		}
	})
}
