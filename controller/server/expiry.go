package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/s2strust/s2strust/controller/secrets"
	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// The token-issuer certificates' expiry is warned of this far ahead: at 60
// days a rotation is due to be planned, at 30 it is urgent (the products'
// own rule: Lync's next certificate must take effect at least 24 h before
// the current one expires, and partners need time to refresh metadata).
const (
	ExpiryNotice  = 60 * 24 * time.Hour
	ExpiryWarning = 30 * 24 * time.Hour
)

// issuerCertName is what each product calls its token-issuer certificate.
func issuerCertName(p pb.Product) string {
	switch p {
	case pb.Product_PRODUCT_LYNC:
		return "OAuthTokenIssuer certificate"
	case pb.Product_PRODUCT_EXCHANGE:
		return "auth certificate"
	case pb.Product_PRODUCT_SHAREPOINT:
		return "STS signing certificate"
	}
	return "token-issuer certificate"
}

// IssuerExpiryWarning says how soon dep's token-issuer certificate
// expires when that is within ExpiryNotice of now (or has happened), and
// is "" otherwise or when notAfter is unknown (zero).
func IssuerExpiryWarning(dep string, product pb.Product, thumbprint string, notAfter, now time.Time) string {
	if notAfter.IsZero() {
		return ""
	}
	left := notAfter.Sub(now)
	what := fmt.Sprintf("%s's %s %s", dep, issuerCertName(product), thumbprint)
	date := notAfter.UTC().Format("2006-01-02")
	days := int(math.Ceil(left.Hours() / 24))
	rotate := "s2s-controller rotate issuer --deployment " + dep
	switch {
	case left <= 0:
		return fmt.Sprintf("%s expired on %s: partners refuse its tokens; rotate it now (%s)", what, date, rotate)
	case left <= ExpiryWarning:
		return fmt.Sprintf("%s expires in %d days (on %s), within 30 days: rotate it now (%s)", what, days, date, rotate)
	case left <= ExpiryNotice:
		return fmt.Sprintf("%s expires in %d days (on %s), within 60 days: plan its rotation (%s --at TIME)", what, days, date, rotate)
	}
	return ""
}

// deploymentIssuers finds each deployment's token-issuer certificate: as
// its primary (or first reporting host) reports it, else, for a
// deployment whose issuer is a secret, the version its revision uses.
func (s *FleetService) deploymentIssuers(ctx context.Context, snap snapshot, reports map[string]*pb.StatusReport, stale bool) (map[string]*pb.CertificateInfo, error) {
	out := map[string]*pb.CertificateInfo{}
	for dep, hosts := range snap.topo.deployments {
		if ci := primaryReport(snap, dep, hosts, reports).GetIssuerCertificate(); ci.GetNotAfter() != nil {
			out[dep] = ci
			continue
		}
		if len(hosts) == 0 {
			continue
		}
		name := snap.topo.hosts[hosts[0]].GetTokenIssuer().GetSecret()
		// Answering from the last view: etcd, where secrets are, is down.
		if name == "" || stale {
			continue
		}
		ci, err := secrets.Info(ctx, s.hub.cfg.Store, name, snap.topo.pins[name].Version)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[dep] = ci
	}
	return out, nil
}

// addExpiry fills in the issuer certificate and its expiry warning of
// every deployment row and edge of a trust report.
func addExpiry(resp *pb.GetTrustReportResponse, snap snapshot, issuers map[string]*pb.CertificateInfo, now time.Time) {
	product := func(dep string) pb.Product {
		if hs := snap.topo.deployments[dep]; len(hs) > 0 {
			return snap.topo.hosts[hs[0]].GetProduct()
		}
		return pb.Product_PRODUCT_UNSPECIFIED
	}
	for _, r := range resp.GetRealms() {
		ci := issuers[r.GetDeployment()]
		if ci == nil {
			continue
		}
		r.IssuerThumbprint, r.IssuerNotAfter = ci.GetThumbprint(), ci.GetNotAfter()
		r.IssuerExpiryWarning = IssuerExpiryWarning(r.GetDeployment(), r.GetProduct(), ci.GetThumbprint(), ci.GetNotAfter().AsTime(), now)
	}
	for _, e := range resp.GetEdges() {
		tp, na := e.GetIssuerThumbprint(), e.GetIssuerNotAfter()
		if na == nil {
			if ci := issuers[e.GetFrom()]; ci != nil {
				tp, na = ci.GetThumbprint(), ci.GetNotAfter()
				e.IssuerNotAfter = na
			}
		}
		if na != nil {
			e.IssuerExpiryWarning = IssuerExpiryWarning(e.GetFrom(), product(e.GetFrom()), tp, na.AsTime(), now)
		}
	}
}
