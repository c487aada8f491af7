package sim

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/s2strust/s2strust/internal/atomicfile"
	"github.com/s2strust/s2strust/internal/certs"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// hostFile is the host-local store in the state directory.
const hostFile = "sim-host.json"

// keysDir holds the private keys of the host's certificates, one PKCS#8 PEM
// file per thumbprint, readable by the owner only.
const keysDir = "keys"

// Friendly names of the certificates in a host's store.
const (
	friendlyDefault      = "Default"
	friendlyExchangeAuth = "Microsoft Exchange Server Auth Certificate"
	friendlySharePoint   = "SharePoint Security Token Service"
	friendlyIssuer       = "OAuthTokenIssuer"
)

// hostState is one host's own files: its certificate store and what it
// last applied.
type hostState struct {
	Host string
	// Deployment and Product are what the host last applied, so that
	// SigningCertificates knows which deployment store to read.
	Deployment string `json:",omitempty"`
	Product    string `json:",omitempty"`
	// Realm, ServiceName, Endpoint and MetadataURL are the OAuth identity
	// the host last applied, for the documents and probes it serves.
	Realm       string `json:",omitempty"`
	ServiceName string `json:",omitempty"`
	Endpoint    string `json:",omitempty"`
	MetadataURL string `json:",omitempty"`
	// DefaultSIPDomain is the topology's default SIP domain as last
	// applied: a Lync pool's realm when its OAuth configuration sets none.
	DefaultSIPDomain string `json:",omitempty"`
	// IISResets counts the IIS resets run on this (Exchange) host.
	IISResets int `json:",omitempty"`
	// IISIssuer is the organization's current auth certificate when this
	// (Exchange) host's IIS app pools last started: they sign with it
	// until the next IIS reset, even after Set-AuthConfig
	// -PublishCertificate makes another one current. On a SharePoint host
	// it is the farm's STS signing certificate when its IIS app pools and
	// Timer Service last started: they sign with it until both restart,
	// even after -ImportSigningCertificate.
	IISIssuer string `json:",omitempty"`
	// TimerRestarts counts the SharePoint Timer Service restarts.
	TimerRestarts int `json:",omitempty"`
	// DefaultThumbprint is the host's own default certificate: Lync's
	// Default, Exchange's Auth Certificate, SharePoint's STS certificate.
	DefaultThumbprint string
	// IssuerSecret is the last PFX secret imported as the token issuer and
	// IssuerSecretThumbprint its certificate, so that Verify (which gets no
	// secrets) knows which certificate the secret stands for.
	IssuerSecret           string `json:",omitempty"`
	IssuerSecretThumbprint string `json:",omitempty"`
	// HeldIssuers are the deployment default issuer certificates this host
	// has held (published as the primary, or installed from the deployment
	// store), so that Verify tells one removed since from one this host has
	// yet to install.
	HeldIssuers []string `json:",omitempty"`
	// Certificates is the host's certificate store, sorted by thumbprint.
	Certificates []*localCertificate
}

// localCertificate is one certificate in a host's store. Its private key,
// when present, is in <StateDir>/keys/<Thumbprint>.key.
type localCertificate struct {
	Thumbprint    string
	FriendlyName  string
	Certificate   []byte
	HasPrivateKey bool
}

func (h *hostState) find(thumbprint string) *localCertificate {
	for _, c := range h.Certificates {
		if c.Thumbprint == thumbprint {
			return c
		}
	}
	return nil
}

func (h *hostState) encode() ([]byte, error) {
	data, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode host store of %s: %w", h.Host, err)
	}
	return append(data, '\n'), nil
}

func (h *hostState) clone() *hostState {
	c := *h
	c.HeldIssuers = slices.Clone(h.HeldIssuers)
	c.Certificates = make([]*localCertificate, len(h.Certificates))
	for i, lc := range h.Certificates {
		x := *lc
		c.Certificates[i] = &x
	}
	return &c
}

// loadHost reads the host store; a missing one gives nil.
func loadHost(stateDir string) (*hostState, []byte, error) {
	path := filepath.Join(stateDir, hostFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read host store: %w", err)
	}
	h := new(hostState)
	if err := json.Unmarshal(data, h); err != nil {
		return nil, nil, fmt.Errorf("read host store %s: %w", path, err)
	}
	return h, data, nil
}

// saveHost writes the host store atomically when it changed.
func (s *Sim) saveHost(h *hostState) error {
	data, err := h.encode()
	if err != nil {
		return err
	}
	if string(data) == string(s.hostData) {
		s.host = h
		s.snap.Store(h)
		return nil
	}
	if err := atomicfile.Write(filepath.Join(s.cfg.StateDir, hostFile), data, 0o600); err != nil {
		return fmt.Errorf("write host store of %s: %w", s.cfg.Host, err)
	}
	s.host, s.hostData = h, data
	s.snap.Store(h)
	return nil
}

func (s *Sim) keyPath(thumbprint string) string {
	return filepath.Join(s.cfg.StateDir, keysDir, thumbprint+".key")
}

// encodeKey is the PKCS#8 PEM form of a private key.
func encodeKey(key crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// decodeKey parses a PKCS#8 PEM private key. Its errors never quote the key.
func decodeKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PKCS#8 PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("not a valid PKCS#8 private key")
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
	return signer, nil
}

// keyPEM reads the stored private key of a local certificate.
func (s *Sim) keyPEM(thumbprint string) ([]byte, error) {
	data, err := os.ReadFile(s.keyPath(thumbprint))
	if err != nil {
		return nil, fmt.Errorf("read private key of certificate %s on host %s: %w", thumbprint, s.cfg.Host, err)
	}
	return data, nil
}

// loadSigner reads and parses the private key of a local certificate.
func (s *Sim) loadSigner(thumbprint string) (crypto.Signer, error) {
	data, err := s.keyPEM(thumbprint)
	if err != nil {
		return nil, err
	}
	k, err := decodeKey(data)
	if err != nil {
		return nil, fmt.Errorf("read private key of certificate %s on host %s: %w", thumbprint, s.cfg.Host, err)
	}
	return k, nil
}

// install puts a certificate and its private key (PEM) into h, writing the
// key file first so that the host store never names a missing key. It
// reports whether anything changed. h is a working copy: the caller saves it.
func (s *Sim) install(h *hostState, cert *x509.Certificate, keyPEM []byte, friendly string) (bool, error) {
	t := certs.Thumbprint(cert)
	lc := h.find(t)
	if lc != nil && lc.HasPrivateKey {
		if old, err := os.ReadFile(s.keyPath(t)); err == nil && string(old) == string(keyPEM) {
			return false, nil
		}
	}
	if err := atomicfile.Write(s.keyPath(t), keyPEM, 0o600); err != nil {
		return false, fmt.Errorf("store private key of certificate %s on host %s: %w", t, s.cfg.Host, err)
	}
	if lc == nil {
		lc = &localCertificate{Thumbprint: t, FriendlyName: friendly, Certificate: cert.Raw}
		h.Certificates = append(h.Certificates, lc)
		slices.SortFunc(h.Certificates, func(a, b *localCertificate) int { return strings.Compare(a.Thumbprint, b.Thumbprint) })
	}
	lc.HasPrivateKey = true
	return true, nil
}

// newDefaultCertificate generates the host's default certificate as the
// product's setup would: Lync's Default (CN = host FQDN), Exchange's
// self-signed "Microsoft Exchange Server Auth Certificate" valid five years,
// or SharePoint's STS signing certificate.
func (s *Sim) newDefaultCertificate(h *hostState) error {
	now := s.cfg.Now()
	tmpl := certs.Template{
		CommonName: s.cfg.Host,
		DNSNames:   []string{s.cfg.Host},
		NotBefore:  now.Add(-time.Hour),
		NotAfter:   now.AddDate(2, 0, 0),
		KeyBits:    2048,
	}
	friendly := friendlyDefault
	switch s.defaultProduct() {
	case pb.Product_PRODUCT_EXCHANGE:
		tmpl.CommonName, tmpl.DNSNames, tmpl.NotAfter = friendlyExchangeAuth, nil, now.AddDate(5, 0, 0)
		friendly = friendlyExchangeAuth
	case pb.Product_PRODUCT_SHAREPOINT:
		tmpl.CommonName, tmpl.DNSNames, tmpl.NotAfter = friendlySharePoint, nil, now.AddDate(10, 0, 0)
		friendly = friendlySharePoint
	}
	b, err := certs.Generate(tmpl)
	if err != nil {
		return fmt.Errorf("generate the default certificate of host %s: %w", s.cfg.Host, err)
	}
	keyPEM, err := encodeKey(b.Key)
	if err != nil {
		return fmt.Errorf("generate the default certificate of host %s: %w", s.cfg.Host, err)
	}
	if _, err := s.install(h, b.Cert, keyPEM, friendly); err != nil {
		return err
	}
	h.DefaultThumbprint = certs.Thumbprint(b.Cert)
	return nil
}
