// Package version is what both binaries say of themselves: s2strust's
// release and, when the binary was built from a checkout, its commit.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Release is s2strust's version, which agents also send in their Hello.
const Release = "0.1.0"

// Info is what a binary says of itself, field by field (version -o json).
type Info struct {
	Name    string `json:"name"`
	Release string `json:"release"`
	Go      string `json:"go"`
	// Commit is the checkout's revision, empty when the build did not
	// record one; Modified says the checkout had uncommitted changes.
	Commit   string `json:"commit"`
	Modified bool   `json:"modified"`
}

// Get is name's Info.
func Get(name string) Info {
	i := Info{Name: name, Release: Release, Go: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, kv := range bi.Settings {
			switch kv.Key {
			case "vcs.revision":
				i.Commit = kv.Value
			case "vcs.modified":
				i.Modified = kv.Value == "true"
			}
		}
	}
	return i
}

// String is "<name> <release> (<go version>[, commit <rev>[ modified]])".
func (i Info) String() string {
	s := fmt.Sprintf("%s %s (%s", i.Name, i.Release, i.Go)
	if i.Commit != "" {
		s += ", commit " + i.Commit
		if i.Modified {
			s += " modified"
		}
	}
	return s + ")"
}

// String is Get(name).String().
func String(name string) string { return Get(name).String() }
