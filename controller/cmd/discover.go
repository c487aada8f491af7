package cmd

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/termsafe"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// exitConflicts: discover found conflicts (and --allow-conflicts was not given).
const exitConflicts = 5

func newDiscover(g *globals) *cobra.Command {
	var allow bool
	c := &cobra.Command{
		Use:   "discover [-o yaml|json] [--allow-conflicts]",
		Short: "Write the topology that reproduces the estate as the agents report it (applying it plans no change)",
		Long: fmt.Sprintf(`Write a topology that reproduces the estate as the connected agents last reported it, so
that applying it plans no change anywhere: brownfield adoption. Start from a topology naming
the deployments and their hosts (it may declare no trusts), run the agents in monitor mode
(s2s-agent run --apply=false), then run discover.

From the current topology it keeps what no agent can see: the names, products, hosts and
endpoints of the deployments, the SIP domains, removePartners, certificateRules and
metadataNetworks. From what the
agents reported it takes the trust edges (each registered partner matched to the deployment
whose metadata URL it names), trust levels, enabled flags, realms, Lync's
ExchangeAutodiscoverUrl, the token issuer (a stored secret holding the certificate in use,
else its thumbprint; Exchange's and SharePoint's own certificates are left to the product)
and the product versions the hosts run.

Conflicts are listed on standard error, never guessed: hosts of one deployment that disagree
(the disputed setting is left out), partners whose metadata URL belongs to no deployment of the
topology, a partner registered under another name than s2strust would give it, a deployment
no connected host reported for (its settings and the trusts into it are kept as the current
topology declares them). The topology is written either way; the command exits %d when
there are conflicts, unless --allow-conflicts.`, exitConflicts),
		Args: cobra.NoArgs,
	}
	o := addOutput(c, formatYAML, formatJSON)
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		output := o.format
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			cur, details, secrets, err := gatherEstate(ctx, conn)
			if err != nil {
				return err
			}
			d := discover(cur, details, secrets)
			var doc []byte
			if output == "json" {
				doc, err = d.topo.Canonical()
			} else {
				doc, err = d.topo.YAML()
			}
			if err != nil {
				return fmt.Errorf("the discovered topology is not valid: %w", err)
			}
			if output == "yaml" {
				fmt.Fprintf(g.out, "# discovered from the reports of %d of %d hosts; %d conflicts\n", d.reported, d.hosts, len(d.conflicts))
			}
			// Names and URLs came from agents: escaped before they reach a terminal.
			fmt.Fprintf(g.out, "%s", termsafe.Text(string(doc)))
			d.printFindings(cmd.ErrOrStderr())
			if len(d.conflicts) > 0 && !allow {
				return &exitError{code: exitConflicts, err: fmt.Errorf("discover: %d conflicts (listed above); resolve them, or pass --allow-conflicts to accept the topology without the disputed settings", len(d.conflicts))}
			}
			return nil
		})
	}
	c.Flags().BoolVar(&allow, "allow-conflicts", false, "exit 0 even when conflicts were found (the disputed settings are left out)")
	return c
}

// gatherEstate reads the current topology, every host's last report and
// the stored secrets' certificates.
func gatherEstate(ctx context.Context, conn *grpc.ClientConn) (*topology.Topology, []hostDetail, []*pb.Secret, error) {
	resp, err := pb.NewTopologyServiceClient(conn).GetTopology(ctx, &pb.GetTopologyRequest{})
	if err != nil {
		return nil, nil, nil, rpcError("get topology (discover starts from one naming the deployments and their hosts)", err)
	}
	cur, err := topology.Load("current topology", []byte(resp.GetTopology().GetDocument()))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the current topology: %w", err)
	}
	details, err := fetchStatus(ctx, pb.NewFleetServiceClient(conn), "")
	if err != nil {
		return nil, nil, nil, err
	}
	sec, err := listSecrets(ctx, pb.NewSecretServiceClient(conn))
	if err != nil {
		return nil, nil, nil, rpcError("list secrets", err)
	}
	// The versions the current revision pins come first: a listing shows
	// each secret's newest version, which the hosts may not use yet.
	var secrets []*pb.Secret
	for _, v := range resp.GetTopology().GetSecrets() {
		secrets = append(secrets, &pb.Secret{Name: v.GetName(), Version: v.GetVersion(), Certificate: &pb.CertificateInfo{Thumbprint: v.GetThumbprint()}})
	}
	return cur, details, append(secrets, sec.GetSecrets()...), nil
}

// discovery is what discover found.
type discovery struct {
	topo            *topology.Topology
	conflicts       []string
	notes           []string
	hosts, reported int
}

// printFindings prints the notes and conflicts, one a line.
func (d *discovery) printFindings(w io.Writer) {
	for _, n := range d.notes {
		fmt.Fprintln(w, "note:", safe(n))
	}
	for _, c := range d.conflicts {
		fmt.Fprintln(w, "conflict:", safe(c))
	}
}

func (d *discovery) conflict(format string, args ...any) {
	d.conflicts = append(d.conflicts, fmt.Sprintf(format, args...))
}

// seen is one deployment-scope view as one host reported it.
type seen struct {
	host     string
	primary  bool
	rep      *pb.StatusReport
	detected []*pb.DetectedProduct
}

// discover builds the topology of the estate: see newDiscover's help.
func discover(cur *topology.Topology, details []hostDetail, secrets []*pb.Secret) *discovery {
	// What no agent can see is kept as the current topology declares it
	// (names, hosts, endpoints, SIP domains, removePartners, certificate
	// rules, metadata networks, and whatever the topology learns next): the
	// result starts as a copy with the observed settings cleared.
	out, err := copyTopology(cur)
	if err != nil {
		return &discovery{topo: cur, conflicts: []string{err.Error()}}
	}
	out.Realm, out.Trusts = "", []topology.Trust{}
	d := &discovery{topo: out}
	// The current topology's compilation names every deployment's own
	// metadata URL as its hosts are told it.
	cfgs, _ := topology.Compile(cur)
	own := map[string]string{} // lower-case metadata URL → deployment
	for _, c := range cfgs {
		own[strings.ToLower(c.GetMetadataUrl())] = c.GetDeployment()
	}
	override := map[[2]string]string{} // (to, lower-case URL) → from, for edges with their own metadataUrl
	for _, tr := range cur.Trusts {
		if tr.MetadataURL != "" {
			override[[2]string{tr.To, strings.ToLower(tr.MetadataURL)}] = tr.From
		}
	}
	byDeployment := map[string][]seen{}
	for _, hd := range details {
		d.hosts++
		h := hd.host
		switch {
		case hd.report == nil:
			d.notes = append(d.notes, fmt.Sprintf("host %s (%s) has not reported", h.GetHost(), h.GetDeployment()))
			continue
		case !h.GetConnected():
			d.notes = append(d.notes, fmt.Sprintf("host %s (%s) is not connected; its last report is not used", h.GetHost(), h.GetDeployment()))
			continue
		}
		d.reported++
		byDeployment[h.GetDeployment()] = append(byDeployment[h.GetDeployment()], seen{host: h.GetHost(), primary: h.GetPrimary(), rep: hd.report, detected: h.GetDetectedProducts()})
	}
	products0 := map[string]pb.Product{}
	for _, dep := range cur.Deployments {
		p, _ := products.Parse(dep.Product)
		products0[dep.Name] = p
	}
	realms := map[string]string{}
	type edge struct {
		trust   topology.Trust
		partner *pb.PartnerApplication
	}
	var edges []edge
	unreported := map[string]bool{}
	for i, dep := range cur.Deployments {
		nd := &out.Deployments[i]
		views := byDeployment[dep.Name]
		if len(views) == 0 {
			d.conflict("deployment %s: none of its hosts (%s) is connected and has reported; its settings and the trusts into it are kept as the current topology declares them", dep.Name, strings.Join(dep.Hosts, ", "))
			nd.Realm = curRealm(cur, &dep) // the topology-wide realm is cleared above
			realms[dep.Name], unreported[dep.Name] = nd.Realm, true
			continue
		}
		nd.Realm, nd.ConfirmRealmChange, nd.TokenIssuer, nd.ExchangeAutodiscoverURL = "", false, nil, ""
		p := products0[dep.Name]
		nd.Version = d.version(&dep, p, views)
		oauth, partners := d.agree(dep.Name, views)
		// The realm, when the product has one other than its default.
		if r, ok := oauth["Realm"]; ok && r != "" {
			declared := curRealm(cur, &dep)
			switch {
			case r == declared:
				nd.Realm, nd.ConfirmRealmChange = r, dep.ConfirmRealmChange
			case p == pb.Product_PRODUCT_SHAREPOINT && guid.MatchString(r):
				// SharePoint's default realm is its farm id.
			default:
				nd.Realm = r
			}
			realms[dep.Name] = nd.Realm
		}
		if p == pb.Product_PRODUCT_LYNC {
			nd.ExchangeAutodiscoverURL = oauth["ExchangeAutodiscoverUrl"]
		}
		if t := oauth["IssuerThumbprint"]; t != "" {
			nd.TokenIssuer = d.issuer(&dep, p, t, secrets)
		}
		desc, _ := products.Describe(p)
		from := map[string]string{} // partner deployment → registered name, one edge each
		for _, pa := range partners {
			url := strings.ToLower(pa.GetMetadataUrl())
			src, viaOverride := override[[2]string{dep.Name, url}]
			if !viaOverride {
				src = own[url]
			}
			switch {
			case src == "" && slices.ContainsFunc(dep.RemovePartners, func(n string) bool { return strings.EqualFold(n, pa.GetName()) }):
				d.notes = append(d.notes, fmt.Sprintf("deployment %s: partner %s is listed in removePartners; applying removes it", dep.Name, pa.GetName()))
				continue
			case src == "":
				d.conflict("deployment %s: partner %s is registered with metadata URL %s, which belongs to no deployment of the topology", dep.Name, pa.GetName(), orDash(pa.GetMetadataUrl()))
				continue
			case from[src] != "":
				d.conflict("deployment %s: partners %s and %s both point at deployment %s; a topology has one trust edge per pair", dep.Name, from[src], pa.GetName(), src)
				continue
			}
			sp := products0[src]
			if want := products.ServiceName(sp); !strings.EqualFold(pa.GetApplicationIdentifier(), want) {
				d.conflict("deployment %s: partner %s points at deployment %s but has ApplicationIdentifier %s, not %s's %s; applying would re-create it",
					dep.Name, pa.GetName(), src, orDash(pa.GetApplicationIdentifier()), products.Name(sp), want)
				continue
			}
			if want := products.PartnerName(p, sp, src); !desc.MatchPartnersByURL && !strings.EqualFold(pa.GetName(), want) {
				d.conflict("deployment %s: partner %s (deployment %s) is registered under another name than %s, the one s2strust gives it; applying would register it again", dep.Name, pa.GetName(), src, want)
				continue
			}
			if p == pb.Product_PRODUCT_SHAREPOINT && pa.GetTrustBroker() != (sp == pb.Product_PRODUCT_LYNC) {
				d.conflict("deployment %s: trusted security token issuer %s has IsTrustBroker %s; s2strust registers %s with IsTrustBroker %s, so applying would change it",
					dep.Name, pa.GetName(), boolPS(pa.GetTrustBroker()), products.Name(sp), boolPS(sp == pb.Product_PRODUCT_LYNC))
				continue
			}
			from[src] = pa.GetName()
			tr := topology.Trust{From: src, To: dep.Name}
			if viaOverride {
				tr.MetadataURL = pa.GetMetadataUrl()
			}
			if desc.TrustLevels && pa.GetTrustLevel() != pb.TrustLevel_TRUST_LEVEL_FULL {
				tr.TrustLevel = products.TrustLevelName(pa.GetTrustLevel())
			}
			if desc.PartnerEnabled && !pa.GetEnabled() {
				f := false
				tr.Enabled = &f
			}
			edges = append(edges, edge{trust: tr, partner: pa})
		}
	}
	for _, e := range edges {
		// A partner's realm as registered must be its deployment's declared
		// realm, or the reconciler re-creates it.
		if r := realms[e.trust.From]; r != "" && e.partner.GetRealm() != "" && e.partner.GetRealm() != r {
			d.conflict("deployment %s: partner %s is registered with realm %s, but deployment %s's realm is %s; applying would re-create it",
				e.trust.To, e.partner.GetName(), e.partner.GetRealm(), e.trust.From, r)
			continue
		}
		out.Trusts = append(out.Trusts, e.trust)
	}
	for _, tr := range cur.Trusts {
		if unreported[tr.To] {
			out.Trusts = append(out.Trusts, tr)
		}
	}
	return d
}

// version is the product version the hosts of dep detected, when they
// agree; otherwise, or when their drivers detect nothing, the declared one.
func (d *discovery) version(dep *topology.Deployment, p pb.Product, views []seen) string {
	vals := map[string][]string{}
	for _, v := range views {
		if len(v.detected) == 0 {
			continue // the driver does not say
		}
		i := slices.IndexFunc(v.detected, func(dp *pb.DetectedProduct) bool { return dp.GetProduct() == p })
		if i < 0 {
			var runs []string
			for _, dp := range v.detected {
				runs = append(runs, products.Name(dp.GetProduct())+" "+dp.GetVersion())
			}
			d.conflict("deployment %s: host %s runs %s, not %s", dep.Name, v.host, strings.Join(runs, " and "), products.Name(p))
			continue
		}
		ver := products.NormalizeVersion(v.detected[i].GetVersion())
		vals[ver] = append(vals[ver], v.host)
	}
	switch {
	case len(vals) > 1:
		d.conflict("deployment %s: its hosts run different versions of %s: %s", dep.Name, products.Name(p), disagreement(vals))
	case len(vals) == 1:
		for ver := range vals {
			if ver != products.NormalizeVersion(dep.Version) {
				d.notes = append(d.notes, fmt.Sprintf("deployment %s: the topology says %s %s, its hosts run %s", dep.Name, products.Name(p), dep.Version, ver))
			}
			return ver
		}
	}
	return dep.Version
}

// copyTopology is a deep copy of the valid topology t.
func copyTopology(t *topology.Topology) (*topology.Topology, error) {
	doc, err := t.Canonical()
	if err != nil {
		return nil, fmt.Errorf("the current topology: %w", err)
	}
	c, err := topology.Load("current topology", doc)
	if err != nil {
		return nil, fmt.Errorf("the current topology: %w", err)
	}
	return c, nil
}

// guid matches a farm id (SharePoint's default realm).
var guid = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// curRealm is the realm the current topology declares for dep.
func curRealm(t *topology.Topology, dep *topology.Deployment) string {
	if dep.Realm != "" {
		return dep.Realm
	}
	if p, _ := products.Parse(dep.Product); p == pb.Product_PRODUCT_LYNC {
		return t.Realm
	}
	return ""
}

// issuer names the token-issuer certificate a deployment uses: a stored
// secret holding it, else what the current topology declares when that
// can be it, else (Lync) its thumbprint. Exchange and SharePoint use
// their own certificate unless a secret holds it.
func (d *discovery) issuer(dep *topology.Deployment, p pb.Product, thumbprint string, secrets []*pb.Secret) *topology.TokenIssuer {
	var names []string
	for _, s := range secrets {
		if t, _ := certs.NormalizeThumbprint(s.GetCertificate().GetThumbprint()); t == thumbprint && !slices.Contains(names, s.GetName()) {
			names = append(names, s.GetName())
		}
	}
	ti := dep.TokenIssuer
	switch {
	case len(names) > 0:
		name := names[0]
		if ti != nil && slices.Contains(names, ti.Secret) {
			name = ti.Secret
		} else if len(names) > 1 {
			d.notes = append(d.notes, fmt.Sprintf("deployment %s: secrets %s all hold its issuer certificate %s; %s is named", dep.Name, strings.Join(names, ", "), thumbprint, name))
		}
		return &topology.TokenIssuer{Secret: name}
	case ti != nil && ti.Existing != "":
		// The Default certificate's thumbprint is not reported: kept as declared.
		d.notes = append(d.notes, fmt.Sprintf("deployment %s: token issuer %s kept as the current topology declares it ({existing: %s})", dep.Name, thumbprint, ti.Existing))
		return &topology.TokenIssuer{Existing: ti.Existing}
	case p == pb.Product_PRODUCT_LYNC:
		return &topology.TokenIssuer{Thumbprint: thumbprint}
	}
	return nil
}

// agree compares the deployment-scope state the hosts of one deployment
// reported and returns what they agree on: the OAuth settings by name and
// the partners, sorted by name. Every disagreement is a conflict, and the
// disputed setting or partner is left out.
func (d *discovery) agree(deployment string, views []seen) (map[string]string, []*pb.PartnerApplication) {
	sort.SliceStable(views, func(i, j int) bool { return views[i].primary && !views[j].primary })
	oauth := map[string]string{}
	for _, field := range []string{"ServiceName", "Realm", "ExchangeAutodiscoverUrl", "IssuerThumbprint"} {
		vals := map[string][]string{}
		for _, v := range views {
			o := v.rep.GetOauth()
			val := map[string]string{"ServiceName": o.GetServiceName(), "Realm": o.GetRealm(),
				"ExchangeAutodiscoverUrl": o.GetExchangeAutodiscoverUrl(), "IssuerThumbprint": o.GetIssuerThumbprint()}[field]
			vals[val] = append(vals[val], v.host)
		}
		if len(vals) > 1 {
			d.conflict("deployment %s: its hosts disagree on %s: %s", deployment, field, disagreement(vals))
			continue
		}
		for val := range vals {
			oauth[field] = val
		}
	}
	byName := map[string]map[string][]string{} // name → its registration as text → hosts
	first := map[string]*pb.PartnerApplication{}
	for _, v := range views {
		for _, pa := range v.rep.GetPartners() {
			n := strings.ToLower(pa.GetName())
			if byName[n] == nil {
				byName[n], first[n] = map[string][]string{}, pa
			}
			desc := fmt.Sprintf("%s %s realm %s %s enabled %s", pa.GetApplicationIdentifier(), pa.GetMetadataUrl(), orDash(pa.GetRealm()),
				orDash(products.TrustLevelName(pa.GetTrustLevel())), boolPS(pa.GetEnabled()))
			byName[n][desc] = append(byName[n][desc], v.host)
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	var partners []*pb.PartnerApplication
	for _, n := range names {
		vals := byName[n]
		var missing []string
		for _, v := range views {
			if !slices.ContainsFunc(v.rep.GetPartners(), func(p *pb.PartnerApplication) bool { return strings.EqualFold(p.GetName(), n) }) {
				missing = append(missing, v.host)
			}
		}
		if len(missing) > 0 {
			vals["not registered"] = missing
		}
		if len(vals) > 1 {
			d.conflict("deployment %s: its hosts disagree on partner %s: %s", deployment, first[n].GetName(), disagreement(vals))
			continue
		}
		partners = append(partners, first[n])
	}
	return oauth, partners
}

// disagreement lists each value with the hosts that reported it.
func disagreement(vals map[string][]string) string {
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s has %s", strings.Join(vals[k], ", "), orDash(k))
	}
	return strings.Join(parts, "; ")
}
