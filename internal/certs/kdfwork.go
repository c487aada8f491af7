package certs

import (
	"encoding/asn1"
	"math/big"
)

// MaxPFXIterations bounds the key-derivation work a PFX file may ask for: the
// sum of the iteration counts of its MAC and of every password-based
// encryption in it, those of key bags inside encrypted safes included (and
// the loader's own decryption of those safes to see them; see
// checkEncryptedSafes). Windows and OpenSSL write about 2,000 per derivation, so
// a file needs some 6,000; the bound is a hundred and fifty times that and
// costs about a second of CPU. Without it, a file naming 2³¹ iterations (the
// MAC is checked with the file's own parameters before anything else) would
// hold a CPU for many minutes.
const MaxPFXIterations = 1_000_000

// maxDERDepth bounds how deeply pfxIterations descends.
const maxDERDepth = 24

// pfxIterations adds up the iteration counts a PKCS#12 file declares. It
// walks the DER generically, descending into constructed values and into
// OCTET STRINGs that hold exactly one DER SEQUENCE (the authenticated safe and
// unencrypted safe contents do; a salt, digest or ciphertext practically never
// does), and counts each INTEGER that directly
// follows an OCTET STRING inside a SEQUENCE: that is the shape of MacData
// (macSalt, iterations), of PKCS#12 PBE parameters (salt, iterations) and of
// PBKDF2 parameters (salt, iterationCount), the places RFC 7292 and RFC 8018
// keep iteration counts. Encrypted content is opaque to it: what an
// encrypted safe declares inside, checkEncryptedSafes counts. It stops
// counting once the total passes limit, and quietly skips what does not
// parse: go-pkcs12 reports malformed input properly.
func pfxIterations(der []byte, limit int64) int64 {
	total, _ := walkIterations(der, limit)
	return total
}

// walkIterations is pfxIterations that also returns the largest single
// count it met (nil when none), for messages.
func walkIterations(der []byte, limit int64) (total int64, largest *big.Int) {
	note := func(n *big.Int) {
		if largest == nil || n.Cmp(largest) > 0 {
			largest = n
		}
	}
	var walk func(b []byte, depth int)
	walk = func(b []byte, depth int) {
		if depth > maxDERDepth {
			return
		}
		var prev asn1.RawValue
		for i := 0; len(b) > 0 && total <= limit; i++ {
			var v asn1.RawValue
			rest, err := asn1.Unmarshal(b, &v)
			if err != nil {
				return
			}
			b = rest
			if i > 0 && v.Class == asn1.ClassUniversal && v.Tag == asn1.TagInteger &&
				prev.Class == asn1.ClassUniversal && prev.Tag == asn1.TagOctetString && !prev.IsCompound {
				n := new(big.Int).SetBytes(v.Bytes) // negative counts read as large: refused too
				note(n)
				if !n.IsInt64() || n.Int64() > limit {
					total = limit + 1
					return
				}
				total += n.Int64()
			}
			switch {
			case v.IsCompound:
				walk(v.Bytes, depth+1)
			case v.Class == asn1.ClassUniversal && v.Tag == asn1.TagOctetString && isOneSequence(v.Bytes):
				walk(v.Bytes, depth+1)
			}
			prev = v
		}
	}
	walk(der, 0)
	return total, largest
}

// isOneSequence reports whether b is exactly one DER SEQUENCE.
func isOneSequence(b []byte) bool {
	var v asn1.RawValue
	rest, err := asn1.Unmarshal(b, &v)
	return err == nil && len(rest) == 0 && v.Class == asn1.ClassUniversal && v.Tag == asn1.TagSequence && v.IsCompound
}
