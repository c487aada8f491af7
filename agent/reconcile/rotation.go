package reconcile

// Certificate rotation, as the agent carries it out and reports it (the
// controller's rotation gates on these report fields):
//
//   - stage (HostConfig.next_token_issuer = NEW): item
//     "next-issuer-certificate" is OK once the deployment records NEW as
//     its next certificate and, on every Exchange server, the server holds
//     NEW with its key (Import-ExchangeCertificate on each; the primary also
//     runs Set-AuthConfig -NewCertificateThumbprint; Lync's primary
//     Import-CsCertificate -Roll -EffectiveDate; SharePoint's primary
//     -QueueSigningCertificate). Non-primaries are PENDING until their
//     replica shows it. Report: oauth.next_issuer_thumbprint = NEW,
//     oauth.next_issuer_effective; the self MetadataCheck (partner "", url
//     https://<host><metadata path>) lists every key the host publishes.
//   - refresh (Partner.expected_signing_thumbprints): item
//     "partner/<name>" is OK once the cached copy holds every expected
//     thumbprint (report partners[].cached_thumbprints); the primary
//     refreshes, others are PENDING; a refresh that still misses one fails
//     the item naming the partner, its URL and what it publishes.
//   - activate (token_issuer = NEW while the deployment's next is NEW): item
//     "issuer-certificate": Lync PENDING with EffectiveDateWait until its
//     CMS rolls; Exchange Set-AuthConfig -PublishCertificate then a
//     disruptive iisreset (item "iis-reset" on every other server whose app
//     pools started with the old key, when the driver knows it); SharePoint
//     -ImportSigningCertificate, then on every server of the farm a
//     disruptive iisreset and SharePoint Timer Service restart (the
//     primary's right after the import; item "iis-reset" on every other
//     server whose processes started with the old certificate). Report:
//     oauth.issuer_thumbprint = NEW, oauth.previous_issuer_thumbprint = OLD
//     (Lync, Exchange).
//   - retire (retire_previous_issuer): item "previous-issuer-certificate"
//     OK once the deployment keeps no previous certificate
//     (oauth.previous_issuer_thumbprint empty).

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/internal/certs"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// The items of a certificate rotation beside the issuer certificate's.
const (
	// ItemNextIssuer is the staged next token-issuer certificate
	// (HostConfig.next_token_issuer): OK once the deployment records it as
	// its next certificate (so its metadata publishes it) and, on an
	// Exchange server, the server holds it with its private key.
	ItemNextIssuer = "next-issuer-certificate"
	// ItemPreviousIssuer is the retirement of the previous token-issuer
	// certificate (HostConfig.retire_previous_issuer): OK once the
	// deployment keeps none.
	ItemPreviousIssuer = "previous-issuer-certificate"
)

// EffectiveDateWait is in the message of an item that is PENDING because
// the product itself changes it at a scheduled date (a Lync roll at its
// EffectiveDate), not because another host has yet to act: an agent does
// not give up waiting on it.
const EffectiveDateWait = "waits for EffectiveDate"

// nextWant is the thumbprint of the next token-issuer certificate the
// configuration stages, "" when it stages none or its certificate is not
// known here.
func (c *comparer) nextWant() string {
	n := c.cfg.GetNextTokenIssuer()
	if n == nil {
		return ""
	}
	for _, m := range c.secrets {
		if m.GetName() == n.GetSecret() && n.GetSecret() != "" && m.GetThumbprint() != "" {
			t, _ := certs.NormalizeThumbprint(m.GetThumbprint())
			return t
		}
	}
	t, _ := certs.NormalizeThumbprint(n.GetSecretThumbprint())
	return t
}

// nextName is how the product calls its next (staged) issuer setting.
func nextName(p pb.Product) string {
	switch p {
	case pb.Product_PRODUCT_LYNC:
		return "the next (rolled) OAuthTokenIssuer certificate"
	case pb.Product_PRODUCT_EXCHANGE:
		return "AuthConfig NextCertificateThumbprint"
	case pb.Product_PRODUCT_SHAREPOINT:
		return "the STS queued signing certificate"
	}
	return "the next issuer certificate"
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "(no date)"
	}
	return t.UTC().Format(time.RFC3339)
}

// nextIssuer compares the staged next certificate: the deployment's next
// issuer setting (primary; PENDING elsewhere), and on an Exchange server its
// own copy with the private key (every server, host scope).
func (c *comparer) nextIssuer() result {
	r := result{item: ItemNextIssuer, deployment: true}
	n := c.cfg.GetNextTokenIssuer()
	next := c.nextWant()
	p := c.cfg.GetProduct()
	var eff time.Time
	if n.GetEffective() != nil {
		eff = n.GetEffective().AsTime().UTC()
	}
	if next == "" {
		r.deployment = false
		r.problem = fmt.Sprintf("next_token_issuer names secret %s, but the thumbprint of its certificate is not known here (secret_thumbprint %s; the secret was not delivered)",
			show(n.GetSecret()), show(n.GetSecretThumbprint()))
		return r
	}
	is := c.st.Issuer
	if is.Current == next {
		// Already the one that signs (Lync rolled at its EffectiveDate, or
		// the activation ran): nothing left to stage.
		return r
	}
	var problems []string
	if p == pb.Product_PRODUCT_EXCHANGE {
		// Each Exchange server signs with its own copy of the key:
		// Import-ExchangeCertificate on every server, not only where
		// Set-AuthConfig runs.
		if lc := c.st.Find(next); lc == nil || !lc.HasPrivateKey {
			r.deployment = false
			what := "does not hold"
			if lc != nil {
				what = "holds without its private key"
			}
			problems = append(problems, fmt.Sprintf("host %s: the local certificate store %s the next auth certificate %s", c.host(), what, next))
			if n.GetSecret() != "" {
				// https://learn.microsoft.com/powershell/module/exchange/import-exchangecertificate
				r.ops = append(r.ops, Op{Item: r.item, Kind: KindImportNextIssuer, Cmdlet: "Import-ExchangeCertificate",
					Params: []Param{Secret("FileData"), Secret("Password"), Bool("PrivateKeyExportable", false)},
					Secret: n.GetSecret(), Thumbprint: next, Reason: "this Exchange server lacks the next auth certificate " + next})
			}
		}
	}
	switch {
	case is.Next != next:
		problems = append(problems, fmt.Sprintf("%s is %s, want %s (secret %s, effective %s)", nextName(p), show(is.Next), next, show(n.GetSecret()), stamp(eff)))
		op, err := c.stageOp(next, n.GetSecret(), eff)
		if err != "" {
			r.deployment = false
			problems = append(problems, err)
		} else {
			r.ops = append(r.ops, op)
		}
	case p != pb.Product_PRODUCT_SHAREPOINT && !eff.IsZero() && !is.NextEffective.IsZero() && !is.NextEffective.Truncate(time.Second).Equal(eff.Truncate(time.Second)):
		problems = append(problems, fmt.Sprintf("%s %s becomes current at %s, want %s", nextName(p), next, stamp(is.NextEffective), stamp(eff)))
		op, err := c.stageOp(next, "", eff)
		if err == "" {
			r.ops = append(r.ops, op)
		}
	}
	if len(problems) == 0 {
		// Staged: the rules, checked again on the host where it is (the
		// Lync CMS and the SharePoint farm replicate it with its key).
		if lc := c.st.Find(next); lc != nil && lc.Cert != nil {
			if errs, _ := c.rules(lc); len(errs) > 0 {
				r.deployment = false
				problems = append(problems, fmt.Sprintf("host %s: next issuer certificate %s: %s", c.host(), next, strings.Join(errs, "; ")))
			}
		}
	}
	r.problem = strings.Join(problems, "; ")
	return r
}

// rules applies the certificate rules to a local certificate: the errors
// and the warnings.
func (c *comparer) rules(lc *Certificate) (errs, warns []string) {
	for _, f := range certs.Check(lc.Cert, lc.HasPrivateKey, certs.RequirementsFor(c.cfg, c.now)) {
		if f.Severity == certs.SeverityError {
			errs = append(errs, f.Message)
		} else {
			warns = append(warns, f.Message)
		}
	}
	return errs, warns
}

// stageOp stages next (from secret when set) effective at eff; a non-empty
// string says why it cannot be.
func (c *comparer) stageOp(next, secret string, eff time.Time) (Op, string) {
	op := Op{Item: ItemNextIssuer, Kind: KindStageNextIssuer, Thumbprint: next, Secret: secret, EffectiveDate: eff, PrimaryOnly: true,
		Reason: fmt.Sprintf("stage %s as the next token-issuer certificate, effective %s", next, stamp(eff))}
	switch c.cfg.GetProduct() {
	case pb.Product_PRODUCT_LYNC:
		if eff.IsZero() {
			return op, fmt.Sprintf("next_token_issuer %s has no effective date: Lync's -Roll needs -EffectiveDate", next)
		}
		if secret != "" {
			// The Identity/Type parameter set with -Roll -EffectiveDate:
			// imported once, on the primary; the CMS replicates it with its
			// key and rolls to it at the EffectiveDate.
			// https://learn.microsoft.com/powershell/module/skype/import-cscertificate
			op.Cmdlet = "Import-CsCertificate"
			op.Params = []Param{Str("Identity", "Global"), Raw("Type", "OAuthTokenIssuer"), Secret("Path"), Secret("Password"), Switch("Roll"), Date("EffectiveDate", eff)}
			return op, ""
		}
		// Re-dating a staged certificate (the Thumbprint parameter set has
		// -Roll and -EffectiveDate too):
		// https://learn.microsoft.com/powershell/module/skype/set-cscertificate
		op.Cmdlet = "Set-CsCertificate"
		op.Params = []Param{Str("Identity", "Global"), Raw("Type", "OAuthTokenIssuer"), Str("Thumbprint", next), Switch("Roll"), Date("EffectiveDate", eff)}
		return op, ""
	case pb.Product_PRODUCT_EXCHANGE:
		// The NewCertificateParameter set; the certificate must be on the
		// server the cmdlet runs on (KindImportNextIssuer before it).
		// https://learn.microsoft.com/powershell/module/exchange/set-authconfig
		op.Cmdlet = "Set-AuthConfig"
		op.Params = []Param{Str("NewCertificateThumbprint", next)}
		if !eff.IsZero() {
			op.Params = append(op.Params, Date("NewCertificateEffectiveDate", eff))
		}
		op.Params = append(op.Params, Switch("Force"))
		return op, ""
	case pb.Product_PRODUCT_SHAREPOINT:
		if secret == "" {
			return op, "SharePoint's queued signing certificate has no effective date to change"
		}
		// https://learn.microsoft.com/powershell/module/sharepoint-server/set-spsecuritytokenserviceconfig
		op.Cmdlet = "Set-SPSecurityTokenServiceConfig"
		op.Params = []Param{Secret("QueueSigningCertificate"), Bool("Confirm", false)}
		return op, ""
	}
	return op, "no product to stage a next certificate on"
}

// activate is the issuer item when the wanted certificate is the staged
// next one: the product's activation, never a fresh import.
func (c *comparer) activate(want, source string) result {
	r := result{item: driver.ItemIssuerCertificate, deployment: true}
	cur := c.st.Issuer.Current
	r.problem = fmt.Sprintf("%s is %s, want %s (%s), staged as the next certificate", c.desc.IssuerName, show(cur), want, source)
	switch c.cfg.GetProduct() {
	case pb.Product_PRODUCT_LYNC:
		// The CMS makes the rolled certificate current at its
		// EffectiveDate by itself; nothing to run.
		// https://learn.microsoft.com/powershell/module/skype/set-cscertificate
		// Every Front End waits for the date, not for the primary.
		r.pending, r.deployment = true, false
		if eff := c.st.Issuer.NextEffective; eff.IsZero() || c.now.Before(eff) {
			r.problem += fmt.Sprintf("; Lync makes it current at its EffectiveDate: %s %s", EffectiveDateWait, stamp(eff))
		} else {
			r.problem += fmt.Sprintf("; its EffectiveDate %s has passed: waits for the Central Management Store's roll", stamp(eff))
		}
	case pb.Product_PRODUCT_EXCHANGE:
		if lc := c.st.Find(want); lc == nil || !lc.HasPrivateKey {
			r.deployment = false
			r.problem = fmt.Sprintf("host %s: the local certificate store does not hold the staged auth certificate %s with its private key; ", c.host(), want) + r.problem
			if s := c.cfg.GetTokenIssuer().GetSecret(); s != "" {
				// https://learn.microsoft.com/powershell/module/exchange/import-exchangecertificate
				r.ops = append(r.ops, Op{Item: r.item, Kind: KindImportNextIssuer, Cmdlet: "Import-ExchangeCertificate",
					Params: []Param{Secret("FileData"), Secret("Password"), Bool("PrivateKeyExportable", false)},
					Secret: s, Thumbprint: want, Reason: "this Exchange server lacks the auth certificate " + want})
			}
		}
		// The PublishAuthCertificateParameter set: the next certificate
		// becomes current, the current one the previous one.
		// https://learn.microsoft.com/powershell/module/exchange/set-authconfig
		r.ops = append(r.ops, Op{Item: r.item, Kind: KindActivateNextIssuer, Cmdlet: "Set-AuthConfig", Thumbprint: want, PrimaryOnly: true,
			Params: []Param{Switch("PublishCertificate"), Bool("Confirm", false)},
			Reason: "publish the staged auth certificate " + want + " as the current one"})
	case pb.Product_PRODUCT_SHAREPOINT:
		s := c.cfg.GetTokenIssuer().GetSecret()
		if s == "" {
			r.ops = c.assignIssuer(want)
			break
		}
		// Microsoft's procedure makes the new certificate the signing one
		// with -ImportSigningCertificate:
		// https://learn.microsoft.com/sharepoint/administration/replace-the-sts-certificate
		// https://learn.microsoft.com/powershell/module/sharepoint-server/set-spsecuritytokenserviceconfig
		// The same page then resets IIS and restarts the Timer Service
		// on every server: here on the primary, right after; elsewhere
		// once the server sees the farm's new certificate (iisReset).
		r.ops = append(r.ops, Op{Item: r.item, Kind: KindActivateNextIssuer, Cmdlet: "Set-SPSecurityTokenServiceConfig", Secret: s, Thumbprint: want, PrimaryOnly: true,
			Params: []Param{Secret("ImportSigningCertificate"), Bool("Confirm", false)},
			Reason: "make the queued signing certificate " + want + " the STS's signing certificate"})
		r.ops = append(r.ops, c.primaryRestartsSTS(r.item)...)
	}
	return r
}

// retire removes the previous issuer certificate the deployment keeps
// after a roll or a publish.
func (c *comparer) retire() result {
	r := result{item: ItemPreviousIssuer, deployment: true}
	prev := c.st.Issuer.Previous
	if prev == "" {
		return r
	}
	r.problem = fmt.Sprintf("the previous issuer certificate %s is still kept beside the current %s; retire_previous_issuer asks to remove it", prev, show(c.st.Issuer.Current))
	switch c.cfg.GetProduct() {
	case pb.Product_PRODUCT_LYNC:
		r.ops = []Op{c.removePrevious(ItemPreviousIssuer, prev, "retire_previous_issuer: retire "+prev)}
	case pb.Product_PRODUCT_EXCHANGE:
		// https://learn.microsoft.com/powershell/module/exchange/set-authconfig
		r.ops = []Op{{Item: r.item, Kind: KindRemovePreviousIssuer, Cmdlet: "Set-AuthConfig", Thumbprint: prev, PrimaryOnly: true,
			Params: []Param{Switch("ClearPreviousCertificate"), Bool("Confirm", false)},
			Reason: "retire_previous_issuer: retire " + prev}}
	default:
		// A SharePoint farm keeps no previous signing certificate.
		r.problem = ""
	}
	return r
}

func (c *comparer) removePrevious(item, prev, reason string) Op {
	// https://learn.microsoft.com/powershell/module/skype/remove-cscertificate
	return Op{
		Item: item, Kind: KindRemovePreviousIssuer, Cmdlet: "Remove-CsCertificate",
		Params:      []Param{Str("Identity", "Global"), Raw("Type", "OAuthTokenIssuer"), Switch("Previous"), Bool("Confirm", false)},
		Reason:      reason,
		PrimaryOnly: true, Thumbprint: prev,
	}
}

// iisReset is, on an Exchange server whose IIS app pools started with
// another issuer than the organization's current one, the reset that makes
// them sign with it; on a SharePoint server whose IIS app pools and Timer
// Service started with another STS signing certificate than the farm's,
// the IIS reset and Timer Service restart that do. Host scope, disruptive.
func (c *comparer) iisReset() (result, bool) {
	cur, started := c.st.Issuer.Current, c.st.IISIssuer
	if started == "" || cur == "" || started == cur {
		return result{}, false
	}
	switch c.cfg.GetProduct() {
	case pb.Product_PRODUCT_EXCHANGE:
		reason := fmt.Sprintf("host %s: the IIS app pools started with auth certificate %s; the organization's current one is %s", c.host(), started, cur)
		return result{item: ItemIISReset, problem: reason, ops: []Op{resetIIS(reason)}}, true
	case pb.Product_PRODUCT_SHAREPOINT:
		reason := fmt.Sprintf("host %s: the IIS app pools and the SharePoint Timer Service started with STS signing certificate %s; the farm's current one is %s", c.host(), started, cur)
		return result{item: ItemIISReset, problem: reason, ops: resetSTS(ItemIISReset, reason)}, true
	}
	return result{}, false
}

// resetSTS is what Microsoft's "Replace the STS certificate" procedure
// runs on every server of the farm after -ImportSigningCertificate: an IIS
// reset, then a restart of the SharePoint Timer Service (SPTimerV4). item:
// the activation's own item on the primary (skipped when it fails), else
// ItemIISReset.
// https://learn.microsoft.com/sharepoint/administration/replace-the-sts-certificate
func resetSTS(item, reason string) []Op {
	iis := resetIIS(reason)
	iis.Item = item
	return []Op{
		iis,
		// https://learn.microsoft.com/powershell/module/microsoft.powershell.management/restart-service
		{Item: item, Kind: KindRestartTimer, Cmdlet: "Restart-Service", Params: []Param{Str("Name", "SPTimerV4")}, Reason: reason, Disruptive: true},
	}
}

func resetIIS(reason string) Op {
	// https://learn.microsoft.com/exchange/configure-partner-applications-exchange-2013-help
	return Op{Item: ItemIISReset, Kind: KindResetIIS, Cmdlet: "iisreset", Params: []Param{Switch("noforce")}, Reason: reason, Disruptive: true}
}

// missingCached returns the expected thumbprints the cached copy lacks, and
// the expected values that are no thumbprint.
func missingCached(cached, expected []string) (missing, bad []string) {
	for _, e := range expected {
		t, err := certs.NormalizeThumbprint(e)
		if err != nil {
			bad = append(bad, e)
			continue
		}
		if !slices.ContainsFunc(cached, func(x string) bool { return strings.EqualFold(x, t) }) {
			missing = append(missing, t)
		}
	}
	return missing, bad
}

func list(ts []string) string {
	if len(ts) == 0 {
		return "no signing certificate"
	}
	return strings.Join(ts, ", ")
}

// refreshOp downloads a registered partner's metadata again, as its product does.
func (c *comparer) refreshOp(item string, cur Partner, p *pb.Partner, reason string) Op {
	op := Op{Item: item, Kind: KindRefreshPartnerMetadata, Name: cur.Name, Partner: p, PrimaryOnly: true, Reason: reason}
	url := cur.MetadataURL
	if url == "" {
		url = p.GetMetadataUrl()
	}
	switch c.cfg.GetProduct() {
	case pb.Product_PRODUCT_EXCHANGE:
		// The RefreshAuthMetadata parameter set.
		// https://learn.microsoft.com/powershell/module/exchange/set-partnerapplication
		op.Cmdlet = "Set-PartnerApplication"
		op.Params = []Param{Str("Identity", cur.Name), Switch("RefreshAuthMetadata"), Bool("Confirm", false)}
	case pb.Product_PRODUCT_LYNC:
		// The MetadataUrl parameter set: setting the URL downloads the
		// document again.
		// https://learn.microsoft.com/powershell/module/skype/set-cspartnerapplication
		op.Cmdlet = "Set-CsPartnerApplication"
		op.Params = []Param{Str("Identity", cur.Name), Str("MetadataUrl", url), Bool("Confirm", false)}
	case pb.Product_PRODUCT_SHAREPOINT:
		// The MetadataEndPoint parameter set re-reads the issuer's
		// metadata and its signing certificate.
		// https://learn.microsoft.com/powershell/module/sharepoint-server/set-sptrustedsecuritytokenissuer
		op.Cmdlet = "Set-SPTrustedSecurityTokenIssuer"
		op.Params = []Param{Str("Identity", cur.Name), Str("MetadataEndPoint", url), Bool("Confirm", false)}
	}
	return op
}

// rotationSecretKinds are the operations that take a certificate from a
// PFX secret during a rotation: Apply checks it against the certificate
// rules before running them.
var rotationSecretKinds = []Kind{KindImportNextIssuer, KindStageNextIssuer, KindActivateNextIssuer}

// checkSecret loads op's secret and applies the certificate rules to its
// certificate, as the controller did: a certificate that breaks one is
// refused here too, naming the rule, before the product sees it.
func checkSecret(cfg *pb.HostConfig, op Op, secrets []*pb.SecretMaterial, now time.Time) error {
	i := slices.IndexFunc(secrets, func(m *pb.SecretMaterial) bool { return m.GetName() == op.Secret })
	if i < 0 {
		return fmt.Errorf("%s on host %s: secret %s was not delivered", op.Cmdlet, cfg.GetHost(), op.Secret)
	}
	b, err := certs.LoadPFX(secrets[i].GetPfx(), secrets[i].GetPassword())
	if err != nil {
		return fmt.Errorf("%s on host %s: secret %s: %w", op.Cmdlet, cfg.GetHost(), op.Secret, err)
	}
	t := certs.Thumbprint(b.Cert)
	if op.Thumbprint != "" && t != op.Thumbprint {
		return fmt.Errorf("%s on host %s: secret %s holds certificate %s, but the controller recorded %s", op.Cmdlet, cfg.GetHost(), op.Secret, t, op.Thumbprint)
	}
	var errs []string
	for _, f := range certs.Check(b.Cert, b.Key != nil, certs.RequirementsFor(cfg, now)) {
		if f.Severity == certs.SeverityError {
			errs = append(errs, f.Message)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s on host %s: the certificate of secret %s breaks the certificate rules: %s", op.Cmdlet, cfg.GetHost(), op.Secret, strings.Join(errs, "; "))
	}
	return nil
}

// checkRefreshed reads the state again after a partner's metadata was
// refreshed: the cached copy must now hold every expected thumbprint, or
// the partner does not publish them.
func checkRefreshed(ctx context.Context, b Backend, cfg *pb.HostConfig, op Op) error {
	st, err := b.Read(ctx, cfg)
	if err != nil {
		return fmt.Errorf("partner %s: read after refreshing its metadata: %w", op.Name, err)
	}
	i := slices.IndexFunc(st.Partners, func(p Partner) bool { return strings.EqualFold(p.Name, op.Name) })
	if i < 0 {
		return fmt.Errorf("partner %s: not registered after refreshing its metadata", op.Name)
	}
	cur := st.Partners[i]
	missing, _ := missingCached(cur.CachedThumbprints, op.Partner.GetExpectedSigningThumbprints())
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("partner %s (%s %s): after refreshing, the cached metadata holds %s, which is what %s publishes now; expected %s is not published there",
		op.Name, op.Partner.GetDeployment(), cur.MetadataURL, list(cur.CachedThumbprints), cur.MetadataURL, strings.Join(missing, ", "))
}
