package app

import (
	"context"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/s2strust/s2strust/internal/pki"
)

func TestEtcdClientConfigRefused(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pw")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  EtcdClientConfig
		want string
	}{
		{"cert without key", EtcdClientConfig{Cert: "c.crt"}, "--etcd-cert and --etcd-key go together"},
		{"key without cert", EtcdClientConfig{Key: "c.key"}, "--etcd-cert and --etcd-key go together"},
		{"missing CA file", EtcdClientConfig{CA: filepath.Join(dir, "nope.crt")}, "--etcd-ca " + filepath.Join(dir, "nope.crt")},
		{"CA not PEM", EtcdClientConfig{CA: notPEM}, "--etcd-ca " + notPEM + " holds no PEM certificate"},
		{"user without password", EtcdClientConfig{Username: "s2s"}, "--etcd-username and --etcd-password-file go together"},
		{"password without user", EtcdClientConfig{PasswordFile: empty}, "--etcd-username and --etcd-password-file go together"},
		{"missing password file", EtcdClientConfig{Username: "s2s", PasswordFile: filepath.Join(dir, "nope.pw")}, "read --etcd-password-file"},
		{"empty password", EtcdClientConfig{Username: "s2s", PasswordFile: empty}, "--etcd-password-file " + empty + " is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg clientv3.Config
			err := tt.cfg.apply(&cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if cfg.TLS != nil || cfg.Username != "" || cfg.Password != "" {
				t.Errorf("a refused configuration changed the client config: %+v", cfg)
			}
		})
	}
}

func TestEtcdClientConfigPassword(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "etcd.pw")
	if err := os.WriteFile(pw, []byte("s3cret\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg clientv3.Config
	if err := (EtcdClientConfig{Username: "s2s", PasswordFile: pw}).apply(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Username != "s2s" || cfg.Password != "s3cret" || cfg.TLS != nil {
		t.Fatalf("got user %q password %q TLS %v", cfg.Username, cfg.Password, cfg.TLS != nil)
	}
}

func TestSecretKeyPath(t *testing.T) {
	creds := t.TempDir()
	withKey := t.TempDir()
	if err := os.WriteFile(filepath.Join(withKey, CredentialName), make([]byte, 32), 0o400); err != nil {
		t.Fatal(err)
	}
	env := func(dir string) func(string) string {
		return func(k string) string {
			if k == "CREDENTIALS_DIRECTORY" {
				return dir
			}
			return ""
		}
	}
	tests := []struct {
		name, flag, credDir, want string
	}{
		{"flag wins", "/etc/s2s/key", withKey, "/etc/s2s/key"},
		{"systemd credential", "", withKey, filepath.Join(withKey, CredentialName)},
		{"credentials without the key", "", creds, filepath.Join("data", "secret.key")},
		{"no credentials", "", "", filepath.Join("data", "secret.key")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SecretKeyPath(tt.flag, "data", env(tt.credDir)); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// With --etcd-ca/--etcd-cert/--etcd-key the controller talks to an etcd
// that requires client certificates.
func TestServeExternalEtcdClientTLS(t *testing.T) {
	pkiDir := filepath.Join(t.TempDir(), "etcd-pki")
	_, files, err := pki.EnsureDevPKI(pkiDir, []string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "tls-etcd"
	cfg.Dir = filepath.Join(t.TempDir(), "data")
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client, _ := url.Parse("https://127.0.0.1:0")
	peer := url.URL{Scheme: "unix", Host: filepath.Join(t.TempDir(), "peer.sock")}
	adv := url.URL{Scheme: "unix", Path: peer.Host}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{adv}
	cfg.InitialCluster = cfg.Name + "=" + adv.String()
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: files.ServerCert(), KeyFile: files.ServerKey(), TrustedCAFile: files.CACert(), ClientCertAuth: true}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready")
	}
	endpoint := "https://" + e.Clients[0].Addr().String()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ServeConfig{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler),
			EtcdEndpoints: []string{endpoint},
			EtcdClient:    EtcdClientConfig{CA: files.CACert(), Cert: files.AdminCert(), Key: files.AdminKey()},
			Ready:         func(a string) { ready <- a }})
	}()
	select {
	case <-ready:
		// Ready means the controller read its state and took its presence
		// lease: it talked to etcd over mutual TLS.
	case err := <-done:
		t.Fatalf("serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("controller not ready within 30s over etcd client TLS")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Store flags that cannot work are refused before any etcd starts.
func TestServeRefusesStoreFlags(t *testing.T) {
	tests := []struct {
		name string
		cfg  ServeConfig
		want string
	}{
		{"negative quota", ServeConfig{EtcdQuotaBytes: -1}, "--etcd-quota-bytes -1"},
		{"etcd client flags without endpoints", ServeConfig{EtcdClient: EtcdClientConfig{Username: "s2s"}}, "need --etcd-endpoints"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.cfg.DataDir, tt.cfg.Listen, tt.cfg.Logger = dir, "127.0.0.1:0", slog.New(slog.DiscardHandler)
			err := Serve(context.Background(), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "etcd")); !os.IsNotExist(err) {
				t.Errorf("a refused serve started etcd (stat: %v)", err)
			}
		})
	}
}
