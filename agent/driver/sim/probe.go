package sim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/s2stoken"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Bounds of the checks a host makes from its vantage point.
const (
	// probeTimeout bounds one trust probe, connection included.
	probeTimeout = 5 * time.Second
	// probeConcurrency bounds the probes and metadata downloads in flight.
	probeConcurrency = 8
	// probeTokenLifetime is the lifetime of a probe's actor token.
	probeTokenLifetime = 10 * time.Minute
	// maxProbeAnswer bounds the body of a probe answer that is read.
	maxProbeAnswer = 64 << 10
)

var _ driver.Prober = (*Sim)(nil)

// newProbeClient returns the client trust probes go out with: o's roots and
// resolver, no proxy, no kept connections (so nothing lingers between
// probes) and no redirects (a probe answers where it is sent).
func newProbeClient(o metadata.FetcherOptions) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           metadata.NewFetcher(o).DialContext,
			TLSClientConfig:       &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   probeTimeout,
			ResponseHeaderTimeout: probeTimeout,
			DisableKeepAlives:     true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// bounded runs f(0) … f(n-1) with at most probeConcurrency at a time and
// waits for all of them.
func bounded(n int, f func(i int)) {
	sem := make(chan struct{}, probeConcurrency)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(i)
		})
	}
	wg.Wait()
}

// urlParameter names the metadata URL parameter of product p's cmdlets.
func urlParameter(p pb.Product) string {
	ps, err := (&DeploymentStore{}).productStore(p)
	if err != nil {
		return "MetadataUrl"
	}
	return ps.urlParameter()
}

// fetchList downloads and validates a metadata document from this host's
// vantage point: through Config.FetchMetadata when set, the host's Fetcher
// otherwise.
func (s *Sim) fetchList(ctx context.Context, url, serviceName, realm string) (*metadata.Document, []*x509.Certificate, error) {
	fetch := s.cfg.FetchMetadata
	if fetch == nil {
		fetch = s.fetchSigning
	}
	doc, list, err := fetch(ctx, url, serviceName, realm)
	if err == nil && len(list) == 0 {
		err = errors.New("the document has no signing keys")
	}
	return doc, list, err
}

// CheckMetadata downloads, from this host, the metadata document of its own
// deployment (cfg.MetadataUrl, as partner "") and of every partner of cfg,
// concurrently, and reports for each whether it is reachable and valid, the
// products' own error with its cause when it is not, and the thumbprints of
// its signing certificates. Last comes the host's self check: its own
// document as it serves it (partner "", SelfMetadataURL). It changes
// nothing.
func (s *Sim) CheckMetadata(ctx context.Context, cfg *pb.HostConfig) []*pb.MetadataCheck {
	ctx = narrowed(ctx, cfg)
	type check struct {
		res                *pb.MetadataCheck
		serviceName, realm string
	}
	checks := []check{{
		res:         &pb.MetadataCheck{Deployment: cfg.GetDeployment(), Url: cfg.GetMetadataUrl()},
		serviceName: serviceName(cfg), realm: cfg.GetRealm(),
	}}
	for _, p := range cfg.GetPartners() {
		checks = append(checks, check{
			res:         &pb.MetadataCheck{Partner: p.GetName(), Deployment: p.GetDeployment(), Url: p.GetMetadataUrl()},
			serviceName: p.GetApplicationIdentifier(), realm: p.GetRealm(),
		})
	}
	param := urlParameter(cfg.GetProduct())
	bounded(len(checks), func(i int) {
		c := checks[i]
		doc, list, err := s.fetchList(ctx, c.res.GetUrl(), c.serviceName, c.realm)
		if err != nil {
			c.res.Error = fmt.Errorf(metadataError, param, err).Error()
			return
		}
		c.res.Ok = true
		if doc != nil {
			c.res.Realm, c.res.Issuer = doc.EffectiveRealm(), doc.Issuer
		}
		for _, cert := range list {
			c.res.Thumbprints = append(c.res.Thumbprints, certs.Thumbprint(cert))
		}
	})
	out := make([]*pb.MetadataCheck, len(checks), len(checks)+1)
	for i, c := range checks {
		out[i] = c.res
	}
	return append(out, s.selfCheck(cfg))
}

// SelfMetadataURL is the URL of the metadata document a host serves
// itself: https://<host><the product's metadata path>. A host's self check
// (a MetadataCheck with partner "" and this URL) lists the keys it
// publishes, the current issuer and any next and previous one.
func SelfMetadataURL(cfg *pb.HostConfig) string {
	return "https://" + strings.ToLower(cfg.GetHost()) + products.MetadataPath(cfg.GetProduct())
}

// selfCheck is the host's own metadata document as it serves it (through
// its own handler, addressed by its own name): what a rotation checks for
// the next key on every issuer host.
func (s *Sim) selfCheck(cfg *pb.HostConfig) *pb.MetadataCheck {
	u := SelfMetadataURL(&pb.HostConfig{Host: s.cfg.Host, Product: cfg.GetProduct()})
	res := &pb.MetadataCheck{Deployment: cfg.GetDeployment(), Url: u}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, u, nil))
	param := urlParameter(cfg.GetProduct())
	fail := func(err error) *pb.MetadataCheck {
		res.Error = fmt.Errorf(metadataError, param, err).Error()
		return res
	}
	if rec.Code != http.StatusOK {
		return fail(fmt.Errorf("host %s answers %s with HTTP %d: %s", s.cfg.Host, u, rec.Code, strings.TrimSpace(rec.Body.String())))
	}
	doc, err := metadata.Parse(rec.Body.Bytes())
	if err != nil {
		return fail(err)
	}
	list, err := doc.Certificates()
	if err != nil {
		return fail(err)
	}
	res.Ok, res.Realm, res.Issuer = true, doc.EffectiveRealm(), doc.Issuer
	for _, c := range list {
		res.Thumbprints = append(res.Thumbprints, certs.Thumbprint(c))
	}
	return res
}

// Probe mints an actor token with this host's current signing key for every
// host each deployment in cfg.TrustedBy lists and presents it at
// https://<host>/s2s/probe, concurrently and each within probeTimeout. It
// returns one result per target host, in cfg's order. When this host does
// not hold its deployment's current token-issuer certificate with its key,
// every probe fails with ReasonNoSigningKey. It changes nothing.
func (s *Sim) Probe(ctx context.Context, cfg *pb.HostConfig) []*pb.TrustProbe {
	ctx = narrowed(ctx, cfg)
	type target struct {
		res         *pb.TrustProbe
		serviceName string
	}
	var targets []target
	for _, t := range cfg.GetTrustedBy() {
		svc := t.GetServiceName()
		if svc == "" {
			svc = serviceName(&pb.HostConfig{Product: t.GetProduct()})
		}
		for _, h := range t.GetHosts() {
			targets = append(targets, target{res: &pb.TrustProbe{ToDeployment: t.GetDeployment(), TargetHost: h}, serviceName: svc})
		}
	}
	out := make([]*pb.TrustProbe, len(targets))
	for i, t := range targets {
		out[i] = t.res
	}
	if len(targets) == 0 {
		return out
	}

	sc, err := s.signing()
	if err == nil {
		err = s.checkProduct(cfg)
		if err == nil && !strings.EqualFold(cfg.GetDeployment(), sc.host.Deployment) {
			err = fmt.Errorf("host %s last applied the configuration of deployment %s, not %s", s.cfg.Host, sc.host.Deployment, cfg.GetDeployment())
		}
	}
	if err != nil {
		for _, p := range out {
			p.Reason, p.Detail, p.IssuerThumbprint = ReasonNoSigningKey, err.Error(), sc.thumbprint
		}
		return out
	}
	// A token for receiver B carries B's realm, which the issuer learns
	// from B's metadata as the products do (B's declared realm when the
	// topology names one); a receiver that publishes "*" (Exchange)
	// accepts tokens for any accepted domain, so the issuer's own realm.
	realm := sc.realm
	realms := map[string]string{}
	for _, t := range cfg.GetTrustedBy() {
		realms[t.GetDeployment()] = s.targetRealm(ctx, t, "")
	}
	now := s.cfg.Now()
	bounded(len(targets), func(i int) {
		t := targets[i]
		t.res.IssuerThumbprint = sc.thumbprint
		audRealm := realms[t.res.GetToDeployment()]
		issRealm := realm
		// A deployment without a realm of its own (Exchange) mints for the
		// receiver's; a receiver that accepts any (Exchange's "*") gets
		// the issuer's.
		if issRealm == "" {
			issRealm = audRealm
		}
		if audRealm == "" {
			audRealm = issRealm
		}
		if issRealm == "" {
			t.res.Reason, t.res.Detail = ReasonMintFailed, fmt.Sprintf("no realm to mint a token for deployment %s: its metadata publishes none and this deployment has none of its own", t.res.GetToDeployment())
			return
		}
		signer := s2stoken.Signer{ServiceName: serviceName(cfg), Realm: issRealm, Cert: sc.current, Key: sc.key}
		s.probe(ctx, signer, s2stoken.MintOptions{ReceiverServiceName: t.serviceName, ReceiverHost: t.res.GetTargetHost(),
			ReceiverRealm: audRealm, Now: now, Lifetime: probeTokenLifetime, TrustedForDelegation: true}, t.res)
	})
	return out
}

// targetRealm is the realm to mint tokens for target t in: its declared
// realm, else the one its metadata document publishes, else (a "*" or an
// unreachable document) own.
func (s *Sim) targetRealm(ctx context.Context, t *pb.TrustTarget, own string) string {
	if r := t.GetRealm(); r != "" {
		return r
	}
	if t.GetMetadataUrl() == "" {
		return own
	}
	doc, _, err := s.fetchList(ctx, t.GetMetadataUrl(), t.GetServiceName(), "")
	if err == nil && doc != nil {
		if r := doc.EffectiveRealm(); r != "" && r != "*" {
			return r
		}
		return own
	}
	// The document is out of reach: the realm this deployment learned when
	// it registered the target as a partner, if it did.
	if ps, err := s.deploymentView(s.snap.Load()); err == nil {
		for _, v := range ps.partners() {
			if strings.EqualFold(v.AppID, t.GetServiceName()) && v.Realm != "" && v.Realm != "*" {
				return v.Realm
			}
		}
	}
	return own
}

// probe presents one actor token to res.TargetHost and records the answer.
// The token itself never appears in a result.
func (s *Sim) probe(ctx context.Context, signer s2stoken.Signer, opts s2stoken.MintOptions, res *pb.TrustProbe) {
	token, err := signer.MintActor(opts)
	if err != nil {
		res.Reason, res.Detail = ReasonMintFailed, err.Error()
		return
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	target := "https://" + res.GetTargetHost() + ProbePath
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, nil)
	if err != nil {
		res.Reason, res.Detail = ReasonUnreachable, fmt.Sprintf("probe %s: %v", res.GetTargetHost(), err)
		return
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	resp, err := s.probeClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			err = fmt.Errorf("no answer within %s: %w", probeTimeout, err)
		}
		res.Reason, res.Detail = ReasonUnreachable, fmt.Sprintf("post %s: %v", target, err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxProbeAnswer))
	var a ProbeAnswer
	_ = json.Unmarshal(body, &a)
	if a.Reason == "" {
		if diag := resp.Header.Get(DiagnosticsHeader); diag != "" {
			reason, _, _ := strings.Cut(diag, ";")
			a.Reason, a.Detail = strings.TrimSpace(reason), diag
		}
	}
	switch {
	case resp.StatusCode == http.StatusOK && a.OK:
		res.Ok = true
	case a.Reason != "":
		res.Reason, res.Detail = a.Reason, a.Detail
	default:
		res.Reason, res.Detail = ReasonUnexpectedAnswer, fmt.Sprintf("%s answered HTTP %s", target, resp.Status)
	}
}
