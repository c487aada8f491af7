package cmd

import (
	"bytes"
	"context"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/s2strust/s2strust/internal/metricshttp/metricstest"
)

// syncBuffer is a bytes.Buffer safe to write while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestDemoServesMetrics does what the acceptance says: while the demo
// serves, a curl of the metrics URL it prints shows the five agent
// streams, their ACKs and every trust edge's probe result.
func TestDemoServesMetrics(t *testing.T) {
	out := &syncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- RunDemo(ctx, DemoConfig{Dir: t.TempDir(), Listen: "127.0.0.1:0", Timeout: 90 * time.Second, Out: out})
	}()
	urlRE := regexp.MustCompile(`Prometheus metrics: curl (http://127\.0\.0\.1:\d+/metrics)\n`)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var url string
	for url == "" || !bytes.Contains([]byte(out.String()), []byte("serving until Ctrl-C")) {
		select {
		case err := <-done:
			t.Fatalf("demo ended before serving: %v\n%s", err, out.String())
		case <-ctx.Done():
			t.Fatalf("demo did not converge:\n%s", out.String())
		case <-tick.C:
		}
		if m := urlRE.FindStringSubmatch(out.String()); m != nil {
			url = m[1]
		}
	}
	s, err := metricstest.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Value("s2strust_agent_streams"); v != 5 {
		t.Errorf("s2strust_agent_streams = %v, want 5", v)
	}
	if v := s.Sum("s2strust_sync_acks_total"); v < 5 {
		t.Errorf("s2strust_sync_acks_total = %v, want at least 5", v)
	}
	edges := s.Series("s2strust_trust_edge_probe_ok")
	if len(edges) != 5 {
		t.Errorf("%d trust edges with a probe result, want 5", len(edges))
	}
	for _, e := range edges {
		if e.GetGauge().GetValue() != 1 {
			t.Errorf("trust edge %v: probe result %v, want 1", e.GetLabel(), e.GetGauge().GetValue())
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("demo stopped with %v", err)
	}
}
