package secretbox

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"

	"github.com/s2strust/s2strust/internal/atomicfile"
)

// LoadOrCreateKey returns the key stored at path, creating it when the file
// does not exist: KeySize random bytes in a file of mode 0600, in a directory
// created with mode 0700 if missing, written atomically so that a crash never
// leaves a partial key behind. It refuses a file that is not exactly KeySize
// bytes and, on Unix, one that its group or others may access.
//
// Creation is not exclusive: two processes creating the same missing key at
// once would each get a different key and only one survives. Run one
// controller per key file.
func LoadOrCreateKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("load encryption key: %w", err)
	}
	defer f.Close()

	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load encryption key %s: %w", path, err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("load encryption key %s: not a regular file (%s)", path, info.Mode().Type())
	}
	if runtime.GOOS != "windows" {
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("load encryption key %s: mode %04o lets group or others access it; it must be readable by its owner only (chmod 600 %s)", path, perm, path)
		}
	}
	if info.Size() != KeySize {
		return nil, fmt.Errorf("load encryption key %s: file is %d bytes, want %d; it is not a key this program wrote", path, info.Size(), KeySize)
	}
	key := make([]byte, KeySize)
	if _, err := io.ReadFull(f, key); err != nil {
		return nil, fmt.Errorf("load encryption key %s: %w", path, err)
	}
	// The size was checked on the open file; a file growing underneath is
	// still refused rather than half read.
	if n, _ := f.Read(make([]byte, 1)); n != 0 {
		return nil, fmt.Errorf("load encryption key %s: file grew while being read", path)
	}
	return key, nil
}

func createKey(path string) ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("create encryption key %s: %w", path, err)
	}
	if err := atomicfile.Write(path, key, 0o600); err != nil {
		return nil, fmt.Errorf("create encryption key: %w", err)
	}
	return key, nil
}
