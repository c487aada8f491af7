package atomicfile

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestCleanTempRemovesOnlyWritesLeftovers(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "agent-state.json")
	if err := Write(state, []byte("good"), 0o600); err != nil {
		t.Fatal(err)
	}
	// What a kill between CreateTemp and the rename leaves: Write's own pattern.
	f, err := os.CreateTemp(dir, ".agent-state.json"+tempInfix+"*")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	left := filepath.Base(f.Name())
	keep := []string{"notes.tmp-1", ".hidden", ".x.tmp-abc", ".x.tmp-"}
	for _, n := range keep {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := CleanTemp(dir)
	if err != nil || !slices.Equal(removed, []string{left}) {
		t.Fatalf("CleanTemp = %v, %v; want [%s]", removed, err, left)
	}
	if _, err := os.Stat(f.Name()); !os.IsNotExist(err) {
		t.Errorf("%s is still there: %v", left, err)
	}
	for _, n := range append(keep, "agent-state.json") {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("CleanTemp removed %s, which Write did not make: %v", n, err)
		}
	}
	if got, err := os.ReadFile(state); err != nil || string(got) != "good" {
		t.Errorf("state = %q, %v", got, err)
	}
	if removed, err := CleanTemp(filepath.Join(dir, "missing")); err != nil || removed != nil {
		t.Errorf("CleanTemp(missing dir) = %v, %v; want nothing, no error", removed, err)
	}
}

func TestNormalizeTemp(t *testing.T) {
	a := "write /var/lib/s2s/.agent-state.json.tmp-3141592: read-only file system"
	b := "write /var/lib/s2s/.agent-state.json.tmp-2718281828: read-only file system"
	if NormalizeTemp(a) != NormalizeTemp(b) {
		t.Errorf("NormalizeTemp(%q) = %q, NormalizeTemp(%q) = %q; want equal", a, NormalizeTemp(a), b, NormalizeTemp(b))
	}
	if c := "write /var/lib/s2s/.other.json.tmp-1: read-only file system"; NormalizeTemp(a) == NormalizeTemp(c) {
		t.Errorf("errors about different files normalize equal")
	}
	if s := "no temporary file here"; NormalizeTemp(s) != s {
		t.Errorf("NormalizeTemp changed %q", s)
	}
}
