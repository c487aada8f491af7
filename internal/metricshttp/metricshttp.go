// Package metricshttp serves a process's Prometheus registry on its own
// listener, apart from the gRPC port: scrapers need neither a client
// certificate nor a route to the API, and the API's port exposes nothing
// more than it did.
package metricshttp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Path is where the metrics are served.
const Path = "/metrics"

// ResolveAddr turns a --metrics-listen value into a listen address. A bare
// port ("9464") or a port without a host (":9464") binds loopback only:
// metrics name hosts and trust edges, so they are exposed beyond this
// machine only when an address is given explicitly (e.g. "0.0.0.0:9464").
func ResolveAddr(flag, value string) (string, error) {
	v := strings.TrimSpace(value)
	if v == "" {
		return "", fmt.Errorf("%s is empty: want PORT, :PORT or HOST:PORT", flag)
	}
	if strings.Trim(v, "0123456789") == "" {
		if _, err := strconv.ParseUint(v, 10, 16); err != nil {
			return "", fmt.Errorf("%s %q: port %q is not a number from 0 to 65535", flag, value, v)
		}
		return net.JoinHostPort("127.0.0.1", v), nil
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return "", fmt.Errorf("%s %q: want PORT, :PORT or HOST:PORT: %w", flag, value, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("%s %q: port %q is not a number from 0 to 65535", flag, value, port)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// Listen resolves the flag's value (see ResolveAddr) and listens on it.
func Listen(flag, value string) (net.Listener, error) {
	addr, err := ResolveAddr(flag, value)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen on %s: %w", flag, addr, err)
	}
	return lis, nil
}

// URL is the metrics URL of a listener.
func URL(lis net.Listener) string { return "http://" + lis.Addr().String() + Path }

// Handler serves reg at Path; other paths are not found.
func Handler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(Path, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slogErrorLog{log},
		ErrorHandling: promhttp.ContinueOnError,
		// A scrape that collects the fleet view waits at most this long.
		Timeout: 10 * time.Second,
	}))
	return mux
}

// Serve serves reg on lis until ctx ends, then shuts the server down.
func Serve(ctx context.Context, lis net.Listener, reg *prometheus.Registry, log *slog.Logger) error {
	srv := &http.Server{Handler: Handler(reg, log), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve metrics on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics on %s: %w", lis.Addr(), err)
	}
	return nil
}

// slogErrorLog gives promhttp's error log to slog.
type slogErrorLog struct{ log *slog.Logger }

func (l slogErrorLog) Println(v ...any) {
	if l.log != nil {
		l.log.Warn("metrics", "error", fmt.Sprint(v...))
	}
}
