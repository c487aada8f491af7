package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/s2stoken"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// ProbePath is where a simulated host accepts trust probes: a POST with
// "Authorization: Bearer <actor token>".
const ProbePath = "/s2s/probe"

// DiagnosticsHeader carries the reason of a refused probe, as the products'
// own X-Ms-Diagnostics header does: `<reason>; reason="<detail>"`.
const DiagnosticsHeader = "X-Ms-Diagnostics"

// Reasons of a probe answer or result beyond s2stoken's Reason values.
const (
	// ReasonNotConfigured: the target host has applied no configuration.
	ReasonNotConfigured = "not-configured"
	// ReasonNoSigningKey: this host does not hold its deployment's current
	// token-issuer certificate with its private key.
	ReasonNoSigningKey = "no-signing-key"
	// ReasonMintFailed: the token could not be minted with that key.
	ReasonMintFailed = "mint-failed"
	// ReasonUnreachable: the probe did not reach the target host.
	ReasonUnreachable = "unreachable"
	// ReasonUnexpectedAnswer: the target answered, but not as a simulated
	// product does (another status, or no reason).
	ReasonUnexpectedAnswer = "unexpected-answer"
	// ReasonInternal: the target could not read its own configuration.
	ReasonInternal = "internal"
)

// ProbeAnswer is the JSON body of an answer to a trust probe.
type ProbeAnswer struct {
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// shutdownTimeout bounds a graceful shutdown of Serve; then connections are
// closed hard.
const shutdownTimeout = 5 * time.Second

// Serve serves this host's HTTPS endpoints on Config.Listener with
// Config.ServerTLS until ctx ends, then shuts down gracefully (hard after
// shutdownTimeout) and returns nil. Without a Listener it blocks until ctx
// ends and returns nil. It returns an error when the server stops on its
// own. Call it once: it closes the Listener.
func (s *Sim) Serve(ctx context.Context) error {
	ln := s.cfg.Listener
	if ln == nil {
		<-ctx.Done()
		return nil
	}
	if s.cfg.ServerTLS == nil {
		_ = ln.Close()
		return fmt.Errorf("serve https for host %s: no server TLS configuration", s.cfg.Host)
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         s.cfg.ServerTLS.Clone(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    128 << 10,
		ErrorLog:          slog.NewLogLogger(slog.Default().Handler().WithAttrs([]slog.Attr{slog.String("host", s.cfg.Host)}), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve https for host %s on %s: %w", s.cfg.Host, ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve https for host %s on %s: %w", s.cfg.Host, ln.Addr(), err)
	}
	return nil
}

// Handler serves this host's HTTPS endpoints, for Serve or for a caller's
// own server: GET (or HEAD) on the product's metadata path answers the
// deployment's auth metadata document as this host currently sees it, POST
// on ProbePath validates an actor token as the product would, and anything
// else is 404. It never holds the driver's lock, so an Apply that downloads
// from this very host does not wait on itself.
func (s *Sim) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+ProbePath, s.serveProbe)
	mux.HandleFunc("/", s.serveMetadata)
	return mux
}

// isMetadataPath reports whether path is any product's metadata path.
func isMetadataPath(path string) bool {
	for _, p := range []pb.Product{pb.Product_PRODUCT_LYNC, pb.Product_PRODUCT_EXCHANGE, pb.Product_PRODUCT_SHAREPOINT} {
		if path == products.MetadataPath(p) {
			return true
		}
	}
	return false
}

// serveMetadata answers the metadata document on the applied product's
// metadata path: 503 while the host has applied nothing (on any product's
// metadata path) or cannot resolve its signing certificates, 404 on any
// other path, as IIS answers a URL that is no metadata endpoint.
func (s *Sim) serveMetadata(w http.ResponseWriter, r *http.Request) {
	h := s.snap.Load()
	p, applied := products.Parse(h.Product)
	switch {
	case !applied && isMetadataPath(r.URL.Path):
	case applied && r.URL.Path == products.MetadataPath(p):
	default:
		http.NotFound(w, r)
		return
	}
	var doc *metadata.Document
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		if !applied {
			http.Error(w, fmt.Sprintf("host %s has applied no configuration yet and publishes no metadata", s.cfg.Host), http.StatusServiceUnavailable)
			return
		}
		sc, err := s.signing()
		if err != nil {
			// The message names hosts and thumbprints, never key material.
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		// Each product serves its own shape (see metadata.BuildFor).
		doc = metadata.BuildFor(p, sc.host.ServiceName, sc.published, s.documentName(sc.host, r), sc.all)
	}
	// metadata.Handler answers other methods with 405.
	metadata.Handler(func() *metadata.Document { return doc }).ServeHTTP(w, r)
}

// documentName is the host or name the document is built for: the
// deployment's endpoint (or its metadata URL's host) when the client
// addressed it by that name, this host's FQDN otherwise.
func (s *Sim) documentName(h *hostState, r *http.Request) string {
	addressed := r.Host
	if hn, _, err := net.SplitHostPort(addressed); err == nil {
		addressed = hn
	}
	for _, name := range []string{h.Endpoint, urlBase(h.MetadataURL)} {
		if name != "" && strings.EqualFold(hostOf(name), addressed) {
			return name
		}
	}
	return s.cfg.Host
}

// hostOf is the host name of an FQDN or a URL.
func hostOf(name string) string {
	if strings.Contains(name, "://") {
		if u, err := url.Parse(name); err == nil {
			return u.Hostname()
		}
	}
	return name
}

// urlBase is "scheme://host" of a URL, or "" when it does not parse.
func urlBase(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Scheme == "" {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// serveProbe validates the bearer actor token as the product would: against
// the partners its deployment store registers (identifier, Enabled, the
// certificates cached from their metadata), as this host, in the
// deployment's realm. 200 {"ok":true} accepts it; 401 with an
// X-Ms-Diagnostics header and the reason refuses it, as Exchange refuses a
// token Test-CsExStorageConnectivity presents.
func (s *Sim) serveProbe(w http.ResponseWriter, r *http.Request) {
	h := s.snap.Load()
	if h.Deployment == "" {
		writeProbe(w, http.StatusServiceUnavailable, ProbeAnswer{Reason: ReasonNotConfigured,
			Detail: fmt.Sprintf("host %s has applied no configuration yet", s.cfg.Host)})
		return
	}
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		refuse(w, string(s2stoken.ReasonMalformed), "no bearer token in the Authorization header")
		return
	}
	ps, err := s.deploymentView(h)
	if err != nil {
		writeProbe(w, http.StatusInternalServerError, ProbeAnswer{Reason: ReasonInternal, Detail: fmt.Sprintf("host %s: %v", s.cfg.Host, err)})
		return
	}
	partners, err := partnerStates(ps, h.Deployment)
	if err != nil {
		writeProbe(w, http.StatusInternalServerError, ProbeAnswer{Reason: ReasonInternal, Detail: fmt.Sprintf("host %s: %v", s.cfg.Host, err)})
		return
	}
	recv := s2stoken.Receiver{ServiceName: h.ServiceName, Hostname: s.cfg.Host, Realm: realmOf(ps, h)}
	for _, p := range partners {
		recv.Partners = append(recv.Partners, s2stoken.Partner{
			ApplicationIdentifier: p.ApplicationIdentifier, Realm: p.Realm, Enabled: p.Enabled, Certificates: p.Certificates,
		})
	}
	if _, err := recv.Validate(strings.TrimSpace(token), s.cfg.Now()); err != nil {
		var ve *s2stoken.ValidationError
		if errors.As(err, &ve) {
			refuse(w, string(ve.Reason), ve.Detail)
			return
		}
		refuse(w, string(s2stoken.ReasonMalformed), err.Error())
		return
	}
	writeProbe(w, http.StatusOK, ProbeAnswer{OK: true})
}

// refuse answers 401 with the reason in X-Ms-Diagnostics and the body.
func refuse(w http.ResponseWriter, reason, detail string) {
	w.Header().Set(DiagnosticsHeader, fmt.Sprintf("%s; reason=%q", reason, detail))
	writeProbe(w, http.StatusUnauthorized, ProbeAnswer{Reason: reason, Detail: detail})
}

// writeProbe writes a probe answer as JSON.
func writeProbe(w http.ResponseWriter, status int, a ProbeAnswer) {
	b, err := json.Marshal(a)
	if err != nil {
		http.Error(w, "encode the probe answer", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
