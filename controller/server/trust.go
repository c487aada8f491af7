package server

import (
	"context"
	"fmt"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/internal/certs"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// MaxClockSkewMs is the clock difference between two hosts at which token
// validation starts to fail: the products' default skew allowance.
const MaxClockSkewMs = 5 * 60 * 1000

// GetTrustReport implements the RPC; see the proto for its contract.
func (s *FleetService) GetTrustReport(ctx context.Context, _ *pb.GetTrustReportRequest) (*pb.GetTrustReportResponse, error) {
	snap := s.hub.snapshot()
	resp := &pb.GetTrustReportResponse{}
	if snap.topo == nil {
		return resp, nil
	}
	reports, states, err := s.allReports(ctx)
	if err != nil {
		return nil, err
	}
	for _, host := range snap.topo.order {
		cfg := snap.topo.hosts[host]
		// One row per edge: walk each deployment's partners once, from its first host.
		if cfg.GetDeploymentHosts()[0] != host {
			continue
		}
		for _, p := range cfg.GetPartners() {
			resp.Edges = append(resp.Edges, buildEdge(snap, p.GetDeployment(), cfg.GetDeployment(), p.GetName(), !p.GetEnabled(), reports, states))
		}
	}
	slices.SortStableFunc(resp.Edges, func(a, b *pb.TrustEdge) int {
		if a.GetFrom() != b.GetFrom() {
			return cmpString(a.GetFrom(), b.GetFrom())
		}
		return cmpString(a.GetTo(), b.GetTo())
	})
	return resp, nil
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

// allReports reads every host's latest report and state in one range read.
func (s *FleetService) allReports(ctx context.Context) (map[string]*pb.StatusReport, map[string]*pb.Host, error) {
	st := s.hub.cfg.Store
	resp, err := st.Client().Get(ctx, st.Key("hosts/"), clientv3.WithPrefix())
	if err != nil {
		return nil, nil, fmt.Errorf("read host reports: %w", err)
	}
	reports := map[string]*pb.StatusReport{}
	states := map[string]*pb.Host{}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		switch {
		case len(k) > len("/report") && k[len(k)-len("/report"):] == "/report":
			r := &pb.StatusReport{}
			if err := proto.Unmarshal(kv.Value, r); err != nil {
				return nil, nil, fmt.Errorf("decode %s: %w", k, err)
			}
			host := k[len(st.Key("hosts/")) : len(k)-len("/report")]
			reports[host] = r
		case len(k) > len("/state") && k[len(k)-len("/state"):] == "/state":
			h := &pb.Host{}
			if err := proto.Unmarshal(kv.Value, h); err != nil {
				return nil, nil, fmt.Errorf("decode %s: %w", k, err)
			}
			states[h.GetHost()] = h
		}
	}
	return reports, states, nil
}

// buildEdge assembles the row for from→to ("to" accepts tokens issued by "from").
//
// A disabled edge (enabled: false in the topology) works when "to" has the
// partner registered but disabled, and refuses every probe token.
func buildEdge(snap snapshot, from, to, partnerName string, disabled bool, reports map[string]*pb.StatusReport, states map[string]*pb.Host) *pb.TrustEdge {
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
		e.ToRealm = toRep.GetOauth().GetRealm()
		if e.Registration == nil {
			problem("%s has no partner %s", to, partnerName)
		} else if !e.Registration.GetEnabled() && !disabled {
			problem("%s's partner %s is disabled", to, partnerName)
		} else if e.Registration.GetEnabled() && disabled {
			problem("%s's partner %s is enabled, but the topology disables this edge", to, partnerName)
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
	if len(byHost) > 1 {
		for _, f := range certs.CheckSame(byHost) {
			problem("%s", f.Message)
		}
	}
	e.RealmsMatch = e.FromRealm != "" && e.FromRealm == e.ToRealm && (e.Registration == nil || e.Registration.GetRealm() == "" || e.Registration.GetRealm() == e.FromRealm)
	if fromRep != nil && toRep != nil && !e.RealmsMatch {
		problem("realms differ: %s uses %q, %s uses %q", from, e.FromRealm, to, e.ToRealm)
	}

	for _, a := range fromHosts {
		for _, b := range toHosts {
			sa, sb := states[a], states[b]
			if sa.GetLastSeen() == nil || sb.GetLastSeen() == nil {
				continue
			}
			d := sa.GetClockOffsetMs() - sb.GetClockOffsetMs()
			if d < 0 {
				d = -d
			}
			e.MaxClockSkewMs = max(e.MaxClockSkewMs, d)
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
			for _, b := range toHosts {
				if !seen[b] {
					problem("no probe result from %s to %s yet", a, b)
				}
			}
		}
	}
	e.Ok = len(e.Problems) == 0
	return e
}

// primaryReport is the report of a deployment's primary, or of its first
// host that reported.
func primaryReport(snap snapshot, dep string, hosts []string, reports map[string]*pb.StatusReport) *pb.StatusReport {
	if r := reports[snap.primaries[dep]]; r != nil {
		return r
	}
	for _, h := range hosts {
		if r := reports[h]; r != nil {
			return r
		}
	}
	return nil
}
