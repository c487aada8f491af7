// Package reconcile is the one reconciler every product driver uses. It is
// pure: Plan compares a host's desired configuration (a pb.HostConfig) with
// the actual state a driver read (a State) and returns the operations that
// make them agree, each naming its item, the cmdlet and parameters it
// stands for (secrets redacted when shown), whether it is disruptive and
// whether only the deployment's primary runs it. Check turns the same
// comparison into per-item verification results.
//
// A driver only reads the actual state (Backend.Read) and executes one Op
// (Backend.Execute); Apply and Verify in this package drive it, so the sim
// and the PowerShell driver reconcile identically. The reconciliation is the
// seed article's, extended to the three products as Microsoft documents
// them: stale partners are removed; a partner whose identifier or realm is
// wrong is removed and created again (Lync partners registered by metadata
// URL take both from the metadata, so there is no Set -Realm); other
// differences are set in place; partners s2strust was not asked about are
// left alone; a realm is set only when the topology declares it, and that
// change is disruptive.
package reconcile

import (
	"crypto/x509"
	"time"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// State is a host's actual S2S OAuth configuration as its product shows
// it: the deployment-scope settings as this host's replica has them (Lync's
// CMS, the Exchange organization in Active Directory, the SharePoint farm's
// configuration database) and the host's own certificate store.
type State struct {
	// Product and Version are what the host runs.
	Product pb.Product
	Version string

	// OAuth is Get-CsOAuthConfiguration, Get-AuthConfig or
	// Get-SPAuthenticationRealm (Realm as the product shows it: blank on
	// Exchange by default, the farm id on SharePoint).
	OAuth OAuth
	// Issuer is the deployment's token-issuer certificates.
	Issuer Issuer
	// IssuerCertificate is the current issuer's certificate as the
	// deployment records it, when the driver can read it: it names what a
	// host that lacks it holds instead.
	IssuerCertificate *x509.Certificate
	// Partners are the registered partner applications (Lync, Exchange) or
	// trusted security token issuers (SharePoint), sorted by name.
	Partners []Partner
	// AppPermissions are SharePoint's app principal permissions.
	AppPermissions []AppPermission
	// STS is SharePoint's Get-SPSecurityTokenServiceConfig; nil elsewhere.
	STS *STSConfig

	// Certificates are the host's local certificate store (the machine's
	// Personal store), with the private key's presence.
	Certificates []Certificate
	// DefaultThumbprint is Lync's Get-CsCertificate -Type Default on this
	// host; empty on other products.
	DefaultThumbprint string
	// ImportedSecrets maps the PFX secrets this host imported to their
	// certificates' thumbprints, where the driver remembers them; the
	// controller's recorded thumbprint (TokenIssuer.secret_thumbprint) is
	// preferred.
	ImportedSecrets map[string]string
	// IISIssuer is, on an Exchange server, the current issuer certificate
	// its IIS app pools started with (when the driver knows it): a server
	// whose app pools started before Set-AuthConfig -PublishCertificate
	// needs an IIS reset to sign with the new one. On a SharePoint server
	// it is the STS signing certificate its IIS app pools and its Timer
	// Service started with: after -ImportSigningCertificate every server
	// of the farm needs an IIS reset and a Timer Service restart. Empty:
	// not known.
	IISIssuer string
}

// OAuth is a product's own OAuth settings.
type OAuth struct {
	ServiceName string
	// Realm as configured; empty when the product uses its default.
	Realm string
	// ExchangeAutodiscoverURL is Lync's -ExchangeAutodiscoverUrl.
	ExchangeAutodiscoverURL string
}

// Issuer is a deployment's token-issuer certificates by thumbprint: Lync's
// global OAuthTokenIssuer (current, the next one staged by -Roll, and the
// previous one still accepted until it expires), Exchange's AuthConfig
// (Current/Next/PreviousCertificateThumbprint) or SharePoint's STS signing
// certificate (and the queued one).
type Issuer struct {
	Current, Next, Previous string
	// NextEffective is when Next becomes current.
	NextEffective time.Time
	// PreviousNotAfter is when the previous certificate expires; the
	// reconciler removes it (Remove-CsCertificate -Previous) after that.
	PreviousNotAfter time.Time
}

// Partner is one registered partner in product-neutral form.
type Partner struct {
	// Name is Lync's Identity, Exchange's Name, SharePoint's Name.
	Name                  string
	ApplicationIdentifier string
	// MetadataURL is MetadataUrl, AuthMetadataUrl or MetadataEndPoint.
	MetadataURL string
	// Realm is the partner's realm as registered (from its metadata).
	Realm string
	// TrustLevel is Lync's ApplicationTrustLevel; unspecified elsewhere.
	TrustLevel pb.TrustLevel
	// Enabled is always true for SharePoint issuers, which have no such setting.
	Enabled bool
	// TrustBroker is SharePoint's IsTrustBroker.
	TrustBroker bool
	// LinkedAccount is Exchange's linked account.
	LinkedAccount string
	// CachedThumbprints are the signing certificates of the product's
	// cached copy of the partner's metadata (Exchange's CertificateStrings).
	CachedThumbprints []string
}

// AppPermission is one SharePoint app principal permission.
type AppPermission struct {
	// AppID is the app principal's client id (e.g. Exchange's 00000002-…).
	AppID string
	Scope string
	Right string
	// AppOnly is -EnableAppOnlyPolicy.
	AppOnly bool
}

// STSConfig is SharePoint's security token service configuration.
type STSConfig struct {
	AllowOAuthOverHTTP    bool
	AllowMetadataOverHTTP bool
	// QueuedSigningThumbprint is -QueueSigningCertificate's certificate.
	QueuedSigningThumbprint string
}

// Certificate is one certificate of the host's local store.
type Certificate struct {
	Thumbprint    string
	Cert          *x509.Certificate
	HasPrivateKey bool
}

// Find returns the local certificate with thumbprint t, or nil.
func (s *State) Find(t string) *Certificate {
	for i := range s.Certificates {
		if s.Certificates[i].Thumbprint == t {
			return &s.Certificates[i]
		}
	}
	return nil
}
