// Package products holds the well-known facts about the Microsoft products
// that take part in server-to-server OAuth: their application identifiers,
// where they publish auth metadata and how each registers its partners.
package products

import (
	"fmt"
	"strings"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Well-known application identifiers (each product's ServiceName).
const (
	ExchangeID   = "00000002-0000-0ff1-ce00-000000000000"
	SharePointID = "00000003-0000-0ff1-ce00-000000000000"
	LyncID       = "00000004-0000-0ff1-ce00-000000000000"
	// ACSID is the ACS / Entra token service, used in hybrid deployments only.
	ACSID = "00000001-0000-0000-c000-000000000000"
)

// Supported versions per product. Every 2010 product lacks S2S OAuth.
var supported = map[pb.Product][]string{
	pb.Product_PRODUCT_LYNC:       {"2013", "2015", "2019", "SE"},
	pb.Product_PRODUCT_EXCHANGE:   {"2013", "2016", "2019", "SE"},
	pb.Product_PRODUCT_SHAREPOINT: {"2013", "2016", "2019", "SE"},
}

// Parse maps a topology product name (lync, exchange, sharepoint) to its enum.
func Parse(name string) (pb.Product, bool) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "lync", "skype", "sfb", "skypeforbusiness":
		return pb.Product_PRODUCT_LYNC, true
	case "exchange":
		return pb.Product_PRODUCT_EXCHANGE, true
	case "sharepoint":
		return pb.Product_PRODUCT_SHAREPOINT, true
	}
	return pb.Product_PRODUCT_UNSPECIFIED, false
}

// Name is the topology name of a product.
func Name(p pb.Product) string {
	if d, ok := descriptors[p]; ok {
		return d.Name
	}
	return "unknown"
}

// DisplayName is the product's name as administrators know it.
func DisplayName(p pb.Product) string {
	if d, ok := descriptors[p]; ok {
		return d.DisplayName
	}
	return "unknown product"
}

// ServiceName is the product's well-known application identifier.
func ServiceName(p pb.Product) string { return descriptors[p].ServiceName }

// NormalizeVersion maps the accepted spellings of a version to the canonical
// one ("Subscription Edition" and "vNext" to "SE"); unknown input is returned trimmed.
func NormalizeVersion(v string) string {
	v = strings.TrimSpace(v)
	switch strings.ToLower(strings.ReplaceAll(v, " ", "")) {
	case "se", "subscriptionedition", "subscription":
		return "SE"
	}
	return v
}

// SupportedVersions lists the versions of p that support S2S OAuth.
func SupportedVersions(p pb.Product) []string {
	return append([]string(nil), supported[p]...)
}

// CheckVersion reports whether version v of product p supports S2S OAuth.
func CheckVersion(p pb.Product, v string) error {
	nv := NormalizeVersion(v)
	for _, s := range supported[p] {
		if s == nv {
			return nil
		}
	}
	if strings.Contains(nv, "2010") {
		return fmt.Errorf("%s %s does not support server-to-server OAuth (supported: %s)", DisplayName(p), v, strings.Join(supported[p], ", "))
	}
	return fmt.Errorf("%s version %q is not supported (supported: %s)", DisplayName(p), v, strings.Join(supported[p], ", "))
}

// MetadataURL is where a deployment of product p publishes its auth
// metadata. endpoint is the pool FQDN (Lync), the autodiscover FQDN
// (Exchange) or the web application URL (SharePoint).
func MetadataURL(p pb.Product, endpoint string) string {
	d, ok := descriptors[p]
	switch {
	case !ok:
		return ""
	case d.EndpointIsURL:
		return strings.TrimRight(endpoint, "/") + d.MetadataPath
	}
	return "https://" + endpoint + d.MetadataPath
}

// MetadataPath is the URL path at which product p serves its metadata.
func MetadataPath(p pb.Product) string { return descriptors[p].MetadataPath }

// PartnerName is the name under which a receiving product registers a
// partner of product partner from deployment partnerDeployment: Lync uses
// the fixed identities microsoft.exchange and microsoft.sharepoint;
// Exchange names what Configure-EnterprisePartnerApplication.ps1 creates
// after its -ApplicationType; SharePoint names the trusted security token
// issuer after the partner's deployment.
func PartnerName(receiver, partner pb.Product, partnerDeployment string) string {
	switch receiver {
	case pb.Product_PRODUCT_LYNC:
		switch partner {
		case pb.Product_PRODUCT_EXCHANGE:
			return "microsoft.exchange"
		case pb.Product_PRODUCT_SHAREPOINT:
			return "microsoft.sharepoint"
		case pb.Product_PRODUCT_LYNC:
			return "microsoft.lync"
		}
	case pb.Product_PRODUCT_EXCHANGE:
		switch partner {
		case pb.Product_PRODUCT_LYNC:
			return "LyncEnterprise-" + partnerDeployment
		case pb.Product_PRODUCT_SHAREPOINT:
			return "SharePointEnterprise-" + partnerDeployment
		case pb.Product_PRODUCT_EXCHANGE:
			return "ExchangeEnterprise-" + partnerDeployment
		}
	case pb.Product_PRODUCT_SHAREPOINT:
		return partnerDeployment
	}
	return partnerDeployment
}

// TrustLevelName is the ApplicationTrustLevel as PowerShell prints it.
func TrustLevelName(t pb.TrustLevel) string {
	switch t {
	case pb.TrustLevel_TRUST_LEVEL_FULL:
		return "Full"
	case pb.TrustLevel_TRUST_LEVEL_APPLICATION:
		return "Application"
	case pb.TrustLevel_TRUST_LEVEL_USER:
		return "User"
	}
	return ""
}

// ParseTrustLevel parses Full, Application or User, in any case.
func ParseTrustLevel(s string) (pb.TrustLevel, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "full":
		return pb.TrustLevel_TRUST_LEVEL_FULL, true
	case "application":
		return pb.TrustLevel_TRUST_LEVEL_APPLICATION, true
	case "user":
		return pb.TrustLevel_TRUST_LEVEL_USER, true
	}
	return pb.TrustLevel_TRUST_LEVEL_UNSPECIFIED, false
}

// Descriptor is what the shared reconciler and the drivers need to know of
// one product, in one place instead of product switches across files. The
// cmdlets are the products' own (see the Microsoft pages cited where the
// reconciler and the PowerShell driver use them).
type Descriptor struct {
	Product pb.Product
	// Name is the topology's name for it; DisplayName administrators'.
	Name, DisplayName string
	// MetadataPath is where it serves its auth metadata document, under
	// its endpoint (SPEC "Auth metadata documents").
	MetadataPath string
	// EndpointIsURL: the deployment's endpoint is a URL (SharePoint's web
	// application), not a host name (Lync's pool, Exchange's autodiscover).
	EndpointIsURL bool
	// ServiceName is the product's well-known application identifier.
	ServiceName string
	// URLParameter names the partner metadata URL parameter of the
	// product's cmdlets, as the seed's error message quotes it.
	URLParameter string
	// NewPartner, SetPartner and RemovePartner are the cmdlets (or, for
	// Exchange's creation, the script) that register partners.
	NewPartner, SetPartner, RemovePartner string
	// SettingsName is how the product calls its OAuth settings.
	SettingsName string
	// IssuerName is how the product calls its current token-issuer setting.
	IssuerName string
	// TrustLevels: partners carry an ApplicationTrustLevel (Lync only).
	TrustLevels bool
	// PartnerEnabled: partners can be disabled (not SharePoint's issuers).
	PartnerEnabled bool
	// DefaultCertificate: the product has a certificate of type Default that
	// `tokenIssuer: {existing: Default}` can name (Lync only).
	DefaultCertificate bool
	// RealmNeedsConfirmation: setting the realm needs confirmRealmChange
	// (Exchange: -Realm is only for non-accepted domains; SharePoint:
	// changing the realm breaks existing app principals).
	RealmNeedsConfirmation bool
	// MatchPartnersByURL: existing partners are matched by application
	// identifier and metadata URL, never by name (Exchange, whose
	// Configure-EnterprisePartnerApplication.ps1 chooses the name itself).
	MatchPartnersByURL bool
}

var descriptors = map[pb.Product]Descriptor{
	pb.Product_PRODUCT_LYNC: {
		Product: pb.Product_PRODUCT_LYNC, Name: "lync", DisplayName: "Lync / Skype for Business Server",
		MetadataPath: "/metadata/json/1", ServiceName: LyncID, URLParameter: "MetadataUrl",
		NewPartner: "New-CsPartnerApplication", SetPartner: "Set-CsPartnerApplication", RemovePartner: "Remove-CsPartnerApplication",
		SettingsName: "CsOAuthConfiguration", IssuerName: "global OAuthTokenIssuer certificate",
		TrustLevels: true, PartnerEnabled: true, DefaultCertificate: true,
	},
	pb.Product_PRODUCT_EXCHANGE: {
		Product: pb.Product_PRODUCT_EXCHANGE, Name: "exchange", DisplayName: "Exchange Server",
		MetadataPath: "/autodiscover/metadata/json/1", ServiceName: ExchangeID, URLParameter: "AuthMetadataUrl",
		NewPartner: "Configure-EnterprisePartnerApplication.ps1", SetPartner: "Set-PartnerApplication", RemovePartner: "Remove-PartnerApplication",
		SettingsName: "AuthConfig", IssuerName: "AuthConfig CurrentCertificateThumbprint",
		PartnerEnabled: true, RealmNeedsConfirmation: true, MatchPartnersByURL: true,
	},
	pb.Product_PRODUCT_SHAREPOINT: {
		Product: pb.Product_PRODUCT_SHAREPOINT, Name: "sharepoint", DisplayName: "SharePoint Server",
		MetadataPath: "/_layouts/15/metadata/json/1", EndpointIsURL: true, ServiceName: SharePointID, URLParameter: "MetadataEndPoint",
		NewPartner: "New-SPTrustedSecurityTokenIssuer", SetPartner: "Set-SPTrustedSecurityTokenIssuer", RemovePartner: "Remove-SPTrustedSecurityTokenIssuer",
		SettingsName: "SPAuthenticationRealm", IssuerName: "SecurityTokenServiceCertificate",
		RealmNeedsConfirmation: true,
	},
}

// Describe returns product p's descriptor; ok is false for an unknown product.
func Describe(p pb.Product) (Descriptor, bool) {
	d, ok := descriptors[p]
	return d, ok
}
