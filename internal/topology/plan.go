package topology

import (
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Plan item actions.
const (
	ActionCreate = "create"
	ActionUpdate = "update"
	ActionRemove = "remove"
)

// Plan item names.
const (
	// ItemHost is the host's membership of its deployment and the
	// deployment's settings: product, version, endpoint, metadata URL,
	// SIP domains.
	ItemHost = "host"
	// ItemOAuthConfiguration is the product's own OAuth settings: service
	// name, realm, Exchange autodiscover URL.
	ItemOAuthConfiguration = "oauth-configuration"
	// ItemTokenIssuer is the deployment's token-issuer certificate.
	ItemTokenIssuer = "token-issuer"
	// ItemTrustProbes is where a host's trust probes go: the deployments
	// that trust its own (HostConfig.trusted_by).
	ItemTrustProbes = "trust-probes"
	// ItemPartnerPrefix starts the item of each partner, e.g. "partner/microsoft.exchange".
	ItemPartnerPrefix = "partner/"
)

// Plan describes what changes on each host going from one compilation to
// another, one HostPlan per host of either, sorted by host. Each item says
// what changes and how, in the product's own PowerShell where it has one,
// e.g. `New-CsPartnerApplication -Identity microsoft.exchange -MetadataUrl
// https://… -ApplicationTrustLevel Full`. A host only in to gets every item
// it needs (its stale partners as removals); a host only in from gets one
// "host" removal; an unchanged host gets no items, and a changed one at
// least one. Primary is ignored, also
// in the hashes, since the controller moves it without a new revision.
func Plan(from, to []*pb.HostConfig) []*pb.HostPlan {
	fm, tm := byHost(from), byHost(to)
	hosts := make([]string, 0, len(tm))
	for h := range tm {
		hosts = append(hosts, h)
	}
	for h := range fm {
		if _, ok := tm[h]; !ok {
			hosts = append(hosts, h)
		}
	}
	sort.Strings(hosts)
	plans := make([]*pb.HostPlan, len(hosts))
	// Each host's plan is its own (two hashes and a diff): at 10,000
	// hosts, a commit's plan is spread over the CPUs.
	forEachChunk(len(hosts), func(i int) {
		plans[i] = planHost(hosts[i], fm[hosts[i]], tm[hosts[i]])
	})
	return plans
}

// planHost is the plan of host h from configuration f to t (either nil
// when the host is only in the other).
func planHost(h string, f, t *pb.HostConfig) *pb.HostPlan {
	hp := &pb.HostPlan{Host: h}
	if f != nil {
		hp.Deployment, hp.Product, hp.FromHash = f.Deployment, f.Product, planHash(f)
	}
	if t != nil {
		hp.Deployment, hp.Product, hp.ToHash = t.Deployment, t.Product, planHash(t)
	}
	if t == nil {
		hp.Items = []*pb.PlanItem{{
			Item:   ItemHost,
			Action: ActionRemove,
			Detail: fmt.Sprintf("%s is no longer in the topology (it was in %s deployment %s): s2strust stops managing it and changes nothing on it", h, products.Name(f.Product), f.Deployment),
		}}
	} else if f == nil || hp.FromHash != hp.ToHash {
		// Equal hashes mean equal configurations (primary aside):
		// nothing to diff, which keeps a small change to a large
		// fleet cheap to plan.
		hp.Items = diffHost(f, t)
	}
	return hp
}

// parallelMin is the number of items below which forEachChunk runs on
// the caller's goroutine alone: fewer are not worth a goroutine.
const parallelMin = 512

// forEachChunk calls do for every index below n, spread over one
// goroutine per CPU in contiguous chunks; it returns when all are done.
// do must be safe to call concurrently for different indexes.
func forEachChunk(n int, do func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), n/parallelMin)
	if workers <= 1 {
		for i := range n {
			do(i)
		}
		return
	}
	var wg sync.WaitGroup
	size := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += size {
		hi := min(lo+size, n)
		wg.Go(func() {
			for i := lo; i < hi; i++ {
				do(i)
			}
		})
	}
	wg.Wait()
}

func byHost(cfgs []*pb.HostConfig) map[string]*pb.HostConfig {
	m := make(map[string]*pb.HostConfig, len(cfgs))
	for _, c := range cfgs {
		if c == nil {
			continue
		}
		if _, dup := m[c.Host]; !dup {
			m[c.Host] = c
		}
	}
	return m
}

// planHash is Hash without the primary flag.
func planHash(c *pb.HostConfig) string {
	if c.Primary {
		c = proto.CloneOf(c)
		c.Primary = false
	}
	return Hash(c)
}

// diffHost lists the items that take host configuration f (nil for a new
// host) to t.
func diffHost(f, t *pb.HostConfig) []*pb.PlanItem {
	var items []*pb.PlanItem
	add := func(item, action, detail string) {
		items = append(items, &pb.PlanItem{Item: item, Action: action, Detail: detail})
	}
	fresh := f == nil || f.Product != t.Product

	if f == nil {
		// The deployment's other hosts are not listed: that would make a
		// plan quadratic in the deployment's size.
		add(ItemHost, ActionCreate, fmt.Sprintf("manage %s as a host of %s deployment %s (%s %s; own metadata %s)",
			t.Host, products.Name(t.Product), t.Deployment, products.DisplayName(t.Product), t.ProductVersion,
			t.MetadataUrl))
	} else if changes := hostChanges(f, t); len(changes) > 0 {
		add(ItemHost, ActionUpdate, strings.Join(changes, "; "))
	}

	// A realm s2strust sets is a disruptive change: tokens minted for the
	// old realm stop being accepted (on SharePoint, existing app principals
	// break); the plan says so.
	disruptive := func() {
		it := items[len(items)-1]
		it.Disruptive = true
		it.Detail += " [disruptive: changes the realm of " + t.Deployment + "]"
	}
	if fresh {
		add(ItemOAuthConfiguration, ActionCreate, oauthCommand(t, nil))
	} else if changes := oauthChanges(f, t); len(changes) > 0 {
		add(ItemOAuthConfiguration, ActionUpdate, oauthCommand(t, f)+" ("+strings.Join(changes, "; ")+")")
		if f.GetRealm() != t.Realm && t.Realm != "" {
			disruptive()
		}
	}

	var fti *pb.TokenIssuer
	if f != nil {
		fti = f.TokenIssuer
	}
	switch {
	case t.TokenIssuer != nil && (fresh || fti == nil):
		add(ItemTokenIssuer, ActionCreate, issuerCommand(t.Product, t.TokenIssuer))
	case t.TokenIssuer != nil && !proto.Equal(fti, t.TokenIssuer):
		add(ItemTokenIssuer, ActionUpdate, fmt.Sprintf("replace the token-issuer certificate (%s -> %s): %s",
			describeIssuer(fti), describeIssuer(t.TokenIssuer), issuerCommand(t.Product, t.TokenIssuer)))
	case t.TokenIssuer == nil && fti != nil:
		add(ItemTokenIssuer, ActionRemove, fmt.Sprintf("stop managing the token-issuer certificate (%s); the certificate stays in place", describeIssuer(fti)))
	}

	var fnext *pb.NextTokenIssuer
	if f != nil {
		fnext = f.NextTokenIssuer
	}
	switch {
	case t.NextTokenIssuer != nil && !proto.Equal(fnext, t.NextTokenIssuer):
		add(ItemTokenIssuer, ActionUpdate, "stage the next token-issuer certificate ("+describeNext(t.NextTokenIssuer)+"): "+stageCommand(t.Product, t.NextTokenIssuer))
	case t.NextTokenIssuer == nil && fnext != nil:
		add(ItemTokenIssuer, ActionUpdate, "no next token-issuer certificate staged any more (was "+describeNext(fnext)+")")
	}
	if t.RetirePreviousIssuer && !f.GetRetirePreviousIssuer() {
		add(ItemTokenIssuer, ActionUpdate, "retire the previous token-issuer certificate: "+retireCommand(t.Product))
	}

	items = append(items, partnerItems(f, t)...)

	// Where trust probes go changes nothing on the host's product, but it
	// changes what the host verifies.
	if changes := probeChanges(f.GetTrustedBy(), t.TrustedBy); len(changes) > 0 {
		action := ActionUpdate
		if f == nil {
			action = ActionCreate
		}
		add(ItemTrustProbes, action, strings.Join(changes, "; "))
	}
	return items
}

func hostChanges(f, t *pb.HostConfig) []string {
	var c []string
	diff := func(what, a, b string) {
		if a != b {
			c = append(c, fmt.Sprintf("%s %s -> %s", what, orNone(a), orNone(b)))
		}
	}
	diff("topology", f.TopologyName, t.TopologyName)
	diff("certificate rules", f.CertificateRules, t.CertificateRules)
	diff("deployment", f.Deployment, t.Deployment)
	diff("product", products.Name(f.Product), products.Name(t.Product))
	diff("version", f.ProductVersion, t.ProductVersion)
	diff("endpoint", f.Endpoint, t.Endpoint)
	diff("own metadata URL", f.MetadataUrl, t.MetadataUrl)
	diff("default SIP domain", f.DefaultSipDomain, t.DefaultSipDomain)
	diff("additional SIP domains", strings.Join(f.AdditionalSipDomains, ", "), strings.Join(t.AdditionalSipDomains, ", "))
	diff("metadata networks", strings.Join(f.MetadataNetworks, ", "), strings.Join(t.MetadataNetworks, ", "))
	diff("probe SIP URI", f.ProbeSipUri, t.ProbeSipUri)
	diff("probe mailbox", f.ProbeMailbox, t.ProbeMailbox)
	for _, r := range f.RemovePartners {
		if !slices.Contains(t.RemovePartners, r) {
			c = append(c, fmt.Sprintf("no longer removes partner %s", r))
		}
	}
	return c
}

// probeChanges describes how the deployments that trust a host's own, where
// its trust probes go, change from f to t.
func probeChanges(f, t []*pb.TrustTarget) []string {
	fm := map[string]*pb.TrustTarget{}
	for _, x := range f {
		fm[x.Deployment] = x
	}
	tm := map[string]*pb.TrustTarget{}
	var names []string
	for _, x := range t {
		tm[x.Deployment] = x
		names = append(names, x.Deployment)
	}
	for _, x := range f {
		if _, ok := tm[x.Deployment]; !ok {
			names = append(names, x.Deployment)
		}
	}
	sort.Strings(names)
	var c []string
	for _, n := range names {
		a, b := fm[n], tm[n]
		switch {
		case a == nil:
			c = append(c, "probe "+describeTarget(b))
		case b == nil:
			c = append(c, fmt.Sprintf("stop probing %s deployment %s", products.Name(a.Product), a.Deployment))
		case !proto.Equal(a, b):
			c = append(c, fmt.Sprintf("probe %s (was %s)", describeTarget(b), describeTarget(a)))
		}
	}
	return c
}

func describeTarget(t *pb.TrustTarget) string {
	s := fmt.Sprintf("%s deployment %s at %s", products.Name(t.Product), t.Deployment, strings.Join(t.Hosts, ", "))
	if t.Realm != "" {
		s += " in realm " + t.Realm
	}
	return s
}

func oauthChanges(f, t *pb.HostConfig) []string {
	var c []string
	diff := func(what, a, b string) {
		if a != b {
			c = append(c, fmt.Sprintf("%s %s -> %s", what, orNone(a), orNone(b)))
		}
	}
	diff("service name", f.ServiceName, t.ServiceName)
	diff("realm", f.Realm, t.Realm)
	diff("Exchange autodiscover URL", f.ExchangeAutodiscoverUrl, t.ExchangeAutodiscoverUrl)
	return c
}

// oauthCommand sets t's OAuth configuration: every setting, or with f only
// those that differ from f.
func oauthCommand(t, f *pb.HostConfig) string {
	changed := func(a, b string) bool { return f == nil || a != b }
	var b strings.Builder
	switch t.Product {
	case pb.Product_PRODUCT_LYNC:
		b.WriteString("Set-CsOAuthConfiguration")
		if changed(f.GetServiceName(), t.ServiceName) {
			b.WriteString(" -ServiceName " + t.ServiceName)
		}
		if t.Realm != "" && changed(f.GetRealm(), t.Realm) {
			b.WriteString(" -Realm " + t.Realm)
		}
		if changed(f.GetExchangeAutodiscoverUrl(), t.ExchangeAutodiscoverUrl) {
			switch {
			case t.ExchangeAutodiscoverUrl != "":
				b.WriteString(" -ExchangeAutodiscoverUrl " + t.ExchangeAutodiscoverUrl)
			case f != nil:
				b.WriteString(" -ExchangeAutodiscoverUrl $null")
			}
		}
	case pb.Product_PRODUCT_EXCHANGE:
		if t.Realm == "" {
			return "keep the organization's own realm (Get-AuthConfig Realm blank: tokens for any accepted domain)"
		}
		b.WriteString("Set-AuthConfig -Realm " + t.Realm)
	case pb.Product_PRODUCT_SHAREPOINT:
		if t.Realm == "" {
			return "keep the farm's own realm (Get-SPAuthenticationRealm: the farm id)"
		}
		b.WriteString("Set-SPAuthenticationRealm -Realm " + t.Realm)
	default:
		b.WriteString("set realm " + t.Realm)
	}
	return b.String()
}

func describeIssuer(ti *pb.TokenIssuer) string {
	switch {
	case ti.GetSecret() != "":
		return "secret " + ti.GetSecret()
	case ti.GetThumbprint() != "":
		return "thumbprint " + ti.GetThumbprint()
	case ti.GetExisting() != "":
		return "the " + ti.GetExisting() + " certificate"
	}
	return "none"
}

func describeNext(n *pb.NextTokenIssuer) string {
	d := "secret " + n.GetSecret()
	if n.GetSecretThumbprint() != "" {
		d += ", thumbprint " + n.GetSecretThumbprint()
	}
	if n.GetEffective() != nil {
		d += ", effective " + n.GetEffective().AsTime().UTC().Format("2006-01-02T15:04:05Z")
	}
	return d
}

// stageCommand is how each product stages a next token-issuer certificate;
// the agent's plan (status --plan) shows the exact commands.
func stageCommand(p pb.Product, n *pb.NextTokenIssuer) string {
	switch p {
	case pb.Product_PRODUCT_LYNC:
		return "Import-CsCertificate -Identity global -Type OAuthTokenIssuer -Roll -EffectiveDate <effective> -Path <PFX from secret " + n.GetSecret() + "> (on the pool's primary)"
	case pb.Product_PRODUCT_EXCHANGE:
		return "Import-ExchangeCertificate -FileData <PFX from secret " + n.GetSecret() + "> on every server, then Set-AuthConfig -NewCertificateThumbprint <its thumbprint> -NewCertificateEffectiveDate <effective> -Force"
	case pb.Product_PRODUCT_SHAREPOINT:
		return "Set-SPSecurityTokenServiceConfig -QueueSigningCertificate <certificate from secret " + n.GetSecret() + ">"
	}
	return "stage secret " + n.GetSecret()
}

func retireCommand(p pb.Product) string {
	switch p {
	case pb.Product_PRODUCT_LYNC:
		return "Remove-CsCertificate -Identity global -Type OAuthTokenIssuer -Previous"
	case pb.Product_PRODUCT_EXCHANGE:
		return "Set-AuthConfig -ClearPreviousCertificate"
	}
	return "nothing to remove on " + products.Name(p)
}

func issuerCommand(p pb.Product, ti *pb.TokenIssuer) string {
	secret, thumb := ti.GetSecret(), ti.GetThumbprint()
	if ti.GetExisting() != "" {
		// The thumbprint is the primary's to read: its agent's plan
		// (status --plan) shows the exact command.
		return "$x = (Get-CsCertificate -Type " + ti.GetExisting() + ").Thumbprint; Set-CsCertificate -Identity global -Type OAuthTokenIssuer -Thumbprint $x (on the pool's primary)"
	}
	switch p {
	case pb.Product_PRODUCT_LYNC:
		if secret != "" {
			return "Import-CsCertificate -Identity global -Type OAuthTokenIssuer -Path <PFX from secret " + secret + "> -Password <its password>"
		}
		return "Set-CsCertificate -Identity global -Type OAuthTokenIssuer -Thumbprint " + thumb
	case pb.Product_PRODUCT_EXCHANGE:
		if secret != "" {
			return "Import-ExchangeCertificate -FileData <PFX from secret " + secret + ">, then Set-AuthConfig -NewCertificateThumbprint <its thumbprint> -NewCertificateEffectiveDate <now> and Set-AuthConfig -PublishCertificate"
		}
		return "Set-AuthConfig -NewCertificateThumbprint " + thumb + " -NewCertificateEffectiveDate <now>, then Set-AuthConfig -PublishCertificate"
	case pb.Product_PRODUCT_SHAREPOINT:
		if secret != "" {
			return "Set-SPSecurityTokenServiceConfig -ImportSigningCertificate <certificate from secret " + secret + ">"
		}
		return "Set-SPSecurityTokenServiceConfig -ImportSigningCertificate <certificate " + thumb + " from the machine store>"
	}
	return "use token-issuer certificate " + describeIssuer(ti)
}

// partnerItems plans the partners of a host: registrations to create,
// update and remove, and stale partners listed in removePartners.
func partnerItems(f, t *pb.HostConfig) []*pb.PlanItem {
	byName := map[string]*pb.PlanItem{}
	add := func(name, action, detail string) {
		byName[name] = &pb.PlanItem{Item: ItemPartnerPrefix + name, Action: action, Detail: detail}
	}
	tp := map[string]*pb.Partner{}
	for _, p := range t.Partners {
		tp[p.Name] = p
	}
	fp := map[string]*pb.Partner{}
	for _, p := range f.GetPartners() {
		fp[p.Name] = p
		if _, ok := tp[p.Name]; !ok {
			add(p.Name, ActionRemove, removePartnerCommand(f.Product, p.Name))
		}
	}
	for _, p := range t.Partners {
		old, ok := fp[p.Name]
		switch {
		case !ok:
			add(p.Name, ActionCreate, createPartnerCommand(t.Product, p))
		case f.Product != t.Product || old.ApplicationIdentifier != p.ApplicationIdentifier || old.Product != p.Product:
			add(p.Name, ActionUpdate, "recreate: "+removePartnerCommand(f.Product, p.Name)+", then "+createPartnerCommand(t.Product, p)+
				" ("+strings.Join(partnerChanges(old, p), "; ")+")")
		case !proto.Equal(old, p):
			add(p.Name, ActionUpdate, updatePartnerCommand(t.Product, old, p))
		}
	}
	for _, r := range t.RemovePartners {
		if _, done := byName[r]; done || slices.Contains(f.GetRemovePartners(), r) && f.Product == t.Product {
			continue
		}
		add(r, ActionRemove, removePartnerCommand(t.Product, r)+" when present (listed in removePartners)")
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	items := make([]*pb.PlanItem, len(names))
	for i, n := range names {
		items[i] = byName[n]
	}
	return items
}

func partnerChanges(f, t *pb.Partner) []string {
	var c []string
	diff := func(what, a, b string) {
		if a != b {
			c = append(c, fmt.Sprintf("%s %s -> %s", what, orNone(a), orNone(b)))
		}
	}
	diff("deployment", f.Deployment, t.Deployment)
	diff("product", products.Name(f.Product), products.Name(t.Product))
	diff("application identifier", f.ApplicationIdentifier, t.ApplicationIdentifier)
	diff("metadata URL", f.MetadataUrl, t.MetadataUrl)
	diff("realm", f.Realm, t.Realm)
	diff("trust level", products.TrustLevelName(f.TrustLevel), products.TrustLevelName(t.TrustLevel))
	diff("enabled", fmt.Sprint(f.Enabled), fmt.Sprint(t.Enabled))
	diff("trust broker", fmt.Sprint(f.TrustBroker), fmt.Sprint(t.TrustBroker))
	return c
}

func createPartnerCommand(receiver pb.Product, p *pb.Partner) string {
	switch receiver {
	case pb.Product_PRODUCT_LYNC:
		s := fmt.Sprintf("New-CsPartnerApplication -Identity %s -MetadataUrl %s -ApplicationTrustLevel %s", p.Name, p.MetadataUrl, products.TrustLevelName(p.TrustLevel))
		if !p.Enabled {
			s += " -Enabled $false"
		}
		return s
	case pb.Product_PRODUCT_EXCHANGE:
		var s string
		switch p.Product {
		case pb.Product_PRODUCT_LYNC, pb.Product_PRODUCT_SHAREPOINT:
			appType := map[pb.Product]string{pb.Product_PRODUCT_LYNC: "Lync", pb.Product_PRODUCT_SHAREPOINT: "SharePoint"}[p.Product]
			s = fmt.Sprintf("Configure-EnterprisePartnerApplication.ps1 -ApplicationType %s -AuthMetadataUrl %s (as %s)", appType, p.MetadataUrl, p.Name)
		default:
			s = fmt.Sprintf("New-PartnerApplication -Name %s -AuthMetadataUrl %s", p.Name, p.MetadataUrl)
		}
		if !p.Enabled {
			s += ", then Set-PartnerApplication -Identity " + p.Name + " -Enabled $false"
		}
		return s
	case pb.Product_PRODUCT_SHAREPOINT:
		s := fmt.Sprintf("New-SPTrustedSecurityTokenIssuer -Name %s -MetadataEndPoint %s", p.Name, p.MetadataUrl)
		if p.TrustBroker {
			s += " -IsTrustBroker"
		}
		if !p.Enabled {
			s += " (disabled)"
		}
		return s
	}
	return "register partner " + p.Name + " from " + p.MetadataUrl
}

func updatePartnerCommand(receiver pb.Product, f, t *pb.Partner) string {
	var params []string
	switch receiver {
	case pb.Product_PRODUCT_LYNC:
		if f.MetadataUrl != t.MetadataUrl {
			params = append(params, "-MetadataUrl "+t.MetadataUrl)
		}
		if f.TrustLevel != t.TrustLevel {
			params = append(params, "-ApplicationTrustLevel "+products.TrustLevelName(t.TrustLevel))
		}
		if f.Enabled != t.Enabled {
			params = append(params, fmt.Sprintf("-Enabled $%t", t.Enabled))
		}
		if len(params) > 0 {
			params = append([]string{"Set-CsPartnerApplication -Identity " + t.Name}, params...)
		}
	case pb.Product_PRODUCT_EXCHANGE:
		if f.MetadataUrl != t.MetadataUrl {
			params = append(params, "-AuthMetadataUrl "+t.MetadataUrl)
		}
		if f.Enabled != t.Enabled {
			params = append(params, fmt.Sprintf("-Enabled $%t", t.Enabled))
		}
		if len(params) > 0 {
			params = append([]string{"Set-PartnerApplication -Identity " + t.Name}, params...)
		}
	case pb.Product_PRODUCT_SHAREPOINT:
		if f.MetadataUrl != t.MetadataUrl {
			params = append(params, "-MetadataEndPoint "+t.MetadataUrl)
		}
		if f.TrustBroker != t.TrustBroker {
			params = append(params, fmt.Sprintf("-IsTrustBroker:$%t", t.TrustBroker))
		}
		if len(params) > 0 {
			params = append([]string{"Set-SPTrustedSecurityTokenIssuer -Identity " + t.Name}, params...)
		}
	}
	changes := "(" + strings.Join(partnerChanges(f, t), "; ") + ")"
	if len(params) == 0 {
		return "partner " + t.Name + " " + changes
	}
	return strings.Join(params, " ") + " " + changes
}

func removePartnerCommand(receiver pb.Product, name string) string {
	switch receiver {
	case pb.Product_PRODUCT_LYNC:
		return "Remove-CsPartnerApplication -Identity " + name
	case pb.Product_PRODUCT_EXCHANGE:
		return "Remove-PartnerApplication -Identity " + name
	case pb.Product_PRODUCT_SHAREPOINT:
		return "Remove-SPTrustedSecurityTokenIssuer -Identity " + name
	}
	return "remove partner " + name
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
