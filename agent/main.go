// Command s2s-agent runs on every Lync / Skype for Business, Exchange and
// SharePoint host: it keeps one stream to the s2strust controller, applies
// its host's share of the trust topology and reports what it sees.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/spf13/cobra"

	"github.com/s2strust/s2strust/agent/app"
	"github.com/s2strust/s2strust/agent/config"
	"github.com/s2strust/s2strust/agent/diagnose"
	"github.com/s2strust/s2strust/agent/inspect"
	"github.com/s2strust/s2strust/agent/service"
	"github.com/s2strust/s2strust/agent/syncer"
	"github.com/s2strust/s2strust/internal/version"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "s2s-agent:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{Use: "s2s-agent", Short: "The s2strust agent: applies and verifies this host's S2S OAuth trust", SilenceUsage: true, SilenceErrors: true}
	var cfg app.Config
	var verbose, apply bool
	var configFile string
	run := &cobra.Command{
		Use:   "run",
		Short: "Connect to the controller and keep this host's trust configuration applied",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Flags typed on the command line, then agent.yaml, then defaults.
			if configFile != "" {
				if err := config.ApplyFile(cmd.Flags(), configFile); err != nil {
					return err
				}
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg.Monitor = !apply
			// As a Windows service the service control manager stops it,
			// and key events go to the event log.
			return service.Run(ctx, log, func(ctx context.Context, log *slog.Logger) error {
				cfg.Logger = log
				return app.Run(ctx, cfg)
			})
		},
	}
	f := run.Flags()
	f.StringVar(&cfg.Controller, "controller", "127.0.0.1:7443", "controller address HOST:PORT, or several replicas A:7443,B:7443 (tried in order; the agent moves to the next when one dies); a DNS name may resolve to several")
	f.StringVar(&cfg.Host, "host", "", "this host's FQDN, as its certificate names it (required)")
	f.StringVar(&cfg.CA, "ca", "", "CA certificate (PEM) that issued the controller's certificate")
	f.StringVar(&cfg.Cert, "cert", "", "this agent's certificate (PEM)")
	f.StringVar(&cfg.Key, "key", "", "this agent's private key (PEM)")
	f.BoolVar(&cfg.Insecure, "insecure", false, "connect without TLS (only to a controller run with --insecure)")
	f.StringVar(&configFile, "config", "", "agent.yaml: settings by flag name (e.g. state-dir: C:\\ProgramData\\s2strust\\state); flags given here override it")
	f.StringVar(&cfg.Driver, "driver", "sim", "product driver: sim or powershell")
	f.StringVar(&cfg.PowerShell, "powershell", "powershell.exe", "powershell driver: the Windows PowerShell 5.1 executable")
	f.StringVar(&cfg.StateDir, "state-dir", "./s2s-agent-state", "where the last good configuration is kept")
	f.StringVar(&cfg.SimDir, "sim-dir", "", "sim driver: directory of the simulated deployment stores, shared by the hosts of a deployment (default <state-dir>/sim-shared)")
	f.StringSliceVar(&cfg.SimProducts, "sim-product", nil, "sim driver: a product installed on this host, PRODUCT:VERSION (e.g. lync:2015); repeatable")
	f.DurationVar(&cfg.DriftInterval, "drift-interval", time.Minute, "how often the applied configuration is re-read to find drift")
	f.DurationVar(&cfg.ProbeInterval, "probe-interval", syncer.DefaultProbeInterval, "how often every trust edge's metadata and probes are checked again while nothing else checks them (jittered by ±10%); a changed result is reported at once")
	f.BoolVar(&cfg.AutoCorrect, "auto-correct", false, "re-apply drifted items instead of only reporting them")
	f.BoolVar(&apply, "apply", true, "apply the configuration; --apply=false (apply: false in agent.yaml) is monitor mode: read, verify, probe and report the plan (the exact cmdlets, secrets redacted), change nothing, acknowledge nothing")
	f.DurationVar(&cfg.VerifyInterval, "verify-interval", 2*time.Second, "how often a verification waiting on the deployment's primary is retried")
	f.DurationVar(&cfg.PendingTimeout, "pending-timeout", 30*time.Second, "how long a verification may wait on the deployment's primary before it is NACKed (a later success still ACKs it)")
	f.StringSliceVar(&cfg.Resolve, "resolve", nil, "resolve HOST to ADDR for metadata downloads and trust probes, as curl's --resolve: HOST=IP:PORT or HOST:PORT=IP:PORT; repeatable")
	f.StringVar(&cfg.MetadataCA, "metadata-ca", "", "PEM file of CAs trusted for partners' HTTPS endpoints (default: the system trust store)")
	f.StringVar(&cfg.SimListen, "sim-listen", "", "sim driver: serve this host's metadata document and S2S endpoint over HTTPS here, e.g. 127.0.0.1:8443")
	f.StringVar(&cfg.SimTLSCert, "sim-tls-cert", "", "sim driver: HTTPS certificate (PEM) for --sim-listen, naming the host and its deployment's endpoint")
	f.StringVar(&cfg.SimTLSKey, "sim-tls-key", "", "sim driver: HTTPS private key (PEM) for --sim-listen")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "", "serve Prometheus metrics over HTTP at /metrics on this address (default: none); a bare PORT or :PORT binds 127.0.0.1, give HOST:PORT to expose them further")
	f.BoolVarP(&verbose, "verbose", "v", false, "debug logging")
	root.AddCommand(run, service.Command(), newEnroll(), newInspect(run))
	root.AddCommand(newVersion())
	root.AddCommand(&cobra.Command{
		Use:   "diagnose metadata URL [--product P] [--partner P] [--ca FILE] [--resolve HOST=ADDR]",
		Short: "Check a partner's metadata URL from this host, as the products' cmdlets would see it",
		// diagnose parses its own flags (and --help), and sets the exit code.
		DisableFlagParsing: true,
		Run: func(cmd *cobra.Command, args []string) {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			code := diagnose.Main(ctx, args, os.Stdout, os.Stderr)
			stop()
			os.Exit(code)
		},
	})
	return root
}

// newInspect is `s2s-agent inspect`. With --config it reads agent.yaml
// as run does (through run's flags, so the file's other keys are no
// error) and takes the settings that find the host from it.
func newInspect(run *cobra.Command) *cobra.Command {
	var o inspect.Options
	var configFile string
	c := &cobra.Command{
		Use:   "inspect --host FQDN [--driver sim|powershell] [--product P[:V]] [--deployment D] [-o table|json]",
		Short: "Print this host's current S2S OAuth configuration as the products' own Get- cmdlets show it; changes nothing",
		Long: `Print this host's current S2S OAuth configuration as the products' own cmdlets show it:
Get-CsPartnerApplication, Get-CsOAuthConfiguration and Get-CsCertificate on Lync / Skype for Business;
Get-PartnerApplication, Get-AuthConfig and Get-ExchangeCertificate on Exchange;
Get-SPTrustedSecurityTokenIssuer, Get-SPAuthenticationRealm and Get-SPSecurityTokenServiceConfig on SharePoint.
It reads through the same driver as "run" (the same flags) and changes nothing; no controller is needed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				if err := config.ApplyFile(run.Flags(), configFile); err != nil {
					return err
				}
				for _, name := range []string{"host", "driver", "powershell", "state-dir", "sim-dir", "sim-product"} {
					if cmd.Flags().Changed(name) || !run.Flags().Changed(name) {
						continue // typed here, or not in the file
					}
					vals := []string{run.Flags().Lookup(name).Value.String()}
					if name == "sim-product" {
						vals, _ = run.Flags().GetStringSlice(name)
					}
					for _, v := range vals {
						if err := cmd.Flags().Set(name, v); err != nil {
							return fmt.Errorf("configuration file %s: key %s: %w", configFile, name, err)
						}
					}
				}
			}
			if o.Agent.Host == "" {
				return errors.New("--host is required (or host in the --config file)")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return inspect.Run(ctx, o, cmd.OutOrStdout())
		},
	}
	f := c.Flags()
	f.StringVar(&configFile, "config", "", "agent.yaml, as run reads it: host, driver, powershell, state-dir and the sim's settings are taken from it; flags given here override it")
	f.StringVar(&o.Agent.Host, "host", "", "this host's FQDN (required)")
	f.StringVar(&o.Agent.Driver, "driver", "sim", "product driver: sim or powershell")
	f.StringVar(&o.Agent.PowerShell, "powershell", "powershell.exe", "powershell driver: the Windows PowerShell 5.1 executable")
	f.StringVar(&o.Agent.StateDir, "state-dir", "./s2s-agent-state", "the agent's state directory (the sim keeps the host's store there)")
	f.StringVar(&o.Agent.SimDir, "sim-dir", "", "sim driver: directory of the simulated deployment stores (default <state-dir>/sim-shared)")
	f.StringSliceVar(&o.Agent.SimProducts, "sim-product", nil, "sim driver: a product installed on this host, PRODUCT:VERSION; repeatable")
	f.StringVar(&o.Product, "product", "", "the product to inspect, PRODUCT[:VERSION] (default: the one product the driver finds)")
	f.StringVar(&o.Deployment, "deployment", "", "the host's deployment (pool, organization or farm); required with the sim driver")
	f.StringVarP(&o.Output, "output", "o", "table", "table or json")
	return c
}

func newEnroll() *cobra.Command {
	var cfg app.EnrollConfig
	c := &cobra.Command{
		Use:   "enroll --controller ADDR --host FQDN --token T --ca-pin sha256:... --state-dir DIR",
		Short: "Get this host's identity with a join token: the key is made here and never leaves the host",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
			notAfter, err := app.Enroll(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "enrolled %s: identity in %s, valid until %s; now run: s2s-agent run --controller %s --host %s --state-dir %s ...\n",
				cfg.Host, app.IdentityDir(cfg.StateDir), notAfter.UTC().Format(time.RFC3339), cfg.Controller, cfg.Host, cfg.StateDir)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.Controller, "controller", "", "controller address HOST:PORT (required)")
	f.StringVar(&cfg.Host, "host", "", "this host's FQDN, as the token names it (required)")
	f.StringVar(&cfg.Token, "token", "", "join token from `s2s-controller token create` (required)")
	f.StringVar(&cfg.CAPin, "ca-pin", "", "the CA pin printed with the token, sha256:<hex> (required)")
	f.StringVar(&cfg.StateDir, "state-dir", "./s2s-agent-state", "the agent's state directory; the identity goes to <state-dir>/identity")
	for _, n := range []string{"controller", "host", "token", "ca-pin"} {
		_ = c.MarkFlagRequired(n)
	}
	return c
}

// newVersion is `version [-o table|json|yaml]`: the agent's version.Info,
// one line for people or field by field for scripts (as the controller's
// version -o prints it).
func newVersion() *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "version",
		Short: "Print the agent's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := version.Get("s2s-agent")
			var out []byte
			switch format {
			case "table":
				out = []byte(info.String() + "\n")
			case "json", "yaml":
				b, err := json.MarshalIndent(info, "", "  ")
				if err != nil {
					return err
				}
				out = append(b, '\n')
				if format == "yaml" {
					if out, err = yaml.JSONToYAML(b); err != nil {
						return fmt.Errorf("print as yaml: %w", err)
					}
				}
			default:
				return fmt.Errorf("-o %q: want table, json or yaml", format)
			}
			_, err := cmd.OutOrStdout().Write(out)
			return err
		},
	}
	c.Flags().StringVarP(&format, "output", "o", "table", "output format: table, json or yaml")
	return c
}
