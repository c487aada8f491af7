package certs

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// TestRC2 checks the RC2 block cipher against the test vectors of RFC 2268
// §5, both ways.
func TestRC2(t *testing.T) {
	for _, tt := range []struct {
		key, plain, cipher string
		bits               int
	}{
		{"0000000000000000", "0000000000000000", "ebb773f993278eff", 63},
		{"ffffffffffffffff", "ffffffffffffffff", "278b27e42e2f0d49", 64},
		{"3000000000000000", "1000000000000001", "30649edf9be7d2c2", 64},
		{"88", "0000000000000000", "61a8a244adacccf0", 64},
		{"88bca90e90875a", "0000000000000000", "6ccf4308974c267f", 64},
		{"88bca90e90875a7f0f79c384627bafb2", "0000000000000000", "1a807d272bbe5db1", 64},
		{"88bca90e90875a7f0f79c384627bafb2", "0000000000000000", "2269552ab0f85ca6", 128},
		{"88bca90e90875a7f0f79c384627bafb216f80a6f85920584c42fceb0be255daf1e", "0000000000000000", "5b78d3a43dfff1f1", 129},
	} {
		key, _ := hex.DecodeString(tt.key)
		plain, _ := hex.DecodeString(tt.plain)
		want, _ := hex.DecodeString(tt.cipher)
		c, err := newRC2(key, tt.bits)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, rc2BlockSize)
		c.Encrypt(got, plain)
		if hex.EncodeToString(got) != tt.cipher {
			t.Errorf("RC2 key %s/%d bits: Encrypt = %x, want %s", tt.key, tt.bits, got, tt.cipher)
		}
		c.Decrypt(got, want)
		if hex.EncodeToString(got) != tt.plain {
			t.Errorf("RC2 key %s/%d bits: Decrypt = %x, want %s", tt.key, tt.bits, got, tt.plain)
		}
	}
	if _, err := newRC2(nil, 64); err == nil {
		t.Error("newRC2 accepted an empty key")
	}
}

// TestLoadPFXReadsEverySafe loads files from every go-pkcs12 encoder: each
// but Passwordless has an encrypted certificate safe (RC2-40, 3DES, AES)
// that the loader decrypts itself to count what it holds, so a mistake in
// that decryption would refuse the file.
func TestLoadPFXReadsEverySafe(t *testing.T) {
	ca, leaf := caAndLeaf(t, true)
	for _, tt := range []struct {
		name     string
		enc      *pkcs12.Encoder
		password string
		safes    int
	}{
		{"LegacyRC2 (RC2-40 certificate safe)", pkcs12.LegacyRC2, "pw-ümlaut", 1},
		{"LegacyDES (3DES)", pkcs12.LegacyDES, "pw", 1},
		{"Modern2023 (PBES2, AES-256)", pkcs12.Modern2023, "pw", 1},
		{"Modern2026 (PBES2, PBMAC1)", pkcs12.Modern2026, "pw", 1},
		{"LegacyRC2, empty password", pkcs12.LegacyRC2, "", 1},
		{"Modern2023, empty password", pkcs12.Modern2023, "", 1},
		{"Passwordless", pkcs12.Passwordless, "", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data, err := tt.enc.Encode(leaf.Key, leaf.Cert, []*x509.Certificate{ca.Cert}, tt.password)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(encryptedSafes(data)); n != tt.safes {
				t.Errorf("encryptedSafes found %d safes, want %d", n, tt.safes)
			}
			got, err := LoadPFX(data, tt.password)
			if err != nil {
				t.Fatal(err)
			}
			assertBundle(t, got, leaf, ca.Cert)
			if tt.safes > 0 {
				_, err := LoadPFX(data, tt.password+"x")
				assertOneSentinel(t, err, ErrWrongPassword, tt.password+"x")
			}
		})
	}
	for _, f := range []string{fixturePFX, fixtureOpenSSL3DES} {
		if n := len(encryptedSafes(readFile(t, f))); n != 1 {
			t.Errorf("%s: encryptedSafes found %d safes, want 1", f, n)
		}
	}
}

// nestedPFX is a PFX with one safe, encrypted (PBES2, AES-256, 2048
// iterations), that holds bags (a key bag among them, where Windows and
// OpenSSL never put it), and a SHA-256 MAC as go-pkcs12 checks it.
func nestedPFX(t testing.TB, bags []asn1.RawValue, password string) []byte {
	t.Helper()
	contents, err := asn1.Marshal(bags)
	if err != nil {
		t.Fatal(err)
	}
	return encryptedSafePFX(t, contents, password)
}

// encryptedSafePFX is nestedPFX with contents as the plaintext of the safe.
func encryptedSafePFX(t testing.TB, contents []byte, password string) []byte {
	t.Helper()
	salt, iv := randomBytes(t, 16), randomBytes(t, 16)
	key, err := pbkdf2.Key(sha256.New, password, salt, 2048, 32)
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	pad := aes.BlockSize - len(contents)%aes.BlockSize
	plain := append(contents, strings.Repeat(string(rune(pad)), pad)...)
	ciphertext := make([]byte, len(plain))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ciphertext, plain)
	encData := pfxEncryptedData{EncryptedContentInfo: pfxEncryptedContentInfo{
		ContentType:                oidDataContentType,
		ContentEncryptionAlgorithm: pbes2Algorithm(t, salt, 2048, iv),
		EncryptedContent:           ciphertext,
	}}
	authSafe, err := asn1.Marshal([]pfxContentInfo{{ContentType: oidEncryptedDataContentType, Content: explicit0(t, encData)}})
	if err != nil {
		t.Fatal(err)
	}
	var pfx pfxPDU
	pfx.Version = 3
	pfx.AuthSafe = pfxContentInfo{ContentType: oidDataContentType, Content: explicit0(t, authSafe)}
	pfx.MacData.Mac.Algorithm.Algorithm = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1} // SHA-256
	pfx.MacData.MacSalt = randomBytes(t, 16)
	pfx.MacData.Iterations = 2048
	bmp := passwordCandidates(password)[0].bmp
	mac := hmac.New(sha256.New, pkcs12KDF(sha256.New, pfx.MacData.MacSalt, bmp, 2048, 3, 32))
	mac.Write(authSafe)
	pfx.MacData.Mac.Digest = mac.Sum(nil)
	data, err := asn1.Marshal(pfx)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// pbes2Algorithm is PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC.
func pbes2Algorithm(t testing.TB, salt []byte, iterations int, iv []byte) pkix.AlgorithmIdentifier {
	t.Helper()
	kdf, err := asn1.Marshal(pbkdf2Params{
		Salt:       asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagOctetString, Bytes: salt},
		Iterations: iterations,
		PRF:        pkix.AlgorithmIdentifier{Algorithm: oidHMACWithSHA256, Parameters: asn1.NullRawValue},
	})
	if err != nil {
		t.Fatal(err)
	}
	params, err := asn1.Marshal(pbes2Params{
		KDF:              pkix.AlgorithmIdentifier{Algorithm: oidPBKDF2, Parameters: asn1.RawValue{FullBytes: kdf}},
		EncryptionScheme: pkix.AlgorithmIdentifier{Algorithm: oidAES256CBC, Parameters: asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagOctetString, Bytes: iv}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.AlgorithmIdentifier{Algorithm: oidPBES2, Parameters: asn1.RawValue{FullBytes: params}}
}

// explicit0 wraps v's DER in [0] EXPLICIT, as a ContentInfo's content.
func explicit0(t testing.TB, v any) asn1.RawValue {
	t.Helper()
	der, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: der}
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// bagsOf returns the bags of a go-pkcs12 Modern2023 file: those of its
// encrypted certificate safe, then its shrouded key bag.
func bagsOf(t testing.TB, data []byte, password string) []asn1.RawValue {
	t.Helper()
	pfx, ok := parsePFX(data)
	if !ok {
		t.Fatal("not a PFX")
	}
	var authSafeDER []byte
	var authSafe []pfxContentInfo
	if err := unmarshalAll(pfx.AuthSafe.Content.Bytes, &authSafeDER); err != nil {
		t.Fatal(err)
	}
	if err := unmarshalAll(authSafeDER, &authSafe); err != nil {
		t.Fatal(err)
	}
	var bags []asn1.RawValue
	for _, ci := range authSafe {
		var contents []byte
		if ci.ContentType.Equal(oidEncryptedDataContentType) {
			var ed pfxEncryptedData
			if err := unmarshalAll(ci.Content.Bytes, &ed); err != nil {
				t.Fatal(err)
			}
			plain, _, err := decryptSafe(ed.EncryptedContentInfo.ContentEncryptionAlgorithm, ed.EncryptedContentInfo.EncryptedContent, passwordCandidates(password)[0], MaxPFXIterations)
			if err != nil {
				t.Fatal(err)
			}
			contents = plain
		} else if err := unmarshalAll(ci.Content.Bytes, &contents); err != nil {
			t.Fatal(err)
		}
		var bs []asn1.RawValue
		if err := unmarshalAll(contents, &bs); err != nil {
			t.Fatal(err)
		}
		bags = append(bags, bs...)
	}
	return bags
}

// shroudedKeyBag is a PKCS#8 shrouded key bag whose key derivation asks for
// iterations (its ciphertext is noise: the loader must refuse it before
// any attempt to decrypt it).
func shroudedKeyBag(t testing.TB, iterations int) asn1.RawValue {
	t.Helper()
	epki, err := asn1.Marshal(struct {
		Algorithm pkix.AlgorithmIdentifier
		Data      []byte
	}{pbes2Algorithm(t, randomBytes(t, 16), iterations, randomBytes(t, 16)), randomBytes(t, 64)})
	if err != nil {
		t.Fatal(err)
	}
	der, err := asn1.Marshal(struct {
		ID    asn1.ObjectIdentifier
		Value asn1.RawValue
	}{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 12, 10, 1, 2}, // pkcs8ShroudedKeyBag
		asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: epki}})
	if err != nil {
		t.Fatal(err)
	}
	return asn1.RawValue{FullBytes: der}
}

// TestLoadPFXNestedKeyBagIterations is issue 10's acceptance for the PFX
// loader: a shrouded key bag inside an encrypted safe asking for 30 million
// iterations (some 30 seconds of CPU in go-pkcs12) is refused, before any
// attempt to derive its key, naming the count and the bound.
func TestLoadPFXNestedKeyBagIterations(t *testing.T) {
	const password = "nested-Passw0rd"
	b := generate(t, Template{CommonName: "contoso.com", ECDSA: true})
	ordinary, err := pkcs12.Modern2023.Encode(b.Key, b.Cert, nil, password)
	if err != nil {
		t.Fatal(err)
	}
	bags := bagsOf(t, ordinary, password)
	if len(bags) != 2 {
		t.Fatalf("Modern2023 wrote %d bags, want a certificate and a key", len(bags))
	}

	// The construction is sound: with the key bag as go-pkcs12 wrote it,
	// moved into the encrypted safe, the file loads.
	valid := nestedPFX(t, bags, password)
	got, err := LoadPFX(valid, password)
	if err != nil {
		t.Fatalf("LoadPFX of the nested file with an ordinary key bag: %v", err)
	}
	assertBundle(t, got, b)

	// Under ctx's deadline too; and a context already done stops it.
	if _, err := LoadPFXContext(t.Context(), valid, password); err != nil {
		t.Errorf("LoadPFXContext: %v", err)
	}
	done, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := LoadPFXContext(done, valid, password); !errors.Is(err, context.Canceled) {
		t.Errorf("LoadPFXContext with a cancelled context: error %v, want context.Canceled", err)
	}

	// The same with the key bag asking for 30 million iterations.
	hostile := nestedPFX(t, []asn1.RawValue{bags[0], shroudedKeyBag(t, 30_000_000)}, password)
	if n := pfxIterations(hostile, MaxPFXIterations); n != 2*2048 {
		t.Fatalf("pfxIterations of the hostile file = %d, want 4096 (MAC and safe): the key bag must be out of its sight", n)
	}
	_, err = LoadPFX(hostile, password)
	assertOneSentinel(t, err, ErrCorrupt, password)
	want := "decode PFX: not a valid PFX file: a key bag inside its encrypted safe 1 asks for 30000000 iterations, and 993856 are left of the 1000000 allowed in all"
	if err != nil && !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	// A wrong password gives the wrong-password error, not the count.
	_, err = LoadPFX(hostile, "other")
	assertOneSentinel(t, err, ErrWrongPassword, "other")
}

// TestLoadPFXUnreadableSafe: a safe the loader cannot read although the
// password is right is refused, never handed to go-pkcs12 unchecked.
func TestLoadPFXUnreadableSafe(t *testing.T) {
	const password = "pw"
	// Under a valid MAC, a safe whose plaintext is an OCTET STRING, not
	// SafeContents.
	data := encryptedSafePFX(t, []byte{0x04, 0x01, 0x00}, password)
	_, err := LoadPFX(data, password)
	assertOneSentinel(t, err, ErrCorrupt, password)
	if want := "decode PFX: not a valid PFX file: its encrypted safe 1 cannot be read (its content is not a SafeContents structure)"; err != nil && err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	_, err = LoadPFX(data, "nope-123")
	assertOneSentinel(t, err, ErrWrongPassword, "nope-123")
}
