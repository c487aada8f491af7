package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func values(t *testing.T, m *Metrics) map[string]map[string]float64 {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]float64{}
	for _, f := range fams {
		out[f.GetName()] = map[string]float64{}
		for _, s := range f.GetMetric() {
			key := ""
			for _, l := range s.GetLabel() {
				key += l.GetName() + "=" + l.GetValue() + ","
			}
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				out[f.GetName()][key] = float64(s.GetHistogram().GetSampleCount())
			case dto.MetricType_GAUGE:
				out[f.GetName()][key] = s.GetGauge().GetValue()
			}
		}
	}
	return out
}

func TestAgentMetrics(t *testing.T) {
	m := New("fe01.contoso.com", "sim", "0.1.0")
	var _ Recorder = m
	var _ Recorder = Nop{}
	v := values(t, m)
	if _, ok := v["s2strust_agent_items"]; ok {
		t.Error("verification gauges before the first report")
	}
	if got := v["s2strust_agent_info"]["driver=sim,host=fe01.contoso.com,version=0.1.0,"]; got != 1 {
		t.Errorf("agent_info = %v, want 1 with host, driver and version", got)
	}
	m.Applied(2*time.Second, ResultOK)
	m.Applied(time.Second, ResultFailed)
	m.Applied(time.Second, ResultFailed)
	synced := time.Date(2026, 12, 1, 10, 0, 0, 500e6, time.UTC)
	m.Synced(synced)
	m.Connected(true)
	rep := &pb.StatusReport{
		Items: []*pb.ItemStatus{
			{Item: "partner/microsoft.exchange", State: pb.ItemState_ITEM_STATE_OK},
			{Item: "oauth-configuration", State: pb.ItemState_ITEM_STATE_DRIFTED},
			{Item: "issuer-certificate", State: pb.ItemState_ITEM_STATE_PENDING},
		},
		Drift: []*pb.Drift{{Item: "oauth-configuration"}},
		Probes: []*pb.TrustProbe{
			{ToDeployment: "exchange", TargetHost: "ex01.contoso.com", Ok: true},
			{ToDeployment: "exchange", TargetHost: "ex02.contoso.com", Ok: false},
		},
		Metadata: []*pb.MetadataCheck{{Ok: true}, {Partner: "microsoft.exchange", Ok: false}},
	}
	m.Reported(rep)
	rep.Probes[1].Ok = true // the metrics keep their own copy
	v = values(t, m)
	for _, c := range []struct {
		name, labels string
		want         float64
	}{
		{"s2strust_agent_apply_duration_seconds", "result=ok,", 1},
		{"s2strust_agent_apply_duration_seconds", "result=failed,", 2},
		{"s2strust_agent_apply_duration_seconds", "result=pending,", 0},
		{"s2strust_agent_last_successful_sync_timestamp_seconds", "", float64(synced.Unix()) + 0.5},
		{"s2strust_agent_controller_connected", "", 1},
		{"s2strust_agent_items", "state=ok,", 1},
		{"s2strust_agent_items", "state=drifted,", 1},
		{"s2strust_agent_items", "state=pending,", 1},
		{"s2strust_agent_items", "state=failed,", 0},
		{"s2strust_agent_verification_ok", "", 0},
		{"s2strust_agent_drift_items", "", 1},
		{"s2strust_agent_probe_ok", "target_host=ex01.contoso.com,to_deployment=exchange,", 1},
		{"s2strust_agent_probe_ok", "target_host=ex02.contoso.com,to_deployment=exchange,", 0},
		{"s2strust_agent_metadata_ok", "partner=,", 1},
		{"s2strust_agent_metadata_ok", "partner=microsoft.exchange,", 0},
	} {
		got, ok := v[c.name][c.labels]
		if !ok || got != c.want {
			t.Errorf("%s{%s} = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	m.Reported(&pb.StatusReport{Items: []*pb.ItemStatus{{Item: "partner/x", State: pb.ItemState_ITEM_STATE_OK}}})
	m.Connected(false)
	v = values(t, m)
	if v["s2strust_agent_verification_ok"][""] != 1 || v["s2strust_agent_controller_connected"][""] != 0 {
		t.Errorf("after a clean report and a disconnect: verification_ok %v, connected %v; want 1, 0",
			v["s2strust_agent_verification_ok"][""], v["s2strust_agent_controller_connected"][""])
	}
	if len(v["s2strust_agent_probe_ok"]) != 0 {
		t.Errorf("probe series of an older report remain: %v", v["s2strust_agent_probe_ok"])
	}
	if problems, err := testutil.GatherAndLint(m.Registry()); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}
