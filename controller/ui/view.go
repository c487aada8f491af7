package ui

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/pagetoken"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// view is what GET /api/fleet answers: the page's whole state in one
// document, so that a poll shows one consistent moment. Every string in it
// may come from an agent; the page only ever puts them in textContent.
type view struct {
	Now          time.Time    `json:"now"`
	Deployments  []deployment `json:"deployments"`
	Hosts        []host       `json:"hosts"`
	Edges        []edge       `json:"edges"`
	Certificates []certRow    `json:"certificates"`
	// Rollouts are the newest rollouts, newest first.
	Rollouts []rolloutRow `json:"rollouts"`
	// ReportsOmitted counts hosts whose status report was not read: those
	// after the first ReportLimit.
	ReportsOmitted int `json:"reportsOmitted"`
	ReportLimit    int `json:"reportLimit"`
}

type deployment struct {
	Name            string `json:"name"`
	Product         string `json:"product"`
	ProductName     string `json:"productName"`
	Hosts           int    `json:"hosts"`
	Connected       int    `json:"connected"`
	ConfiguredRealm string `json:"configuredRealm"`
	MetadataRealm   string `json:"metadataRealm"`
	MetadataIssuer  string `json:"metadataIssuer"`
}

type host struct {
	Host           string     `json:"host"`
	Deployment     string     `json:"deployment"`
	Product        string     `json:"product"`
	ProductVersion string     `json:"productVersion"`
	Primary        bool       `json:"primary"`
	Connected      bool       `json:"connected"`
	DesiredVersion uint64     `json:"desiredVersion"`
	AppliedVersion uint64     `json:"appliedVersion"`
	InSync         bool       `json:"inSync"`
	Result         string     `json:"result"`
	ResultVersion  uint64     `json:"resultVersion"`
	ResultTime     *time.Time `json:"resultTime,omitempty"`
	ResultErrors   []string   `json:"resultErrors"`
	Drift          []drift    `json:"drift"`
	// ReportClock is the agent's clock in its stored status report. The
	// controller rewrites that report only when it changes, so its age is
	// the time since the host last reported something new.
	ReportClock  *time.Time `json:"reportClock,omitempty"`
	AgentVersion string     `json:"agentVersion"`
	Driver       string     `json:"driver"`
	Monitor      bool       `json:"monitor"`
}

type drift struct {
	Item      string `json:"item"`
	Expected  string `json:"expected"`
	Actual    string `json:"actual"`
	Corrected bool   `json:"corrected"`
}

type edge struct {
	From        string `json:"from"`
	To          string `json:"to"`
	PartnerName string `json:"partnerName"`
	// State colours the edge: ok, failed, pending (no probe yet) or
	// disabled (enabled: false in the topology, and refused as it should be).
	State             string        `json:"state"`
	OK                bool          `json:"ok"`
	Disabled          bool          `json:"disabled"`
	Problems          []string      `json:"problems"`
	Registration      *registration `json:"registration,omitempty"`
	IssuerThumbprint  string        `json:"issuerThumbprint"`
	IssuerNotAfter    *time.Time    `json:"issuerNotAfter,omitempty"`
	KeyInMetadata     bool          `json:"keyInMetadata"`
	KeyInPartnerCache bool          `json:"keyInPartnerCache"`
	FromRealm         string        `json:"fromRealm"`
	ToRealm           string        `json:"toRealm"`
	RealmsMatch       bool          `json:"realmsMatch"`
	MaxClockSkewMs    int64         `json:"maxClockSkewMs"`
	Probes            []probe       `json:"probes"`
}

type registration struct {
	Identity              string `json:"identity"`
	ApplicationIdentifier string `json:"applicationIdentifier"`
	MetadataURL           string `json:"metadataUrl"`
	Realm                 string `json:"realm"`
	TrustLevel            string `json:"trustLevel"`
	Enabled               bool   `json:"enabled"`
}

type probe struct {
	FromHost   string `json:"fromHost"`
	TargetHost string `json:"targetHost"`
	OK         bool   `json:"ok"`
	Reason     string `json:"reason"`
	Detail     string `json:"detail"`
}

// certRow is one token-issuer certificate of a deployment, as its hosts
// report it and as the trust edges it issues for name it.
type certRow struct {
	Deployment string     `json:"deployment"`
	Thumbprint string     `json:"thumbprint"`
	Subject    string     `json:"subject"`
	NotBefore  *time.Time `json:"notBefore,omitempty"`
	NotAfter   *time.Time `json:"notAfter,omitempty"`
	// Hosts are the hosts whose reports show it as their issuer certificate.
	Hosts []string `json:"hosts"`
}

// maxReports bounds the status reports one poll reads (the first pages
// of ListHosts ask for them, HOST_VIEW_FULL; the rest do not). Beyond it
// the hosts table shows no report age.
const maxReports = 500

// buildView asks the fleet service for hosts, their reports and the trust
// report, and shapes them for the page.
func buildView(ctx context.Context, fleet Fleet, rollouts Rollouts, now time.Time) (*view, error) {
	hosts := &pb.ListHostsResponse{Statuses: map[string]*pb.StatusReport{}}
	err := pagetoken.All(ctx, func(ctx context.Context, token string) (string, error) {
		req := &pb.ListHostsRequest{PageToken: token}
		if len(hosts.Hosts) < maxReports {
			req.View, req.PageSize = pb.HostView_HOST_VIEW_FULL, int32(maxReports-len(hosts.Hosts))
		}
		resp, err := fleet.ListHosts(ctx, req)
		if err != nil {
			return "", err
		}
		hosts.Hosts = append(hosts.Hosts, resp.GetHosts()...)
		maps.Copy(hosts.Statuses, resp.GetStatuses())
		return resp.GetNextPageToken(), nil
	})
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	trust := &pb.GetTrustReportResponse{}
	err = pagetoken.All(ctx, func(ctx context.Context, token string) (string, error) {
		resp, err := fleet.GetTrustReport(ctx, &pb.GetTrustReportRequest{PageToken: token})
		if err != nil {
			return "", err
		}
		trust.Edges = append(trust.Edges, resp.GetEdges()...)
		trust.Realms = append(trust.Realms, resp.GetRealms()...)
		return resp.GetNextPageToken(), nil
	})
	if err != nil {
		return nil, fmt.Errorf("get the trust report: %w", err)
	}
	v := &view{Now: now, Deployments: []deployment{}, Hosts: []host{}, Edges: []edge{}, Certificates: []certRow{}, ReportLimit: maxReports}
	if v.Rollouts, err = listRollouts(ctx, rollouts); err != nil {
		return nil, err
	}
	deps := map[string]*deployment{}
	certs := map[[2]string]*certRow{}
	cert := func(dep, thumb string) *certRow {
		k := [2]string{dep, thumb}
		if certs[k] == nil {
			certs[k] = &certRow{Deployment: dep, Thumbprint: thumb, Hosts: []string{}}
		}
		return certs[k]
	}
	for i, h := range hosts.GetHosts() {
		d := deps[h.GetDeployment()]
		if d == nil {
			d = &deployment{Name: h.GetDeployment(), Product: products.Name(h.GetProduct()), ProductName: products.DisplayName(h.GetProduct())}
			deps[d.Name] = d
		}
		d.Hosts++
		if h.GetConnected() {
			d.Connected++
		}
		row := hostRow(h)
		if i >= maxReports {
			v.ReportsOmitted++
		} else if rep := hosts.GetStatuses()[h.GetHost()]; rep != nil {
			row.ReportClock = timeOf(rep.GetClock())
			row.Monitor = rep.GetMonitor()
			if c := rep.GetIssuerCertificate(); c.GetThumbprint() != "" {
				r := cert(h.GetDeployment(), c.GetThumbprint())
				r.Subject, r.NotBefore, r.NotAfter = c.GetSubject(), timeOf(c.GetNotBefore()), timeOf(c.GetNotAfter())
				r.Hosts = append(r.Hosts, h.GetHost())
			}
		}
		v.Hosts = append(v.Hosts, row)
	}
	for _, r := range trust.GetRealms() {
		if d := deps[r.GetDeployment()]; d != nil {
			d.ConfiguredRealm, d.MetadataRealm, d.MetadataIssuer = r.GetConfiguredRealm(), r.GetMetadataRealm(), r.GetMetadataIssuer()
		}
	}
	for _, e := range trust.GetEdges() {
		v.Edges = append(v.Edges, edgeRow(e))
		// An issuer's certificate as the edges name it, for deployments
		// whose hosts have not reported one.
		if e.GetIssuerThumbprint() != "" && e.GetIssuerNotAfter() != nil {
			if r := cert(e.GetFrom(), e.GetIssuerThumbprint()); r.NotAfter == nil {
				r.NotAfter = timeOf(e.GetIssuerNotAfter())
			}
		}
	}
	for _, d := range deps {
		v.Deployments = append(v.Deployments, *d)
	}
	sort.Slice(v.Deployments, func(i, j int) bool { return v.Deployments[i].Name < v.Deployments[j].Name })
	for _, c := range certs {
		if c.NotAfter != nil {
			v.Certificates = append(v.Certificates, *c)
		}
	}
	sort.Slice(v.Certificates, func(i, j int) bool {
		a, b := v.Certificates[i], v.Certificates[j]
		if !a.NotAfter.Equal(*b.NotAfter) {
			return a.NotAfter.Before(*b.NotAfter)
		}
		return a.Deployment+a.Thumbprint < b.Deployment+b.Thumbprint
	})
	return v, nil
}

func hostRow(h *pb.Host) host {
	r := host{
		Host: h.GetHost(), Deployment: h.GetDeployment(), Product: products.Name(h.GetProduct()), ProductVersion: h.GetProductVersion(),
		Primary: h.GetPrimary(), Connected: h.GetConnected(),
		DesiredVersion: h.GetDesiredVersion(), AppliedVersion: h.GetAppliedVersion(),
		InSync:       h.GetDesiredHash() != "" && h.GetAppliedHash() == h.GetDesiredHash(),
		ResultErrors: []string{}, Drift: []drift{},
		AgentVersion: h.GetAgentVersion(), Driver: h.GetDriver(),
	}
	if lr := h.GetLastResult(); lr != nil {
		switch lr.GetKind() {
		case pb.ResultKind_RESULT_KIND_ACK:
			r.Result = "ack"
		case pb.ResultKind_RESULT_KIND_NACK:
			r.Result = "nack"
		}
		r.ResultVersion, r.ResultTime = lr.GetVersion(), timeOf(lr.GetTime())
		for _, e := range lr.GetErrors() {
			r.ResultErrors = append(r.ResultErrors, e.GetItem()+": "+e.GetMessage())
		}
	}
	for _, d := range h.GetDrift() {
		r.Drift = append(r.Drift, drift{Item: d.GetItem(), Expected: d.GetExpected(), Actual: d.GetActual(), Corrected: d.GetCorrected()})
	}
	return r
}

func edgeRow(e *pb.TrustEdge) edge {
	r := edge{
		From: e.GetFrom(), To: e.GetTo(), PartnerName: e.GetPartnerName(), OK: e.GetOk(), Disabled: e.GetDisabled(),
		Problems: append([]string{}, e.GetProblems()...), IssuerThumbprint: e.GetIssuerThumbprint(), IssuerNotAfter: timeOf(e.GetIssuerNotAfter()),
		KeyInMetadata: e.GetKeyInMetadata(), KeyInPartnerCache: e.GetKeyInPartnerCache(),
		FromRealm: e.GetFromRealm(), ToRealm: e.GetToRealm(), RealmsMatch: e.GetRealmsMatch(), MaxClockSkewMs: e.GetMaxClockSkewMs(),
		Probes: []probe{},
	}
	if reg := e.GetRegistration(); reg != nil {
		r.Registration = &registration{
			Identity: reg.GetIdentity(), ApplicationIdentifier: reg.GetApplicationIdentifier(), MetadataURL: reg.GetMetadataUrl(),
			Realm: reg.GetRealm(), TrustLevel: products.TrustLevelName(reg.GetTrustLevel()), Enabled: reg.GetEnabled(),
		}
	}
	for _, p := range e.GetProbes() {
		r.Probes = append(r.Probes, probe{FromHost: p.GetFromHost(), TargetHost: p.GetProbe().GetTargetHost(), OK: p.GetProbe().GetOk(),
			Reason: p.GetProbe().GetReason(), Detail: p.GetProbe().GetDetail()})
	}
	switch {
	case e.GetOk() && e.GetDisabled():
		r.State = "disabled"
	case e.GetOk():
		r.State = "ok"
	case len(e.GetProbes()) == 0:
		// Nothing probed yet: a fleet still converging, not a failure to shout about.
		r.State = "pending"
	default:
		r.State = "failed"
	}
	return r
}

func timeOf(ts *timestamppb.Timestamp) *time.Time {
	if ts == nil {
		return nil
	}
	t := ts.AsTime()
	return &t
}
