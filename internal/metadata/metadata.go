// Package metadata builds, parses, validates, serves and downloads the JSON
// auth metadata documents that Lync / Skype for Business, Exchange and
// SharePoint publish for server-to-server OAuth.
//
// A receiving product trusts a partner by downloading the partner's document
// and caching its signing certificates; tokens the partner signs are then
// checked against those certificates (see package s2stoken).
//
// The three products do not serve the same shape (see Shape): Lync and
// Exchange serve the full form with realm, keyinfo/x5t and endpoints;
// SharePoint serves only issuer, keys (keyValue, usage "Signing"), name and
// serviceName. A valid document of a partner has its serviceName, a realm
// (the realm field, else the part of issuer after "@") that is the wanted one
// or "*", at least one signing key, and every key's certificate parses and
// matches its x5t where one is given.
package metadata

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
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
	// UsageSigning marks a key that signs tokens; usage is compared without
	// regard to case, since SharePoint writes "Signing".
	UsageSigning = "signing"
	// UsageSigningSharePoint is the usage SharePoint writes.
	UsageSigningSharePoint = "Signing"
	// KeyTypeX509 is the keyvalue type of a DER certificate, as Lync and
	// Exchange write it; it is compared without regard to case.
	KeyTypeX509 = "x509Certificate"
	// KeyTypeX509SharePoint is the keyValue type as SharePoint writes it.
	KeyTypeX509SharePoint = "x509certificate"
	// ProtocolOAuth2 is the protocol of the metadata endpoint.
	ProtocolOAuth2 = "OAuth2"
	// UsageMetadata is the usage of the endpoint that serves the document itself.
	UsageMetadata = "metadata"
	// ExchangeName is the name Exchange publishes in its document.
	ExchangeName = "Exchange"
)

// Shape is the JSON form a document is written in: each product serves its
// own, and a document keeps the shape it was built or parsed in, so that
// writing it again yields what the product would serve.
type Shape int

const (
	// ShapeFull is the form Lync / Skype for Business and Exchange serve:
	// id, version, name, realm, serviceName, issuer, allowedAudiences, keys
	// with usage, keyinfo {x5t} and keyvalue {type, value}, and endpoints.
	// Exchange's realm is "*" and its issuer "00000002-…@*", as in the
	// document shown at
	// https://learn.microsoft.com/en-us/office/dev/add-ins/outlook/validate-an-identity-token
	ShapeFull Shape = iota
	// ShapeSharePoint is the form SharePoint serves at
	// /_layouts/15/metadata/json/1: issuer ("00000003-…@<farm id>"), keys
	// with keyValue {type "x509certificate", value} and usage "Signing",
	// name (the service name again) and serviceName, in that order, and
	// nothing else: no realm, no keyinfo/x5t, no endpoints. A captured
	// SharePoint Subscription Edition answer is shown in
	// https://www.rapid7.com/blog/post/ra-microsoft-sharepoint-jwt-token-authentication-bypass-cve-2026-55040
	ShapeSharePoint
)

// Document is an auth metadata document. Field names and JSON keys are the
// products' own; unknown JSON fields are ignored on input, and key names are
// matched without regard to case (keyvalue and keyValue, keyinfo and
// keyInfo), as the products differ in them.
type Document struct {
	// ID identifies the document; the products use "_" followed by a GUID.
	ID string `json:"id"`
	// Version is "1.0".
	Version string `json:"version"`
	// Name is a display name: the publishing host for Lync, "Exchange",
	// the service name for SharePoint.
	Name string `json:"name"`
	// Realm is the publisher's OAuth realm, or "*"; SharePoint publishes
	// none (see EffectiveRealm).
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
	// Shape is the JSON form the document is written in. Parse sets
	// ShapeSharePoint when the document carries nothing that form lacks.
	Shape Shape `json:"-"`
}

// Key is one published key.
type Key struct {
	// Usage is "signing" (SharePoint: "Signing") for a token-signing key.
	Usage string `json:"usage"`
	// KeyInfo identifies the key; SharePoint publishes none.
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
	// Type is "x509Certificate" (SharePoint: "x509certificate").
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

// document is Document without its methods: the full form, written as is.
type document Document

// sharePointDocument is the SharePoint form, fields in SharePoint's order.
type sharePointDocument struct {
	Issuer      string          `json:"issuer"`
	Keys        []sharePointKey `json:"keys"`
	Name        string          `json:"name"`
	ServiceName string          `json:"serviceName"`
}

// sharePointKey is a key in the SharePoint form.
type sharePointKey struct {
	KeyValue KeyValue `json:"keyValue"`
	Usage    string   `json:"usage"`
}

// MarshalJSON writes the document in its Shape.
func (d Document) MarshalJSON() ([]byte, error) {
	if d.Shape != ShapeSharePoint {
		return json.Marshal(document(d))
	}
	sp := sharePointDocument{Issuer: d.Issuer, Name: d.Name, ServiceName: d.ServiceName}
	if d.Keys != nil {
		sp.Keys = make([]sharePointKey, len(d.Keys))
		for i, k := range d.Keys {
			sp.Keys[i] = sharePointKey{KeyValue: k.KeyValue, Usage: k.Usage}
		}
	}
	return json.Marshal(sp)
}

// UnmarshalJSON reads either shape and records which one it was.
func (d *Document) UnmarshalJSON(data []byte) error {
	var f document
	if err := json.Unmarshal(data, &f); err != nil {
		return err
	}
	*d = Document(f)
	d.Shape = ShapeFull
	if d.sharePointOnly() {
		d.Shape = ShapeSharePoint
	}
	return nil
}

// sharePointOnly reports whether d carries nothing the SharePoint form
// lacks, so that writing it in that form loses nothing.
func (d *Document) sharePointOnly() bool {
	if d.ID != "" || d.Version != "" || d.Realm != "" || d.AllowedAudiences != nil || d.Endpoints != nil {
		return false
	}
	for _, k := range d.Keys {
		if k.KeyInfo.X5T != "" {
			return false
		}
	}
	return true
}

// EffectiveRealm is the publisher's realm as a receiver learns it: the realm
// field, or, where the document has none (SharePoint's), the part of issuer
// after "@". "*" means tokens for any realm; "" means the document names
// none.
func (d *Document) EffectiveRealm() string {
	if d == nil {
		return ""
	}
	if d.Realm != "" {
		return d.Realm
	}
	if _, realm, ok := strings.Cut(d.Issuer, "@"); ok {
		return realm
	}
	return ""
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

// Build returns the document, in the full form (ShapeFull) whatever the
// product, that a deployment of serviceName in realm publishes from
// hostOrName, signing with signing (the current certificate, then the next
// one during a rollover). BuildFor builds each product's own shape.
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

// BuildFor returns the document a deployment of product publishes, in that
// product's own shape:
//
//   - Lync / Skype for Business: Build's full form, named after the pool.
//   - Exchange: the full form with name "Exchange"; an empty realm (the
//     normal, blank AuthConfig realm: tokens for any accepted domain) is
//     published as "*", so issuer and the one allowed audience are
//     "00000002-…@*"; the endpoint is the autodiscover metadata URL on
//     hostOrName.
//   - SharePoint: ShapeSharePoint. realm must be the farm's realm (its farm
//     id, lower case, unless changed); it appears only after "@" in issuer.
//     hostOrName is not published: SharePoint's name is its service name.
//
// serviceName empty means the product's well-known identifier. Any other
// product gets Build's form.
func BuildFor(product pb.Product, serviceName, realm, hostOrName string, signing []*x509.Certificate) *Document {
	if serviceName == "" {
		serviceName = products.ServiceName(product)
	}
	switch product {
	case pb.Product_PRODUCT_EXCHANGE:
		if realm == "" {
			realm = "*"
		}
		d := Build(serviceName, realm, hostOrName, signing)
		d.Name = ExchangeName
		d.AllowedAudiences = []string{serviceName + "@" + realm}
		return d
	case pb.Product_PRODUCT_SHAREPOINT:
		d := &Document{
			Name:        serviceName,
			ServiceName: serviceName,
			Issuer:      serviceName + "@" + realm,
			Keys:        []Key{},
			Shape:       ShapeSharePoint,
		}
		for _, c := range signing {
			if c == nil {
				continue
			}
			d.Keys = append(d.Keys, Key{
				Usage:    UsageSigningSharePoint,
				KeyValue: KeyValue{Type: KeyTypeX509SharePoint, Value: base64.StdEncoding.EncodeToString(c.Raw)},
			})
		}
		return d
	}
	return Build(serviceName, realm, hostOrName, signing)
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
		return nil, invalid("", fmt.Sprintf("document is %d bytes, over the %d-byte limit", len(data), MaxSize))
	}
	return decode(data)
}

// decode is Parse without the size limit, for callers that enforce their own.
func decode(data []byte) (*Document, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var d Document
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, invalid("", "not JSON: "+err.Error())
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

// X5T is the x5t of c as the products publish it: base64url(SHA-1(DER))
// without padding. SharePoint publishes none; receivers compute it.
func X5T(c *x509.Certificate) string { return x5t(c.Raw) }

// Validate applies the rules for a valid document of the partner whose
// well-known identifier is wantServiceName in realm wantRealm, and returns
// the certificates of its signing keys in document order.
//
// The serviceName comparison is exact. wantRealm "" means any realm: the
// receiver learns the partner's realm from the document (EffectiveRealm),
// which must then name one; otherwise the effective realm must equal
// wantRealm exactly, or be "*". Where issuer is given, its client id (before
// "@") must be the serviceName. Key usage and type are compared without
// regard to case; a key's x5t, where given, must match its certificate.
//
// Every error is an *InvalidError naming the field at fault, with no URL:
// its message is the reason alone, phrased to follow "is not a valid
// metadata document: ".
func Validate(d *Document, wantServiceName, wantRealm string) ([]*x509.Certificate, error) {
	if d == nil {
		return nil, invalid("", "empty document")
	}
	if d.ServiceName != wantServiceName {
		return nil, invalid("serviceName", fmt.Sprintf("serviceName is %q, want %q", d.ServiceName, wantServiceName))
	}
	if d.Issuer != "" {
		if id, _, _ := strings.Cut(d.Issuer, "@"); id != d.ServiceName {
			return nil, invalid("issuer", fmt.Sprintf("issuer %q names client id %q, not the serviceName %q", d.Issuer, id, d.ServiceName))
		}
	}
	switch realm := d.EffectiveRealm(); {
	case realm == "":
		return nil, invalid("realm", "the document names no realm (neither realm nor issuer \"<serviceName>@<realm>\")")
	case wantRealm != "" && realm != wantRealm && realm != "*":
		if d.Realm == "" {
			return nil, invalid("issuer", fmt.Sprintf("realm (from issuer %q) is %q, want %q", d.Issuer, realm, wantRealm))
		}
		return nil, invalid("realm", fmt.Sprintf("realm is %q, want %q", realm, wantRealm))
	}
	var signing []*x509.Certificate
	for i, k := range d.Keys {
		c, err := k.certificate()
		if err != nil {
			return nil, invalid(fmt.Sprintf("keys[%d].keyvalue", i), fmt.Sprintf("key %d: %v", i+1, err))
		}
		if k.KeyInfo.X5T != "" {
			got, ok := decodeX5T(k.KeyInfo.X5T)
			if !ok {
				return nil, invalid(fmt.Sprintf("keys[%d].keyinfo.x5t", i), fmt.Sprintf("key %d: x5t %q is not a base64 SHA-1 thumbprint", i+1, k.KeyInfo.X5T))
			}
			if sum := sha1.Sum(c.Raw); !bytes.Equal(got, sum[:]) {
				return nil, invalid(fmt.Sprintf("keys[%d].keyinfo.x5t", i), fmt.Sprintf("key %d: x5t %q does not match its certificate (x5t %q)", i+1, k.KeyInfo.X5T, x5t(c.Raw)))
			}
		}
		if strings.EqualFold(k.Usage, UsageSigning) {
			signing = append(signing, c)
		}
	}
	if len(signing) == 0 {
		return nil, invalid("keys", "no signing key")
	}
	return signing, nil
}

// invalid is an *InvalidError without a URL.
func invalid(field, reason string) *InvalidError {
	return &InvalidError{Field: field, Reason: reason}
}
