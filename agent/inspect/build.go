package inspect

import (
	"crypto/x509"
	"slices"

	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Build lays st out as product's Get- cmdlets show it. Property names are
// the cmdlets' own; where s2strust knows less than the cmdlet shows (the
// base64 CertificateStrings of an Exchange partner), the property says
// what it holds instead (CertificateThumbprints).
func Build(host, deployment string, product pb.Product, version string, st *reconcile.State) *Inspection {
	ins := &Inspection{Host: host, Deployment: deployment, Product: products.Name(product), Version: version}
	switch product {
	case pb.Product_PRODUCT_LYNC:
		ins.Sections = lync(st)
	case pb.Product_PRODUCT_EXCHANGE:
		ins.Sections = exchange(st)
	case pb.Product_PRODUCT_SHAREPOINT:
		ins.Sections = sharePoint(st)
	}
	return ins
}

// lync: https://learn.microsoft.com/powershell/module/skype/get-cspartnerapplication,
// https://learn.microsoft.com/powershell/module/skype/get-csoauthconfiguration,
// https://learn.microsoft.com/powershell/module/skype/get-cscertificate
func lync(st *reconcile.State) []Section {
	partners := Section{Command: "Get-CsPartnerApplication"}
	for _, p := range st.Partners {
		partners.Objects = append(partners.Objects, Object{
			{"Identity", p.Name},
			{"ApplicationIdentifier", p.ApplicationIdentifier},
			{"MetadataUrl", p.MetadataURL},
			{"Realm", p.Realm},
			{"ApplicationTrustLevel", products.TrustLevelName(p.TrustLevel)},
			{"Enabled", p.Enabled},
		})
	}
	oauth := Section{Command: "Get-CsOAuthConfiguration", Objects: []Object{{
		{"Identity", "Global"},
		{"ServiceName", st.OAuth.ServiceName},
		{"Realm", st.OAuth.Realm},
		{"ExchangeAutodiscoverUrl", st.OAuth.ExchangeAutodiscoverURL},
	}}}
	issuer := Section{Command: "Get-CsCertificate -Type OAuthTokenIssuer"}
	if st.Issuer.Current != "" {
		o := Object{{"Use", "OAuthTokenIssuer"}, {"Thumbprint", st.Issuer.Current}}
		o = append(o, certProps(certOf(st, st.Issuer.Current, st.IssuerCertificate))...)
		o = append(o, Property{"PreviousThumbprint", st.Issuer.Previous})
		issuer.Objects = append(issuer.Objects, o)
	}
	if st.Issuer.Next != "" {
		o := Object{{"Use", "OAuthTokenIssuer"}, {"Thumbprint", st.Issuer.Next}}
		o = append(o, certProps(certOf(st, st.Issuer.Next, nil))...)
		o = append(o, Property{"EffectiveDate", st.Issuer.NextEffective})
		issuer.Objects = append(issuer.Objects, o)
	}
	def := Section{Command: "Get-CsCertificate -Type Default"}
	if st.DefaultThumbprint != "" {
		o := Object{{"Use", "Default"}, {"Thumbprint", st.DefaultThumbprint}}
		def.Objects = append(def.Objects, append(o, certProps(certOf(st, st.DefaultThumbprint, nil))...))
	}
	return []Section{partners, oauth, issuer, def, localStore(st, `Get-ChildItem Cert:\LocalMachine\My`)}
}

// exchange: https://learn.microsoft.com/powershell/module/exchange/get-partnerapplication,
// https://learn.microsoft.com/powershell/module/exchange/get-authconfig,
// https://learn.microsoft.com/powershell/module/exchange/get-exchangecertificate
func exchange(st *reconcile.State) []Section {
	partners := Section{Command: "Get-PartnerApplication | Format-List"}
	for _, p := range st.Partners {
		partners.Objects = append(partners.Objects, Object{
			{"Name", p.Name},
			{"ApplicationIdentifier", p.ApplicationIdentifier},
			{"AuthMetadataUrl", p.MetadataURL},
			{"Realm", p.Realm},
			{"Enabled", p.Enabled},
			{"LinkedAccount", p.LinkedAccount},
			{"CertificateThumbprints", slices.Clone(p.CachedThumbprints)},
		})
	}
	auth := Section{Command: "Get-AuthConfig | Format-List", Objects: []Object{{
		{"CurrentCertificateThumbprint", st.Issuer.Current},
		{"PreviousCertificateThumbprint", st.Issuer.Previous},
		{"NextCertificateThumbprint", st.Issuer.Next},
		{"NextCertificateEffectiveDate", st.Issuer.NextEffective},
		{"ServiceName", st.OAuth.ServiceName},
		{"Realm", st.OAuth.Realm},
	}}}
	return []Section{partners, auth, localStore(st, "Get-ExchangeCertificate | Format-List")}
}

// sharePoint: https://learn.microsoft.com/powershell/module/sharepoint-server/get-sptrustedsecuritytokenissuer,
// https://learn.microsoft.com/powershell/module/sharepoint-server/get-spauthenticationrealm,
// https://learn.microsoft.com/powershell/module/sharepoint-server/get-spsecuritytokenserviceconfig
func sharePoint(st *reconcile.State) []Section {
	issuers := Section{Command: "Get-SPTrustedSecurityTokenIssuer"}
	for _, p := range st.Partners {
		// IsSelfIssuer is the complement of -IsTrustBroker.
		issuers.Objects = append(issuers.Objects, Object{
			{"Name", p.Name},
			{"RegisteredIssuerName", p.ApplicationIdentifier + "@" + p.Realm},
			{"MetadataEndPoint", p.MetadataURL},
			{"IsSelfIssuer", !p.TrustBroker},
			{"SigningCertificateThumbprints", slices.Clone(p.CachedThumbprints)},
		})
	}
	realm := Section{Command: "Get-SPAuthenticationRealm", Objects: []Object{{{"Realm", st.OAuth.Realm}}}}
	sts := Section{Command: "Get-SPSecurityTokenServiceConfig"}
	o := Object{{"SigningCertificateThumbprint", st.Issuer.Current}, {"QueuedSigningCertificateThumbprint", st.Issuer.Next}}
	if st.STS != nil {
		o = append(o, Property{"AllowOAuthOverHttp", st.STS.AllowOAuthOverHTTP}, Property{"AllowMetadataOverHttp", st.STS.AllowMetadataOverHTTP})
	}
	sts.Objects = []Object{o}
	// There is no Get- cmdlet for these; they are what
	// Set-SPAppPrincipalPermission granted.
	perms := Section{Command: "# app principal permissions (Set-SPAppPrincipalPermission)"}
	for _, a := range st.AppPermissions {
		perms.Objects = append(perms.Objects, Object{{"AppPrincipal", a.AppID}, {"Scope", a.Scope}, {"Right", a.Right}, {"EnableAppOnlyPolicy", a.AppOnly}})
	}
	return []Section{issuers, realm, sts, perms, localStore(st, `Get-ChildItem Cert:\LocalMachine\My`)}
}

// localStore is the host's own certificate store.
func localStore(st *reconcile.State, command string) Section {
	s := Section{Command: command}
	for _, c := range st.Certificates {
		o := Object{{"Thumbprint", c.Thumbprint}}
		o = append(o, certProps(c.Cert)...)
		s.Objects = append(s.Objects, append(o, Property{"HasPrivateKey", c.HasPrivateKey}))
	}
	return s
}

// certOf is the certificate with thumbprint t from the host's store, else
// fallback (the deployment's record of it).
func certOf(st *reconcile.State, t string, fallback *x509.Certificate) *x509.Certificate {
	if c := st.Find(t); c != nil && c.Cert != nil {
		return c.Cert
	}
	return fallback
}

func certProps(c *x509.Certificate) []Property {
	if c == nil {
		return nil
	}
	return []Property{
		{"Subject", c.Subject.String()},
		{"Issuer", c.Issuer.String()},
		{"AlternativeNames", slices.Clone(c.DNSNames)},
		{"NotBefore", c.NotBefore},
		{"NotAfter", c.NotAfter},
	}
}
