package reconcile

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Item names beyond the driver package's: SharePoint's app principal
// permission for a partner deployment, its STS settings, and the IIS reset
// Exchange needs after a change (SharePoint, with a Timer Service restart,
// after its STS signing certificate changed).
const (
	ItemSTSConfiguration = "sts-configuration"
	ItemIISReset         = "iis-reset"
)

// AppPermissionItem is the item of SharePoint's app principal permission
// for a partner deployment's application.
func AppPermissionItem(deployment string) string { return "app-permission/" + deployment }

// PendingSuffix ends the message of a deployment-scope item a non-primary
// host waits for.
const PendingSuffix = " (waiting for the primary's change to replicate)"

// Input is what Plan and Check compare.
type Input struct {
	// Config is the host's desired configuration.
	Config *pb.HostConfig
	// State is the actual state the driver read.
	State *State
	// Secrets are the key material the push carried (only the thumbprints
	// are read: Plan never sees a password).
	Secrets []*pb.SecretMaterial
	// Now is the time the certificate rules are checked at.
	Now time.Time
}

// result is one item's comparison: what is wrong (problem), the operations
// that fix it, and a warning to show when it is otherwise fine.
type result struct {
	item string
	// deployment: a deployment-scope item, which only the primary fixes;
	// elsewhere a problem is PENDING (replication) rather than FAILED.
	deployment bool
	problem    string
	warning    string
	// pending: a host-scope problem that the product itself will fix
	// (the CMS replicating the issuer certificate to this Front End).
	pending bool
	ops     []Op
}

// Plan returns the operations that make in.State match in.Config, in the
// order they must run. On a host that is not its deployment's primary it
// returns host-scope operations only.
func Plan(in Input) []Op {
	var ops []Op
	for _, r := range compare(in) {
		ops = append(ops, r.ops...)
	}
	if in.Config.GetProduct() == pb.Product_PRODUCT_EXCHANGE && slices.ContainsFunc(ops, func(o Op) bool { return o.PrimaryOnly }) &&
		!slices.ContainsFunc(ops, func(o Op) bool { return o.Kind == KindResetIIS }) {
		// Microsoft advises an IIS reset after changing partner
		// applications or the auth configuration, so that every app pool
		// reads the new state.
		ops = append(ops, resetIIS("Exchange reads partner applications and the auth configuration at app pool start"))
	}
	return ops
}

// Check compares in.State with in.Config item by item: OK (with any
// warning as its message), FAILED, or PENDING when a non-primary host waits
// for its deployment's primary or the product's replication.
func Check(in Input) []*pb.ItemStatus {
	primary := in.Config.GetPrimary()
	var out []*pb.ItemStatus
	for _, r := range compare(in) {
		switch {
		case r.problem == "":
			out = append(out, &pb.ItemStatus{Item: r.item, State: pb.ItemState_ITEM_STATE_OK, Message: r.warning})
		case r.deployment && !primary:
			out = append(out, &pb.ItemStatus{Item: r.item, State: pb.ItemState_ITEM_STATE_PENDING, Message: r.problem + PendingSuffix})
		case r.pending:
			out = append(out, &pb.ItemStatus{Item: r.item, State: pb.ItemState_ITEM_STATE_PENDING, Message: r.problem})
		default:
			out = append(out, &pb.ItemStatus{Item: r.item, State: pb.ItemState_ITEM_STATE_FAILED, Message: r.problem})
		}
	}
	return out
}

// compare is the one comparison behind Plan and Check.
func compare(in Input) []result {
	cfg, st := in.Config, in.State
	if st == nil {
		st = &State{}
	}
	desc, _ := products.Describe(cfg.GetProduct())
	c := comparer{cfg: cfg, st: st, desc: desc, secrets: in.Secrets, now: in.Now, primary: cfg.GetPrimary()}
	var rs []result
	rs = append(rs, c.issuer()...)
	if cfg.GetNextTokenIssuer() != nil {
		rs = append(rs, c.nextIssuer())
	}
	if cfg.GetRetirePreviousIssuer() {
		rs = append(rs, c.retire())
	}
	rs = append(rs, c.oauth())
	rs = append(rs, c.removals()...)
	rs = append(rs, c.partners()...)
	if cfg.GetProduct() == pb.Product_PRODUCT_SHAREPOINT {
		rs = append(rs, c.sharePoint()...)
	}
	if r, ok := c.iisReset(); ok {
		rs = append(rs, r)
	}
	if !c.primary {
		// Deployment-scope changes are the primary's: drop their ops here.
		for i := range rs {
			rs[i].ops = slices.DeleteFunc(rs[i].ops, func(o Op) bool { return o.PrimaryOnly })
		}
	}
	return rs
}

type comparer struct {
	cfg     *pb.HostConfig
	st      *State
	desc    products.Descriptor
	secrets []*pb.SecretMaterial
	now     time.Time
	primary bool
}

func (c *comparer) host() string { return c.cfg.GetHost() }

// wantIssuer is the thumbprint the deployment's token issuer should have;
// "" when the topology leaves the issuer to the product or the primary's
// choice is not visible here.
func (c *comparer) wantIssuer() (thumbprint, source string) {
	switch src := c.cfg.GetTokenIssuer().GetSource().(type) {
	case *pb.TokenIssuer_Secret:
		for _, m := range c.secrets {
			if m.GetName() == src.Secret && m.GetThumbprint() != "" {
				t, _ := certs.NormalizeThumbprint(m.GetThumbprint())
				return t, "secret " + src.Secret
			}
		}
		t, _ := certs.NormalizeThumbprint(c.cfg.GetTokenIssuer().GetSecretThumbprint())
		if t == "" {
			t = c.st.ImportedSecrets[src.Secret]
		}
		if t == "" && !c.primary {
			// The primary imports it; this host trusts its replica.
			t = c.st.Issuer.Current
		}
		return t, "secret " + src.Secret
	case *pb.TokenIssuer_Thumbprint:
		t, _ := certs.NormalizeThumbprint(src.Thumbprint)
		return t, "thumbprint " + t
	case *pb.TokenIssuer_Existing:
		if c.primary {
			return c.st.DefaultThumbprint, "the " + src.Existing + " certificate"
		}
		return c.st.Issuer.Current, "the " + src.Existing + " certificate"
	}
	return "", ""
}

// issuer compares the token-issuer certificate: on the primary the
// deployment's setting, on every host the certificate in its own store
// with its private key, checked against Microsoft's certificate rules.
func (c *comparer) issuer() []result {
	r := result{item: driver.ItemIssuerCertificate}
	ti := c.cfg.GetTokenIssuer()
	want, source := c.wantIssuer()
	cur := c.st.Issuer.Current
	rolled := false
	switch next := c.nextWant(); {
	case want != "" && cur != want && next != "" && cur == next && c.st.Issuer.Previous == want:
		// Staged and rolled already (Lync's CMS rolls at the EffectiveDate
		// by itself): the wanted certificate is the previous one, still
		// accepted; the next one signs.
		rolled = true
	case want != "" && cur != want && c.st.Issuer.Next == want:
		// A rotation's activation: the wanted certificate is staged.
		return []result{c.activate(want, source)}
	}
	switch {
	case rolled:
	case ti.GetSecret() != "" && (want == "" || cur != want):
		r.problem = fmt.Sprintf("%s is %s, want the certificate of %s", c.desc.IssuerName, show(cur), source)
		if want != "" {
			r.problem = fmt.Sprintf("%s is %s, want %s (%s)", c.desc.IssuerName, show(cur), want, source)
		}
		r.deployment = true
		r.ops = c.importIssuer(ti.GetSecret(), want)
	case ti.GetExisting() != "" && c.primary && want == "":
		r.problem = fmt.Sprintf("host %s has no %s certificate (Get-CsCertificate -Type %s)", c.host(), ti.GetExisting(), ti.GetExisting())
	case want != "" && cur != want:
		r.problem = fmt.Sprintf("%s is %s, want %s (%s)", c.desc.IssuerName, show(cur), want, source)
		r.deployment = true
		r.ops = c.assignIssuer(want)
	case cur == "":
		r.problem = fmt.Sprintf("deployment %s has no token-issuer certificate (%s is not set); declare tokenIssuer in the topology", c.cfg.GetDeployment(), c.desc.IssuerName)
		r.deployment = true
	}
	out := []result{r}
	if r.problem != "" {
		return out
	}
	out[0] = c.localIssuer(r, cur)
	if rolled && out[0].problem == "" && out[0].warning == "" {
		out[0].warning = fmt.Sprintf("the next certificate %s became current at its EffectiveDate; %s is the previous one, still accepted", cur, want)
	}
	if prev := c.st.Issuer.Previous; prev != "" && c.cfg.GetProduct() == pb.Product_PRODUCT_LYNC && !c.cfg.GetRetirePreviousIssuer() &&
		!c.st.Issuer.PreviousNotAfter.IsZero() && c.now.After(c.st.Issuer.PreviousNotAfter) {
		// After a roll Lync keeps the previous certificate until it
		// expires; then it only clutters the store.
		out[0].ops = append(out[0].ops, c.removePrevious(driver.ItemIssuerCertificate, prev,
			fmt.Sprintf("the previous OAuthTokenIssuer certificate %s expired %s", prev, c.st.Issuer.PreviousNotAfter.UTC().Format(time.RFC3339))))
	}
	return out
}

// localIssuer checks that this host holds the current issuer certificate
// with its private key and that the certificate passes the rules.
func (c *comparer) localIssuer(r result, thumbprint string) result {
	lc := c.st.Find(thumbprint)
	switch {
	case lc == nil || !lc.HasPrivateKey:
		what := "does not hold"
		if lc != nil {
			what = "holds without its private key"
		}
		r.problem = fmt.Sprintf("host %s: the local certificate store %s the issuer certificate %s", c.host(), what, thumbprint)
		if lc == nil {
			r.problem += " with its private key"
			if other := c.sameSubject(); other != "" {
				r.problem += "; it holds " + other + " instead"
			}
		}
		return r
	case lc.Cert == nil:
		return r
	}
	// The rules the controller applied at apply, checked again on the host
	// (a certificate named by thumbprint or type never passed them there).
	errs, warns := c.rules(&Certificate{Thumbprint: lc.Thumbprint, Cert: lc.Cert, HasPrivateKey: true})
	if len(errs) > 0 {
		r.problem = fmt.Sprintf("host %s: issuer certificate %s: %s", c.host(), thumbprint, strings.Join(errs, "; "))
	}
	r.warning = strings.Join(warns, "; ")
	return r
}

// sameSubject names the local certificates with the subject of the
// deployment's issuer: what a host whose copy was swapped holds instead.
func (c *comparer) sameSubject() string {
	ic := c.st.IssuerCertificate
	if ic == nil {
		return ""
	}
	var out []string
	for _, lc := range c.st.Certificates {
		if lc.Cert != nil && lc.Thumbprint != c.st.Issuer.Current && lc.Cert.Subject.CommonName == ic.Subject.CommonName {
			out = append(out, lc.Thumbprint)
		}
	}
	if len(out) == 0 {
		return ""
	}
	return strings.Join(out, ", ") + " with the same subject CN=" + ic.Subject.CommonName
}

func (c *comparer) importIssuer(secret, thumbprint string) []Op {
	op := Op{Item: driver.ItemIssuerCertificate, Kind: KindImportIssuer, Secret: secret, Thumbprint: thumbprint, PrimaryOnly: true,
		Reason: "the token-issuer certificate of secret " + secret + " is not the deployment's issuer"}
	switch c.cfg.GetProduct() {
	case pb.Product_PRODUCT_LYNC:
		// Once, on the primary: the Central Management Store replicates the
		// global certificate (with its key) to every Front End.
		// https://learn.microsoft.com/powershell/module/skype/import-cscertificate
		op.Cmdlet = "Import-CsCertificate"
		// The -Identity/-Type parameter set has no -PrivateKeyExportable,
		// and its -Password is a plain string (never shown).
		op.Params = []Param{Str("Identity", "Global"), Raw("Type", "OAuthTokenIssuer"), Secret("Path"), Secret("Password")}
		return []Op{op}
	case pb.Product_PRODUCT_EXCHANGE:
		// https://learn.microsoft.com/powershell/module/exchange/import-exchangecertificate
		// https://learn.microsoft.com/powershell/module/exchange/set-authconfig
		// -PrivateKeyExportable $false, the cmdlet's default: what the
		// driver's one import script runs (exchange.ps1
		// import-exchange-certificate) and what a rotation's next
		// certificate shows. The key comes from the delivered secret,
		// never by exporting it from a server.
		op.Cmdlet = "Import-ExchangeCertificate"
		op.Params = []Param{Secret("FileData"), Secret("Password"), Bool("PrivateKeyExportable", false)}
		set := c.assignIssuer(thumbprint)
		return append([]Op{op}, set...)
	case pb.Product_PRODUCT_SHAREPOINT:
		// https://learn.microsoft.com/powershell/module/sharepoint-server/set-spsecuritytokenserviceconfig
		op.Cmdlet = "Set-SPSecurityTokenServiceConfig"
		op.Params = []Param{Secret("ImportSigningCertificate"), Bool("Confirm", false)}
		// Then, as Microsoft's "Replace the STS certificate" procedure
		// does on every server, an IIS reset and a Timer Service restart
		// here; the other servers restart once they see the new
		// certificate (iisReset).
		return append([]Op{op}, c.primaryRestartsSTS(op.Item)...)
	}
	return nil
}

// primaryRestartsSTS is, on a SharePoint farm's primary, the restarts that
// follow its change of the STS signing certificate; nothing elsewhere (a
// server that waits for the primary has nothing to restart yet).
func (c *comparer) primaryRestartsSTS(item string) []Op {
	if !c.primary {
		return nil
	}
	return resetSTS(item, stsRestartReason(c.host()))
}

func stsRestartReason(host string) string {
	return fmt.Sprintf("host %s: the IIS app pools and the SharePoint Timer Service sign with the STS certificate they started with until restarted", host)
}

func (c *comparer) assignIssuer(thumbprint string) []Op {
	op := Op{Item: driver.ItemIssuerCertificate, Kind: KindAssignIssuer, Thumbprint: thumbprint, PrimaryOnly: true,
		Reason: "the deployment's token issuer is not " + show(thumbprint)}
	switch c.cfg.GetProduct() {
	case pb.Product_PRODUCT_LYNC:
		// The seed's path for an existing certificate, the Default one included:
		// https://learn.microsoft.com/powershell/module/skype/set-cscertificate
		op.Cmdlet = "Set-CsCertificate"
		op.Params = []Param{Str("Identity", "global"), Raw("Type", "OAuthTokenIssuer"), Str("Thumbprint", thumbprint)}
	case pb.Product_PRODUCT_EXCHANGE:
		// https://learn.microsoft.com/powershell/module/exchange/set-authconfig
		op.Cmdlet = "Set-AuthConfig"
		op.Params = []Param{Str("CertificateThumbprint", thumbprint), Switch("Force")}
	case pb.Product_PRODUCT_SHAREPOINT:
		// https://learn.microsoft.com/powershell/module/sharepoint-server/set-spsecuritytokenserviceconfig
		// -ImportSigningCertificate takes a certificate object; a
		// certificate already in the machine store is named by thumbprint.
		op.Cmdlet = "Set-SPSecurityTokenServiceConfig"
		op.Params = []Param{Str("SigningCertificateThumbprint", thumbprint), Bool("Confirm", false)}
		return append([]Op{op}, c.primaryRestartsSTS(op.Item)...)
	default:
		return nil
	}
	return []Op{op}
}

// oauth compares the product's own OAuth settings. The realm is set only
// when the topology declares it for the deployment, and that is disruptive.
func (c *comparer) oauth() result {
	r := result{item: driver.ItemOAuthConfiguration, deployment: true}
	var diffs []string
	o := c.st.OAuth
	if c.cfg.GetProduct() == pb.Product_PRODUCT_LYNC {
		// https://learn.microsoft.com/powershell/module/skype/set-csoauthconfiguration
		set := Op{Item: r.item, Kind: KindSetOAuth, Cmdlet: "Set-CsOAuthConfiguration", PrimaryOnly: true}
		if want := c.desc.ServiceName; o.ServiceName != want {
			diffs = append(diffs, fmt.Sprintf("ServiceName is %s, want %s", show(o.ServiceName), want))
			set.ServiceName = want
			set.Params = append(set.Params, Str("ServiceName", want))
		}
		if want := c.cfg.GetExchangeAutodiscoverUrl(); want != "" && o.ExchangeAutodiscoverURL != want {
			diffs = append(diffs, fmt.Sprintf("ExchangeAutodiscoverUrl is %s, want %s", show(o.ExchangeAutodiscoverURL), want))
			set.ExchangeAutodiscoverURL = want
			set.Params = append(set.Params, Str("ExchangeAutodiscoverUrl", want))
		}
		if len(set.Params) > 0 {
			set.Reason = strings.Join(diffs, "; ")
			r.ops = append(r.ops, set)
		}
	}
	if want := c.cfg.GetRealm(); want != "" && o.Realm != want {
		d := fmt.Sprintf("Realm is %s, want %s", show(o.Realm), want)
		diffs = append(diffs, d)
		op := Op{Item: r.item, Kind: KindSetRealm, Realm: want, PrimaryOnly: true, Disruptive: true,
			Reason: d + "; tokens minted for the old realm stop being accepted"}
		switch c.cfg.GetProduct() {
		case pb.Product_PRODUCT_LYNC:
			op.Cmdlet, op.Params = "Set-CsOAuthConfiguration", []Param{Str("Realm", want)}
		case pb.Product_PRODUCT_EXCHANGE:
			// -Realm is for non-accepted domains only:
			// https://learn.microsoft.com/powershell/module/exchange/set-authconfig
			op.Cmdlet, op.Params = "Set-AuthConfig", []Param{Str("Realm", want)}
		case pb.Product_PRODUCT_SHAREPOINT:
			// Changing a live farm's realm breaks its existing app principals:
			// https://learn.microsoft.com/powershell/module/sharepoint-server/set-spauthenticationrealm
			op.Cmdlet, op.Params = "Set-SPAuthenticationRealm", []Param{Str("Realm", want), Bool("Confirm", false)}
		}
		if c.desc.RealmNeedsConfirmation && !c.cfg.GetConfirmRealmChange() {
			r.problem = fmt.Sprintf("%s: %s; setting it needs confirmRealmChange: true on deployment %s", c.desc.SettingsName, d, c.cfg.GetDeployment())
			return r
		}
		r.ops = append(r.ops, op)
	}
	if len(diffs) > 0 {
		r.problem = c.desc.SettingsName + ": " + strings.Join(diffs, "; ")
	}
	return r
}

// removals removes the stale partners the topology lists.
func (c *comparer) removals() []result {
	desired := map[string]bool{}
	for _, p := range c.cfg.GetPartners() {
		desired[strings.ToLower(p.GetName())] = true
	}
	var out []result
	for _, name := range c.cfg.GetRemovePartners() {
		r := result{item: driver.RemovePartnerItem(name), deployment: true}
		cur, found := c.byName(name)
		switch {
		case desired[strings.ToLower(name)]:
			r.problem = fmt.Sprintf("partner %s is listed for removal and is also a desired partner; it is left in place", name)
			r.deployment = false
		case found:
			r.problem = fmt.Sprintf("partner %s is still registered", cur.Name)
			r.ops = []Op{c.removeOp(r.item, cur.Name, "listed in removePartners")}
		}
		out = append(out, r)
	}
	return out
}

func (c *comparer) byName(name string) (Partner, bool) {
	for _, p := range c.st.Partners {
		if strings.EqualFold(p.Name, name) {
			return p, true
		}
	}
	return Partner{}, false
}

func (c *comparer) removeOp(item, name, reason string) Op {
	// https://learn.microsoft.com/powershell/module/skype/remove-cspartnerapplication
	// https://learn.microsoft.com/powershell/module/exchange/remove-partnerapplication
	// https://learn.microsoft.com/powershell/module/sharepoint-server/remove-sptrustedsecuritytokenissuer
	idParam := "Identity"
	return Op{Item: item, Kind: KindRemovePartner, Cmdlet: c.desc.RemovePartner, Name: name, PrimaryOnly: true, Reason: reason,
		Params: []Param{Str(idParam, name), Bool("Confirm", false)}}
}

// partners compares every desired partner with its registration.
func (c *comparer) partners() []result {
	var out []result
	claimed := map[string]bool{} // Exchange registrations matched so far
	for _, p := range c.cfg.GetPartners() {
		item := driver.PartnerItem(p.GetName())
		r := result{item: item, deployment: true}
		var cur Partner
		var found bool
		if c.desc.MatchPartnersByURL {
			cur, found = c.matchByURL(p, claimed)
		} else {
			cur, found = c.byName(p.GetName())
		}
		if !found {
			r.problem = fmt.Sprintf("partner %s: not registered", p.GetName())
			r.ops = []Op{c.newOp(item, p, "not registered")}
			out = append(out, r)
			continue
		}
		claimed[strings.ToLower(cur.Name)] = true
		recreate := ""
		if !strings.EqualFold(cur.ApplicationIdentifier, p.GetApplicationIdentifier()) {
			recreate = fmt.Sprintf("ApplicationIdentifier is %s, want %s", show(cur.ApplicationIdentifier), p.GetApplicationIdentifier())
		} else if want := p.GetRealm(); want != "" && cur.Realm != want {
			recreate = fmt.Sprintf("Realm is %s, want %s", show(cur.Realm), want)
		}
		if recreate != "" {
			// The seed's script: a partner with the wrong identifier is
			// removed and created again. Lync partners registered by
			// metadata URL take identifier and realm from the metadata and
			// have no Set -Realm, so a realm change is a re-creation too.
			r.problem = fmt.Sprintf("partner %s: %s", p.GetName(), recreate)
			r.ops = []Op{c.removeOp(item, cur.Name, recreate+"; re-created"), c.newOp(item, p, recreate)}
			out = append(out, r)
			continue
		}
		var diffs []string
		set := Op{Item: item, Kind: KindSetPartner, Cmdlet: c.desc.SetPartner, Name: cur.Name, Partner: p, PrimaryOnly: true,
			Params: []Param{Str("Identity", cur.Name)}}
		if !strings.EqualFold(cur.MetadataURL, p.GetMetadataUrl()) {
			diffs = append(diffs, fmt.Sprintf("%s is %s, want %s", c.desc.URLParameter, show(cur.MetadataURL), p.GetMetadataUrl()))
			set.Set = append(set.Set, c.desc.URLParameter)
			set.Params = append(set.Params, Str(c.desc.URLParameter, p.GetMetadataUrl()))
		}
		if c.desc.TrustLevels {
			want := p.GetTrustLevel()
			if want == pb.TrustLevel_TRUST_LEVEL_UNSPECIFIED {
				want = pb.TrustLevel_TRUST_LEVEL_FULL
			}
			if cur.TrustLevel != want {
				diffs = append(diffs, fmt.Sprintf("ApplicationTrustLevel is %s, want %s", show(products.TrustLevelName(cur.TrustLevel)), products.TrustLevelName(want)))
				set.Set = append(set.Set, "ApplicationTrustLevel")
				set.Params = append(set.Params, Raw("ApplicationTrustLevel", products.TrustLevelName(want)))
			}
		}
		if c.desc.PartnerEnabled && cur.Enabled != p.GetEnabled() {
			diffs = append(diffs, fmt.Sprintf("Enabled is %s, want %s", boolName(cur.Enabled), boolName(p.GetEnabled())))
			set.Set = append(set.Set, "Enabled")
			set.Params = append(set.Params, Bool("Enabled", p.GetEnabled()))
		}
		if c.cfg.GetProduct() == pb.Product_PRODUCT_SHAREPOINT && cur.TrustBroker != p.GetTrustBroker() {
			diffs = append(diffs, fmt.Sprintf("IsTrustBroker is %s, want %s", boolName(cur.TrustBroker), boolName(p.GetTrustBroker())))
			set.Set = append(set.Set, "IsTrustBroker")
			if p.GetTrustBroker() {
				set.Params = append(set.Params, Switch("IsTrustBroker"))
			} else {
				set.Params = append(set.Params, Bool("IsTrustBroker", false))
			}
		}
		if len(diffs) > 0 {
			set.Reason = strings.Join(diffs, "; ")
			set.Params = append(set.Params, Bool("Confirm", false))
			r.problem = fmt.Sprintf("partner %s: %s", p.GetName(), set.Reason)
			r.ops = []Op{set}
		}
		if exp := p.GetExpectedSigningThumbprints(); len(exp) > 0 {
			// A rotation of the partner's issuer: the cached copy of its
			// metadata must hold its current and next certificates.
			missing, bad := missingCached(cur.CachedThumbprints, exp)
			var d string
			switch {
			case len(bad) > 0:
				d = fmt.Sprintf("expected_signing_thumbprints has %s, which is not a thumbprint (40 hexadecimal digits)", strings.Join(bad, ", "))
				r.deployment = false
			case len(missing) > 0:
				d = fmt.Sprintf("the cached metadata from %s holds %s, lacking expected %s", show(cur.MetadataURL), list(cur.CachedThumbprints), strings.Join(missing, ", "))
				if !slices.Contains(set.Set, c.desc.URLParameter) {
					// A new URL downloads the document anyway.
					r.ops = append(r.ops, c.refreshOp(item, cur, p, d))
				}
			}
			if d != "" {
				if r.problem == "" {
					r.problem = fmt.Sprintf("partner %s: %s", p.GetName(), d)
				} else {
					r.problem += "; " + d
				}
			}
		}
		out = append(out, r)
	}
	return out
}

// matchByURL finds an Exchange partner application by identifier and
// metadata URL, never by a name s2strust invents: the script that creates
// them chooses their names. A registration with the right identifier and
// another URL, which no other desired partner matches, is the one to
// re-point.
func (c *comparer) matchByURL(p *pb.Partner, claimed map[string]bool) (Partner, bool) {
	var sameApp []Partner
	for _, cur := range c.st.Partners {
		if claimed[strings.ToLower(cur.Name)] || !strings.EqualFold(cur.ApplicationIdentifier, p.GetApplicationIdentifier()) {
			continue
		}
		if strings.EqualFold(cur.MetadataURL, p.GetMetadataUrl()) {
			return cur, true
		}
		sameApp = append(sameApp, cur)
	}
	others := 0
	for _, q := range c.cfg.GetPartners() {
		if q != p && strings.EqualFold(q.GetApplicationIdentifier(), p.GetApplicationIdentifier()) {
			others++
		}
	}
	if len(sameApp) == 1 && others == 0 {
		return sameApp[0], true
	}
	return Partner{}, false
}

// newOp registers partner p as the receiving product does.
func (c *comparer) newOp(item string, p *pb.Partner, reason string) Op {
	op := Op{Item: item, Kind: KindNewPartner, Name: p.GetName(), Partner: p, PrimaryOnly: true, Reason: reason, Cmdlet: c.desc.NewPartner}
	url := p.GetMetadataUrl()
	switch c.cfg.GetProduct() {
	case pb.Product_PRODUCT_LYNC:
		// The -MetadataUrl parameter set has no -Realm or
		// -ApplicationIdentifier: both come from the metadata.
		// https://learn.microsoft.com/powershell/module/skype/new-cspartnerapplication
		level := p.GetTrustLevel()
		if level == pb.TrustLevel_TRUST_LEVEL_UNSPECIFIED {
			level = pb.TrustLevel_TRUST_LEVEL_FULL
		}
		op.Params = []Param{Str("Identity", p.GetName()), Raw("ApplicationTrustLevel", products.TrustLevelName(level)), Str("MetadataUrl", url)}
		if !p.GetEnabled() {
			op.Params = append(op.Params, Bool("Enabled", false))
		}
	case pb.Product_PRODUCT_EXCHANGE:
		switch p.GetProduct() {
		case pb.Product_PRODUCT_LYNC, pb.Product_PRODUCT_SHAREPOINT:
			// The script Microsoft recommends; it names the partner itself and
			// creates the linked account with the UserApplication and
			// ArchiveApplication roles.
			// https://learn.microsoft.com/exchange/configure-partner-applications-exchange-2013-help
			appType := "Lync"
			if p.GetProduct() == pb.Product_PRODUCT_SHAREPOINT {
				appType = "SharePoint"
			}
			op.Params = []Param{Str("AuthMetadataUrl", url), Raw("ApplicationType", appType)}
		default:
			// https://learn.microsoft.com/powershell/module/exchange/new-partnerapplication
			op.Cmdlet = "New-PartnerApplication"
			op.Params = []Param{Str("Name", p.GetName()), Str("AuthMetadataUrl", url)}
		}
		if !p.GetEnabled() {
			op.Params = append(op.Params, Bool("Enabled", false))
		}
	case pb.Product_PRODUCT_SHAREPOINT:
		// Lync as a trust broker, Exchange as a self-issuer:
		// https://learn.microsoft.com/powershell/module/sharepoint-server/new-sptrustedsecuritytokenissuer
		op.Params = []Param{Str("Name", p.GetName()), Str("MetadataEndPoint", url)}
		if p.GetTrustBroker() {
			op.Params = append(op.Params, Switch("IsTrustBroker"))
		}
	}
	return op
}

// sharePoint compares the farm's app principal permission for Exchange and
// its STS settings.
func (c *comparer) sharePoint() []result {
	var out []result
	for _, p := range c.cfg.GetPartners() {
		if p.GetProduct() != pb.Product_PRODUCT_EXCHANGE {
			continue
		}
		r := result{item: AppPermissionItem(p.GetDeployment()), deployment: true}
		ok := slices.ContainsFunc(c.st.AppPermissions, func(a AppPermission) bool {
			return strings.EqualFold(a.AppID, p.GetApplicationIdentifier()) && strings.EqualFold(a.Scope, "SiteSubscription") &&
				strings.EqualFold(a.Right, "FullControl") && a.AppOnly
		})
		if !ok {
			r.problem = fmt.Sprintf("app principal %s has no SiteSubscription FullControl app-only permission, which Exchange needs to search SharePoint", p.GetApplicationIdentifier())
			// https://learn.microsoft.com/powershell/module/sharepoint-server/set-spappprincipalpermission
			r.ops = []Op{{Item: r.item, Kind: KindSetAppPermission, Cmdlet: "Set-SPAppPrincipalPermission", AppID: p.GetApplicationIdentifier(), PrimaryOnly: true,
				Reason: "Exchange's app principal lacks its permission",
				Params: []Param{Str("AppPrincipal", p.GetApplicationIdentifier()), Str("Site", c.cfg.GetEndpoint()), Raw("Scope", "SiteSubscription"), Raw("Right", "FullControl"), Switch("EnableAppOnlyPolicy")}}}
		}
		out = append(out, r)
	}
	if sts := c.st.STS; sts != nil {
		r := result{item: ItemSTSConfiguration, deployment: true}
		var diffs []string
		if sts.AllowOAuthOverHTTP {
			diffs = append(diffs, "AllowOAuthOverHttp is True, want False")
		}
		if sts.AllowMetadataOverHTTP {
			diffs = append(diffs, "AllowMetadataOverHttp is True, want False")
		}
		if len(diffs) > 0 {
			r.problem = "SPSecurityTokenServiceConfig: " + strings.Join(diffs, "; ") + " (S2S endpoints require SSL)"
			// https://learn.microsoft.com/powershell/module/sharepoint-server/set-spsecuritytokenserviceconfig
			// They are properties of the configuration object, not cmdlet
			// parameters: set and Update() it.
			r.ops = []Op{{Item: r.item, Kind: KindSetSTS, PrimaryOnly: true, Reason: strings.Join(diffs, "; "),
				Cmdlet: "$c = Get-SPSecurityTokenServiceConfig; $c.AllowOAuthOverHttp = $false; $c.AllowMetadataOverHttp = $false; $c.Update()"}}
		}
		out = append(out, r)
	}
	return out
}

func show(v string) string {
	if v == "" {
		return "(not set)"
	}
	return v
}

func boolName(b bool) string {
	if b {
		return "True"
	}
	return "False"
}
