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

// String is "<name> <release> (<go version>[, commit <rev>[ modified]])".
func String(name string) string {
	s := fmt.Sprintf("%s %s (%s", name, Release, runtime.Version())
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, kv := range bi.Settings {
			switch kv.Key {
			case "vcs.revision":
				rev = kv.Value
			case "vcs.modified":
				if kv.Value == "true" {
					dirty = " modified"
				}
			}
		}
		if rev != "" {
			s += ", commit " + rev + dirty
		}
	}
	return s + ")"
}
