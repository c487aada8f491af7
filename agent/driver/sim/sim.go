// Package sim is the simulated product driver: a faithful simulation of the
// configuration stores of Lync / Skype for Business, Exchange and
// SharePoint, persisted in files, for tests, the demo and benchmarks.
//
// Each deployment has one deployment-scope store, shared by all its hosts
// (<SharedDir>/<deployment>/store.json): the Lync Central Management
// Store's global scope, the Exchange organization in Active Directory, or
// the SharePoint farm's configuration database. Only the deployment's
// primary host writes it; every host reads it as its replica. Each host
// also has its own store in its state directory (sim-host.json): its
// certificate store, with private keys in keys/<thumbprint>.key, owner-only.
// Every write is atomic and happens only when something changed, so Apply
// is idempotent and an agent killed mid-apply converges on restart.
//
// Apply reproduces the reconciliation of the seed article's script and its
// Exchange and SharePoint counterparts: stale partners are removed, a
// partner whose identifier is wrong is removed and created again, other
// differences are set in place, and partners s2strust was not asked about
// are left alone. Creating a partner downloads its metadata through
// Config.FetchMetadata, as New-CsPartnerApplication does.
//
// A host can also act as the product on the network: Serve publishes the
// deployment's auth metadata document over HTTPS and accepts S2S actor
// tokens at ProbePath, validating them against the partners its deployment
// store registers; CheckMetadata and Probe (driver.Prober) download
// metadata and present real tokens from the host's own vantage point
// (Config.FetchOptions: its trust store and resolver).
package sim

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// metadataError is the products' own message for a partner whose metadata
// cannot be used, quoted in the seed article; %s is the URL parameter.
const metadataError = "the metadata document could not be downloaded from the URL in the %s parameter or downloaded data is not a valid metadata document: %w"

// Config configures a Sim.
type Config struct {
	// Host is the host's FQDN.
	Host string
	// StateDir holds this host's own files.
	StateDir string
	// SharedDir holds the deployment-scope stores, one per deployment in
	// <SharedDir>/<deployment>/store.json, shared by every host of the
	// deployment.
	SharedDir string
	// Products is what Detect returns. When it is not empty, a HostConfig
	// for a product not in it fails the "product" item, and so does a
	// version without S2S OAuth. The first product also decides the kind of
	// default certificate a new host gets.
	Products []*pb.DetectedProduct
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// FetchMetadata downloads and validates a partner's auth metadata
	// document and returns its signing certificates. When it is set, or
	// New sets it from Fetcher or FetchOptions (see there), creating a
	// partner, changing its metadata URL or refreshing it downloads the
	// metadata as New-CsPartnerApplication does, caching its signing
	// certificates, and a failure fails that partner's item only. Nil, in
	// the zero Config, stores partners without downloading anything.
	// An empty realm accepts the document's own (the receiver learns a
	// partner's realm from its metadata).
	FetchMetadata func(ctx context.Context, url, serviceName, realm string) (*metadata.Document, []*x509.Certificate, error)

	// Listener is where Serve serves this host's HTTPS endpoints (its
	// metadata document and the S2S probe endpoint); nil serves nothing.
	// Serve owns it and closes it.
	Listener net.Listener
	// ServerTLS is the HTTPS server configuration of this host: a
	// certificate covering its own FQDN and its deployment's endpoint name.
	// Serve needs it when Listener is set.
	ServerTLS *tls.Config
	// FetchOptions is this host's vantage point for outbound HTTPS: the
	// trust store and resolver its metadata downloads and trust probes use.
	// The zero value means the system roots and real DNS.
	FetchOptions metadata.FetcherOptions
	// Fetcher downloads metadata documents; nil means one built from
	// FetchOptions. When FetchMetadata is nil and either Fetcher is set or
	// FetchOptions is not the zero value, Apply downloads partners'
	// metadata with it; otherwise (the zero Config) partners are stored
	// without downloading anything, as before. CheckMetadata always
	// downloads, through FetchMetadata when set, this Fetcher otherwise.
	Fetcher *metadata.Fetcher
	// ProbeClient sends trust probes; nil means a client with the roots and
	// resolver of FetchOptions. It must not follow redirects.
	ProbeClient *http.Client
}

// configured reports whether o differs from the zero FetcherOptions.
func configured(o metadata.FetcherOptions) bool {
	return o.RootCAs != nil || len(o.Resolve) > 0 || o.Timeout != 0 || o.MaxSize != 0
}

// Sim is the simulated driver of one host. It is safe for concurrent use.
type Sim struct {
	cfg Config

	// fetcher and probeClient are this host's vantage point (see Config).
	fetcher     *metadata.Fetcher
	probeClient *http.Client

	mu       sync.Mutex
	host     *hostState // as last written; replaced, never mutated
	hostData []byte     // its encoding on disk
	// snap is host again, readable without mu: the HTTPS handlers and the
	// probes must not wait for an Apply that is itself downloading from
	// this host.
	snap atomic.Pointer[hostState]
}

var _ driver.Driver = (*Sim)(nil)

// New opens the host's store in cfg.StateDir, creating it with a freshly
// generated default certificate on a new host.
func New(cfg Config) (*Sim, error) {
	switch {
	case cfg.Host == "":
		return nil, errors.New("create sim driver: no host name")
	case cfg.StateDir == "":
		return nil, fmt.Errorf("create sim driver for host %s: no state directory", cfg.Host)
	case cfg.SharedDir == "":
		return nil, fmt.Errorf("create sim driver for host %s: no shared directory", cfg.Host)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Products = slices.Clone(cfg.Products)
	s := &Sim{cfg: cfg, fetcher: cfg.Fetcher, probeClient: cfg.ProbeClient}
	if s.fetcher == nil {
		s.fetcher = metadata.NewFetcher(cfg.FetchOptions)
	}
	if s.probeClient == nil {
		s.probeClient = newProbeClient(cfg.FetchOptions)
	}
	if s.cfg.FetchMetadata == nil && (cfg.Fetcher != nil || configured(cfg.FetchOptions)) {
		s.cfg.FetchMetadata = s.fetchSigning
	}
	h, data, err := loadHost(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("create sim driver for host %s: %w", cfg.Host, err)
	}
	if h == nil {
		h = &hostState{Host: cfg.Host}
	} else if !strings.EqualFold(h.Host, cfg.Host) {
		return nil, fmt.Errorf("create sim driver for host %s: state directory %s belongs to host %s", cfg.Host, cfg.StateDir, h.Host)
	}
	s.host, s.hostData = h, data
	s.snap.Store(h)
	if h.DefaultThumbprint == "" || h.find(h.DefaultThumbprint) == nil {
		h = h.clone()
		if err := s.newDefaultCertificate(h); err != nil {
			return nil, fmt.Errorf("create sim driver: %w", err)
		}
	}
	if err := s.saveHost(h); err != nil {
		return nil, fmt.Errorf("create sim driver: %w", err)
	}
	return s, nil
}

// Name is "sim".
func (s *Sim) Name() string { return "sim" }

// Detect returns Config.Products.
func (s *Sim) Detect(context.Context) ([]*pb.DetectedProduct, error) {
	return slices.Clone(s.cfg.Products), nil
}

func (s *Sim) defaultProduct() pb.Product {
	if len(s.cfg.Products) == 0 {
		return pb.Product_PRODUCT_UNSPECIFIED
	}
	return s.cfg.Products[0].GetProduct()
}

// checkProduct refuses a configuration that is not for this host or for a
// product the host runs.
func (s *Sim) checkProduct(cfg *pb.HostConfig) error {
	switch {
	case cfg == nil:
		return fmt.Errorf("host %s: no host configuration", s.cfg.Host)
	case cfg.GetHost() != "" && !strings.EqualFold(cfg.GetHost(), s.cfg.Host):
		return fmt.Errorf("the configuration is for host %s, but this is host %s", cfg.GetHost(), s.cfg.Host)
	case cfg.GetProduct() == pb.Product_PRODUCT_UNSPECIFIED:
		return fmt.Errorf("host %s: the configuration names no product", s.cfg.Host)
	}
	if _, err := storePath(s.cfg.SharedDir, cfg.GetDeployment()); err != nil {
		return fmt.Errorf("host %s: %w", s.cfg.Host, err)
	}
	if len(s.cfg.Products) == 0 {
		return nil
	}
	var found []string
	for _, d := range s.cfg.Products {
		if d.GetProduct() == cfg.GetProduct() {
			if err := products.CheckVersion(d.GetProduct(), d.GetVersion()); err != nil {
				return fmt.Errorf("host %s: %w", s.cfg.Host, err)
			}
			return nil
		}
		found = append(found, strings.TrimSpace(products.DisplayName(d.GetProduct())+" "+d.GetVersion()))
	}
	return fmt.Errorf("host %s runs %s, not %s", s.cfg.Host, strings.Join(found, " and "), products.DisplayName(cfg.GetProduct()))
}

// Apply makes the host's actual state match cfg through the shared
// reconciler (package reconcile): it first lets the product do what it
// does by itself (install the deployment on first use, give a Lync Front
// End its Default certificate, replicate the deployment's issuer
// certificates to this server), then reads, plans and executes. A
// non-primary host runs host-scope operations only.
func (s *Sim) Apply(ctx context.Context, cfg *pb.HostConfig, secrets []*pb.SecretMaterial) []*pb.ItemError {
	return s.ApplyPlan(ctx, cfg, secrets, false).Errors
}

// ApplyPlan is Apply returning the plan too; with monitor set it changes
// nothing and returns what it would do.
func (s *Sim) ApplyPlan(ctx context.Context, cfg *pb.HostConfig, secrets []*pb.SecretMaterial, monitor bool) reconcile.Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkProduct(cfg); err != nil {
		return reconcile.Result{Errors: []*pb.ItemError{{Item: driver.ItemProduct, Message: err.Error()}}}
	}
	if !monitor {
		if err := s.prepare(cfg); err != nil {
			item := driver.ItemIssuerCertificate
			if pe := (*reconcile.ProductError)(nil); errors.As(err, &pe) {
				item = driver.ItemProduct
			}
			return reconcile.Result{Errors: []*pb.ItemError{{Item: item, Message: err.Error()}}}
		}
	}
	return reconcile.Apply(ctx, s, cfg, secrets, s.cfg.Now(), monitor)
}

// prepare is what the product does on its own before s2strust looks: see Apply.
func (s *Sim) prepare(cfg *pb.HostConfig) error {
	if cfg.GetPrimary() {
		// The deployment is installed before s2strust arrives; in the sim its
		// primary stands in for setup.
		if err := s.installDeployment(cfg); err != nil {
			return err
		}
	}
	ds, old, err := s.readStore(cfg.GetDeployment())
	if err != nil {
		return err
	}
	if ds == nil {
		ds = &DeploymentStore{Deployment: cfg.GetDeployment()}
	}
	ps, err := ds.productStore(cfg.GetProduct())
	if err != nil {
		return &reconcile.ProductError{Err: err}
	}
	if cfg.GetPrimary() && old != nil {
		// A roll the CMS made by itself (see readStore) is written down.
		if _, err := writeStore(s.cfg.SharedDir, ds, old); err != nil {
			return err
		}
	}
	h := s.host.clone()
	h.Deployment, h.Product = cfg.GetDeployment(), products.Name(cfg.GetProduct())
	h.Realm, h.ServiceName, h.Endpoint, h.MetadataURL = cfg.GetRealm(), serviceName(cfg), cfg.GetEndpoint(), cfg.GetMetadataUrl()
	h.DefaultSIPDomain = cfg.GetDefaultSipDomain()
	if cfg.GetProduct() == pb.Product_PRODUCT_LYNC {
		if err := s.lyncDefault(h, cfg); err != nil {
			return err
		}
	}
	if err := s.replicate(h, ps); err != nil {
		return err
	}
	if g := ps.issuer(); g != nil && h.IISIssuer == "" && (cfg.GetProduct() == pb.Product_PRODUCT_EXCHANGE || cfg.GetProduct() == pb.Product_PRODUCT_SHAREPOINT) {
		// The app pools (and SharePoint's Timer Service) started (at
		// boot) with the deployment's current issuer certificate.
		h.IISIssuer = g.Thumbprint
	}
	return s.saveHost(h)
}

// readStore reads a deployment store as the product shows it now: a Lync
// roll (Import-CsCertificate or Set-CsCertificate -Roll -EffectiveDate)
// takes effect at its EffectiveDate by itself, the next certificate
// signing and the old one kept as the previous one, still published and
// accepted until Remove-CsCertificate -Previous (or its expiry). old is
// the store as on disk, so a write records the roll.
func (s *Sim) readStore(deployment string) (*DeploymentStore, []byte, error) {
	ds, old, err := readStore(s.cfg.SharedDir, deployment)
	if err != nil || ds == nil {
		return ds, old, err
	}
	if g := ds.Lync; g != nil && g.NextOAuthTokenIssuer != nil && g.NextEffectiveDate != nil && !s.cfg.Now().Before(*g.NextEffectiveDate) {
		g.PreviousOAuthTokenIssuer, g.OAuthTokenIssuer = g.OAuthTokenIssuer, g.NextOAuthTokenIssuer
		g.NextOAuthTokenIssuer, g.NextEffectiveDate = nil, nil
	}
	return ds, old, nil
}

// installReplicated installs the deployment's default issuer certificate,
// as the product replicates it, into the working copy h.
func (s *Sim) installReplicated(h *hostState, g *IssuerCertificate) error {
	fail := func(err error) error {
		return fmt.Errorf("install the deployment's issuer certificate %s on host %s: %w", g.Thumbprint, s.cfg.Host, err)
	}
	cert, err := x509.ParseCertificate(g.Certificate)
	if err != nil {
		return fail(err)
	}
	if got := certs.Thumbprint(cert); got != g.Thumbprint {
		return fail(fmt.Errorf("the stored certificate's thumbprint is %s", got))
	}
	key, err := decodeKey([]byte(g.PrivateKey))
	if err != nil {
		return fail(err)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return fail(errors.New("the stored private key does not belong to the certificate"))
	}
	if _, err := s.install(h, cert, []byte(g.PrivateKey), s.defaultFriendlyName()); err != nil {
		return err
	}
	return nil
}

// held records that h holds a deployment default issuer certificate.
func held(h *hostState, thumbprint string) {
	if !slices.Contains(h.HeldIssuers, thumbprint) {
		h.HeldIssuers = append(h.HeldIssuers, thumbprint)
	}
}

func (s *Sim) defaultFriendlyName() string {
	switch s.defaultProduct() {
	case pb.Product_PRODUCT_EXCHANGE:
		return friendlyExchangeAuth
	case pb.Product_PRODUCT_SHAREPOINT:
		return friendlySharePoint
	}
	return friendlyIssuer
}

// fetchSigning is Config.FetchMetadata over the host's Fetcher.
func (s *Sim) fetchSigning(ctx context.Context, url, serviceName, realm string) (*metadata.Document, []*x509.Certificate, error) {
	doc, list, err := s.fetcher.Fetch(ctx, url, serviceName, realm)
	if err != nil {
		return nil, nil, fetchCause(err)
	}
	return doc, list, nil
}

// downloadFailure is a *metadata.DownloadError worded to follow the
// products' own message, which already says "could not be downloaded".
type downloadFailure struct{ *metadata.DownloadError }

// Error names the URL and the cause.
func (e downloadFailure) Error() string {
	return fmt.Sprintf("download %s: %v", e.URL, e.Cause)
}

// Unwrap returns the *metadata.DownloadError.
func (e downloadFailure) Unwrap() error { return e.DownloadError }

// fetchCause rewords a Fetcher error to follow metadataError without
// repeating it; errors.As still finds the Fetcher's error types.
func fetchCause(err error) error {
	var de *metadata.DownloadError
	if errors.As(err, &de) {
		return downloadFailure{de}
	}
	return err
}

// RefreshPartnerMetadata downloads a registered partner's metadata again and
// caches its signing certificates, as Set-PartnerApplication
// -RefreshAuthMetadata does (and Lync does on its own schedule). It writes
// the deployment store, so call it on the deployment's primary. Without a
// Config.FetchMetadata it does nothing.
func (s *Sim) RefreshPartnerMetadata(ctx context.Context, deployment, name string) error {
	if s.cfg.FetchMetadata == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ds, old, err := s.readStore(deployment)
	if err != nil {
		return err
	}
	if ds == nil {
		return fmt.Errorf("refresh metadata of partner %s: deployment %s has no store", name, deployment)
	}
	_, ps, err := ds.storedProduct()
	if err != nil {
		return err
	}
	v, ok := findPartner(ps, name)
	if !ok {
		return fmt.Errorf("refresh metadata of partner %s: deployment %s has no such partner", name, deployment)
	}
	p, _ := products.Parse(ds.Product)
	desc, _ := products.Describe(p)
	fresh, err := s.download(ctx, desc, v.URL, v.AppID, "")
	if err != nil {
		return fmt.Errorf("refresh metadata of partner %s: %w", name, err)
	}
	v.Certificates, v.Realm = fresh.Certificates, fresh.Realm
	ps.upsert(v)
	_, err = writeStore(s.cfg.SharedDir, ds, old)
	return err
}

// Verify reads the deployment store as this host sees it and the host's
// own store and compares them with cfg through the shared reconciler:
// deployment-scope differences are FAILED on the primary and PENDING
// elsewhere; the issuer certificate must be in this host's own store with
// its private key. Verify changes nothing.
func (s *Sim) Verify(ctx context.Context, cfg *pb.HostConfig) (*pb.StatusReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return reconcile.Verify(ctx, s, cfg, s.cfg.Now())
}

// LocalCertificate returns a certificate of this host's store by thumbprint
// (any form certs.NormalizeThumbprint accepts) and its private key; the key
// is nil when the store holds the certificate without it. ok is false when
// the certificate is not in the store.
func (s *Sim) LocalCertificate(thumbprint string) (cert *x509.Certificate, key crypto.Signer, ok bool) {
	t, err := certs.NormalizeThumbprint(thumbprint)
	if err != nil {
		return nil, nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lc := s.host.find(t)
	if lc == nil {
		return nil, nil, false
	}
	cert, err = x509.ParseCertificate(lc.Certificate)
	if err != nil {
		return nil, nil, false
	}
	if !lc.HasPrivateKey {
		return cert, nil, true
	}
	key, err = s.loadSigner(t)
	if err != nil {
		return cert, nil, true
	}
	return cert, key, true
}

// SigningCertificates returns the deployment's current token-issuer
// certificate as this host sees it (the deployment store's current issuer,
// resolved in this host's own store) with its private key, for serving
// metadata and minting tokens, and every certificate the deployment
// publishes in its metadata, the current one first. It fails before the
// host has applied a configuration, before the deployment has an issuer,
// and when this host's store lacks the issuer or its key.
func (s *Sim) SigningCertificates(ctx context.Context) (current *x509.Certificate, key crypto.Signer, all []*x509.Certificate, err error) {
	sc, err := s.signing()
	if err != nil {
		return nil, nil, nil, err
	}
	return sc.current, sc.key, sc.all, nil
}

// signingState is what SigningCertificates finds. thumbprint is the
// deployment's current issuer, set whenever the deployment has one, even
// when the rest fails.
type signingState struct {
	// host is the snapshot resolved, realm the deployment's realm ("" for
	// an Exchange organization, which accepts any), published the realm
	// its metadata document carries.
	host       *hostState
	realm      string
	published  string
	thumbprint string
	current    *x509.Certificate
	key        crypto.Signer
	all        []*x509.Certificate
}

// signing resolves the deployment's signing certificates from the latest
// host snapshot, without s.mu: it serves requests that may arrive while an
// Apply holds the lock and waits on this very host. The returned state is
// never nil.
func (s *Sim) signing() (*signingState, error) {
	h := s.snap.Load()
	sc := &signingState{}
	ps, err := s.deploymentView(h)
	if err != nil {
		return sc, fmt.Errorf("signing certificates of host %s: %w", s.cfg.Host, err)
	}
	sc.host, sc.realm, sc.published = h, realmOf(ps, h), publishedRealm(ps, h)
	g := ps.issuer()
	if g == nil {
		return sc, fmt.Errorf("signing certificates of host %s: deployment %s has no token-issuer certificate yet", s.cfg.Host, h.Deployment)
	}
	if ex, ok := ps.(*ExchangeOrganization); ok && h.IISIssuer != "" && h.IISIssuer != g.Thumbprint {
		// The app pools sign with the auth certificate they started with
		// until an IIS reset, even after -PublishCertificate.
		if c := ex.certificate(h.IISIssuer); c != nil {
			g = c
		}
	}
	replaced := false
	if f, ok := ps.(*SharePointFarm); ok && h.IISIssuer != "" && h.IISIssuer != g.Thumbprint {
		// Likewise a SharePoint server's processes sign with the STS
		// certificate they started with until IIS and the Timer Service
		// restart, even after -ImportSigningCertificate.
		if c := f.replaced(h.IISIssuer); c != nil && (c.PrivateKey != "" || h.find(c.Thumbprint) != nil && h.find(c.Thumbprint).HasPrivateKey) {
			g, replaced = c, true
		}
	}
	sc.thumbprint = g.Thumbprint
	lc := replicaView(h, ps).find(g.Thumbprint)
	if replaced && lc == nil && g.PrivateKey != "" && len(g.Certificate) > 0 {
		// A replaced certificate the farm replicated (the farm's own
		// default): this server's processes still hold it.
		lc = &localCertificate{Thumbprint: g.Thumbprint, Certificate: g.Certificate, HasPrivateKey: true}
	}
	if lc == nil || !lc.HasPrivateKey {
		return sc, fmt.Errorf("signing certificates of host %s: the issuer certificate %s of deployment %s is not in the local store with its private key", s.cfg.Host, g.Thumbprint, h.Deployment)
	}
	current, err := x509.ParseCertificate(lc.Certificate)
	if err != nil {
		return sc, fmt.Errorf("signing certificates of host %s: certificate %s: %w", s.cfg.Host, g.Thumbprint, err)
	}
	var key crypto.Signer
	if h.find(g.Thumbprint) == nil {
		// Replicated, not yet copied into this host's files.
		key, err = decodeKey([]byte(g.PrivateKey))
	} else {
		key, err = s.loadSigner(g.Thumbprint)
	}
	if err != nil {
		return sc, fmt.Errorf("signing certificates: %w", err)
	}
	all := []*x509.Certificate{current}
	for _, ic := range ps.issuers() {
		if ic.Thumbprint == g.Thumbprint || len(ic.Certificate) == 0 {
			continue
		}
		c, err := x509.ParseCertificate(ic.Certificate)
		if err != nil {
			return sc, fmt.Errorf("signing certificates of host %s: certificate %s: %w", s.cfg.Host, ic.Thumbprint, err)
		}
		all = append(all, c)
	}
	sc.current, sc.key, sc.all = current, key, all
	return sc, nil
}

// deploymentView reads the store of the deployment host snapshot h last
// applied, as that host sees it; an empty store before the primary's first
// write.
func (s *Sim) deploymentView(h *hostState) (productStore, error) {
	if h.Deployment == "" {
		return nil, errors.New("no configuration applied yet")
	}
	p, _ := products.Parse(h.Product)
	ds, _, err := s.readStore(h.Deployment)
	if err != nil {
		return nil, err
	}
	if ds == nil {
		ds = &DeploymentStore{Deployment: h.Deployment}
	}
	return ds.productStore(p)
}

// realmOf is the realm a deployment uses as its product does: Lync's OAuth
// realm, the default SIP domain when none is set; Exchange's AuthConfig
// realm, blank by default (it accepts tokens for any accepted domain, and
// its metadata says "*"); SharePoint's authentication realm, the farm id
// by default.
func realmOf(ps productStore, h *hostState) string {
	if r := ps.oauth().GetRealm(); r != "" {
		return r
	}
	if _, ok := ps.(*LyncGlobal); ok {
		return h.DefaultSIPDomain
	}
	return ""
}

// publishedRealm is the realm a deployment's metadata document carries:
// "*" for an Exchange organization without a realm of its own.
func publishedRealm(ps productStore, h *hostState) string {
	if r := realmOf(ps, h); r != "" {
		return r
	}
	return "*"
}

// PartnerState is a partner as a receiving deployment has registered it,
// with the signing certificates it cached from the partner's metadata: what
// the product checks an incoming token against.
type PartnerState struct {
	Name                  string
	ApplicationIdentifier string
	MetadataURL           string
	Realm                 string
	// TrustLevel is Lync's ApplicationTrustLevel; unspecified elsewhere.
	TrustLevel pb.TrustLevel
	// Enabled is always true for SharePoint, whose issuers cannot be disabled.
	Enabled bool
	// TrustBroker is SharePoint's IsTrustBroker.
	TrustBroker  bool
	Certificates []*x509.Certificate
}

// Partners returns the partners registered in a deployment's store, as any
// of its hosts sees them; none when the store does not exist yet.
func (s *Sim) Partners(ctx context.Context, deployment string) ([]PartnerState, error) {
	ds, _, err := s.readStore(deployment)
	if err != nil || ds == nil {
		return nil, err
	}
	_, ps, err := ds.storedProduct()
	if err != nil {
		return nil, err
	}
	return partnerStates(ps, deployment)
}

// partnerStates lists the partners of ps with their cached certificates.
func partnerStates(ps productStore, deployment string) ([]PartnerState, error) {
	var out []PartnerState
	for _, v := range ps.partners() {
		st := PartnerState{
			Name: v.Name, ApplicationIdentifier: v.AppID, MetadataURL: v.URL, Realm: v.Realm,
			Enabled: v.Enabled, TrustBroker: v.Broker,
		}
		if ps.trustLevels() {
			st.TrustLevel = v.Trust
		}
		for _, der := range v.Certificates {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, fmt.Errorf("partner %s of deployment %s: cached certificate: %w", v.Name, deployment, err)
			}
			st.Certificates = append(st.Certificates, c)
		}
		out = append(out, st)
	}
	return out, nil
}
