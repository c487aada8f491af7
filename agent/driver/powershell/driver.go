package powershell

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/atomicfile"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Config configures the PowerShell driver.
type Config struct {
	// Host is this server's FQDN (the Exchange remote session connects to it).
	Host string
	// Executable is powershell.exe, or the path --powershell names.
	Executable string
	// StateDir is the driver's directory (<state-dir>/powershell): the
	// scripts and, for the moment of an import, key files.
	StateDir string
	// CallTimeout, StartTimeout and MaxResponse bound every worker.
	CallTimeout  time.Duration
	StartTimeout time.Duration
	MaxResponse  int
	// Now is the clock; time.Now by default.
	Now    func() time.Time
	Logger *slog.Logger
}

// Driver is the PowerShell driver: a reconcile.Backend over one worker per
// product shell, and a driver.Driver through the shared reconciler.
type Driver struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	workers map[string]*Worker
}

var _ reconcile.Backend = (*Driver)(nil)

// New checks the executable, writes the scripts and returns the driver.
// Workers start on first use.
func New(cfg Config) (*Driver, error) {
	if cfg.Executable == "" {
		cfg.Executable = "powershell.exe"
	}
	if _, err := exec.LookPath(cfg.Executable); err != nil {
		return nil, fmt.Errorf("--powershell %q: %w", cfg.Executable, err)
	}
	if cfg.StateDir == "" {
		return nil, errors.New("powershell driver: no state directory")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := writeScripts(filepath.Join(cfg.StateDir, "scripts")); err != nil {
		return nil, err
	}
	removeStaleKeyFiles(filepath.Join(cfg.StateDir, "keys"))
	return &Driver{cfg: cfg, log: cfg.Logger.With("driver", "powershell"), workers: map[string]*Worker{}}, nil
}

// Name is "powershell".
func (d *Driver) Name() string { return "powershell" }

// Close stops every worker.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, w := range d.workers {
		w.Close()
	}
	d.workers = map[string]*Worker{}
	return nil
}

// worker returns the product's worker, created on first use.
func (d *Driver) worker(product string) *Worker {
	d.mu.Lock()
	defer d.mu.Unlock()
	if w, ok := d.workers[product]; ok {
		return w
	}
	var init any
	if product == ProductExchange {
		// The remote session's ConnectionUri names this server: data in
		// the init request, never on the command line.
		init = map[string]string{"fqdn": d.cfg.Host}
	}
	w := NewWorker(WorkerConfig{
		Product: product, Executable: d.cfg.Executable, Script: filepath.Join(d.cfg.StateDir, "scripts", scriptOf[product]),
		BeforeStart: func() error { return writeScripts(filepath.Join(d.cfg.StateDir, "scripts")) },
		Init:        init, CallTimeout: d.cfg.CallTimeout, StartTimeout: d.cfg.StartTimeout, MaxResponse: d.cfg.MaxResponse, Logger: d.log,
	})
	d.workers[product] = w
	return w
}

// Detect lists the products installed on the host, through the detection
// script (which loads none of them).
func (d *Driver) Detect(ctx context.Context) ([]*pb.DetectedProduct, error) {
	var r detectResult
	w := d.worker(productDetect)
	err := w.Call(ctx, "detect", nil, &r)
	// Detection runs once per connection: no process is kept for it.
	d.mu.Lock()
	delete(d.workers, productDetect)
	d.mu.Unlock()
	w.Close()
	if err != nil {
		return nil, err
	}
	var out []*pb.DetectedProduct
	for _, p := range r.Products {
		prod, ok := products.Parse(p.Product)
		if !ok {
			continue
		}
		v, err := productVersion(prod, p.Version, r.ProductNames)
		if err != nil {
			return nil, fmt.Errorf("detect %s on host %s (%s): %w", products.DisplayName(prod), d.cfg.Host, p.Source, err)
		}
		out = append(out, &pb.DetectedProduct{Product: prod, Version: v})
	}
	return out, nil
}

// Apply makes the host match cfg through the shared reconciler.
func (d *Driver) Apply(ctx context.Context, cfg *pb.HostConfig, secrets []*pb.SecretMaterial) []*pb.ItemError {
	return reconcile.Apply(ctx, d, cfg, secrets, d.cfg.Now(), false).Errors
}

// Verify compares the host with cfg through the shared reconciler.
func (d *Driver) Verify(ctx context.Context, cfg *pb.HostConfig) (*pb.StatusReport, error) {
	return reconcile.Verify(ctx, d, cfg, d.cfg.Now())
}

// productShell is the worker of a configuration's product.
func productShell(p pb.Product) (string, error) {
	switch p {
	case pb.Product_PRODUCT_LYNC:
		return ProductLync, nil
	case pb.Product_PRODUCT_EXCHANGE:
		return ProductExchange, nil
	case pb.Product_PRODUCT_SHAREPOINT:
		return ProductSharePoint, nil
	}
	return "", fmt.Errorf("product %s has no PowerShell shell", p)
}

// hostFacts is every script's init result.
type hostFacts struct {
	OSVersion     string   `json:"osVersion"`
	PSVersion     string   `json:"psVersion"`
	ComputerName  string   `json:"computerName"`
	ProductNames  []string `json:"productNames"`
	Module        string   `json:"module"`
	ModuleVersion string   `json:"moduleVersion"`
	ExchangeBuild string   `json:"exchangeBuild"`
	Shell         string   `json:"shell"`
	FarmBuild     string   `json:"farmBuild"`
}

type detectResult struct {
	Products []struct {
		Product, Source, Version string
	} `json:"products"`
	ProductNames []string `json:"productNames"`
}

// notInstalled are the error ids with which a script says its product's
// shell is not on this host.
var notInstalled = []string{"S2SModuleNotInstalled", "S2SExchangeNotInstalled"}

// start starts cfg's product worker and checks the product version the
// host runs against the topology's. Either failure is the "product" item's.
func (d *Driver) start(ctx context.Context, cfg *pb.HostConfig) (*Worker, *hostFacts, error) {
	shell, err := productShell(cfg.GetProduct())
	if err != nil {
		return nil, nil, &reconcile.ProductError{Err: fmt.Errorf("host %s: %w", cfg.GetHost(), err)}
	}
	w := d.worker(shell)
	var f hostFacts
	if err := w.Hello(ctx, &f); err != nil {
		var e *Error
		if errors.As(err, &e) && e.Record != nil && slices.Contains(notInstalled, e.Record.FullyQualifiedErrorID) {
			return nil, nil, &reconcile.ProductError{Err: fmt.Errorf("host %s: %s is not installed: %w", cfg.GetHost(), products.DisplayName(cfg.GetProduct()), err)}
		}
		return nil, nil, err
	}
	raw := map[pb.Product]string{pb.Product_PRODUCT_LYNC: f.ModuleVersion, pb.Product_PRODUCT_EXCHANGE: f.ExchangeBuild, pb.Product_PRODUCT_SHAREPOINT: f.FarmBuild}[cfg.GetProduct()]
	v, err := productVersion(cfg.GetProduct(), raw, f.ProductNames)
	if err != nil {
		return nil, nil, &reconcile.ProductError{Err: fmt.Errorf("host %s: %w", cfg.GetHost(), err)}
	}
	if want := products.NormalizeVersion(cfg.GetProductVersion()); want != "" && v != want {
		return nil, nil, &reconcile.ProductError{Err: fmt.Errorf("host %s runs %s %s (build %s), but the topology declares version %s for deployment %s",
			cfg.GetHost(), products.DisplayName(cfg.GetProduct()), v, raw, cfg.GetProductVersion(), cfg.GetDeployment())}
	}
	return w, &f, nil
}

// Read reads the host's actual state through its product's worker.
func (d *Driver) Read(ctx context.Context, cfg *pb.HostConfig) (*reconcile.State, error) {
	w, f, err := d.start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	v, _ := productVersion(cfg.GetProduct(), map[pb.Product]string{pb.Product_PRODUCT_LYNC: f.ModuleVersion, pb.Product_PRODUCT_EXCHANGE: f.ExchangeBuild, pb.Product_PRODUCT_SHAREPOINT: f.FarmBuild}[cfg.GetProduct()], f.ProductNames)
	st := &reconcile.State{Product: cfg.GetProduct(), Version: v, ImportedSecrets: d.importedSecrets()}
	switch cfg.GetProduct() {
	case pb.Product_PRODUCT_LYNC:
		err = readLync(ctx, w, cfg, st, d.cfg.Now())
		cache := d.lyncCache()
		for i := range st.Partners {
			if c, ok := cache[strings.ToLower(st.Partners[i].Name)]; ok && strings.EqualFold(c.URL, st.Partners[i].MetadataURL) {
				st.Partners[i].CachedThumbprints = c.Thumbprints
			}
		}
	case pb.Product_PRODUCT_EXCHANGE:
		err = readExchange(ctx, w, st)
		if err == nil {
			st.IISIssuer = d.iisIssuer(st.Issuer.Current)
		}
	case pb.Product_PRODUCT_SHAREPOINT:
		err = readSharePoint(ctx, w, cfg, st)
		if err == nil {
			st.IISIssuer = d.iisIssuer(st.Issuer.Current)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read the %s configuration on host %s: %w", products.DisplayName(cfg.GetProduct()), cfg.GetHost(), err)
	}
	slices.SortFunc(st.Partners, func(a, b reconcile.Partner) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return st, nil
}

// secretBundle decodes the PFX an import op names.
func secretBundle(op reconcile.Op, secrets []*pb.SecretMaterial) (*certs.Bundle, error) {
	i := slices.IndexFunc(secrets, func(m *pb.SecretMaterial) bool { return m.GetName() == op.Secret })
	if i < 0 {
		return nil, fmt.Errorf("secret %s was not delivered to this host", op.Secret)
	}
	// certs.LoadPFX never puts the password into its errors.
	b, err := certs.LoadPFX(secrets[i].GetPfx(), secrets[i].GetPassword())
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", op.Secret, err)
	}
	return b, nil
}

// withKeyFile writes the op's secret as a one-time key file the host's
// Windows can import, runs fn with it, and removes it whatever happened.
func (d *Driver) withKeyFile(op reconcile.Op, secrets []*pb.SecretMaterial, osVersion string, fn func(*keyFile) error) error {
	b, err := secretBundle(op, secrets)
	if err != nil {
		return err
	}
	kf, err := writeKeyFile(filepath.Join(d.cfg.StateDir, "keys"), b, osVersion)
	if err != nil {
		return fmt.Errorf("secret %s: %w", op.Secret, err)
	}
	defer func() {
		if err := kf.Remove(); err != nil {
			d.log.Warn("key file left behind", "err", err)
		}
	}()
	return fn(kf)
}

// Execute runs one operation of the shared reconciler's plan.
func (d *Driver) Execute(ctx context.Context, cfg *pb.HostConfig, op reconcile.Op, secrets []*pb.SecretMaterial) error {
	w, f, err := d.start(ctx, cfg)
	if err != nil {
		return err
	}
	call, err := translate(cfg, op)
	if err != nil {
		return fmt.Errorf("%s on host %s: %w", op.Cmdlet, cfg.GetHost(), err)
	}
	run := func() error {
		if err := w.Call(ctx, call.op, call.args, nil); err != nil {
			return fmt.Errorf("host %s: %w", cfg.GetHost(), err)
		}
		return nil
	}
	if cfg.GetProduct() == pb.Product_PRODUCT_LYNC && lyncDownloads(op) {
		if err := run(); err != nil {
			return err
		}
		return d.rememberLyncCache(ctx, w, op)
	}
	if call.keyFile {
		var thumbprint string
		err := d.withKeyFile(op, secrets, f.OSVersion, func(kf *keyFile) error {
			call.args["pfxPath"] = kf.Path
			call.args["pfxPassword"] = kf.Password
			thumbprint = kf.Thumbprint
			return run()
		})
		if err != nil {
			return err
		}
		return d.rememberImport(op.Secret, thumbprint)
	}
	if op.Kind == reconcile.KindResetIIS && cfg.GetProduct() == pb.Product_PRODUCT_EXCHANGE {
		if err := run(); err != nil {
			return err
		}
		// The app pools start again with the organization's current auth
		// certificate.
		var ac authConfig
		if err := w.Call(ctx, "get-auth-config", nil, &ac); err != nil {
			return fmt.Errorf("host %s: after the IIS reset: %w", cfg.GetHost(), err)
		}
		return d.rememberIISIssuer(normThumb(ac.CurrentCertificateThumbprint))
	}
	if op.Kind == reconcile.KindRestartTimer && cfg.GetProduct() == pb.Product_PRODUCT_SHAREPOINT {
		if err := run(); err != nil {
			return err
		}
		// IIS was reset just before (reconcile.KindResetIIS): the app
		// pools and the Timer Service now sign with the farm's current
		// STS certificate.
		st := &reconcile.State{}
		if err := readSharePoint(ctx, w, cfg, st); err != nil {
			return fmt.Errorf("host %s: after restarting the SharePoint Timer Service: %w", cfg.GetHost(), err)
		}
		return d.rememberIISIssuer(st.Issuer.Current)
	}
	return run()
}

// iisIssuerFile remembers, on an Exchange server, the organization's
// current auth certificate when this agent last reset IIS (or first read
// the server): the certificate its app pools sign with
// (reconcile.State.IISIssuer). Exchange shows no such thing itself. On a
// SharePoint server it is the farm's STS signing certificate when this
// agent last restarted IIS and the Timer Service (or first read it).
func (d *Driver) iisIssuerFile() string { return filepath.Join(d.cfg.StateDir, "iis-issuer.json") }

// iisIssuer is the remembered certificate; on the first read it is the
// current one, as the app pools started with it.
func (d *Driver) iisIssuer(current string) string {
	var v struct{ Thumbprint string }
	if b, err := os.ReadFile(d.iisIssuerFile()); err == nil && json.Unmarshal(b, &v) == nil && v.Thumbprint != "" {
		return v.Thumbprint
	}
	if current != "" {
		if err := d.rememberIISIssuer(current); err != nil {
			d.log.Warn("cannot remember the auth certificate IIS started with", "err", err)
		}
	}
	return current
}

func (d *Driver) rememberIISIssuer(t string) error {
	b, _ := json.Marshal(struct{ Thumbprint string }{t})
	if err := atomicfile.Write(d.iisIssuerFile(), b, 0o600); err != nil {
		return fmt.Errorf("remember the auth certificate IIS started with: %w", err)
	}
	return nil
}

// importedFile remembers which certificate each imported secret held
// (reconcile.State.ImportedSecrets), for hosts whose configuration does
// not carry the controller's recorded thumbprint.
func (d *Driver) importedFile() string { return filepath.Join(d.cfg.StateDir, "imported-secrets.json") }

func (d *Driver) importedSecrets() map[string]string {
	b, err := os.ReadFile(d.importedFile())
	if err != nil {
		return nil
	}
	var m map[string]string
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return m
}

func (d *Driver) rememberImport(secret, thumbprint string) error {
	m := d.importedSecrets()
	if m == nil {
		m = map[string]string{}
	}
	m[secret] = thumbprint
	b, _ := json.Marshal(m)
	if err := atomicfile.Write(d.importedFile(), b, 0o600); err != nil {
		return fmt.Errorf("remember the import of secret %s: %w", secret, err)
	}
	return nil
}

// lyncDownloads says whether op has Lync download a partner's metadata:
// creating it, re-pointing it, refreshing it.
func lyncDownloads(op reconcile.Op) bool {
	return op.Kind == reconcile.KindNewPartner || op.Kind == reconcile.KindRefreshPartnerMetadata ||
		(op.Kind == reconcile.KindSetPartner && slices.Contains(op.Set, "MetadataUrl"))
}

// lyncCacheFile remembers, per Lync partner, the signing certificates its
// metadata published when Lync last downloaded it at s2strust's request:
// Get-CsPartnerApplication does not show the certificates Lync cached, so
// this is the agent's record of them (reconcile.Partner.CachedThumbprints).
func (d *Driver) lyncCacheFile() string {
	return filepath.Join(d.cfg.StateDir, "lync-partner-cache.json")
}

type lyncCached struct {
	URL         string   `json:"url"`
	Thumbprints []string `json:"thumbprints"`
}

func (d *Driver) lyncCache() map[string]lyncCached {
	b, err := os.ReadFile(d.lyncCacheFile())
	if err != nil {
		return nil
	}
	var m map[string]lyncCached
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return m
}

// rememberLyncCache downloads, from this host, the document Lync just
// downloaded for op's partner and records its signing certificates. A
// refresh that cannot read the document fails; a new or re-pointed
// partner is only not recorded.
func (d *Driver) rememberLyncCache(ctx context.Context, w *Worker, op reconcile.Op) error {
	url := op.Partner.GetMetadataUrl()
	thumbs, err := d.fetchMetadata(ctx, w, url, op.Partner.GetApplicationIdentifier(), "")
	if err != nil {
		if op.Kind == reconcile.KindRefreshPartnerMetadata {
			return fmt.Errorf("partner %s on host %s: read its metadata after the refresh: %w", op.Name, d.cfg.Host, err)
		}
		return nil
	}
	m := d.lyncCache()
	if m == nil {
		m = map[string]lyncCached{}
	}
	m[strings.ToLower(op.Name)] = lyncCached{URL: url, Thumbprints: thumbs}
	b, _ := json.Marshal(m)
	if err := atomicfile.Write(d.lyncCacheFile(), b, 0o600); err != nil {
		return fmt.Errorf("remember the metadata of partner %s: %w", op.Name, err)
	}
	return nil
}
