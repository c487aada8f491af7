// Package inspect prints a host's current S2S OAuth configuration in the
// shape of the products' own cmdlets (Get-CsPartnerApplication,
// Get-CsOAuthConfiguration, Get-CsCertificate; Get-PartnerApplication,
// Get-AuthConfig, Get-ExchangeCertificate; Get-SPTrustedSecurityTokenIssuer,
// Get-SPAuthenticationRealm, Get-SPSecurityTokenServiceConfig), read
// through the driver's Backend.Read: what an administrator reviews on a
// brownfield host before s2strust manages it. It changes nothing.
package inspect

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/s2strust/s2strust/agent/app"
	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Options configures `s2s-agent inspect`.
type Options struct {
	// Agent is the driver's configuration, as `run` takes it (host, driver,
	// state and sim directories); no controller is contacted.
	Agent app.Config
	// Product is PRODUCT[:VERSION] (lync:2015); empty takes the one product
	// the driver detects.
	Product string
	// Deployment names the host's deployment: the sim keeps one store per
	// deployment.
	Deployment string
	// Output is "table" (the default) or "json".
	Output string
}

// Run reads the host's state through the driver and writes it to w.
func Run(ctx context.Context, o Options, w io.Writer) error {
	switch o.Output {
	case "", "table", "json":
	default:
		return fmt.Errorf("-o %q: want table or json", o.Output)
	}
	cfg := o.Agent
	var product pb.Product
	var version string
	if o.Product != "" {
		name, ver, _ := strings.Cut(o.Product, ":")
		p, ok := products.Parse(name)
		if !ok {
			return fmt.Errorf("--product %q: want lync, exchange or sharepoint, optionally with :VERSION, e.g. lync:2015", o.Product)
		}
		product, version = p, products.NormalizeVersion(ver)
		if len(cfg.SimProducts) == 0 && version != "" {
			cfg.SimProducts = []string{o.Product}
		}
	}
	if cfg.Driver == "" || cfg.Driver == "sim" {
		if err := checkSimStores(cfg, o.Deployment); err != nil {
			return err
		}
	}
	// Inspect serves nothing and needs no vantage point of its own.
	cfg.SimListen, cfg.SimListener = "", nil
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	drv, err := app.NewDriver(cfg)
	if err != nil {
		return err
	}
	if c, ok := drv.(io.Closer); ok {
		// The powershell driver's workers.
		defer c.Close()
	}
	backend, ok := drv.(reconcile.Backend)
	if !ok {
		return fmt.Errorf("driver %s cannot read the host's state", drv.Name())
	}
	if product == pb.Product_PRODUCT_UNSPECIFIED || version == "" {
		found, err := drv.Detect(ctx)
		if err != nil {
			return fmt.Errorf("detect the products of host %s: %w", cfg.Host, err)
		}
		var names []string
		for _, d := range found {
			names = append(names, products.Name(d.GetProduct())+":"+d.GetVersion())
		}
		switch {
		case product != pb.Product_PRODUCT_UNSPECIFIED:
			for _, d := range found {
				if d.GetProduct() == product {
					version = d.GetVersion()
				}
			}
		case len(found) == 1:
			product, version = found[0].GetProduct(), found[0].GetVersion()
		case len(found) == 0:
			return fmt.Errorf("--product: driver %s found no product on host %s; name it, e.g. --product lync:2015", drv.Name(), cfg.Host)
		default:
			return fmt.Errorf("--product: host %s runs %s; name the one to inspect", cfg.Host, strings.Join(names, " and "))
		}
	}
	host := strings.ToLower(strings.TrimSpace(cfg.Host))
	st, err := backend.Read(ctx, &pb.HostConfig{Host: host, Deployment: o.Deployment, Product: product, ProductVersion: version})
	if err != nil {
		return fmt.Errorf("read the configuration of host %s: %w", host, err)
	}
	ins := Build(host, o.Deployment, product, version, st)
	if o.Output == "json" {
		return ins.WriteJSON(w)
	}
	ins.WriteTable(w)
	return nil
}

// checkSimStores refuses to inspect a simulated host whose stores do not
// exist: the sim would create a new host (it models installing the
// product), which is not what an inspection of a host may do, and a
// mistyped directory would print an empty configuration.
func checkSimStores(cfg app.Config, deployment string) error {
	if deployment == "" {
		return errors.New("--deployment is required with the sim driver: it keeps one store per deployment under --sim-dir, e.g. --deployment pool01")
	}
	if cfg.StateDir == "" {
		return errors.New("--state-dir is required")
	}
	hostStore := filepath.Join(cfg.StateDir, "sim", "sim-host.json")
	if _, err := os.Stat(hostStore); err != nil {
		return fmt.Errorf("host %s has no simulated host store (%s): is --state-dir the one its agent runs with? %w", cfg.Host, hostStore, err)
	}
	shared := cfg.SimDir
	if shared == "" {
		shared = filepath.Join(cfg.StateDir, "sim-shared")
	}
	store := filepath.Join(shared, deployment, "store.json")
	if _, err := os.Stat(store); err != nil {
		return fmt.Errorf("deployment %s has no simulated store (%s): is --sim-dir the one its hosts share? %w", deployment, store, err)
	}
	return nil
}

// Inspection is a host's configuration as its product's Get- cmdlets
// show it, one Section per cmdlet.
type Inspection struct {
	Host       string    `json:"host"`
	Deployment string    `json:"deployment,omitempty"`
	Product    string    `json:"product"`
	Version    string    `json:"version,omitempty"`
	Sections   []Section `json:"sections"`
}

// Section is one cmdlet's output: the objects it returns.
type Section struct {
	// Command is the cmdlet line as an administrator types it.
	Command string   `json:"command"`
	Objects []Object `json:"objects"`
}

// Object is one returned object: its properties in the order the cmdlet's
// Format-List shows them.
type Object []Property

// Property is one property of an Object. Value is a string, a bool, a
// []string or a time.Time.
type Property struct {
	Name  string
	Value any
}

// MarshalJSON writes the properties as one JSON object, in order.
func (o Object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, p := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(p.Name)
		if err != nil {
			return nil, err
		}
		v := p.Value
		if t, ok := v.(time.Time); ok {
			v = formatTime(t)
		}
		if s, ok := v.([]string); ok && s == nil {
			v = []string{}
		}
		val, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(val)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// WriteJSON writes the inspection as indented JSON.
func (ins *Inspection) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(ins, "", "  ")
	if err != nil {
		return fmt.Errorf("encode the inspection of host %s: %w", ins.Host, err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// WriteTable writes each section as PowerShell's Format-List shows it.
func (ins *Inspection) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "# host %s, deployment %s, %s %s\n\n", ins.Host, orDash(ins.Deployment), ins.Product, ins.Version)
	for _, s := range ins.Sections {
		fmt.Fprintf(w, "PS> %s\n\n", s.Command)
		if len(s.Objects) == 0 {
			fmt.Fprint(w, "(nothing)\n\n")
			continue
		}
		for _, o := range s.Objects {
			width := 0
			for _, p := range o {
				width = max(width, len(p.Name))
			}
			for _, p := range o {
				fmt.Fprintf(w, "%-*s : %s\n", width, p.Name, show(p.Value))
			}
			fmt.Fprintln(w)
		}
	}
}

// show renders a value as PowerShell's formatter does: True/False,
// collections in braces.
func show(v any) string {
	switch x := v.(type) {
	case bool:
		if x {
			return "True"
		}
		return "False"
	case []string:
		return "{" + strings.Join(x, ", ") + "}"
	case time.Time:
		return formatTime(x)
	case string:
		return x
	}
	return fmt.Sprint(v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
