package certs

import (
	"encoding/asn1"
	"math/big"
	"strings"
	"testing"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

func TestPFXIterations(t *testing.T) {
	b := generate(t, Template{CommonName: "contoso.com", ECDSA: true})
	encode := func(enc *pkcs12.Encoder, password string) []byte {
		t.Helper()
		data, err := enc.Encode(b.Key, b.Cert, nil, password)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	tests := []struct {
		name string
		data []byte
		want int64
	}{
		// MAC, certificate safe and key bag: 2048 each.
		{name: "EncodePFX fixture", data: readFile(t, fixturePFX), want: 3 * 2048},
		{name: "OpenSSL 3DES fixture", data: readFile(t, fixtureOpenSSL3DES), want: 3 * 2048},
		{name: "OpenSSL certificates only", data: readFile(t, fixtureOpenSSLNoKeys), want: 2 * 2048},
		{name: "PBMAC1 (Modern2026)", data: encode(pkcs12.Modern2026.WithIterations(1000), "pw"), want: 3 * 1000},
		{name: "legacy DES", data: encode(pkcs12.LegacyDES.WithIterations(777), "pw"), want: 3 * 777},
		{name: "passwordless", data: encode(pkcs12.Passwordless, ""), want: 0},
		{name: "garbage", data: []byte("garbage"), want: 0},
		{name: "2^40 iterations stop the count", data: mustMarshal(t, saltIter{Salt: []byte{1, 2}, Iterations: new(big.Int).Lsh(big.NewInt(1), 40)}), want: MaxPFXIterations + 1},
		{name: "nested in an OCTET STRING", data: mustMarshal(t, mustMarshal(t, saltIter{Salt: []byte{1}, Iterations: big.NewInt(5)})), want: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pfxIterations(tt.data, MaxPFXIterations); got != tt.want {
				t.Errorf("pfxIterations = %d, want %d", got, tt.want)
			}
		})
	}
}

type saltIter struct {
	Salt       []byte
	Iterations *big.Int
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	der, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestLoadPFXRefusesExcessiveIterations(t *testing.T) {
	b := generate(t, Template{CommonName: "contoso.com", ECDSA: true})
	// MAC, certificate safe and key bag: three derivations just over a third
	// of the limit each. (TestPFXIterations shows the count is exact.)
	tooMany, err := pkcs12.Modern.WithIterations(MaxPFXIterations/3+1).Encode(b.Key, b.Cert, nil, "pw")
	if err != nil {
		t.Fatal(err)
	}
	_, err = LoadPFX(tooMany, "pw")
	assertOneSentinel(t, err, ErrCorrupt, "pw")
	if err != nil && !strings.Contains(err.Error(), "more than 1000000 iterations") {
		t.Errorf("error %q does not explain the limit", err)
	}
}
