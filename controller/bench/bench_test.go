package bench

import (
	"bytes"
	"context"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// agentsFlag sizes TestRun and BenchmarkCommitToAllAcked: small by
// default, so the test stays quick; e.g. -agents 10000 for the SPEC's scale.
var agentsFlag = flag.Int("agents", 0, "simulated agents (default: 50 for TestRun, 100 for the benchmark)")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.DiscardHandler)
}

func agents(def int) int {
	if *agentsFlag > 0 {
		return *agentsFlag
	}
	return def
}

func TestRun(t *testing.T) {
	n := agents(50)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := Run(ctx, Config{Agents: n, Dir: t.TempDir(), Out: &out, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())

	if res.Agents != n {
		t.Errorf("Agents = %d, want %d", res.Agents, n)
	}
	if res.HostsConfirmed != n {
		t.Errorf("ListHosts confirmed %d hosts at the new revision, want %d", res.HostsConfirmed, n)
	}
	if res.ResentAfterRestart != 0 {
		t.Errorf("%d Desired re-sent after the restart to agents already current, want 0", res.ResentAfterRestart)
	}
	for name, d := range map[string]time.Duration{
		"ConnectAll": res.ConnectAll, "P50": res.P50, "P99": res.P99, "Max": res.Max, "RestartResync": res.RestartResync,
		"First": res.First, "FloorFirst": res.FloorFirst, "FloorConnectAll": res.FloorConnectAll, "FloorP50": res.FloorP50, "FloorP99": res.FloorP99, "FloorMax": res.FloorMax,
	} {
		if d <= 0 {
			t.Errorf("%s = %s, want > 0", name, d)
		}
	}
	if !(res.P50 <= res.P99 && res.P99 <= res.Max) || !(res.FloorP50 <= res.FloorP99 && res.FloorP99 <= res.FloorMax) {
		t.Errorf("percentiles out of order: controller %s/%s/%s, floor %s/%s/%s", res.P50, res.P99, res.Max, res.FloorP50, res.FloorP99, res.FloorMax)
	}
	// The restart's resync includes the new controller's startup.
	if res.RestartResync < res.RestartStartup {
		t.Errorf("RestartResync %s shorter than the controller's startup %s", res.RestartResync, res.RestartStartup)
	}
	// An open TLS stream costs both sides memory; the agents' share is part of the total.
	for name, m := range map[string][3]int64{
		"controller": {res.BytesPerStream, res.TotalBytesPerStream, res.AgentBytesPerStream},
		"floor":      {res.FloorBytesPerStream, res.FloorTotalBytesPerStream, res.FloorAgentBytesPerStream},
	} {
		server, total, agentShare := m[0], m[1], m[2]
		if d := total - server - agentShare; server <= 0 || agentShare <= 0 || d < -1 || d > 1 {
			t.Errorf("%s memory per stream: server %d + agents %d, total %d", name, server, agentShare, total)
		}
	}
	for _, want := range []string{"commit to ACK p99", "memory per idle stream", "restart: all resynced", "Desired re-sent", "floor (bare gRPC)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the table lacks %q", want)
		}
	}
}

func TestRunRejectsNoAgents(t *testing.T) {
	if _, err := Run(context.Background(), Config{Agents: 0, Dir: t.TempDir()}); err == nil {
		t.Fatal("Run with no agents succeeded")
	}
}

func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 200; i++ {
		d = append(d, time.Duration(201-i)*time.Millisecond)
	}
	p50, p99, maxd := percentiles(d)
	if p50 != 100*time.Millisecond || p99 != 198*time.Millisecond || maxd != 200*time.Millisecond {
		t.Errorf("percentiles = %s, %s, %s; want 100ms, 198ms, 200ms", p50, p99, maxd)
	}
}

// BenchmarkCommitToAllAcked measures, per iteration, a change touching
// every host from commit until all agents have ACKed it, with -agents
// agents connected once; it reports the p99 of the per-agent latencies.
func BenchmarkCommitToAllAcked(b *testing.B) {
	n := agents(100)
	ctx := context.Background()
	if _, err := raiseFileLimit(uint64(2*n + 200)); err != nil {
		b.Fatal(err)
	}
	h, err := newHarness(ctx, filepath.Join(b.TempDir(), "controller"), n, max(n/100, 1), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := h.close(); err != nil {
			b.Error(err)
		}
	}()
	timeout := time.Minute + time.Duration(n)*20*time.Millisecond
	if err := h.applyFirst(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := h.connect(ctx, timeout); err != nil {
		b.Fatal(err)
	}
	if _, err := h.waitFleet(ctx, timeout); err != nil {
		b.Fatal(err)
	}
	var p99s time.Duration
	iterations := 0
	for b.Loop() {
		iterations++
		lat, _, err := h.commit(ctx, timeout)
		if err != nil {
			b.Fatal(err)
		}
		_, p99, _ := percentiles(lat)
		p99s += p99
	}
	b.ReportMetric(float64(p99s.Milliseconds())/float64(iterations), "p99-ms/op")
	b.ReportMetric(float64(n), "agents")
}
