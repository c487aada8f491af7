package server

import (
	"slices"
	"strings"
	"testing"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// The products' own realms, as a real estate has them: Lync's the default
// SIP domain, Exchange's blank in Get-AuthConfig and "*" in its metadata,
// SharePoint's the farm id (its metadata has no realm field, only the
// issuer).
const farmID = "5c3d3c5e-8a6f-4b0e-9d2a-3f1e2d4c5b6a"

var (
	configuredRealm = map[string]string{"pool01": "contoso.com", "exchange": "", "sharepoint": farmID}
	documentRealm   = map[string]string{"pool01": "contoso.com", "exchange": "*", "sharepoint": ""}
	issuerRealm     = map[string]string{"pool01": "contoso.com", "exchange": "*", "sharepoint": farmID}
	signingKey      = map[string]string{"pool01": "AA11", "exchange": "BB22", "sharepoint": "CC33"}
	serviceOf       = map[string]string{"pool01": products.LyncID, "exchange": products.ExchangeID, "sharepoint": products.SharePointID}
)

// contosoSnapshot is the hub's view of the contoso example with fe01,
// ex01 and sp01 as primaries.
func contosoSnapshot(t *testing.T) snapshot {
	t.Helper()
	c, err := compileDocument(&store.TopologyRecord{Revision: 1, Name: "contoso", Document: examples.Contoso})
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{topo: c, primaries: map[string]string{"pool01": "fe01.contoso.com", "exchange": "ex01.contoso.com", "sharepoint": "sp01.contoso.com"}}
}

func document(dep, partner string) *pb.MetadataCheck {
	return &pb.MetadataCheck{Partner: partner, Deployment: dep, Ok: true, Thumbprints: []string{signingKey[dep]},
		Realm: documentRealm[dep], Issuer: serviceOf[dep] + "@" + issuerRealm[dep]}
}

// healthyReports is what every host of a working estate reports.
func healthyReports(snap snapshot) map[string]*pb.StatusReport {
	out := map[string]*pb.StatusReport{}
	for host, cfg := range snap.topo.hosts {
		dep := cfg.GetDeployment()
		r := &pb.StatusReport{
			Primary:           snap.primaries[dep] == host,
			Oauth:             &pb.OAuthConfiguration{ServiceName: serviceOf[dep], Realm: configuredRealm[dep]},
			IssuerCertificate: &pb.CertificateInfo{Thumbprint: signingKey[dep]},
			Metadata:          []*pb.MetadataCheck{document(dep, "")},
		}
		for _, p := range cfg.GetPartners() {
			r.Metadata = append(r.Metadata, document(p.GetDeployment(), p.GetName()))
			r.Partners = append(r.Partners, &pb.PartnerApplication{Identity: p.GetName(), Name: p.GetName(),
				ApplicationIdentifier: p.GetApplicationIdentifier(), MetadataUrl: p.GetMetadataUrl(),
				Realm: issuerRealm[p.GetDeployment()], TrustLevel: p.GetTrustLevel(), Enabled: p.GetEnabled(),
				CachedThumbprints: []string{signingKey[p.GetDeployment()]}})
		}
		for _, tb := range cfg.GetTrustedBy() {
			for _, h := range tb.GetHosts() {
				r.Probes = append(r.Probes, &pb.TrustProbe{ToDeployment: tb.GetDeployment(), TargetHost: h, Ok: true, IssuerThumbprint: signingKey[dep]})
			}
		}
		out[host] = r
	}
	return out
}

// edges builds every edge of the snapshot, by "from→to".
func edges(snap snapshot, reports map[string]*pb.StatusReport) map[string]*pb.TrustEdge {
	out := map[string]*pb.TrustEdge{}
	for _, hosts := range snap.topo.deployments {
		cfg := snap.topo.hosts[hosts[0]]
		for _, p := range cfg.GetPartners() {
			e := buildEdge(snap, p, cfg.GetDeployment(), reports, nil)
			out[e.GetFrom()+"→"+e.GetTo()] = e
		}
	}
	return out
}

func partnerOf(r *pb.StatusReport, name string) *pb.PartnerApplication {
	for _, p := range r.GetPartners() {
		if p.GetIdentity() == name {
			return p
		}
	}
	return nil
}

func TestTrustReportAcceptsEachProductsOwnRealm(t *testing.T) {
	snap := contosoSnapshot(t)
	got := edges(snap, healthyReports(snap))
	if len(got) != 5 {
		t.Fatalf("%d edges, want 5", len(got))
	}
	for k, e := range got {
		if !e.GetOk() || !e.GetRealmsMatch() {
			t.Errorf("%s: ok=%v realms_match=%v problems=%v", k, e.GetOk(), e.GetRealmsMatch(), e.GetProblems())
		}
	}
	if e := got["exchange→pool01"]; e.GetFromRealm() != "" || e.GetToRealm() != "contoso.com" {
		t.Errorf("exchange→pool01 realms %q → %q, want the configured ones: blank → contoso.com", e.GetFromRealm(), e.GetToRealm())
	}

	realms := deploymentRealms(snap, healthyReports(snap))
	want := []*pb.DeploymentRealm{
		{Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, Host: "ex01.contoso.com", ConfiguredRealm: "", MetadataRealm: "*", MetadataIssuer: products.ExchangeID + "@*"},
		{Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, Host: "fe01.contoso.com", ConfiguredRealm: "contoso.com", MetadataRealm: "contoso.com", MetadataIssuer: products.LyncID + "@contoso.com"},
		{Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, Host: "sp01.contoso.com", ConfiguredRealm: farmID, MetadataRealm: farmID, MetadataIssuer: products.SharePointID + "@" + farmID},
	}
	if len(realms) != len(want) {
		t.Fatalf("realms %v, want %v", realms, want)
	}
	for i := range want {
		if realms[i].String() != want[i].String() {
			t.Errorf("realm %d = %v, want %v", i, realms[i], want[i])
		}
	}
}

func TestTrustReportRealmChecks(t *testing.T) {
	tests := []struct {
		name   string
		edge   string
		tamper func(map[string]*pb.StatusReport)
		// want lists the parts of one problem of the edge.
		want []string
	}{
		{
			name: "receiver registered another realm than the issuer's metadata shows",
			edge: "exchange→pool01",
			tamper: func(r map[string]*pb.StatusReport) {
				partnerOf(r["fe01.contoso.com"], "microsoft.exchange").Realm = "contoso.com"
			},
			want: []string{"pool01 registers microsoft.exchange with realm \"contoso.com\"", "exchange's metadata document shows realm \"*\"", "recreate"},
		},
		{
			name: "issuer's metadata realm and issuer disagree",
			edge: "sharepoint→pool01",
			tamper: func(r map[string]*pb.StatusReport) {
				r["sp01.contoso.com"].Metadata[0].Realm = "contoso.com"
			},
			want: []string{"sharepoint's metadata document has realm \"contoso.com\" but issuer \"" + products.SharePointID + "@" + farmID + "\""},
		},
		{
			name: "issuer without service name",
			edge: "pool01→exchange",
			tamper: func(r map[string]*pb.StatusReport) {
				for _, h := range []string{"fe01.contoso.com", "fe02.contoso.com"} {
					r[h].Metadata[0].Issuer = "contoso.com"
				}
			},
			want: []string{"pool01's metadata document names issuer \"contoso.com\", not <serviceName>@<realm>"},
		},
		{
			name: "issuer with another product's service name",
			edge: "pool01→sharepoint",
			tamper: func(r map[string]*pb.StatusReport) {
				for _, h := range []string{"fe01.contoso.com", "fe02.contoso.com"} {
					r[h].Metadata[0].Issuer = products.ExchangeID + "@contoso.com"
				}
			},
			want: []string{"pool01's metadata document names issuer \"" + products.ExchangeID + "@contoso.com\"", "not Lync", products.LyncID},
		},
		{
			name: "agents that report no metadata realm: the issuer's configured realm is compared",
			edge: "pool01→sharepoint",
			tamper: func(r map[string]*pb.StatusReport) {
				for _, rep := range r {
					for _, m := range rep.GetMetadata() {
						m.Realm, m.Issuer = "", ""
					}
				}
				for _, p := range r["sp01.contoso.com"].GetPartners() {
					if p.GetApplicationIdentifier() == products.LyncID {
						p.Realm = "fabrikam.com"
					}
				}
			},
			want: []string{"sharepoint registers", "with realm \"fabrikam.com\"", "pool01's OAuth configuration has realm \"contoso.com\""},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := contosoSnapshot(t)
			reports := healthyReports(snap)
			tc.tamper(reports)
			got := edges(snap, reports)
			e := got[tc.edge]
			if e.GetOk() || e.GetRealmsMatch() {
				t.Errorf("%s: ok=%v realms_match=%v, want both false", tc.edge, e.GetOk(), e.GetRealmsMatch())
			}
			found := false
			for _, p := range e.GetProblems() {
				all := true
				for _, w := range tc.want {
					all = all && strings.Contains(p, w)
				}
				found = found || all
			}
			if !found {
				t.Errorf("%s: no problem mentions all of %q: %q", tc.edge, tc.want, e.GetProblems())
			}
			for k, other := range got {
				if k != tc.edge && !strings.HasPrefix(k, strings.Split(tc.edge, "→")[0]+"→") && !other.GetOk() {
					t.Errorf("%s fails too, but only edges from the issuer may: %v", k, other.GetProblems())
				}
			}
		})
	}
}

func TestTrustReportShowsTheReceiversRealTrustLevel(t *testing.T) {
	snap := contosoSnapshot(t)
	reports := healthyReports(snap)
	// Lowered on the CMS, as the primary fe01 sees it; fe02's report is older.
	partnerOf(reports["fe01.contoso.com"], "microsoft.exchange").TrustLevel = pb.TrustLevel_TRUST_LEVEL_APPLICATION
	e := edges(snap, reports)["exchange→pool01"]
	if got := e.GetRegistration().GetTrustLevel(); got != pb.TrustLevel_TRUST_LEVEL_APPLICATION {
		t.Errorf("registration trust level %s, want the primary's Application", got)
	}
	if e.GetOk() || !strings.Contains(strings.Join(e.GetProblems(), "\n"), "pool01's partner microsoft.exchange has ApplicationTrustLevel Application, the topology wants Full") {
		t.Errorf("ok=%v problems=%q, want the lowered trust level named", e.GetOk(), e.GetProblems())
	}

	// The primary's view wins even when a secondary has the desired level.
	snap.primaries["pool01"] = "fe02.contoso.com"
	e = edges(snap, reports)["exchange→pool01"]
	if got := e.GetRegistration().GetTrustLevel(); got != pb.TrustLevel_TRUST_LEVEL_FULL || !e.GetOk() {
		t.Errorf("with fe02 primary: trust level %s ok=%v problems=%q, want fe02's Full", got, e.GetOk(), e.GetProblems())
	}
}

// TestTrustReportFrontEndsMidRoll: the two Front Ends of pool01 report
// different certificates while a scheduled roll reaches them one after
// the other (fe01 has rolled to DD44, fe02 still shows AA11 with DD44
// staged). That is no problem when the receiver caches both; it is when
// the receiver lacks one, or when a Front End's certificate is no step
// of the roll.
func TestTrustReportFrontEndsMidRoll(t *testing.T) {
	const rule = "every front end must have the same certificate"
	tests := []struct {
		name   string
		tamper func(map[string]*pb.StatusReport)
		ok     bool
	}{
		{"both cached", func(map[string]*pb.StatusReport) {}, true},
		{"receiver lacks the new one", func(r map[string]*pb.StatusReport) {
			poolAt(r["ex01.contoso.com"]).CachedThumbprints = []string{"AA11"}
		}, false},
		{"not a step of the roll", func(r map[string]*pb.StatusReport) {
			r["fe02.contoso.com"].Oauth.NextIssuerThumbprint = "EE55"
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := contosoSnapshot(t)
			reports := healthyReports(snap)
			fe01, fe02 := reports["fe01.contoso.com"], reports["fe02.contoso.com"]
			fe01.IssuerCertificate.Thumbprint, fe01.Oauth.PreviousIssuerThumbprint = "DD44", "AA11"
			fe01.Metadata[0].Thumbprints = []string{"DD44", "AA11"}
			fe02.Oauth.NextIssuerThumbprint = "DD44"
			poolAt(reports["ex01.contoso.com"]).CachedThumbprints = []string{"AA11", "DD44"}
			tc.tamper(reports)
			e := edges(snap, reports)["pool01→exchange"]
			found := false
			for _, p := range e.GetProblems() {
				found = found || strings.Contains(p, rule)
			}
			if found == tc.ok {
				t.Errorf("pool01→exchange problems %v; want the same-certificate rule reported: %v", e.GetProblems(), !tc.ok)
			}
		})
	}
}

// poolAt is the receiver's registration of pool01 (the one caching its key).
func poolAt(r *pb.StatusReport) *pb.PartnerApplication {
	for _, p := range r.GetPartners() {
		if slices.Contains(p.GetCachedThumbprints(), signingKey["pool01"]) {
			return p
		}
	}
	return nil
}
