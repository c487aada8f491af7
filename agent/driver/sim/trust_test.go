package sim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/s2stoken"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestMain fails the package when a test leaves a goroutine behind: the
// HTTPS servers Serve starts and the clients that probe them included.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// world is a network of simulated hosts serving real HTTPS on loopback,
// with certificates from a test CA and a resolver that maps host names to
// their listeners, as the demo runs them.
type world struct {
	t       *testing.T
	shared  string
	ca      *certs.Bundle
	roots   *x509.CertPool
	resolve map[string]string
	// now is every host's clock; nil means time.Now.
	now func() time.Time
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ca, err := certs.Generate(certs.Template{CommonName: "s2strust test CA", IsCA: true, ECDSA: true})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	return &world{t: t, shared: t.TempDir(), ca: ca, roots: roots, resolve: map[string]string{}}
}

func (w *world) options() metadata.FetcherOptions {
	return metadata.FetcherOptions{RootCAs: w.roots, Resolve: w.resolve, Timeout: 5 * time.Second}
}

// listen opens a loopback listener and resolves names to it.
func (w *world) listen(names ...string) net.Listener {
	w.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.t.Fatal(err)
	}
	for _, n := range names {
		w.resolve[n] = ln.Addr().String()
	}
	return ln
}

// closed resolves name to a loopback port nobody listens on.
func (w *world) closed(name string) {
	w.t.Helper()
	ln := w.listen(name)
	if err := ln.Close(); err != nil {
		w.t.Fatal(err)
	}
}

// serverTLS is a server configuration with a certificate from the test CA
// for names.
func (w *world) serverTLS(names ...string) *tls.Config {
	w.t.Helper()
	b, err := certs.Generate(certs.Template{CommonName: names[0], DNSNames: names, Issuer: w.ca, ECDSA: true})
	if err != nil {
		w.t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{b.Cert.Raw, w.ca.Cert.Raw}, PrivateKey: b.Key, Leaf: b.Cert}},
		MinVersion:   tls.VersionTLS12,
	}
}

// host starts a simulated host serving on ln under names (its FQDN first)
// until the test ends. Every listener must exist before the first host:
// the resolver is copied when a host is created.
func (w *world) host(ln net.Listener, p pb.Product, version string, names ...string) *Sim {
	w.t.Helper()
	s, err := New(Config{
		Host:         names[0],
		StateDir:     filepath.Join(w.shared, "..", "state-"+names[0]),
		SharedDir:    w.shared,
		Products:     []*pb.DetectedProduct{{Product: p, Version: version}},
		Listener:     ln,
		ServerTLS:    w.serverTLS(names...),
		FetchOptions: w.options(),
		Now:          w.now,
	})
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	w.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			w.t.Errorf("Serve(%s): %v", names[0], err)
		}
	})
	return s
}

// get downloads a document as a partner would, from the test's vantage point.
func (w *world) get(url, serviceName string) (*metadata.Document, error) {
	d, _, err := metadata.NewFetcher(w.options()).Fetch(context.Background(), url, serviceName, realm)
	return d, err
}

// trustConfigs are a Lync pool (fe01, primary) and an Exchange
// organization (ex01) that trust each other.
func trustConfigs() (fe, ex *pb.HostConfig) {
	fe = lyncConfig("fe01.contoso.com", true)
	fe.DeploymentHosts = []string{"fe01.contoso.com"}
	fe.Endpoint = "pool01.contoso.com"
	fe.Partners = fe.Partners[:1] // microsoft.exchange
	fe.TrustedBy = []*pb.TrustTarget{{Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE,
		ServiceName: products.ExchangeID, Hosts: []string{"ex01.contoso.com"}, MetadataUrl: exchangeURL}}
	ex = exchangeConfig("ex01.contoso.com", true)
	ex.DeploymentHosts = []string{"ex01.contoso.com"}
	ex.Endpoint = "autodiscover.contoso.com"
	ex.Partners = ex.Partners[:1] // LyncEnterprise-pool01
	ex.TrustedBy = []*pb.TrustTarget{{Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC,
		ServiceName: products.LyncID, Hosts: []string{"fe01.contoso.com"}, MetadataUrl: lyncURL}}
	return fe, ex
}

func itemErr(errs []*pb.ItemError, item string) string {
	for _, e := range errs {
		if e.GetItem() == item {
			return e.GetMessage()
		}
	}
	return ""
}

func checkOK(t *testing.T, checks []*pb.MetadataCheck, want map[string][]string) {
	t.Helper()
	// The last check is the host's own document as it serves it: the same
	// keys as its deployment's.
	if len(checks) != len(want)+1 {
		t.Errorf("CheckMetadata returned %d checks, want %d and the self check: %v", len(checks), len(want), checks)
	} else if self := checks[len(checks)-1]; self.GetPartner() != "" || self.GetUrl() == checks[0].GetUrl() {
		t.Errorf("last check = %v, want the self check", self)
	}
	for _, c := range checks {
		w, ok := want[c.GetPartner()]
		if !ok || !c.GetOk() || !slices.Equal(c.GetThumbprints(), w) {
			t.Errorf("check of partner %q (%s) = ok %v %v %q, want ok with %v", c.GetPartner(), c.GetUrl(), c.GetOk(), c.GetThumbprints(), c.GetError(), w)
		}
	}
}

func probeResult(t *testing.T, probes []*pb.TrustProbe, host string) *pb.TrustProbe {
	t.Helper()
	for _, p := range probes {
		if p.GetTargetHost() == host {
			return p
		}
	}
	t.Fatalf("no probe of %s in %v", host, probes)
	return nil
}

func wantProbe(t *testing.T, probes []*pb.TrustProbe, host string, ok bool, reasons ...string) *pb.TrustProbe {
	t.Helper()
	p := probeResult(t, probes, host)
	if p.GetOk() != ok || (!ok && !slices.Contains(reasons, p.GetReason())) {
		t.Errorf("probe of %s = ok %v reason %q (%s), want ok %v reason in %v", host, p.GetOk(), p.GetReason(), p.GetDetail(), ok, reasons)
	}
	return p
}

func TestTrustOverHTTPS(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	lnFE := w.listen("fe01.contoso.com", "pool01.contoso.com")
	lnEX := w.listen("ex01.contoso.com", "autodiscover.contoso.com")
	w.closed("closed.contoso.com")
	fe01 := w.host(lnFE, pb.Product_PRODUCT_LYNC, "2015", "fe01.contoso.com", "pool01.contoso.com")
	ex01 := w.host(lnEX, pb.Product_PRODUCT_EXCHANGE, "2019", "ex01.contoso.com", "autodiscover.contoso.com")
	cfgFE, cfgEX := trustConfigs()
	ctx := context.Background()

	// Before any apply the metadata endpoint exists but publishes nothing.
	_, err := w.get(lyncURL, products.LyncID)
	var de *metadata.DownloadError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("metadata before any apply: %v, want a download error with 503", err)
	}

	// The pool applies first: Exchange publishes nothing yet, so only its
	// partner fails, with the products' message and the cause.
	errs := fe01.Apply(ctx, cfgFE, secrets(t))
	msg := itemErr(errs, driver.PartnerItem("microsoft.exchange"))
	if len(errs) != 1 || !strings.Contains(msg, "could not be downloaded from the URL in the MetadataUrl parameter") || !strings.Contains(msg, "503") {
		t.Fatalf("first Apply on fe01 = %v, want only microsoft.exchange failing with 503", errs)
	}
	noErrors(t, ex01.Apply(ctx, cfgEX, nil))
	noErrors(t, fe01.Apply(ctx, cfgFE, secrets(t)))
	rFE, rEX := verify(t, fe01, cfgFE), verify(t, ex01, cfgEX)
	allOK(t, rFE)
	allOK(t, rEX)

	issuer := certs.Thumbprint(fix(t).issuer.Cert)
	org, err := ReadDeploymentStore(w.shared, "exchange")
	if err != nil {
		t.Fatal(err)
	}
	auth := org.Exchange.AuthConfig.CurrentCertificateThumbprint
	// The name Configure-EnterprisePartnerApplication.ps1 chose for the pool.
	lyncOnEx := org.Exchange.PartnerApplications[0].Name
	if p := rFE.GetPartners(); len(p) != 1 || !slices.Equal(p[0].GetCachedThumbprints(), []string{auth}) {
		t.Errorf("fe01 partners = %v, want microsoft.exchange caching %s", p, auth)
	}
	if p := rEX.GetPartners(); len(p) != 1 || !slices.Equal(p[0].GetCachedThumbprints(), []string{issuer}) {
		t.Errorf("ex01 partners = %v, want LyncEnterprise-pool01 caching %s", p, issuer)
	}

	// The pool's document, asked for by the pool's name, is the pool's.
	doc, err := w.get(lyncURL, products.LyncID)
	if err != nil {
		t.Fatal(err)
	}
	if doc.Issuer != products.LyncID+"@"+realm || !slices.Contains(doc.AllowedAudiences, products.LyncID+"/pool01.contoso.com@"+realm) ||
		len(doc.Endpoints) != 1 || doc.Endpoints[0].Location != lyncURL || len(doc.Keys) != 1 {
		t.Errorf("pool metadata = %+v", doc)
	}

	checkOK(t, fe01.CheckMetadata(ctx, cfgFE), map[string][]string{"": {issuer}, "microsoft.exchange": {auth}})
	checkOK(t, ex01.CheckMetadata(ctx, cfgEX), map[string][]string{"": {auth}, "LyncEnterprise-pool01": {issuer}})
	p := wantProbe(t, fe01.Probe(ctx, cfgFE), "ex01.contoso.com", true)
	if p.GetToDeployment() != "exchange" || p.GetIssuerThumbprint() != issuer {
		t.Errorf("probe fe01→ex01 = %v", p)
	}
	p = wantProbe(t, ex01.Probe(ctx, cfgEX), "fe01.contoso.com", true)
	if p.GetToDeployment() != "pool01" || p.GetIssuerThumbprint() != auth {
		t.Errorf("probe ex01→fe01 = %v", p)
	}

	t.Run("refusals", func(t *testing.T) {
		// A token that is no token gets 401 and the reason, in the header too.
		req, err := http.NewRequest(http.MethodPost, "https://ex01.contoso.com"+ProbePath, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer not.a.token")
		resp, err := fe01.probeClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get(DiagnosticsHeader), `malformed; reason="`) {
			t.Errorf("probe with a bad token: %s, %s %q", resp.Status, DiagnosticsHeader, resp.Header.Get(DiagnosticsHeader))
		}

		// Exchange disables the pool: its tokens are refused.
		if err := SetPartnerEnabled(w.shared, "exchange", lyncOnEx, false); err != nil {
			t.Fatal(err)
		}
		wantProbe(t, fe01.Probe(ctx, cfgFE), "ex01.contoso.com", false, string(s2stoken.ReasonPartnerDisabled))
		if err := SetPartnerEnabled(w.shared, "exchange", lyncOnEx, true); err != nil {
			t.Fatal(err)
		}
		wantProbe(t, fe01.Probe(ctx, cfgFE), "ex01.contoso.com", true)

		// A host that cannot be reached, and one that is no simulated product.
		cfg := proto.Clone(cfgFE).(*pb.HostConfig)
		cfg.TrustedBy = append(cfg.TrustedBy, &pb.TrustTarget{Deployment: "gone", Product: pb.Product_PRODUCT_EXCHANGE,
			Hosts: []string{"closed.contoso.com", "autodiscover.contoso.com"}})
		probes := fe01.Probe(ctx, cfg)
		if len(probes) != 3 {
			t.Fatalf("Probe = %v, want 3 results", probes)
		}
		p := wantProbe(t, probes, "closed.contoso.com", false, ReasonUnreachable)
		if !strings.Contains(p.GetDetail(), "connection refused") {
			t.Errorf("unreachable probe detail = %q", p.GetDetail())
		}
		// autodiscover is ex01's endpoint name, not a host name it validates as.
		wantProbe(t, probes, "autodiscover.contoso.com", false, string(s2stoken.ReasonWrongHost))
	})

	t.Run("bad metadata URLs", func(t *testing.T) {
		cfg := proto.Clone(cfgEX).(*pb.HostConfig)
		wrong := proto.Clone(cfg.Partners[0]).(*pb.Partner)
		wrong.Name, wrong.MetadataUrl = "LyncEnterprise-wrong", "https://pool01.contoso.com/autodiscover/metadata/json/1"
		closed := proto.Clone(cfg.Partners[0]).(*pb.Partner)
		closed.Name, closed.MetadataUrl = "LyncEnterprise-closed", "https://closed.contoso.com/metadata/json/1"
		cfg.Partners = append(cfg.Partners, wrong, closed)
		errs := ex01.Apply(ctx, cfg, nil)
		if len(errs) != 2 {
			t.Errorf("Apply = %v, want two partner errors", errs)
		}
		for item, cause := range map[string]string{"LyncEnterprise-wrong": "404", "LyncEnterprise-closed": "connection refused"} {
			msg := itemErr(errs, driver.PartnerItem(item))
			if !strings.Contains(msg, "could not be downloaded from the URL in the AuthMetadataUrl parameter") || !strings.Contains(msg, cause) {
				t.Errorf("item %s: %q, want the products' error with %q", item, msg, cause)
			}
		}
		for _, c := range ex01.CheckMetadata(ctx, cfg) {
			wantOK := c.GetPartner() == "" || c.GetPartner() == "LyncEnterprise-pool01"
			if c.GetOk() != wantOK || (!wantOK && !strings.Contains(c.GetError(), "could not be downloaded")) {
				t.Errorf("check of %q = ok %v %q", c.GetPartner(), c.GetOk(), c.GetError())
			}
		}
		noErrors(t, ex01.Apply(ctx, cfgEX, nil)) // nothing was created for them
		allOK(t, verify(t, ex01, cfgEX))
	})

	t.Run("staged next certificate", func(t *testing.T) {
		next, err := certs.Generate(certs.Template{CommonName: realm, DNSNames: []string{realm}})
		if err != nil {
			t.Fatal(err)
		}
		if err := StageNextIssuerCertificate(w.shared, "pool01", next.Cert, time.Now().Add(48*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := StageNextIssuerCertificate(w.shared, "exchange", next.Cert, time.Now().Add(48*time.Hour)); err != nil {
			t.Fatal(err)
		}
		nt := certs.Thumbprint(next.Cert)
		checkOK(t, ex01.CheckMetadata(ctx, cfgEX), map[string][]string{"": {auth, nt}, "LyncEnterprise-pool01": {issuer, nt}})
		// Refreshing caches both, and the current key still signs.
		if err := ex01.RefreshPartnerMetadata(ctx, "exchange", lyncOnEx); err != nil {
			t.Fatal(err)
		}
		if p := verify(t, ex01, cfgEX).GetPartners(); len(p) != 1 || !slices.Equal(p[0].GetCachedThumbprints(), []string{issuer, nt}) {
			t.Errorf("after refresh ex01 partners = %v", p)
		}
		wantProbe(t, fe01.Probe(ctx, cfgFE), "ex01.contoso.com", true)
		// Applying the pool's configuration again keeps the staged certificate.
		noErrors(t, fe01.Apply(ctx, cfgFE, secrets(t)))
		if d, err := w.get(lyncURL, products.LyncID); err != nil {
			t.Error(err)
		} else if len(d.Keys) != 2 || d.Keys[0].KeyInfo.X5T != certs.X5T(fix(t).issuer.Cert) || d.Keys[1].KeyInfo.X5T != certs.X5T(next.Cert) {
			t.Errorf("pool metadata after apply has keys %+v, want the current then the next", d.Keys)
		}
	})

	t.Run("issuer swapped on fe01", func(t *testing.T) {
		if err := fe01.ReplaceLocalIssuerCertificate(); err != nil {
			t.Fatal(err)
		}
		p := wantProbe(t, fe01.Probe(ctx, cfgFE), "ex01.contoso.com", false, ReasonNoSigningKey, string(s2stoken.ReasonUnknownKey))
		if !strings.Contains(p.GetDetail(), "fe01.contoso.com") || !strings.Contains(p.GetDetail(), issuer) || p.GetIssuerThumbprint() != issuer {
			t.Errorf("probe detail = %q, issuer %s; want host and thumbprint %s named", p.GetDetail(), p.GetIssuerThumbprint(), issuer)
		}
		wantItem(t, verify(t, fe01, cfgFE), driver.ItemIssuerCertificate, pb.ItemState_ITEM_STATE_FAILED, issuer)
		// fe01 still receives: Exchange's tokens are checked against what it cached.
		wantProbe(t, ex01.Probe(ctx, cfgEX), "fe01.contoso.com", true)
	})
}

func TestServeWithoutListener(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.host("fe01.contoso.com", pb.Product_PRODUCT_LYNC, "2015")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve without a listener = %v, want nil", err)
	}
}

func TestResolvingDialer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	dial := metadata.NewFetcher(metadata.FetcherOptions{Resolve: map[string]string{
		"Pool01.contoso.com":     ln.Addr().String(),
		"ex01.contoso.com:8443":  ln.Addr().String(),
		"ex01.contoso.com":       "127.0.0.1:1",
		"[::1]:" + port + "-bad": "x",
	}}).DialContext
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"pool01.CONTOSO.com:443", true},
		{"ex01.contoso.com:8443", true},
		{"ex01.contoso.com:443", false}, // the host entry: port 1, refused
	} {
		c, err := dial(context.Background(), "tcp", tc.addr)
		if (err == nil) != tc.ok {
			t.Errorf("dial %s: %v, want ok %v", tc.addr, err, tc.ok)
		}
		if err == nil {
			c.Close()
		} else if !strings.Contains(err.Error(), "resolved to 127.0.0.1:1") {
			t.Errorf("dial %s: %v, want the resolved address named", tc.addr, err)
		}
	}
}
