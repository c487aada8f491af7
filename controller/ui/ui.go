// Package ui is the controller's web dashboard: a handful of hand-written
// static files embedded in the binary and a small JSON API, answered
// in-process by the controller's FleetService, that they read live (a
// stream of server-sent events driven by WatchHosts) or, failing that,
// poll. It reads only: nothing on the dashboard changes the fleet.
//
// An operator is let in by the same client certificate the admin commands
// use (an admin identity from the controller's CA), or by a short-lived
// login token from `s2s-controller ui token` that the page exchanges once
// for an HttpOnly, SameSite=Strict session cookie.
package ui

import (
	"context"
	"crypto/tls"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/s2strust/s2strust/internal/metricshttp"
	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

//go:embed static
var staticFiles embed.FS

// Fleet is the part of the FleetService the dashboard reads; the
// controller's *server.FleetService is one.
type Fleet interface {
	ListHosts(context.Context, *pb.ListHostsRequest) (*pb.ListHostsResponse, error)
	GetHost(context.Context, *pb.GetHostRequest) (*pb.GetHostResponse, error)
	GetTrustReport(context.Context, *pb.GetTrustReportRequest) (*pb.GetTrustReportResponse, error)
	WatchHosts(*pb.WatchHostsRequest, pb.FleetService_WatchHostsServer) error
}

// Config configures the dashboard handler.
type Config struct {
	Fleet Fleet
	// Rollouts, when set, lists rollouts with their waves' progress.
	Rollouts Rollouts
	// Key signs login tokens and sessions (KeySize bytes).
	Key []byte
	// Secure says the dashboard is served over TLS, so its cookie is
	// marked Secure. Off only for --insecure, on loopback.
	Secure bool
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Handler serves the dashboard.
type Handler struct {
	cfg    Config
	signer *Signer
	used   usedTokens
	mux    *http.ServeMux
}

// sessionCookie names the session cookie.
const sessionCookie = "s2strust_ui_session"

// NewHandler returns the dashboard's HTTP handler.
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.Fleet == nil {
		return nil, errors.New("dashboard: no fleet service")
	}
	signer, err := NewSigner(cfg.Key)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Handler{cfg: cfg, signer: signer, mux: http.NewServeMux()}
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		return nil, err
	}
	// The page itself holds no fleet data, so it is served to anyone who
	// can reach the port; it asks for a token when the API says 401.
	h.mux.Handle("GET /", http.FileServerFS(static))
	h.mux.HandleFunc("POST /api/login", h.login)
	h.mux.HandleFunc("GET /api/fleet", h.authenticated(func(w http.ResponseWriter, r *http.Request, _ time.Time) { h.fleet(w, r) }))
	h.mux.HandleFunc("GET /api/fleet/events", h.authenticated(h.events))
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	// Only the dashboard's own files run, nothing from agents can become
	// markup or script, and no other site may frame or read the page.
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	h.mux.ServeHTTP(w, r)
}

// admin reports whether the request came with an admin client certificate
// from the controller's CA (the TLS layer verified the chain) whose role
// may read the fleet: the dashboard shows what FleetService's read calls
// show to a viewer.
func admin(r *http.Request) bool {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return false
	}
	id, err := pki.IdentityFromCert(r.TLS.VerifiedChains[0][0])
	return err == nil && id.Kind == pki.KindAdmin && id.Role >= pki.RoleViewer
}

// authenticated lets in an admin certificate or a session cookie; next
// learns until when (the certificate's or the session's expiry), for a
// stream that must not outlive it.
func (h *Handler) authenticated(next func(w http.ResponseWriter, r *http.Request, until time.Time)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if admin(r) {
			next(w, r, r.TLS.VerifiedChains[0][0].NotAfter)
			return
		}
		c, err := r.Cookie(sessionCookie)
		if err != nil {
			writeError(w, http.StatusUnauthorized, "not logged in: open the URL that `s2s-controller ui token` prints, or present an admin client certificate")
			return
		}
		t, err := h.signer.Check(c.Value, PurposeSession, h.cfg.Now())
		if err != nil {
			writeError(w, http.StatusUnauthorized, "session refused ("+err.Error()+"): log in again with `s2s-controller ui token`")
			return
		}
		next(w, r, t.Expires)
	}
}

// loginRequest is the body of POST /api/login.
type loginRequest struct {
	Token string `json:"token"`
}

// login exchanges a login token, once, for a session cookie.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	var req loginRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "login: body is not {\"token\": \"...\"}: "+err.Error())
		return
	}
	now := h.cfg.Now()
	t, err := h.signer.Check(req.Token, PurposeLogin, now)
	if err != nil {
		h.cfg.Logger.Info("dashboard login refused", "remote", r.RemoteAddr, "error", err)
		writeError(w, http.StatusUnauthorized, "login: "+err.Error()+"; run `s2s-controller ui token` for a new one")
		return
	}
	if !h.used.use(t, now) {
		h.cfg.Logger.Info("dashboard login refused", "remote", r.RemoteAddr, "error", "token used before")
		writeError(w, http.StatusUnauthorized, "login: this token was used before; run `s2s-controller ui token` for a new one")
		return
	}
	session, err := h.signer.Mint(PurposeSession, now.Add(SessionTTL))
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: session, Path: "/",
		MaxAge: int(SessionTTL / time.Second), HttpOnly: true, Secure: h.cfg.Secure, SameSite: http.SameSiteStrictMode,
	})
	h.cfg.Logger.Info("dashboard login", "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) fleet(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	v, err := buildView(ctx, h.cfg.Fleet, h.cfg.Rollouts, h.cfg.Now())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, v)
}

type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// ServeConfig configures Serve.
type ServeConfig struct {
	Config
	// Listen is the dashboard's address; loopback unless chosen otherwise.
	Listen string
	// TLS is the controller's server TLS configuration; client certificates
	// become optional on the dashboard so that a browser without one can
	// log in with a token. Nil serves plaintext, on loopback only.
	TLS *tls.Config
	// Ready, when set, is called with the dashboard's URL once listening.
	Ready func(url string)
}

// DefaultListen is the dashboard's address when --ui-listen is given none.
const DefaultListen = "127.0.0.1:7444"

// Serve runs the dashboard until ctx ends.
func Serve(ctx context.Context, cfg ServeConfig) error {
	cfg.Secure = cfg.TLS != nil
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h, err := NewHandler(cfg.Config)
	if err != nil {
		return err
	}
	addr := cfg.Listen
	if addr == "" {
		addr = DefaultListen
	}
	// The same rule as --metrics-listen: a bare PORT or :PORT is loopback.
	addr, err = metricshttp.ResolveAddr("--ui-listen", addr)
	if err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(addr)
	if cfg.TLS == nil {
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("--ui-listen %q: without TLS the dashboard serves on a loopback address only (127.0.0.1 or ::1)", addr)
		}
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("dashboard: listen on %s: %w", addr, err)
	}
	scheme := "http"
	if cfg.TLS != nil {
		t := cfg.TLS.Clone()
		t.ClientAuth = tls.VerifyClientCertIfGiven
		// HTTP/1.1 is enough for one page's event stream and its calls.
		t.NextProtos = []string{"http/1.1"}
		lis = tls.NewListener(lis, t)
		scheme = "https"
	}
	// Requests (the live event streams among them) end with ctx.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
		BaseContext: func(net.Listener) context.Context { return ctx }}
	url := scheme + "://" + lis.Addr().String() + "/"
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	cfg.Logger.Info("dashboard serving", "url", url)
	if cfg.Ready != nil {
		cfg.Ready(url)
	}
	select {
	case err := <-errc:
		return fmt.Errorf("dashboard on %s: %w", url, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	<-errc
	return nil
}
