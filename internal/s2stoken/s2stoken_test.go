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
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/s2strust/s2strust/internal/products"
)

const realm = "contoso.com"

// farmRealm is a SharePoint farm's default realm: its farm id, lower case.
const farmRealm = "3b1c8a2e-5f4d-4e6a-9b7c-2d1e0f9a8b7c"

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
			{ApplicationIdentifier: products.SharePointID, Realm: farmRealm, Enabled: false, Certificates: []*x509.Certificate{k.sharepoint.cert}},
			{ApplicationIdentifier: products.LyncID, Realm: realm, Enabled: true, Certificates: []*x509.Certificate{k.lync.cert, k.lyncNext.cert}},
		},
	}
}

// sharepoint is sp01 of a farm in its default realm (the farm id) that
// registers Lync, in Lync's realm.
func sharepoint() Receiver {
	return Receiver{
		ServiceName: products.SharePointID, Hostname: "sp01.contoso.com", Realm: farmRealm,
		Partners: []Partner{{ApplicationIdentifier: products.LyncID, Realm: realm, Enabled: true, Certificates: []*x509.Certificate{keys().lync.cert}}},
	}
}

func lyncSigner() Signer {
	return Signer{ServiceName: products.LyncID, Realm: realm, Cert: keys().lync.cert, Key: keys().lync.key}
}

// toMail01 addresses Exchange's mail01 in realm contoso.com from t0 for an hour.
func toMail01() MintOptions {
	return MintOptions{ReceiverServiceName: products.ExchangeID, ReceiverHost: "mail01.contoso.com", ReceiverRealm: realm,
		Now: t0, Lifetime: time.Hour, TrustedForDelegation: true}
}

func mint(t *testing.T, s Signer, edit func(o *MintOptions)) string {
	t.Helper()
	o := toMail01()
	if edit != nil {
		edit(&o)
	}
	tok, err := s.MintActor(o)
	if err != nil {
		t.Fatalf("MintActor: %v", err)
	}
	return tok
}

// signRaw signs arbitrary claims with key and the given header fields, for
// tokens MintActor refuses to make.
func signRaw(t testing.TB, key *rsa.PrivateKey, headers map[string]string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	for k, v := range headers {
		opts.WithHeader(jose.HeaderKey(k), v)
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

func x5tHeader(c *x509.Certificate) map[string]string { return map[string]string{"x5t": x5t(c.Raw)} }

// goodClaims are the claims MintActor writes for Lync calling mail01.
func goodClaims() map[string]any {
	id := products.LyncID + "@" + realm
	return map[string]any{
		"aud": products.ExchangeID + "/mail01.contoso.com@" + realm, "iss": id, "nameid": id, "identityprovider": id,
		"nbf": strconv.FormatInt(t0.Unix(), 10), "exp": strconv.FormatInt(t0.Add(time.Hour).Unix(), 10), "trustedfordelegation": "true",
	}
}

func with(edit func(m map[string]any)) map[string]any {
	m := goodClaims()
	edit(m)
	return m
}

// opaqueSigner hides the concrete key type, as a key in an OS store would.
type opaqueSigner struct{ crypto.Signer }

func payloadOf(t *testing.T, tok string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q has %d parts", tok, len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMintActor(t *testing.T) {
	k := keys()
	lyncID := products.LyncID + "@contoso.com"
	tests := []struct {
		name     string
		signer   Signer
		opts     func(o *MintOptions)
		receiver Receiver
		// wantPayload is the exact JSON: the claims, their order and types.
		wantPayload string
	}{
		{name: "rsa key, to exchange in its realm", signer: lyncSigner(), receiver: exchange(),
			wantPayload: `{"aud":"00000002-0000-0ff1-ce00-000000000000/mail01.contoso.com@contoso.com","iss":"` + lyncID +
				`","nbf":"1772366400","exp":"1772370000","nameid":"` + lyncID + `","trustedfordelegation":"true","identityprovider":"` + lyncID + `"}`},
		{name: "opaque crypto.Signer, not trusted for delegation", signer: Signer{ServiceName: products.LyncID, Realm: realm, Cert: k.lync.cert, Key: opaqueSigner{k.lync.key}},
			opts: func(o *MintOptions) { o.TrustedForDelegation = false }, receiver: exchange(),
			wantPayload: `{"aud":"00000002-0000-0ff1-ce00-000000000000/mail01.contoso.com@contoso.com","iss":"` + lyncID +
				`","nbf":"1772366400","exp":"1772370000","nameid":"` + lyncID + `","trustedfordelegation":"false","identityprovider":"` + lyncID + `"}`},
		{name: "to sharepoint: aud in the farm's realm, iss in lync's", signer: lyncSigner(), receiver: sharepoint(),
			opts: func(o *MintOptions) {
				o.ReceiverServiceName, o.ReceiverHost, o.ReceiverRealm = products.SharePointID, "SP01.Contoso.com", farmRealm
			},
			wantPayload: `{"aud":"00000003-0000-0ff1-ce00-000000000000/sp01.contoso.com@` + farmRealm + `","iss":"` + lyncID +
				`","nbf":"1772366400","exp":"1772370000","nameid":"` + lyncID + `","trustedfordelegation":"true","identityprovider":"` + lyncID + `"}`},
		{name: "to exchange in its blank realm: aud in the signer's realm", signer: lyncSigner(),
			opts: func(o *MintOptions) { o.ReceiverRealm = "" },
			receiver: func() Receiver {
				r := exchange()
				r.Realm, r.AcceptedDomains = "", []string{"contoso.com"}
				return r
			}(),
			wantPayload: `{"aud":"00000002-0000-0ff1-ce00-000000000000/mail01.contoso.com@contoso.com","iss":"` + lyncID +
				`","nbf":"1772366400","exp":"1772370000","nameid":"` + lyncID + `","trustedfordelegation":"true","identityprovider":"` + lyncID + `"}`},
		{name: "to exchange in realm *: aud in the signer's realm", signer: lyncSigner(),
			opts: func(o *MintOptions) { o.ReceiverRealm = AnyRealm },
			receiver: func() Receiver {
				r := exchange()
				r.Realm = AnyRealm
				return r
			}(),
			wantPayload: `{"aud":"00000002-0000-0ff1-ce00-000000000000/mail01.contoso.com@contoso.com","iss":"` + lyncID +
				`","nbf":"1772366400","exp":"1772370000","nameid":"` + lyncID + `","trustedfordelegation":"true","identityprovider":"` + lyncID + `"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := toMail01()
			if tt.opts != nil {
				tt.opts(&o)
			}
			tok, err := tt.signer.MintActor(o)
			if err != nil {
				t.Fatal(err)
			}
			header, _, err := Parse(tok)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha1.Sum(k.lync.cert.Raw)
			wantHeader := map[string]any{"typ": "JWT", "alg": "RS256", "x5t": base64.RawURLEncoding.EncodeToString(sum[:])}
			if !reflect.DeepEqual(header, wantHeader) {
				t.Errorf("header = %v, want %v", header, wantHeader)
			}
			if got := payloadOf(t, tok); got != tt.wantPayload {
				t.Errorf("claims =\n%s\nwant\n%s", got, tt.wantPayload)
			}
			got, err := tt.receiver.Validate(tok, t0)
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			var want map[string]string
			if err := json.Unmarshal([]byte(tt.wantPayload), &want); err != nil {
				t.Fatal(err)
			}
			wantClaims := &Claims{Issuer: lyncID, NameID: lyncID, IdentityProvider: lyncID, Audience: want["aud"],
				NotBefore: time.Unix(t0.Unix(), 0), Expires: time.Unix(t0.Unix()+3600, 0), TrustedForDelegation: want["trustedfordelegation"] == "true"}
			if !reflect.DeepEqual(got, wantClaims) {
				t.Errorf("Validate = %+v, want %+v", got, wantClaims)
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
		name   string
		signer Signer
		opts   func(o *MintOptions)
		want   string
	}{
		{name: "key of another certificate", signer: Signer{ServiceName: products.LyncID, Realm: realm, Cert: k.lync.cert, Key: k.stranger.key},
			want: "mint actor token: the token-issuer certificate does not match the key"},
		{name: "not RSA", signer: Signer{ServiceName: products.LyncID, Realm: realm, Cert: k.lync.cert, Key: ec},
			want: "mint actor token: the token-issuer key is *ecdsa.PublicKey, want an RSA key"},
		{name: "no certificate", signer: Signer{ServiceName: products.LyncID, Realm: realm, Key: k.lync.key},
			want: "mint actor token: the signer needs a certificate and its key"},
		{name: "no realm", signer: Signer{ServiceName: products.LyncID, Cert: k.lync.cert, Key: k.lync.key},
			want: "mint actor token: the signer needs a service name and a realm"},
		{name: "wildcard signer realm", signer: Signer{ServiceName: products.ExchangeID, Realm: "*", Cert: k.lync.cert, Key: k.lync.key},
			want: `mint actor token: the signer's realm "*" is a wildcard; a token names one realm`},
		{name: "no receiver host", signer: lyncSigner(), opts: func(o *MintOptions) { o.ReceiverHost = "" },
			want: "mint actor token: the receiver needs a service name and a host"},
		{name: "separator in the receiver realm", signer: lyncSigner(), opts: func(o *MintOptions) { o.ReceiverRealm = "a@b" },
			want: `mint actor token: receiver realm "a@b" contains '@' or '/', which separate the parts of iss and aud`},
		{name: "separator in the receiver host", signer: lyncSigner(), opts: func(o *MintOptions) { o.ReceiverHost = "mail01/x" },
			want: `mint actor token: receiver host "mail01/x" contains '@' or '/', which separate the parts of iss and aud`},
		{name: "zero lifetime", signer: lyncSigner(), opts: func(o *MintOptions) { o.Lifetime = 0 }, want: "mint actor token: lifetime 0s is not positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := toMail01()
			if tt.opts != nil {
				tt.opts(&o)
			}
			_, err := tt.signer.MintActor(o)
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
	sum := sha1.Sum(k.lync.cert.Raw)
	good := mint(t, lync, nil)
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(mustJSON(t, with(func(m map[string]any) { m["exp"] = strconv.FormatInt(t0.Add(24*time.Hour).Unix(), 10) }))) + "." + parts[2]
	unsigned, err := WrapUser(good, User{NII: "urn:federation:MicrosoftOnline", SMTP: "alice@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	raw := func(edit func(m map[string]any)) string {
		return signRaw(t, k.lync.key, x5tHeader(k.lync.cert), with(edit))
	}
	blankRealm := func(domains ...string) func(r *Receiver) {
		return func(r *Receiver) { r.Realm, r.AcceptedDomains = "", domains }
	}

	tests := []struct {
		name       string
		token      string
		receiver   func(r *Receiver)
		now        time.Time
		want       func(c *Claims) bool // extra check of an accepted token's claims
		wantReason Reason               // empty: accepted
		wantDetail string               // the whole detail, or its start when it ends in "…"
	}{
		{name: "current certificate", token: good},
		{name: "next certificate during rollover", token: mint(t, Signer{ServiceName: products.LyncID, Realm: realm, Cert: k.lyncNext.cert, Key: k.lyncNext.key}, nil)},
		{name: "host in another case", token: raw(func(m map[string]any) { m["aud"] = products.ExchangeID + "/MAIL01.Contoso.COM@" + realm })},
		{name: "key of any enabled partner with the identifier", token: good, receiver: func(r *Receiver) {
			r.Partners = []Partner{
				{ApplicationIdentifier: products.LyncID, Enabled: true, Certificates: []*x509.Certificate{k.stranger.cert}},
				{ApplicationIdentifier: products.LyncID, Enabled: false, Certificates: nil},
				{ApplicationIdentifier: products.LyncID, Enabled: true, Certificates: []*x509.Certificate{nil, k.lync.cert}},
			}
		}},

		// Variants the products and generic JWT writers differ in.
		{name: "nbf and exp as JSON numbers (RFC 7519 NumericDate)", token: raw(func(m map[string]any) { m["nbf"], m["exp"] = t0.Unix(), t0.Add(time.Hour).Unix() }),
			want: func(c *Claims) bool { return c.NotBefore.Equal(t0) && c.Expires.Equal(t0.Add(time.Hour)) }},
		{name: "trustedfordelegation a JSON boolean", token: raw(func(m map[string]any) { m["trustedfordelegation"] = true }),
			want: func(c *Claims) bool { return c.TrustedForDelegation }},
		{name: "trustedfordelegation False as .NET writes it", token: raw(func(m map[string]any) { m["trustedfordelegation"] = "False" }),
			want: func(c *Claims) bool { return !c.TrustedForDelegation }},
		{name: "trustedfordelegation absent (app-only)", token: raw(func(m map[string]any) { delete(m, "trustedfordelegation") }),
			want: func(c *Claims) bool { return !c.TrustedForDelegation }},
		{name: "identityprovider absent", token: raw(func(m map[string]any) { delete(m, "identityprovider") }),
			want: func(c *Claims) bool { return c.IdentityProvider == "" }},
		{name: "kid instead of x5t (Entra ID)", token: signRaw(t, k.lync.key, map[string]string{"kid": lyncX5T}, goodClaims())},
		{name: "kid and x5t alike", token: signRaw(t, k.lync.key, map[string]string{"kid": lyncX5T, "x5t": lyncX5T}, goodClaims())},
		{name: "x5t in padded standard base64, as Exchange metadata writes it", token: signRaw(t, k.lync.key,
			map[string]string{"x5t": base64.StdEncoding.EncodeToString(sum[:])}, goodClaims())},
		{name: "iss without realm, partner registered without one", token: raw(func(m map[string]any) { m["iss"] = products.LyncID }),
			receiver: func(r *Receiver) { r.Partners[1].Realm = "" }},
		{name: "iss in any realm, partner registered with realm *", token: raw(func(m map[string]any) { m["iss"] = products.LyncID + "@fabrikam.com" }),
			receiver: func(r *Receiver) { r.Partners[1].Realm = AnyRealm }},
		{name: "blank receiver realm, no accepted domains known: any aud realm", token: raw(func(m map[string]any) { m["aud"] = products.ExchangeID + "/mail01.contoso.com@fabrikam.com" }),
			receiver: blankRealm()},
		{name: "receiver realm *, aud in an accepted domain", token: raw(func(m map[string]any) { m["aud"] = products.ExchangeID + "/mail01.contoso.com@fabrikam.com" }),
			receiver: func(r *Receiver) { r.Realm, r.AcceptedDomains = AnyRealm, []string{"contoso.com", "fabrikam.com"} }},
		{name: "receiver realm set, aud in an accepted domain", token: raw(func(m map[string]any) { m["aud"] = products.ExchangeID + "/mail01.contoso.com@fabrikam.com" }),
			receiver: func(r *Receiver) { r.Realm, r.AcceptedDomains = "partners.contoso.com", []string{"fabrikam.com"} }},

		{name: "garbage", token: "hello", wantReason: ReasonMalformed, wantDetail: "not a compact RS256 JWS: …"},
		{name: "unsigned outer token", token: unsigned, wantReason: ReasonMalformed, wantDetail: "not a compact RS256 JWS: …"},
		{name: "oversize", token: strings.Repeat("a", 64<<10+1), wantReason: ReasonMalformed, wantDetail: "token is 65537 bytes, over the 65536-byte limit"},
		{name: "no x5t", token: signRaw(t, k.lync.key, nil, goodClaims()), wantReason: ReasonMalformed,
			wantDetail: `header x5t "" is not a base64url SHA-1 thumbprint`},
		{name: "kid not a thumbprint", token: signRaw(t, k.lync.key, map[string]string{"kid": "key-1"}, goodClaims()), wantReason: ReasonMalformed,
			wantDetail: `header has no x5t, and kid "key-1" is not a base64url SHA-1 thumbprint`},
		{name: "kid and x5t differ", token: signRaw(t, k.lync.key, map[string]string{"kid": strangerX5T, "x5t": lyncX5T}, goodClaims()), wantReason: ReasonMalformed,
			wantDetail: `header kid "` + strangerX5T + `" and x5t "` + lyncX5T + `" name different certificates`},
		{name: "no aud", token: raw(func(m map[string]any) { delete(m, "aud") }), wantReason: ReasonMalformed,
			wantDetail: `aud "" is not <client id>/<host>@<realm>`},
		{name: "aud with an empty host", token: raw(func(m map[string]any) { m["aud"] = products.ExchangeID + "/@" + realm }),
			wantReason: ReasonMalformed, wantDetail: `aud "00000002-0000-0ff1-ce00-000000000000/@contoso.com" is not <client id>/<host>@<realm>`},
		{name: "aud without host (Exchange's allowedAudiences form)", token: raw(func(m map[string]any) { m["aud"] = products.ExchangeID + "@" + realm }),
			wantReason: ReasonMalformed, wantDetail: `aud "00000002-0000-0ff1-ce00-000000000000@contoso.com" is not <client id>/<host>@<realm>`},
		{name: "aud without realm", token: raw(func(m map[string]any) { m["aud"] = products.ExchangeID + "/mail01.contoso.com" }),
			wantReason: ReasonMalformed, wantDetail: `aud "00000002-0000-0ff1-ce00-000000000000/mail01.contoso.com" is not <client id>/<host>@<realm>`},
		{name: "iss with an empty realm", token: raw(func(m map[string]any) { m["iss"] = products.LyncID + "@" }),
			wantReason: ReasonMalformed, wantDetail: `iss "00000004-0000-0ff1-ce00-000000000000@" is not <client id>@<realm>`},
		{name: "no nameid", token: raw(func(m map[string]any) { delete(m, "nameid") }),
			wantReason: ReasonMalformed, wantDetail: "claim nameid is missing"},
		{name: "no exp", token: raw(func(m map[string]any) { delete(m, "exp") }),
			wantReason: ReasonMalformed, wantDetail: "claim exp is missing"},
		{name: "nbf a word", token: raw(func(m map[string]any) { m["nbf"] = "yesterday" }),
			wantReason: ReasonMalformed, wantDetail: `claim nbf "yesterday" is not a time in Unix seconds`},
		{name: "nbf a boolean", token: raw(func(m map[string]any) { m["nbf"] = true }),
			wantReason: ReasonMalformed, wantDetail: `claim nbf true is not a time in Unix seconds`},
		{name: "exp before nbf", token: raw(func(m map[string]any) { m["exp"] = strconv.FormatInt(t0.Unix()-1, 10) }),
			wantReason: ReasonMalformed, wantDetail: "exp 1772366399 is before nbf 1772366400"},
		{name: "bad trustedfordelegation", token: raw(func(m map[string]any) { m["trustedfordelegation"] = "yes" }),
			wantReason: ReasonMalformed, wantDetail: `claim trustedfordelegation "yes" is not "true" or "false"`},

		{name: "issuer not a partner", token: mint(t, Signer{ServiceName: products.ACSID, Realm: realm, Cert: k.lync.cert, Key: k.lync.key}, nil),
			wantReason: ReasonUnknownIssuer, wantDetail: `no partner application has identifier "00000001-0000-0000-c000-000000000000"`},
		{name: "issuer client id compared case-sensitively", token: mint(t, Signer{ServiceName: strings.ToUpper(products.LyncID), Realm: realm, Cert: k.lync.cert, Key: k.lync.key}, nil),
			wantReason: ReasonUnknownIssuer, wantDetail: `no partner application has identifier "00000004-0000-0FF1-CE00-000000000000"`},
		{name: "partner disabled", token: mint(t, Signer{ServiceName: products.SharePointID, Realm: farmRealm, Cert: k.sharepoint.cert, Key: k.sharepoint.key}, nil),
			wantReason: ReasonPartnerDisabled, wantDetail: `the partner application "00000003-0000-0ff1-ce00-000000000000" is disabled`},
		{name: "key not in the metadata held", token: mint(t, Signer{ServiceName: products.LyncID, Realm: realm, Cert: k.stranger.cert, Key: k.stranger.key}, nil),
			wantReason: ReasonUnknownKey, wantDetail: `no certificate in the metadata held for partner "00000004-0000-0ff1-ce00-000000000000" has x5t "` + strangerX5T + `"`},
		{name: "key only of a disabled partner with the identifier", token: good, receiver: func(r *Receiver) {
			r.Partners = append(r.Partners, Partner{ApplicationIdentifier: products.LyncID, Enabled: false, Certificates: []*x509.Certificate{k.lync.cert}})
			r.Partners[1].Certificates = []*x509.Certificate{k.lyncNext.cert}
		}, wantReason: ReasonUnknownKey, wantDetail: `no certificate in the metadata held for partner "00000004-0000-0ff1-ce00-000000000000" has x5t "` + lyncX5T + `"`},
		{name: "signed by another key", token: signRaw(t, k.stranger.key, x5tHeader(k.lync.cert), goodClaims()),
			wantReason: ReasonBadSignature, wantDetail: `signature does not verify with the certificate "CN=contoso.com" (x5t "` + lyncX5T + `"): …`},
		{name: "claims changed after signing", token: tampered, wantReason: ReasonBadSignature, wantDetail: "signature does not verify …"},

		{name: "for another service", token: mint(t, lync, func(o *MintOptions) { o.ReceiverServiceName = products.SharePointID }),
			wantReason: ReasonWrongAudience, wantDetail: `aud client id is "00000003-0000-0ff1-ce00-000000000000", want "00000002-0000-0ff1-ce00-000000000000"`},
		{name: "audience client id compared case-sensitively", token: mint(t, lync, func(o *MintOptions) { o.ReceiverServiceName = strings.ToUpper(products.ExchangeID) }),
			wantReason: ReasonWrongAudience, wantDetail: `aud client id is "00000002-0000-0FF1-CE00-000000000000", want "00000002-0000-0ff1-ce00-000000000000"`},
		{name: "for another host", token: mint(t, lync, func(o *MintOptions) { o.ReceiverHost = "mail02.contoso.com" }),
			wantReason: ReasonWrongHost, wantDetail: `aud host is "mail02.contoso.com", want "mail01.contoso.com"`},
		{name: "for another realm", token: mint(t, lync, func(o *MintOptions) { o.ReceiverRealm = "fabrikam.com" }),
			wantReason: ReasonRealmMismatch, wantDetail: `aud realm is "fabrikam.com", want "contoso.com"`},
		{name: "aud realm compared case-sensitively", token: raw(func(m map[string]any) { m["aud"] = products.ExchangeID + "/mail01.contoso.com@Contoso.com" }),
			wantReason: ReasonRealmMismatch, wantDetail: `aud realm is "Contoso.com", want "contoso.com"`},
		{name: "blank receiver realm, aud realm not an accepted domain", token: raw(func(m map[string]any) { m["aud"] = products.ExchangeID + "/mail01.contoso.com@other.com" }),
			receiver:   blankRealm("contoso.com", "fabrikam.com"),
			wantReason: ReasonRealmMismatch, wantDetail: `aud realm is "other.com", want an accepted domain ("contoso.com", "fabrikam.com")`},
		{name: "accepted domain compared case-sensitively", token: raw(func(m map[string]any) { m["aud"] = products.ExchangeID + "/mail01.contoso.com@Fabrikam.com" }),
			receiver:   func(r *Receiver) { r.Realm, r.AcceptedDomains = AnyRealm, []string{"fabrikam.com"} },
			wantReason: ReasonRealmMismatch, wantDetail: `aud realm is "Fabrikam.com", want an accepted domain ("fabrikam.com")`},
		{name: "receiver realm and accepted domains, aud realm neither", token: raw(func(m map[string]any) { m["aud"] = products.ExchangeID + "/mail01.contoso.com@other.com" }),
			receiver:   func(r *Receiver) { r.AcceptedDomains = []string{"fabrikam.com"} },
			wantReason: ReasonRealmMismatch, wantDetail: `aud realm is "other.com", want "contoso.com" or an accepted domain ("fabrikam.com")`},
		{name: "iss realm not the partner's", token: raw(func(m map[string]any) { m["iss"] = products.LyncID + "@fabrikam.com" }),
			wantReason: ReasonRealmMismatch, wantDetail: `iss realm is "fabrikam.com", partner "00000004-0000-0ff1-ce00-000000000000" is registered with realm "contoso.com"`},
		{name: "iss without realm, partner registered with one", token: raw(func(m map[string]any) { m["iss"] = products.LyncID }),
			wantReason: ReasonRealmMismatch, wantDetail: `iss realm is "", partner "00000004-0000-0ff1-ce00-000000000000" is registered with realm "contoso.com"`},

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
				if tt.want != nil && !tt.want(claims) {
					t.Errorf("accepted with claims %+v", claims)
				}
				return
			}
			wantRejected(t, err, tt.wantReason, tt.wantDetail)
			if claims != nil {
				t.Error("a rejected token returned claims")
			}
		})
	}
}

// wantRejected checks err is a *ValidationError for reason whose detail is
// wantDetail, or starts with it when it ends in "…".
func wantRejected(t *testing.T, err error, reason Reason, wantDetail string) {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error = %v, want a *ValidationError", err)
	}
	if ve.Reason != reason {
		t.Errorf("reason = %q (%s), want %q", ve.Reason, ve.Detail, reason)
	}
	if prefix, ok := strings.CutSuffix(wantDetail, "…"); ok {
		if !strings.HasPrefix(ve.Detail, prefix) {
			t.Errorf("detail = %q, want it to start %q", ve.Detail, prefix)
		}
	} else if ve.Detail != wantDetail {
		t.Errorf("detail = %q, want %q", ve.Detail, wantDetail)
	}
	if want := "token rejected: " + string(ve.Reason) + ": " + ve.Detail; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
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

// specVector is testdata/ms-xoauth-actor.json: the actor token of
// [MS-XOAUTH]'s example, as header and claims.
type specVector struct {
	Source string         `json:"source"`
	Header map[string]any `json:"header"`
	Claims map[string]any `json:"claims"`
}

func loadSpecVector(tb testing.TB) specVector {
	tb.Helper()
	b, err := os.ReadFile("testdata/ms-xoauth-actor.json")
	if err != nil {
		tb.Fatal(err)
	}
	var v specVector
	if err := json.Unmarshal(b, &v); err != nil {
		tb.Fatal(err)
	}
	return v
}

// compact joins header and claims into a compact JWS with a placeholder
// signature: the specification prints no signature.
func (v specVector) compact(tb testing.TB) string {
	tb.Helper()
	h, err := json.Marshal(v.Header)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := json.Marshal(v.Claims)
	if err != nil {
		tb.Fatal(err)
	}
	sig := base64.RawURLEncoding.EncodeToString(make([]byte, 256))
	return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c) + "." + sig
}

// specReceiver is the example's receiver: SharePoint at contoso.com in the
// tenant realm, trusting the STS (ACS) in that realm with cert.
func specReceiver(cert *x509.Certificate) Receiver {
	const tenant = "b84c5afe-7ced-4ce8-aa0b-df0e2869d3c8"
	return Receiver{ServiceName: products.SharePointID, Hostname: "contoso.com", Realm: tenant,
		Partners: []Partner{{ApplicationIdentifier: products.ACSID, Realm: tenant, Enabled: true, Certificates: []*x509.Certificate{cert}}}}
}

func TestSpecExample(t *testing.T) {
	v := loadSpecVector(t)
	tok := v.compact(t)
	header, claims, err := Parse(tok)
	if err != nil {
		t.Fatalf("Parse of the specification's token: %v", err)
	}
	if !reflect.DeepEqual(header, v.Header) || !reflect.DeepEqual(claims, v.Claims) {
		t.Errorf("Parse = %v, %v, want %v, %v", header, claims, v.Header, v.Claims)
	}

	// The shape: every claim parses (string nbf and exp, an STS issuer
	// whose nameid differs from iss, a host-form aud in a GUID realm).
	p, err := parseClaims(mustJSON(t, v.Claims))
	if err != nil {
		t.Fatalf("the specification's claims do not parse: %v", err)
	}
	const tenant = "b84c5afe-7ced-4ce8-aa0b-df0e2869d3c8"
	wantParsed := &parsed{
		claims: Claims{Issuer: products.ACSID + "@" + tenant, NameID: products.ExchangeID + "@" + tenant,
			Audience: products.SharePointID + "/contoso.com@" + tenant, NotBefore: time.Unix(1323380070, 0), Expires: time.Unix(1323383670, 0)},
		issClient: products.ACSID, issRealm: tenant, aud: audience{client: products.SharePointID, host: "contoso.com", realm: tenant},
	}
	if !reflect.DeepEqual(p, wantParsed) {
		t.Errorf("parseClaims = %+v, want %+v", p, wantParsed)
	}

	// Validation gets as far as the key: the example's x5t names
	// Microsoft's certificate, which no receiver here holds.
	k := keys()
	during := time.Unix(1323380070+60, 0)
	_, err = specReceiver(k.stranger.cert).Validate(tok, during)
	wantRejected(t, err, ReasonUnknownKey, `no certificate in the metadata held for partner "00000001-0000-0000-c000-000000000000" has x5t "XqrnFEfsS55_vMBpHvF0pTnqeaM"`)

	// The same claims signed with a key the receiver holds are accepted,
	// inside the example's hour and not after it.
	resigned := signRaw(t, k.stranger.key, x5tHeader(k.stranger.cert), v.Claims)
	got, err := specReceiver(k.stranger.cert).Validate(resigned, during)
	if err != nil {
		t.Fatalf("the example's claims, signed by a held key: %v", err)
	}
	if !reflect.DeepEqual(*got, wantParsed.claims) {
		t.Errorf("Validate = %+v, want %+v", got, wantParsed.claims)
	}
	_, err = specReceiver(k.stranger.cert).Validate(resigned, time.Unix(1323383670, 0).Add(DefaultSkew+time.Second))
	wantRejected(t, err, ReasonExpired, "expired at 2011-12-08T22:34:30Z, now is 2011-12-08T22:39:31Z (skew allowance 5m0s)")
}

func TestWrapUser(t *testing.T) {
	actor := mint(t, lyncSigner(), nil)
	u := User{NII: "urn:federation:MicrosoftOnline", SMTP: "alice@contoso.com", SIP: "alice@contoso.com", UPN: "alice@contoso.com"}
	outer, err := WrapUser(actor, u)
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
	lyncID := products.LyncID + "@" + realm
	wantPayload := `{"aud":"00000002-0000-0ff1-ce00-000000000000/mail01.contoso.com@contoso.com","iss":"` + lyncID +
		`","nbf":"1772366400","exp":"1772370000","nii":"urn:federation:MicrosoftOnline","smtp":"alice@contoso.com","sip":"alice@contoso.com","upn":"alice@contoso.com","actortoken":"` + actor + `"}`
	if got := payloadOf(t, outer); got != wantPayload {
		t.Errorf("outer claims =\n%s\nwant\n%s", got, wantPayload)
	}
	_, inner, err := Parse(claims["actortoken"].(string))
	if err != nil || inner["nameid"] != claims["iss"] {
		t.Errorf("outer iss %v is not the inner nameid %v (%v)", claims["iss"], inner["nameid"], err)
	}

	onPrem := User{NII: "urn:office:idp:activedirectory", NameID: "s-1-5-21-1-2-3-1001"}
	if o, err := WrapUser(actor, onPrem); err != nil || !strings.Contains(payloadOf(t, o), `"nii":"urn:office:idp:activedirectory","nameid":"s-1-5-21-1-2-3-1001","actortoken"`) {
		t.Errorf("WrapUser of an on-premises user = %v, %v", o, err)
	}

	errTests := []struct {
		name  string
		actor string
		user  User
		want  string
	}{
		{name: "no nii", actor: actor, user: User{SMTP: "alice@contoso.com"}, want: "wrap user token: the user needs a name identifier issuer (nii)"},
		{name: "no identity", actor: actor, user: User{NII: "urn:federation:MicrosoftOnline"}, want: "wrap user token: the user needs a nameid, smtp, sip or upn"},
		{name: "not a token", actor: "nope", user: u, want: "wrap user token: actor token: token has 1 dot-separated parts, want 3"},
		{name: "no nameid", actor: signRaw(t, keys().lync.key, nil, map[string]any{"iss": "a@b", "aud": "c/d@b"}), user: u, want: "wrap user token: the actor token has no nameid"},
		{name: "no aud", actor: signRaw(t, keys().lync.key, nil, map[string]any{"nameid": "a@b"}), user: u, want: "wrap user token: the actor token has no aud"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := WrapUser(tt.actor, tt.user)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("WrapUser error = %v, want %q", err, tt.want)
			}
		})
	}
}

// unsignedJWT builds an outer token from claims, with alg none.
func unsignedJWT(t *testing.T, claims map[string]any) string {
	t.Helper()
	return base64.RawURLEncoding.EncodeToString([]byte(`{"typ":"JWT","alg":"none"}`)) + "." + base64.RawURLEncoding.EncodeToString(mustJSON(t, claims)) + "."
}

func TestValidateUser(t *testing.T) {
	k := keys()
	actor := mint(t, lyncSigner(), nil)
	u := User{NII: "urn:federation:MicrosoftOnline", SMTP: "alice@contoso.com"}
	outer, err := WrapUser(actor, u)
	if err != nil {
		t.Fatal(err)
	}
	lyncID := products.LyncID + "@" + realm
	aud := products.ExchangeID + "/mail01.contoso.com@" + realm
	outerClaims := func(edit func(m map[string]any)) map[string]any {
		m := map[string]any{"aud": aud, "iss": lyncID, "nii": u.NII, "smtp": u.SMTP, "actortoken": actor}
		edit(m)
		return m
	}

	got, err := exchange().ValidateUser(outer, t0.Add(time.Minute))
	if err != nil {
		t.Fatalf("ValidateUser: %v", err)
	}
	want := &UserClaims{Issuer: lyncID, Audience: aud, User: u, Actor: Claims{Issuer: lyncID, NameID: lyncID, IdentityProvider: lyncID, Audience: aud,
		NotBefore: time.Unix(t0.Unix(), 0), Expires: time.Unix(t0.Unix()+3600, 0), TrustedForDelegation: true}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ValidateUser = %+v, want %+v", got, want)
	}
	if _, err := exchange().ValidateUser(unsignedJWT(t, outerClaims(func(map[string]any) {})), t0); err != nil {
		t.Errorf("an outer token without nbf and exp (the actor's bound it): %v", err)
	}

	tests := []struct {
		name, token string
		now         time.Time
		wantReason  Reason
		wantDetail  string
	}{
		{name: "not a token", token: "a.b", wantReason: ReasonMalformed, wantDetail: "outer token: token has 2 dot-separated parts, want 3"},
		{name: "signed outer token", token: actor, wantReason: ReasonMalformed,
			wantDetail: `outer token: alg is "RS256" with a signature, want an unsigned token (alg none)`},
		{name: "no actortoken", token: unsignedJWT(t, outerClaims(func(m map[string]any) { delete(m, "actortoken") })),
			wantReason: ReasonMalformed, wantDetail: "outer token has no actortoken claim"},
		{name: "actortoken not a string", token: unsignedJWT(t, outerClaims(func(m map[string]any) { m["actortoken"] = 1 })),
			wantReason: ReasonMalformed, wantDetail: "outer token claims: …"},
		{name: "outer iss not the actor's nameid", token: unsignedJWT(t, outerClaims(func(m map[string]any) { m["iss"] = products.SharePointID + "@" + realm })),
			wantReason: ReasonActorMismatch, wantDetail: `outer iss "00000003-0000-0ff1-ce00-000000000000@contoso.com" is not the actor's nameid "` + lyncID + `"`},
		{name: "outer aud not the actor's", token: unsignedJWT(t, outerClaims(func(m map[string]any) { m["aud"] = products.ExchangeID + "/mail02.contoso.com@" + realm })),
			wantReason: ReasonWrongHost, wantDetail: `outer token: aud host is "mail02.contoso.com", want "mail01.contoso.com"`},
		{name: "outer aud for another service", token: unsignedJWT(t, outerClaims(func(m map[string]any) { m["aud"] = products.SharePointID + "/mail01.contoso.com@" + realm })),
			wantReason: ReasonWrongAudience, wantDetail: `outer token: aud client id is "00000003-0000-0ff1-ce00-000000000000", want "00000002-0000-0ff1-ce00-000000000000"`},
		{name: "outer aud without host", token: unsignedJWT(t, outerClaims(func(m map[string]any) { m["aud"] = products.ExchangeID + "@" + realm })),
			wantReason: ReasonMalformed, wantDetail: `outer token: aud "00000002-0000-0ff1-ce00-000000000000@contoso.com" is not <client id>/<host>@<realm>`},
		{name: "outer iss in another case", token: unsignedJWT(t, outerClaims(func(m map[string]any) { m["iss"] = strings.ToUpper(lyncID) })),
			wantReason: ReasonActorMismatch, wantDetail: `outer iss "` + strings.ToUpper(lyncID) + `" is not the actor's nameid "` + lyncID + `"`},
		{name: "actor from an unknown key", token: unsignedJWT(t, outerClaims(func(m map[string]any) {
			m["actortoken"] = mint(t, Signer{ServiceName: products.LyncID, Realm: realm, Cert: k.stranger.cert, Key: k.stranger.key}, nil)
		})), wantReason: ReasonUnknownKey, wantDetail: `actor token: no certificate in the metadata held for partner …`},
		{name: "actor expired", token: outer, now: t0.Add(2 * time.Hour), wantReason: ReasonExpired,
			wantDetail: "actor token: expired at 2026-03-01T13:00:00Z, now is 2026-03-01T14:00:00Z (skew allowance 5m0s)"},
		{name: "outer expired before the actor", token: unsignedJWT(t, outerClaims(func(m map[string]any) { m["exp"] = strconv.FormatInt(t0.Add(10*time.Minute).Unix(), 10) })),
			now: t0.Add(30 * time.Minute), wantReason: ReasonExpired,
			wantDetail: "outer token: expired at 2026-03-01T12:10:00Z, now is 2026-03-01T12:30:00Z (skew allowance 5m0s)"},
		{name: "outer nbf a word", token: unsignedJWT(t, outerClaims(func(m map[string]any) { m["nbf"] = "soon" })),
			wantReason: ReasonMalformed, wantDetail: `outer token: claim nbf "soon" is not a time in Unix seconds`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := tt.now
			if now.IsZero() {
				now = t0.Add(time.Minute)
			}
			got, err := exchange().ValidateUser(tt.token, now)
			wantRejected(t, err, tt.wantReason, tt.wantDetail)
			if got != nil {
				t.Error("a rejected token returned claims")
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
	o := toMail01()
	actor, err := lync.MintActor(o)
	if err != nil {
		f.Fatal(err)
	}
	outer, err := WrapUser(actor, User{NII: "urn:federation:MicrosoftOnline", SMTP: "alice@contoso.com"})
	if err != nil {
		f.Fatal(err)
	}
	o.ReceiverRealm = farmRealm
	toFarm, err := lync.MintActor(o)
	if err != nil {
		f.Fatal(err)
	}
	variant := func(headers map[string]string, edit func(m map[string]any)) string {
		return signRaw(f, kp.key, headers, with(edit))
	}
	own := map[string]string{"x5t": x5t(kp.cert.Raw)}
	f.Add(actor)
	f.Add(outer)
	f.Add(toFarm)
	f.Add(loadSpecVector(f).compact(f))
	f.Add(variant(own, func(m map[string]any) { m["nbf"], m["exp"] = t0.Unix(), t0.Add(time.Hour).Unix() }))
	f.Add(variant(own, func(m map[string]any) { m["trustedfordelegation"] = true; delete(m, "identityprovider") }))
	f.Add(variant(map[string]string{"kid": x5t(kp.cert.Raw)}, func(m map[string]any) { m["aud"] = products.ExchangeID + "@" + realm }))
	f.Add(variant(own, func(m map[string]any) { m["iss"] = products.LyncID }))
	f.Add("e30.e30.")
	f.Add("eyJhbGciOiJSUzI1NiIsIng1dCI6ImFiYyJ9.eyJpc3MiOiJhQGIiLCJhdWQiOiJhL2JAYyIsIm5iZiI6MSwiZXhwIjoyfQ.AAAA")
	f.Add("not a token")
	r := Receiver{ServiceName: products.ExchangeID, Hostname: "mail01.contoso.com", Realm: realm, Partners: []Partner{
		{ApplicationIdentifier: products.LyncID, Realm: realm, Enabled: true, Certificates: []*x509.Certificate{kp.cert}},
		{ApplicationIdentifier: products.SharePointID, Enabled: false},
	}}
	if _, err := r.Validate(actor, t0); err != nil {
		f.Fatalf("the seed token does not validate: %v", err)
	}
	if _, err := r.ValidateUser(outer, t0); err != nil {
		f.Fatalf("the seed outer token does not validate: %v", err)
	}
	known := map[Reason]bool{ReasonMalformed: true, ReasonUnknownIssuer: true, ReasonPartnerDisabled: true, ReasonUnknownKey: true,
		ReasonBadSignature: true, ReasonWrongAudience: true, ReasonWrongHost: true, ReasonRealmMismatch: true, ReasonNotYetValid: true,
		ReasonExpired: true, ReasonActorMismatch: true}
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
		} else if ve := (*ValidationError)(nil); !errors.As(err, &ve) || !known[ve.Reason] {
			t.Fatalf("Validate error %v has no known reason", err)
		}
		user, err := r.ValidateUser(token, t0)
		if err == nil {
			if user == nil {
				t.Fatal("ValidateUser accepted without claims")
			}
		} else if ve := (*ValidationError)(nil); !errors.As(err, &ve) || !known[ve.Reason] {
			t.Fatalf("ValidateUser error %v has no known reason", err)
		}
	})
}
