package monitoring

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentmetrics "github.com/s2strust/s2strust/agent/metrics"
	"github.com/s2strust/s2strust/controller/metrics"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// fakeFleet is a fleet view with one host and one edge, so that every
// scrape-time gauge has a series.
type fakeFleet struct{}

func (fakeFleet) ListHosts(context.Context, *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	return &pb.ListHostsResponse{Hosts: []*pb.Host{{Host: "fe01.contoso.com", Deployment: "pool01", Connected: true, DesiredVersion: 3, DesiredHash: "h", AppliedVersion: 3, AppliedHash: "h"}}}, nil
}

func (fakeFleet) GetTrustReport(context.Context, *pb.GetTrustReportRequest) (*pb.GetTrustReportResponse, error) {
	return &pb.GetTrustReportResponse{Edges: []*pb.TrustEdge{{From: "pool01", To: "exchange", Ok: true, IssuerNotAfter: timestamppb.Now(),
		Probes: []*pb.TrustProbeResult{{FromHost: "fe01.contoso.com", Probe: &pb.TrustProbe{ToDeployment: "exchange", TargetHost: "ex01.contoso.com", Ok: true}}}}}}, nil
}

// exported lists the s2strust_ series names the controller and the agent
// export (a histogram's _bucket, _sum and _count), each with its family.
func exported(t *testing.T) map[string]string {
	t.Helper()
	cm := metrics.New(metrics.Config{})
	cm.SetFleet(fakeFleet{})
	cm.TopologyCurrent(3, time.Now())
	cm.Acked("fe01.contoso.com", 3)
	cm.SetRollout(metrics.RolloutProgress{Active: true, Wave: 1, Waves: 2})
	_ = cm.EtcdUnaryInterceptor()(context.Background(), "/etcdserverpb.KV/Range", nil, nil, nil,
		func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
			return errors.New("unavailable")
		})
	am := agentmetrics.New("fe01.contoso.com", "sim", "0.1.0")
	am.Applied(time.Second, agentmetrics.ResultOK)
	am.Synced(time.Now())
	am.Reported(&pb.StatusReport{Items: []*pb.ItemStatus{{Item: "partner/microsoft.exchange", State: pb.ItemState_ITEM_STATE_OK}},
		Probes:   []*pb.TrustProbe{{ToDeployment: "exchange", TargetHost: "ex01.contoso.com", Ok: true}},
		Metadata: []*pb.MetadataCheck{{Ok: true}}})
	out := map[string]string{}
	for _, g := range []interface {
		Gather() ([]*dto.MetricFamily, error)
	}{cm.Registry(), am.Registry()} {
		fams, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			n := f.GetName()
			out[n] = n
			if f.GetType() == dto.MetricType_HISTOGRAM {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					out[n+s] = n
				}
			}
		}
	}
	return out
}

var metricName = regexp.MustCompile(`\b(?:s2strust|go|process)_[a-zA-Z0-9_]+`)

// checkExpr reports an expression naming no metric or one not exported,
// and records the families it uses.
func checkExpr(t *testing.T, where, expr string, have map[string]string, used map[string]bool) {
	t.Helper()
	names := metricName.FindAllString(expr, -1)
	if len(names) == 0 {
		t.Errorf("%s: expression %q names no metric", where, expr)
	}
	for _, n := range names {
		fam, ok := have[n]
		if !ok {
			t.Errorf("%s: expression %q names %s, which neither the controller nor the agent exports", where, expr, n)
			continue
		}
		used[fam] = true
	}
}

func TestDashboardQueriesExportedMetrics(t *testing.T) {
	have := exported(t)
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(Dashboard, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard title %q, uid %q, %d panels: want all three", dash.Title, dash.UID, len(dash.Panels))
	}
	used := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			checkExpr(t, "panel "+p.Title, q.Expr, have, used)
		}
	}
	// The dashboard shows every s2strust_ metric there is.
	var missing []string
	for _, fam := range have {
		if !used[fam] && strings.HasPrefix(fam, "s2strust_") {
			missing = append(missing, fam)
		}
	}
	sort.Strings(missing)
	for i, m := range missing {
		if i == 0 || missing[i-1] != m {
			t.Errorf("no dashboard panel shows %s", m)
		}
	}
}

func TestAlertRulesQueryExportedMetrics(t *testing.T) {
	have := exported(t)
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(Alerts, &rules); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	alerts := map[string]bool{}
	used := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts[r.Alert] = true
			checkExpr(t, "alert "+r.Alert, r.Expr, have, used)
		}
	}
	// What the issue asks to be alerted on.
	for _, a := range []string{"S2STrustEdgeFailing", "S2SIssuerCertificateExpiresIn30Days", "S2SHostDisconnected", "S2SHostNacking", "S2SRolloutStopped"} {
		if !alerts[a] {
			t.Errorf("alerts.yml has no alert %s", a)
		}
	}
}
