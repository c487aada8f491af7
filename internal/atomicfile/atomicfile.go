// Package atomicfile writes files so that a reader, or a process restarted
// after a crash, sees either the old content or the new, never a mix.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// tempInfix is in the name of every temporary file Write makes:
// ".<name>.tmp-<random digits>" (os.CreateTemp's pattern).
const tempInfix = ".tmp-"

// tempName matches the random part of Write's temporary file names, in
// file names and in error texts that quote them.
var tempName = regexp.MustCompile(`\.tmp-[0-9]+`)

// NormalizeTemp replaces the random part of Write's temporary file names
// in s with "*", so two errors that differ only by the temporary file they
// name compare equal.
func NormalizeTemp(s string) string { return tempName.ReplaceAllString(s, tempInfix+"*") }

// isTemp reports whether name is one of Write's temporary files.
func isTemp(name string) bool {
	i := strings.LastIndex(name, tempInfix)
	if !strings.HasPrefix(name, ".") || i <= 0 {
		return false
	}
	digits := name[i+len(tempInfix):]
	if digits == "" {
		return false
	}
	for _, r := range digits {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// CleanTemp removes the temporary files Write left in dir when the
// process was killed mid-write (before its rename). Call it at start,
// before anything writes in dir: a running Write's file would go too. It
// returns the names removed; a missing dir is no error.
func CleanTemp(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("clean temporary files in %s: %w", dir, err)
	}
	var removed []string
	for _, e := range entries {
		if !e.Type().IsRegular() || !isTemp(e.Name()) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("clean temporary files in %s: %w", dir, err)
		}
		removed = append(removed, e.Name())
	}
	return removed, nil
}

// Write replaces path with data: it writes a temporary file in the same
// directory with the given mode, syncs it, renames it over path and syncs
// the directory.
func Write(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+tempInfix+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // best effort: not supported on every platform
		d.Close()
	}
	return nil
}
