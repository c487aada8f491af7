package cmd

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/termsafe"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// safe escapes what came from an agent, a metadata server or a file
// before it reaches the terminal; every table and message below uses it.
func safe(s string) string { return termsafe.String(s) }

func printPlan(w io.Writer, resp *pb.ApplyTopologyResponse) {
	for _, hp := range resp.GetPlan() {
		if len(hp.GetItems()) == 0 {
			continue
		}
		fmt.Fprintf(w, "%s (%s, %s):\n", safe(hp.GetHost()), safe(hp.GetDeployment()), products.Name(hp.GetProduct()))
		for _, it := range hp.GetItems() {
			fmt.Fprintf(w, "  %-7s %s", safe(it.GetAction()), safe(it.GetItem()))
			if d := it.GetDetail(); d != "" {
				fmt.Fprintf(w, ": %s", safe(d))
			}
			fmt.Fprintln(w)
		}
	}
	if resp.GetPlanTruncated() {
		fmt.Fprintf(w, "(the plan above lists the first %d hosts that change)\n", len(resp.GetPlan()))
	}
	fmt.Fprintf(w, "%d of %d hosts change\n", resp.GetHostsChanged(), resp.GetHostsTotal())
}

func printHosts(w io.Writer, hosts []*pb.Host) error {
	t := newTable(w, "HOST", "DEPLOYMENT", "PRODUCT", "PRIMARY", "CONNECTED", "REVISION", "DESIRED", "APPLIED", "PENDING", "DRIFT", "LAST RESULT~")
	for _, h := range hosts {
		t.row(h.GetHost(), h.GetDeployment(), products.Name(h.GetProduct())+" "+h.GetProductVersion(),
			yesNo(h.GetPrimary()), yesNo(h.GetConnected()), revisionText(h), fmt.Sprint(h.GetDesiredVersion()), fmt.Sprint(h.GetAppliedVersion()),
			pendingText(h), driftText(h.GetDrift()), resultText(h.GetLastResult()))
	}
	return t.flush()
}

// revisionText is the host's desired revision as operators number them
// (1, 2, 3 …), and the one it has applied when that differs.
func revisionText(h *pb.Host) string {
	d, a := h.GetDesiredSequence(), h.GetAppliedSequence()
	switch {
	case d == 0:
		return "-"
	case a == d:
		return strconv.FormatUint(d, 10)
	case a == 0:
		return fmt.Sprintf("%d (applied none)", d)
	default:
		return fmt.Sprintf("%d (applied %d)", d, a)
	}
}

// pendingText says how long the push awaiting the host's answer has been
// pending, "-" when none is.
func pendingText(h *pb.Host) string {
	if h.GetPendingVersion() == 0 {
		return "-"
	}
	return fmt.Sprintf("v%d for %s", h.GetPendingVersion(), (time.Duration(h.GetPendingMs()) * time.Millisecond).Round(time.Second))
}

func printRevisions(w io.Writer, revs []*pb.TopologyRevision) error {
	t := newTable(w, "REVISION", "VERSION", "NAME", "APPLIED AT", "APPLIED BY", "HASH", "SECRETS~")
	for _, r := range revs {
		var secs []string
		for _, s := range r.GetSecrets() {
			secs = append(secs, fmt.Sprintf("%s v%d", s.GetName(), s.GetVersion()))
		}
		if len(secs) == 0 {
			secs = []string{"-"}
		}
		hash := r.GetHash()
		if len(hash) > 12 {
			hash = hash[:12]
		}
		t.row(fmt.Sprint(r.GetSequence()), fmt.Sprint(r.GetRevision()), r.GetName(), r.GetAppliedAt().AsTime().Format("2006-01-02 15:04:05Z07:00"), r.GetAppliedBy(), hash, strings.Join(secs, ", "))
	}
	return t.flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func resultText(r *pb.LastResult) string {
	if r.GetMonitor() {
		// Not a failure: the agent runs read-only and answers so.
		var parts []string
		for _, e := range r.GetErrors() {
			if e.GetItem() == "monitor" {
				parts = append(parts, safe(e.GetMessage()))
			} else {
				parts = append(parts, safe(e.GetItem())+": "+safe(e.GetMessage()))
			}
		}
		return fmt.Sprintf("monitor v%d: %s", r.GetVersion(), strings.Join(parts, "; "))
	}
	switch r.GetKind() {
	case pb.ResultKind_RESULT_KIND_ACK:
		return fmt.Sprintf("ack v%d", r.GetVersion())
	case pb.ResultKind_RESULT_KIND_NACK:
		var parts []string
		for _, e := range r.GetErrors() {
			parts = append(parts, safe(e.GetItem())+": "+safe(e.GetMessage()))
		}
		return fmt.Sprintf("NACK v%d: %s", r.GetVersion(), strings.Join(parts, "; "))
	}
	return "-"
}

// hostDetail is one host with its latest report.
type hostDetail struct {
	host   *pb.Host
	report *pb.StatusReport
}

// fetchStatus gets every host with its report, or only host when set.
func fetchStatus(ctx context.Context, fleet pb.FleetServiceClient, host string) ([]hostDetail, error) {
	details, _, err := fetchStatusStale(ctx, fleet, host)
	return details, err
}

// fetchStatusStale is fetchStatus, and the stale mark of the answer (nil:
// etcd answered).
func fetchStatusStale(ctx context.Context, fleet pb.FleetServiceClient, host string) ([]hostDetail, *pb.Staleness, error) {
	if host != "" {
		host = strings.ToLower(strings.TrimSpace(host))
		d, err := fleet.GetHost(ctx, &pb.GetHostRequest{Name: "hosts/" + host})
		if status.Code(err) == codes.NotFound {
			return nil, nil, &exitError{code: 1, err: fmt.Errorf("%w (s2s-controller get hosts lists them)", rpcError("get host "+host, err))}
		}
		if err != nil {
			return nil, nil, rpcError("get host "+host, err)
		}
		return []hostDetail{{host: d.GetHost(), report: d.GetStatus()}}, d.GetStale(), nil
	}
	// One paged listing with the reports, not one GetHost per host.
	list, err := listHosts(ctx, fleet, &pb.ListHostsRequest{View: pb.HostView_HOST_VIEW_FULL})
	if err != nil {
		return nil, nil, rpcError("list hosts", err)
	}
	out := make([]hostDetail, 0, len(list.GetHosts()))
	for _, h := range list.GetHosts() {
		out = append(out, hostDetail{host: h, report: list.GetStatuses()[h.GetHost()]})
	}
	return out, list.GetStale(), nil
}

// printStatus prints the hosts table, then per host what it verified, in
// the shape administrators know from Get-CsPartnerApplication and
// Get-CsOAuthConfiguration: everything, as the demo shows it.
func printStatus(w io.Writer, details []hostDetail) {
	hosts := make([]*pb.Host, 0, len(details))
	for _, d := range details {
		hosts = append(hosts, d.host)
	}
	_ = printHosts(w, hosts)
	for _, d := range details {
		printHostSection(w, d)
	}
}

// printSectionHeader is the "=== host (deployment, product, role)" line
// that starts a host's section.
func printSectionHeader(w io.Writer, d hostDetail) {
	h := d.host
	role := "secondary"
	if h.GetPrimary() {
		role = "primary"
	}
	if d.report.GetMonitor() {
		role += ", monitor mode"
	}
	fmt.Fprintf(w, "\n=== %s (%s, %s %s, %s)\n", safe(h.GetHost()), safe(h.GetDeployment()), products.DisplayName(h.GetProduct()), safe(h.GetProductVersion()), role)
}

// printSectionOpening starts a host's section, in status and in get host
// alike: its header, its realm and whether it runs in monitor mode. It
// returns false, having said so, when the host has not reported yet.
func printSectionOpening(w io.Writer, d hostDetail) bool {
	h, r := d.host, d.report
	printSectionHeader(w, d)
	if r == nil {
		fmt.Fprintln(w, "no status report yet")
		return false
	}
	fmt.Fprintln(w, realmLine(h, r))
	if r.GetMonitor() {
		fmt.Fprintf(w, "Monitor mode: %s planned, nothing applied (s2s-controller status --plan --host %s)\n", count(len(r.GetPlan()), "operation"), safe(h.GetHost()))
	}
	return true
}

// printHostSection is one host's "=== host" section: its realm, items,
// drift, the partner applications and OAuth settings it reported, and
// the checks it made.
func printHostSection(w io.Writer, d hostDetail) {
	h, r := d.host, d.report
	if !printSectionOpening(w, d) {
		return
	}
	t := newTable(w, "ITEM", "STATE", "DETAIL~")
	items := append([]*pb.ItemStatus(nil), r.GetItems()...)
	sort.SliceStable(items, func(i, j int) bool { return items[i].GetItem() < items[j].GetItem() })
	for _, it := range items {
		t.row(it.GetItem(), stateText(it.GetState()), it.GetMessage())
	}
	_ = t.flush()
	for _, dr := range r.GetDrift() {
		c := ""
		if dr.GetCorrected() {
			c = " (corrected)"
		}
		fmt.Fprintf(w, "DRIFT %s: %s%s\n", safe(dr.GetItem()), safe(dr.GetActual()), c)
	}
	printPartners(w, h.GetProduct(), r.GetPartners())
	printOAuth(w, h.GetProduct(), r.GetOauth())
	printChecks(w, r)
}

// printChecks prints the metadata downloads and trust probes the host made
// from its own vantage point.
func printChecks(w io.Writer, r *pb.StatusReport) {
	if len(r.GetMetadata()) == 0 && len(r.GetProbes()) == 0 {
		return
	}
	t := newTable(w, "FROM THIS HOST", "TARGET", "RESULT~")
	for _, m := range r.GetMetadata() {
		what := "metadata of " + m.GetDeployment()
		if m.GetPartner() == "" {
			what = "own metadata (" + m.GetDeployment() + ")"
		}
		result := "ok: keys " + strings.Join(termsafe.Strings(m.GetThumbprints()), ", ")
		if !m.GetOk() {
			result = "FAILED: " + m.GetError()
		}
		t.row(what, m.GetUrl(), result)
	}
	for _, p := range r.GetProbes() {
		result := "token accepted"
		if !p.GetOk() {
			result = "FAILED: " + p.GetReason() + ": " + p.GetDetail()
		}
		t.row("trust probe to "+p.GetToDeployment(), p.GetTargetHost(), result)
	}
	_ = t.flush()
	fmt.Fprintln(w)
}

func stateText(s pb.ItemState) string {
	switch s {
	case pb.ItemState_ITEM_STATE_OK:
		return "ok"
	case pb.ItemState_ITEM_STATE_FAILED:
		return "FAILED"
	case pb.ItemState_ITEM_STATE_PENDING:
		return "pending"
	case pb.ItemState_ITEM_STATE_DRIFTED:
		return "DRIFTED"
	}
	return "?"
}

func boolPS(b bool) string {
	if b {
		return "True"
	}
	return "False"
}

// kv prints PowerShell's Format-List shape: names padded to one column.
// Values are escaped here, once for every caller.
func kv(w io.Writer, pairs [][2]string) {
	width := 0
	for _, p := range pairs {
		width = max(width, len(p[0]))
	}
	for _, p := range pairs {
		fmt.Fprintf(w, "%-*s : %s\n", width, p[0], safe(p[1]))
	}
	fmt.Fprintln(w)
}

func printPartners(w io.Writer, product pb.Product, ps []*pb.PartnerApplication) {
	if len(ps) == 0 {
		return
	}
	switch product {
	case pb.Product_PRODUCT_LYNC:
		fmt.Fprintf(w, "\nPS> Get-CsPartnerApplication\n\n")
		for _, p := range ps {
			kv(w, [][2]string{
				{"Identity", p.GetIdentity()},
				{"AuthToken", "Microsoft.Rtc.Management.WritableConfig.Policy.OAuth.OAuthMetadataUrl"},
				{"Name", p.GetName()},
				{"ApplicationIdentifier", p.GetApplicationIdentifier()},
				{"MetadataUrl", p.GetMetadataUrl()},
				{"Realm", p.GetRealm()},
				{"ApplicationTrustLevel", products.TrustLevelName(p.GetTrustLevel())},
				{"AcceptSecurityIdentifierInformation", boolPS(p.GetAcceptSecurityIdentifierInformation())},
				{"Enabled", boolPS(p.GetEnabled())},
			})
		}
	case pb.Product_PRODUCT_EXCHANGE:
		fmt.Fprintf(w, "\n[PS] Get-PartnerApplication | Format-List\n\n")
		for _, p := range ps {
			kv(w, [][2]string{
				{"Name", p.GetName()},
				{"ApplicationIdentifier", p.GetApplicationIdentifier()},
				{"AuthMetadataUrl", p.GetMetadataUrl()},
				{"Realm", p.GetRealm()},
				{"Enabled", boolPS(p.GetEnabled())},
			})
		}
	case pb.Product_PRODUCT_SHAREPOINT:
		fmt.Fprintf(w, "\nPS> Get-SPTrustedSecurityTokenIssuer\n\n")
		for _, p := range ps {
			kv(w, [][2]string{
				{"Name", p.GetName()},
				{"RegisteredIssuerName", p.GetApplicationIdentifier() + "@" + p.GetRealm()},
				{"MetadataEndPoint", p.GetMetadataUrl()},
				{"IsSelfIssuer", boolPS(!p.GetTrustBroker())}, // the complement of -IsTrustBroker
				{"IsTrustBroker", boolPS(p.GetTrustBroker())},
			})
		}
	}
}

func printOAuth(w io.Writer, product pb.Product, o *pb.OAuthConfiguration) {
	if o == nil {
		return
	}
	switch product {
	case pb.Product_PRODUCT_LYNC:
		fmt.Fprintf(w, "PS> Get-CsOAuthConfiguration\n\n")
		kv(w, [][2]string{
			{"Identity", "Global"},
			{"ServiceName", o.GetServiceName()},
			{"Realm", o.GetRealm()},
			{"ExchangeAutodiscoverUrl", o.GetExchangeAutodiscoverUrl()},
			{"OAuthTokenIssuer", o.GetIssuerThumbprint()},
		})
	case pb.Product_PRODUCT_EXCHANGE:
		fmt.Fprintf(w, "[PS] Get-AuthConfig | Format-List\n\n")
		kv(w, [][2]string{
			{"CurrentCertificateThumbprint", o.GetIssuerThumbprint()},
			{"ServiceName", o.GetServiceName()},
			{"Realm", o.GetRealm()},
		})
	case pb.Product_PRODUCT_SHAREPOINT:
		fmt.Fprintf(w, "PS> Get-SPAuthenticationRealm\n\n%s\n\n", safe(o.GetRealm()))
	}
}

// printTrust prints one row per trust edge, then the problems of the
// edges that are not working.
func printTrust(w io.Writer, edges []*pb.TrustEdge) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO\tREGISTERED AS\tIDENTIFIER\tTRUST\tENABLED\tKEY IN METADATA\tKEY IN PARTNER CACHE\tREGISTERED REALM\tISSUER EXPIRES\tSKEW\tPROBES\tRESULT")
	for _, e := range edges {
		reg := e.GetRegistration()
		name, id, level, enabled := "-", "-", "-", "-"
		if reg != nil {
			name, id, level, enabled = safe(reg.GetIdentity()), safe(reg.GetApplicationIdentifier()), products.TrustLevelName(reg.GetTrustLevel()), boolPS(reg.GetEnabled())
			if level == "" {
				level = "n/a"
			}
		}
		// The realm the receiver registered the issuer with; the
		// problems below say what does not match.
		realm := safe(reg.GetRealm())
		if realm == "" {
			realm = "-"
		}
		if reg != nil && !e.GetRealmsMatch() {
			realm = "MISMATCH " + realm
		}
		expires := "-"
		if e.GetIssuerNotAfter() != nil {
			expires = e.GetIssuerNotAfter().AsTime().Format("2006-01-02")
			if e.GetIssuerExpiryWarning() != "" {
				expires += " SOON"
			}
		}
		okProbes := 0
		for _, p := range e.GetProbes() {
			if p.GetProbe().GetOk() {
				okProbes++
			}
		}
		result := "ok"
		if e.GetDisabled() {
			result = "ok (disabled: tokens refused)"
		}
		if !e.GetOk() {
			result = "FAILED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%dms\t%d/%d passed\t%s\n", safe(e.GetFrom()), safe(e.GetTo()), name, id, level, enabled,
			yesNo(e.GetKeyInMetadata()), yesNo(e.GetKeyInPartnerCache()), realm, expires, e.GetMaxClockSkewMs(), okProbes, len(e.GetProbes()), result)
	}
	tw.Flush()
	for _, e := range edges {
		for _, p := range e.GetProblems() {
			wrapLine(w, "  ", e.GetFrom()+" → "+e.GetTo()+": "+p)
		}
	}
}

// openDrift is the drift a host still has: what auto-correct did not correct.
func openDrift(ds []*pb.Drift) []*pb.Drift {
	var out []*pb.Drift
	for _, d := range ds {
		if !d.GetCorrected() {
			out = append(out, d)
		}
	}
	return out
}

// driftText is the DRIFT column: the number of items not as applied, "-"
// for none, and how many auto-correct corrected.
func driftText(ds []*pb.Drift) string {
	open := len(openDrift(ds))
	corrected := len(ds) - open
	switch {
	case open == 0 && corrected == 0:
		return "-"
	case corrected == 0:
		return fmt.Sprint(open)
	}
	return fmt.Sprintf("%d (%d corrected)", open, corrected)
}

// printDrift prints a line per host that has drift, naming the items.
func printDrift(w io.Writer, hosts []*pb.Host) {
	for _, h := range hosts {
		for _, d := range h.GetDrift() {
			c := ""
			if d.GetCorrected() {
				c = " (corrected)"
			}
			fmt.Fprintf(w, "  DRIFT on %s (%s): %s: %s%s\n", safe(h.GetHost()), safe(h.GetDeployment()), safe(d.GetItem()), safe(d.GetActual()), c)
		}
	}
}

// driftError names every host with drift not corrected, nil when none.
func driftError(hosts []*pb.Host) error {
	var parts []string
	for _, h := range hosts {
		var items []string
		for _, d := range openDrift(h.GetDrift()) {
			items = append(items, safe(d.GetItem()))
		}
		if len(items) > 0 {
			parts = append(parts, fmt.Sprintf("%s (%s)", safe(h.GetHost()), strings.Join(items, ", ")))
		}
	}
	if len(parts) == 0 {
		return nil
	}
	return &exitError{code: exitDrift, err: fmt.Errorf("drift on %s", strings.Join(parts, ", "))}
}

// realmLine is a host's effective realm: the one in its product's OAuth
// settings and the one its own metadata document shows. They differ by
// product: Lync's is the default SIP domain, Exchange's is blank (its
// metadata says "*"), SharePoint's is the farm id.
func realmLine(h *pb.Host, r *pb.StatusReport) string {
	configured := safe(r.GetOauth().GetRealm())
	if configured == "" {
		configured = "(blank)"
		if h.GetProduct() == pb.Product_PRODUCT_EXCHANGE {
			configured = "(blank: tokens for any accepted domain)"
		}
	}
	doc := "not fetched"
	for _, m := range r.GetMetadata() {
		if m.GetPartner() != "" || m.GetDeployment() != h.GetDeployment() {
			continue
		}
		switch {
		case !m.GetOk():
			doc = "not valid"
		case m.GetRealm() == "" && m.GetIssuer() == "":
			doc = "realm not reported"
		default:
			doc = fmt.Sprintf("realm %s, issuer %s", orDash(safe(m.GetRealm())), orDash(safe(m.GetIssuer())))
		}
	}
	return fmt.Sprintf("Realm: %s; own metadata: %s", configured, doc)
}

// printRealms prints each deployment's effective realm, from the trust report.
func printRealms(w io.Writer, realms []*pb.DeploymentRealm) {
	if len(realms) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEPLOYMENT\tPRODUCT\tREPORTED BY\tCONFIGURED REALM\tMETADATA REALM\tMETADATA ISSUER")
	for _, r := range realms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", safe(r.GetDeployment()), products.Name(r.GetProduct()), orDash(r.GetHost()),
			orDash(r.GetConfiguredRealm()), orDash(r.GetMetadataRealm()), orDash(r.GetMetadataIssuer()))
	}
	tw.Flush()
}

// printExpiryWarnings prints a warning for each deployment whose
// token-issuer certificate expires within 60 days; warnings change no
// exit code.
func printExpiryWarnings(w io.Writer, realms []*pb.DeploymentRealm) {
	for _, r := range realms {
		if x := r.GetIssuerExpiryWarning(); x != "" {
			fmt.Fprintf(w, "warning: %s\n", safe(x))
		}
	}
}

// orDash shows s escaped, or "-" when it is empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return safe(s)
}

// printWarnings prints each of an apply's warnings as "warning: …", with
// control and bidirectional-formatting characters escaped: they quote
// certificate subjects and secret names, which came from outside.
func printWarnings(w io.Writer, warnings []string) {
	for _, s := range warnings {
		fmt.Fprintf(w, "warning: %s\n", safe(s))
	}
}
