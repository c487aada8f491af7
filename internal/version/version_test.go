package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	got := String("s2s-agent")
	if !strings.HasPrefix(got, "s2s-agent "+Release+" ("+runtime.Version()) || !strings.HasSuffix(got, ")") {
		t.Errorf("String = %q", got)
	}
}
