package sim

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/atomicfile"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

var _ reconcile.Backend = (*Sim)(nil)

// Read returns the host's actual state as the product's Get- cmdlets show
// it: the deployment store as this host's replica sees it and the host's
// own certificate store. It changes nothing.
func (s *Sim) Read(ctx context.Context, cfg *pb.HostConfig) (*reconcile.State, error) {
	if err := s.checkProduct(cfg); err != nil {
		return nil, &reconcile.ProductError{Err: err}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("read on host %s: %w", s.cfg.Host, err)
	}
	ds, _, err := s.readStore(cfg.GetDeployment())
	if err != nil {
		return nil, err
	}
	if ds == nil {
		ds = &DeploymentStore{Deployment: cfg.GetDeployment()}
	}
	if _, err := ds.productStore(cfg.GetProduct()); err != nil {
		return nil, &reconcile.ProductError{Err: err}
	}
	return s.state(ds, s.host), nil
}

// state is the reconciler's view of a deployment store and a host store.
func (s *Sim) state(ds *DeploymentStore, h *hostState) *reconcile.State {
	p, ps, _ := ds.storedProduct()
	st := &reconcile.State{Product: p}
	for _, v := range ps.partners() {
		rp := reconcile.Partner{
			Name: v.Name, ApplicationIdentifier: v.AppID, MetadataURL: v.URL, Realm: v.Realm,
			TrustLevel: v.Trust, Enabled: v.Enabled, TrustBroker: v.Broker,
		}
		for _, der := range v.Certificates {
			if c, err := x509.ParseCertificate(der); err == nil {
				rp.CachedThumbprints = append(rp.CachedThumbprints, certs.Thumbprint(c))
			}
		}
		st.Partners = append(st.Partners, rp)
	}
	o := ps.oauth()
	st.OAuth = reconcile.OAuth{ServiceName: o.GetServiceName(), Realm: o.GetRealm(), ExchangeAutodiscoverURL: o.GetExchangeAutodiscoverUrl()}
	st.Issuer.Current = o.GetIssuerThumbprint()
	switch {
	case ds.Lync != nil:
		g := ds.Lync
		if g.NextOAuthTokenIssuer != nil {
			st.Issuer.Next = g.NextOAuthTokenIssuer.Thumbprint
			if g.NextEffectiveDate != nil {
				st.Issuer.NextEffective = *g.NextEffectiveDate
			}
		}
		if prev := g.PreviousOAuthTokenIssuer; prev != nil {
			st.Issuer.Previous = prev.Thumbprint
			if c, err := x509.ParseCertificate(prev.Certificate); err == nil {
				st.Issuer.PreviousNotAfter = c.NotAfter
			}
		}
		st.DefaultThumbprint = h.DefaultThumbprint
	case ds.Exchange != nil:
		ac := ds.Exchange.AuthConfig
		st.Issuer.Next, st.Issuer.Previous = ac.NextCertificateThumbprint, ac.PreviousCertificateThumbprint
		if ac.NextCertificateEffectiveDate != nil {
			st.Issuer.NextEffective = *ac.NextCertificateEffectiveDate
		}
		st.IISIssuer = h.IISIssuer
	case ds.SharePoint != nil:
		f := ds.SharePoint
		if f.QueuedSigningCertificate != nil {
			st.Issuer.Next = f.QueuedSigningCertificate.Thumbprint
		}
		st.IISIssuer = h.IISIssuer
		st.STS = &reconcile.STSConfig{AllowOAuthOverHTTP: f.AllowOAuthOverHTTP, AllowMetadataOverHTTP: f.AllowMetadataOverHTTP}
		if f.QueuedSigningCertificate != nil {
			st.STS.QueuedSigningThumbprint = f.QueuedSigningCertificate.Thumbprint
		}
		for _, a := range f.AppPrincipalPermissions {
			st.AppPermissions = append(st.AppPermissions, reconcile.AppPermission{AppID: a.AppPrincipal, Scope: a.Scope, Right: a.Right, AppOnly: a.AppOnly})
		}
	}
	if g := ps.issuer(); g != nil {
		st.IssuerCertificate, _ = x509.ParseCertificate(g.Certificate)
	}
	if h.IssuerSecret != "" {
		st.ImportedSecrets = map[string]string{h.IssuerSecret: h.IssuerSecretThumbprint}
	}
	for _, lc := range replicaView(h, ps).Certificates {
		c, err := x509.ParseCertificate(lc.Certificate)
		if err != nil {
			continue
		}
		st.Certificates = append(st.Certificates, reconcile.Certificate{Thumbprint: lc.Thumbprint, Cert: c, HasPrivateKey: lc.HasPrivateKey})
	}
	return st
}

// replicaView is host h's certificate store as the product's replication
// makes it: the deployment's issuer certificates this host has not held
// yet are there with their keys (the CMS replicates them as soon as the
// primary writes them; replicate copies them into the host's files at its
// next apply). A copy it held and lost since stays lost.
func replicaView(h *hostState, ps productStore) *hostState {
	var add []*localCertificate
	for _, g := range ps.issuers() {
		if g.PrivateKey == "" || slices.Contains(h.HeldIssuers, g.Thumbprint) {
			continue
		}
		if lc := h.find(g.Thumbprint); lc == nil || !lc.HasPrivateKey {
			add = append(add, &localCertificate{Thumbprint: g.Thumbprint, FriendlyName: friendlyIssuer, Certificate: g.Certificate, HasPrivateKey: true})
		}
	}
	if len(add) == 0 {
		return h
	}
	v := h.clone()
	v.Certificates = slices.DeleteFunc(v.Certificates, func(lc *localCertificate) bool {
		return slices.ContainsFunc(add, func(a *localCertificate) bool { return a.Thumbprint == lc.Thumbprint })
	})
	v.Certificates = append(v.Certificates, add...)
	return v
}

// Execute runs one operation against the simulated stores, refusing what
// the product's cmdlet would refuse. It writes the deployment store (and
// the host store) only when something changed.
func (s *Sim) Execute(ctx context.Context, cfg *pb.HostConfig, op reconcile.Op, secrets []*pb.SecretMaterial) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s on host %s: %w", op.Cmdlet, s.cfg.Host, err)
	}
	ds, old, err := s.readStore(cfg.GetDeployment())
	if err != nil {
		return err
	}
	if ds == nil {
		return fmt.Errorf("%s on host %s: deployment %s is not installed (no store)", op.Cmdlet, s.cfg.Host, cfg.GetDeployment())
	}
	ps, err := ds.productStore(cfg.GetProduct())
	if err != nil {
		return err
	}
	h := s.host.clone()
	if err := s.execute(ctx, cfg, op, secrets, ds, ps, h); err != nil {
		return err
	}
	if err := s.saveHost(h); err != nil {
		return err
	}
	_, err = writeStore(s.cfg.SharedDir, ds, old)
	return err
}

func (s *Sim) execute(ctx context.Context, cfg *pb.HostConfig, op reconcile.Op, secrets []*pb.SecretMaterial, ds *DeploymentStore, ps productStore, h *hostState) error {
	desc, _ := products.Describe(cfg.GetProduct())
	ctx = narrowed(ctx, cfg)
	switch op.Kind {
	case reconcile.KindImportIssuer:
		ic, err := s.importSecret(h, op.Secret, secrets)
		if err != nil {
			return err
		}
		if op.Thumbprint != "" && ic.Thumbprint != op.Thumbprint {
			return fmt.Errorf("import the token-issuer certificate from secret %s on host %s: it holds certificate %s, but the controller recorded %s", op.Secret, s.cfg.Host, ic.Thumbprint, op.Thumbprint)
		}
		if cfg.GetProduct() == pb.Product_PRODUCT_EXCHANGE {
			// Import-ExchangeCertificate puts it on this server only;
			// Set-AuthConfig (the next operation) makes it current.
			ds.Exchange.AuthCertificates = appendIssuer(ds.Exchange.AuthCertificates, ic)
			return nil
		}
		ps.setIssuer(ic)
		return nil

	case reconcile.KindAssignIssuer:
		lc := h.find(op.Thumbprint)
		if lc == nil {
			return fmt.Errorf("%s -Thumbprint %s on host %s: no certificate with that thumbprint in the local computer's Personal store", op.Cmdlet, op.Thumbprint, s.cfg.Host)
		}
		if !lc.HasPrivateKey {
			return fmt.Errorf("%s -Thumbprint %s on host %s: the certificate has no private key", op.Cmdlet, op.Thumbprint, s.cfg.Host)
		}
		keyPEM, err := s.keyPEM(op.Thumbprint)
		if err != nil {
			return err
		}
		held(h, op.Thumbprint)
		ic := &IssuerCertificate{Thumbprint: op.Thumbprint, Certificate: lc.Certificate, PrivateKey: string(keyPEM)}
		if ds.Exchange != nil {
			ds.Exchange.AuthCertificates = appendIssuer(ds.Exchange.AuthCertificates, ic)
		}
		ps.setIssuer(ic)
		return nil

	case reconcile.KindRemovePreviousIssuer:
		if o := ds.Exchange; o != nil {
			// Set-AuthConfig -ClearPreviousCertificate.
			if o.AuthConfig.PreviousCertificateThumbprint == "" {
				return fmt.Errorf("Set-AuthConfig -ClearPreviousCertificate on host %s: there is no previous certificate", s.cfg.Host)
			}
			o.AuthConfig.PreviousCertificateThumbprint = ""
			o.AuthCertificates = slices.DeleteFunc(o.AuthCertificates, func(c *IssuerCertificate) bool {
				return c.Thumbprint != o.AuthConfig.CurrentCertificateThumbprint && c.Thumbprint != o.AuthConfig.NextCertificateThumbprint
			})
			return nil
		}
		if ds.Lync == nil || ds.Lync.PreviousOAuthTokenIssuer == nil {
			return fmt.Errorf("Remove-CsCertificate -Previous on host %s: there is no previous OAuthTokenIssuer certificate", s.cfg.Host)
		}
		ds.Lync.PreviousOAuthTokenIssuer = nil
		return nil

	case reconcile.KindImportNextIssuer:
		// Import-ExchangeCertificate: into this server's store only; the
		// organization learns of it when Set-AuthConfig names it.
		ic, err := s.importPFX(h, op.Secret, secrets)
		if err != nil {
			return err
		}
		if op.Thumbprint != "" && ic.Thumbprint != op.Thumbprint {
			return fmt.Errorf("import the next issuer certificate from secret %s on host %s: it holds certificate %s, but the controller recorded %s", op.Secret, s.cfg.Host, ic.Thumbprint, op.Thumbprint)
		}
		return nil

	case reconcile.KindStageNextIssuer:
		return s.stageNext(cfg, op, secrets, ds, ps, h)

	case reconcile.KindActivateNextIssuer:
		return s.activateNext(op, secrets, ds, h)

	case reconcile.KindRefreshPartnerMetadata:
		cur, ok := findPartner(ps, op.Name)
		if !ok {
			return fmt.Errorf("%s -Identity %s on host %s: no such partner", op.Cmdlet, op.Name, s.cfg.Host)
		}
		// The cached copy changes only here (and when a partner is created
		// or re-pointed): a partner that never refreshes keeps what it
		// downloaded.
		fresh, err := s.download(ctx, desc, cur.URL, cur.AppID, "")
		if err != nil {
			return fmt.Errorf("%s -Identity %s on host %s: %w", op.Cmdlet, op.Name, s.cfg.Host, err)
		}
		cur.Certificates, cur.Realm = fresh.Certificates, fresh.Realm
		ps.upsert(cur)
		return nil

	case reconcile.KindSetOAuth:
		if ds.Lync == nil {
			return fmt.Errorf("%s on host %s: not a Lync deployment", op.Cmdlet, s.cfg.Host)
		}
		if op.ServiceName != "" {
			ds.Lync.OAuthConfiguration.ServiceName = op.ServiceName
		}
		if op.ExchangeAutodiscoverURL != "" {
			ds.Lync.OAuthConfiguration.ExchangeAutodiscoverURL = op.ExchangeAutodiscoverURL
		}
		return nil

	case reconcile.KindSetRealm:
		switch {
		case ds.Lync != nil:
			ds.Lync.OAuthConfiguration.Realm = op.Realm
		case ds.Exchange != nil:
			ds.Exchange.AuthConfig.Realm = op.Realm
		case ds.SharePoint != nil:
			ds.SharePoint.AuthenticationRealm = op.Realm
		}
		return nil

	case reconcile.KindRemovePartner:
		if !ps.remove(op.Name) {
			return fmt.Errorf("%s -Identity %s on host %s: no such partner", op.Cmdlet, op.Name, s.cfg.Host)
		}
		return nil

	case reconcile.KindNewPartner:
		if cfg.GetProduct() == pb.Product_PRODUCT_LYNC && slices.ContainsFunc(op.Params, func(p reconcile.Param) bool {
			return p.Name == "Realm" || p.Name == "ApplicationIdentifier"
		}) {
			// As PowerShell refuses it: -MetadataUrl is a parameter set of its own.
			return fmt.Errorf("New-CsPartnerApplication: Parameter set cannot be resolved using the specified named parameters (-MetadataUrl takes neither -Realm nor -ApplicationIdentifier)")
		}
		p := op.Partner
		if _, dup := findPartner(ps, op.Name); dup && !desc.MatchPartnersByURL {
			return fmt.Errorf("%s -Identity %s on host %s: a partner with that identity already exists", op.Cmdlet, op.Name, s.cfg.Host)
		}
		// Creating a partner downloads its metadata at once.
		v, err := s.download(ctx, desc, p.GetMetadataUrl(), p.GetApplicationIdentifier(), p.GetRealm())
		if err != nil {
			return err
		}
		v.Name, v.Trust, v.Enabled, v.Broker = op.Name, p.GetTrustLevel(), p.GetEnabled(), p.GetTrustBroker()
		if v.Trust == pb.TrustLevel_TRUST_LEVEL_UNSPECIFIED {
			v.Trust = pb.TrustLevel_TRUST_LEVEL_FULL
		}
		if op.Cmdlet == "Configure-EnterprisePartnerApplication.ps1" {
			// The script chooses the name itself; s2strust never relies on it.
			sum := sha256.Sum256([]byte(strings.ToLower(v.URL)))
			prefix := "LyncEnterprise-"
			if p.GetProduct() == pb.Product_PRODUCT_SHAREPOINT {
				prefix = "SharePointEnterprise-"
			}
			v.Name = prefix + hex.EncodeToString(sum[:4])
		}
		ps.upsert(v)
		return nil

	case reconcile.KindSetPartner:
		cur, ok := findPartner(ps, op.Name)
		if !ok {
			return fmt.Errorf("%s -Identity %s on host %s: no such partner", op.Cmdlet, op.Name, s.cfg.Host)
		}
		p := op.Partner
		next := cur
		for _, f := range op.Set {
			switch f {
			case desc.URLParameter:
				// A new metadata URL is downloaded at once; the Set fails as a whole when it cannot be.
				v, err := s.download(ctx, desc, p.GetMetadataUrl(), p.GetApplicationIdentifier(), p.GetRealm())
				if err != nil {
					return err
				}
				next.URL, next.Realm, next.AppID, next.Certificates = v.URL, v.Realm, v.AppID, v.Certificates
			case "ApplicationTrustLevel":
				next.Trust = p.GetTrustLevel()
				if next.Trust == pb.TrustLevel_TRUST_LEVEL_UNSPECIFIED {
					next.Trust = pb.TrustLevel_TRUST_LEVEL_FULL
				}
			case "Enabled":
				next.Enabled = p.GetEnabled()
			case "IsTrustBroker":
				next.Broker = p.GetTrustBroker()
			}
		}
		ps.upsert(next)
		return nil

	case reconcile.KindSetAppPermission:
		f := ds.SharePoint
		if f == nil {
			return fmt.Errorf("%s on host %s: not a SharePoint farm", op.Cmdlet, s.cfg.Host)
		}
		f.AppPrincipalPermissions = slices.DeleteFunc(f.AppPrincipalPermissions, func(a SPAppPrincipalPermission) bool {
			return strings.EqualFold(a.AppPrincipal, op.AppID)
		})
		f.AppPrincipalPermissions = append(f.AppPrincipalPermissions, SPAppPrincipalPermission{AppPrincipal: op.AppID, Scope: "SiteSubscription", Right: "FullControl", AppOnly: true})
		return nil

	case reconcile.KindSetSTS:
		if ds.SharePoint == nil {
			return fmt.Errorf("%s on host %s: not a SharePoint farm", op.Cmdlet, s.cfg.Host)
		}
		ds.SharePoint.AllowOAuthOverHTTP, ds.SharePoint.AllowMetadataOverHTTP = false, false
		return nil

	case reconcile.KindResetIIS:
		h.IISResets++
		if g := ps.issuer(); g != nil && ds.SharePoint == nil {
			h.IISIssuer = g.Thumbprint
		}
		return nil

	case reconcile.KindRestartTimer:
		// SharePoint's processes sign with the STS certificate they
		// started with until both IIS and the Timer Service restarted:
		// the sim counts the restart, which follows the IIS reset, as
		// the moment the server takes the farm's current one.
		if ds.SharePoint == nil {
			return fmt.Errorf("%s on host %s: not a SharePoint server", op.Cmdlet, s.cfg.Host)
		}
		h.TimerRestarts++
		if g := ps.issuer(); g != nil {
			h.IISIssuer = g.Thumbprint
		}
		return nil
	}
	return fmt.Errorf("host %s: the sim cannot run %s (%s)", s.cfg.Host, op.Cmdlet, op.Kind)
}

// importSecret imports a PFX secret into the host's store (as the cmdlet
// does on the host it runs on) and returns it as the deployment records
// it, key included: the product replicates it to the other servers.
func (s *Sim) importSecret(h *hostState, name string, secrets []*pb.SecretMaterial) (*IssuerCertificate, error) {
	ic, err := s.importPFX(h, name, secrets)
	if err != nil {
		return nil, err
	}
	h.IssuerSecret, h.IssuerSecretThumbprint = name, ic.Thumbprint
	return ic, nil
}

// stageNext stages the next token-issuer certificate, as Lync's
// Import-CsCertificate (or Set-CsCertificate) -Roll -EffectiveDate,
// Exchange's Set-AuthConfig -NewCertificateThumbprint
// -NewCertificateEffectiveDate or SharePoint's
// Set-SPSecurityTokenServiceConfig -QueueSigningCertificate do. The
// deployment then publishes it beside the current one.
func (s *Sim) stageNext(cfg *pb.HostConfig, op reconcile.Op, secrets []*pb.SecretMaterial, ds *DeploymentStore, ps productStore, h *hostState) error {
	if cur := ps.issuer(); cur != nil && cur.Thumbprint == op.Thumbprint {
		return fmt.Errorf("%s on host %s: certificate %s is already the current one", op.Cmdlet, s.cfg.Host, op.Thumbprint)
	}
	eff := op.EffectiveDate.UTC()
	switch {
	case ds.Lync != nil:
		if eff.IsZero() {
			return fmt.Errorf("%s -Roll on host %s: -EffectiveDate is required", op.Cmdlet, s.cfg.Host)
		}
		g := ds.Lync
		if op.Secret == "" {
			// Set-CsCertificate -Thumbprint -Roll: re-dates the staged one.
			if g.NextOAuthTokenIssuer == nil || g.NextOAuthTokenIssuer.Thumbprint != op.Thumbprint {
				return fmt.Errorf("Set-CsCertificate -Thumbprint %s -Roll on host %s: that certificate is not staged", op.Thumbprint, s.cfg.Host)
			}
			g.NextEffectiveDate = &eff
			return nil
		}
		// The CMS keeps it with its key and replicates it to every Front End.
		ic, err := s.importPFX(h, op.Secret, secrets)
		if err != nil {
			return err
		}
		if ic.Thumbprint != op.Thumbprint {
			return fmt.Errorf("%s on host %s: secret %s holds certificate %s, but the controller recorded %s", op.Cmdlet, s.cfg.Host, op.Secret, ic.Thumbprint, op.Thumbprint)
		}
		g.NextOAuthTokenIssuer, g.NextEffectiveDate = ic, &eff
		return nil
	case ds.Exchange != nil:
		// The certificate must be on this server; the organization records
		// the certificate, each server keeps its own key.
		lc := h.find(op.Thumbprint)
		if lc == nil || !lc.HasPrivateKey {
			return fmt.Errorf("Set-AuthConfig -NewCertificateThumbprint %s on host %s: no certificate with that thumbprint and its private key in the local computer's Personal store", op.Thumbprint, s.cfg.Host)
		}
		o := ds.Exchange
		o.AuthConfig.NextCertificateThumbprint = op.Thumbprint
		o.AuthConfig.NextCertificateEffectiveDate = nil
		if !eff.IsZero() {
			o.AuthConfig.NextCertificateEffectiveDate = &eff
		}
		o.AuthCertificates = appendIssuer(o.AuthCertificates, &IssuerCertificate{Thumbprint: op.Thumbprint, Certificate: lc.Certificate})
		slices.SortFunc(o.AuthCertificates, func(a, b *IssuerCertificate) int { return strings.Compare(a.Thumbprint, b.Thumbprint) })
		return nil
	case ds.SharePoint != nil:
		// The farm's configuration database keeps it with its key.
		ic, err := s.importPFX(h, op.Secret, secrets)
		if err != nil {
			return err
		}
		if ic.Thumbprint != op.Thumbprint {
			return fmt.Errorf("%s on host %s: secret %s holds certificate %s, but the controller recorded %s", op.Cmdlet, s.cfg.Host, op.Secret, ic.Thumbprint, op.Thumbprint)
		}
		ds.SharePoint.QueuedSigningCertificate = ic
		return nil
	}
	return fmt.Errorf("%s on host %s: a %s deployment has no next certificate", op.Cmdlet, s.cfg.Host, cfg.GetProduct())
}

// activateNext makes the staged certificate the one that signs: Exchange's
// Set-AuthConfig -PublishCertificate (the current one becomes the
// previous one), SharePoint's -ImportSigningCertificate of the queued one.
func (s *Sim) activateNext(op reconcile.Op, secrets []*pb.SecretMaterial, ds *DeploymentStore, h *hostState) error {
	switch {
	case ds.Exchange != nil:
		ac := &ds.Exchange.AuthConfig
		if ac.NextCertificateThumbprint == "" {
			return fmt.Errorf("Set-AuthConfig -PublishCertificate on host %s: no next certificate is configured", s.cfg.Host)
		}
		if op.Thumbprint != "" && ac.NextCertificateThumbprint != op.Thumbprint {
			return fmt.Errorf("Set-AuthConfig -PublishCertificate on host %s: the next certificate is %s, not %s", s.cfg.Host, ac.NextCertificateThumbprint, op.Thumbprint)
		}
		if lc := h.find(ac.NextCertificateThumbprint); lc == nil || !lc.HasPrivateKey {
			return fmt.Errorf("Set-AuthConfig -PublishCertificate on host %s: the next certificate %s is not installed on this server with its private key", s.cfg.Host, ac.NextCertificateThumbprint)
		}
		ac.PreviousCertificateThumbprint, ac.CurrentCertificateThumbprint = ac.CurrentCertificateThumbprint, ac.NextCertificateThumbprint
		ac.NextCertificateThumbprint, ac.NextCertificateEffectiveDate = "", nil
		return nil
	case ds.SharePoint != nil:
		ic, err := s.importSecret(h, op.Secret, secrets)
		if err != nil {
			return err
		}
		if op.Thumbprint != "" && ic.Thumbprint != op.Thumbprint {
			return fmt.Errorf("%s on host %s: secret %s holds certificate %s, but the controller recorded %s", op.Cmdlet, s.cfg.Host, op.Secret, ic.Thumbprint, op.Thumbprint)
		}
		f := ds.SharePoint
		if old := f.SecurityTokenServiceCertificate; old != nil && old.Thumbprint != ic.Thumbprint && f.replaced(old.Thumbprint) == nil {
			f.ReplacedSigningCertificates = append(f.ReplacedSigningCertificates, old)
		}
		f.SecurityTokenServiceCertificate = ic
		if f.QueuedSigningCertificate != nil && f.QueuedSigningCertificate.Thumbprint == ic.Thumbprint {
			f.QueuedSigningCertificate = nil
		}
		return nil
	}
	return fmt.Errorf("%s on host %s: this product activates a staged certificate by itself", op.Cmdlet, s.cfg.Host)
}

// importPFX imports a PFX secret into the host's store and returns it with
// its key.
func (s *Sim) importPFX(h *hostState, name string, secrets []*pb.SecretMaterial) (*IssuerCertificate, error) {
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
	keyPEM, err := encodeKey(b.Key)
	if err != nil {
		return nil, fmt.Errorf("import the token-issuer certificate from secret %s on host %s: %w", name, s.cfg.Host, err)
	}
	if _, err := s.install(h, b.Cert, keyPEM, friendlyIssuer); err != nil {
		return nil, err
	}
	held(h, t)
	return &IssuerCertificate{Thumbprint: t, Certificate: b.Cert.Raw, PrivateKey: string(keyPEM)}, nil
}

func appendIssuer(list []*IssuerCertificate, c *IssuerCertificate) []*IssuerCertificate {
	list = slices.DeleteFunc(list, func(x *IssuerCertificate) bool { return x.Thumbprint == c.Thumbprint })
	return append(list, c)
}

// download fetches a partner's metadata as the product does when it
// registers or re-points one: the partner's identifier and realm come from
// the document. A failure is the seed's error.
func (s *Sim) download(ctx context.Context, desc products.Descriptor, url, serviceName, realm string) (partnerView, error) {
	v := partnerView{URL: url, AppID: serviceName, Realm: realm, productFields: true}
	if s.cfg.FetchMetadata == nil {
		return v, nil
	}
	doc, list, err := s.cfg.FetchMetadata(ctx, url, serviceName, realm)
	if err == nil && len(list) == 0 {
		err = errors.New("the document has no signing keys")
	}
	if err != nil {
		return v, fmt.Errorf(metadataError, desc.URLParameter, err)
	}
	if doc != nil {
		if doc.ServiceName != "" {
			v.AppID = doc.ServiceName
		}
		if r := doc.EffectiveRealm(); r != "" {
			v.Realm = r
		}
	}
	for _, c := range list {
		v.Certificates = append(v.Certificates, c.Raw)
	}
	return v, nil
}

// installDeployment is the product's installation of a deployment: the first host of
// a deployment to apply anything finds the store as setup leaves it (an
// Exchange organization with its self-signed Auth Certificate and a blank
// realm; a SharePoint farm with its id, its realm the farm id, and its STS
// signing certificate; a Lync CMS with the default ServiceName). It is
// created only when absent: a store is never replaced by installing again.
func (s *Sim) installDeployment(cfg *pb.HostConfig) error {
	path, err := storePath(s.cfg.SharedDir, cfg.GetDeployment())
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	ds := &DeploymentStore{Deployment: cfg.GetDeployment()}
	if _, err := ds.productStore(cfg.GetProduct()); err != nil {
		return err
	}
	now := s.cfg.Now()
	switch {
	case ds.Lync != nil:
		ds.Lync.OAuthConfiguration.ServiceName = products.LyncID
	case ds.Exchange != nil:
		// Setup makes "CN=Microsoft Exchange Server Auth Certificate",
		// self-signed, valid five years, and copies it to every server.
		ic, err := generateIssuer(certs.Template{CommonName: friendlyExchangeAuth, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(5, 0, 0), KeyBits: 2048})
		if err != nil {
			return fmt.Errorf("install Exchange organization %s: %w", cfg.GetDeployment(), err)
		}
		ds.Exchange.AuthCertificates = []*IssuerCertificate{ic}
		ds.Exchange.AuthConfig.CurrentCertificateThumbprint = ic.Thumbprint
	case ds.SharePoint != nil:
		id, err := newGUID()
		if err != nil {
			return err
		}
		ic, err := generateIssuer(certs.Template{CommonName: friendlySharePoint, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0), KeyBits: 2048})
		if err != nil {
			return fmt.Errorf("install SharePoint farm %s: %w", cfg.GetDeployment(), err)
		}
		ds.SharePoint.FarmID, ds.SharePoint.AuthenticationRealm, ds.SharePoint.SecurityTokenServiceCertificate = id, id, ic
	}
	data, err := ds.encode()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("install deployment %s: %w", cfg.GetDeployment(), err)
	}
	tmp := path + ".install-" + s.cfg.Host
	if err := atomicfile.Write(tmp, data, 0o600); err != nil {
		return fmt.Errorf("install deployment %s: %w", cfg.GetDeployment(), err)
	}
	defer os.Remove(tmp)
	// A link fails when another host installed it first: that store stays.
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("install deployment %s: %w", cfg.GetDeployment(), err)
	}
	return nil
}

func generateIssuer(t certs.Template) (*IssuerCertificate, error) {
	b, err := certs.Generate(t)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(b.Key)
	if err != nil {
		return nil, err
	}
	return &IssuerCertificate{Thumbprint: certs.Thumbprint(b.Cert), Certificate: b.Cert.Raw, PrivateKey: string(keyPEM)}, nil
}

// newGUID returns a random (version 4) GUID in lower case, as a farm id.
func newGUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

// replicate is the product's own replication to this server, run when the
// agent applies: the deployment's issuer certificates with their keys
// (Lync's CMS replicating the global OAuthTokenIssuer, Exchange's AuthAdmin
// servicelet copying the Auth Certificate, the SharePoint farm's STS
// certificate). A copy removed behind the agent's back is found by the next
// verification (drift) and repaired here by the next apply.
func (s *Sim) replicate(h *hostState, ps productStore) error {
	for _, g := range ps.issuers() {
		if g.PrivateKey == "" {
			continue
		}
		if lc := h.find(g.Thumbprint); lc == nil || !lc.HasPrivateKey {
			if err := s.installReplicated(h, g); err != nil {
				return err
			}
		}
		held(h, g.Thumbprint)
	}
	return nil
}

// lyncDefault gives a Lync Front End the Default certificate the
// deployment wizard requests for it: CN the pool FQDN; SAN the pool, this
// Front End and the sip.<domain> names of every SIP domain. (Each Front
// End requests its own; the configuration no longer lists the pool's other
// Front Ends, whose names the certificate does not need.)
func (s *Sim) lyncDefault(h *hostState, cfg *pb.HostConfig) error {
	pool := cfg.GetEndpoint()
	if pool == "" {
		return nil
	}
	if lc := h.find(h.DefaultThumbprint); lc != nil {
		if c, err := x509.ParseCertificate(lc.Certificate); err == nil && strings.EqualFold(c.Subject.CommonName, pool) {
			return nil
		}
	}
	names := []string{pool, cfg.GetHost()}
	for _, d := range append([]string{cfg.GetDefaultSipDomain()}, cfg.GetAdditionalSipDomains()...) {
		if d != "" {
			names = append(names, "sip."+d)
		}
	}
	now := s.cfg.Now()
	b, err := certs.Generate(certs.Template{CommonName: pool, DNSNames: slices.Compact(names), NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(2, 0, 0), KeyBits: 2048})
	if err != nil {
		return fmt.Errorf("generate the Default certificate of host %s: %w", s.cfg.Host, err)
	}
	keyPEM, err := encodeKey(b.Key)
	if err != nil {
		return err
	}
	if _, err := s.install(h, b.Cert, keyPEM, friendlyDefault); err != nil {
		return err
	}
	h.DefaultThumbprint = certs.Thumbprint(b.Cert)
	return nil
}

// narrowed is ctx with the topology's metadataNetworks, so every metadata
// download and probe made for cfg dials only there (validated at apply;
// an unparsable prefix narrows nothing further).
func narrowed(ctx context.Context, cfg *pb.HostConfig) context.Context {
	networks, err := metadata.ParseNetworks(cfg.GetMetadataNetworks())
	if err != nil {
		return ctx
	}
	return metadata.WithAllowedNetworks(ctx, networks)
}
