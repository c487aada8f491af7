package sim

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/s2strust/s2strust/internal/atomicfile"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// storeFile is the name of a deployment store under <SharedDir>/<deployment>/.
const storeFile = "store.json"

// DeploymentStore is the deployment-scope configuration store of one
// deployment, as JSON in <SharedDir>/<deployment>/store.json: the Lync
// Central Management Store's global scope, an Exchange organization's
// settings in Active Directory, or a SharePoint farm's configuration
// database. Exactly one of Lync, Exchange and SharePoint is set, matching
// Product. Every host of the deployment reads it; only the primary (and an
// administrator, through the tamper helpers) writes it.
type DeploymentStore struct {
	Deployment string
	// Product is "lync", "exchange" or "sharepoint" (products.Name).
	Product    string
	Lync       *LyncGlobal           `json:",omitempty"`
	Exchange   *ExchangeOrganization `json:",omitempty"`
	SharePoint *SharePointFarm       `json:",omitempty"`
}

// IssuerCertificate is a token-issuer certificate as a deployment-scope
// store records it.
type IssuerCertificate struct {
	// Thumbprint is the upper-case hex SHA-1 of Certificate.
	Thumbprint string
	// Certificate is the DER encoding.
	Certificate []byte
	// PrivateKey (PKCS#8 PEM) is set only when the issuer is a server's own
	// default certificate, which the product itself copies to every server
	// of the deployment (Lync's CMS replicates the global OAuthTokenIssuer;
	// Exchange's AuthAdmin servicelet copies the Auth Certificate). A
	// certificate from a PFX secret or named by thumbprint is installed on
	// each host by s2strust instead, and its key stays in the hosts' stores.
	PrivateKey string `json:",omitempty"`
}

func (c *IssuerCertificate) equal(o *IssuerCertificate) bool {
	if c == nil || o == nil {
		return c == o
	}
	return c.Thumbprint == o.Thumbprint && string(c.Certificate) == string(o.Certificate) && c.PrivateKey == o.PrivateKey
}

// LyncGlobal is the global scope of a Lync / Skype for Business Central
// Management Store.
type LyncGlobal struct {
	// OAuthTokenIssuer is Get-CsCertificate -Type OAuthTokenIssuer.
	OAuthTokenIssuer *IssuerCertificate `json:",omitempty"`
	// NextOAuthTokenIssuer is the certificate staged by Set-CsCertificate
	// -Roll -EffectiveDate, effective at NextEffectiveDate. Until then the
	// pool publishes it in its metadata beside the current one, so that
	// partners cache it before it signs anything.
	NextOAuthTokenIssuer *IssuerCertificate `json:",omitempty"`
	NextEffectiveDate    *time.Time         `json:",omitempty"`
	// PreviousOAuthTokenIssuer is the certificate a roll replaced: still
	// published, and accepted, until Remove-CsCertificate -Previous.
	PreviousOAuthTokenIssuer *IssuerCertificate `json:",omitempty"`
	PartnerApplications      []*CsPartnerApplication
	OAuthConfiguration       CsOAuthConfiguration
}

// CsPartnerApplication is one Get-CsPartnerApplication object.
type CsPartnerApplication struct {
	Identity                            string
	ApplicationIdentifier               string
	MetadataURL                         string `json:"MetadataUrl"`
	Realm                               string
	ApplicationTrustLevel               string
	Enabled                             bool
	AcceptSecurityIdentifierInformation bool
	// CachedCertificates are the signing certificates (DER) of the partner's
	// metadata document as last downloaded.
	CachedCertificates [][]byte `json:",omitempty"`
}

// CsOAuthConfiguration is Get-CsOAuthConfiguration.
type CsOAuthConfiguration struct {
	ServiceName             string
	Realm                   string
	ExchangeAutodiscoverURL string `json:"ExchangeAutodiscoverUrl"`
}

// ExchangeOrganization is an Exchange organization's S2S OAuth settings in
// Active Directory.
type ExchangeOrganization struct {
	PartnerApplications []*ExchangePartnerApplication
	AuthConfig          AuthConfig
	// AuthCertificates are the certificates AuthConfig names, as the
	// AuthAdmin servicelet distributes them to every server.
	AuthCertificates []*IssuerCertificate
}

// ExchangePartnerApplication is one Get-PartnerApplication object.
type ExchangePartnerApplication struct {
	Name                  string
	ApplicationIdentifier string
	AuthMetadataURL       string `json:"AuthMetadataUrl"`
	Realm                 string
	Enabled               bool
	// LinkedAccount is the account Configure-EnterprisePartnerApplication.ps1
	// creates and gives the UserApplication and ArchiveApplication roles.
	LinkedAccount      string
	CachedCertificates [][]byte `json:",omitempty"`
}

// AuthConfig is Get-AuthConfig.
type AuthConfig struct {
	CurrentCertificateThumbprint  string
	PreviousCertificateThumbprint string
	NextCertificateThumbprint     string
	NextCertificateEffectiveDate  *time.Time `json:",omitempty"`
	// ServiceName is always 00000002-0000-0ff1-ce00-000000000000.
	ServiceName string
	Realm       string
}

// SharePointFarm is a SharePoint farm's S2S OAuth settings in its
// configuration database.
type SharePointFarm struct {
	TrustedSecurityTokenIssuers []*SPTrustedSecurityTokenIssuer
	// AuthenticationRealm is Get-SPAuthenticationRealm.
	AuthenticationRealm string
	// SecurityTokenServiceCertificate is the farm's STS signing certificate
	// (Set-SPSecurityTokenServiceConfig -ImportSigningCertificate).
	SecurityTokenServiceCertificate *IssuerCertificate `json:",omitempty"`
	// QueuedSigningCertificate is -QueueSigningCertificate's certificate,
	// published beside the current one until it becomes current.
	QueuedSigningCertificate *IssuerCertificate `json:",omitempty"`
	// ReplacedSigningCertificates are the STS signing certificates
	// -ImportSigningCertificate replaced. No SharePoint property: the farm
	// neither publishes nor keeps them, but a server whose IIS app pools
	// and Timer Service started with one goes on signing with it until
	// they restart (hostState.IISIssuer), and the sim needs its key.
	ReplacedSigningCertificates []*IssuerCertificate `json:",omitempty"`
	// FarmID is the farm's id, lower case: its default realm.
	FarmID string `json:",omitempty"`
	// AllowOAuthOverHTTP and AllowMetadataOverHTTP are
	// Get-SPSecurityTokenServiceConfig's AllowOAuthOverHttp and
	// AllowMetadataOverHttp (false on a new farm).
	AllowOAuthOverHTTP    bool `json:"AllowOAuthOverHttp"`
	AllowMetadataOverHTTP bool `json:"AllowMetadataOverHttp"`
	// AppPrincipalPermissions are the Set-SPAppPrincipalPermission grants.
	AppPrincipalPermissions []SPAppPrincipalPermission `json:",omitempty"`
}

// SPAppPrincipalPermission is one app principal permission of a farm.
type SPAppPrincipalPermission struct {
	AppPrincipal string
	Scope        string
	Right        string
	AppOnly      bool
}

// SPTrustedSecurityTokenIssuer is one Get-SPTrustedSecurityTokenIssuer object.
type SPTrustedSecurityTokenIssuer struct {
	Name string
	// RegisteredIssuerName is "<application identifier>@<realm>".
	RegisteredIssuerName string
	MetadataEndPoint     string
	IsTrustBroker        bool
	CachedCertificates   [][]byte `json:",omitempty"`
}

// storePath is where a deployment's store lives.
func storePath(sharedDir, deployment string) (string, error) {
	if deployment == "" || deployment == "." || deployment == ".." ||
		strings.ContainsAny(deployment, `/\`) || filepath.Base(deployment) != deployment {
		return "", fmt.Errorf("deployment name %q cannot name a store directory", deployment)
	}
	if sharedDir == "" {
		return "", errors.New("no shared directory configured")
	}
	return filepath.Join(sharedDir, deployment, storeFile), nil
}

// ReadDeploymentStore reads a deployment's store as any of its hosts sees
// it. A deployment nobody has written yet gives an error wrapping
// fs.ErrNotExist.
func ReadDeploymentStore(sharedDir, deployment string) (*DeploymentStore, error) {
	ds, _, err := readStore(sharedDir, deployment)
	if err != nil {
		return nil, err
	}
	if ds == nil {
		return nil, fmt.Errorf("read store of deployment %s: %w", deployment, fs.ErrNotExist)
	}
	return ds, nil
}

// readStore reads a deployment store and the bytes it was decoded from; a
// missing store gives nil, nil, nil.
func readStore(sharedDir, deployment string) (*DeploymentStore, []byte, error) {
	path, err := storePath(sharedDir, deployment)
	if err != nil {
		return nil, nil, err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read store of deployment %s: %w", deployment, err)
	}
	ds := new(DeploymentStore)
	if err := json.Unmarshal(data, ds); err != nil {
		return nil, nil, fmt.Errorf("read store of deployment %s: %s: %w", deployment, path, err)
	}
	return ds, data, nil
}

// encode is the deterministic on-disk form of a store.
func (ds *DeploymentStore) encode() ([]byte, error) {
	data, err := json.MarshalIndent(ds, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode store of deployment %s: %w", ds.Deployment, err)
	}
	return append(data, '\n'), nil
}

// writeStore replaces the store atomically, unless its encoding equals old:
// a store is never rewritten when nothing changed.
func writeStore(sharedDir string, ds *DeploymentStore, old []byte) (bool, error) {
	path, err := storePath(sharedDir, ds.Deployment)
	if err != nil {
		return false, err
	}
	data, err := ds.encode()
	if err != nil {
		return false, err
	}
	if string(data) == string(old) {
		return false, nil
	}
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return false, fmt.Errorf("write store of deployment %s: %w", ds.Deployment, err)
	}
	return true, nil
}

// productStore gives the reconciliation and verification code one view of
// the three products' stores.
type productStore interface {
	// partners lists the registered partners in their neutral form.
	partners() []partnerView
	// upsert creates the partner, or updates the one registered under the
	// same name (case-insensitively), keeping the fields the view lacks.
	upsert(v partnerView)
	// remove deletes the partner named name and reports whether it existed.
	remove(name string) bool
	// fields are the partner properties the product compares, in the order
	// PowerShell shows them.
	fields() []field
	// urlParameter names the metadata URL parameter of the product's cmdlet.
	urlParameter() string
	// settings are the product's OAuth settings with their desired values
	// (an empty want leaves a setting as it is).
	settings(cfg *pb.HostConfig) []setting
	// settingsName is how the product's OAuth settings are called.
	settingsName() string
	// oauth reports the OAuth settings in the API's shape.
	oauth() *pb.OAuthConfiguration
	// issuer is the current token-issuer certificate, nil when none is set.
	issuer() *IssuerCertificate
	// setIssuer makes c the current token-issuer certificate.
	setIssuer(c *IssuerCertificate)
	// issuers are every certificate the deployment publishes in its
	// metadata, the current one first.
	issuers() []*IssuerCertificate
	// issuerName is how the product calls its current issuer setting.
	issuerName() string
	// trustLevels reports whether partners carry an ApplicationTrustLevel.
	trustLevels() bool
}

// productStore returns the store of ds's product, creating an empty one for
// product p when ds is new.
func (ds *DeploymentStore) productStore(p pb.Product) (productStore, error) {
	name := products.Name(p)
	if ds.Product == "" {
		ds.Product = name
	}
	if ds.Product != name {
		return nil, fmt.Errorf("the store of deployment %s holds a %s deployment, not %s", ds.Deployment, ds.Product, name)
	}
	switch p {
	case pb.Product_PRODUCT_LYNC:
		if ds.Lync == nil {
			ds.Lync = &LyncGlobal{}
		}
		return ds.Lync, nil
	case pb.Product_PRODUCT_EXCHANGE:
		if ds.Exchange == nil {
			// The organization's ServiceName is fixed when Exchange is installed.
			ds.Exchange = &ExchangeOrganization{AuthConfig: AuthConfig{ServiceName: products.ExchangeID}}
		}
		return ds.Exchange, nil
	case pb.Product_PRODUCT_SHAREPOINT:
		if ds.SharePoint == nil {
			ds.SharePoint = &SharePointFarm{}
		}
		return ds.SharePoint, nil
	}
	return nil, fmt.Errorf("deployment %s: unsupported product %s", ds.Deployment, p)
}

// storedProduct returns the product a store holds.
func (ds *DeploymentStore) storedProduct() (pb.Product, productStore, error) {
	p, ok := products.Parse(ds.Product)
	if !ok {
		return pb.Product_PRODUCT_UNSPECIFIED, nil, fmt.Errorf("the store of deployment %s holds unknown product %q", ds.Deployment, ds.Product)
	}
	ps, err := ds.productStore(p)
	return p, ps, err
}

// partnerView is a partner in a product-neutral form.
type partnerView struct {
	Name          string
	AppID         string
	URL           string
	Realm         string
	Trust         pb.TrustLevel
	Enabled       bool
	Broker        bool
	Accept        bool
	Certificates  [][]byte
	productFields bool // the view came from a store, not from a HostConfig
}

// field is one partner property a product compares.
type field struct {
	name string
	get  func(partnerView) string
	// recreate: a difference needs the partner removed and created again,
	// as the seed's script does for a wrong ApplicationIdentifier.
	recreate bool
	// refetch: a change downloads the partner's metadata again.
	refetch bool
}

// setting is one OAuth setting with its desired value.
type setting struct {
	name   string
	actual *string
	want   string
}

func boolName(b bool) string {
	if b {
		return "True"
	}
	return "False"
}

func findPartner(ps productStore, name string) (partnerView, bool) {
	for _, v := range ps.partners() {
		if strings.EqualFold(v.Name, name) {
			return v, true
		}
	}
	return partnerView{}, false
}

func sortByName[T any](s []T, name func(T) string) {
	slices.SortFunc(s, func(a, b T) int {
		return cmp.Or(cmp.Compare(strings.ToLower(name(a)), strings.ToLower(name(b))), cmp.Compare(name(a), name(b)))
	})
}

// Lync.

func (g *LyncGlobal) partners() []partnerView {
	vs := make([]partnerView, 0, len(g.PartnerApplications))
	for _, a := range g.PartnerApplications {
		t, _ := products.ParseTrustLevel(a.ApplicationTrustLevel)
		vs = append(vs, partnerView{
			Name: a.Identity, AppID: a.ApplicationIdentifier, URL: a.MetadataURL, Realm: a.Realm,
			Trust: t, Enabled: a.Enabled, Accept: a.AcceptSecurityIdentifierInformation,
			Certificates: a.CachedCertificates, productFields: true,
		})
	}
	return vs
}

func (g *LyncGlobal) upsert(v partnerView) {
	var a *CsPartnerApplication
	for _, x := range g.PartnerApplications {
		if strings.EqualFold(x.Identity, v.Name) {
			a = x
		}
	}
	if a == nil {
		a = &CsPartnerApplication{Identity: v.Name}
		g.PartnerApplications = append(g.PartnerApplications, a)
		sortByName(g.PartnerApplications, func(a *CsPartnerApplication) string { return a.Identity })
	}
	a.ApplicationIdentifier = v.AppID
	a.MetadataURL = v.URL
	a.Realm = v.Realm
	a.ApplicationTrustLevel = products.TrustLevelName(v.Trust)
	a.Enabled = v.Enabled
	a.CachedCertificates = v.Certificates
	if v.productFields {
		a.AcceptSecurityIdentifierInformation = v.Accept
	}
}

func (g *LyncGlobal) remove(name string) bool {
	n := len(g.PartnerApplications)
	g.PartnerApplications = slices.DeleteFunc(g.PartnerApplications, func(a *CsPartnerApplication) bool { return strings.EqualFold(a.Identity, name) })
	return len(g.PartnerApplications) != n
}

func (g *LyncGlobal) fields() []field {
	return []field{
		{name: "ApplicationIdentifier", get: func(v partnerView) string { return v.AppID }, recreate: true},
		{name: "MetadataUrl", get: func(v partnerView) string { return v.URL }, refetch: true},
		{name: "Realm", get: func(v partnerView) string { return v.Realm }},
		{name: "ApplicationTrustLevel", get: func(v partnerView) string { return products.TrustLevelName(v.Trust) }},
		{name: "Enabled", get: func(v partnerView) string { return boolName(v.Enabled) }},
	}
}

func (g *LyncGlobal) urlParameter() string { return "MetadataUrl" }

func (g *LyncGlobal) settings(cfg *pb.HostConfig) []setting {
	c := &g.OAuthConfiguration
	return []setting{
		{"ServiceName", &c.ServiceName, serviceName(cfg)},
		{"Realm", &c.Realm, cfg.GetRealm()},
		{"ExchangeAutodiscoverUrl", &c.ExchangeAutodiscoverURL, cfg.GetExchangeAutodiscoverUrl()},
	}
}

func (g *LyncGlobal) settingsName() string { return "CsOAuthConfiguration" }

func (g *LyncGlobal) oauth() *pb.OAuthConfiguration {
	o := &pb.OAuthConfiguration{
		ServiceName:             g.OAuthConfiguration.ServiceName,
		Realm:                   g.OAuthConfiguration.Realm,
		ExchangeAutodiscoverUrl: g.OAuthConfiguration.ExchangeAutodiscoverURL,
	}
	if g.OAuthTokenIssuer != nil {
		o.IssuerThumbprint = g.OAuthTokenIssuer.Thumbprint
	}
	return o
}

func (g *LyncGlobal) issuer() *IssuerCertificate { return g.OAuthTokenIssuer }
func (g *LyncGlobal) issuerName() string         { return "global OAuthTokenIssuer certificate" }
func (g *LyncGlobal) trustLevels() bool          { return true }

// setIssuer makes c current; a staged certificate that becomes current is
// no longer the next one.
func (g *LyncGlobal) setIssuer(c *IssuerCertificate) {
	g.OAuthTokenIssuer = c
	if g.NextOAuthTokenIssuer != nil && g.NextOAuthTokenIssuer.Thumbprint == c.Thumbprint {
		g.NextOAuthTokenIssuer, g.NextEffectiveDate = nil, nil
	}
}

func (g *LyncGlobal) issuers() []*IssuerCertificate {
	out := nonNil(g.OAuthTokenIssuer, g.NextOAuthTokenIssuer, g.PreviousOAuthTokenIssuer)
	return slices.CompactFunc(out, func(a, b *IssuerCertificate) bool { return a.Thumbprint == b.Thumbprint })
}

func nonNil(cs ...*IssuerCertificate) []*IssuerCertificate {
	var out []*IssuerCertificate
	for _, c := range cs {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

// Exchange.

func (o *ExchangeOrganization) partners() []partnerView {
	vs := make([]partnerView, 0, len(o.PartnerApplications))
	for _, a := range o.PartnerApplications {
		vs = append(vs, partnerView{
			Name: a.Name, AppID: a.ApplicationIdentifier, URL: a.AuthMetadataURL, Realm: a.Realm,
			Enabled: a.Enabled, Certificates: a.CachedCertificates, productFields: true,
		})
	}
	return vs
}

func (o *ExchangeOrganization) upsert(v partnerView) {
	var a *ExchangePartnerApplication
	for _, x := range o.PartnerApplications {
		if strings.EqualFold(x.Name, v.Name) {
			a = x
		}
	}
	if a == nil {
		a = &ExchangePartnerApplication{Name: v.Name, LinkedAccount: "Users/" + v.Name + "-ApplicationAccount"}
		o.PartnerApplications = append(o.PartnerApplications, a)
		sortByName(o.PartnerApplications, func(a *ExchangePartnerApplication) string { return a.Name })
	}
	a.ApplicationIdentifier = v.AppID
	a.AuthMetadataURL = v.URL
	a.Realm = v.Realm
	a.Enabled = v.Enabled
	a.CachedCertificates = v.Certificates
}

func (o *ExchangeOrganization) remove(name string) bool {
	n := len(o.PartnerApplications)
	o.PartnerApplications = slices.DeleteFunc(o.PartnerApplications, func(a *ExchangePartnerApplication) bool { return strings.EqualFold(a.Name, name) })
	return len(o.PartnerApplications) != n
}

func (o *ExchangeOrganization) fields() []field {
	return []field{
		{name: "ApplicationIdentifier", get: func(v partnerView) string { return v.AppID }, recreate: true},
		{name: "AuthMetadataUrl", get: func(v partnerView) string { return v.URL }, refetch: true},
		{name: "Realm", get: func(v partnerView) string { return v.Realm }},
		{name: "Enabled", get: func(v partnerView) string { return boolName(v.Enabled) }},
	}
}

func (o *ExchangeOrganization) urlParameter() string { return "AuthMetadataUrl" }

func (o *ExchangeOrganization) settings(cfg *pb.HostConfig) []setting {
	c := &o.AuthConfig
	return []setting{
		{"ServiceName", &c.ServiceName, products.ExchangeID},
		{"Realm", &c.Realm, cfg.GetRealm()},
	}
}

func (o *ExchangeOrganization) settingsName() string { return "AuthConfig" }

func (o *ExchangeOrganization) oauth() *pb.OAuthConfiguration {
	return &pb.OAuthConfiguration{
		ServiceName:      o.AuthConfig.ServiceName,
		Realm:            o.AuthConfig.Realm,
		IssuerThumbprint: o.AuthConfig.CurrentCertificateThumbprint,
	}
}

func (o *ExchangeOrganization) certificate(thumbprint string) *IssuerCertificate {
	if thumbprint == "" {
		return nil
	}
	for _, c := range o.AuthCertificates {
		if c.Thumbprint == thumbprint {
			return c
		}
	}
	return nil
}

func (o *ExchangeOrganization) issuer() *IssuerCertificate {
	t := o.AuthConfig.CurrentCertificateThumbprint
	if t == "" {
		return nil
	}
	if c := o.certificate(t); c != nil {
		return c
	}
	// Set by thumbprint alone (as Set-AuthConfig does): the certificate is
	// unknown to the organization.
	return &IssuerCertificate{Thumbprint: t}
}

func (o *ExchangeOrganization) setIssuer(c *IssuerCertificate) {
	o.AuthConfig.CurrentCertificateThumbprint = c.Thumbprint
	keep := []string{c.Thumbprint, o.AuthConfig.PreviousCertificateThumbprint, o.AuthConfig.NextCertificateThumbprint}
	certs := []*IssuerCertificate{c}
	for _, x := range o.AuthCertificates {
		if x.Thumbprint != c.Thumbprint && slices.Contains(keep, x.Thumbprint) {
			certs = append(certs, x)
		}
	}
	slices.SortFunc(certs, func(a, b *IssuerCertificate) int { return cmp.Compare(a.Thumbprint, b.Thumbprint) })
	o.AuthCertificates = certs
}

func (o *ExchangeOrganization) issuers() []*IssuerCertificate {
	cur := o.issuer()
	out := nonNil(cur, o.certificate(o.AuthConfig.NextCertificateThumbprint), o.certificate(o.AuthConfig.PreviousCertificateThumbprint))
	return slices.CompactFunc(out, func(a, b *IssuerCertificate) bool { return a.Thumbprint == b.Thumbprint })
}

func (o *ExchangeOrganization) issuerName() string {
	return "AuthConfig CurrentCertificateThumbprint"
}
func (o *ExchangeOrganization) trustLevels() bool { return false }

// SharePoint.

func (f *SharePointFarm) partners() []partnerView {
	vs := make([]partnerView, 0, len(f.TrustedSecurityTokenIssuers))
	for _, t := range f.TrustedSecurityTokenIssuers {
		appID, realm, _ := strings.Cut(t.RegisteredIssuerName, "@")
		vs = append(vs, partnerView{
			Name: t.Name, AppID: appID, Realm: realm, URL: t.MetadataEndPoint,
			Enabled: true, Broker: t.IsTrustBroker, Certificates: t.CachedCertificates, productFields: true,
		})
	}
	return vs
}

func (f *SharePointFarm) upsert(v partnerView) {
	var t *SPTrustedSecurityTokenIssuer
	for _, x := range f.TrustedSecurityTokenIssuers {
		if strings.EqualFold(x.Name, v.Name) {
			t = x
		}
	}
	if t == nil {
		t = &SPTrustedSecurityTokenIssuer{Name: v.Name}
		f.TrustedSecurityTokenIssuers = append(f.TrustedSecurityTokenIssuers, t)
		sortByName(f.TrustedSecurityTokenIssuers, func(t *SPTrustedSecurityTokenIssuer) string { return t.Name })
	}
	t.RegisteredIssuerName = registeredIssuerName(v)
	t.MetadataEndPoint = v.URL
	t.IsTrustBroker = v.Broker
	t.CachedCertificates = v.Certificates
}

func registeredIssuerName(v partnerView) string { return v.AppID + "@" + v.Realm }

func (f *SharePointFarm) remove(name string) bool {
	n := len(f.TrustedSecurityTokenIssuers)
	f.TrustedSecurityTokenIssuers = slices.DeleteFunc(f.TrustedSecurityTokenIssuers, func(t *SPTrustedSecurityTokenIssuer) bool { return strings.EqualFold(t.Name, name) })
	return len(f.TrustedSecurityTokenIssuers) != n
}

func (f *SharePointFarm) fields() []field {
	return []field{
		{name: "RegisteredIssuerName", get: registeredIssuerName, recreate: true},
		{name: "MetadataEndPoint", get: func(v partnerView) string { return v.URL }, refetch: true},
		{name: "IsTrustBroker", get: func(v partnerView) string { return boolName(v.Broker) }},
	}
}

func (f *SharePointFarm) urlParameter() string { return "MetadataEndPoint" }

func (f *SharePointFarm) settings(cfg *pb.HostConfig) []setting {
	return []setting{{"Realm", &f.AuthenticationRealm, cfg.GetRealm()}}
}

func (f *SharePointFarm) settingsName() string { return "SPAuthenticationRealm" }

func (f *SharePointFarm) oauth() *pb.OAuthConfiguration {
	o := &pb.OAuthConfiguration{ServiceName: products.SharePointID, Realm: f.AuthenticationRealm}
	if f.SecurityTokenServiceCertificate != nil {
		o.IssuerThumbprint = f.SecurityTokenServiceCertificate.Thumbprint
	}
	return o
}

func (f *SharePointFarm) issuer() *IssuerCertificate     { return f.SecurityTokenServiceCertificate }
func (f *SharePointFarm) setIssuer(c *IssuerCertificate) { f.SecurityTokenServiceCertificate = c }
func (f *SharePointFarm) issuers() []*IssuerCertificate {
	return nonNil(f.SecurityTokenServiceCertificate, f.QueuedSigningCertificate)
}
func (f *SharePointFarm) issuerName() string { return "SecurityTokenServiceCertificate" }

// replaced is the replaced signing certificate thumbprint names, nil when
// there is none.
func (f *SharePointFarm) replaced(thumbprint string) *IssuerCertificate {
	for _, c := range f.ReplacedSigningCertificates {
		if c.Thumbprint == thumbprint {
			return c
		}
	}
	return nil
}
func (f *SharePointFarm) trustLevels() bool { return false }

// serviceName is the host's own application identifier.
func serviceName(cfg *pb.HostConfig) string {
	if s := cfg.GetServiceName(); s != "" {
		return s
	}
	return products.ServiceName(cfg.GetProduct())
}
