// Package secretbox encrypts secrets at rest — PFX files and their passwords
// in etcd — with AES-256-GCM under a key kept outside etcd, in a file only
// its owner can read.
//
// A sealed value is a version byte, a random 12-byte nonce and the GCM
// ciphertext with its tag. The additional data passed to Seal and Open (the
// etcd key name) is authenticated but not stored, so a sealed value copied to
// another etcd key no longer opens.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// KeySize is the size of a secretbox key: AES-256.
const KeySize = 32

// version1 marks AES-256-GCM with a 12-byte random nonce.
const version1 byte = 1

const nonceSize = 12

// Overhead is how many bytes Seal adds to a plaintext.
const Overhead = 1 + nonceSize + 16

// ErrOpen is what Open wraps when a sealed value does not authenticate: it was
// changed, or the key or additional data differ from those it was sealed with.
var ErrOpen = errors.New("message authentication failed: the value was altered, or the key or additional data differ")

// Seal encrypts and authenticates plaintext under key, binding it to
// additionalData. Each call draws a fresh random nonce.
func Seal(key, plaintext, additionalData []byte) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	out := make([]byte, 1+nonceSize, Overhead+len(plaintext))
	out[0] = version1
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("seal: draw nonce: %w", err)
	}
	return aead.Seal(out, out[1:1+nonceSize], plaintext, adFor(version1, additionalData)), nil
}

// Open authenticates and decrypts a value made by Seal with the same key and
// additionalData. A value that was changed, or a different key or additional
// data, gives an error wrapping ErrOpen.
func Open(key, sealed, additionalData []byte) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, fmt.Errorf("open sealed value: %w", err)
	}
	if len(sealed) < Overhead {
		return nil, fmt.Errorf("open sealed value: %d bytes is shorter than the %d-byte minimum", len(sealed), Overhead)
	}
	if sealed[0] != version1 {
		return nil, fmt.Errorf("open sealed value: unknown format version %d", sealed[0])
	}
	plain, err := aead.Open(nil, sealed[1:1+nonceSize], sealed[1+nonceSize:], adFor(sealed[0], additionalData))
	if err != nil {
		return nil, fmt.Errorf("open sealed value: %w", ErrOpen)
	}
	return plain, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("key is %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// adFor authenticates the version byte along with the caller's additional
// data, so a value cannot be relabelled as another format.
func adFor(version byte, additionalData []byte) []byte {
	ad := make([]byte, 0, 1+len(additionalData))
	ad = append(ad, version)
	return append(ad, additionalData...)
}
