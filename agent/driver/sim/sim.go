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
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// metadataError is the products' own message for a partner whose metadata
// cannot be used, quoted in the seed article; %s is the URL parameter.
const metadataError = "the metadata document could not be downloaded from the URL in the %s parameter or downloaded data is not a valid metadata document: %w"

// pendingSuffix ends the message of an item a non-primary host waits for.
const pendingSuffix = " (waiting for the primary's change to replicate)"

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
	FetchMetadata func(ctx context.Context, url, serviceName, realm string) ([]*x509.Certificate, error)

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

// deploymentItems are the names of every deployment-scope item of cfg.
func deploymentItems(cfg *pb.HostConfig) []string {
	items := []string{driver.ItemIssuerCertificate, driver.ItemOAuthConfiguration}
	for _, n := range cfg.GetRemovePartners() {
		items = append(items, driver.RemovePartnerItem(n))
	}
	for _, p := range cfg.GetPartners() {
		items = append(items, driver.PartnerItem(p.GetName()))
	}
	return items
}

// failRest adds an error for each item that has none yet.
func failRest(errs []*pb.ItemError, items []string, err error) []*pb.ItemError {
	for _, it := range items {
		if !slices.ContainsFunc(errs, func(e *pb.ItemError) bool { return e.GetItem() == it }) {
			errs = append(errs, &pb.ItemError{Item: it, Message: err.Error()})
		}
	}
	return errs
}

// Apply makes the host's store, and on the primary the deployment store,
// match cfg. It goes on past a failing item and returns one error per
// failed item. A non-primary host installs its issuer certificate only:
// the deployment-scope items reach it by replication.
func (s *Sim) Apply(ctx context.Context, cfg *pb.HostConfig, secrets []*pb.SecretMaterial) []*pb.ItemError {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkProduct(cfg); err != nil {
		return []*pb.ItemError{{Item: driver.ItemProduct, Message: err.Error()}}
	}
	if err := ctx.Err(); err != nil {
		return failRest(nil, deploymentItems(cfg), fmt.Errorf("apply on host %s: %w", s.cfg.Host, err))
	}
	ds, old, err := readStore(s.cfg.SharedDir, cfg.GetDeployment())
	if err != nil {
		return failRest(nil, deploymentItems(cfg), err)
	}
	if ds == nil {
		ds = &DeploymentStore{Deployment: cfg.GetDeployment()}
	}
	ps, err := ds.productStore(cfg.GetProduct())
	if err != nil {
		return []*pb.ItemError{{Item: driver.ItemProduct, Message: err.Error()}}
	}

	// Host scope: the issuer certificate in the local store.
	var errs []*pb.ItemError
	h := s.host.clone()
	h.Deployment, h.Product = cfg.GetDeployment(), products.Name(cfg.GetProduct())
	h.Realm, h.ServiceName, h.Endpoint, h.MetadataURL = cfg.GetRealm(), serviceName(cfg), cfg.GetEndpoint(), cfg.GetMetadataUrl()
	issuer, err := s.applyIssuer(h, cfg, secrets, ps)
	if err != nil {
		errs = append(errs, &pb.ItemError{Item: driver.ItemIssuerCertificate, Message: err.Error()})
	}
	if err := s.saveHost(h); err != nil {
		errs = failRest(errs, []string{driver.ItemIssuerCertificate}, err)
		issuer = nil
	}
	if !cfg.GetPrimary() {
		return errs
	}

	// Deployment scope, on the primary only.
	errs = append(errs, s.reconcilePartners(ctx, cfg, ps)...)
	for _, st := range ps.settings(cfg) {
		if st.want != "" && *st.actual != st.want {
			*st.actual = st.want
		}
	}
	if issuer != nil && !issuer.equal(ps.issuer()) {
		c := *issuer
		ps.setIssuer(&c)
	}
	if _, err := writeStore(s.cfg.SharedDir, ds, old); err != nil {
		errs = failRest(errs, deploymentItems(cfg), err)
	}
	return errs
}

// applyIssuer puts the deployment's token-issuer certificate, with its
// private key, into the working copy h of the host's store and returns it as
// the deployment store should record it. It returns nil, nil on a
// non-primary host that waits for the primary to publish the deployment's
// default certificate.
func (s *Sim) applyIssuer(h *hostState, cfg *pb.HostConfig, secrets []*pb.SecretMaterial, ps productStore) (*IssuerCertificate, error) {
	switch src := cfg.GetTokenIssuer().GetSource().(type) {
	case *pb.TokenIssuer_Secret:
		name := src.Secret
		i := slices.IndexFunc(secrets, func(m *pb.SecretMaterial) bool { return m.GetName() == name })
		if i < 0 {
			return nil, fmt.Errorf("import the token-issuer certificate on host %s: secret %s was not delivered", s.cfg.Host, name)
		}
		sm := secrets[i]
		// certs.LoadPFX never puts the password into its errors.
		b, err := certs.LoadPFX(sm.GetPfx(), sm.GetPassword())
		if err != nil {
			return nil, fmt.Errorf("import the token-issuer certificate from secret %s on host %s: %w", name, s.cfg.Host, err)
		}
		t := certs.Thumbprint(b.Cert)
		if sm.GetThumbprint() != "" {
			if want, err := certs.NormalizeThumbprint(sm.GetThumbprint()); err == nil && want != t {
				return nil, fmt.Errorf("import the token-issuer certificate from secret %s on host %s: it holds certificate %s, but the controller recorded %s", name, s.cfg.Host, t, want)
			}
		}
		keyPEM, err := encodeKey(b.Key)
		if err != nil {
			return nil, fmt.Errorf("import the token-issuer certificate from secret %s on host %s: %w", name, s.cfg.Host, err)
		}
		if _, err := s.install(h, b.Cert, keyPEM, friendlyIssuer); err != nil {
			return nil, err
		}
		h.IssuerSecret, h.IssuerSecretThumbprint = name, t
		return &IssuerCertificate{Thumbprint: t, Certificate: b.Cert.Raw}, nil

	case *pb.TokenIssuer_Thumbprint:
		t, err := certs.NormalizeThumbprint(src.Thumbprint)
		if err != nil {
			return nil, fmt.Errorf("token issuer of host %s: %w", s.cfg.Host, err)
		}
		lc := h.find(t)
		if lc == nil {
			return nil, fmt.Errorf("certificate %s is not in the local certificate store of host %s", t, s.cfg.Host)
		}
		if !lc.HasPrivateKey {
			return nil, fmt.Errorf("certificate %s in the local certificate store of host %s has no private key", t, s.cfg.Host)
		}
		return &IssuerCertificate{Thumbprint: t, Certificate: lc.Certificate}, nil
	}

	// No token issuer named: the deployment's default certificate.
	if g := ps.issuer(); g != nil && g.PrivateKey != "" {
		if lc := h.find(g.Thumbprint); lc == nil || !lc.HasPrivateKey {
			if err := s.installReplicated(h, g); err != nil {
				return nil, err
			}
		}
		held(h, g.Thumbprint)
		return g, nil
	}
	if !cfg.GetPrimary() {
		return nil, nil
	}
	lc := h.find(h.DefaultThumbprint)
	if lc == nil || !lc.HasPrivateKey {
		return nil, fmt.Errorf("the default certificate %s of host %s is not in its local certificate store with its private key", h.DefaultThumbprint, s.cfg.Host)
	}
	keyPEM, err := s.keyPEM(lc.Thumbprint)
	if err != nil {
		return nil, err
	}
	held(h, lc.Thumbprint)
	return &IssuerCertificate{Thumbprint: lc.Thumbprint, Certificate: lc.Certificate, PrivateKey: string(keyPEM)}, nil
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

// desiredView is the partner as cfg wants it registered.
func desiredView(cfg *pb.HostConfig, p *pb.Partner) partnerView {
	realm := p.GetRealm()
	if realm == "" {
		realm = cfg.GetRealm()
	}
	trust := p.GetTrustLevel()
	if trust == pb.TrustLevel_TRUST_LEVEL_UNSPECIFIED {
		trust = pb.TrustLevel_TRUST_LEVEL_FULL
	}
	return partnerView{
		Name: p.GetName(), AppID: p.GetApplicationIdentifier(), URL: p.GetMetadataUrl(),
		Realm: realm, Trust: trust, Enabled: p.GetEnabled(), Broker: p.GetTrustBroker(),
	}
}

// difference is one partner property that differs from the desired value.
type difference struct {
	field
	actual, want string
}

func (d difference) String() string {
	return fmt.Sprintf("%s is %s, want %s", d.name, show(d.actual), show(d.want))
}

func show(v string) string {
	if v == "" {
		return "(not set)"
	}
	return v
}

func diffPartner(fs []field, actual, want partnerView) []difference {
	var ds []difference
	for _, f := range fs {
		if a, w := f.get(actual), f.get(want); a != w {
			ds = append(ds, difference{f, a, w})
		}
	}
	return ds
}

func joinDiffs(ds []difference) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = d.String()
	}
	return strings.Join(s, "; ")
}

// reconcilePartners applies cfg's partners and removals to ps.
func (s *Sim) reconcilePartners(ctx context.Context, cfg *pb.HostConfig, ps productStore) []*pb.ItemError {
	var errs []*pb.ItemError
	desired := map[string]bool{}
	for _, p := range cfg.GetPartners() {
		desired[strings.ToLower(p.GetName())] = true
	}
	for _, name := range cfg.GetRemovePartners() {
		if desired[strings.ToLower(name)] {
			errs = append(errs, &pb.ItemError{Item: driver.RemovePartnerItem(name),
				Message: fmt.Sprintf("partner %s is listed for removal and is also a desired partner; it is left in place", name)})
			continue
		}
		ps.remove(name)
	}
	for _, p := range cfg.GetPartners() {
		item := driver.PartnerItem(p.GetName())
		want := desiredView(cfg, p)
		cur, ok := findPartner(ps, p.GetName())
		diffs := diffPartner(ps.fields(), cur, want)
		if !ok || slices.ContainsFunc(diffs, func(d difference) bool { return d.recreate }) {
			// New-CsPartnerApplication: download first, so that a partner
			// whose metadata fails is not removed for nothing.
			certs, err := s.download(ctx, ps, want)
			if err != nil {
				errs = append(errs, &pb.ItemError{Item: item, Message: err.Error()})
				continue
			}
			if ok {
				ps.remove(cur.Name)
			}
			want.Certificates = certs
			ps.upsert(want)
			continue
		}
		// Set-CsPartnerApplication for what differs.
		next := want
		next.Certificates = cur.Certificates
		urlChanged := slices.ContainsFunc(diffs, func(d difference) bool { return d.refetch })
		if urlChanged || (s.cfg.FetchMetadata != nil && len(cur.Certificates) == 0) {
			certs, err := s.download(ctx, ps, want)
			if err != nil {
				errs = append(errs, &pb.ItemError{Item: item, Message: err.Error()})
				if urlChanged {
					continue // the Set fails as a whole
				}
			} else {
				next.Certificates = certs
			}
		}
		if len(diffs) > 0 || !sameCertificates(next.Certificates, cur.Certificates) {
			ps.upsert(next)
		}
	}
	return errs
}

func sameCertificates(a, b [][]byte) bool {
	return slices.EqualFunc(a, b, func(x, y []byte) bool { return string(x) == string(y) })
}

// fetchSigning is Config.FetchMetadata over the host's Fetcher.
func (s *Sim) fetchSigning(ctx context.Context, url, serviceName, realm string) ([]*x509.Certificate, error) {
	_, list, err := s.fetcher.Fetch(ctx, url, serviceName, realm)
	if err != nil {
		return nil, fetchCause(err)
	}
	return list, nil
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

// download fetches a partner's metadata and returns its signing
// certificates (DER); nil without a FetchMetadata.
func (s *Sim) download(ctx context.Context, ps productStore, v partnerView) ([][]byte, error) {
	if s.cfg.FetchMetadata == nil {
		return nil, nil
	}
	list, err := s.cfg.FetchMetadata(ctx, v.URL, v.AppID, v.Realm)
	if err == nil && len(list) == 0 {
		err = errors.New("the document has no signing keys")
	}
	if err != nil {
		return nil, fmt.Errorf(metadataError, ps.urlParameter(), err)
	}
	ders := make([][]byte, len(list))
	for i, c := range list {
		ders[i] = c.Raw
	}
	return ders, nil
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
	ds, old, err := readStore(s.cfg.SharedDir, deployment)
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
	ders, err := s.download(ctx, ps, v)
	if err != nil {
		return fmt.Errorf("refresh metadata of partner %s: %w", name, err)
	}
	v.Certificates = ders
	ps.upsert(v)
	_, err = writeStore(s.cfg.SharedDir, ds, old)
	return err
}

// itemState returns an item status: OK for an empty message, otherwise
// FAILED, or PENDING for a deployment-scope item on a non-primary host,
// which waits for the primary's change to replicate.
func itemState(item, msg string, deploymentScope, primary bool) *pb.ItemStatus {
	switch {
	case msg == "":
		return &pb.ItemStatus{Item: item, State: pb.ItemState_ITEM_STATE_OK}
	case deploymentScope && !primary:
		return &pb.ItemStatus{Item: item, State: pb.ItemState_ITEM_STATE_PENDING, Message: msg + pendingSuffix}
	}
	return &pb.ItemStatus{Item: item, State: pb.ItemState_ITEM_STATE_FAILED, Message: msg}
}

// Verify reads the deployment store as this host sees it and the host's
// own store and compares them with cfg, item by item. Deployment-scope
// differences are FAILED on the primary and PENDING elsewhere; the issuer
// certificate must be in this host's own store with its private key. A
// host-scope item is PENDING only while a non-primary host has yet to
// install the deployment's replicated default certificate, which its next
// Apply does. Verify changes nothing.
func (s *Sim) Verify(ctx context.Context, cfg *pb.HostConfig) (*pb.StatusReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &pb.StatusReport{Primary: cfg.GetPrimary()}
	fail := func(err error) (*pb.StatusReport, error) {
		r.Items = append(r.Items, &pb.ItemStatus{Item: driver.ItemProduct, State: pb.ItemState_ITEM_STATE_FAILED, Message: err.Error()})
		return r, nil
	}
	if err := s.checkProduct(cfg); err != nil {
		return fail(err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("verify on host %s: %w", s.cfg.Host, err)
	}
	ds, _, err := readStore(s.cfg.SharedDir, cfg.GetDeployment())
	if err != nil {
		return nil, fmt.Errorf("verify on host %s: %w", s.cfg.Host, err)
	}
	if ds == nil {
		ds = &DeploymentStore{Deployment: cfg.GetDeployment()}
	}
	ps, err := ds.productStore(cfg.GetProduct())
	if err != nil {
		return fail(err)
	}
	primary := cfg.GetPrimary()
	r.Items = append(r.Items, itemState(driver.ItemProduct, "", false, primary))
	r.Items = append(r.Items, s.verifyIssuer(cfg, ps, r))

	var diffs []string
	for _, st := range ps.settings(cfg) {
		if st.want != "" && *st.actual != st.want {
			diffs = append(diffs, fmt.Sprintf("%s is %s, want %s", st.name, show(*st.actual), st.want))
		}
	}
	msg := ""
	if len(diffs) > 0 {
		msg = ps.settingsName() + ": " + strings.Join(diffs, "; ")
	}
	r.Items = append(r.Items, itemState(driver.ItemOAuthConfiguration, msg, true, primary))

	desired := map[string]bool{}
	for _, p := range cfg.GetPartners() {
		desired[strings.ToLower(p.GetName())] = true
	}
	for _, name := range cfg.GetRemovePartners() {
		item := driver.RemovePartnerItem(name)
		switch _, found := findPartner(ps, name); {
		case desired[strings.ToLower(name)]:
			r.Items = append(r.Items, itemState(item, fmt.Sprintf("partner %s is listed for removal and is also a desired partner", name), false, primary))
		case found:
			r.Items = append(r.Items, itemState(item, fmt.Sprintf("partner %s is still registered", name), true, primary))
		default:
			r.Items = append(r.Items, itemState(item, "", true, primary))
		}
	}
	for _, p := range cfg.GetPartners() {
		item := driver.PartnerItem(p.GetName())
		cur, ok := findPartner(ps, p.GetName())
		msg := ""
		switch diffs := diffPartner(ps.fields(), cur, desiredView(cfg, p)); {
		case !ok:
			msg = fmt.Sprintf("partner %s: not registered", p.GetName())
		case len(diffs) > 0:
			msg = fmt.Sprintf("partner %s: %s", p.GetName(), joinDiffs(diffs))
		case s.cfg.FetchMetadata != nil && len(cur.Certificates) == 0:
			msg = fmt.Sprintf("partner %s: no cached signing certificates; its metadata has not been downloaded", p.GetName())
		}
		r.Items = append(r.Items, itemState(item, msg, true, primary))
	}

	for _, v := range ps.partners() {
		pa := &pb.PartnerApplication{
			Identity: v.Name, Name: v.Name, ApplicationIdentifier: v.AppID, MetadataUrl: v.URL,
			Realm: v.Realm, Enabled: v.Enabled, AcceptSecurityIdentifierInformation: v.Accept, TrustBroker: v.Broker,
		}
		if ps.trustLevels() {
			pa.TrustLevel = v.Trust
		}
		for _, der := range v.Certificates {
			if c, err := x509.ParseCertificate(der); err == nil {
				pa.CachedThumbprints = append(pa.CachedThumbprints, certs.Thumbprint(c))
			}
		}
		r.Partners = append(r.Partners, pa)
	}
	r.Oauth = ps.oauth()
	return r, nil
}

// verifyIssuer checks the issuer-certificate item and fills
// r.IssuerCertificate.
func (s *Sim) verifyIssuer(cfg *pb.HostConfig, ps productStore, r *pb.StatusReport) *pb.ItemStatus {
	item, primary, h := driver.ItemIssuerCertificate, cfg.GetPrimary(), s.host
	g := ps.issuer()
	if g != nil {
		if lc := h.find(g.Thumbprint); lc != nil {
			if c, err := x509.ParseCertificate(lc.Certificate); err == nil {
				r.IssuerCertificate = certs.Info(c, lc.HasPrivateKey)
			}
		} else if c, err := x509.ParseCertificate(g.Certificate); err == nil {
			r.IssuerCertificate = certs.Info(c, false)
		}
	}

	var want string
	replicated := false
	switch src := cfg.GetTokenIssuer().GetSource().(type) {
	case *pb.TokenIssuer_Secret:
		if h.IssuerSecret != src.Secret || h.IssuerSecretThumbprint == "" {
			return itemState(item, fmt.Sprintf("host %s has not imported the token-issuer certificate of secret %s", s.cfg.Host, src.Secret), false, primary)
		}
		want = h.IssuerSecretThumbprint
	case *pb.TokenIssuer_Thumbprint:
		t, err := certs.NormalizeThumbprint(src.Thumbprint)
		if err != nil {
			return itemState(item, fmt.Sprintf("token issuer of host %s: %v", s.cfg.Host, err), false, primary)
		}
		want = t
	default:
		switch {
		case g != nil && g.PrivateKey != "":
			want, replicated = g.Thumbprint, true
		case primary:
			want = h.DefaultThumbprint
		default:
			return itemState(item, "the deployment's default issuer certificate is not published yet", true, primary)
		}
	}

	if g == nil || g.Thumbprint != want {
		actual := "(not set)"
		if g != nil {
			actual = g.Thumbprint
		}
		return itemState(item, fmt.Sprintf("%s is %s, want %s", ps.issuerName(), actual, want), true, primary)
	}

	lc := h.find(want)
	if lc == nil || !lc.HasPrivateKey {
		if replicated && !slices.Contains(h.HeldIssuers, want) {
			return &pb.ItemStatus{Item: item, State: pb.ItemState_ITEM_STATE_PENDING,
				Message: fmt.Sprintf("host %s has not installed the deployment's issuer certificate %s yet; its next apply installs it", s.cfg.Host, want)}
		}
		msg := fmt.Sprintf("host %s: the local certificate store does not hold the issuer certificate %s with its private key", s.cfg.Host, want)
		if lc != nil {
			msg = fmt.Sprintf("host %s: the local certificate store holds the issuer certificate %s without its private key", s.cfg.Host, want)
		} else if other := s.sameSubject(g); other != "" {
			msg += "; it holds " + other + " instead"
		}
		return itemState(item, msg, false, primary)
	}
	cert, err := x509.ParseCertificate(lc.Certificate)
	if err != nil {
		return itemState(item, fmt.Sprintf("host %s: issuer certificate %s in the local store: %v", s.cfg.Host, want, err), false, primary)
	}
	req := certs.Requirements{Now: s.cfg.Now()}
	if cfg.GetProduct() == pb.Product_PRODUCT_LYNC && cfg.GetTokenIssuer().GetThumbprint() != "" {
		// A certificate named by thumbprint never passed the controller's
		// checks against the SIP domains: the Front End checks it here.
		req.DefaultSIPDomain, req.AdditionalSIPDomains = cfg.GetDefaultSipDomain(), cfg.GetAdditionalSipDomains()
	}
	findings := certs.Check(cert, true, req)
	var errs, warns []string
	for _, f := range findings {
		if f.Severity == certs.SeverityError {
			errs = append(errs, f.Message)
		} else {
			warns = append(warns, f.Message)
		}
	}
	if len(errs) > 0 {
		return itemState(item, fmt.Sprintf("host %s: %s", s.cfg.Host, strings.Join(errs, "; ")), false, primary)
	}
	st := itemState(item, "", false, primary)
	st.Message = strings.Join(warns, "; ")
	return st
}

// sameSubject describes the local certificates with the subject common name
// of the deployment's issuer certificate: what a Front End whose copy was
// swapped holds instead.
func (s *Sim) sameSubject(g *IssuerCertificate) string {
	gc, err := x509.ParseCertificate(g.Certificate)
	if err != nil {
		return ""
	}
	var out []string
	for _, lc := range s.host.Certificates {
		c, err := x509.ParseCertificate(lc.Certificate)
		if err == nil && lc.Thumbprint != g.Thumbprint && c.Subject.CommonName == gc.Subject.CommonName {
			out = append(out, lc.Thumbprint)
		}
	}
	if len(out) == 0 {
		return ""
	}
	return strings.Join(out, ", ") + " with the same subject CN=" + gc.Subject.CommonName
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
	// host is the snapshot resolved, realm the deployment's realm.
	host       *hostState
	realm      string
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
	sc.host, sc.realm = h, realmOf(ps, h)
	g := ps.issuer()
	if g == nil {
		return sc, fmt.Errorf("signing certificates of host %s: deployment %s has no token-issuer certificate yet", s.cfg.Host, h.Deployment)
	}
	sc.thumbprint = g.Thumbprint
	lc := h.find(g.Thumbprint)
	if lc == nil || !lc.HasPrivateKey {
		return sc, fmt.Errorf("signing certificates of host %s: the issuer certificate %s of deployment %s is not in the local store with its private key", s.cfg.Host, g.Thumbprint, h.Deployment)
	}
	current, err := x509.ParseCertificate(lc.Certificate)
	if err != nil {
		return sc, fmt.Errorf("signing certificates of host %s: certificate %s: %w", s.cfg.Host, g.Thumbprint, err)
	}
	key, err := s.loadSigner(g.Thumbprint)
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
	ds, _, err := readStore(s.cfg.SharedDir, h.Deployment)
	if err != nil {
		return nil, err
	}
	if ds == nil {
		ds = &DeploymentStore{Deployment: h.Deployment}
	}
	return ds.productStore(p)
}

// realmOf is the realm a deployment uses: its store's setting once the
// primary has written it, the realm this host last applied before that.
func realmOf(ps productStore, h *hostState) string {
	if r := ps.oauth().GetRealm(); r != "" {
		return r
	}
	return h.Realm
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
	ds, _, err := readStore(s.cfg.SharedDir, deployment)
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
