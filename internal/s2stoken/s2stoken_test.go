package s2stoken

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/s2strust/s2strust/internal/products"
)

const realm = "contoso.com"

type keyPair struct {
	cert *x509.Certificate
	key  *rsa.PrivateKey
}

func genCert(cn string) (keyPair, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return keyPair{}, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return keyPair{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return keyPair{}, err
	}
	c, err := x509.ParseCertificate(der)
	return keyPair{cert: c, key: key}, err
}

// fixture holds the token-issuer certificates of the test deployments,
// made once: RSA key generation dominates the package's test time.
type fixture struct {
	lync, lyncNext, sharepoint, stranger keyPair
}

var keys = sync.OnceValue(func() fixture {
	var f fixture
	for _, kp := range []*keyPair{&f.lync, &f.lyncNext, &f.sharepoint, &f.stranger} {
		var err error
		if *kp, err = genCert("contoso.com"); err != nil {
			panic(err)
		}
	}
	return f
})

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// exchange is mail01 of an Exchange deployment that trusts Lync (current and
// next certificate, as cached from its metadata during a rollover) and has a
// disabled SharePoint partner.
func exchange() Receiver {
	k := keys()
	return Receiver{
		ServiceName: products.ExchangeID,
		Hostname:    "mail01.contoso.com",
		Realm:       realm,
		Partners: []Partner{
			{ApplicationIdentifier: products.SharePointID, Enabled: false, Certificates: []*x509.Certificate{k.sharepoint.cert}},
			{ApplicationIdentifier: products.LyncID, Enabled: true, Certificates: []*x509.Certificate{k.lync.cert, k.lyncNext.cert}},
		},
	}
}

func lyncSigner() Signer {
	return Signer{ServiceName: products.LyncID, Realm: realm, Cert: keys().lync.cert, Key: keys().lync.key}
}

func mint(t *testing.T, s Signer, receiverService, receiverHost string) string {
	t.Helper()
	tok, err := s.MintActor(receiverService, receiverHost, t0, time.Hour, true)
	if err != nil {
		t.Fatalf("MintActor: %v", err)
	}
	return tok
}

// signRaw signs arbitrary claims with key and the given x5t, for tokens
// MintActor refuses to make.
func signRaw(t *testing.T, key *rsa.PrivateKey, x5tHeader string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if x5tHeader != "" {
		opts.WithHeader("x5t", x5tHeader)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// goodClaims are the claims MintActor would write for Lync calling mail01.
func goodClaims() map[string]any {
	id := products.LyncID + "@" + realm
	return map[string]any{
		"aud": products.ExchangeID + "/mail01.contoso.com@" + realm, "iss": id, "nameid": id, "identityprovider": id,
		"nbf": t0.Unix(), "exp": t0.Add(time.Hour).Unix(), "trustedfordelegation": "true",
	}
}

func with(edit func(m map[string]any)) map[string]any {
	m := goodClaims()
	edit(m)
	return m
}

// opaqueSigner hides the concrete key type, as a key in an OS store would.
type opaqueSigner struct{ crypto.Signer }

func TestMintActor(t *testing.T) {
	k := keys()
	tests := []struct {
		name   string
		signer Signer
		tfd    bool
	}{
		{name: "rsa key", signer: lyncSigner(), tfd: true},
		{name: "opaque crypto.Signer", signer: Signer{ServiceName: products.LyncID, Realm: realm, Cert: k.lync.cert, Key: opaqueSigner{k.lync.key}}, tfd: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := tt.signer.MintActor(products.ExchangeID, "mail01.contoso.com", t0, time.Hour, tt.tfd)
			if err != nil {
				t.Fatal(err)
			}
			header, claims, err := Parse(tok)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha1.Sum(k.lync.cert.Raw)
			wantHeader := map[string]any{"typ": "JWT", "alg": "RS256", "x5t": base64.RawURLEncoding.EncodeToString(sum[:])}
			if !reflect.DeepEqual(header, wantHeader) {
				t.Errorf("header = %v, want %v", header, wantHeader)
			}
			id := products.LyncID + "@contoso.com"
			wantClaims := map[string]any{
				"iss": id, "nameid": id, "identityprovider": id,
				"aud": products.ExchangeID + "/mail01.contoso.com@contoso.com",
				"nbf": float64(t0.Unix()), "exp": float64(t0.Unix() + 3600),
				"trustedfordelegation": map[bool]string{true: "true", false: "false"}[tt.tfd],
			}
			if !reflect.DeepEqual(claims, wantClaims) {
				t.Errorf("claims = %v, want %v", claims, wantClaims)
			}
			got, err := exchange().Validate(tok, t0)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			want := &Claims{Issuer: id, NameID: id, IdentityProvider: id, Audience: wantClaims["aud"].(string),
				NotBefore: time.Unix(t0.Unix(), 0), Expires: time.Unix(t0.Unix()+3600, 0), TrustedForDelegation: tt.tfd}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Validate = %+v, want %+v", got, want)
			}
		})
	}
}

func TestMintActorErrors(t *testing.T) {
	k := keys()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		signer   Signer
		lifetime time.Duration
		want     string
	}{
		{name: "key of another certificate", signer: Signer{ServiceName: products.LyncID, Realm: realm, Cert: k.lync.cert, Key: k.stranger.key},
			lifetime: time.Hour, want: "mint actor token: the token-issuer certificate does not match the key"},
		{name: "not RSA", signer: Signer{ServiceName: products.LyncID, Realm: realm, Cert: k.lync.cert, Key: ec},
			lifetime: time.Hour, want: "mint actor token: the token-issuer key is *ecdsa.PublicKey, want an RSA key"},
		{name: "no certificate", signer: Signer{ServiceName: products.LyncID, Realm: realm, Key: k.lync.key},
			lifetime: time.Hour, want: "mint actor token: the signer needs a certificate and its key"},
		{name: "no realm", signer: Signer{ServiceName: products.LyncID, Cert: k.lync.cert, Key: k.lync.key},
			lifetime: time.Hour, want: "mint actor token: the signer needs a service name and a realm"},
		{name: "zero lifetime", signer: lyncSigner(), want: "mint actor token: lifetime 0s is not positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.signer.MintActor(products.ExchangeID, "mail01.contoso.com", t0, tt.lifetime, false)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("MintActor error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	k := keys()
	lync := lyncSigner()
	lyncX5T := x5t(k.lync.cert.Raw)
	strangerX5T := x5t(k.stranger.cert.Raw)
	good := mint(t, lync, products.ExchangeID, "mail01.contoso.com")
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(mustJSON(t, with(func(m map[string]any) { m["exp"] = t0.Add(24 * time.Hour).Unix() }))) + "." + parts[2]
	unsigned, err := WrapUser(good, map[string]any{"nii": "urn:federation:MicrosoftOnline"})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		token      string
		receiver   func(r *Receiver)
		now        time.Time
		wantReason Reason // empty: accepted
		wantDetail string // the whole detail, or its start when it ends in "…"
	}{
		{name: "current certificate", token: good},
		{name: "next certificate during rollover", token: mint(t, Signer{ServiceName: products.LyncID, Realm: realm, Cert: k.lyncNext.cert, Key: k.lyncNext.key}, products.ExchangeID, "mail01.contoso.com")},
		{name: "host in another case", token: mint(t, lync, products.ExchangeID, "MAIL01.Contoso.COM")},
		{name: "key of any enabled partner with the identifier", token: good, receiver: func(r *Receiver) {
			r.Partners = []Partner{
				{ApplicationIdentifier: products.LyncID, Enabled: true, Certificates: []*x509.Certificate{k.stranger.cert}},
				{ApplicationIdentifier: products.LyncID, Enabled: false, Certificates: nil},
				{ApplicationIdentifier: products.LyncID, Enabled: true, Certificates: []*x509.Certificate{nil, k.lync.cert}},
			}
		}},

		{name: "garbage", token: "hello", wantReason: ReasonMalformed, wantDetail: "not a compact RS256 JWS: …"},
		{name: "unsigned outer token", token: unsigned, wantReason: ReasonMalformed, wantDetail: "not a compact RS256 JWS: …"},
		{name: "oversize", token: strings.Repeat("a", 64<<10+1), wantReason: ReasonMalformed, wantDetail: "token is 65537 bytes, over the 65536-byte limit"},
		{name: "no x5t", token: signRaw(t, k.lync.key, "", goodClaims()), wantReason: ReasonMalformed,
			wantDetail: `header x5t "" is not a base64url SHA-1 thumbprint`},
		{name: "no aud", token: signRaw(t, k.lync.key, lyncX5T, with(func(m map[string]any) { delete(m, "aud") })), wantReason: ReasonMalformed,
			wantDetail: `aud "" is not <client id>/<host>@<realm>`},
		{name: "aud without host", token: signRaw(t, k.lync.key, lyncX5T, with(func(m map[string]any) { m["aud"] = products.ExchangeID + "@" + realm })),
			wantReason: ReasonMalformed, wantDetail: `aud "00000002-0000-0ff1-ce00-000000000000@contoso.com" is not <client id>/<host>@<realm>`},
		{name: "iss without realm", token: signRaw(t, k.lync.key, lyncX5T, with(func(m map[string]any) { m["iss"] = products.LyncID })),
			wantReason: ReasonMalformed, wantDetail: `iss "00000004-0000-0ff1-ce00-000000000000" is not <client id>@<realm>`},
		{name: "no exp", token: signRaw(t, k.lync.key, lyncX5T, with(func(m map[string]any) { delete(m, "exp") })),
			wantReason: ReasonMalformed, wantDetail: "claim exp is missing"},
		{name: "nbf a string", token: signRaw(t, k.lync.key, lyncX5T, with(func(m map[string]any) { m["nbf"] = "yesterday" })),
			wantReason: ReasonMalformed, wantDetail: "claims: …"},
		{name: "bad trustedfordelegation", token: signRaw(t, k.lync.key, lyncX5T, with(func(m map[string]any) { m["trustedfordelegation"] = "yes" })),
			wantReason: ReasonMalformed, wantDetail: `claim trustedfordelegation "yes" is not "true" or "false"`},

		{name: "issuer not a partner", token: mint(t, Signer{ServiceName: products.ACSID, Realm: realm, Cert: k.lync.cert, Key: k.lync.key}, products.ExchangeID, "mail01.contoso.com"),
			wantReason: ReasonUnknownIssuer, wantDetail: `no partner application has identifier "00000001-0000-0000-c000-000000000000"`},
		{name: "issuer client id compared case-sensitively", token: mint(t, Signer{ServiceName: strings.ToUpper(products.LyncID), Realm: realm, Cert: k.lync.cert, Key: k.lync.key}, products.ExchangeID, "mail01.contoso.com"),
			wantReason: ReasonUnknownIssuer, wantDetail: `no partner application has identifier "00000004-0000-0FF1-CE00-000000000000"`},
		{name: "partner disabled", token: mint(t, Signer{ServiceName: products.SharePointID, Realm: realm, Cert: k.sharepoint.cert, Key: k.sharepoint.key}, products.ExchangeID, "mail01.contoso.com"),
			wantReason: ReasonPartnerDisabled, wantDetail: `the partner application "00000003-0000-0ff1-ce00-000000000000" is disabled`},
		{name: "key not in the metadata held", token: mint(t, Signer{ServiceName: products.LyncID, Realm: realm, Cert: k.stranger.cert, Key: k.stranger.key}, products.ExchangeID, "mail01.contoso.com"),
			wantReason: ReasonUnknownKey, wantDetail: `no certificate in the metadata held for partner "00000004-0000-0ff1-ce00-000000000000" has x5t "` + strangerX5T + `"`},
		{name: "key only of a disabled partner with the identifier", token: good, receiver: func(r *Receiver) {
			r.Partners = append(r.Partners, Partner{ApplicationIdentifier: products.LyncID, Enabled: false, Certificates: []*x509.Certificate{k.lync.cert}})
			r.Partners[1].Certificates = []*x509.Certificate{k.lyncNext.cert}
		}, wantReason: ReasonUnknownKey, wantDetail: `no certificate in the metadata held for partner "00000004-0000-0ff1-ce00-000000000000" has x5t "` + lyncX5T + `"`},
		{name: "signed by another key", token: signRaw(t, k.stranger.key, lyncX5T, goodClaims()),
			wantReason: ReasonBadSignature, wantDetail: `signature does not verify with the certificate "CN=contoso.com" (x5t "` + lyncX5T + `"): …`},
		{name: "claims changed after signing", token: tampered, wantReason: ReasonBadSignature, wantDetail: "signature does not verify …"},

		{name: "for another service", token: mint(t, lync, products.SharePointID, "mail01.contoso.com"),
			wantReason: ReasonWrongAudience, wantDetail: `aud client id is "00000003-0000-0ff1-ce00-000000000000", want "00000002-0000-0ff1-ce00-000000000000"`},
		{name: "audience client id compared case-sensitively", token: mint(t, lync, strings.ToUpper(products.ExchangeID), "mail01.contoso.com"),
			wantReason: ReasonWrongAudience, wantDetail: `aud client id is "00000002-0000-0FF1-CE00-000000000000", want "00000002-0000-0ff1-ce00-000000000000"`},
		{name: "for another host", token: mint(t, lync, products.ExchangeID, "mail02.contoso.com"),
			wantReason: ReasonWrongHost, wantDetail: `aud host is "mail02.contoso.com", want "mail01.contoso.com"`},
		{name: "other realm", token: mint(t, Signer{ServiceName: products.LyncID, Realm: "fabrikam.com", Cert: k.lync.cert, Key: k.lync.key}, products.ExchangeID, "mail01.contoso.com"),
			wantReason: ReasonRealmMismatch, wantDetail: `aud realm is "fabrikam.com", want "contoso.com"`},
		{name: "aud realm compared case-sensitively", token: signRaw(t, k.lync.key, lyncX5T, with(func(m map[string]any) { m["aud"] = products.ExchangeID + "/mail01.contoso.com@Contoso.com" })),
			wantReason: ReasonRealmMismatch, wantDetail: `aud realm is "Contoso.com", want "contoso.com"`},
		{name: "iss realm differs", token: signRaw(t, k.lync.key, lyncX5T, with(func(m map[string]any) { m["iss"] = products.LyncID + "@fabrikam.com" })),
			wantReason: ReasonRealmMismatch, wantDetail: `iss realm is "fabrikam.com", want "contoso.com"`},

		{name: "within skew before nbf", token: good, now: t0.Add(-5 * time.Minute)},
		{name: "before nbf beyond skew", token: good, now: t0.Add(-5*time.Minute - time.Second),
			wantReason: ReasonNotYetValid, wantDetail: "valid from 2026-03-01T12:00:00Z, now is 2026-03-01T11:54:59Z (skew allowance 5m0s)"},
		{name: "within skew after exp", token: good, now: t0.Add(time.Hour + 5*time.Minute)},
		{name: "after exp beyond skew", token: good, now: t0.Add(time.Hour + 5*time.Minute + time.Second),
			wantReason: ReasonExpired, wantDetail: "expired at 2026-03-01T13:00:00Z, now is 2026-03-01T13:05:01Z (skew allowance 5m0s)"},
		{name: "custom skew", token: good, now: t0.Add(time.Hour + 2*time.Minute), receiver: func(r *Receiver) { r.Skew = time.Minute },
			wantReason: ReasonExpired, wantDetail: "expired at 2026-03-01T13:00:00Z, now is 2026-03-01T13:02:00Z (skew allowance 1m0s)"},
		{name: "no skew", token: good, now: t0.Add(-time.Second), receiver: func(r *Receiver) { r.Skew = -1 },
			wantReason: ReasonNotYetValid, wantDetail: "valid from 2026-03-01T12:00:00Z, now is 2026-03-01T11:59:59Z (skew allowance 0s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := exchange()
			if tt.receiver != nil {
				tt.receiver(&r)
			}
			now := tt.now
			if now.IsZero() {
				now = t0.Add(time.Minute)
			}
			claims, err := r.Validate(tt.token, now)
			if tt.wantReason == "" {
				if err != nil || claims == nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate error = %v, want a *ValidationError", err)
			}
			if ve.Reason != tt.wantReason {
				t.Errorf("reason = %q (%s), want %q", ve.Reason, ve.Detail, tt.wantReason)
			}
			if prefix, ok := strings.CutSuffix(tt.wantDetail, "…"); ok {
				if !strings.HasPrefix(ve.Detail, prefix) {
					t.Errorf("detail = %q, want it to start %q", ve.Detail, prefix)
				}
			} else if ve.Detail != tt.wantDetail {
				t.Errorf("detail = %q, want %q", ve.Detail, tt.wantDetail)
			}
			if want := "token rejected: " + string(ve.Reason) + ": " + ve.Detail; err.Error() != want {
				t.Errorf("Error() = %q, want %q", err.Error(), want)
			}
			if claims != nil {
				t.Error("a rejected token returned claims")
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWrapUser(t *testing.T) {
	actor := mint(t, lyncSigner(), products.ExchangeID, "mail01.contoso.com")
	user := map[string]any{"nii": "urn:federation:MicrosoftOnline", "smtp": "alice@contoso.com", "sip": "alice@contoso.com",
		"aud": products.ExchangeID + "/mail01.contoso.com@" + realm, "nbf": float64(t0.Unix()), "exp": float64(t0.Unix() + 3600)}
	outer, err := WrapUser(actor, user)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(outer, ".") {
		t.Errorf("an unsigned token ends in an empty signature: %s", outer)
	}
	header, claims, err := Parse(outer)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]any{"alg": "none", "typ": "JWT"}; !reflect.DeepEqual(header, want) {
		t.Errorf("header = %v, want %v", header, want)
	}
	want := map[string]any{"iss": products.LyncID + "@" + realm, "actortoken": actor}
	for k, v := range user {
		want[k] = v
	}
	if !reflect.DeepEqual(claims, want) {
		t.Errorf("claims = %v, want %v", claims, want)
	}
	_, inner, err := Parse(claims["actortoken"].(string))
	if err != nil || inner["nameid"] != claims["iss"] {
		t.Errorf("outer iss %v is not the inner nameid %v (%v)", claims["iss"], inner["nameid"], err)
	}
	if _, err := exchange().Validate(claims["actortoken"].(string), t0); err != nil {
		t.Errorf("the carried actor token no longer validates: %v", err)
	}

	errTests := []struct {
		name  string
		actor string
		user  map[string]any
		want  string
	}{
		{name: "same iss allowed", actor: actor, user: map[string]any{"iss": products.LyncID + "@" + realm}},
		{name: "other iss", actor: actor, user: map[string]any{"iss": "someone@contoso.com"},
			want: `wrap user token: user claim iss someone@contoso.com differs from the actor's nameid "00000004-0000-0ff1-ce00-000000000000@contoso.com"`},
		{name: "actortoken set", actor: actor, user: map[string]any{"actortoken": "x"}, want: "wrap user token: user claims must not set actortoken"},
		{name: "not a token", actor: "nope", want: "wrap user token: actor token: token has 1 dot-separated parts, want 3"},
		{name: "no nameid", actor: signRaw(t, keys().lync.key, "x", map[string]any{"iss": "a@b"}), want: "wrap user token: the actor token has no nameid"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := WrapUser(tt.actor, tt.user)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || err.Error() != tt.want {
				t.Fatalf("WrapUser error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestParse(t *testing.T) {
	b64 := base64.RawURLEncoding.EncodeToString
	tests := []struct {
		name, token, want string
	}{
		{name: "two parts", token: "a.b", want: "token has 2 dot-separated parts, want 3"},
		{name: "five parts (JWE)", token: "a.b.c.d.e", want: "token has 5 dot-separated parts, want 3"},
		{name: "header not base64", token: "*.e30.", want: "header is not base64url: illegal base64 data at input byte 0"},
		{name: "header not JSON", token: b64([]byte("hi")) + ".e30.", want: "header is not JSON: invalid character 'h' looking for beginning of value"},
		{name: "header null", token: b64([]byte("null")) + ".e30.", want: "header is not a JSON object"},
		{name: "claims an array", token: "e30." + b64([]byte("[1]")) + ".", want: "claims is not JSON: json: cannot unmarshal array into Go value of type map[string]interface {}"},
		{name: "signature not base64", token: "e30.e30.!", want: "signature is not base64url: illegal base64 data at input byte 0"},
		{name: "oversize", token: strings.Repeat("e", 64<<10+1), want: "token is 65537 bytes, over the 65536-byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, c, err := Parse(tt.token)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Parse error = %v, want %q", err, tt.want)
			}
			if h != nil || c != nil {
				t.Error("Parse returned maps with an error")
			}
		})
	}
	if h, c, err := Parse("e30.e30."); err != nil || len(h) != 0 || len(c) != 0 {
		t.Errorf("Parse of empty objects = %v, %v, %v", h, c, err)
	}
}

// loadFixture reads testdata/fuzz-token-issuer.pem, a fixed RSA 2048
// token-issuer certificate and key. The fuzz target uses it because every
// fuzz worker runs the target's setup, and generating keys there starves
// the workers.
func loadFixture(tb testing.TB) keyPair {
	tb.Helper()
	data, err := os.ReadFile("testdata/fuzz-token-issuer.pem")
	if err != nil {
		tb.Fatal(err)
	}
	var kp keyPair
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		switch block.Type {
		case "CERTIFICATE":
			kp.cert, err = x509.ParseCertificate(block.Bytes)
		case "PRIVATE KEY":
			var k any
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
			kp.key, _ = k.(*rsa.PrivateKey)
		}
		if err != nil {
			tb.Fatal(err)
		}
	}
	if kp.cert == nil || kp.key == nil {
		tb.Fatal("testdata/fuzz-token-issuer.pem lacks the certificate or the RSA key")
	}
	return kp
}

func FuzzParseToken(f *testing.F) {
	kp := loadFixture(f)
	lync := Signer{ServiceName: products.LyncID, Realm: realm, Cert: kp.cert, Key: kp.key}
	actor, err := lync.MintActor(products.ExchangeID, "mail01.contoso.com", t0, time.Hour, true)
	if err != nil {
		f.Fatal(err)
	}
	outer, err := WrapUser(actor, map[string]any{"nii": "urn:federation:MicrosoftOnline"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(actor)
	f.Add(outer)
	f.Add("e30.e30.")
	f.Add("eyJhbGciOiJSUzI1NiIsIng1dCI6ImFiYyJ9.eyJpc3MiOiJhQGIiLCJhdWQiOiJhL2JAYyIsIm5iZiI6MSwiZXhwIjoyfQ.AAAA")
	f.Add("not a token")
	r := Receiver{ServiceName: products.ExchangeID, Hostname: "mail01.contoso.com", Realm: realm, Partners: []Partner{
		{ApplicationIdentifier: products.LyncID, Enabled: true, Certificates: []*x509.Certificate{kp.cert}},
		{ApplicationIdentifier: products.SharePointID, Enabled: false},
	}}
	if _, err := r.Validate(actor, t0); err != nil {
		f.Fatalf("the seed token does not validate: %v", err)
	}
	known := map[Reason]bool{ReasonMalformed: true, ReasonUnknownIssuer: true, ReasonPartnerDisabled: true, ReasonUnknownKey: true,
		ReasonBadSignature: true, ReasonWrongAudience: true, ReasonWrongHost: true, ReasonRealmMismatch: true, ReasonNotYetValid: true, ReasonExpired: true}
	f.Fuzz(func(t *testing.T, token string) {
		h, c, err := Parse(token)
		if err == nil && (h == nil || c == nil) {
			t.Fatal("Parse succeeded without maps")
		}
		claims, err := r.Validate(token, t0)
		if err == nil {
			if claims == nil {
				t.Fatal("Validate accepted without claims")
			}
			return
		}
		var ve *ValidationError
		if !errors.As(err, &ve) || !known[ve.Reason] {
			t.Fatalf("Validate error %v has no known reason", err)
		}
	})
}
