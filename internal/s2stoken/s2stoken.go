// Package s2stoken mints and validates the server-to-server (S2S) OAuth actor
// tokens that Lync / Skype for Business, Exchange and SharePoint exchange,
// and wraps them in the unsigned outer tokens of user calls.
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

// x5t is base64url(SHA-1(DER)) without padding.
func x5t(der []byte) string {
	sum := sha1.Sum(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// decodeX5T accepts an x5t in base64url, padded or not, that decodes to a
// SHA-1 digest.
func decodeX5T(s string) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == sha1.Size {
			return b, true
		}
	}
	return nil, false
}

// Signer mints actor tokens for one deployment: ServiceName is its
// well-known application identifier, Realm its OAuth realm, Cert its
// token-issuer certificate and Key that certificate's RSA private key (an
// *rsa.PrivateKey or any crypto.Signer over an RSA key, such as a key held
// by the operating system).
type Signer struct {
	ServiceName, Realm string
	Cert               *x509.Certificate
	Key                crypto.Signer
}

// actorClaims are the claims of an actor token, in the products' names.
type actorClaims struct {
	Audience             string `json:"aud"`
	Issuer               string `json:"iss"`
	NotBefore            int64  `json:"nbf"`
	Expires              int64  `json:"exp"`
	NameID               string `json:"nameid"`
	TrustedForDelegation string `json:"trustedfordelegation"`
	IdentityProvider     string `json:"identityprovider"`
}

// MintActor returns an actor token from s to the receiverServiceName
// deployment's host receiverHost, valid from now for lifetime.
func (s Signer) MintActor(receiverServiceName, receiverHost string, now time.Time, lifetime time.Duration, trustedForDelegation bool) (string, error) {
	switch {
	case s.ServiceName == "" || s.Realm == "":
		return "", errors.New("mint actor token: the signer needs a service name and a realm")
	case receiverServiceName == "" || receiverHost == "":
		return "", errors.New("mint actor token: the receiver needs a service name and a host")
	case s.Cert == nil || s.Key == nil:
		return "", errors.New("mint actor token: the signer needs a certificate and its key")
	case lifetime <= 0:
		return "", fmt.Errorf("mint actor token: lifetime %s is not positive", lifetime)
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
	id := s.ServiceName + "@" + s.Realm
	payload, err := json.Marshal(actorClaims{
		Audience:             receiverServiceName + "/" + receiverHost + "@" + s.Realm,
		Issuer:               id,
		NotBefore:            now.Unix(),
		Expires:              now.Add(lifetime).Unix(),
		NameID:               id,
		TrustedForDelegation: fmt.Sprint(trustedForDelegation),
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

// WrapUser returns the unsigned outer token (alg none) of a user call on
// behalf of the issuer of actorToken: userClaims (such as nii, smtp, sip,
// upn, aud, nbf, exp) plus iss, set to the actor's nameid, and actortoken,
// carrying actorToken itself. userClaims may repeat the right iss but must
// not set another, nor set actortoken.
func WrapUser(actorToken string, userClaims map[string]any) (string, error) {
	_, inner, err := Parse(actorToken)
	if err != nil {
		return "", fmt.Errorf("wrap user token: actor token: %w", err)
	}
	nameID, _ := inner["nameid"].(string)
	if nameID == "" {
		return "", errors.New("wrap user token: the actor token has no nameid")
	}
	if iss, ok := userClaims["iss"]; ok && iss != nameID {
		return "", fmt.Errorf("wrap user token: user claim iss %v differs from the actor's nameid %q", iss, nameID)
	}
	if _, ok := userClaims["actortoken"]; ok {
		return "", errors.New("wrap user token: user claims must not set actortoken")
	}
	claims := make(map[string]any, len(userClaims)+2)
	for k, v := range userClaims {
		claims[k] = v
	}
	claims["iss"] = nameID
	claims["actortoken"] = actorToken
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("wrap user token: %w", err)
	}
	header := []byte(`{"alg":"none","typ":"JWT"}`)
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
// whether it is enabled, and the signing certificates from the metadata
// document the receiver last downloaded for it (not the partner's current
// ones: a receiver that has not refreshed still holds the old keys, and that
// is exactly the failure validation must show).
type Partner struct {
	ApplicationIdentifier string
	Enabled               bool
	Certificates          []*x509.Certificate
}

// Receiver is one host of a deployment that accepts actor tokens:
// ServiceName is its well-known application identifier, Hostname the name
// partners address it by, Realm its OAuth realm, Partners its partner
// applications. Several partners may share an identifier (Exchange registers
// one per Lync deployment); a token may use a key of any enabled one. Skew
// is the clock-skew allowance: zero means DefaultSkew, a negative value none.
type Receiver struct {
	ServiceName, Hostname, Realm string
	Partners                     []Partner
	Skew                         time.Duration
}

// Reason says which acceptance rule a token broke.
type Reason string

// The reasons a receiver rejects a token, one per rule, in the order the
// rules are checked.
const (
	// ReasonMalformed: not a compact RS256 JWS with an x5t header and
	// well-formed iss, aud, nbf and exp claims.
	ReasonMalformed Reason = "malformed"
	// ReasonUnknownIssuer: no partner has the iss client id as its identifier.
	ReasonUnknownIssuer Reason = "unknown-issuer"
	// ReasonPartnerDisabled: every partner with that identifier is disabled.
	ReasonPartnerDisabled Reason = "partner-disabled"
	// ReasonUnknownKey: no certificate of those partners has the token's x5t.
	ReasonUnknownKey Reason = "unknown-key"
	// ReasonBadSignature: the signature does not verify with that certificate.
	ReasonBadSignature Reason = "bad-signature"
	// ReasonWrongAudience: aud's client id is not the receiver's ServiceName.
	ReasonWrongAudience Reason = "wrong-audience"
	// ReasonWrongHost: aud's hostname is not the receiver's.
	ReasonWrongHost Reason = "wrong-host"
	// ReasonRealmMismatch: aud's realm or iss's realm is not the receiver's.
	ReasonRealmMismatch Reason = "realm-mismatch"
	// ReasonNotYetValid: now is before nbf, less the skew allowance.
	ReasonNotYetValid Reason = "not-yet-valid"
	// ReasonExpired: now is after exp, plus the skew allowance.
	ReasonExpired Reason = "expired"
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

// Claims are the claims of an accepted actor token.
type Claims struct {
	Issuer, NameID, Audience, IdentityProvider string
	NotBefore, Expires                         time.Time
	TrustedForDelegation                       bool
}

// tokenClaims are the claims Validate reads, before their checks.
type tokenClaims struct {
	Audience             string          `json:"aud"`
	Issuer               string          `json:"iss"`
	NameID               string          `json:"nameid"`
	IdentityProvider     string          `json:"identityprovider"`
	NotBefore            *json.Number    `json:"nbf"`
	Expires              *json.Number    `json:"exp"`
	TrustedForDelegation json.RawMessage `json:"trustedfordelegation"`
}

// parsed is a token's claims split into the parts the rules compare.
type parsed struct {
	claims                       Claims
	issClient, issRealm          string
	audClient, audHost, audRealm string
}

// Validate accepts token at time now, or returns a *ValidationError whose
// Reason names the first rule it breaks, checked in this order: the token
// parses; its iss client id (before '@', case-sensitive) is a partner's
// identifier; such a partner is enabled; the x5t header names one of the
// enabled partners' certificates; the signature verifies with it; aud's
// client id is ServiceName (case-sensitive); aud's host is Hostname (any
// case); aud's realm and iss's realm are Realm (case-sensitive); and
// nbf-skew <= now <= exp+skew.
func (r Receiver) Validate(token string, now time.Time) (*Claims, error) {
	if len(token) > maxTokenSize {
		return nil, reject(ReasonMalformed, "token is %d bytes, over the %d-byte limit", len(token), maxTokenSize)
	}
	jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, reject(ReasonMalformed, "not a compact RS256 JWS: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, reject(ReasonMalformed, "%d signatures, want 1", len(jws.Signatures))
	}
	rawX5T, _ := jws.Signatures[0].Protected.ExtraHeaders["x5t"].(string)
	thumb, ok := decodeX5T(rawX5T)
	if !ok {
		return nil, reject(ReasonMalformed, "header x5t %q is not a base64url SHA-1 thumbprint", rawX5T)
	}
	p, err := parseClaims(jws.UnsafePayloadWithoutVerification())
	if err != nil {
		return nil, reject(ReasonMalformed, "%v", err)
	}

	var known, enabled int
	var cert *x509.Certificate
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
				cert = c
			}
		}
	}
	switch {
	case known == 0:
		return nil, reject(ReasonUnknownIssuer, "no partner application has identifier %q", p.issClient)
	case enabled == 0:
		return nil, reject(ReasonPartnerDisabled, "the partner application %q is disabled", p.issClient)
	case cert == nil:
		return nil, reject(ReasonUnknownKey, "no certificate in the metadata held for partner %q has x5t %q", p.issClient, rawX5T)
	}
	if _, err := jws.Verify(cert.PublicKey); err != nil {
		return nil, reject(ReasonBadSignature, "signature does not verify with the certificate %q (x5t %q): %v", cert.Subject.String(), rawX5T, err)
	}

	if p.audClient != r.ServiceName {
		return nil, reject(ReasonWrongAudience, "aud client id is %q, want %q", p.audClient, r.ServiceName)
	}
	if !strings.EqualFold(p.audHost, r.Hostname) {
		return nil, reject(ReasonWrongHost, "aud host is %q, want %q", p.audHost, r.Hostname)
	}
	// A receiver without a realm of its own (Exchange's blank AuthConfig
	// realm) accepts tokens for any accepted domain.
	if r.Realm != "" && p.audRealm != r.Realm {
		return nil, reject(ReasonRealmMismatch, "aud realm is %q, want %q", p.audRealm, r.Realm)
	}
	if r.Realm != "" && p.issRealm != r.Realm {
		return nil, reject(ReasonRealmMismatch, "iss realm is %q, want %q", p.issRealm, r.Realm)
	}

	skew := r.Skew
	if skew == 0 {
		skew = DefaultSkew
	} else if skew < 0 {
		skew = 0
	}
	if now.Before(p.claims.NotBefore.Add(-skew)) {
		return nil, reject(ReasonNotYetValid, "valid from %s, now is %s (skew allowance %s)",
			p.claims.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	}
	if now.After(p.claims.Expires.Add(skew)) {
		return nil, reject(ReasonExpired, "expired at %s, now is %s (skew allowance %s)",
			p.claims.Expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	}
	c := p.claims
	return &c, nil
}

// parseClaims decodes and splits the claims; any error is a malformed token.
func parseClaims(payload []byte) (*parsed, error) {
	var tc tokenClaims
	if err := json.Unmarshal(payload, &tc); err != nil {
		return nil, fmt.Errorf("claims: %w", err)
	}
	var p parsed
	var ok bool
	if p.issClient, p.issRealm, ok = strings.Cut(tc.Issuer, "@"); !ok || p.issClient == "" || p.issRealm == "" {
		return nil, fmt.Errorf("iss %q is not <client id>@<realm>", tc.Issuer)
	}
	audLeft, audRealm, ok := strings.Cut(tc.Audience, "@")
	p.audRealm = audRealm
	if ok {
		p.audClient, p.audHost, ok = strings.Cut(audLeft, "/")
	}
	if !ok || p.audClient == "" || p.audHost == "" || p.audRealm == "" {
		return nil, fmt.Errorf("aud %q is not <client id>/<host>@<realm>", tc.Audience)
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

// numericDate reads a JWT NumericDate (seconds since the epoch; fractions
// are dropped).
func numericDate(name string, n *json.Number) (time.Time, error) {
	if n == nil {
		return time.Time{}, fmt.Errorf("claim %s is missing", name)
	}
	f, err := n.Float64()
	if err != nil || math.Abs(f) > 1<<53 {
		return time.Time{}, fmt.Errorf("claim %s %s is not a time in Unix seconds", name, n.String())
	}
	return time.Unix(int64(f), 0), nil
}

// delegation reads trustedfordelegation: "true" or "false" in any case, a
// JSON boolean, or absent (false).
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
