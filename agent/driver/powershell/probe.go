package powershell

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

var _ driver.Prober = (*Driver)(nil)

// metadataError is the products' own wording (the seed article's error),
// with the cause.
const metadataError = "the metadata document could not be downloaded from the URL in the %s parameter or downloaded data is not a valid metadata document: %w"

type metadataGet struct {
	URL    string `json:"url"`
	Status int    `json:"status"`
	Body   string `json:"body"`
	Error  string `json:"error"`
}

// CheckMetadata downloads each metadata document from this host, through
// its product's shell (Invoke-WebRequest with the host's DNS, proxy and
// trust store), and validates it here.
func (d *Driver) CheckMetadata(ctx context.Context, cfg *pb.HostConfig) []*pb.MetadataCheck {
	type check struct {
		res                *pb.MetadataCheck
		serviceName, realm string
	}
	// The realm each document must name: the partner's, else the
	// topology's; Lync's own defaults to the default SIP domain. Where the
	// topology declares none, any realm is accepted ("" below).
	own := cfg.GetRealm()
	if own == "" && cfg.GetProduct() == pb.Product_PRODUCT_LYNC {
		own = cfg.GetDefaultSipDomain()
	}
	checks := []check{{res: &pb.MetadataCheck{Deployment: cfg.GetDeployment(), Url: cfg.GetMetadataUrl()},
		serviceName: products.ServiceName(cfg.GetProduct()), realm: own}}
	for _, p := range cfg.GetPartners() {
		realm := p.GetRealm()
		if realm == "" {
			realm = cfg.GetRealm()
		}
		checks = append(checks, check{res: &pb.MetadataCheck{Partner: p.GetName(), Deployment: p.GetDeployment(), Url: p.GetMetadataUrl()},
			serviceName: p.GetApplicationIdentifier(), realm: realm})
	}
	// Last, the host's own document as it serves it (partner "", its own
	// name): what a rotation checks for the next key on every issuer host.
	checks = append(checks, check{res: &pb.MetadataCheck{Deployment: cfg.GetDeployment(), Url: SelfMetadataURL(cfg)},
		serviceName: products.ServiceName(cfg.GetProduct()), realm: own})
	param := map[pb.Product]string{pb.Product_PRODUCT_LYNC: "MetadataUrl", pb.Product_PRODUCT_EXCHANGE: "AuthMetadataUrl", pb.Product_PRODUCT_SHAREPOINT: "MetadataEndPoint"}[cfg.GetProduct()]
	out := make([]*pb.MetadataCheck, 0, len(checks))
	w, _, startErr := d.start(ctx, cfg)
	for _, c := range checks {
		out = append(out, c.res)
		if startErr != nil {
			c.res.Error = startErr.Error()
			continue
		}
		thumbs, err := d.fetchMetadata(ctx, w, c.res.GetUrl(), c.serviceName, c.realm)
		if err != nil {
			c.res.Error = fmt.Errorf(metadataError, param, err).Error()
			continue
		}
		c.res.Ok, c.res.Thumbprints = true, thumbs
	}
	return out
}

// SelfMetadataURL is the URL of the metadata document host cfg.Host
// serves itself: https://<host><the product's metadata path>.
func SelfMetadataURL(cfg *pb.HostConfig) string {
	return "https://" + strings.ToLower(cfg.GetHost()) + products.MetadataPath(cfg.GetProduct())
}

func (d *Driver) fetchMetadata(ctx context.Context, w *Worker, url, serviceName, realm string) ([]string, error) {
	// No fetch from this host itself, link-local or the like on a topology
	// author's say-so. PowerShell resolves names itself, so only what the
	// URL shows can be checked here, not where its name resolves.
	if err := metadata.CheckURLDestination(url, nil); err != nil {
		return nil, err
	}
	var r metadataGet
	if err := w.Call(ctx, "metadata-get", map[string]any{"url": url}, &r); err != nil {
		return nil, err
	}
	switch {
	case r.Error != "" && r.Status == 0:
		return nil, fmt.Errorf("GET %s from host %s: %s", url, d.cfg.Host, r.Error)
	case r.Status != 200:
		return nil, fmt.Errorf("GET %s from host %s: HTTP status %d", url, d.cfg.Host, r.Status)
	}
	doc, err := metadata.Parse([]byte(r.Body))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	if realm == "" {
		realm = doc.Realm
	}
	list, err := metadata.Validate(doc, serviceName, realm)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	var thumbs []string
	for _, c := range list {
		thumbs = append(thumbs, certs.Thumbprint(c))
	}
	return thumbs, nil
}

// Probe checks, from this host, the deployments that trust it, with the
// products' own tests: SharePoint's realm discovery (an empty bearer
// request answered 401 with the farm's realm and client id); from a Lync
// Front End to Exchange, Test-CsExStorageConnectivity with the topology's
// probeAccounts.sipUri and -DeleteItem (it leaves nothing in the mailbox;
// HTTP 401 means Exchange refuses Lync's token); from Exchange to its
// partners, Test-OAuthConnectivity with probeAccounts.mailbox. A test the
// topology names no account for is reported as not probed, naming the
// field to set. Each test runs once per target deployment: the cmdlets
// test the partner as a whole, not one of its servers.
func (d *Driver) Probe(ctx context.Context, cfg *pb.HostConfig) []*pb.TrustProbe {
	var out []*pb.TrustProbe
	w, _, startErr := d.start(ctx, cfg)
	for _, t := range cfg.GetTrustedBy() {
		var once *pb.TrustProbe // the deployment-wide test's result, run once
		for _, h := range t.GetHosts() {
			p := &pb.TrustProbe{ToDeployment: t.GetDeployment(), TargetHost: h}
			out = append(out, p)
			switch {
			case startErr != nil:
				p.Reason, p.Detail = "unreachable", startErr.Error()
			case t.GetProduct() == pb.Product_PRODUCT_SHAREPOINT:
				realm, err := d.RealmDiscovery(ctx, w, "https://"+h+"/_vti_bin/client.svc")
				switch {
				case err != nil:
					p.Reason, p.Detail = "realm-discovery", err.Error()
				default:
					p.Ok, p.Detail = true, "realm "+realm
				}
			case once != nil:
				p.Ok, p.Reason, p.Detail = once.GetOk(), once.GetReason(), once.GetDetail()
			case t.GetProduct() == pb.Product_PRODUCT_EXCHANGE && cfg.GetProduct() == pb.Product_PRODUCT_LYNC:
				once = p
				if cfg.GetProbeSipUri() == "" {
					p.Reason, p.Detail = "not-probed", "Test-CsExStorageConnectivity -SipUri <a user> -DeleteItem needs a test user: set probeAccounts.sipUri in the topology"
					continue
				}
				r, err := d.TestExStorageConnectivity(ctx, cfg, cfg.GetProbeSipUri())
				switch {
				case err != nil:
					p.Reason, p.Detail = "test-failed", err.Error()
				case !r.OK:
					p.Reason, p.Detail = "refused", "Test-CsExStorageConnectivity: "+r.Error
				default:
					p.Ok, p.Detail = true, "Test-CsExStorageConnectivity: "+r.Output
				}
			case cfg.GetProduct() == pb.Product_PRODUCT_EXCHANGE:
				once = p
				if cfg.GetProbeMailbox() == "" {
					p.Reason, p.Detail = "not-probed", "Test-OAuthConnectivity -Mailbox <a mailbox> needs a test mailbox: set probeAccounts.mailbox in the topology"
					continue
				}
				// Microsoft's example tests Lync as -Service EWS against the
				// partner's own name, not one of its servers:
				// https://learn.microsoft.com/powershell/module/exchangepowershell/test-oauthconnectivity
				target := "https://" + h + "/"
				if u, err := url.Parse(t.GetMetadataUrl()); err == nil && u.Host != "" {
					target = "https://" + u.Host + "/"
				}
				r, err := d.TestOAuthConnectivity(ctx, cfg, "EWS", target, cfg.GetProbeMailbox())
				switch {
				case err != nil:
					p.Reason, p.Detail = "test-failed", err.Error()
				case !strings.EqualFold(r.ResultType, "Success"):
					p.Reason, p.Detail = "refused", "Test-OAuthConnectivity: "+r.ResultType+": "+r.Detail
				default:
					p.Ok, p.Detail = true, "Test-OAuthConnectivity: Success"
				}
			default:
				p.Reason, p.Detail = "not-probed", "no product test proves this edge from a "+products.DisplayName(cfg.GetProduct())+" host"
			}
		}
	}
	return out
}

type realmDiscovery struct {
	URL             string `json:"url"`
	Status          int    `json:"status"`
	WWWAuthenticate string `json:"wwwAuthenticate"`
	Error           string `json:"error"`
}

// RealmDiscovery sends SharePoint an empty bearer request from this host
// and returns the realm its 401 challenge names, checking that the
// challenge's client_id is SharePoint's ([MS-XOAUTH] 3.2.5.4 makes realm
// optional in general; SharePoint's challenge carries it, and a probe
// without it cannot tell the farm's realm).
// https://learn.microsoft.com/openspecs/exchange_server_protocols/ms-xoauth/bca538e1-4a02-45af-a41c-441645506c93
func (d *Driver) RealmDiscovery(ctx context.Context, w *Worker, url string) (string, error) {
	if err := metadata.CheckURLDestination(url, nil); err != nil {
		return "", fmt.Errorf("realm discovery: %w", err)
	}
	var r realmDiscovery
	if err := w.Call(ctx, "realm-discovery", map[string]any{"url": url}, &r); err != nil {
		return "", err
	}
	if r.Status != 401 {
		if r.Error != "" {
			return "", fmt.Errorf("realm discovery at %s: %s", url, r.Error)
		}
		return "", fmt.Errorf("realm discovery at %s: HTTP status %d, want 401 with a Bearer challenge", url, r.Status)
	}
	ch, err := ParseBearerChallenge(r.WWWAuthenticate)
	if err != nil {
		return "", fmt.Errorf("realm discovery at %s: %w", url, err)
	}
	if !strings.EqualFold(ch["client_id"], products.SharePointID) {
		return "", fmt.Errorf("realm discovery at %s: client_id %q, want SharePoint's %s", url, ch["client_id"], products.SharePointID)
	}
	if ch["realm"] == "" {
		return "", fmt.Errorf("realm discovery at %s: the challenge names no realm", url)
	}
	return ch["realm"], nil
}

// ParseBearerChallenge parses a WWW-Authenticate header's Bearer challenge
// (RFC 6750 section 3: auth-params, values a token or a quoted string) into
// its parameters, names lower case. Other schemes in the header are skipped.
// https://www.rfc-editor.org/rfc/rfc6750#section-3
func ParseBearerChallenge(h string) (map[string]string, error) {
	if len(h) > 8<<10 {
		return nil, errors.New("WWW-Authenticate header over 8 KiB")
	}
	s := strings.TrimSpace(h)
	for s != "" {
		scheme, rest, _ := strings.Cut(s, " ")
		params, next, err := parseAuthParams(strings.TrimSpace(rest))
		if err != nil {
			return nil, fmt.Errorf("WWW-Authenticate %q: %w", h, err)
		}
		if strings.EqualFold(strings.TrimRight(scheme, ","), "Bearer") {
			return params, nil
		}
		s = strings.TrimSpace(next)
	}
	return nil, fmt.Errorf("WWW-Authenticate %q: no Bearer challenge", h)
}

// parseAuthParams reads name=value pairs separated by commas, up to the
// next challenge (a token followed by a space, not by "=").
func parseAuthParams(s string) (map[string]string, string, error) {
	params := map[string]string{}
	for {
		s = strings.TrimLeft(s, " ,")
		if s == "" {
			return params, "", nil
		}
		eq := strings.IndexByte(s, '=')
		sp := strings.IndexAny(s, " ,")
		if eq < 0 || (sp >= 0 && sp < eq) {
			// The next challenge's scheme.
			return params, s, nil
		}
		name := strings.ToLower(strings.TrimSpace(s[:eq]))
		s = strings.TrimLeft(s[eq+1:], " ")
		var val string
		if strings.HasPrefix(s, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(s); i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
					b.WriteByte(s[i])
					continue
				}
				if s[i] == '"' {
					break
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, "", fmt.Errorf("parameter %s: unterminated quoted string", name)
			}
			val, s = b.String(), s[i+1:]
		} else {
			end := strings.IndexAny(s, " ,")
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
		}
		if name == "" {
			return nil, "", errors.New("a parameter without a name")
		}
		params[name] = val
	}
}

// ExStorageResult is Test-CsExStorageConnectivity's outcome.
type ExStorageResult struct {
	OK     bool   `json:"ok"`
	Output string `json:"output"`
	Error  string `json:"error"`
}

// TestExStorageConnectivity runs Lync's Exchange storage test for sipURI
// from this Front End, with -DeleteItem so that it leaves nothing in the
// mailbox. An HTTP 401 in the error means Exchange refused Lync's token.
func (d *Driver) TestExStorageConnectivity(ctx context.Context, cfg *pb.HostConfig, sipURI string) (*ExStorageResult, error) {
	if cfg.GetProduct() != pb.Product_PRODUCT_LYNC {
		return nil, fmt.Errorf("Test-CsExStorageConnectivity runs on Lync / Skype for Business hosts, not on %s host %s", products.DisplayName(cfg.GetProduct()), cfg.GetHost())
	}
	w, _, err := d.start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var r ExStorageResult
	if err := w.Call(ctx, "test-exstorage-connectivity", map[string]any{"sipUri": sipURI}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// OAuthConnectivityResult is Test-OAuthConnectivity's outcome.
type OAuthConnectivityResult struct {
	ResultType string `json:"resultType"`
	Detail     string `json:"detail"`
	Text       string `json:"text"`
}

// TestOAuthConnectivity runs Exchange's OAuth test against a partner:
// service EWS, AutoD or Generic, the partner's URI and a test mailbox.
func (d *Driver) TestOAuthConnectivity(ctx context.Context, cfg *pb.HostConfig, service, targetURI, mailbox string) (*OAuthConnectivityResult, error) {
	if cfg.GetProduct() != pb.Product_PRODUCT_EXCHANGE {
		return nil, fmt.Errorf("Test-OAuthConnectivity runs on Exchange hosts, not on %s host %s", products.DisplayName(cfg.GetProduct()), cfg.GetHost())
	}
	w, _, err := d.start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	args := map[string]any{"service": service, "targetUri": targetURI}
	if mailbox != "" {
		args["mailbox"] = mailbox
	}
	var r OAuthConnectivityResult
	if err := w.Call(ctx, "test-oauth-connectivity", args, &r); err != nil {
		return nil, err
	}
	return &r, nil
}
