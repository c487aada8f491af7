package powershell

import (
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/s2strust/s2strust/agent/driver/drivertest"
	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestConformance runs the drivers' conformance suite against the
// PowerShell driver: real worker processes (this test binary in its
// "conformance" mode) emulating the three products' stores, answering in
// the scripts' shapes.
func TestConformance(t *testing.T) {
	// Set for the whole run (the scenarios are parallel, which rules out
	// t.Setenv in them); each world keeps its stores under its own root,
	// which the fake finds from its script's path.
	t.Setenv("S2S_FAKE_WORKER", "conformance")
	t.Setenv("S2S_FAKE_LOG", filepath.Join(t.TempDir(), "fake.log"))
	drivertest.Run(t, func(t *testing.T) drivertest.World { return newPSWorld(t) })
}

// TestRotationConformance runs the rotation scenarios against the
// PowerShell driver over the emulated products.
func TestRotationConformance(t *testing.T) {
	t.Setenv("S2S_FAKE_WORKER", "conformance")
	t.Setenv("S2S_FAKE_LOG", filepath.Join(t.TempDir(), "fake.log"))
	drivertest.RunRotation(t, func(t *testing.T) drivertest.RotationWorld { return newPSWorld(t) })
}

func (w *psWorld) NextSecrets(t *testing.T) []*pb.SecretMaterial {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.next != nil {
		return w.next
	}
	b, err := certs.Generate(certs.Template{CommonName: drivertest.Realm, DNSNames: []string{drivertest.Realm, "fabrikam.com"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(2, 0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	const pw = "N3xt-Horse-Battery"
	pfx, err := certs.EncodePFX(b, pw)
	if err != nil {
		t.Fatal(err)
	}
	w.next = []*pb.SecretMaterial{{Name: drivertest.NextIssuerSecret, Pfx: pfx, Password: pw, Thumbprint: certs.Thumbprint(b.Cert)}}
	return w.next
}

func (w *psWorld) Publish(t *testing.T, url string, list []*x509.Certificate) {
	s := loadEmu(w.root)
	if s.Published == nil {
		s.Published = map[string][]string{}
	}
	var ders []string
	for _, c := range list {
		ders = append(ders, base64.StdEncoding.EncodeToString(c.Raw))
	}
	s.Published[url] = ders
	s.save(w.root)
}

// publishedThumbprints are the thumbprints of what url publishes.
func (s *emu) publishedThumbprints(url string) []string {
	var out []string
	for _, c := range s.publishedCerts(url) {
		out = append(out, certs.Thumbprint(c))
	}
	return out
}

func (s *emu) publishedCerts(url string) []*x509.Certificate {
	var out []*x509.Certificate
	for _, d := range s.Published[url] {
		der, _ := base64.StdEncoding.DecodeString(d)
		if c, err := x509.ParseCertificate(der); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// importPFX opens a one-time key file as an import cmdlet does.
func importPFX(cmdlet, path, password string) (*x509.Certificate, *ErrorRecord) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &ErrorRecord{Cmdlet: cmdlet, FullyQualifiedErrorID: "FileNotFound", Message: err.Error()}
	}
	_, cert, _, err := pkcs12.DecodeChain(data, password)
	if err != nil {
		return nil, &ErrorRecord{Cmdlet: cmdlet, FullyQualifiedErrorID: "InvalidPassword", Message: "the PFX could not be opened: " + err.Error()}
	}
	return cert, nil
}

// psWorld is an estate of PowerShell-driven hosts over emulated products.
type psWorld struct {
	root    string
	mu      sync.Mutex
	drivers map[string]*Driver
	secrets []*pb.SecretMaterial
	next    []*pb.SecretMaterial
}

func newPSWorld(t *testing.T) *psWorld {
	b, err := certs.Generate(certs.Template{CommonName: drivertest.Realm, DNSNames: []string{drivertest.Realm, "fabrikam.com"},
		NotBefore: time.Now().Add(-24 * time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	const pw = "Corr3ct-Horse-Battery"
	pfx, err := certs.EncodePFX(b, pw)
	if err != nil {
		t.Fatal(err)
	}
	return &psWorld{root: t.TempDir(), drivers: map[string]*Driver{},
		secrets: []*pb.SecretMaterial{{Name: drivertest.IssuerSecret, Pfx: pfx, Password: pw, Thumbprint: certs.Thumbprint(b.Cert)}}}
}

// hostFactsFor is what the product's init reports for version.
func hostFactsFor(host string, p pb.Product, version string) hostFacts {
	f := hostFacts{OSVersion: "10.0.17763.0", PSVersion: "5.1.17763.592", ComputerName: host}
	switch p {
	case pb.Product_PRODUCT_LYNC:
		f.Module = "SkypeForBusiness"
		f.ModuleVersion = map[string]string{"2013": "5.0.8308.0", "2015": "6.0.9319.0", "2019": "7.0.2046.0", "SE": "7.0.2046.0"}[version]
		if version == "SE" {
			f.ProductNames = []string{"Skype for Business Server Subscription Edition, Core Components"}
		}
	case pb.Product_PRODUCT_EXCHANGE:
		f.ExchangeBuild = map[string]string{"2013": "15.00.1497.002", "2016": "15.01.2507.006", "2019": "15.02.1544.004", "SE": "15.02.2562.017"}[version]
		if version == "SE" {
			f.ProductNames = []string{"Microsoft Exchange Server Subscription Edition"}
		}
	case pb.Product_PRODUCT_SHAREPOINT:
		f.Shell = "Microsoft.SharePoint.PowerShell"
		f.FarmBuild = map[string]string{"2013": "15.0.5545.1000", "2016": "16.0.4351.1000", "2019": "16.0.10337.12109", "SE": "16.0.17928.20238"}[version]
	}
	return f
}

func (w *psWorld) Host(t *testing.T, host string, p pb.Product, version string) reconcile.Backend {
	w.mu.Lock()
	defer w.mu.Unlock()
	if d, ok := w.drivers[host]; ok {
		return d
	}
	writeJSON(filepath.Join(w.root, host+".facts.json"), hostFactsFor(host, p, version))
	d, err := New(Config{Host: host, Executable: os.Args[0], StateDir: filepath.Join(w.root, host, "powershell"),
		CallTimeout: 20 * time.Second, StartTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	w.drivers[host] = d
	return d
}

func (w *psWorld) Seed(t *testing.T, cfg *pb.HostConfig, partners []reconcile.Partner) {
	s := loadEmu(w.root)
	for _, p := range partners {
		switch cfg.GetProduct() {
		case pb.Product_PRODUCT_LYNC:
			s.Lync.Partners = append(s.Lync.Partners, lyncPartner{Identity: p.Name, Name: p.Name, ApplicationIdentifier: p.ApplicationIdentifier,
				MetadataURL: p.MetadataURL, Realm: p.Realm, ApplicationTrustLevel: products.TrustLevelName(p.TrustLevel), Enabled: p.Enabled})
		case pb.Product_PRODUCT_EXCHANGE:
			s.Exchange.Partners = append(s.Exchange.Partners, exchangePartner{Name: p.Name, ApplicationIdentifier: p.ApplicationIdentifier,
				AuthMetadataURL: p.MetadataURL, Realm: p.Realm, Enabled: p.Enabled})
		case pb.Product_PRODUCT_SHAREPOINT:
			s.SharePoint.Issuers = append(s.SharePoint.Issuers, spIssuer{Name: p.Name, RegisteredIssuerName: p.ApplicationIdentifier + "@" + p.Realm,
				MetadataEndPoint: p.MetadataURL, IsSelfIssuer: !p.TrustBroker})
		}
	}
	s.save(w.root)
}

func (w *psWorld) BreakMetadata(t *testing.T, url string, broken bool) {
	s := loadEmu(w.root)
	s.Broken = slices.DeleteFunc(s.Broken, func(u string) bool { return u == url })
	if broken {
		s.Broken = append(s.Broken, url)
	}
	s.save(w.root)
}

func (w *psWorld) Secrets(t *testing.T) []*pb.SecretMaterial { return w.secrets }

// emu is the emulated estate: each product's deployment store, the
// certificates each host holds, and the metadata URLs that cannot be
// reached. The Lync store is the Central Management Store; its replica on
// every Front End is taken to be current (the suite checks the reconciler's
// primary/non-primary split, not replication delay).
type emu struct {
	Lync struct {
		Partners []lyncPartner   `json:"partners"`
		OAuth    lyncOAuth       `json:"oauth"`
		Issuer   []csCertificate `json:"issuer"`
		Imported []csCertificate `json:"imported"`
	} `json:"lync"`
	Exchange struct {
		Partners []exchangePartner `json:"partners"`
		Auth     authConfig        `json:"auth"`
	} `json:"exchange"`
	SharePoint struct {
		Issuers []spIssuer      `json:"issuers"`
		Realm   string          `json:"realm"`
		STS     stsConfig       `json:"sts"`
		Perms   []appPermission `json:"perms"`
	} `json:"sharepoint"`
	Broken []string `json:"broken"`
	Init   bool     `json:"init"`
	// Published are the signing certificates (base64 DER) each metadata
	// URL publishes, where the world set them.
	Published map[string][]string `json:"published"`
	// ExCerts are the certificates each Exchange server imported.
	ExCerts map[string][]exchangeCertificate `json:"exCerts"`
}

func writeJSON(p string, v any) {
	b, _ := json.Marshal(v)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		panic(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		panic(err)
	}
}

// fakeThumb is a deterministic thumbprint for a named certificate.
func fakeThumb(name string) string {
	s := sha1.Sum([]byte(name))
	return strings.ToUpper(hex.EncodeToString(s[:]))
}

func loadEmu(root string) *emu {
	var s emu
	if b, err := os.ReadFile(filepath.Join(root, "estate.json")); err == nil {
		if err := json.Unmarshal(b, &s); err != nil {
			panic(err)
		}
		return &s
	}
	// As installed: Exchange's self-signed auth certificate current, realm
	// blank; SharePoint's realm its farm id, its STS certificate signing,
	// OAuth over HTTP allowed as some farms have it.
	s.Exchange.Auth = authConfig{ServiceName: products.ExchangeID, CurrentCertificateThumbprint: fakeThumb("Microsoft Exchange Server Auth Certificate")}
	s.SharePoint.Realm = "9f11c5ea-2df9-4950-8dcf-da8cd7aa4eff"
	s.SharePoint.STS = stsConfig{NameIdentifier: products.SharePointID + "@" + s.SharePoint.Realm, AllowOAuthOverHTTP: true,
		SigningCertificate: &certificateFacts{Thumbprint: fakeThumb("SharePoint Security Token Service"), HasPrivateKey: true}}
	s.Init = true
	return &s
}

func (s *emu) save(root string) { writeJSON(filepath.Join(root, "estate.json"), s) }

// metadataOf is what each partner's metadata document says of its issuer.
func metadataOf(url string) (appID, realm string, ok bool) {
	switch url {
	case drivertest.LyncURL:
		return products.LyncID, drivertest.Realm, true
	case drivertest.ExchangeURL:
		return products.ExchangeID, "*", true
	case drivertest.SharePointURL:
		return products.SharePointID, "9f11c5ea-2df9-4950-8dcf-da8cd7aa4eff", true
	}
	return "", "", false
}

// metadataError is what the products say when they cannot use a metadata URL.
func productMetadataError(cmdlet, param, url string) *ErrorRecord {
	return &ErrorRecord{Cmdlet: cmdlet, FullyQualifiedErrorID: "ParameterBindingFailed," + cmdlet, Category: "InvalidArgument",
		Message: "Cannot bind parameter '" + param + "' to the target. Exception setting \"" + param + "\": \"The metadata document could not be downloaded from the URL in the " + param + " parameter or downloaded data is not a valid metadata document.\" (" + url + ")"}
}

// conformanceAnswer is the emulated product's answer to one request of
// host's worker for script.
func conformanceAnswer(root, host, script, op string, raw json.RawMessage) (any, *ErrorRecord) {
	if op == "init" {
		var f hostFacts
		b, err := os.ReadFile(filepath.Join(root, host+".facts.json"))
		if err != nil {
			return nil, &ErrorRecord{Message: "no facts for " + host}
		}
		_ = json.Unmarshal(b, &f)
		return f, nil
	}
	var a map[string]any
	_ = json.Unmarshal(raw, &a)
	str := func(k string) string { s, _ := a[k].(string); return s }
	has := func(k string) bool { _, ok := a[k]; return ok }
	boolean := func(k string, def bool) bool {
		if b, ok := a[k].(bool); ok {
			return b
		}
		return def
	}
	s := loadEmu(root)
	broken := func(url string) bool { return slices.Contains(s.Broken, url) }
	if op == "metadata-get" {
		url := str("url")
		id, realm, known := metadataOf(url)
		if broken(url) || !known || len(s.Published[url]) == 0 {
			return metadataGet{URL: url, Status: 404}, nil
		}
		body, _ := json.Marshal(metadata.Build(id, realm, hostOfURL(url), s.publishedCerts(url)))
		return metadataGet{URL: url, Status: 200, Body: string(body)}, nil
	}
	ok := func(v any) (any, *ErrorRecord) { s.save(root); return v, nil }
	missing := func(cmdlet, what string) (any, *ErrorRecord) {
		return nil, &ErrorRecord{Cmdlet: cmdlet, FullyQualifiedErrorID: "ObjectNotFound", Category: "ObjectNotFound", Message: what + " was not found"}
	}
	switch script + "/" + op {
	// Lync / Skype for Business: the CMS and this Front End's store.
	case "lync/get-partner-applications":
		return s.Lync.Partners, nil
	case "lync/get-oauth-configuration":
		return s.Lync.OAuth, nil
	case "lync/get-certificates":
		// The Default certificate is this Front End's own; the global
		// OAuthTokenIssuer is replicated with its key to every Front End.
		def := csCertificate{Use: "Default", Thumbprint: fakeThumb("Default " + host), Subject: "CN=" + host, InLocalStore: true, HasPrivateKey: true}
		issuer := slices.Clone(s.Lync.Issuer)
		for i := range issuer {
			issuer[i].InLocalStore, issuer[i].HasPrivateKey = true, true
		}
		return lyncCertificates{OAuthTokenIssuer: issuer, Default: []csCertificate{def}}, nil
	case "lync/new-partner-application":
		url := str("metadataUrl")
		id, realm, known := metadataOf(url)
		if broken(url) || !known {
			return nil, productMetadataError("New-CsPartnerApplication", "MetadataUrl", url)
		}
		if slices.ContainsFunc(s.Lync.Partners, func(p lyncPartner) bool { return strings.EqualFold(p.Identity, str("identity")) }) {
			return nil, &ErrorRecord{Cmdlet: "New-CsPartnerApplication", FullyQualifiedErrorID: "DuplicateIdentity", Message: "partner application " + str("identity") + " already exists"}
		}
		p := lyncPartner{Identity: str("identity"), Name: str("identity"), ApplicationIdentifier: id, MetadataURL: url, Realm: realm,
			ApplicationTrustLevel: str("applicationTrustLevel"), Enabled: boolean("enabled", true)}
		s.Lync.Partners = append(s.Lync.Partners, p)
		return ok(p)
	case "lync/set-partner-application":
		i := slices.IndexFunc(s.Lync.Partners, func(p lyncPartner) bool { return strings.EqualFold(p.Identity, str("identity")) })
		if i < 0 {
			return missing("Set-CsPartnerApplication", "partner application "+str("identity"))
		}
		p := &s.Lync.Partners[i]
		if has("metadataUrl") {
			if broken(str("metadataUrl")) {
				return nil, productMetadataError("Set-CsPartnerApplication", "MetadataUrl", str("metadataUrl"))
			}
			p.MetadataURL = str("metadataUrl")
		}
		if has("applicationTrustLevel") {
			p.ApplicationTrustLevel = str("applicationTrustLevel")
		}
		p.Enabled = boolean("enabled", p.Enabled)
		return ok(*p)
	case "lync/remove-partner-application":
		n := len(s.Lync.Partners)
		s.Lync.Partners = slices.DeleteFunc(s.Lync.Partners, func(p lyncPartner) bool { return strings.EqualFold(p.Identity, str("identity")) })
		if len(s.Lync.Partners) == n {
			return missing("Remove-CsPartnerApplication", "partner application "+str("identity"))
		}
		return ok(map[string]bool{"removed": true})
	case "lync/set-oauth-configuration":
		for k, f := range map[string]*string{"serviceName": &s.Lync.OAuth.ServiceName, "exchangeAutodiscoverUrl": &s.Lync.OAuth.ExchangeAutodiscoverURL, "realm": &s.Lync.OAuth.Realm} {
			if has(k) {
				*f = str(k)
			}
		}
		return ok(map[string]bool{"updated": true})
	case "lync/import-issuer-certificate":
		data, err := os.ReadFile(str("pfxPath"))
		if err != nil {
			return nil, &ErrorRecord{Cmdlet: "Import-CsCertificate", FullyQualifiedErrorID: "FileNotFound", Message: err.Error()}
		}
		_, cert, _, err := pkcs12.DecodeChain(data, str("pfxPassword"))
		if err != nil {
			return nil, &ErrorRecord{Cmdlet: "Import-CsCertificate", FullyQualifiedErrorID: "InvalidPassword", Message: "the PFX could not be opened: " + err.Error()}
		}
		c := csCertificate{Use: "OAuthTokenIssuer", Thumbprint: certs.Thumbprint(cert), Subject: cert.Subject.String(),
			NotBefore: cert.NotBefore.UTC().Format(time.RFC3339), NotAfter: cert.NotAfter.UTC().Format(time.RFC3339),
			EffectiveDate: time.Now().Add(-time.Minute).UTC().Format(time.RFC3339), RawData: base64.StdEncoding.EncodeToString(cert.Raw)}
		if has("effectiveDate") {
			// -Roll -EffectiveDate: kept beside the current one until then.
			c.EffectiveDate = str("effectiveDate")
			s.Lync.Issuer = append(slices.DeleteFunc(s.Lync.Issuer, func(x csCertificate) bool { return x.Thumbprint == c.Thumbprint }), c)
			return ok(map[string]bool{"imported": true})
		}
		s.Lync.Issuer = []csCertificate{c}
		return ok(map[string]bool{"imported": true})
	case "lync/set-issuer-certificate":
		s.Lync.Issuer = []csCertificate{{Use: "OAuthTokenIssuer", Thumbprint: str("thumbprint"), EffectiveDate: time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)}}
		return ok(map[string]bool{"assigned": true})

	// Exchange: the organization in Active Directory, this server's store.
	case "exchange/get-partner-applications":
		return s.Exchange.Partners, nil
	case "exchange/get-auth-config":
		return s.Exchange.Auth, nil
	case "exchange/get-exchange-certificates":
		// This server's own imports, and the organization's auth
		// certificate as setup left it on every server.
		list := slices.Clone(s.ExCerts[host])
		if cur := s.Exchange.Auth.CurrentCertificateThumbprint; !slices.ContainsFunc(list, func(c exchangeCertificate) bool { return c.Thumbprint == cur }) {
			list = append(list, exchangeCertificate{Thumbprint: cur, Subject: "CN=Microsoft Exchange Server Auth Certificate", HasPrivateKey: true})
		}
		return list, nil
	case "exchange/import-exchange-certificate":
		cert, rec := importPFX("Import-ExchangeCertificate", str("pfxPath"), str("pfxPassword"))
		if rec != nil {
			return nil, rec
		}
		if s.ExCerts == nil {
			s.ExCerts = map[string][]exchangeCertificate{}
		}
		c := exchangeCertificate{Thumbprint: certs.Thumbprint(cert), Subject: cert.Subject.String(), HasPrivateKey: true, RawData: base64.StdEncoding.EncodeToString(cert.Raw)}
		s.ExCerts[host] = append(slices.DeleteFunc(s.ExCerts[host], func(x exchangeCertificate) bool { return x.Thumbprint == c.Thumbprint }), c)
		return ok(map[string]string{"thumbprint": c.Thumbprint})
	case "exchange/configure-partner-application":
		url := str("authMetadataUrl")
		id, _, known := metadataOf(url)
		if broken(url) || !known {
			return nil, productMetadataError("New-PartnerApplication", "AuthMetadataUrl", url)
		}
		p := exchangePartner{Name: str("applicationType") + "Enterprise-" + fakeThumb(url)[:8], ApplicationIdentifier: id, AuthMetadataURL: url, Enabled: boolean("enabled", true),
			CertificateStrings: s.Published[url]}
		s.Exchange.Partners = append(s.Exchange.Partners, p)
		return ok(p)
	case "exchange/set-partner-application":
		i := slices.IndexFunc(s.Exchange.Partners, func(p exchangePartner) bool { return p.Name == str("identity") })
		if i < 0 {
			return missing("Set-PartnerApplication", "partner application "+str("identity"))
		}
		p := &s.Exchange.Partners[i]
		if boolean("refreshAuthMetadata", false) {
			// -RefreshAuthMetadata downloads the document again.
			if broken(p.AuthMetadataURL) {
				return nil, productMetadataError("Set-PartnerApplication", "AuthMetadataUrl", p.AuthMetadataURL)
			}
			p.CertificateStrings = s.Published[p.AuthMetadataURL]
			return ok(*p)
		}
		p.Enabled = boolean("enabled", p.Enabled)
		if has("authMetadataUrl") {
			p.AuthMetadataURL = str("authMetadataUrl")
			p.CertificateStrings = s.Published[p.AuthMetadataURL]
		}
		return ok(*p)
	case "exchange/remove-partner-application":
		s.Exchange.Partners = slices.DeleteFunc(s.Exchange.Partners, func(p exchangePartner) bool { return p.Name == str("identity") })
		return ok(map[string]bool{"removed": true})
	case "exchange/set-auth-config":
		switch str("action") {
		case "realm":
			s.Exchange.Auth.Realm = str("realm")
		case "current-certificate":
			s.Exchange.Auth.PreviousCertificateThumbprint, s.Exchange.Auth.CurrentCertificateThumbprint = s.Exchange.Auth.CurrentCertificateThumbprint, str("thumbprint")
		case "new-certificate":
			// The certificate must be on the server the cmdlet runs on.
			if !slices.ContainsFunc(s.ExCerts[host], func(c exchangeCertificate) bool { return strings.EqualFold(c.Thumbprint, str("thumbprint")) }) {
				return nil, &ErrorRecord{Cmdlet: "Set-AuthConfig", FullyQualifiedErrorID: "CertificateNotFound", Category: "ObjectNotFound", Message: "certificate " + str("thumbprint") + " is not installed on " + host}
			}
			a := &s.Exchange.Auth
			a.NextCertificateThumbprint, a.NextCertificateEffectiveDate = str("thumbprint"), str("effectiveDate")
		case "publish":
			a := &s.Exchange.Auth
			if a.NextCertificateThumbprint == "" {
				return nil, &ErrorRecord{Cmdlet: "Set-AuthConfig", FullyQualifiedErrorID: "NoNextCertificate", Category: "InvalidOperation", Message: "no next certificate is configured"}
			}
			a.PreviousCertificateThumbprint, a.CurrentCertificateThumbprint = a.CurrentCertificateThumbprint, a.NextCertificateThumbprint
			a.NextCertificateThumbprint, a.NextCertificateEffectiveDate = "", ""
		case "clear-previous":
			s.Exchange.Auth.PreviousCertificateThumbprint = ""
		}
		return ok(map[string]bool{"updated": true})
	case "exchange/iisreset", "sharepoint/iisreset":
		return map[string]any{"exitCode": 0, "output": "Internet services successfully restarted"}, nil
	case "sharepoint/restart-timer":
		return map[string]string{"restarted": "SPTimerV4"}, nil

	// SharePoint: the farm.
	case "sharepoint/get-trusted-issuers":
		return s.SharePoint.Issuers, nil
	case "sharepoint/get-authentication-realm":
		return map[string]string{"realm": s.SharePoint.Realm}, nil
	case "sharepoint/get-sts-config":
		return s.SharePoint.STS, nil
	case "sharepoint/get-app-principal-permission":
		id := str("clientId")
		if !slices.ContainsFunc(s.SharePoint.Issuers, func(i spIssuer) bool { return strings.HasPrefix(i.RegisteredIssuerName, id+"@") }) {
			return appPermission{NameIdentifier: id + "@" + s.SharePoint.Realm}, nil
		}
		for _, p := range s.SharePoint.Perms {
			if strings.HasPrefix(p.NameIdentifier, id+"@") {
				return p, nil
			}
		}
		return appPermission{NameIdentifier: id + "@" + s.SharePoint.Realm, Found: true, Right: "None"}, nil
	case "sharepoint/new-trusted-issuer":
		url := str("metadataEndPoint")
		id, realm, known := metadataOf(url)
		if broken(url) || !known {
			return nil, productMetadataError("New-SPTrustedSecurityTokenIssuer", "MetadataEndPoint", url)
		}
		i := spIssuer{Name: str("name"), RegisteredIssuerName: id + "@" + realm, MetadataEndPoint: url, IsSelfIssuer: !boolean("isTrustBroker", false)}
		i.setSigning(s.publishedThumbprints(url))
		s.SharePoint.Issuers = append(s.SharePoint.Issuers, i)
		return ok(i)
	case "sharepoint/set-trusted-issuer":
		i := slices.IndexFunc(s.SharePoint.Issuers, func(i spIssuer) bool { return i.Name == str("name") })
		if i < 0 {
			return missing("Set-SPTrustedSecurityTokenIssuer", "trusted security token issuer "+str("name"))
		}
		if broken(str("metadataEndPoint")) {
			return nil, productMetadataError("Set-SPTrustedSecurityTokenIssuer", "MetadataEndPoint", str("metadataEndPoint"))
		}
		s.SharePoint.Issuers[i].MetadataEndPoint = str("metadataEndPoint")
		s.SharePoint.Issuers[i].setSigning(s.publishedThumbprints(str("metadataEndPoint")))
		if has("isTrustBroker") {
			s.SharePoint.Issuers[i].IsSelfIssuer = !boolean("isTrustBroker", false)
		}
		return ok(s.SharePoint.Issuers[i])
	case "sharepoint/remove-trusted-issuer":
		s.SharePoint.Issuers = slices.DeleteFunc(s.SharePoint.Issuers, func(i spIssuer) bool { return i.Name == str("name") })
		return ok(map[string]bool{"removed": true})
	case "sharepoint/set-authentication-realm":
		s.SharePoint.Realm = str("realm")
		return ok(map[string]bool{"updated": true})
	case "sharepoint/set-app-principal-permission":
		id := str("clientId")
		if !slices.ContainsFunc(s.SharePoint.Issuers, func(i spIssuer) bool { return strings.HasPrefix(i.RegisteredIssuerName, id+"@") }) {
			return nil, &ErrorRecord{Cmdlet: "Get-SPAppPrincipal", FullyQualifiedErrorID: "S2SAppPrincipalNotFound", Category: "ObjectNotFound", Message: "no app principal " + id + "@" + s.SharePoint.Realm}
		}
		s.SharePoint.Perms = append(slices.DeleteFunc(s.SharePoint.Perms, func(p appPermission) bool { return strings.HasPrefix(p.NameIdentifier, id+"@") }),
			appPermission{NameIdentifier: id + "@" + s.SharePoint.Realm, Found: true, Right: "FullControl", AppOnly: true})
		return ok(map[string]bool{"updated": true})
	case "sharepoint/set-sts-http":
		s.SharePoint.STS.AllowOAuthOverHTTP, s.SharePoint.STS.AllowMetadataOverHTTP = boolean("allowOAuthOverHttp", false), boolean("allowMetadataOverHttp", false)
		return ok(map[string]bool{"updated": true})
	case "sharepoint/queue-signing-certificate", "sharepoint/import-signing-certificate":
		cert, rec := importPFX("Set-SPSecurityTokenServiceConfig", str("pfxPath"), str("pfxPassword"))
		if rec != nil {
			return nil, rec
		}
		c := &certificateFacts{Thumbprint: certs.Thumbprint(cert), Subject: cert.Subject.String(), HasPrivateKey: true, RawData: base64.StdEncoding.EncodeToString(cert.Raw)}
		sts := &s.SharePoint.STS
		if op == "queue-signing-certificate" {
			sts.QueueSigningCertificate = c
		} else {
			sts.SigningCertificate = c
			if q := sts.QueueSigningCertificate; q != nil && q.Thumbprint == c.Thumbprint {
				sts.QueueSigningCertificate = nil
			}
		}
		return ok(map[string]string{"thumbprint": c.Thumbprint})
	}
	return nil, &ErrorRecord{FullyQualifiedErrorID: "S2SUnknownOperation", Category: "InvalidOperation", Message: "the emulated " + script + " has no operation " + op}
}

// conformanceContext finds the world's root and the host from the
// worker's script path: <root>/<host>/powershell/scripts/<script>.ps1.
func conformanceContext(scriptPath string) (root, host string) {
	hostDir := filepath.Dir(filepath.Dir(filepath.Dir(scriptPath)))
	return filepath.Dir(hostDir), filepath.Base(hostDir)
}

// setSigning records the issuer's signing certificates as read from its
// metadata: the first as SigningCertificate, the rest as additional ones.
func (i *spIssuer) setSigning(thumbs []string) {
	i.SigningThumbprint, i.AdditionalThumbprints = "", nil
	if len(thumbs) > 0 {
		i.SigningThumbprint, i.AdditionalThumbprints = thumbs[0], thumbs[1:]
	}
}

// hostOfURL is the host name of a URL.
func hostOfURL(raw string) string {
	h := strings.TrimPrefix(raw, "https://")
	h, _, _ = strings.Cut(h, "/")
	return h
}
