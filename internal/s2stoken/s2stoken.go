// Package s2stoken mints and validates the server-to-server (S2S) OAuth actor
// tokens that Lync / Skype for Business, Exchange and SharePoint exchange,
// and wraps them in (and validates) the unsigned outer tokens of user calls.
//
// The token format is Microsoft's:
//   - [MS-XOAUTH] "OAuth 2.0 Authorization Protocol Extensions",
//     https://learn.microsoft.com/en-us/openspecs/exchange_server_protocols/ms-xoauth/0b717658-4ceb-4401-9da9-7860c9ca2f2f,
//     whose example section (the actor token an STS issues, with its header
//     and claims) is
//     https://learn.microsoft.com/en-us/openspecs/exchange_server_protocols/ms-xoauth/2e6ce5df-03b0-4486-b60c-f018ccc10bc8
//     and is a test vector in this package (testdata/ms-xoauth-actor.json),
//     and whose section 3.2.5.6 (Server-to-Server Validation Criteria) is
//     what Receiver checks;
//   - [MS-SPS2SAUTH] "OAuth 2.0 Authentication Protocol: SharePoint
//     Profile", section 3.1.5 (Message Processing Events and Sequencing
//     Rules),
//     https://learn.microsoft.com/en-us/openspecs/sharepoint_protocols/ms-sps2sauth/05f9759b-0fa4-45ff-bd4b-0d7d254e7010:
//     the receiver's 401 challenge names its realm, the sender puts that
//     realm in aud, and "the claim values are all string data types" and
//     "MUST be lowercase strings";
//   - Microsoft's SharePoint high-trust TokenHelper (the Visual Studio
//     template every provider-hosted add-in carries; IssueToken in e.g.
//     https://github.com/pnp/PnP-Sites-Core/blob/master/Core/OfficeDevPnP.Core/Utilities/TokenHelper.cs),
//     which mints them as iss/nameid = <id>@<source realm>, aud =
//     <id>/<host>@<target realm>, trustedfordelegation "true" (omitted for
//     app-only tokens) and an outer token whose iss "should match actor
//     token nameid".
//
// An actor token is a compact JWS signed RS256 with the issuer's
// token-issuer certificate, which the header names by x5t. A receiver
// accepts it only against the certificates it cached from the metadata of a
// registered, enabled partner, under the rules of SPEC.md section 2; each
// rule that fails has its own Reason, so the agent can say which part of a
// trust edge is broken. JWS signing and verification are go-jose's.
package s2stoken

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
)

// DefaultSkew is the clock-skew allowance when Receiver.Skew is zero.
const DefaultSkew = 5 * time.Minute

// maxTokenSize bounds what Parse and Validate look at. Actor tokens are
// about 1 KiB; an outer token carries one plus a few user claims.
const maxTokenSize = 64 << 10

// AnyRealm is the realm a receiver announces when it accepts tokens for
// any realm it serves: Exchange's metadata document has realm "*" and
// issuer "00000002-…@*", and its 401 challenge lists trusted issuers as
// "<id>@*" ([MS-XOAUTH] example section, URL in the package comment).
const AnyRealm = "*"

// x5t is base64url(SHA-1(DER)) without padding.
func x5t(der []byte) string {
	sum := sha1.Sum(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// decodeX5T accepts an x5t that decodes to a SHA-1 digest: base64url with
// or without padding, as tokens carry it ([MS-XOAUTH] example:
// "XqrnFEfsS55_vMBpHvF0pTnqeaM"), or standard base64, as Exchange's
// metadata document writes keyinfo.x5t (e.g. "JBZV…/HOc…SwE=") and as a
// sender copying it from there would.
func decodeX5T(s string) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == sha1.Size {
			return b, true
		}
	}
	return nil, false
}

// anyRealm reports whether realm is a receiver's "every realm I serve":
// Exchange's Get-AuthConfig Realm is normally blank, and its metadata says
// "*".
func anyRealm(realm string) bool { return realm == "" || realm == AnyRealm }

// Signer mints actor tokens for one deployment: ServiceName is its
// well-known application identifier, Realm its own OAuth realm (the realm
// of iss, nameid and identityprovider), Cert its token-issuer certificate
// and Key that certificate's RSA private key (an *rsa.PrivateKey or any
// crypto.Signer over an RSA key, such as a key held by the operating
// system).
type Signer struct {
	ServiceName, Realm string
	Cert               *x509.Certificate
	Key                crypto.Signer
}

// MintOptions says whom an actor token addresses and for how long.
type MintOptions struct {
	// ReceiverServiceName is the receiving deployment's application
	// identifier, the client id of aud.
	ReceiverServiceName string
	// ReceiverHost is the receiving host's name as partners address it,
	// the host of aud. It is written in lower case ([MS-SPS2SAUTH] 3.1.5:
	// values MUST be lowercase; host names compare in any case anyway).
	ReceiverHost string
	// ReceiverRealm is the receiving deployment's realm, the realm of aud:
	// "a token for receiver B carries B's realm", as the receiver's 401
	// challenge announces it ([MS-SPS2SAUTH] 3.1.5 step 2 and the aud row
	// of its claims table; TokenHelper's targetRealm). Empty or AnyRealm
	// means the receiver accepts any realm it serves (Exchange: any
	// accepted domain, https://learn.microsoft.com/powershell/module/exchange/set-authconfig
	// -Realm): a wildcard cannot be an audience, so aud then carries the
	// signer's own realm, the domain the two share.
	ReceiverRealm string
	// Now is the start of the validity (nbf); Lifetime its length (exp).
	Now      time.Time
	Lifetime time.Duration
	// TrustedForDelegation says whether the receiver may let the issuer
	// act for users (claim trustedfordelegation).
	TrustedForDelegation bool
}

// actorClaims are the claims of an actor token, in the products' names,
// order and types: [MS-XOAUTH]'s example writes aud, iss, nbf, exp, nameid,
// and nbf and exp as strings ("nbf":"1323380070"), as [MS-SPS2SAUTH] 3.1.5
// says of every claim value. trustedfordelegation and identityprovider are
// SPEC.md section 2's (the issuer is its own identity provider when it is
// not an STS).
type actorClaims struct {
	Audience             string `json:"aud"`
	Issuer               string `json:"iss"`
	NotBefore            string `json:"nbf"`
	Expires              string `json:"exp"`
	NameID               string `json:"nameid"`
	TrustedForDelegation string `json:"trustedfordelegation"`
	IdentityProvider     string `json:"identityprovider"`
}

// MintActor returns an actor token from s to o.ReceiverHost of the
// o.ReceiverServiceName deployment: header {typ JWT, alg RS256, x5t}; iss,
// nameid and identityprovider <s.ServiceName>@<s.Realm>; aud
// <o.ReceiverServiceName>/<o.ReceiverHost>@<receiver realm>; nbf and exp in
// Unix seconds, as strings; trustedfordelegation "true" or "false".
func (s Signer) MintActor(o MintOptions) (string, error) {
	switch {
	case s.ServiceName == "" || s.Realm == "":
		return "", errors.New("mint actor token: the signer needs a service name and a realm")
	case anyRealm(s.Realm):
		return "", fmt.Errorf("mint actor token: the signer's realm %q is a wildcard; a token names one realm", s.Realm)
	case o.ReceiverServiceName == "" || o.ReceiverHost == "":
		return "", errors.New("mint actor token: the receiver needs a service name and a host")
	case s.Cert == nil || s.Key == nil:
		return "", errors.New("mint actor token: the signer needs a certificate and its key")
	case o.Lifetime <= 0:
		return "", fmt.Errorf("mint actor token: lifetime %s is not positive", o.Lifetime)
	}
	for _, f := range []struct{ name, v string }{{"signer service name", s.ServiceName}, {"signer realm", s.Realm},
		{"receiver service name", o.ReceiverServiceName}, {"receiver host", o.ReceiverHost}, {"receiver realm", o.ReceiverRealm}} {
		if strings.ContainsAny(f.v, "@/") {
			return "", fmt.Errorf("mint actor token: %s %q contains '@' or '/', which separate the parts of iss and aud", f.name, f.v)
		}
	}
	pub, ok := s.Key.Public().(*rsa.PublicKey)
	if !ok {
		return "", fmt.Errorf("mint actor token: the token-issuer key is %T, want an RSA key", s.Key.Public())
	}
	if !pub.Equal(s.Cert.PublicKey) {
		return "", errors.New("mint actor token: the token-issuer certificate does not match the key")
	}
	var key any = cryptosigner.Opaque(s.Key)
	if k, ok := s.Key.(*rsa.PrivateKey); ok {
		key = k
	}
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("x5t", x5t(s.Cert.Raw))
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, opts)
	if err != nil {
		return "", fmt.Errorf("mint actor token: %w", err)
	}
	audRealm := o.ReceiverRealm
	if anyRealm(audRealm) {
		audRealm = s.Realm
	}
	id := s.ServiceName + "@" + s.Realm
	payload, err := json.Marshal(actorClaims{
		Audience:             o.ReceiverServiceName + "/" + strings.ToLower(o.ReceiverHost) + "@" + audRealm,
		Issuer:               id,
		NotBefore:            strconv.FormatInt(o.Now.Unix(), 10),
		Expires:              strconv.FormatInt(o.Now.Add(o.Lifetime).Unix(), 10),
		NameID:               id,
		TrustedForDelegation: strconv.FormatBool(o.TrustedForDelegation),
		IdentityProvider:     id,
	})
	if err != nil {
		return "", fmt.Errorf("mint actor token: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("mint actor token: sign: %w", err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("mint actor token: %w", err)
	}
	return tok, nil
}

// User is the user a call is made for, in the claims of the outer token.
// [MS-SPS2SAUTH] 3.1.5 step 3 puts the user's identity in the outer token;
// [MS-XOAUTH] 3.2.5.6 expects "a nameid claim with the UPN value of the
// logged-on user"; TokenHelper writes nameid (a SID, lower case) with nii.
// smtp, sip and upn are the further user claims Exchange and Lync are
// known to exchange; the specification pages read for this package did not
// list them in full, so none of them is required on its own.
type User struct {
	// NII is the name identifier issuer: "urn:office:idp:activedirectory"
	// for an on-premises account (TokenHelper), or
	// "urn:federation:MicrosoftOnline".
	NII string
	// NameID, SMTP, SIP and UPN identify the user; at least one is needed.
	NameID, SMTP, SIP, UPN string
}

// outerClaims are the claims of an outer token: aud, iss, nbf and exp
// repeat the actor's (its iss is the actor's nameid, "outer token issuer
// should match actor token nameid", TokenHelper), then the user's.
type outerClaims struct {
	Audience   string          `json:"aud"`
	Issuer     string          `json:"iss"`
	NotBefore  json.RawMessage `json:"nbf,omitempty"`
	Expires    json.RawMessage `json:"exp,omitempty"`
	NII        string          `json:"nii"`
	NameID     string          `json:"nameid,omitempty"`
	SMTP       string          `json:"smtp,omitempty"`
	SIP        string          `json:"sip,omitempty"`
	UPN        string          `json:"upn,omitempty"`
	ActorToken string          `json:"actortoken"`
}

// WrapUser returns the unsigned outer token (header {typ JWT, alg none}) of
// a call on behalf of u by the issuer of actorToken: aud, nbf and exp as
// the actor token has them, iss the actor's nameid, u's claims, and
// actortoken carrying actorToken itself.
func WrapUser(actorToken string, u User) (string, error) {
	_, inner, err := Parse(actorToken)
	if err != nil {
		return "", fmt.Errorf("wrap user token: actor token: %w", err)
	}
	nameID, _ := inner["nameid"].(string)
	if nameID == "" {
		return "", errors.New("wrap user token: the actor token has no nameid")
	}
	aud, _ := inner["aud"].(string)
	if aud == "" {
		return "", errors.New("wrap user token: the actor token has no aud")
	}
	switch {
	case u.NII == "":
		return "", errors.New("wrap user token: the user needs a name identifier issuer (nii)")
	case u.NameID == "" && u.SMTP == "" && u.SIP == "" && u.UPN == "":
		return "", errors.New("wrap user token: the user needs a nameid, smtp, sip or upn")
	}
	raw := func(k string) json.RawMessage {
		if v, ok := inner[k]; ok {
			b, _ := json.Marshal(v)
			return b
		}
		return nil
	}
	payload, err := json.Marshal(outerClaims{
		Audience: aud, Issuer: nameID, NotBefore: raw("nbf"), Expires: raw("exp"),
		NII: u.NII, NameID: u.NameID, SMTP: u.SMTP, SIP: u.SIP, UPN: u.UPN,
		ActorToken: actorToken,
	})
	if err != nil {
		return "", fmt.Errorf("wrap user token: %w", err)
	}
	header := []byte(`{"typ":"JWT","alg":"none"}`)
	return base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(payload) + ".", nil
}

// Parse decodes a compact JWT's header and claims without verifying
// anything, for diagnostics: actor tokens and unsigned outer tokens alike.
// It never panics; numbers come back as float64.
func Parse(token string) (header map[string]any, claims map[string]any, err error) {
	if len(token) > maxTokenSize {
		return nil, nil, fmt.Errorf("token is %d bytes, over the %d-byte limit", len(token), maxTokenSize)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, nil, fmt.Errorf("token has %d dot-separated parts, want 3", len(parts))
	}
	if header, err = decodeObject("header", parts[0]); err != nil {
		return nil, nil, err
	}
	if claims, err = decodeObject("claims", parts[1]); err != nil {
		return nil, nil, err
	}
	if _, err := base64.RawURLEncoding.DecodeString(parts[2]); err != nil {
		return nil, nil, fmt.Errorf("signature is not base64url: %w", err)
	}
	return header, claims, nil
}

// decodeObject decodes one base64url JSON object of a compact token.
func decodeObject(what, part string) (map[string]any, error) {
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		return nil, fmt.Errorf("%s is not base64url: %w", what, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s is not JSON: %w", what, err)
	}
	if m == nil {
		return nil, fmt.Errorf("%s is not a JSON object", what)
	}
	return m, nil
}

// Partner is a partner application as a receiver holds it: its identifier,
// the realm it is registered with, whether it is enabled, and the signing
// certificates from the metadata document the receiver last downloaded for
// it (not the partner's current ones: a receiver that has not refreshed
// still holds the old keys, and that is exactly the failure validation must
// show).
type Partner struct {
	ApplicationIdentifier string
	// Realm is the partner's realm as registered (the part of its metadata
	// issuer after '@'): the realm its tokens' iss must carry. Empty or
	// AnyRealm accepts any, as a partner registered from Exchange's
	// metadata ("00000002-…@*") does.
	Realm        string
	Enabled      bool
	Certificates []*x509.Certificate
}

// Receiver is one host of a deployment that accepts actor tokens:
// ServiceName is its well-known application identifier, Hostname the name
// partners address it by, Realm its OAuth realm, Partners its partner
// applications. Several partners may share an identifier (Exchange registers
// one per Lync deployment); a token may use a key of any enabled one. Skew
// is the clock-skew allowance: zero means DefaultSkew, a negative value none.
type Receiver struct {
	ServiceName, Hostname string
	// Realm is the receiver's realm. Empty or AnyRealm is Exchange's
	// default: tokens for any accepted domain are accepted
	// (https://learn.microsoft.com/powershell/module/exchange/set-authconfig,
	// -Realm: a token "from a domain that's not an accepted domain ... must
	// contain the specified realm").
	Realm string
	// AcceptedDomains are Exchange's accepted domains: an aud realm equal
	// to one of them is accepted whatever Realm is. When Realm is empty or
	// AnyRealm and no accepted domains are given, any aud realm is
	// accepted: the receiver serves every realm and nothing narrower is
	// known. Realms compare case-sensitively, accepted domains included
	// ([MS-XOAUTH] 3.2.5.6, URL at Validate).
	AcceptedDomains []string
	Partners        []Partner
	Skew            time.Duration
}

// Reason says which acceptance rule a token broke.
type Reason string

// The reasons a receiver rejects a token, one per rule, in the order the
// rules are checked.
const (
	// ReasonMalformed: not a compact RS256 JWS with an x5t (or kid) header
	// and well-formed iss, nameid, aud, nbf and exp claims; or, for an
	// outer token, not an unsigned JWT carrying an actortoken.
	ReasonMalformed Reason = "malformed"
	// ReasonUnknownIssuer: no partner has the iss client id as its identifier.
	ReasonUnknownIssuer Reason = "unknown-issuer"
	// ReasonPartnerDisabled: every partner with that identifier is disabled.
	ReasonPartnerDisabled Reason = "partner-disabled"
	// ReasonUnknownKey: no certificate of those partners has the token's x5t.
	ReasonUnknownKey Reason = "unknown-key"
	// ReasonBadSignature: the signature does not verify with that certificate.
	ReasonBadSignature Reason = "bad-signature"
	// ReasonWrongAudience: aud's client id is not the receiver's
	// ServiceName.
	ReasonWrongAudience Reason = "wrong-audience"
	// ReasonWrongHost: aud's hostname is not the receiver's.
	ReasonWrongHost Reason = "wrong-host"
	// ReasonRealmMismatch: aud's realm is not one the receiver serves, or
	// iss's realm is not the one the partner is registered with.
	ReasonRealmMismatch Reason = "realm-mismatch"
	// ReasonNotYetValid: now is before nbf, less the skew allowance.
	ReasonNotYetValid Reason = "not-yet-valid"
	// ReasonExpired: now is after exp, plus the skew allowance.
	ReasonExpired Reason = "expired"
	// ReasonActorMismatch: an outer token's iss is not its actor token's
	// nameid.
	ReasonActorMismatch Reason = "actor-mismatch"
)

// ValidationError is a rejected token: the rule it broke and the details.
type ValidationError struct {
	Reason Reason
	Detail string
}

// Error reads "token rejected: <reason>: <detail>".
func (e *ValidationError) Error() string {
	return fmt.Sprintf("token rejected: %s: %s", e.Reason, e.Detail)
}

func reject(r Reason, format string, args ...any) error {
	return &ValidationError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// Claims are the claims of an accepted actor token. IdentityProvider is
// empty when the token has none (TokenHelper writes none);
// TrustedForDelegation is false when the claim is absent (TokenHelper
// omits it from app-only tokens).
type Claims struct {
	Issuer, NameID, Audience, IdentityProvider string
	NotBefore, Expires                         time.Time
	TrustedForDelegation                       bool
}

// tokenClaims are the claims Validate reads, before their checks. nbf, exp
// and trustedfordelegation are raw: the products write strings, JWT
// libraries numbers and booleans.
type tokenClaims struct {
	Audience             string          `json:"aud"`
	Issuer               string          `json:"iss"`
	NameID               string          `json:"nameid"`
	IdentityProvider     string          `json:"identityprovider"`
	NotBefore            json.RawMessage `json:"nbf"`
	Expires              json.RawMessage `json:"exp"`
	TrustedForDelegation json.RawMessage `json:"trustedfordelegation"`
}

// parsed is a token's claims split into the parts the rules compare.
type parsed struct {
	claims              Claims
	issClient, issRealm string
	aud                 audience
}

// audience is aud split into its three parts.
type audience struct{ client, host, realm string }

// Validate accepts token at time now, or returns a *ValidationError whose
// Reason names the first rule it breaks, checked in this order: the token
// parses; its iss client id (before '@', case-sensitive) is a partner's
// identifier; such a partner is enabled; the x5t (or kid) header names one
// of the enabled partners' certificates; the signature verifies with it;
// aud's client id is ServiceName (case-sensitive); aud's host is Hostname
// (any case); aud's realm is one the receiver serves (case-sensitive; see
// Receiver.Realm and AcceptedDomains); iss's realm is the one the key's
// partner is registered with (see Partner.Realm); and nbf-skew <= now <=
// exp+skew. The signature, iss and aud rules are [MS-XOAUTH] 3.2.5.6
// "Server-to-Server Validation Criteria",
// https://learn.microsoft.com/en-us/openspecs/exchange_server_protocols/ms-xoauth/5c7bea18-6b70-4f02-826f-e4c6d6f3c86b.
func (r Receiver) Validate(token string, now time.Time) (*Claims, error) {
	c, _, err := r.validate(token, now)
	return c, err
}

// validate is Validate, also returning the parsed token for ValidateUser.
func (r Receiver) validate(token string, now time.Time) (*Claims, *parsed, error) {
	if len(token) > maxTokenSize {
		return nil, nil, reject(ReasonMalformed, "token is %d bytes, over the %d-byte limit", len(token), maxTokenSize)
	}
	jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, nil, reject(ReasonMalformed, "not a compact RS256 JWS: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, nil, reject(ReasonMalformed, "%d signatures, want 1", len(jws.Signatures))
	}
	thumb, rawThumb, err := keyThumbprint(jws.Signatures[0].Protected)
	if err != nil {
		return nil, nil, reject(ReasonMalformed, "%v", err)
	}
	p, err := parseClaims(jws.UnsafePayloadWithoutVerification())
	if err != nil {
		return nil, nil, reject(ReasonMalformed, "%v", err)
	}

	var known, enabled int
	var cert *x509.Certificate
	var owner Partner
	for _, partner := range r.Partners {
		if partner.ApplicationIdentifier != p.issClient {
			continue
		}
		known++
		if !partner.Enabled {
			continue
		}
		enabled++
		for _, c := range partner.Certificates {
			if c == nil {
				continue
			}
			if sum := sha1.Sum(c.Raw); cert == nil && bytes.Equal(sum[:], thumb) {
				cert, owner = c, partner
			}
		}
	}
	switch {
	case known == 0:
		return nil, nil, reject(ReasonUnknownIssuer, "no partner application has identifier %q", p.issClient)
	case enabled == 0:
		return nil, nil, reject(ReasonPartnerDisabled, "the partner application %q is disabled", p.issClient)
	case cert == nil:
		return nil, nil, reject(ReasonUnknownKey, "no certificate in the metadata held for partner %q has x5t %q", p.issClient, rawThumb)
	}
	if _, err := jws.Verify(cert.PublicKey); err != nil {
		return nil, nil, reject(ReasonBadSignature, "signature does not verify with the certificate %q (x5t %q): %v", cert.Subject.String(), rawThumb, err)
	}

	if err := r.checkAudience(p.aud, ""); err != nil {
		return nil, nil, err
	}
	if !anyRealm(owner.Realm) && p.issRealm != owner.Realm {
		return nil, nil, reject(ReasonRealmMismatch, "iss realm is %q, partner %q is registered with realm %q", p.issRealm, p.issClient, owner.Realm)
	}

	if err := r.checkTime(p.claims.NotBefore, p.claims.Expires, now); err != nil {
		return nil, nil, err
	}
	c := p.claims
	return &c, p, nil
}

// checkAudience applies [MS-XOAUTH] 3.2.5.6's rules for aud: its client
// id is the receiver's (case-sensitive), its host the receiver (any case),
// its realm one the receiver serves (case-sensitive). what prefixes the
// detail ("outer token: ").
func (r Receiver) checkAudience(a audience, what string) error {
	switch {
	case a.client != r.ServiceName:
		return reject(ReasonWrongAudience, "%saud client id is %q, want %q", what, a.client, r.ServiceName)
	case !strings.EqualFold(a.host, r.Hostname):
		return reject(ReasonWrongHost, "%saud host is %q, want %q", what, a.host, r.Hostname)
	case !r.servesRealm(a.realm):
		return reject(ReasonRealmMismatch, "%saud realm is %q, want %s", what, a.realm, r.realmsWanted())
	}
	return nil
}

// servesRealm reports whether an aud realm is one r accepts.
func (r Receiver) servesRealm(realm string) bool {
	if !anyRealm(r.Realm) && realm == r.Realm {
		return true
	}
	for _, d := range r.AcceptedDomains {
		if realm == d {
			return true
		}
	}
	return anyRealm(r.Realm) && len(r.AcceptedDomains) == 0
}

// realmsWanted describes the aud realms r accepts, for a rejection.
func (r Receiver) realmsWanted() string {
	var want []string
	if !anyRealm(r.Realm) {
		want = append(want, strconv.Quote(r.Realm))
	}
	if len(r.AcceptedDomains) > 0 {
		q := make([]string, len(r.AcceptedDomains))
		for i, d := range r.AcceptedDomains {
			q[i] = strconv.Quote(d)
		}
		want = append(want, "an accepted domain ("+strings.Join(q, ", ")+")")
	}
	return strings.Join(want, " or ")
}

// checkTime applies nbf-skew <= now <= exp+skew.
func (r Receiver) checkTime(nbf, exp, now time.Time) error {
	skew := r.Skew
	if skew == 0 {
		skew = DefaultSkew
	} else if skew < 0 {
		skew = 0
	}
	if now.Before(nbf.Add(-skew)) {
		return reject(ReasonNotYetValid, "valid from %s, now is %s (skew allowance %s)",
			nbf.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	}
	if now.After(exp.Add(skew)) {
		return reject(ReasonExpired, "expired at %s, now is %s (skew allowance %s)",
			exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	}
	return nil
}

// keyThumbprint reads the signing certificate's SHA-1 thumbprint from the
// header: x5t, which every product sends ([MS-XOAUTH] example; Exchange's
// identity token, https://learn.microsoft.com/office/dev/add-ins/outlook/inside-the-identity-token),
// else kid, which Entra ID (the hybrid STS) sends with the same value
// ("x5t functions the same (in use and value) as kid",
// https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference).
// Both present and different is malformed.
func keyThumbprint(h jose.Header) ([]byte, string, error) {
	rawX5T, _ := h.ExtraHeaders["x5t"].(string)
	if rawX5T == "" && h.KeyID != "" {
		thumb, ok := decodeX5T(h.KeyID)
		if !ok {
			return nil, "", fmt.Errorf("header has no x5t, and kid %q is not a base64url SHA-1 thumbprint", h.KeyID)
		}
		return thumb, h.KeyID, nil
	}
	thumb, ok := decodeX5T(rawX5T)
	if !ok {
		return nil, "", fmt.Errorf("header x5t %q is not a base64url SHA-1 thumbprint", rawX5T)
	}
	if h.KeyID != "" {
		if k, ok := decodeX5T(h.KeyID); ok && !bytes.Equal(k, thumb) {
			return nil, "", fmt.Errorf("header kid %q and x5t %q name different certificates", h.KeyID, rawX5T)
		}
	}
	return thumb, rawX5T, nil
}

// parseClaims decodes and splits the claims; any error is a malformed token.
func parseClaims(payload []byte) (*parsed, error) {
	var tc tokenClaims
	if err := json.Unmarshal(payload, &tc); err != nil {
		return nil, fmt.Errorf("claims: %w", err)
	}
	var p parsed
	var err error
	if p.issClient, p.issRealm, err = splitIssuer("iss", tc.Issuer); err != nil {
		return nil, err
	}
	if tc.NameID == "" {
		return nil, errors.New("claim nameid is missing")
	}
	if p.aud, err = splitAudience(tc.Audience); err != nil {
		return nil, err
	}
	nbf, err := numericDate("nbf", tc.NotBefore)
	if err != nil {
		return nil, err
	}
	exp, err := numericDate("exp", tc.Expires)
	if err != nil {
		return nil, err
	}
	if exp.Before(nbf) {
		return nil, fmt.Errorf("exp %d is before nbf %d", exp.Unix(), nbf.Unix())
	}
	tfd, err := delegation(tc.TrustedForDelegation)
	if err != nil {
		return nil, err
	}
	p.claims = Claims{
		Issuer:               tc.Issuer,
		NameID:               tc.NameID,
		Audience:             tc.Audience,
		IdentityProvider:     tc.IdentityProvider,
		NotBefore:            nbf,
		Expires:              exp,
		TrustedForDelegation: tfd,
	}
	return &p, nil
}

// splitIssuer splits <client id>@<realm>. The realm may be absent:
// TokenHelper writes a bare client id when its realm is empty; whether
// that is accepted is the partner's registered realm's to say.
func splitIssuer(name, v string) (client, realm string, err error) {
	client, realm, at := strings.Cut(v, "@")
	if client == "" || (at && realm == "") || strings.ContainsAny(client, "/") || strings.Contains(realm, "@") {
		return "", "", fmt.Errorf("%s %q is not <client id>@<realm>", name, v)
	}
	return client, realm, nil
}

// splitAudience splits <client id>/<host>@<realm>: "the aud claim value
// MUST contain three parts" ([MS-XOAUTH] 3.2.5.6), and [MS-SPS2SAUTH]
// 3.1.5 gives the same format. Exchange's metadata lists
// allowedAudiences "00000002-…@*" without a host, but that describes the
// receiver, not a token's aud, so a hostless aud is malformed.
func splitAudience(v string) (audience, error) {
	var a audience
	left, realm, ok := strings.Cut(v, "@")
	if ok {
		a.realm = realm
		a.client, a.host, ok = strings.Cut(left, "/")
	}
	if !ok || a.client == "" || a.host == "" || a.realm == "" || strings.ContainsAny(a.host, "/") || strings.Contains(a.realm, "@") {
		return audience{}, fmt.Errorf("aud %q is not <client id>/<host>@<realm>", v)
	}
	return a, nil
}

// numericDate reads a time in Unix seconds: a JSON string of digits, as the
// products write it ([MS-XOAUTH] example "nbf":"1323380070"; [MS-SPS2SAUTH]
// 3.1.5: every claim value is a string), or a JSON number, as RFC 7519's
// NumericDate is and generic JWT libraries write it. Fractions are dropped.
func numericDate(name string, raw json.RawMessage) (time.Time, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return time.Time{}, fmt.Errorf("claim %s is missing", name)
	}
	// json.Number takes a number, or a string holding a valid JSON number.
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return time.Time{}, fmt.Errorf("claim %s %s is not a time in Unix seconds", name, raw)
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.Abs(f) > 1<<53 {
		return time.Time{}, fmt.Errorf("claim %s %s is not a time in Unix seconds", name, raw)
	}
	return time.Unix(int64(f), 0), nil
}

// delegation reads trustedfordelegation. The products write the strings
// "true" and "false" ([MS-SPS2SAUTH] 3.1.5: string values, lower case;
// TokenHelper writes "true"); other cases of those strings and a JSON
// boolean are what generic writers produce (.NET's bool.ToString gives
// "True") and mean the same, so they are accepted. Absent is false:
// TokenHelper omits the claim from app-only tokens.
func delegation(raw json.RawMessage) (bool, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return false, nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return false, fmt.Errorf("claim trustedfordelegation: %w", err)
	}
	switch v := v.(type) {
	case bool:
		return v, nil
	case string:
		switch strings.ToLower(v) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
	}
	return false, fmt.Errorf("claim trustedfordelegation %s is not \"true\" or \"false\"", raw)
}

// UserClaims are the claims of an accepted outer token: the actor's, and
// the user the actor calls for.
type UserClaims struct {
	Actor            Claims
	Issuer, Audience string
	User             User
}

// outerRead are the claims ValidateUser reads from an outer token.
type outerRead struct {
	Audience   string          `json:"aud"`
	Issuer     string          `json:"iss"`
	NotBefore  json.RawMessage `json:"nbf"`
	Expires    json.RawMessage `json:"exp"`
	NII        string          `json:"nii"`
	NameID     string          `json:"nameid"`
	SMTP       string          `json:"smtp"`
	SIP        string          `json:"sip"`
	UPN        string          `json:"upn"`
	ActorToken string          `json:"actortoken"`
}

// ValidateUser accepts the outer token of a user call at time now, or
// returns a *ValidationError: the token is an unsigned JWT (alg none, empty
// signature) with an actortoken claim; the actor token passes Validate; the
// outer iss is the actor's nameid, compared case-sensitively
// (ReasonActorMismatch; [MS-XOAUTH] 3.2.5.6); the outer aud passes the
// same aud rules as the actor's; and the outer nbf and exp, where present,
// hold now as Validate's do. The user claims themselves are the receiver's
// to map to an account and are not judged here.
func (r Receiver) ValidateUser(token string, now time.Time) (*UserClaims, error) {
	header, _, err := Parse(token)
	if err != nil {
		return nil, reject(ReasonMalformed, "outer token: %v", err)
	}
	if alg, _ := header["alg"].(string); alg != "none" || !strings.HasSuffix(token, ".") {
		return nil, reject(ReasonMalformed, "outer token: alg is %q with a signature, want an unsigned token (alg none)", header["alg"])
	}
	_, payload, _ := strings.Cut(token, ".")
	payload, _, _ = strings.Cut(payload, ".")
	b, _ := base64.RawURLEncoding.DecodeString(payload)
	var o outerRead
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, reject(ReasonMalformed, "outer token claims: %v", err)
	}
	if o.ActorToken == "" {
		return nil, reject(ReasonMalformed, "outer token has no actortoken claim")
	}
	actor, _, err := r.validate(o.ActorToken, now)
	if err != nil {
		var ve *ValidationError
		if errors.As(err, &ve) {
			return nil, &ValidationError{Reason: ve.Reason, Detail: "actor token: " + ve.Detail}
		}
		return nil, err
	}
	if o.Issuer != actor.NameID {
		return nil, reject(ReasonActorMismatch, "outer iss %q is not the actor's nameid %q", o.Issuer, actor.NameID)
	}
	a, err := splitAudience(o.Audience)
	if err != nil {
		return nil, reject(ReasonMalformed, "outer token: %v", err)
	}
	if err := r.checkAudience(a, "outer token: "); err != nil {
		return nil, err
	}
	nbf, exp := actor.NotBefore, actor.Expires
	if len(o.NotBefore) > 0 {
		if nbf, err = numericDate("nbf", o.NotBefore); err != nil {
			return nil, reject(ReasonMalformed, "outer token: %v", err)
		}
	}
	if len(o.Expires) > 0 {
		if exp, err = numericDate("exp", o.Expires); err != nil {
			return nil, reject(ReasonMalformed, "outer token: %v", err)
		}
	}
	if err := r.checkTime(nbf, exp, now); err != nil {
		var ve *ValidationError
		errors.As(err, &ve)
		return nil, &ValidationError{Reason: ve.Reason, Detail: "outer token: " + ve.Detail}
	}
	return &UserClaims{
		Actor: *actor, Issuer: o.Issuer, Audience: o.Audience,
		User: User{NII: o.NII, NameID: o.NameID, SMTP: o.SMTP, SIP: o.SIP, UPN: o.UPN},
	}, nil
}
