package server

import (
	"context"
	"fmt"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/pagetoken"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// MaxClockSkewMs is the clock difference between two hosts at which token
// validation starts to fail: the products' default skew allowance.
const MaxClockSkewMs = 5 * 60 * 1000

// Bounds of one trust report row (see the proto).
const (
	maxEdgeProbes   = 100
	maxEdgeProblems = 50
)

// trustEdgeRef is an edge of the topology before its row is built: "to"
// accepts tokens of p.deployment, registered as partner p.
type trustEdgeRef struct {
	from, to string
	p        *pb.Partner
}

func (r trustEdgeRef) cursor() string { return r.from + "\x00" + r.to + "\x00" + r.p.GetName() }

// GetTrustReport implements the RPC; see the proto for its contract.
func (s *FleetService) GetTrustReport(ctx context.Context, req *pb.GetTrustReportRequest) (*pb.GetTrustReportResponse, error) {
	size, err := pagetoken.Size(req.GetPageSize(), defaultTrustPage, maxTrustPage)
	if err != nil {
		return nil, err
	}
	after := ""
	if tok := req.GetPageToken(); tok != "" {
		if after, err = pagetoken.Decode("GetTrustReport", tok); err != nil {
			return nil, err
		}
	}
	snap := s.hub.snapshot()
	resp := &pb.GetTrustReportResponse{}
	if snap.topo == nil {
		return resp, nil
	}
	var refs []trustEdgeRef
	for _, hosts := range snap.topo.deployments {
		if len(hosts) == 0 {
			continue
		}
		// One row per edge: walk each deployment's partners once, from its first host.
		cfg := snap.topo.hosts[hosts[0]]
		for _, p := range cfg.GetPartners() {
			refs = append(refs, trustEdgeRef{from: p.GetDeployment(), to: cfg.GetDeployment(), p: p})
		}
	}
	slices.SortStableFunc(refs, func(a, b trustEdgeRef) int { return cmpString(a.cursor(), b.cursor()) })
	i := 0
	if after != "" {
		i, _ = slices.BinarySearchFunc(refs, after, func(r trustEdgeRef, c string) int { return cmpString(r.cursor(), c) })
		if i < len(refs) && refs[i].cursor() == after {
			i++
		}
	}
	page := refs[i:min(i+size, len(refs))]
	if i+len(page) < len(refs) {
		resp.NextPageToken = pagetoken.Encode("GetTrustReport", page[len(page)-1].cursor())
	}
	var reports map[string]*pb.StatusReport
	var states map[string]*pb.Host
	stale, err := s.fromStore(ctx, func(ctx context.Context) error {
		var err error
		reports, states, err = s.allReports(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	if stale != nil {
		if reports, states, err = s.hub.view.all(); err != nil {
			return nil, err
		}
		resp.Stale = stale
	}
	for _, r := range page {
		resp.Edges = append(resp.Edges, boundEdge(buildEdge(snap, r.p, r.to, reports, states)))
	}
	if req.GetPageToken() == "" {
		resp.Realms = deploymentRealms(snap, reports)
	}
	issuers, err := s.deploymentIssuers(ctx, snap, reports, stale != nil)
	if err != nil {
		return nil, err
	}
	addExpiry(resp, snap, issuers, s.hub.cfg.Now())
	return resp, nil
}

// boundEdge keeps at most maxEdgeProbes probes (failed ones first) and
// maxEdgeProblems problems of a row, with their totals; ok still speaks
// for all of them.
func boundEdge(e *pb.TrustEdge) *pb.TrustEdge {
	e.ProbesTotal, e.ProblemsTotal = int32(len(e.Probes)), int32(len(e.Problems))
	if len(e.Probes) > maxEdgeProbes {
		slices.SortStableFunc(e.Probes, func(a, b *pb.TrustProbeResult) int {
			switch fa, fb := !a.GetProbe().GetOk(), !b.GetProbe().GetOk(); {
			case fa && !fb:
				return -1
			case fb && !fa:
				return 1
			}
			return 0
		})
		e.Probes = e.Probes[:maxEdgeProbes]
	}
	if len(e.Problems) > maxEdgeProblems {
		more := len(e.Problems) - (maxEdgeProblems - 1)
		e.Problems = append(e.Problems[:maxEdgeProblems-1], fmt.Sprintf("… and %d more problems (problems_total %d)", more, e.ProblemsTotal))
	}
	return e
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// allReports reads every host's latest report and state, in one
// transaction of two range reads (one per prefix).
func (s *FleetService) allReports(ctx context.Context) (map[string]*pb.StatusReport, map[string]*pb.Host, error) {
	rs, err := readHostRecords(ctx, s.hub.cfg.Store)
	if err != nil {
		return nil, nil, err
	}
	return rs.reports, rs.states, nil
}

// hostRecords are every host's stored report and state, read at one etcd
// revision, with the revision each was stored at.
type hostRecords struct {
	reports             map[string]*pb.StatusReport
	states              map[string]*pb.Host
	reportRev, stateRev map[string]int64
}

func readHostRecords(ctx context.Context, st *store.Store) (*hostRecords, error) {
	resp, err := st.Client().Txn(ctx).Then(
		clientv3.OpGet(st.HostReportPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(st.HostStatePrefix(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read host reports: %w", err)
	}
	rs := &hostRecords{reports: map[string]*pb.StatusReport{}, states: map[string]*pb.Host{}, reportRev: map[string]int64{}, stateRev: map[string]int64{}}
	for _, kv := range resp.Responses[0].GetResponseRange().GetKvs() {
		r := &pb.StatusReport{}
		if err := proto.Unmarshal(kv.Value, r); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		host := strings.TrimPrefix(string(kv.Key), st.HostReportPrefix())
		rs.reports[host], rs.reportRev[host] = r, kv.ModRevision
	}
	for _, kv := range resp.Responses[1].GetResponseRange().GetKvs() {
		h := &pb.Host{}
		if err := proto.Unmarshal(kv.Value, h); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		host := strings.TrimPrefix(string(kv.Key), st.HostStatePrefix())
		rs.states[host], rs.stateRev[host] = h, kv.ModRevision
	}
	return rs, nil
}

// buildEdge assembles the row for p.deployment→to ("to" accepts tokens
// issued by p's deployment, registered as partner p).
//
// A disabled edge (enabled: false in the topology) works when "to" has the
// partner registered but disabled, and refuses every probe token.
func buildEdge(snap snapshot, p *pb.Partner, to string, reports map[string]*pb.StatusReport, states map[string]*pb.Host) *pb.TrustEdge {
	from, partnerName, disabled := p.GetDeployment(), p.GetName(), !p.GetEnabled()
	e := &pb.TrustEdge{From: from, To: to, PartnerName: partnerName, Disabled: disabled}
	fromHosts, toHosts := snap.topo.deployments[from], snap.topo.deployments[to]
	problem := func(format string, args ...any) { e.Problems = append(e.Problems, fmt.Sprintf(format, args...)) }

	// "to"'s registration of "from", as its primary (or any host) reports it.
	toRep := primaryReport(snap, to, toHosts, reports)
	if toRep == nil {
		problem("%s has not reported yet", to)
	} else {
		for _, pa := range toRep.GetPartners() {
			if pa.GetIdentity() == partnerName || pa.GetName() == partnerName {
				e.Registration = pa
			}
		}
		if e.Registration == nil {
			// Exchange's Configure-EnterprisePartnerApplication.ps1 names
			// partners itself: they are found by identifier and metadata URL.
			for _, pa := range toRep.GetPartners() {
				if strings.EqualFold(pa.GetApplicationIdentifier(), p.GetApplicationIdentifier()) && strings.EqualFold(pa.GetMetadataUrl(), p.GetMetadataUrl()) {
					e.Registration, e.PartnerName, partnerName = pa, pa.GetName(), pa.GetName()
				}
			}
		}
		e.ToRealm = toRep.GetOauth().GetRealm()
		if e.Registration == nil {
			problem("%s has no partner %s", to, partnerName)
		} else if !e.Registration.GetEnabled() && !disabled {
			problem("%s's partner %s is disabled", to, partnerName)
		} else if e.Registration.GetEnabled() && disabled {
			problem("%s's partner %s is enabled, but the topology disables this edge", to, partnerName)
		}
		// The row shows the level the receiver really has; only Lync
		// reports one (ApplicationTrustLevel), so unspecified is no finding.
		if got, want := e.Registration.GetTrustLevel(), p.GetTrustLevel(); e.Registration != nil &&
			got != pb.TrustLevel_TRUST_LEVEL_UNSPECIFIED && want != pb.TrustLevel_TRUST_LEVEL_UNSPECIFIED && got != want {
			problem("%s's partner %s has ApplicationTrustLevel %s, the topology wants %s", to, partnerName, products.TrustLevelName(got), products.TrustLevelName(want))
		}
	}

	fromRep := primaryReport(snap, from, fromHosts, reports)
	if fromRep == nil {
		problem("%s has not reported yet", from)
	} else {
		e.IssuerThumbprint = fromRep.GetIssuerCertificate().GetThumbprint()
		e.IssuerNotAfter = fromRep.GetIssuerCertificate().GetNotAfter()
		e.FromRealm = fromRep.GetOauth().GetRealm()
		for _, h := range fromHosts {
			for _, m := range reports[h].GetMetadata() {
				if m.GetPartner() == "" && m.GetOk() && slices.Contains(m.GetThumbprints(), e.IssuerThumbprint) {
					e.KeyInMetadata = true
				}
			}
		}
		if e.IssuerThumbprint == "" {
			problem("%s has no token-issuer certificate", from)
		} else if !e.KeyInMetadata {
			problem("%s's signing certificate %s is not in its own metadata document as its hosts fetched it", from, e.IssuerThumbprint)
		}
		if e.Registration != nil {
			e.KeyInPartnerCache = slices.Contains(e.Registration.GetCachedThumbprints(), e.IssuerThumbprint)
			if !e.KeyInPartnerCache && e.IssuerThumbprint != "" && !disabled {
				problem("%s's cached metadata of %s lacks its signing certificate %s: refresh the partner's metadata", to, from, e.IssuerThumbprint)
			}
		}
	}
	// The same certificate on every host of the issuing deployment (the
	// CMS replicates Lync's; a Front End with another one signs tokens its
	// partners reject).
	byHost := map[string]string{}
	for _, h := range fromHosts {
		if r := reports[h]; r != nil {
			byHost[h] = r.GetIssuerCertificate().GetThumbprint()
		}
	}
	if len(byHost) > 1 && !rollingOver(byHost, reports, e.Registration) {
		for _, f := range certs.CheckSame(byHost) {
			problem("%s", f.Message)
		}
	}
	realmProblems := realmChecks(snap, e, reports)
	for _, rp := range realmProblems {
		problem("%s", rp)
	}
	e.RealmsMatch = fromRep != nil && toRep != nil && len(realmProblems) == 0

	// The largest skew between a host of each side is between one side's
	// extreme offsets and the other's: linear, not a walk over every pair.
	if fa, ok := offsetRange(fromHosts, states); ok {
		if tb, ok := offsetRange(toHosts, states); ok {
			e.MaxClockSkewMs = max(fa[1]-tb[0], tb[1]-fa[0], 0)
		}
	}
	if e.MaxClockSkewMs >= MaxClockSkewMs {
		problem("clock skew between %s and %s hosts is %ds, beyond the 5-minute allowance", from, to, e.MaxClockSkewMs/1000)
	}

	for _, a := range fromHosts {
		seen := map[string]bool{}
		for _, p := range reports[a].GetProbes() {
			if p.GetToDeployment() != to {
				continue
			}
			seen[p.GetTargetHost()] = true
			e.Probes = append(e.Probes, &pb.TrustProbeResult{FromHost: a, Probe: p})
			switch {
			case disabled && p.GetOk():
				problem("probe %s → %s: token accepted, but the topology disables this edge", a, p.GetTargetHost())
			case disabled && p.GetReason() == "partner-disabled":
				// refused as it should be
			case !p.GetOk():
				problem("probe %s → %s failed: %s: %s", a, p.GetTargetHost(), p.GetReason(), p.GetDetail())
			}
		}
		if reports[a] != nil {
			// The hosts of "to" that a probes: its configuration's sample
			// (at most topology.MaxProbeTargets), not every host of "to".
			for _, b := range probeTargets(snap, a, to) {
				if !seen[b] {
					problem("no probe result from %s to %s yet", a, b)
				}
			}
		}
	}
	e.Ok = len(e.Problems) == 0
	return e
}

// rollingOver reports whether the issuing deployment's hosts differ in
// certificate only as a scheduled roll does while it reaches them one
// after the other (Lync's Set-CsCertificate -Roll at its EffectiveDate,
// which each Front End's report shows when its agent next looks): every
// host's certificate is the current, staged next or previous certificate
// of every other host, and the receiver, when known, has every one of them
// in its cached metadata, so tokens signed with either are accepted.
func rollingOver(byHost map[string]string, reports map[string]*pb.StatusReport, reg *pb.PartnerApplication) bool {
	for h, tp := range byHost {
		if tp == "" || (reg != nil && !slices.ContainsFunc(reg.GetCachedThumbprints(), func(c string) bool { return strings.EqualFold(c, tp) })) {
			return false
		}
		for other := range byHost {
			o := reports[other].GetOauth()
			known := []string{byHost[other], o.GetNextIssuerThumbprint(), o.GetPreviousIssuerThumbprint()}
			if other != h && !slices.ContainsFunc(known, func(k string) bool { return k != "" && strings.EqualFold(k, tp) }) {
				return false
			}
		}
	}
	return true
}

// offsetRange is the smallest and largest clock offset of the hosts that
// have been seen; false when none has.
func offsetRange(hosts []string, states map[string]*pb.Host) ([2]int64, bool) {
	var r [2]int64
	ok := false
	for _, h := range hosts {
		st := states[h]
		if st.GetLastSeen() == nil {
			continue
		}
		o := st.GetClockOffsetMs()
		if !ok {
			r, ok = [2]int64{o, o}, true
		}
		r[0], r[1] = min(r[0], o), max(r[1], o)
	}
	return r, ok
}

// probeTargets is the hosts of deployment to that host probes, as its
// configuration in the current revision names them.
func probeTargets(snap snapshot, host, to string) []string {
	for _, t := range snap.topo.hosts[host].GetTrustedBy() {
		if t.GetDeployment() == to {
			return t.GetHosts()
		}
	}
	return nil
}

// primaryReport is the report of a deployment's primary, or of its first
// host that reported.
func primaryReport(snap snapshot, dep string, hosts []string, reports map[string]*pb.StatusReport) *pb.StatusReport {
	return reports[primaryHost(snap, dep, hosts, reports)]
}

// primaryHost is the deployment's primary when it has reported, else its
// first host that reported, else "".
func primaryHost(snap snapshot, dep string, hosts []string, reports map[string]*pb.StatusReport) string {
	if p := snap.primaries[dep]; reports[p] != nil {
		return p
	}
	for _, h := range hosts {
		if reports[h] != nil {
			return h
		}
	}
	return ""
}

// realmChecks checks the realms of an edge as the products use them. The
// realms of the three products need not be equal (Lync: the default SIP
// domain; Exchange: blank, "*" in its metadata; SharePoint: the farm id);
// what must hold is that the issuer's metadata document is consistent
// (issuer = "<serviceName>@<realm>") and that the receiver registered the
// issuer with the realm that document shows: New-CsPartnerApplication
// -MetadataUrl takes it from there, and the receiver matches a token's
// issuer against it.
func realmChecks(snap snapshot, e *pb.TrustEdge, reports map[string]*pb.StatusReport) []string {
	var out []string
	from := e.GetFrom()
	fromHosts := snap.topo.deployments[from]
	var product pb.Product
	if len(fromHosts) > 0 {
		product = snap.topo.hosts[fromHosts[0]].GetProduct()
	}
	// The issuer's document as its own hosts fetched it, else as the
	// receiver's hosts fetched it under the partner's name.
	m := ownMetadata(snap, from, fromHosts, reports)
	if m == nil {
		for _, h := range snap.topo.deployments[e.GetTo()] {
			for _, c := range reports[h].GetMetadata() {
				if m == nil && c.GetOk() && c.GetPartner() == e.GetPartnerName() {
					m = c
				}
			}
		}
	}
	realm, source := metadataRealm(m), "metadata document shows"
	if m != nil {
		out = append(out, issuerProblems(from, product, m)...)
	}
	if realm == "" {
		// Agents that do not report their metadata's realm yet: the
		// issuer's configured realm is the best evidence there is.
		realm, source = e.GetFromRealm(), "OAuth configuration has"
	}
	reg := e.GetRegistration()
	// Realms are DNS names or GUIDs: case does not matter.
	if reg != nil && realm != "" && reg.GetRealm() != "" && !strings.EqualFold(reg.GetRealm(), realm) {
		out = append(out, fmt.Sprintf("%s registers %s with realm %q, but %s's %s realm %q: remove and recreate the partner, which then reads the realm from the metadata",
			e.GetTo(), e.GetPartnerName(), reg.GetRealm(), from, source, realm))
	}
	return out
}

// issuerProblems checks that a deployment's metadata document names its
// issuer as the products publish it: "<serviceName>@<realm>", with the
// product's well-known service name and the document's realm. A document
// fetched by an agent that reports neither realm nor issuer is not judged.
func issuerProblems(dep string, product pb.Product, m *pb.MetadataCheck) []string {
	issuer, realm := m.GetIssuer(), m.GetRealm()
	if issuer == "" {
		return nil
	}
	svc, ir, ok := strings.Cut(issuer, "@")
	if !ok || svc == "" || ir == "" {
		return []string{fmt.Sprintf("%s's metadata document names issuer %q, not <serviceName>@<realm>", dep, issuer)}
	}
	var out []string
	if want := products.ServiceName(product); want != "" && !strings.EqualFold(svc, want) {
		out = append(out, fmt.Sprintf("%s's metadata document names issuer %q, whose service name is not %s's %s", dep, issuer, products.DisplayName(product), want))
	}
	if realm != "" && !strings.EqualFold(ir, realm) {
		out = append(out, fmt.Sprintf("%s's metadata document has realm %q but issuer %q", dep, realm, issuer))
	}
	return out
}

// metadataRealm is a document's realm: its realm field, or the part of its
// issuer after "@" (SharePoint publishes no realm field).
func metadataRealm(m *pb.MetadataCheck) string {
	if r := m.GetRealm(); r != "" {
		return r
	}
	if _, r, ok := strings.Cut(m.GetIssuer(), "@"); ok {
		return r
	}
	return ""
}

// ownMetadata is a deployment's own metadata document as fetched by its
// primary, or else by its first host that fetched it successfully.
func ownMetadata(snap snapshot, dep string, hosts []string, reports map[string]*pb.StatusReport) *pb.MetadataCheck {
	order := append([]string{snap.primaries[dep]}, hosts...)
	for _, h := range order {
		for _, m := range reports[h].GetMetadata() {
			if m.GetPartner() == "" && m.GetOk() {
				return m
			}
		}
	}
	return nil
}

// deploymentRealms lists each deployment's realms as its primary (or its
// first host that reported) sees them, sorted by deployment.
func deploymentRealms(snap snapshot, reports map[string]*pb.StatusReport) []*pb.DeploymentRealm {
	var out []*pb.DeploymentRealm
	for dep, hosts := range snap.topo.deployments {
		r := &pb.DeploymentRealm{Deployment: dep}
		if len(hosts) > 0 {
			r.Product = snap.topo.hosts[hosts[0]].GetProduct()
		}
		r.Host = primaryHost(snap, dep, hosts, reports)
		r.ConfiguredRealm = reports[r.Host].GetOauth().GetRealm()
		if m := ownMetadata(snap, dep, hosts, reports); m != nil {
			r.MetadataRealm, r.MetadataIssuer = metadataRealm(m), m.GetIssuer()
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *pb.DeploymentRealm) int { return cmpString(a.GetDeployment(), b.GetDeployment()) })
	return out
}
