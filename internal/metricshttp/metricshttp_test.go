package metricshttp

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestResolveAddr(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{in: "9464", want: "127.0.0.1:9464"},
		{in: ":9464", want: "127.0.0.1:9464"},
		{in: " :0 ", want: "127.0.0.1:0"},
		{in: "0.0.0.0:9464", want: "0.0.0.0:9464"},
		{in: "[::1]:9464", want: "[::1]:9464"},
		{in: "[::]:9464", want: "[::]:9464"},
		{in: "metrics.contoso.com:9464", want: "metrics.contoso.com:9464"},
		{in: "", err: "--metrics-listen is empty"},
		{in: "localhost", err: `--metrics-listen "localhost": want PORT, :PORT or HOST:PORT`},
		{in: "127.0.0.1:http", err: `port "http" is not a number`},
		{in: "70000", err: `port "70000" is not a number`},
		{in: "1.2.3.4:99999", err: `port "99999" is not a number`},
	} {
		got, err := ResolveAddr("--metrics-listen", c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ResolveAddr(%q) = %q, %v; want an error containing %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ResolveAddr(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func FuzzResolveAddr(f *testing.F) {
	for _, s := range []string{"9464", ":9464", "0.0.0.0:1", "[::1]:2", "a:b", "", "::", "[::]:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		addr, err := ResolveAddr("--metrics-listen", s)
		if err != nil {
			return
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("ResolveAddr(%q) = %q, which does not split: %v", s, addr, err)
		}
		if host == "" {
			t.Fatalf("ResolveAddr(%q) = %q: an empty host would bind every interface", s, addr)
		}
	})
}

func TestServe(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "s2strust_test_total", Help: "A test counter."})
	c.Add(3)
	reg.MustRegister(c)
	lis, err := Listen("--metrics-listen", ":0")
	if err != nil {
		t.Fatal(err)
	}
	if h, _, _ := net.SplitHostPort(lis.Addr().String()); h != "127.0.0.1" {
		t.Errorf(":0 listens on %s, want loopback", lis.Addr())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, lis, reg, slog.New(slog.DiscardHandler)) }()
	resp, err := http.Get(URL(lis))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "s2strust_test_total 3") {
		t.Errorf("GET %s: %s\n%s", URL(lis), resp.Status, body)
	}
	resp, err = http.Get("http://" + lis.Addr().String() + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/: %s, want 404: only the metrics are served", resp.Status)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve after cancel: %v", err)
	}
	if _, err := http.Get(URL(lis)); err == nil {
		t.Error("still serving after Serve returned")
	}
}

func TestListenRefusesABusyPort(t *testing.T) {
	lis, err := Listen("--metrics-listen", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	_, err = Listen("--metrics-listen", lis.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "--metrics-listen: listen on "+lis.Addr().String()) {
		t.Errorf("second listen on %s: %v, want an error naming the flag and address", lis.Addr(), err)
	}
}
