// Package cmd holds the s2s-controller commands: serve, the admin commands
// against a running controller, certificate issuing and the demo.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/internal/atomicfile"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/pki"
)

// exitError carries a process exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// ExitCode is the process exit code for err.
func ExitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

// globals are the flags every admin command shares.
type globals struct {
	client  app.ClientConfig
	verbose bool
	out     io.Writer
}

func (g *globals) dial() (*grpc.ClientConn, error) { return app.Dial(g.client) }

// withController dials the controller as admin and runs fn with a bounded
// context.
func (g *globals) withController(cmd *cobra.Command, fn func(ctx context.Context, conn *grpc.ClientConn) error) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := callCtx(cmd.Context())
	defer cancel()
	return fn(ctx, conn)
}

func (g *globals) logger() *slog.Logger {
	level := slog.LevelInfo
	if g.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// NewRoot builds the command tree, printing results to out.
func NewRoot(out io.Writer) *cobra.Command {
	g := &globals{out: out}
	root := &cobra.Command{
		Use:           "s2s-controller",
		Short:         "s2strust controller: keeps Lync/Skype for Business, Exchange and SharePoint S2S OAuth trust correct across a fleet",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	pf := root.PersistentFlags()
	pf.StringVar(&g.client.DataDir, "data-dir", "./s2s-data", "controller data directory (embedded etcd, development PKI, address file)")
	pf.StringVar(&g.client.Addr, "controller", "", "controller address for admin commands (default: from --data-dir)")
	pf.StringVar(&g.client.CA, "ca", "", "CA certificate for admin commands (default: <data-dir>/pki/ca.crt)")
	pf.StringVar(&g.client.Cert, "cert", "", "admin certificate (default: <data-dir>/pki/admin.crt)")
	pf.StringVar(&g.client.Key, "key", "", "admin key (default: <data-dir>/pki/admin.key)")
	pf.BoolVar(&g.client.Insecure, "insecure", false, "plaintext, loopback only (serve) or to such a controller (admin commands)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "debug logging")
	root.AddCommand(newVersion(g), newServe(g), newApply(g), newDiff(g), newGet(g), newStatus(g), newDiscover(g), newCerts(g), newSecret(g), newDemo(g), newBench(g), newBenchAgents(), newStore(g), newToken(g), newHost(g), newRollout(g), newRotate(g), newUI(g))
	return root
}

func newServe(g *globals) *cobra.Command {
	var cfg app.ServeConfig
	var endpoints string
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run the controller: gRPC API and agent streams, state in etcd",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.DataDir = g.client.DataDir
			cfg.Insecure = g.client.Insecure
			cfg.Logger = g.logger()
			for _, e := range strings.Split(endpoints, ",") {
				if e = strings.TrimSpace(e); e != "" {
					cfg.EtcdEndpoints = append(cfg.EtcdEndpoints, e)
				}
			}
			// An external cluster's quota and compaction are its own flags'.
			for _, f := range []string{"etcd-quota-bytes", "etcd-compaction-retention"} {
				if len(cfg.EtcdEndpoints) > 0 && cmd.Flags().Changed(f) {
					return fmt.Errorf("--%s applies to the embedded etcd only; with --etcd-endpoints set etcd's own --quota-backend-bytes and --auto-compaction-retention", f)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return app.Serve(ctx, cfg)
		},
	}
	addTLSFlags(c, &cfg)
	c.Flags().StringVar(&cfg.Listen, "listen", "127.0.0.1:7443", "gRPC listen address")
	c.Flags().StringVar(&cfg.MetricsListen, "metrics-listen", "", "serve Prometheus metrics over HTTP at /metrics on this address (default: none); a bare PORT or :PORT binds 127.0.0.1, give HOST:PORT to expose them further")
	c.Flags().StringVar(&endpoints, "etcd-endpoints", "", "use this etcd cluster (comma-separated URLs) instead of the embedded one")
	c.Flags().StringVar(&cfg.EtcdPrefix, "etcd-prefix", "/s2strust/", "key prefix in etcd")
	c.Flags().StringVar(&cfg.UIListen, "ui-listen", "", "serve the web dashboard on this address, e.g. 127.0.0.1:7444 (off by default; a bare PORT or :PORT means loopback); log in with `ui token`")
	c.Flags().StringVar(&cfg.SecretKeyFile, "secret-key", "", "AES-256 key file sealing secrets in etcd, never stored in etcd; back it up apart from the data (default: $CREDENTIALS_DIRECTORY/secret.key when systemd passes that credential, else <data-dir>/secret.key)")
	c.Flags().StringVar(&cfg.EtcdClient.CA, "etcd-ca", "", "with --etcd-endpoints: CA certificate verifying the etcd servers")
	c.Flags().StringVar(&cfg.EtcdClient.Cert, "etcd-cert", "", "with --etcd-endpoints: the controller's etcd client certificate")
	c.Flags().StringVar(&cfg.EtcdClient.Key, "etcd-key", "", "with --etcd-endpoints: the key of --etcd-cert")
	c.Flags().StringVar(&cfg.EtcdClient.Username, "etcd-username", "", "with --etcd-endpoints: the controller's etcd user (a role scoped to --etcd-prefix)")
	c.Flags().StringVar(&cfg.EtcdClient.PasswordFile, "etcd-password-file", "", "with --etcd-username: file holding that user's password")
	c.Flags().Int64Var(&cfg.EtcdQuotaBytes, "etcd-quota-bytes", etcdembed.DefaultQuotaBytes, "embedded etcd: space quota of its database; over it writes are refused until `s2s-controller store defrag`")
	c.Flags().DurationVar(&cfg.EtcdCompactionRetention, "etcd-compaction-retention", etcdembed.DefaultCompactionRetention, "embedded etcd: history kept by periodic auto-compaction (negative: none)")
	return c
}

// addTLSFlags adds serve's serving-identity flags.
func addTLSFlags(c *cobra.Command, cfg *app.ServeConfig) {
	t := &cfg.TLS
	c.Flags().DurationVar(&cfg.HostCertTTL, "host-cert-ttl", 7*24*time.Hour, "lifetime of host certificates issued at enrollment and renewal (agents renew when a third is left)")
	c.Flags().StringSliceVar(&t.SANs, "tls-san", nil, "names and IP addresses the controller is reached at, added to the development CA's serving certificate (comma-separated; reissued when the list changes), e.g. controller.contoso.com,10.0.0.5")
	c.Flags().StringVar(&t.CertFile, "tls-cert", "", "serve this certificate (PEM, from your organisation's CA; must carry the URI SAN "+pki.ControllerURI+") instead of the development CA's")
	c.Flags().StringVar(&t.KeyFile, "tls-key", "", "the private key (PEM) of --tls-cert")
	c.Flags().StringVar(&t.CACertFile, "ca-cert", "", "an operator-provided (intermediate) CA certificate (PEM) to issue every identity from, instead of a CA the first replica makes; stored in etcd sealed, shared by every replica")
	c.Flags().StringVar(&t.CAKeyFile, "ca-key", "", "the private key (PEM) of --ca-cert")
	c.Flags().StringVar(&t.ClientCAFile, "client-ca", "", "more CA certificates (PEM) trusted for agent and admin client certificates, besides the fleet's CA")
}

func newCerts(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "certs", Short: "Issue certificates from the controller's development CA"}
	var host, outDir string
	var httpsNames []string
	var ttl time.Duration
	issue := &cobra.Command{
		Use:   "issue-agent",
		Short: "Issue an agent certificate naming one host (writes agent.crt, agent.key, ca.crt)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			files := pki.Files{Dir: app.PKIDir(g.client.DataDir)}
			caPEM, err := os.ReadFile(files.CACert())
			if err != nil {
				return errors.New("read the development CA: " + err.Error() + " (start `s2s-controller serve` once to create it)")
			}
			keyPEM, err := os.ReadFile(files.CAKey())
			if err != nil {
				return errors.New("read the development CA key: " + err.Error())
			}
			ca, err := pki.LoadCA(caPEM, keyPEM)
			if err != nil {
				return err
			}
			cert, key, err := ca.IssueHost(host, time.Now(), ttl)
			if err != nil {
				return err
			}
			if err := pki.WriteIdentity(outDir, "agent", cert, key, caPEM); err != nil {
				return err
			}
			cmd.Printf("issued agent certificate for %s into %s (agent.crt, agent.key, ca.crt)\n", strings.ToLower(host), outDir)
			if len(httpsNames) > 0 {
				// The sim's HTTPS endpoint: the host itself and its deployment's endpoint names.
				names := append([]string{strings.ToLower(host)}, httpsNames...)
				hc, hk, err := ca.IssueHTTPS(names, time.Now(), ttl)
				if err != nil {
					return err
				}
				if err := pki.WriteIdentity(outDir, "https", hc, hk, caPEM); err != nil {
					return err
				}
				cmd.Printf("issued HTTPS certificate for %s into %s (https.crt, https.key)\n", strings.Join(names, ", "), outDir)
			}
			return nil
		},
	}
	issue.Flags().StringVar(&host, "host", "", "the host's FQDN (required)")
	issue.Flags().StringVar(&outDir, "out", ".", "output directory")
	issue.Flags().StringSliceVar(&httpsNames, "https-name", nil, "sim driver: also issue an HTTPS certificate for the host and these names (its deployment's pool, autodiscover or web application name)")
	issue.Flags().DurationVar(&ttl, "ttl", 365*24*time.Hour, "certificate lifetime")
	_ = issue.MarkFlagRequired("host")
	c.AddCommand(issue, newIssueTokenIssuer(), newIssueAdmin(g))
	return c
}

// newIssueTokenIssuer makes a self-signed token-issuer PFX for labs and
// trials; production certificates come from the enterprise PKI (or, in
// hybrid deployments, a public CA).
func newIssueTokenIssuer() *cobra.Command {
	var cn, out, pwFile string
	var sans []string
	var validity time.Duration
	c := &cobra.Command{
		Use:   "issue-token-issuer --cn DOMAIN --san D1,D2 --out FILE.pfx --password-file FILE",
		Short: "Make a self-signed OAuthTokenIssuer certificate as a PFX (labs only; use your PKI in production)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pw, err := os.ReadFile(pwFile)
			if err != nil {
				return fmt.Errorf("read --password-file: %w", err)
			}
			now := time.Now()
			if len(sans) == 0 {
				sans = []string{cn}
			}
			b, err := certs.Generate(certs.Template{CommonName: cn, DNSNames: sans, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(validity), KeyBits: 2048})
			if err != nil {
				return err
			}
			pfx, err := certs.EncodePFX(b, strings.TrimRight(string(pw), "\r\n"))
			if err != nil {
				return err
			}
			if err := atomicfile.Write(out, pfx, 0o600); err != nil {
				return err
			}
			cmd.Printf("wrote %s: certificate %s (CN=%s, SAN %s), valid until %s\n", out, certs.Thumbprint(b.Cert), cn, strings.Join(sans, ", "), b.Cert.NotAfter.Format("2006-01-02"))
			return nil
		},
	}
	c.Flags().StringVar(&cn, "cn", "", "subject CN: the default SIP domain (required)")
	c.Flags().StringSliceVar(&sans, "san", nil, "subject alternative names: the default SIP domain and every additional one")
	c.Flags().StringVar(&out, "out", "oauth.pfx", "PFX file to write (mode 0600)")
	c.Flags().StringVar(&pwFile, "password-file", "", "file holding the PFX password (required)")
	c.Flags().DurationVar(&validity, "validity", 2*365*24*time.Hour, "how long the certificate is valid")
	_ = c.MarkFlagRequired("cn")
	_ = c.MarkFlagRequired("password-file")
	return c
}

// callCtx bounds one admin call.
func callCtx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, 30*time.Second)
}
