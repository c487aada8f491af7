package metadata

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultTimeout bounds one Fetch when FetcherOptions.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// DownloadError reports that a document could not be downloaded: the URL is
// not https, the host cannot be reached or resolved, the destination is
// refused (a *DestinationError: see ForbiddenAddress), a redirect is not
// followed, TLS fails, the server answers with a status other than 200 or
// with oversize headers, or the answer does not arrive in time.
// It is the first half of the products' "could not be downloaded ... or ... is
// not a valid metadata document" error.
type DownloadError struct {
	// URL is the metadata URL as given.
	URL string
	// Cause is what went wrong.
	Cause error
}

// Error says what could not be downloaded from where, and why.
func (e *DownloadError) Error() string {
	return fmt.Sprintf("the metadata document could not be downloaded from %s: %v", e.URL, e.Cause)
}

// Unwrap returns the cause, so errors.Is and errors.As see network errors.
func (e *DownloadError) Unwrap() error { return e.Cause }

// InvalidError reports that a URL answered, but not with a valid metadata
// document for the partner expected there.
type InvalidError struct {
	// URL is the metadata URL as given; empty when the document was not
	// downloaded (Validate, Parse).
	URL string
	// Field names the document's field at fault ("serviceName", "realm",
	// "issuer", "keys", "keys[0].keyvalue", "keys[0].keyinfo.x5t"), or is
	// empty when the answer as a whole is at fault (not JSON, too large).
	Field string
	// Reason says why the answer is not a valid document; it names the
	// field and the values at fault.
	Reason string
}

// Error says which URL did not serve a valid document, and why; without a
// URL, only why.
func (e *InvalidError) Error() string {
	if e.URL == "" {
		return e.Reason
	}
	return fmt.Sprintf("%s is not a valid metadata document: %s", e.URL, e.Reason)
}

// FetcherOptions configures a Fetcher. The zero value verifies against the
// system roots, dials the URL's own host, and applies DefaultTimeout,
// MaxSize and MaxHeaderBytes.
type FetcherOptions struct {
	// RootCAs verifies the server's certificate; nil means the system roots.
	RootCAs *x509.CertPool
	// Resolve redirects dialing, like curl --resolve: a key "host:port"
	// matches that host and port exactly, a key "host" matches any port, and
	// the value is the "ip:port" to dial instead. Keys are case-insensitive;
	// the exact form wins. TLS still verifies the URL's hostname. A mapping
	// is the one exemption from the destination rules (see
	// ForbiddenAddress and AllowedNetworks): the operator typed it.
	Resolve map[string]string
	// AllowedNetworks, when not empty, narrows where a name may lead: an
	// address dialed after resolution must be in one of them (and still not
	// be a forbidden address).
	AllowedNetworks []netip.Prefix
	// Timeout bounds a whole Fetch, body included; zero means DefaultTimeout.
	Timeout time.Duration
	// MaxSize is the largest body accepted, in bytes; zero means MaxSize.
	MaxSize int64
}

// MaxHeaderBytes bounds the response headers a Fetcher reads. IIS answers a
// metadata request with well under 4 KiB of headers.
const MaxHeaderBytes = 64 << 10

// maxRedirects bounds the same-host https redirects a Fetch follows.
const maxRedirects = 5

// ParseResolve parses flag values of the form "host=ip:port" or
// "host:port=ip:port" into a FetcherOptions.Resolve map.
func ParseResolve(specs []string) (map[string]string, error) {
	m := make(map[string]string, len(specs))
	for _, spec := range specs {
		key, to, ok := strings.Cut(strings.TrimSpace(spec), "=")
		if !ok {
			return nil, fmt.Errorf("resolve %q: want host=ip:port or host:port=ip:port", spec)
		}
		key, err := resolveKey(strings.TrimSpace(key))
		if err != nil {
			return nil, fmt.Errorf("resolve %q: %w", spec, err)
		}
		to = strings.TrimSpace(to)
		h, p, err := net.SplitHostPort(to)
		if err != nil {
			return nil, fmt.Errorf("resolve %q: address %q is not ip:port: %w", spec, to, err)
		}
		if h == "" {
			return nil, fmt.Errorf("resolve %q: address %q has no host", spec, to)
		}
		if err := checkPort(p); err != nil {
			return nil, fmt.Errorf("resolve %q: address %q: %w", spec, to, err)
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("resolve %q: %s is given more than once", spec, key)
		}
		m[key] = to
	}
	return m, nil
}

// resolveKey normalizes a Resolve key: a lower-case host, or host:port.
func resolveKey(key string) (string, error) {
	if key == "" {
		return "", errors.New("empty host")
	}
	if h, p, err := net.SplitHostPort(key); err == nil {
		if h == "" {
			return "", errors.New("empty host")
		}
		if err := checkPort(p); err != nil {
			return "", err
		}
		return net.JoinHostPort(strings.ToLower(h), p), nil
	}
	return strings.ToLower(strings.Trim(key, "[]")), nil
}

// checkPort accepts a decimal TCP port number.
func checkPort(p string) error {
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", p)
	}
	return nil
}

// Fetcher downloads and validates metadata documents. It is safe for
// concurrent use. It keeps no idle connections: a host fetches each
// partner's document rarely, and a fresh connection each time both tests
// reachability as the product would see it and leaves no goroutines behind.
type Fetcher struct {
	client  *http.Client
	timeout time.Duration
	maxSize int64
	resolve map[string]string
	allowed []netip.Prefix
}

// NewFetcher returns a Fetcher configured by o. Resolve keys that do not
// parse as ParseResolve would accept them are used lower-cased as given.
func NewFetcher(o FetcherOptions) *Fetcher {
	f := &Fetcher{timeout: o.Timeout, maxSize: o.MaxSize, resolve: map[string]string{}, allowed: slices.Clone(o.AllowedNetworks)}
	if f.timeout <= 0 {
		f.timeout = DefaultTimeout
	}
	if f.maxSize <= 0 {
		f.maxSize = MaxSize
	}
	for k, v := range o.Resolve {
		nk, err := resolveKey(k)
		if err != nil {
			nk = strings.ToLower(k)
		}
		f.resolve[nk] = v
	}
	transport := &http.Transport{
		Proxy:                  nil, // metadata is fetched directly, as the products do
		DialContext:            f.DialContext,
		TLSClientConfig:        &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:      true,
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: MaxHeaderBytes,
	}
	f.client = &http.Client{Transport: transport, CheckRedirect: checkRedirect}
	return f
}

// checkRedirect follows a redirect only to https on the same host and
// port: a partner's metadata URL names the server that answers for it, and
// a redirect elsewhere (another host, plain http) is either a mistake to
// fix in the URL or an attempt to make the agent fetch what it should not.
func checkRedirect(req *http.Request, via []*http.Request) error {
	from := via[0].URL
	switch {
	case req.URL.Scheme != "https":
		return fmt.Errorf("redirect to %s not followed: it is not an https URL", req.URL.Redacted())
	case !strings.EqualFold(req.URL.Host, from.Host):
		return fmt.Errorf("redirect to %s not followed: it leaves host %s", req.URL.Redacted(), from.Host)
	case len(via) > maxRedirects:
		return fmt.Errorf("redirect to %s not followed: stopped after %d redirects", req.URL.Redacted(), maxRedirects)
	}
	return nil
}

// DialContext dials addr ("host:port") from this Fetcher's vantage point:
// where its Resolve mappings send the name, as DNS otherwise. A dial through
// DNS (or to an IP literal) is refused, with a *DestinationError naming the
// name and the address, when the address is forbidden (see
// ForbiddenAddress) or outside FetcherOptions.AllowedNetworks; the check
// runs on each address after resolution, so a name cannot be made to lead
// there. Other clients of the same host (the sim's trust probes) dial
// through it too.
func (f *Fetcher) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	to, ok := f.lookup(addr)
	if !ok {
		d := net.Dialer{Control: guardedControl(f.allowed, allowedFrom(ctx))}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, nameDestination(addr, err)
		}
		return c, nil
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, to)
	if err != nil {
		return nil, fmt.Errorf("%s resolved to %s: %w", addr, to, err)
	}
	return c, nil
}

// Mapping reports where an explicit Resolve mapping sends addr
// ("host:port"), if one does.
func (f *Fetcher) Mapping(addr string) (string, bool) { return f.lookup(addr) }

// lookup finds where Resolve sends addr ("host:port"): the exact entry
// first, then the host's.
func (f *Fetcher) lookup(addr string) (string, bool) {
	if len(f.resolve) == 0 {
		return "", false
	}
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", false
	}
	h = strings.ToLower(h)
	if to, ok := f.resolve[net.JoinHostPort(h, p)]; ok {
		return to, true
	}
	to, ok := f.resolve[h]
	return to, ok
}

// Fetch downloads the document at rawURL over https, verifying the server
// against the configured roots under the URL's hostname, and validates it as
// the document of partner wantServiceName in realm wantRealm ("" for any
// realm: see Validate). It returns the document and its signing
// certificates. Every failure is a *DownloadError (nothing usable arrived)
// or an *InvalidError (something arrived, and is not a valid document).
func (f *Fetcher) Fetch(ctx context.Context, rawURL, wantServiceName, wantRealm string) (*Document, []*x509.Certificate, error) {
	in, err := f.Inspect(ctx, rawURL, wantServiceName, wantRealm)
	if err != nil {
		return nil, nil, err
	}
	return in.Document, in.Signing, nil
}

// Inspection is what one Inspect saw on the way to a document, for an
// operator diagnosing a partner's metadata URL. Fields stay zero for the
// steps not reached.
type Inspection struct {
	// RemoteAddr is the address last connected to.
	RemoteAddr string
	// Chain is the certificate chain the server presented, leaf first,
	// whether or not it verified.
	Chain []*x509.Certificate
	// TLSVersion is the negotiated TLS version (tls.VersionName).
	TLSVersion string
	// Status is the HTTP status line of the final answer ("200 OK").
	Status string
	// StatusCode is its code.
	StatusCode int
	// ContentType is its Content-Type header.
	ContentType string
	// Size is the number of body bytes read.
	Size int
	// Document is the parsed document, when the body parsed (even if it
	// then did not validate).
	Document *Document
	// Signing are its signing certificates, when it validated.
	Signing []*x509.Certificate
}

// Inspect is Fetch, returning what it saw on the way as well: the same
// checks, the same errors, and on error an Inspection of the steps reached.
func (f *Fetcher) Inspect(ctx context.Context, rawURL, wantServiceName, wantRealm string) (*Inspection, error) {
	in := &Inspection{}
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return in, &DownloadError{URL: rawURL, Cause: errors.New("not an https URL")}
	}
	body, err := f.get(ctx, u, in)
	if err != nil {
		var inv *InvalidError
		if errors.As(err, &inv) {
			inv.URL = rawURL
			return in, inv
		}
		return in, &DownloadError{URL: rawURL, Cause: err}
	}
	d, err := decode(body)
	if err != nil {
		return in, &InvalidError{URL: rawURL, Reason: err.Error()}
	}
	in.Document = d
	certs, err := Validate(d, wantServiceName, wantRealm)
	if err != nil {
		var inv *InvalidError
		if errors.As(err, &inv) {
			inv.URL = rawURL
			return in, inv
		}
		return in, &InvalidError{URL: rawURL, Reason: err.Error()}
	}
	in.Signing = certs
	return in, nil
}

// get returns the body of a 200 answer for u, at most f.maxSize bytes,
// noting in `in` what it saw. An oversize body is an *InvalidError;
// anything else a plain error.
func (f *Fetcher) get(ctx context.Context, u *url.URL, in *Inspection) ([]byte, error) {
	tctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	trace := &httptrace.ClientTrace{
		// ConnectDone reports the dialer's own connection, before TLS, so a
		// failed handshake still shows where it went.
		ConnectDone: func(_, addr string, err error) {
			if err == nil {
				in.RemoteAddr = addr
			}
		},
		GotConn: func(info httptrace.GotConnInfo) {
			in.RemoteAddr = info.Conn.RemoteAddr().String()
		},
		TLSHandshakeDone: func(cs tls.ConnectionState, _ error) {
			if len(cs.PeerCertificates) > 0 {
				in.Chain = cs.PeerCertificates
				in.TLSVersion = tls.VersionName(cs.Version)
			}
		},
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(tctx, trace), http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) && len(in.Chain) == 0 {
			in.Chain = cve.UnverifiedCertificates
		}
		return nil, f.cause(ctx, err)
	}
	defer resp.Body.Close()
	in.Status, in.StatusCode, in.ContentType = resp.Status, resp.StatusCode, resp.Header.Get("Content-Type")
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		in.Chain = resp.TLS.PeerCertificates
		in.TLSVersion = tls.VersionName(resp.TLS.Version)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	if resp.ContentLength > f.maxSize {
		return nil, &InvalidError{Reason: fmt.Sprintf("document is %d bytes, over the %d-byte limit", resp.ContentLength, f.maxSize)}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, f.maxSize+1))
	in.Size = len(body)
	if err != nil {
		return nil, fmt.Errorf("read the document: %w", f.cause(ctx, err))
	}
	if int64(len(body)) > f.maxSize {
		return nil, &InvalidError{Reason: fmt.Sprintf("document is over the %d-byte limit", f.maxSize)}
	}
	return body, nil
}

// cause strips the *url.Error wrapper (whose text repeats the URL) and says
// so when our own timeout, not the caller's context, ended the request.
func (f *Fetcher) cause(parent context.Context, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, context.DeadlineExceeded) && parent.Err() == nil {
		return fmt.Errorf("no answer within %s: %w", f.timeout, err)
	}
	return err
}
