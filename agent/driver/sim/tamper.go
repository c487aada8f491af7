package sim

import (
	"cmp"
	"crypto/x509"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// The tamper helpers change a store behind s2strust's back, as an
// administrator's PowerShell would, so that tests and the demo can show
// drift being found and corrected.

// openStore reads a deployment store for a tamper helper.
func openStore(sharedDir, deployment string) (*DeploymentStore, []byte, productStore, error) {
	ds, old, err := readStore(sharedDir, deployment)
	if err != nil {
		return nil, nil, nil, err
	}
	if ds == nil {
		return nil, nil, nil, fmt.Errorf("deployment %s has no store in %s", deployment, sharedDir)
	}
	_, ps, err := ds.storedProduct()
	if err != nil {
		return nil, nil, nil, err
	}
	return ds, old, ps, nil
}

// RemovePartner deletes a partner from a deployment store, as
// Remove-CsPartnerApplication, Remove-PartnerApplication or
// Remove-SPTrustedSecurityTokenIssuer would.
func RemovePartner(sharedDir, deployment, name string) error {
	ds, old, ps, err := openStore(sharedDir, deployment)
	if err != nil {
		return fmt.Errorf("remove partner %s: %w", name, err)
	}
	if !ps.remove(name) {
		return fmt.Errorf("remove partner %s: deployment %s has no such partner", name, deployment)
	}
	_, err = writeStore(sharedDir, ds, old)
	return err
}

// SetTrustLevel changes a Lync partner's ApplicationTrustLevel, as
// Set-CsPartnerApplication -ApplicationTrustLevel would. Exchange and
// SharePoint partners have no trust level.
func SetTrustLevel(sharedDir, deployment, name string, level pb.TrustLevel) error {
	if products.TrustLevelName(level) == "" {
		return fmt.Errorf("set trust level of partner %s: %s is not a trust level (want Full, Application or User)", name, level)
	}
	ds, old, ps, err := openStore(sharedDir, deployment)
	if err != nil {
		return fmt.Errorf("set trust level of partner %s: %w", name, err)
	}
	if !ps.trustLevels() {
		return fmt.Errorf("set trust level of partner %s: %s partners have no trust level", name, ds.Product)
	}
	v, ok := findPartner(ps, name)
	if !ok {
		return fmt.Errorf("set trust level of partner %s: deployment %s has no such partner", name, deployment)
	}
	v.Trust = level
	ps.upsert(v)
	_, err = writeStore(sharedDir, ds, old)
	return err
}

// ReplaceLocalIssuerCertificate swaps this host's copy of the deployment's
// token-issuer certificate for a freshly generated one with the same subject
// and validity, so that the thumbprint differs on this host only: the "same
// certificate on every Front End" rule broken on one of them.
func (s *Sim) ReplaceLocalIssuerCertificate() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.host.clone()
	fail := func(err error) error {
		return fmt.Errorf("replace the issuer certificate of host %s: %w", s.cfg.Host, err)
	}
	if h.Deployment == "" {
		return fail(fmt.Errorf("no configuration applied yet"))
	}
	_, _, ps, err := openStore(s.cfg.SharedDir, h.Deployment)
	if err != nil {
		return fail(err)
	}
	g := ps.issuer()
	if g == nil {
		return fail(fmt.Errorf("deployment %s has no issuer certificate", h.Deployment))
	}
	// The copy this host holds, or the one the product replicated to it
	// and it has not yet written into its own files.
	lc := replicaView(h, ps).find(g.Thumbprint)
	if lc == nil {
		return fail(fmt.Errorf("the local store does not hold the issuer certificate %s", g.Thumbprint))
	}
	old, err := x509.ParseCertificate(lc.Certificate)
	if err != nil {
		return fail(err)
	}
	b, err := certs.Generate(certs.Template{
		CommonName: old.Subject.CommonName,
		DNSNames:   old.DNSNames,
		NotBefore:  old.NotBefore,
		NotAfter:   old.NotAfter,
		KeyBits:    2048,
	})
	if err != nil {
		return fail(err)
	}
	keyPEM, err := encodeKey(b.Key)
	if err != nil {
		return fail(err)
	}
	if _, err := s.install(h, b.Cert, keyPEM, lc.FriendlyName); err != nil {
		return fail(err)
	}
	h.Certificates = slices.DeleteFunc(h.Certificates, func(c *localCertificate) bool { return c.Thumbprint == g.Thumbprint })
	// The host had it: it is gone now, not still on its way.
	held(h, g.Thumbprint)
	if h.DefaultThumbprint == g.Thumbprint {
		h.DefaultThumbprint = certs.Thumbprint(b.Cert)
	}
	if err := s.saveHost(h); err != nil {
		return fail(err)
	}
	// The store no longer names the old key; removing it is best effort.
	_ = os.Remove(s.keyPath(g.Thumbprint))
	return nil
}

// SetPartnerEnabled enables or disables a partner, as
// Set-CsPartnerApplication -Enabled or Set-PartnerApplication -Enabled
// would. SharePoint's trusted security token issuers cannot be disabled.
func SetPartnerEnabled(sharedDir, deployment, name string, enabled bool) error {
	ds, old, ps, err := openStore(sharedDir, deployment)
	if err != nil {
		return fmt.Errorf("set Enabled of partner %s: %w", name, err)
	}
	if ds.SharePoint != nil {
		return fmt.Errorf("set Enabled of partner %s: %s trusted security token issuers cannot be disabled", name, ds.Product)
	}
	v, ok := findPartner(ps, name)
	if !ok {
		return fmt.Errorf("set Enabled of partner %s: deployment %s has no such partner", name, deployment)
	}
	v.Enabled = enabled
	ps.upsert(v)
	_, err = writeStore(sharedDir, ds, old)
	return err
}

// StageNextIssuerCertificate stages cert as the deployment's next
// token-issuer certificate, effective at effective, as Lync's
// Set-CsCertificate -Type OAuthTokenIssuer -Roll -EffectiveDate or
// Exchange's Set-AuthConfig -NewCertificateThumbprint
// -NewCertificateEffectiveDate would. Only the certificate is recorded: its
// key goes to the hosts' own stores the way the current one did. The
// deployment then publishes both in its metadata. A SharePoint farm has no
// staged certificate.
func StageNextIssuerCertificate(sharedDir, deployment string, cert *x509.Certificate, effective time.Time) error {
	t := certs.Thumbprint(cert)
	ds, old, ps, err := openStore(sharedDir, deployment)
	if err != nil {
		return fmt.Errorf("stage next issuer certificate %s: %w", t, err)
	}
	if cur := ps.issuer(); cur != nil && cur.Thumbprint == t {
		return fmt.Errorf("stage next issuer certificate %s: it is already the current one", t)
	}
	ic := &IssuerCertificate{Thumbprint: t, Certificate: cert.Raw}
	eff := effective.UTC()
	switch {
	case ds.Lync != nil:
		ds.Lync.NextOAuthTokenIssuer, ds.Lync.NextEffectiveDate = ic, &eff
	case ds.Exchange != nil:
		o := ds.Exchange
		o.AuthConfig.NextCertificateThumbprint, o.AuthConfig.NextCertificateEffectiveDate = t, &eff
		o.AuthCertificates = slices.DeleteFunc(o.AuthCertificates, func(c *IssuerCertificate) bool { return c.Thumbprint == t })
		o.AuthCertificates = append(o.AuthCertificates, ic)
		slices.SortFunc(o.AuthCertificates, func(a, b *IssuerCertificate) int { return cmp.Compare(a.Thumbprint, b.Thumbprint) })
	case ds.SharePoint != nil:
		// Set-SPSecurityTokenServiceConfig -QueueSigningCertificate: published
		// beside the current signing certificate until it replaces it.
		ds.SharePoint.QueuedSigningCertificate = ic
	default:
		return fmt.Errorf("stage next issuer certificate %s: a %s deployment has no next certificate", t, ds.Product)
	}
	_, err = writeStore(sharedDir, ds, old)
	return err
}

// Seed registers partners on cfg's deployment behind s2strust's back, as
// an administrator's PowerShell would, installing the deployment first if
// it is not: the brownfield estate the conformance suite starts from.
func (s *Sim) Seed(cfg *pb.HostConfig, partners []reconcile.Partner) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.installDeployment(cfg); err != nil {
		return err
	}
	ds, old, ps, err := openStore(s.cfg.SharedDir, cfg.GetDeployment())
	if err != nil {
		return err
	}
	for _, p := range partners {
		ps.upsert(partnerView{Name: p.Name, AppID: p.ApplicationIdentifier, URL: p.MetadataURL, Realm: p.Realm,
			Trust: p.TrustLevel, Enabled: p.Enabled, Broker: p.TrustBroker, productFields: true})
	}
	_, err = writeStore(s.cfg.SharedDir, ds, old)
	return err
}

// RollIssuerCertificate stages b (with its key) as a Lync pool's next
// OAuthTokenIssuer certificate effective at effective, as
// `Set-CsCertificate -Identity global -Type OAuthTokenIssuer -Thumbprint
// <new> -Roll -EffectiveDate <date>` does after the certificate was
// imported; the primary's next apply after that date makes it current.
func RollIssuerCertificate(sharedDir, deployment string, b *certs.Bundle, effective time.Time) error {
	t := certs.Thumbprint(b.Cert)
	keyPEM, err := encodeKey(b.Key)
	if err != nil {
		return fmt.Errorf("roll issuer certificate %s: %w", t, err)
	}
	ds, old, _, err := openStore(sharedDir, deployment)
	if err != nil {
		return fmt.Errorf("roll issuer certificate %s: %w", t, err)
	}
	if ds.Lync == nil {
		return fmt.Errorf("roll issuer certificate %s: deployment %s is not a Lync pool", t, deployment)
	}
	eff := effective.UTC()
	ds.Lync.NextOAuthTokenIssuer = &IssuerCertificate{Thumbprint: t, Certificate: b.Cert.Raw, PrivateKey: string(keyPEM)}
	ds.Lync.NextEffectiveDate = &eff
	_, err = writeStore(sharedDir, ds, old)
	return err
}
