package secretbox

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func testKey(t *testing.T) []byte {
	t.Helper()
	key, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "secret.key"))
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func TestSealOpenRoundTrip(t *testing.T) {
	key := testKey(t)
	ad := []byte("/s2strust/secrets/contoso/pfx")
	for _, plain := range [][]byte{nil, []byte("p"), bytes.Repeat([]byte("pfx bytes "), 10000)} {
		sealed, err := Seal(key, plain, ad)
		if err != nil {
			t.Fatal(err)
		}
		if len(sealed) != len(plain)+Overhead {
			t.Errorf("sealed %d bytes into %d, want %d", len(plain), len(sealed), len(plain)+Overhead)
		}
		// A short plaintext turns up in random bytes by chance (one byte in
		// about one run out of nine), so only a long one is looked for.
		if len(plain) >= 16 && bytes.Contains(sealed, plain) {
			t.Error("sealed value contains the plaintext")
		}
		got, err := Open(key, sealed, ad)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, plain) {
			t.Errorf("Open = %q, want %q", got, plain)
		}
	}
	// A fresh nonce each time: sealing twice never gives the same bytes.
	a, _ := Seal(key, []byte("same"), ad)
	b, _ := Seal(key, []byte("same"), ad)
	if bytes.Equal(a, b) {
		t.Error("two seals of the same plaintext are identical")
	}
}

func TestOpenRejects(t *testing.T) {
	key, otherKey := testKey(t), testKey(t)
	ad := []byte("/s2strust/secrets/contoso/pfx")
	sealed, err := Seal(key, []byte("P@ssw0rd-of-the-pfx"), ad)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		s := bytes.Clone(sealed)
		s[i] ^= 0x01
		return s
	}
	tests := []struct {
		name    string
		key     []byte
		sealed  []byte
		ad      []byte
		wantErr string
		authErr bool
	}{
		{name: "tampered ciphertext", key: key, sealed: flip(1 + 12 + 3), ad: ad, authErr: true},
		{name: "tampered nonce", key: key, sealed: flip(2), ad: ad, authErr: true},
		{name: "tampered tag", key: key, sealed: flip(len(sealed) - 1), ad: ad, authErr: true},
		{name: "wrong additional data (value moved to another etcd key)", key: key, sealed: sealed, ad: []byte("/s2strust/secrets/fabrikam/pfx"), authErr: true},
		{name: "missing additional data", key: key, sealed: sealed, ad: nil, authErr: true},
		{name: "wrong key", key: otherKey, sealed: sealed, ad: ad, authErr: true},
		{name: "unknown version", key: key, sealed: append([]byte{2}, sealed[1:]...), ad: ad, wantErr: "unknown format version 2"},
		{name: "truncated", key: key, sealed: sealed[:Overhead-1], ad: ad, wantErr: "shorter than the 29-byte minimum"},
		{name: "short key", key: key[:16], sealed: sealed, ad: ad, wantErr: "key is 16 bytes, want 32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Open(tt.key, tt.sealed, tt.ad)
			if err == nil {
				t.Fatalf("Open = %q, nil; want an error", got)
			}
			if errors.Is(err, ErrOpen) != tt.authErr {
				t.Errorf("errors.Is(%q, ErrOpen) = %v, want %v", err, !tt.authErr, tt.authErr)
			}
			if !strings.HasPrefix(err.Error(), "open sealed value: ") || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q, want it to contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "P@ssw0rd") {
				t.Errorf("error %q reveals the plaintext", err)
			}
		})
	}
	if _, err := Seal(key[:31], []byte("x"), nil); err == nil || !strings.Contains(err.Error(), "seal: key is 31 bytes, want 32") {
		t.Errorf("Seal with a short key: %v", err)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "controller", "keys")
	path := filepath.Join(dir, "secretbox.key")

	key, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(key) != KeySize || bytes.Equal(key, make([]byte, KeySize)) {
		t.Fatalf("created key %d bytes, all zero %v", len(key), bytes.Equal(key, make([]byte, KeySize)))
	}
	again, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, key) {
		t.Error("second LoadOrCreateKey returned a different key")
	}
	if runtime.GOOS != "windows" {
		assertMode(t, path, 0o600)
		assertMode(t, dir, 0o700)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("key directory holds %d entries, want only the key (no temporary files)", len(entries))
	}
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != want {
		t.Errorf("%s has mode %04o, want %04o", path, got, want)
	}
}

func TestLoadOrCreateKeyRefuses(t *testing.T) {
	key := bytes.Repeat([]byte{0x5a}, KeySize)
	tests := []struct {
		name    string
		setup   func(path string) error
		wantErr string
		unix    bool
	}{
		{
			name:    "readable by group and others",
			setup:   func(p string) error { return writeMode(p, key, 0o644) },
			wantErr: "mode 0644 lets group or others access it; it must be readable by its owner only (chmod 600 ",
			unix:    true,
		},
		{
			name:    "group-readable",
			setup:   func(p string) error { return writeMode(p, key, 0o640) },
			wantErr: "mode 0640",
			unix:    true,
		},
		{
			name:    "too short",
			setup:   func(p string) error { return writeMode(p, key[:16], 0o600) },
			wantErr: "file is 16 bytes, want 32",
		},
		{
			name:    "too long",
			setup:   func(p string) error { return writeMode(p, append(key, '\n'), 0o600) },
			wantErr: "file is 33 bytes, want 32",
		},
		{
			name:    "empty",
			setup:   func(p string) error { return writeMode(p, nil, 0o600) },
			wantErr: "file is 0 bytes, want 32",
		},
		{
			name:    "a directory",
			setup:   func(p string) error { return os.Mkdir(p, 0o700) },
			wantErr: "not a regular file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.unix && runtime.GOOS == "windows" {
				t.Skip("Windows has no Unix permission bits; access is by ACL")
			}
			path := filepath.Join(t.TempDir(), "secretbox.key")
			if err := tt.setup(path); err != nil {
				t.Fatal(err)
			}
			got, err := LoadOrCreateKey(path)
			if err == nil {
				t.Fatalf("LoadOrCreateKey = %d bytes, nil; want an error", len(got))
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q, want it to name %s and contain %q", err, path, tt.wantErr)
			}
			if strings.Contains(err.Error(), string(key[:8])) {
				t.Errorf("error %q contains key bytes", err)
			}
		})
	}
}

func writeMode(path string, data []byte, perm os.FileMode) error {
	if err := os.WriteFile(path, data, perm); err != nil {
		return err
	}
	return os.Chmod(path, perm) // WriteFile's mode is subject to the umask
}
