package powershell

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// The scripts' result shapes (their [ordered] projections), decoded
// strictly enough that a renamed field shows up in the golden tests.

type lyncPartner struct {
	Identity                            string `json:"identity"`
	Name                                string `json:"name"`
	ApplicationIdentifier               string `json:"applicationIdentifier"`
	MetadataURL                         string `json:"metadataUrl"`
	Realm                               string `json:"realm"`
	ApplicationTrustLevel               string `json:"applicationTrustLevel"`
	Enabled                             bool   `json:"enabled"`
	AcceptSecurityIdentifierInformation bool   `json:"acceptSecurityIdentifierInformation"`
}

type lyncOAuth struct {
	ServiceName             string `json:"serviceName"`
	Realm                   string `json:"realm"`
	ExchangeAutodiscoverURL string `json:"exchangeAutodiscoverUrl"`
}

type csCertificate struct {
	Use              string   `json:"use"`
	Thumbprint       string   `json:"thumbprint"`
	Subject          string   `json:"subject"`
	Issuer           string   `json:"issuer"`
	NotBefore        string   `json:"notBefore"`
	NotAfter         string   `json:"notAfter"`
	EffectiveDate    string   `json:"effectiveDate"`
	AlternativeNames []string `json:"alternativeNames"`
	InLocalStore     bool     `json:"inLocalStore"`
	HasPrivateKey    bool     `json:"hasPrivateKey"`
	RawData          string   `json:"rawData"`
}

type lyncCertificates struct {
	OAuthTokenIssuer []csCertificate `json:"oauthTokenIssuer"`
	Default          []csCertificate `json:"default"`
}

type exchangePartner struct {
	Name                                string   `json:"name"`
	ApplicationIdentifier               string   `json:"applicationIdentifier"`
	AuthMetadataURL                     string   `json:"authMetadataUrl"`
	Realm                               string   `json:"realm"`
	Enabled                             bool     `json:"enabled"`
	AcceptSecurityIdentifierInformation bool     `json:"acceptSecurityIdentifierInformation"`
	LinkedAccount                       string   `json:"linkedAccount"`
	IssuerIdentifier                    string   `json:"issuerIdentifier"`
	CertificateStrings                  []string `json:"certificateStrings"`
}

type authConfig struct {
	ServiceName                   string `json:"serviceName"`
	Realm                         string `json:"realm"`
	CurrentCertificateThumbprint  string `json:"currentCertificateThumbprint"`
	PreviousCertificateThumbprint string `json:"previousCertificateThumbprint"`
	NextCertificateThumbprint     string `json:"nextCertificateThumbprint"`
	NextCertificateEffectiveDate  string `json:"nextCertificateEffectiveDate"`
}

type exchangeCertificate struct {
	Thumbprint         string   `json:"thumbprint"`
	Subject            string   `json:"subject"`
	Issuer             string   `json:"issuer"`
	NotBefore          string   `json:"notBefore"`
	NotAfter           string   `json:"notAfter"`
	HasPrivateKey      bool     `json:"hasPrivateKey"`
	CertificateDomains []string `json:"certificateDomains"`
	Services           string   `json:"services"`
	RawData            string   `json:"rawData"`
}

type spIssuer struct {
	Name                  string   `json:"name"`
	RegisteredIssuerName  string   `json:"registeredIssuerName"`
	MetadataEndPoint      string   `json:"metadataEndPoint"`
	IsSelfIssuer          bool     `json:"isSelfIssuer"`
	SigningThumbprint     string   `json:"signingThumbprint"`
	AdditionalThumbprints []string `json:"additionalThumbprints"`
}

type certificateFacts struct {
	Thumbprint    string   `json:"thumbprint"`
	Subject       string   `json:"subject"`
	Issuer        string   `json:"issuer"`
	NotBefore     string   `json:"notBefore"`
	NotAfter      string   `json:"notAfter"`
	HasPrivateKey bool     `json:"hasPrivateKey"`
	DNSNames      []string `json:"dnsNames"`
	RawData       string   `json:"rawData"`
}

type stsConfig struct {
	NameIdentifier          string            `json:"nameIdentifier"`
	AllowOAuthOverHTTP      bool              `json:"allowOAuthOverHttp"`
	AllowMetadataOverHTTP   bool              `json:"allowMetadataOverHttp"`
	SigningCertificate      *certificateFacts `json:"signingCertificate"`
	QueueSigningCertificate *certificateFacts `json:"queueSigningCertificate"`
}

type appPermission struct {
	NameIdentifier string `json:"nameIdentifier"`
	Found          bool   `json:"found"`
	Right          string `json:"right"`
	AppOnly        bool   `json:"appOnly"`
}

// parseTime reads the scripts' ISO 8601 dates; empty is the zero time.
func parseTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s %q: not an ISO 8601 date", field, s)
	}
	return t, nil
}

// localCert builds a State certificate from a thumbprint and base64 DER.
func localCert(thumbprint, raw string, hasKey bool) (reconcile.Certificate, error) {
	t, err := certs.NormalizeThumbprint(thumbprint)
	if err != nil {
		return reconcile.Certificate{}, fmt.Errorf("certificate thumbprint %q: %w", thumbprint, err)
	}
	c := reconcile.Certificate{Thumbprint: t, HasPrivateKey: hasKey}
	if raw != "" {
		der, err := base64.StdEncoding.DecodeString(raw)
		if err != nil {
			return c, fmt.Errorf("certificate %s: raw data is not base64", t)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return c, fmt.Errorf("certificate %s: %w", t, err)
		}
		if got := certs.Thumbprint(cert); got != t {
			return c, fmt.Errorf("certificate %s: its raw data is certificate %s", t, got)
		}
		c.Cert = cert
	}
	return c, nil
}

func addCert(st *reconcile.State, c reconcile.Certificate) {
	if st.Find(c.Thumbprint) == nil {
		st.Certificates = append(st.Certificates, c)
	}
}

func normThumb(s string) string {
	if s == "" {
		return ""
	}
	t, err := certs.NormalizeThumbprint(s)
	if err != nil {
		return s
	}
	return t
}

func readLync(ctx context.Context, w *Worker, cfg *pb.HostConfig, st *reconcile.State, now time.Time) error {
	// The primary reads the Central Management Store; the other Front
	// Ends their replica (-LocalStore), which is what they serve.
	local := map[string]any{"localStore": !cfg.GetPrimary()}
	var apps []lyncPartner
	if err := w.Call(ctx, "get-partner-applications", local, &apps); err != nil {
		return err
	}
	for _, a := range apps {
		level, _ := products.ParseTrustLevel(a.ApplicationTrustLevel)
		st.Partners = append(st.Partners, reconcile.Partner{
			Name: a.Identity, ApplicationIdentifier: a.ApplicationIdentifier, MetadataURL: a.MetadataURL,
			Realm: a.Realm, TrustLevel: level, Enabled: a.Enabled,
		})
	}
	var o lyncOAuth
	if err := w.Call(ctx, "get-oauth-configuration", local, &o); err != nil {
		return err
	}
	st.OAuth = reconcile.OAuth{ServiceName: o.ServiceName, Realm: o.Realm, ExchangeAutodiscoverURL: o.ExchangeAutodiscoverURL}
	var cs lyncCertificates
	if err := w.Call(ctx, "get-certificates", nil, &cs); err != nil {
		return err
	}
	for _, c := range append(append([]csCertificate(nil), cs.OAuthTokenIssuer...), cs.Default...) {
		if c.InLocalStore {
			lc, err := localCert(c.Thumbprint, c.RawData, c.HasPrivateKey)
			if err != nil {
				return fmt.Errorf("get-certificates: %w", err)
			}
			addCert(st, lc)
		}
	}
	for _, c := range cs.OAuthTokenIssuer {
		for field, v := range map[string]string{"effectiveDate": c.EffectiveDate, "notAfter": c.NotAfter} {
			if _, err := parseTime(field, v); err != nil {
				return fmt.Errorf("get-certificates: %w", err)
			}
		}
	}
	st.Issuer = lyncIssuers(cs.OAuthTokenIssuer, now)
	if len(cs.Default) > 0 {
		st.DefaultThumbprint = normThumb(cs.Default[0].Thumbprint)
	}
	return nil
}

func readExchange(ctx context.Context, w *Worker, st *reconcile.State) error {
	var apps []exchangePartner
	if err := w.Call(ctx, "get-partner-applications", nil, &apps); err != nil {
		return err
	}
	for _, a := range apps {
		p := reconcile.Partner{
			Name: a.Name, ApplicationIdentifier: a.ApplicationIdentifier, MetadataURL: a.AuthMetadataURL,
			Realm: a.Realm, Enabled: a.Enabled, LinkedAccount: a.LinkedAccount,
		}
		for _, s := range a.CertificateStrings {
			der, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
			if err != nil {
				return fmt.Errorf("get-partner-applications: partner %s: a CertificateStrings entry is not base64", a.Name)
			}
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return fmt.Errorf("get-partner-applications: partner %s: CertificateStrings: %w", a.Name, err)
			}
			p.CachedThumbprints = append(p.CachedThumbprints, certs.Thumbprint(c))
		}
		st.Partners = append(st.Partners, p)
	}
	var ac authConfig
	if err := w.Call(ctx, "get-auth-config", nil, &ac); err != nil {
		return err
	}
	next, err := parseTime("nextCertificateEffectiveDate", ac.NextCertificateEffectiveDate)
	if err != nil {
		return fmt.Errorf("get-auth-config: %w", err)
	}
	st.OAuth = reconcile.OAuth{ServiceName: ac.ServiceName, Realm: ac.Realm}
	st.Issuer = reconcile.Issuer{Current: normThumb(ac.CurrentCertificateThumbprint), Next: normThumb(ac.NextCertificateThumbprint),
		Previous: normThumb(ac.PreviousCertificateThumbprint), NextEffective: next}
	var ecs []exchangeCertificate
	if err := w.Call(ctx, "get-exchange-certificates", nil, &ecs); err != nil {
		return err
	}
	for _, c := range ecs {
		lc, err := localCert(c.Thumbprint, c.RawData, c.HasPrivateKey)
		if err != nil {
			return fmt.Errorf("get-exchange-certificates: %w", err)
		}
		addCert(st, lc)
	}
	return nil
}

func readSharePoint(ctx context.Context, w *Worker, cfg *pb.HostConfig, st *reconcile.State) error {
	var issuers []spIssuer
	if err := w.Call(ctx, "get-trusted-issuers", nil, &issuers); err != nil {
		return err
	}
	for _, i := range issuers {
		// RegisteredIssuerName is <client id>@<realm>.
		id, realm, _ := strings.Cut(i.RegisteredIssuerName, "@")
		p := reconcile.Partner{Name: i.Name, ApplicationIdentifier: id, Realm: realm, MetadataURL: i.MetadataEndPoint,
			Enabled: true, TrustBroker: !i.IsSelfIssuer}
		for _, t := range append([]string{i.SigningThumbprint}, i.AdditionalThumbprints...) {
			if t != "" {
				p.CachedThumbprints = append(p.CachedThumbprints, normThumb(t))
			}
		}
		st.Partners = append(st.Partners, p)
	}
	var realm struct {
		Realm string `json:"realm"`
	}
	if err := w.Call(ctx, "get-authentication-realm", nil, &realm); err != nil {
		return err
	}
	var sts stsConfig
	if err := w.Call(ctx, "get-sts-config", nil, &sts); err != nil {
		return err
	}
	serviceName, _, _ := strings.Cut(sts.NameIdentifier, "@")
	st.OAuth = reconcile.OAuth{ServiceName: serviceName, Realm: realm.Realm}
	st.STS = &reconcile.STSConfig{AllowOAuthOverHTTP: sts.AllowOAuthOverHTTP, AllowMetadataOverHTTP: sts.AllowMetadataOverHTTP}
	for _, c := range []*certificateFacts{sts.SigningCertificate, sts.QueueSigningCertificate} {
		if c == nil {
			continue
		}
		lc, err := localCert(c.Thumbprint, c.RawData, c.HasPrivateKey)
		if err != nil {
			return fmt.Errorf("get-sts-config: %w", err)
		}
		addCert(st, lc)
	}
	if c := sts.SigningCertificate; c != nil {
		st.Issuer.Current = normThumb(c.Thumbprint)
	}
	if c := sts.QueueSigningCertificate; c != nil {
		st.Issuer.Next = normThumb(c.Thumbprint)
		st.STS.QueuedSigningThumbprint = st.Issuer.Next
	}
	// The app principal permission of every Exchange partner, in the web
	// application's root site.
	for _, p := range cfg.GetPartners() {
		if p.GetProduct() != pb.Product_PRODUCT_EXCHANGE {
			continue
		}
		var ap appPermission
		if err := w.Call(ctx, "get-app-principal-permission", map[string]any{"siteUrl": cfg.GetEndpoint(), "clientId": p.GetApplicationIdentifier()}, &ap); err != nil {
			return err
		}
		if ap.Found {
			st.AppPermissions = append(st.AppPermissions, reconcile.AppPermission{AppID: p.GetApplicationIdentifier(), Scope: "SiteSubscription", Right: ap.Right, AppOnly: ap.AppOnly})
		}
	}
	return nil
}

// lyncIssuers reads Get-CsCertificate -Type OAuthTokenIssuer's list: the
// current issuer is the latest already effective, the next one the first
// with an EffectiveDate still ahead (a -Roll), the previous one the
// current one's predecessor, kept until it expires. Dates were checked by
// the caller.
func lyncIssuers(list []csCertificate, now time.Time) reconcile.Issuer {
	type dated struct {
		thumb     string
		effective time.Time
		notAfter  time.Time
	}
	var ds []dated
	for _, c := range list {
		eff, _ := parseTime("effectiveDate", c.EffectiveDate)
		na, _ := parseTime("notAfter", c.NotAfter)
		ds = append(ds, dated{normThumb(c.Thumbprint), eff, na})
	}
	slices.SortFunc(ds, func(a, b dated) int { return a.effective.Compare(b.effective) })
	var is reconcile.Issuer
	var curNotAfter time.Time
	for _, d := range ds {
		if d.effective.After(now) {
			if is.Next == "" {
				is.Next, is.NextEffective = d.thumb, d.effective
			}
			continue
		}
		if is.Current != "" {
			is.Previous, is.PreviousNotAfter = is.Current, curNotAfter
		}
		is.Current, curNotAfter = d.thumb, d.notAfter
	}
	return is
}
