package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/s2strust/s2strust/controller/ui"
	"github.com/s2strust/s2strust/internal/atomicfile"
	"github.com/s2strust/s2strust/internal/secretbox"
)

// UIKeyFile is the key signing the dashboard's login tokens and sessions
// (mode 0600); `s2s-controller ui token` signs with it too.
func UIKeyFile(dataDir string) string { return filepath.Join(dataDir, "ui-token.key") }

// UIAddrFile is where serve writes the dashboard's URL, for `ui token`.
func UIAddrFile(dataDir string) string { return filepath.Join(dataDir, "ui.url") }

// LoadUIKey reads the dashboard's key, creating it on first use.
func LoadUIKey(dataDir string) ([]byte, error) {
	return secretbox.LoadOrCreateKey(UIKeyFile(dataDir))
}

// serveUI runs the dashboard on cfg.UIListen until ctx ends; tlsCfg is
// the controller's own server configuration, nil under --insecure.
func serveUI(ctx context.Context, cfg ServeConfig, fleet ui.Fleet, rollouts ui.Rollouts, tlsCfg *tls.Config, log *slog.Logger) error {
	key, err := LoadUIKey(cfg.DataDir)
	if err != nil {
		return err
	}
	file := UIAddrFile(cfg.DataDir)
	var served string
	defer func() {
		if b, err := os.ReadFile(file); err == nil && served != "" && strings.TrimSpace(string(b)) == served {
			_ = os.Remove(file)
		}
	}()
	return ui.Serve(ctx, ui.ServeConfig{
		Config: ui.Config{Fleet: fleet, Rollouts: rollouts, Key: key, Logger: log.With("component", "ui")},
		Listen: cfg.UIListen, TLS: tlsCfg,
		Ready: func(u string) {
			served = u
			if err := atomicfile.Write(file, []byte(u+"\n"), 0o644); err != nil {
				log.Warn("cannot write the dashboard's URL for `ui token`", "file", file, "error", err)
			}
			if cfg.UIReady != nil {
				cfg.UIReady(u)
			}
		},
	})
}

// LoginURL is the dashboard URL that logs its opener in with token; the
// token rides in the fragment, which browsers never send to the server
// nor to anyone in a Referer.
func LoginURL(dashboard, token string) string {
	u, err := url.Parse(dashboard)
	if err != nil {
		return dashboard + "#login=" + token
	}
	u.Fragment = "login=" + token
	return u.String()
}

// NewLoginURL mints a login token with the data dir's dashboard key, valid
// for ttl, and returns the dashboard URL that spends it.
func NewLoginURL(dataDir, dashboard string, ttl time.Duration) (string, error) {
	if _, err := os.Stat(UIKeyFile(dataDir)); err != nil {
		return "", fmt.Errorf("dashboard key: %w (start `s2s-controller serve --data-dir %s --ui-listen ADDR` first)", err, dataDir)
	}
	key, err := LoadUIKey(dataDir)
	if err != nil {
		return "", err
	}
	s, err := ui.NewSigner(key)
	if err != nil {
		return "", err
	}
	token, err := s.MintLogin(time.Now(), ttl)
	if err != nil {
		return "", err
	}
	return LoginURL(dashboard, token), nil
}

// DashboardURL is the URL the running controller of dataDir serves its
// dashboard on.
func DashboardURL(dataDir string) (string, error) {
	b, err := os.ReadFile(UIAddrFile(dataDir))
	if err != nil {
		return "", fmt.Errorf("find the dashboard: %w (is `s2s-controller serve --data-dir %s --ui-listen ADDR` running?)", err, dataDir)
	}
	return strings.TrimSpace(string(b)), nil
}
