// Package metadata builds, parses, validates, serves and downloads the JSON
// auth metadata documents that Lync / Skype for Business, Exchange and
// SharePoint publish for server-to-server OAuth.
//
// A receiving product trusts a partner by downloading the partner's document
// and caching its signing certificates; tokens the partner signs are then
// checked against those certificates (see package s2stoken). The rules for a
// valid document are the ones in SPEC.md section 2: the right serviceName,
// the right realm (or "*"), at least one signing key, and every key's
// certificate parses and matches its x5t.
package metadata

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// MaxSize is the largest document Parse and Fetcher accept, in bytes. Real
// documents carry two or three certificates and stay under 16 KiB; the limit
// only stops a wrong URL from feeding us an arbitrarily large body.
const MaxSize = 256 << 10

// Values of the fixed fields, as the products publish them.
const (
	// Version is the only document version the products publish.
	Version = "1.0"
	// UsageSigning marks a key that signs tokens.
	UsageSigning = "signing"
	// KeyTypeX509 is the keyvalue type of a DER certificate.
	KeyTypeX509 = "x509Certificate"
	// ProtocolOAuth2 is the protocol of the metadata endpoint.
	ProtocolOAuth2 = "OAuth2"
	// UsageMetadata is the usage of the endpoint that serves the document itself.
	UsageMetadata = "metadata"
)

// Document is an auth metadata document. Field names and JSON keys are the
// products' own; unknown JSON fields are ignored on input.
type Document struct {
	// ID identifies the document; the products use "_" followed by a GUID.
	ID string `json:"id"`
	// Version is "1.0".
	Version string `json:"version"`
	// Name is a display name; Build uses the publishing host.
	Name string `json:"name"`
	// Realm is the publisher's OAuth realm, or "*".
	Realm string `json:"realm"`
	// ServiceName is the publisher's well-known application identifier.
	ServiceName string `json:"serviceName"`
	// Issuer is "<serviceName>@<realm>", the iss of tokens the publisher signs.
	Issuer string `json:"issuer"`
	// AllowedAudiences lists the audiences the publisher accepts tokens for.
	AllowedAudiences []string `json:"allowedAudiences"`
	// Keys are the publisher's keys: during a rollover, current then next.
	Keys []Key `json:"keys"`
	// Endpoints lists where the publisher serves OAuth resources.
	Endpoints []Endpoint `json:"endpoints"`
}

// Key is one published key.
type Key struct {
	// Usage is "signing" for a token-signing key.
	Usage string `json:"usage"`
	// KeyInfo identifies the key.
	KeyInfo KeyInfo `json:"keyinfo"`
	// KeyValue carries the certificate.
	KeyValue KeyValue `json:"keyvalue"`
}

// KeyInfo identifies a key by its certificate's thumbprint.
type KeyInfo struct {
	// X5T is base64url(SHA-1(certificate DER)), without padding.
	X5T string `json:"x5t"`
}

// KeyValue carries a key's certificate.
type KeyValue struct {
	// Type is "x509Certificate".
	Type string `json:"type"`
	// Value is the certificate's DER in standard base64.
	Value string `json:"value"`
}

// Endpoint is one OAuth endpoint of the publisher.
type Endpoint struct {
	// Location is the endpoint's URL.
	Location string `json:"location"`
	// Protocol is "OAuth2".
	Protocol string `json:"protocol"`
	// Usage says what the endpoint is for; Build publishes "metadata".
	Usage string `json:"usage"`
}

// x5t is base64url(SHA-1(DER)) without padding, as in a JWS x5t header.
func x5t(der []byte) string {
	sum := sha1.Sum(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// decodeX5T accepts an x5t in base64url or standard base64, padded or not,
// as long as it decodes to a SHA-1 digest.
func decodeX5T(s string) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.StdEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == sha1.Size {
			return b, true
		}
	}
	return nil, false
}

// Build returns the document that a deployment of serviceName in realm
// publishes from hostOrName, signing with signing (the current certificate,
// then the next one during a rollover).
//
// hostOrName is the host FQDN (Lync pool, Exchange autodiscover host) or a
// SharePoint web application URL; the document's endpoint is the product's
// metadata URL on it, found from serviceName (an unknown serviceName gets the
// Lync path, /metadata/json/1).
//
// allowedAudiences holds "<serviceName>/<host>@<realm>", the audience a
// partner names when it calls this host, followed by the host-less
// "<serviceName>@<realm>" that the products publish for the deployment as a
// whole; with an empty hostOrName only the latter. The id is derived from
// serviceName, realm and host, so rebuilding the same document yields the
// same bytes and a changed document means a changed input.
func Build(serviceName, realm, hostOrName string, signing []*x509.Certificate) *Document {
	host, location := hostAndLocation(serviceName, hostOrName)
	d := &Document{
		ID:               documentID(serviceName, realm, host),
		Version:          Version,
		Name:             host,
		Realm:            realm,
		ServiceName:      serviceName,
		Issuer:           serviceName + "@" + realm,
		AllowedAudiences: []string{},
		Keys:             []Key{},
		Endpoints:        []Endpoint{},
	}
	if host != "" {
		d.AllowedAudiences = append(d.AllowedAudiences, serviceName+"/"+host+"@"+realm)
		d.Endpoints = append(d.Endpoints, Endpoint{Location: location, Protocol: ProtocolOAuth2, Usage: UsageMetadata})
	}
	d.AllowedAudiences = append(d.AllowedAudiences, serviceName+"@"+realm)
	for _, c := range signing {
		if c == nil {
			continue
		}
		d.Keys = append(d.Keys, Key{
			Usage:    UsageSigning,
			KeyInfo:  KeyInfo{X5T: x5t(c.Raw)},
			KeyValue: KeyValue{Type: KeyTypeX509, Value: base64.StdEncoding.EncodeToString(c.Raw)},
		})
	}
	return d
}

// hostAndLocation splits hostOrName into the bare host and the metadata URL
// the product of serviceName serves on it.
func hostAndLocation(serviceName, hostOrName string) (host, location string) {
	hostOrName = strings.TrimSpace(hostOrName)
	if hostOrName == "" {
		return "", ""
	}
	base := hostOrName
	if strings.Contains(hostOrName, "://") {
		if u, err := url.Parse(hostOrName); err == nil && u.Host != "" {
			host = u.Hostname()
		}
	} else {
		host = hostOrName
		base = "https://" + hostOrName
	}
	if host == "" {
		host = hostOrName
	}
	var p pb.Product
	switch serviceName {
	case products.ExchangeID:
		p = pb.Product_PRODUCT_EXCHANGE
	case products.SharePointID:
		p = pb.Product_PRODUCT_SHAREPOINT
	default:
		p = pb.Product_PRODUCT_LYNC
	}
	return host, strings.TrimRight(base, "/") + products.MetadataPath(p)
}

// documentID formats a digest of the inputs as "_" and a GUID, the shape of
// the products' own ids.
func documentID(serviceName, realm, host string) string {
	sum := sha256.Sum256([]byte(serviceName + "\x00" + realm + "\x00" + strings.ToLower(host)))
	h := hex.EncodeToString(sum[:16])
	return "_" + h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// Parse decodes a document. It accepts at most MaxSize bytes of JSON (a
// leading UTF-8 byte order mark, which Windows servers sometimes emit, is
// skipped) and checks nothing beyond the JSON shape: see Validate.
func Parse(data []byte) (*Document, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("document is %d bytes, over the %d-byte limit", len(data), MaxSize)
	}
	return decode(data)
}

// decode is Parse without the size limit, for callers that enforce their own.
func decode(data []byte) (*Document, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var d Document
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	return &d, nil
}

// Certificates parses the certificate of every key, in document order,
// whatever the key's usage. It does not check the x5t: Validate does.
func (d *Document) Certificates() ([]*x509.Certificate, error) {
	certs := make([]*x509.Certificate, 0, len(d.Keys))
	for i, k := range d.Keys {
		c, err := k.certificate()
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// certificate decodes and parses the key's certificate.
func (k Key) certificate() (*x509.Certificate, error) {
	if !strings.EqualFold(k.KeyValue.Type, KeyTypeX509) {
		return nil, fmt.Errorf("keyvalue type is %q, want %q", k.KeyValue.Type, KeyTypeX509)
	}
	der, err := base64.StdEncoding.DecodeString(k.KeyValue.Value)
	if err != nil {
		der, err = base64.RawStdEncoding.DecodeString(k.KeyValue.Value)
	}
	if err != nil {
		return nil, fmt.Errorf("keyvalue is not base64: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certificate does not parse: %w", err)
	}
	return c, nil
}

// Validate applies the rules for a valid document of the partner whose
// well-known identifier is wantServiceName in realm wantRealm, and returns
// the certificates of its signing keys in document order. Both comparisons
// are exact; a document realm of "*" matches any realm. The error is the
// reason the document is invalid, phrased to follow "is not a valid metadata
// document: ".
func Validate(d *Document, wantServiceName, wantRealm string) ([]*x509.Certificate, error) {
	if d == nil {
		return nil, errors.New("empty document")
	}
	if d.ServiceName != wantServiceName {
		return nil, fmt.Errorf("serviceName is %q, want %q", d.ServiceName, wantServiceName)
	}
	if wantRealm != "" && d.Realm != wantRealm && d.Realm != "*" {
		return nil, fmt.Errorf("realm is %q, want %q", d.Realm, wantRealm)
	}
	var signing []*x509.Certificate
	for i, k := range d.Keys {
		c, err := k.certificate()
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		got, ok := decodeX5T(k.KeyInfo.X5T)
		if !ok {
			return nil, fmt.Errorf("key %d: x5t %q is not a base64 SHA-1 thumbprint", i+1, k.KeyInfo.X5T)
		}
		if sum := sha1.Sum(c.Raw); !bytes.Equal(got, sum[:]) {
			return nil, fmt.Errorf("key %d: x5t %q does not match its certificate (x5t %q)", i+1, k.KeyInfo.X5T, x5t(c.Raw))
		}
		if strings.EqualFold(k.Usage, UsageSigning) {
			signing = append(signing, c)
		}
	}
	if len(signing) == 0 {
		return nil, errors.New("no signing key")
	}
	return signing, nil
}
