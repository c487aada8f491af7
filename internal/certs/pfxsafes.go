package certs

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"hash"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// The shrouded key bags of a PFX may sit inside an encrypted safe, where
// their key-derivation parameters are ciphertext until the safe is
// decrypted: pfxIterations cannot see them, and go-pkcs12 decrypts the safe
// and then runs whatever derivation each bag asks for, with no bound. So
// before the library runs, checkEncryptedSafes decrypts each encrypted safe
// itself (a derivation whose count pfxIterations has seen, run under what is
// left of the bound) and counts the iterations declared inside. It reads
// exactly the structures and algorithms go-pkcs12 reads (RFC 7292: PKCS#12
// PBE with 3DES and RC2; RFC 8018: PBES2 with PBKDF2 and AES-CBC); a safe it
// cannot read although the password is right is refused, never passed on
// unchecked.

// The ASN.1 structures of RFC 7292 that checkEncryptedSafes reads, as
// go-pkcs12 reads them.
type (
	pfxPDU struct {
		Version  int
		AuthSafe pfxContentInfo
		MacData  pfxMacData `asn1:"optional"`
	}
	pfxMacData struct {
		Mac struct {
			Algorithm pkix.AlgorithmIdentifier
			Digest    []byte
		}
		MacSalt    []byte
		Iterations int `asn1:"optional,default:1"`
	}
	pfxContentInfo struct {
		ContentType asn1.ObjectIdentifier
		Content     asn1.RawValue `asn1:"tag:0,explicit,optional"`
	}
	pfxEncryptedData struct {
		Version              int
		EncryptedContentInfo pfxEncryptedContentInfo
	}
	pfxEncryptedContentInfo struct {
		ContentType                asn1.ObjectIdentifier
		ContentEncryptionAlgorithm pkix.AlgorithmIdentifier
		EncryptedContent           []byte `asn1:"tag:0,optional"`
	}
	pbeParams struct {
		Salt       []byte
		Iterations int
	}
	pbes2Params struct {
		KDF              pkix.AlgorithmIdentifier
		EncryptionScheme pkix.AlgorithmIdentifier
	}
	pbkdf2Params struct {
		Salt       asn1.RawValue
		Iterations int
		KeyLength  int                      `asn1:"optional"`
		PRF        pkix.AlgorithmIdentifier `asn1:"optional"`
	}
)

var (
	oidDataContentType            = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidEncryptedDataContentType   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 6}
	oidPBEWithSHAAnd3KeyTripleDES = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 12, 1, 3}
	oidPBEWithSHAAnd128BitRC2     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 12, 1, 5}
	oidPBEWithSHAAnd40BitRC2      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 12, 1, 6}
	oidPBES2                      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2                     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidHMACWithSHA1               = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 7}
	oidHMACWithSHA256             = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 9}
	oidHMACWithSHA512             = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 11}
	oidAES128CBC                  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2}
	oidAES192CBC                  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 22}
	oidAES256CBC                  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
)

// unmarshalAll is asn1.Unmarshal refusing trailing data, as go-pkcs12 does.
func unmarshalAll(der []byte, v any) error {
	rest, err := asn1.Unmarshal(der, v)
	if err == nil && len(rest) != 0 {
		err = errors.New("trailing data")
	}
	return err
}

// encryptedSafes returns the encrypted safes of a PFX's authenticated safe,
// in order; nil when the file is not shaped as go-pkcs12 reads it (the
// library then refuses it before any derivation but the MAC's).
func encryptedSafes(data []byte) []pfxEncryptedContentInfo {
	pfx, ok := parsePFX(data)
	if !ok {
		return nil
	}
	var authSafeDER []byte
	if unmarshalAll(pfx.AuthSafe.Content.Bytes, &authSafeDER) != nil {
		return nil
	}
	var authSafe []pfxContentInfo
	if unmarshalAll(authSafeDER, &authSafe) != nil {
		return nil
	}
	var out []pfxEncryptedContentInfo
	for _, ci := range authSafe {
		if !ci.ContentType.Equal(oidEncryptedDataContentType) {
			continue
		}
		var ed pfxEncryptedData
		if unmarshalAll(ci.Content.Bytes, &ed) != nil {
			// go-pkcs12 fails on it too, before decrypting anything.
			return out
		}
		out = append(out, ed.EncryptedContentInfo)
	}
	return out
}

// parsePFX reads the outer PFX structure as go-pkcs12 does; ok is false
// when the library would refuse it before checking the MAC.
func parsePFX(data []byte) (pfx pfxPDU, ok bool) {
	if unmarshalAll(data, &pfx) != nil || pfx.Version != 3 || !pfx.AuthSafe.ContentType.Equal(oidDataContentType) {
		return pfx, false
	}
	return pfx, true
}

// errTooMuchWork is a key derivation over what is left of the bound.
type errTooMuchWork struct{ asked, left int64 }

func (e *errTooMuchWork) Error() string {
	return fmt.Sprintf("asks for %d iterations, and %d are left of the %d allowed", e.asked, e.left, MaxPFXIterations)
}

// pfxPassword is a password in the two encodings PKCS#12 uses.
type pfxPassword struct {
	bmp  []byte // RFC 7292 B.1: BMPString with a zero terminator (PKCS#12 PBE)
	utf8 string // RFC 8018 and Windows (PBES2)
}

// passwordCandidates are the passwords go-pkcs12 may decrypt with: the
// password, and for the empty one also no password at all (the library
// falls back to it when the MAC says so). nil when password cannot be a
// PKCS#12 password, which the library refuses before any derivation.
func passwordCandidates(password string) []pfxPassword {
	var bmp []byte
	for _, r := range password {
		if r > 0xFFFF {
			return nil
		}
		bmp = append(bmp, byte(r>>8), byte(r))
	}
	bmp = append(bmp, 0, 0)
	out := []pfxPassword{{bmp: bmp, utf8: password}}
	if password == "" {
		out = append(out, pfxPassword{bmp: nil, utf8: ""})
	}
	return out
}

// checkEncryptedSafes decrypts each encrypted safe of data with password
// and checks that the key derivations declared inside fit in budget, what
// is left of MaxPFXIterations after those pfxIterations saw. Its own
// decryptions count against budget too, and ctx is checked before each. It
// returns nil when go-pkcs12 may run: every safe is read and its content
// within the bound. A safe that does not decrypt is either the wrong
// password (refused as such) or one it cannot read (refused as corrupt).
func checkEncryptedSafes(ctx context.Context, data []byte, password string, budget int64) error {
	safes := encryptedSafes(data)
	if len(safes) == 0 {
		return nil
	}
	candidates := passwordCandidates(password)
	if candidates == nil {
		return nil
	}
	for i, safe := range safes {
		var plain []byte
		var lastErr error
		for _, pw := range candidates {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("decode PFX: %w", err)
			}
			var cost int64
			plain, cost, lastErr = decryptSafe(safe.ContentEncryptionAlgorithm, safe.EncryptedContent, pw, budget)
			var tooMuch *errTooMuchWork
			if errors.As(lastErr, &tooMuch) {
				return fmt.Errorf("decode PFX: %w: the key derivation of its encrypted safe %d %v; export it again with ordinary settings", ErrCorrupt, i+1, lastErr)
			}
			budget -= cost
			if lastErr == nil && isOneSequence(plain) {
				break
			}
			if lastErr == nil {
				lastErr = errors.New("its content is not a SafeContents structure")
			}
			plain = nil
		}
		if plain == nil {
			if !passwordOpens(data, password) {
				if password != "" && passwordOpens(data, "") {
					return fmt.Errorf("decode PFX: %w: the file has no password", ErrWrongPassword)
				}
				return fmt.Errorf("decode PFX: %w", ErrWrongPassword)
			}
			return fmt.Errorf("decode PFX: %w: its encrypted safe %d cannot be read (%v)", ErrCorrupt, i+1, lastErr)
		}
		total, largest := walkIterations(plain, budget)
		if total > budget {
			return fmt.Errorf("decode PFX: %w: a key bag inside its encrypted safe %d asks for %s iterations, and %d are left of the %d allowed in all; export it again with ordinary settings",
				ErrCorrupt, i+1, largest, budget, MaxPFXIterations)
		}
		budget -= total
	}
	return nil
}

// passwordOpens reports whether password passes the PFX's MAC check. It
// asks go-pkcs12 to read the file as a trust store, which checks the MAC,
// decrypts the encrypted safes (derivations pfxIterations counted) and
// stops at the first bag that is not a certificate, before decrypting any
// key bag: it costs no uncounted derivation.
func passwordOpens(data []byte, password string) bool {
	pfx, ok := parsePFX(data)
	switch {
	case !ok:
		return false
	case len(pfx.MacData.Mac.Algorithm.Algorithm) == 0:
		// Without a MAC, go-pkcs12 takes only the empty password.
		return password == ""
	}
	_, err := pkcs12.DecodeTrustStore(data, password)
	return !errors.Is(err, pkcs12.ErrIncorrectPassword)
}

// decryptSafe decrypts ciphertext encrypted under alg with pw, refusing a
// derivation of more than budget iterations. cost is the iterations it ran.
func decryptSafe(alg pkix.AlgorithmIdentifier, ciphertext []byte, pw pfxPassword, budget int64) (plain []byte, cost int64, err error) {
	var block cipher.Block
	var iv []byte
	switch {
	case alg.Algorithm.Equal(oidPBEWithSHAAnd3KeyTripleDES), alg.Algorithm.Equal(oidPBEWithSHAAnd128BitRC2), alg.Algorithm.Equal(oidPBEWithSHAAnd40BitRC2):
		var p pbeParams
		if err := unmarshalAll(alg.Parameters.FullBytes, &p); err != nil {
			return nil, 0, fmt.Errorf("PBE parameters: %w", err)
		}
		n := int64(max(p.Iterations, 1))
		if n > budget {
			return nil, 0, &errTooMuchWork{asked: n, left: budget}
		}
		keyLen := 24 // 3DES
		switch {
		case alg.Algorithm.Equal(oidPBEWithSHAAnd128BitRC2):
			keyLen = 16
		case alg.Algorithm.Equal(oidPBEWithSHAAnd40BitRC2):
			keyLen = 5
		}
		key := pkcs12KDF(sha1.New, p.Salt, pw.bmp, p.Iterations, 1, keyLen)
		iv = pkcs12KDF(sha1.New, p.Salt, pw.bmp, p.Iterations, 2, 8)
		cost = n
		if keyLen == 24 {
			block, err = des.NewTripleDESCipher(key)
		} else {
			block, err = newRC2(key, keyLen*8)
		}
	case alg.Algorithm.Equal(oidPBES2):
		var p pbes2Params
		if err := unmarshalAll(alg.Parameters.FullBytes, &p); err != nil {
			return nil, 0, fmt.Errorf("PBES2 parameters: %w", err)
		}
		if !p.KDF.Algorithm.Equal(oidPBKDF2) {
			return nil, 0, fmt.Errorf("PBES2 key derivation %s is not supported", p.KDF.Algorithm)
		}
		var kp pbkdf2Params
		if err := unmarshalAll(p.KDF.Parameters.FullBytes, &kp); err != nil {
			return nil, 0, fmt.Errorf("PBKDF2 parameters: %w", err)
		}
		if kp.Salt.Tag != asn1.TagOctetString {
			return nil, 0, errors.New("PBKDF2 salt is not an OCTET STRING")
		}
		var prf func() hash.Hash
		switch {
		case kp.PRF.Algorithm == nil, kp.PRF.Algorithm.Equal(oidHMACWithSHA1):
			prf = sha1.New
		case kp.PRF.Algorithm.Equal(oidHMACWithSHA256):
			prf = sha256.New
		case kp.PRF.Algorithm.Equal(oidHMACWithSHA512):
			prf = sha512.New
		default:
			return nil, 0, fmt.Errorf("PBKDF2 pseudo-random function %s is not supported", kp.PRF.Algorithm)
		}
		var keyLen int
		switch {
		case p.EncryptionScheme.Algorithm.Equal(oidAES128CBC):
			keyLen = 16
		case p.EncryptionScheme.Algorithm.Equal(oidAES192CBC):
			keyLen = 24
		case p.EncryptionScheme.Algorithm.Equal(oidAES256CBC):
			keyLen = 32
		default:
			return nil, 0, fmt.Errorf("PBES2 encryption %s is not supported", p.EncryptionScheme.Algorithm)
		}
		n := int64(max(kp.Iterations, 1))
		if n > budget {
			return nil, 0, &errTooMuchWork{asked: n, left: budget}
		}
		key, kerr := pbkdf2.Key(prf, pw.utf8, kp.Salt.Bytes, int(n), keyLen)
		if kerr != nil {
			return nil, n, fmt.Errorf("PBKDF2: %w", kerr)
		}
		cost = n
		iv = p.EncryptionScheme.Parameters.Bytes
		block, err = aes.NewCipher(key)
		if err == nil && len(iv) != block.BlockSize() {
			err = fmt.Errorf("PBES2 IV is %d bytes, not %d", len(iv), block.BlockSize())
		}
	default:
		return nil, 0, fmt.Errorf("encryption %s is not supported", alg.Algorithm)
	}
	if err != nil {
		return nil, cost, err
	}
	bs := block.BlockSize()
	if len(ciphertext) == 0 || len(ciphertext)%bs != 0 {
		return nil, cost, errors.New("the ciphertext is not a whole number of blocks")
	}
	plain = make([]byte, len(ciphertext))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(plain, ciphertext)
	pad := int(plain[len(plain)-1])
	if pad == 0 || pad > bs || !bytes.Equal(plain[len(plain)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) {
		return nil, cost, errors.New("decryption failed (bad padding)")
	}
	return plain[:len(plain)-pad], cost, nil
}

// pkcs12KDF is the key derivation of RFC 7292 Appendix B.2: size bytes of
// key material of purpose id (1 key, 2 IV, 3 MAC key) from salt and the
// BMPString password, with r iterations of h.
func pkcs12KDF(h func() hash.Hash, salt, password []byte, r int, id byte, size int) []byte {
	d := h()
	u, v := d.Size(), d.BlockSize()
	diversifier := bytes.Repeat([]byte{id}, v)
	input := append(fillBlocks(salt, v), fillBlocks(password, v)...)
	out := make([]byte, 0, size+u)
	for len(out) < size {
		d.Reset()
		d.Write(diversifier)
		d.Write(input)
		a := d.Sum(nil)
		for j := 1; j < r; j++ {
			d.Reset()
			d.Write(a)
			a = d.Sum(a[:0])
		}
		out = append(out, a...)
		if len(out) >= size {
			break
		}
		// I_j = (I_j + B + 1) mod 2^(8v) for each v-byte block of the input.
		b := fillBlocks(a, v)
		for j := 0; j < len(input); j += v {
			carry := 1
			for k := v - 1; k >= 0; k-- {
				s := int(input[j+k]) + int(b[k]) + carry
				input[j+k], carry = byte(s), s>>8
			}
		}
	}
	return out[:size]
}

// fillBlocks repeats p to fill a whole number of v-byte blocks (the fewest
// that hold p); empty for an empty p.
func fillBlocks(p []byte, v int) []byte {
	if len(p) == 0 {
		return nil
	}
	out := make([]byte, v*((len(p)+v-1)/v))
	for i := range out {
		out[i] = p[i%len(p)]
	}
	return out
}
