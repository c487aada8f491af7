package cmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/s2strust/s2strust/controller/convergence"
	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/s2stoken"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Exit codes of status.
const (
	// exitTrust: a trust edge is not working.
	exitTrust = 3
	// exitDrift: a host's actual state moved away from what it applied.
	exitDrift = 4
	// exitNack: a host rejected (NACKed) its desired configuration.
	exitNack = 6
	// exitDisconnected: a host's agent has no stream open.
	exitDisconnected = 7
)

// clockWarning is the offset from the controller's clock at which status
// warns of a host's clock: well inside the products' 5-minute allowance
// (s2stoken.DefaultSkew) between two hosts, so there is time to fix it.
const clockWarning = time.Minute

// Host states of the status table, one per host, the worst first.
const (
	stateNack         = "NACK"
	stateDisconnected = "disconnected"
	stateDrift        = "drift"
	statePending      = "pending"
	stateMonitor      = "monitor"
	stateConverged    = "converged"
)

// fleetState is the STATE of h, one per host so that the summary's counts
// add up: monitor for an agent in monitor mode, NACK when it rejected its
// desired revision, disconnected when its agent has no stream, drift when
// its state moved from what it applied and was not corrected, pending
// while it has not converged, else converged.
func fleetState(h *pb.Host) string {
	lr := h.GetLastResult()
	switch {
	case lr.GetMonitor():
		return stateMonitor
	case lr.GetKind() == pb.ResultKind_RESULT_KIND_NACK && lr.GetVersion() >= h.GetDesiredVersion() && !convergence.Converged(h, h.GetDesiredVersion()):
		return stateNack
	case !h.GetConnected():
		return stateDisconnected
	case len(openDrift(h.GetDrift())) > 0:
		return stateDrift
	case !convergence.Converged(h, h.GetDesiredVersion()):
		return statePending
	}
	return stateConverged
}

// needsDetail reports whether status shows d's section without --details:
// the host is not converged, drifted, or reported a failed item, metadata
// download or probe.
func needsDetail(d hostDetail) bool {
	if fleetState(d.host) != stateConverged || d.report == nil {
		return true
	}
	for _, it := range d.report.GetItems() {
		if it.GetState() != pb.ItemState_ITEM_STATE_OK {
			return true
		}
	}
	for _, m := range d.report.GetMetadata() {
		if !m.GetOk() {
			return true
		}
	}
	for _, p := range d.report.GetProbes() {
		if !p.GetOk() {
			return true
		}
	}
	return false
}

// reportAge is how long ago, by the controller's clock as well as this
// machine can tell, the host made its latest report: its own clock then,
// less its offset from the controller's. -1 without a report.
func reportAge(d hostDetail, now time.Time) time.Duration {
	if d.report.GetClock() == nil {
		return -1
	}
	at := d.report.GetClock().AsTime().Add(-time.Duration(d.host.GetClockOffsetMs()) * time.Millisecond)
	// The controller stores a report only when it changed, but records
	// the offset (and when: last_seen) from every report: a report came at
	// last_seen at the latest, and one whose clock was stepped since it
	// was stored no longer dates by the new offset.
	if ls := d.host.GetLastSeen(); ls != nil && (at.Before(ls.AsTime()) || at.After(now)) {
		at = ls.AsTime()
	}
	return max(0, now.Sub(at))
}

// ageText is a report age for the table: "4s", "3m", "2h", "-" for none.
func ageText(d time.Duration) string {
	switch {
	case d < 0:
		return "-"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// clockKnown reports whether the controller has measured h's clock.
func clockKnown(h *pb.Host) bool { return h.GetLastSeen() != nil }

// offsetText is a host's clock offset to the second (the controller
// records it when it moves by a second; below that it is the report's
// latency), "+2s" ahead of the controller's or "-3m0s" behind; "-" when
// not measured.
func offsetText(h *pb.Host) string {
	if !clockKnown(h) {
		return "-"
	}
	d := (time.Duration(h.GetClockOffsetMs()) * time.Millisecond).Round(time.Second)
	if d >= 0 {
		return "+" + d.String()
	}
	return d.String()
}

// summary is status's first screen: counts, trust, warnings.
type summary struct {
	Hosts        int `json:"hosts"`
	Converged    int `json:"converged"`
	Pending      int `json:"pending"`
	Nack         int `json:"nack"`
	Drift        int `json:"drift"`
	Disconnected int `json:"disconnected"`
	Monitor      int `json:"monitor"`
	TrustOK      int `json:"trustEdgesOk"`
	TrustFailing int `json:"trustEdgesFailing"`
	// Warnings are the certificate-expiry and clock warnings, one a line.
	Warnings []string `json:"warnings"`
}

// summarize counts details and collects the warnings of the trust report.
func summarize(details []hostDetail, trust *pb.GetTrustReportResponse) summary {
	s := summary{Hosts: len(details), Warnings: []string{}}
	for _, d := range details {
		switch fleetState(d.host) {
		case stateConverged:
			s.Converged++
		case statePending:
			s.Pending++
		case stateNack:
			s.Nack++
		case stateDisconnected:
			s.Disconnected++
		case stateMonitor:
			s.Monitor++
		case stateDrift:
			s.Drift++
		}
	}
	for _, e := range trust.GetEdges() {
		if e.GetOk() {
			s.TrustOK++
		} else {
			s.TrustFailing++
		}
	}
	for _, r := range trust.GetRealms() {
		if x := r.GetIssuerExpiryWarning(); x != "" {
			s.Warnings = append(s.Warnings, x)
		}
	}
	s.Warnings = append(s.Warnings, clockWarnings(details)...)
	return s
}

// clockWarnings names each host whose clock is a minute or more off the
// controller's, and the two hosts furthest apart when they are beyond the
// products' skew allowance, where tokens between them start to fail.
func clockWarnings(details []hostDetail) []string {
	var out []string
	var lo, hi *pb.Host
	for _, d := range details {
		h := d.host
		if !clockKnown(h) {
			continue
		}
		off := time.Duration(h.GetClockOffsetMs()) * time.Millisecond
		if off >= clockWarning || -off >= clockWarning {
			dir := "ahead of"
			if off < 0 {
				dir = "behind"
			}
			out = append(out, fmt.Sprintf("clock of %s (%s) is %s %s the controller's", h.GetHost(), h.GetDeployment(), off.Abs().Round(time.Second), dir))
		}
		if lo == nil || h.GetClockOffsetMs() < lo.GetClockOffsetMs() {
			lo = h
		}
		if hi == nil || h.GetClockOffsetMs() > hi.GetClockOffsetMs() {
			hi = h
		}
	}
	if lo != nil && time.Duration(hi.GetClockOffsetMs()-lo.GetClockOffsetMs())*time.Millisecond >= s2stoken.DefaultSkew {
		out = append(out, fmt.Sprintf("clock skew between %s (%s) and %s (%s) is %s, beyond the %s the products allow: tokens between them fail",
			hi.GetHost(), offsetText(hi), lo.GetHost(), offsetText(lo), (time.Duration(hi.GetClockOffsetMs()-lo.GetClockOffsetMs())*time.Millisecond).Round(time.Second), s2stoken.DefaultSkew))
	}
	return out
}

// printSummary prints the summary in a few lines.
func printSummary(w io.Writer, s summary) {
	parts := []string{fmt.Sprintf("%d converged", s.Converged)}
	for _, p := range []struct {
		n    int
		what string
	}{{s.Pending, "pending"}, {s.Nack, "NACK"}, {s.Drift, "drift"}, {s.Disconnected, "disconnected"}, {s.Monitor, "monitor mode"}} {
		if p.n > 0 || p.what != "monitor mode" {
			parts = append(parts, fmt.Sprintf("%d %s", p.n, p.what))
		}
	}
	fmt.Fprintf(w, "%s: %s\n", count(s.Hosts, "host"), strings.Join(parts, ", "))
	fmt.Fprintf(w, "trust edges: %d ok, %d failing\n", s.TrustOK, s.TrustFailing)
	for _, x := range s.Warnings {
		fmt.Fprintf(w, "warning: %s\n", safe(x))
	}
}

// printStatusTable is one row per host: its state, revision, last answer,
// drift, report age and clock offset.
func printStatusTable(w io.Writer, details []hostDetail, now time.Time) error {
	t := newTable(w, "HOST", "DEPLOYMENT", "PRODUCT", "STATE", "REVISION", "DRIFT", "REPORTED", "CLOCK", "LAST RESULT~")
	for _, d := range details {
		h := d.host
		t.row(h.GetHost(), h.GetDeployment(), products.Name(h.GetProduct())+" "+h.GetProductVersion(), fleetState(h), revisionText(h),
			driftText(h.GetDrift()), ageText(reportAge(d, now)), offsetText(h), resultText(h.GetLastResult()))
	}
	return t.flush()
}

// printHostProblems is a host's section in status: what is wrong with it
// (its answer, items, drift and failed checks, the messages wrapped, never
// cut), not what is right; get host H and status --details show all.
func printHostProblems(w io.Writer, d hostDetail) {
	h, r := d.host, d.report
	if !printSectionOpening(w, d) {
		return
	}
	if lr := h.GetLastResult(); fleetState(h) == stateNack {
		fmt.Fprintf(w, "NACK of version %d:\n", lr.GetVersion())
		for _, e := range lr.GetErrors() {
			wrapLine(w, "  ", e.GetItem()+": "+e.GetMessage())
		}
	}
	items := append([]*pb.ItemStatus(nil), r.GetItems()...)
	sort.SliceStable(items, func(i, j int) bool { return items[i].GetItem() < items[j].GetItem() })
	for _, it := range items {
		if it.GetState() != pb.ItemState_ITEM_STATE_OK && it.GetState() != pb.ItemState_ITEM_STATE_DRIFTED {
			wrapLine(w, "", stateText(it.GetState())+" "+it.GetItem()+": "+it.GetMessage())
		}
	}
	// The drift kept with the host's state, which is what status counts.
	for _, dr := range h.GetDrift() {
		c := ""
		if dr.GetCorrected() {
			c = " (corrected)"
		}
		wrapLine(w, "", "DRIFT "+dr.GetItem()+": "+dr.GetActual()+c)
	}
	for _, m := range r.GetMetadata() {
		if !m.GetOk() {
			wrapLine(w, "", "FAILED metadata of "+m.GetDeployment()+" from "+m.GetUrl()+": "+m.GetError())
		}
	}
	for _, p := range r.GetProbes() {
		if !p.GetOk() {
			wrapLine(w, "", "FAILED trust probe to "+p.GetToDeployment()+" ("+p.GetTargetHost()+"): "+p.GetReason()+": "+p.GetDetail())
		}
	}
}

// wrapWidth is where status wraps a long message.
const wrapWidth = 100

// wrapLine prints s escaped, wrapped at spaces to wrapWidth, each line
// after the first indented two more than indent.
func wrapLine(w io.Writer, indent, s string) {
	line, empty := indent, true
	for _, word := range strings.Fields(safe(s)) {
		if !empty && len(line)+1+len(word) > wrapWidth {
			fmt.Fprintln(w, line)
			line, empty = indent+"  ", true
		}
		if !empty {
			line += " "
		}
		line += word
		empty = false
	}
	fmt.Fprintln(w, line)
}

// printHostDetail is `get host H`: the host's fields as a list, then its
// section as status shows it.
func printHostDetail(w io.Writer, d hostDetail, now time.Time) {
	h := d.host
	pending := pendingText(h)
	reported := ageText(reportAge(d, now))
	if reported != "-" {
		reported += " ago"
	}
	pairs := [][2]string{
		{"Host", h.GetHost()},
		{"Deployment", h.GetDeployment()},
		{"Product", products.DisplayName(h.GetProduct()) + " " + h.GetProductVersion()},
		{"Primary", yesNo(h.GetPrimary())},
		{"State", fleetState(h)},
		{"Connected", yesNo(h.GetConnected())},
		{"Agent", strings.TrimSpace(h.GetAgentVersion() + " " + h.GetDriver())},
		{"Revision", revisionText(h)},
		{"Desired version", fmt.Sprint(h.GetDesiredVersion())},
		{"Applied version", fmt.Sprint(h.GetAppliedVersion())},
		{"Pending", pending},
		{"Last result", resultText(h.GetLastResult())},
		{"Drift", driftText(h.GetDrift())},
		{"Reported", reported},
		{"Clock offset", offsetText(h)},
	}
	// kv ends with a blank line, as does Format-List; the section starts with one.
	var b strings.Builder
	kv(&b, pairs)
	fmt.Fprint(w, strings.TrimSuffix(b.String(), "\n"))
	printHostSection(w, d)
}

// jsonDetail is a host in status -o json and get host -o json: the
// controller's answer as it is, with what status worked out from it.
type jsonDetail struct {
	Host   json.RawMessage `json:"host"`
	Status json.RawMessage `json:"status"`
	State  string          `json:"state"`
	// ReportAgeMs is -1 without a report.
	ReportAgeMs int64 `json:"reportAgeMs"`
}

func (d hostDetail) json(now time.Time) jsonDetail {
	status := json.RawMessage("null")
	if d.report != nil {
		status = protoJSON(d.report)
	}
	return jsonDetail{Host: protoJSON(d.host), Status: status, State: fleetState(d.host), ReportAgeMs: reportAge(d, now).Milliseconds()}
}

// statusError is status's exit: the worst of a NACK, drift and a
// disconnected host gives the code; the message names every host.
func statusError(details []hostDetail) error {
	var nacked, gone []string
	code := 0
	hosts := make([]*pb.Host, 0, len(details))
	for _, d := range details {
		hosts = append(hosts, d.host)
		switch fleetState(d.host) {
		case stateNack:
			nacked = append(nacked, safe(d.host.GetHost()))
		case stateDisconnected:
			gone = append(gone, safe(d.host.GetHost()))
		}
	}
	var msgs []string
	if len(nacked) > 0 {
		code = exitNack
		msgs = append(msgs, "rejected its configuration (NACK): "+strings.Join(nacked, ", "))
	}
	if err := driftError(hosts); err != nil {
		if code == 0 {
			code = exitDrift
		}
		msgs = append(msgs, err.Error())
	}
	if len(gone) > 0 {
		if code == 0 {
			code = exitDisconnected
		}
		msgs = append(msgs, "disconnected: "+strings.Join(gone, ", "))
	}
	if code == 0 {
		return nil
	}
	return &exitError{code: code, err: errors.New(strings.Join(msgs, "; "))}
}

func newStatus(g *globals) *cobra.Command {
	var trust, plan, all, watch bool
	var host string
	c := &cobra.Command{
		Use:   "status",
		Short: "A fleet summary, then per host: state, revision, last ack or nack, drift, report age and clock offset",
		Args:  cobra.NoArgs,
	}
	o := addOutput(c, formatTable, formatJSON, formatYAML)
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if watch {
			switch {
			case trust || plan:
				return errors.New("-w follows the hosts: it takes neither --trust nor --plan")
			case all:
				return errors.New("-w follows the hosts' table: it takes no --details (get host HOST shows one in detail)")
			case o.machine():
				return fmt.Errorf("-w prints tables: it takes no -o %s", o.format)
			}
			return g.watchStatus(cmd, host)
		}
		if trust && (plan || host != "") {
			return errors.New("--trust shows every edge: it takes neither --plan nor --host")
		}
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			fleet := pb.NewFleetServiceClient(conn)
			if trust {
				return g.statusTrust(ctx, fleet, o, cmd.ErrOrStderr())
			}
			details, stale, err := fetchStatusStale(ctx, fleet, host)
			if err != nil {
				return err
			}
			now := time.Now()
			if plan {
				warnStale(cmd.ErrOrStderr(), stale)
				err := o.print(g.out, detailsJSON(details, now), func() error {
					printPlans(g.out, details)
					return nil
				})
				return err
			}
			rep, err := trustReport(ctx, fleet)
			if err != nil {
				return rpcError("trust report", err)
			}
			warnStale(cmd.ErrOrStderr(), stalest(stale, rep.GetStale()))
			if host != "" {
				// The edges of the host's deployment only.
				var edges []*pb.TrustEdge
				for _, e := range rep.GetEdges() {
					if dep := details[0].host.GetDeployment(); e.GetFrom() == dep || e.GetTo() == dep {
						edges = append(edges, e)
					}
				}
				rep = &pb.GetTrustReportResponse{Edges: edges, Realms: rep.GetRealms()}
			}
			if err := printFleetStatus(g.out, o, details, rep, now, all || host != ""); err != nil {
				return err
			}
			return statusError(details)
		})
	}
	c.Long = fmt.Sprintf(`First a summary: how many hosts have converged, are pending, rejected their configuration (NACK),
drifted or are disconnected; how many trust edges work; certificates about to expire and clocks
that are off. Then one row per host: its state, revision, last ack or nack, drift, how long ago
it reported and its clock's offset from the controller's. Then, per host with a problem (or
every host with --details), what it verified, in the shape of the products' own cmdlets.
-o json or -o yaml prints all of it, every host in full.

With --trust: one row per trust edge, then every host's drift and each deployment's realms.
Both warn of a token-issuer certificate (Lync's OAuthTokenIssuer, Exchange's auth certificate,
SharePoint's STS certificate) that expires within 60 days, and more urgently within 30.

With --plan: per host, the operations its agent reported: for an agent in monitor mode
(s2s-agent run --apply=false) the exact cmdlets it would run, otherwise those it last ran,
each with its item, reason and whether it is primary-only or disruptive; secrets redacted.
--host shows one host only.

With -w: the hosts' table once, then, as hosts change, a timestamped table of only the hosts that
changed, until interrupted (WatchHosts; with --host that host only).

Exits %d when a host rejected its configuration (NACK), else %d when a host has drift that was
not corrected, else %d when a host is disconnected; with --trust %d when a trust edge is not
working.`, exitNack, exitDrift, exitDisconnected, exitTrust)
	c.Flags().BoolVar(&trust, "trust", false, "one row per trust edge: registration, keys, realms, expiry, clock skew and the probe result")
	c.Flags().BoolVar(&plan, "plan", false, "per host, the operations its agent would execute (monitor mode) or last executed")
	c.Flags().BoolVar(&all, "details", false, "show every host's section, not only those of hosts with a problem")
	c.Flags().StringVar(&host, "host", "", "show this host only")
	c.Flags().BoolVarP(&watch, "watch", "w", false, "follow the hosts live (WatchHosts): the table, then each change, until interrupted")
	return c
}

// printFleetStatus is status without --trust or --plan: the summary, the
// table, then the sections of the hosts with a problem (all: of every
// host); or all of it as JSON or YAML.
func printFleetStatus(w io.Writer, o *output, details []hostDetail, rep *pb.GetTrustReportResponse, now time.Time, all bool) error {
	sum := summarize(details, rep)
	doc := struct {
		Summary summary      `json:"summary"`
		Hosts   []jsonDetail `json:"hosts"`
	}{sum, detailsJSON(details, now)}
	return o.print(w, doc, func() error {
		printSummary(w, sum)
		fmt.Fprintln(w)
		if err := printStatusTable(w, details, now); err != nil {
			return err
		}
		shown := 0
		for _, d := range details {
			switch {
			case all:
				printHostSection(w, d)
			case needsDetail(d):
				printHostProblems(w, d)
				shown++
			}
		}
		if !all && shown < len(details) {
			fmt.Fprintf(w, "\n(%s without problems not shown in detail: status --details, or get host HOST)\n", count(len(details)-shown, "host"))
		}
		return nil
	})
}

// detailsJSON is details for -o json.
func detailsJSON(details []hostDetail, now time.Time) []jsonDetail {
	out := make([]jsonDetail, 0, len(details))
	for _, d := range details {
		out = append(out, d.json(now))
	}
	return out
}

// statusTrust is status --trust; stale warnings go to errw.
func (g *globals) statusTrust(ctx context.Context, fleet pb.FleetServiceClient, o *output, errw io.Writer) error {
	rep, err := trustReport(ctx, fleet)
	if err != nil {
		return rpcError("trust report", err)
	}
	hosts, err := listHosts(ctx, fleet, &pb.ListHostsRequest{})
	if err != nil {
		return rpcError("list hosts", err)
	}
	warnStale(errw, stalest(rep.GetStale(), hosts.GetStale()))
	if err := o.print(g.out, rep, func() error {
		printTrust(g.out, rep.GetEdges())
		printDrift(g.out, hosts.GetHosts())
		fmt.Fprintln(g.out)
		printRealms(g.out, rep.GetRealms())
		printExpiryWarnings(g.out, rep.GetRealms())
		return nil
	}); err != nil {
		return err
	}
	var failing []string
	for _, e := range rep.GetEdges() {
		if !e.GetOk() {
			failing = append(failing, safe(e.GetFrom())+" → "+safe(e.GetTo()))
		}
	}
	switch len(failing) {
	case 0:
	case 1:
		return &exitError{code: exitTrust, err: fmt.Errorf("trust edge %s is not working", failing[0])}
	default:
		return &exitError{code: exitTrust, err: fmt.Errorf("%d trust edges are not working: %s", len(failing), strings.Join(failing, ", "))}
	}
	return driftError(hosts.GetHosts())
}
