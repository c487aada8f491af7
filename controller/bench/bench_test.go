package bench

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// agentsFlag sizes TestRun and BenchmarkCommitToAllAcked: small by
// default, so the test stays quick; e.g. -agents 10000 for the SPEC's scale.
var agentsFlag = flag.Int("agents", 0, "simulated agents (default: 50 for TestRun, 100 for the benchmark)")

func TestMain(m *testing.M) {
	if os.Getenv(ChildEnv) != "" {
		// Started by Run as an agents' process.
		if err := ChildMain(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// buildAgent builds s2s-agent into a temporary directory.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "s2s-agent")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "github.com/s2strust/s2strust/agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build s2s-agent: %v\n%s", err, out)
	}
	return bin
}

// childArgv runs this test binary as the agents' processes (see TestMain).
func childArgv(t testing.TB) []string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe}
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: benchLogLevel()}))
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
	n := agents(30)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := Run(ctx, Config{Agents: n, Runs: 3, Dir: t.TempDir(), ChildArgv: childArgv(t), AgentBinary: buildAgent(t), Out: &out, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", out.String())

	if res.Agents != n {
		t.Errorf("Agents = %d, want %d", res.Agents, n)
	}
	for i, n := range res.ResentAfterRestart {
		if n != 0 {
			t.Errorf("restart %d: %d Desired re-sent to agents already current, want 0", i+1, n)
		}
	}
	// Every agent comes back on its TLS session: the restarted controller
	// opens the tickets its predecessor sealed.
	for i, r := range res.Resumed {
		if r != int64(n) {
			t.Errorf("restart %d: %d of %d agents resumed their TLS session", i+1, r, n)
		}
	}
	if res.Children != 1 {
		t.Errorf("%d agents ran in %d processes, want 1", n, res.Children)
	}
	runs := map[string][]time.Duration{
		"P50": res.P50, "P99": res.P99, "Max": res.Max, "First": res.First, "ApplyRPC": res.ApplyRPC,
		"FloorP50": res.FloorP50, "FloorP99": res.FloorP99, "FloorMax": res.FloorMax, "FloorFirst": res.FloorFirst,
		"RestartStop": res.RestartStop, "RestartStartup": res.RestartStartup, "RestartResync": res.RestartResync, "RestartResyncP50": res.RestartResyncP50,
	}
	for name, d := range runs {
		if len(d) != 3 {
			t.Errorf("%s has %d runs, want 3", name, len(d))
		}
		for i, v := range d {
			if v <= 0 {
				t.Errorf("%s run %d = %s, want > 0", name, i+1, v)
			}
		}
	}
	if res.ConnectAll <= 0 || res.FloorConnectAll <= 0 {
		t.Errorf("connect all: controller %s, floor %s; want both > 0", res.ConnectAll, res.FloorConnectAll)
	}
	for i := range res.P99 {
		if !(res.First[i] <= res.P50[i] && res.P50[i] <= res.P99[i] && res.P99[i] <= res.Max[i]) {
			t.Errorf("run %d: percentiles out of order: %s/%s/%s/%s", i+1, res.First[i], res.P50[i], res.P99[i], res.Max[i])
		}
		// Stored ACKs come after the commit inside the ApplyTopology call.
		if res.P50[i] > res.Max[i] {
			t.Errorf("run %d: p50 %s above max %s", i+1, res.P50[i], res.Max[i])
		}
	}
	for i := range res.RestartResync {
		// The resync runs from the stop, the new controller's startup included.
		if res.RestartResync[i] < res.RestartStop[i]+res.RestartStartup[i] {
			t.Errorf("restart %d: resync %s shorter than the stop %s and startup %s", i+1, res.RestartResync[i], res.RestartStop[i], res.RestartStartup[i])
		}
	}
	// The controller's process holds the server's end of every stream.
	if res.RSS <= 0 || res.GoPerStream <= 0 || res.FloorGoPerStream <= 0 || res.GoroutinesPerStream <= 0 {
		t.Errorf("memory: RSS %d, Go per stream %d (floor %d), goroutines per stream %.2f; want all > 0", res.RSS, res.GoPerStream, res.FloorGoPerStream, res.GoroutinesPerStream)
	}
	// A real s2s-agent ran as one more host, and applied every revision.
	if res.RealAgentRSS <= 0 || res.HostsConfirmed != n+1 {
		t.Errorf("real agent: peak RSS %d, hosts confirmed %d; want > 0 and %d", res.RealAgentRSS, res.HostsConfirmed, n+1)
	}
	if res.AgentRSS <= 0 {
		t.Errorf("agents' RSS per agent %d, want > 0", res.AgentRSS)
	}
	for _, want := range []string{"commit to ACK stored p99", "RSS per idle stream", "restart: all resynced", "Desired re-sent", "floor (bare gRPC)", "graceful stop", "median of 3 runs"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the table lacks %q", want)
		}
	}
}

func TestRunRejectsNoAgents(t *testing.T) {
	if _, err := Run(context.Background(), Config{Agents: 0, Dir: t.TempDir(), ChildArgv: childArgv(t)}); err == nil {
		t.Fatal("Run with no agents succeeded")
	}
}

func TestMedian(t *testing.T) {
	m, lo, hi := median([]time.Duration{3 * time.Second, time.Second, 2 * time.Second, 10 * time.Second})
	if m != 2*time.Second || lo != time.Second || hi != 10*time.Second {
		t.Errorf("median = %s (%s–%s), want 2s (1s–10s)", m, lo, hi)
	}
	if m, lo, hi := medianInt([]int64{5, 0, 7}); m != 5 || lo != 0 || hi != 7 {
		t.Errorf("medianInt = %d (%d–%d), want 5 (0–7)", m, lo, hi)
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
	if _, err := raiseFileLimit(uint64(n + 300)); err != nil {
		b.Fatal(err)
	}
	timeout := time.Minute + time.Duration(n)*20*time.Millisecond
	h, err := newHarness(ctx, filepath.Join(b.TempDir(), "controller"), n, max(n/100, 1), childArgv(b), timeout, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := h.close(); err != nil {
			b.Error(err)
		}
	}()
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
		c, err := h.commit(ctx, timeout)
		if err != nil {
			b.Fatal(err)
		}
		_, p99, _ := percentiles(c.latencies)
		p99s += p99
	}
	b.ReportMetric(float64(p99s.Milliseconds())/float64(iterations), "p99-ms/op")
	b.ReportMetric(float64(n), "agents")
}

// benchLogLevel is the controller's log level under -v: warnings, or
// S2STRUST_BENCH_LOG (debug, info) when set.
func benchLogLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("S2STRUST_BENCH_LOG"))); err != nil {
		return slog.LevelWarn
	}
	return l
}
