package rollout

import (
	"strings"
	"testing"
)

// FuzzParseName: a rollout name from an API caller either parses to an id
// that names it back, or is refused naming the value.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{"rollouts/1", "rollouts/-", "rollouts/000012", "rollouts/0", "rollout/1", "rollouts/", "rollouts/18446744073709551616", "rollouts/1/x", ""} {
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
			if name != "rollouts/-" {
				t.Fatalf("%q parsed as the newest", name)
			}
			return
		}
		back, err := ParseName(Name(id))
		if err != nil || back != id {
			t.Fatalf("%q → %d → %q → %d, %v", name, id, Name(id), back, err)
		}
	})
}
