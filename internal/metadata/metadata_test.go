package metadata

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const realm = "contoso.com"

// newCert returns a self-signed RSA 2048 certificate and its key, usable as
// a token-issuer certificate and (with dnsNames) as a TLS server certificate.
func newCert(t testing.TB, cn string, dnsNames ...string) (*x509.Certificate, *rsa.PrivateKey) {
	t.Helper()
	c, key, err := genCert(cn, dnsNames...)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func genCert(cn string, dnsNames ...string) (*x509.Certificate, *rsa.PrivateKey, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		DNSNames:              dnsNames,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

// signingCerts is the current and next token-issuer certificate, made once:
// RSA key generation dominates the package's test time otherwise.
var signingCerts = sync.OnceValue(func() []*x509.Certificate {
	var certs []*x509.Certificate
	for range 2 {
		c, _, err := genCert("contoso.com")
		if err != nil {
			panic(err)
		}
		certs = append(certs, c)
	}
	return certs
})

func TestBuildRoundTrip(t *testing.T) {
	certs := signingCerts()
	tests := []struct {
		name, serviceName, hostOrName string
		wantName, wantLocation        string
		wantAudiences                 []string
	}{
		{
			name: "lync pool", serviceName: products.LyncID, hostOrName: "pool01.contoso.com",
			wantName: "pool01.contoso.com", wantLocation: "https://pool01.contoso.com/metadata/json/1",
			wantAudiences: []string{products.LyncID + "/pool01.contoso.com@contoso.com", products.LyncID + "@contoso.com"},
		},
		{
			name: "exchange autodiscover", serviceName: products.ExchangeID, hostOrName: "autodiscover.contoso.com",
			wantName: "autodiscover.contoso.com", wantLocation: "https://autodiscover.contoso.com/autodiscover/metadata/json/1",
			wantAudiences: []string{products.ExchangeID + "/autodiscover.contoso.com@contoso.com", products.ExchangeID + "@contoso.com"},
		},
		{
			name: "sharepoint web application URL", serviceName: products.SharePointID, hostOrName: "https://sp.contoso.com/",
			wantName: "sp.contoso.com", wantLocation: "https://sp.contoso.com/_layouts/15/metadata/json/1",
			wantAudiences: []string{products.SharePointID + "/sp.contoso.com@contoso.com", products.SharePointID + "@contoso.com"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Build(tt.serviceName, realm, tt.hostOrName, certs)
			data, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, d) {
				t.Errorf("round trip changed the document:\n got %+v\nwant %+v", got, d)
			}
			if got.Version != "1.0" || got.Issuer != tt.serviceName+"@contoso.com" || got.Name != tt.wantName {
				t.Errorf("version, issuer, name = %q, %q, %q", got.Version, got.Issuer, got.Name)
			}
			if !reflect.DeepEqual(got.AllowedAudiences, tt.wantAudiences) {
				t.Errorf("allowedAudiences = %q, want %q", got.AllowedAudiences, tt.wantAudiences)
			}
			wantEndpoints := []Endpoint{{Location: tt.wantLocation, Protocol: "OAuth2", Usage: "metadata"}}
			if !reflect.DeepEqual(got.Endpoints, wantEndpoints) {
				t.Errorf("endpoints = %+v, want %+v", got.Endpoints, wantEndpoints)
			}
			if !strings.HasPrefix(got.ID, "_") || got.ID != Build(tt.serviceName, realm, tt.hostOrName, nil).ID {
				t.Errorf("id %q is not a stable _GUID", got.ID)
			}
			signing, err := Validate(got, tt.serviceName, realm)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if len(signing) != 2 || !signing[0].Equal(certs[0]) || !signing[1].Equal(certs[1]) {
				t.Errorf("Validate returned %d certificates, want current then next", len(signing))
			}
			all, err := got.Certificates()
			if err != nil || len(all) != 2 || !all[0].Equal(certs[0]) {
				t.Errorf("Certificates() = %d certs, %v", len(all), err)
			}
		})
	}
}

func TestBuildJSONShape(t *testing.T) {
	d := Build(products.LyncID, realm, "pool01.contoso.com", signingCerts()[:1])
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "version", "name", "realm", "serviceName", "issuer", "allowedAudiences", "keys", "endpoints"} {
		if _, ok := m[k]; !ok {
			t.Errorf("document lacks %q: %s", k, data)
		}
	}
	key := m["keys"].([]any)[0].(map[string]any)
	sum := sha1.Sum(signingCerts()[0].Raw)
	want := map[string]any{
		"usage":    "signing",
		"keyinfo":  map[string]any{"x5t": base64.RawURLEncoding.EncodeToString(sum[:])},
		"keyvalue": map[string]any{"type": "x509Certificate", "value": base64.StdEncoding.EncodeToString(signingCerts()[0].Raw)},
	}
	if !reflect.DeepEqual(key, want) {
		t.Errorf("key = %v, want %v", key, want)
	}
	if empty, _ := json.Marshal(Build(products.LyncID, realm, "", nil)); !strings.Contains(string(empty), `"keys":[]`) {
		t.Errorf("a document without keys should carry an empty list, not null: %s", empty)
	}
}

func TestValidate(t *testing.T) {
	certs := signingCerts()
	other := x5t(certs[1].Raw)
	tests := []struct {
		name      string
		edit      func(d *Document)
		realm     string // default realm
		wantErr   string // empty: valid
		wantField string // the InvalidError's Field; empty: not checked
		want      int    // signing certificates returned
	}{
		{name: "valid", want: 2},
		{name: "realm star accepted", edit: func(d *Document) { d.Realm = "*" }, want: 2},
		{name: "realm star accepted for any realm", edit: func(d *Document) { d.Realm = "*" }, realm: "fabrikam.com", want: 2},
		{name: "x5t in padded standard base64 accepted", edit: func(d *Document) {
			sum := sha1.Sum(certs[0].Raw)
			d.Keys[0].KeyInfo.X5T = base64.StdEncoding.EncodeToString(sum[:])
		}, want: 2},
		{name: "non-signing key checked but not returned", edit: func(d *Document) { d.Keys[1].Usage = "encryption" }, want: 1},
		{name: "wrong serviceName", edit: func(d *Document) {
			d.ServiceName = products.ExchangeID
			d.Issuer = products.ExchangeID + "@contoso.com"
		},
			wantErr: `serviceName is "00000002-0000-0ff1-ce00-000000000000", want "00000004-0000-0ff1-ce00-000000000000"`, wantField: "serviceName"},
		{name: "serviceName compared exactly", edit: func(d *Document) { d.ServiceName = strings.ToUpper(d.ServiceName) },
			wantErr: `serviceName is "00000004-0000-0FF1-CE00-000000000000", want "00000004-0000-0ff1-ce00-000000000000"`},
		{name: "wrong realm", edit: func(d *Document) { d.Realm = "fabrikam.com" },
			wantErr: `realm is "fabrikam.com", want "contoso.com"`, wantField: "realm"},
		{name: "no keys", edit: func(d *Document) { d.Keys = nil }, wantErr: "no signing key", wantField: "keys"},
		{name: "no signing keys", edit: func(d *Document) { d.Keys = d.Keys[:1]; d.Keys[0].Usage = "encryption" }, wantErr: "no signing key"},
		{name: "bad base64", edit: func(d *Document) { d.Keys[1].KeyValue.Value = "not base64!" },
			wantErr: "key 2: keyvalue is not base64: illegal base64 data at input byte 3"},
		{name: "not a certificate", edit: func(d *Document) { d.Keys[0].KeyValue.Value = base64.StdEncoding.EncodeToString([]byte("hello")) },
			wantErr: "key 1: certificate does not parse: ", wantField: "keys[0].keyvalue"},
		{name: "wrong key type", edit: func(d *Document) { d.Keys[0].KeyValue.Type = "rsa" },
			wantErr: `key 1: keyvalue type is "rsa", want "x509Certificate"`},
		{name: "x5t mismatch", edit: func(d *Document) { d.Keys[0].KeyInfo.X5T = other },
			wantErr: `key 1: x5t "` + other + `" does not match its certificate (x5t "` + x5t(certs[0].Raw) + `")`, wantField: "keys[0].keyinfo.x5t"},
		{name: "x5t not a thumbprint", edit: func(d *Document) { d.Keys[0].KeyInfo.X5T = "abc" },
			wantErr: `key 1: x5t "abc" is not a base64 SHA-1 thumbprint`, wantField: "keys[0].keyinfo.x5t"},
		{name: "x5t absent: computed, not required", edit: func(d *Document) { d.Keys[0].KeyInfo.X5T = ""; d.Keys[1].KeyInfo.X5T = "" }, want: 2},
		{name: "usage and type in any case", edit: func(d *Document) {
			d.Keys[0].Usage, d.Keys[0].KeyValue.Type = "Signing", "x509certificate"
			d.Keys[1].Usage, d.Keys[1].KeyValue.Type = "SIGNING", "X509CERTIFICATE"
		}, want: 2},
		{name: "realm taken from issuer when absent", edit: func(d *Document) { d.Realm = "" }, want: 2},
		{name: "realm from issuer compared", edit: func(d *Document) { d.Realm = ""; d.Issuer = products.LyncID + "@fabrikam.com" },
			wantErr: `realm (from issuer "00000004-0000-0ff1-ce00-000000000000@fabrikam.com") is "fabrikam.com", want "contoso.com"`, wantField: "issuer"},
		{name: "issuer star accepted for any realm", edit: func(d *Document) { d.Realm = ""; d.Issuer = products.LyncID + "@*" }, realm: "fabrikam.com", want: 2},
		{name: "no realm anywhere", edit: func(d *Document) { d.Realm = ""; d.Issuer = "" },
			wantErr: `the document names no realm`, wantField: "realm"},
		{name: "issuer without realm", edit: func(d *Document) { d.Realm = ""; d.Issuer = products.LyncID },
			wantErr: `the document names no realm`, wantField: "realm"},
		{name: "issuer of another client", edit: func(d *Document) { d.Issuer = products.ExchangeID + "@contoso.com" },
			wantErr:   `issuer "00000002-0000-0ff1-ce00-000000000000@contoso.com" names client id "00000002-0000-0ff1-ce00-000000000000", not the serviceName "00000004-0000-0ff1-ce00-000000000000"`,
			wantField: "issuer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Build(products.LyncID, realm, "pool01.contoso.com", certs)
			if tt.edit != nil {
				tt.edit(d)
			}
			want := realm
			if tt.realm != "" {
				want = tt.realm
			}
			got, err := Validate(d, products.LyncID, want)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if len(got) != tt.want {
					t.Errorf("got %d signing certificates, want %d", len(got), tt.want)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("Validate error = %v, want %q", err, tt.wantErr)
			}
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("Validate error %v is a %T, want an *InvalidError", err, err)
			}
			if tt.wantField != "" && inv.Field != tt.wantField {
				t.Errorf("Field = %q, want %q", inv.Field, tt.wantField)
			}
			if got != nil {
				t.Errorf("an invalid document returned certificates")
			}
		})
	}
	if _, err := Validate(nil, products.LyncID, realm); err == nil {
		t.Error("Validate(nil) succeeded")
	}
	// The wanted realm "" means any: the receiver learns it from the document.
	for _, r := range []string{"contoso.com", "*"} {
		d := Build(products.LyncID, r, "pool01.contoso.com", certs)
		if _, err := Validate(d, products.LyncID, ""); err != nil {
			t.Errorf("realm %q, wanted any: %v", r, err)
		}
	}
}

func TestParse(t *testing.T) {
	valid, err := json.Marshal(Build(products.LyncID, realm, "pool01.contoso.com", signingCerts()))
	if err != nil {
		t.Fatal(err)
	}
	oversize := []byte(`{"id":"` + strings.Repeat("a", MaxSize) + `"}`)
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{name: "valid", data: valid},
		{name: "byte order mark skipped", data: append([]byte("\xef\xbb\xbf"), valid...)},
		{name: "unknown fields ignored", data: []byte(`{"serviceName":"x","somethingNew":[1,2]}`)},
		{name: "exactly MaxSize", data: append([]byte(`{}`), []byte(strings.Repeat(" ", MaxSize-2))...)},
		{name: "oversize", data: oversize, wantErr: fmt.Sprintf("document is %d bytes, over the 262144-byte limit", len(oversize))},
		{name: "HTML", data: []byte("<html><body>IIS</body></html>"), wantErr: "not JSON: invalid character '<' looking for beginning of value"},
		{name: "empty", data: nil, wantErr: "not JSON: unexpected end of JSON input"},
		{name: "wrong type", data: []byte(`{"keys":"none"}`), wantErr: "not JSON: json: cannot unmarshal string into Go struct field document.keys of type []metadata.Key"},
		{name: "trailing garbage", data: append(append([]byte{}, valid...), "x"...), wantErr: "not JSON: invalid character 'x' after top-level value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse(tt.data)
			if tt.wantErr == "" {
				if err != nil || d == nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("Parse error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func FuzzParseDocument(f *testing.F) {
	// An ECDSA certificate: the document does not care about the key type,
	// and every fuzz worker runs this setup, so it must be cheap.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "contoso.com"}, NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		f.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		f.Fatal(err)
	}
	valid, err := json.Marshal(Build(products.LyncID, realm, "pool01.contoso.com", []*x509.Certificate{c, c}))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	for _, doc := range realDocuments(c) {
		f.Add([]byte(doc))
	}
	for _, p := range []pb.Product{pb.Product_PRODUCT_EXCHANGE, pb.Product_PRODUCT_SHAREPOINT} {
		b, err := json.Marshal(BuildFor(p, "", farmID, "host.contoso.com", []*x509.Certificate{c}))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"issuer":"00000003-0000-0ff1-ce00-000000000000@x","keys":[{"keyValue":{"type":"x509certificate","value":"AAAA"},"usage":"Signing"}]}`))
	f.Add([]byte(`{"serviceName":"00000004-0000-0ff1-ce00-000000000000","realm":"*","keys":[{"usage":"signing","keyinfo":{"x5t":"abc"},"keyvalue":{"type":"x509Certificate","value":"AAAA"}}]}`))
	f.Add([]byte(`{"keys":[{"keyvalue":{"type":"x509Certificate","value":"MIIB"}}]}`))
	f.Add([]byte("<html></html>"))
	f.Add([]byte("\xef\xbb\xbfnull"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(data)
		if err != nil {
			if d != nil {
				t.Fatal("Parse returned a document with an error")
			}
			return
		}
		_, _ = d.Certificates()
		_ = d.EffectiveRealm()
		for _, want := range []string{realm, ""} {
			certs, err := Validate(d, d.ServiceName, want)
			if err == nil && len(certs) == 0 {
				t.Fatal("a valid document has no signing certificate")
			}
			var inv *InvalidError
			if err != nil && !errors.As(err, &inv) {
				t.Fatalf("Validate error %v is a %T, not an *InvalidError", err, err)
			}
			if err == nil && want == "" && d.EffectiveRealm() == "" {
				t.Fatal("a document naming no realm validated")
			}
		}
		again, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back, err := Parse(again)
		if err != nil {
			if len(again) <= MaxSize {
				t.Fatalf("re-encoded document does not parse: %v", err)
			}
			return
		}
		// Writing a document in its shape loses nothing.
		if !reflect.DeepEqual(back, d) {
			t.Fatalf("re-encoded document differs:\n got %+v\nwant %+v", back, d)
		}
	})
}
