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
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultTimeout bounds one Fetch when FetcherOptions.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// DownloadError reports that a document could not be downloaded: the URL is
// not https, the host cannot be reached or resolved, TLS fails, the server
// answers with a status other than 200, or the answer does not arrive in time.
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
	// URL is the metadata URL as given.
	URL string
	// Reason says why the answer is not a valid document.
	Reason string
}

// Error says which URL did not serve a valid document, and why.
func (e *InvalidError) Error() string {
	return fmt.Sprintf("%s is not a valid metadata document: %s", e.URL, e.Reason)
}

// FetcherOptions configures a Fetcher. The zero value verifies against the
// system roots, dials the URL's own host, and applies DefaultTimeout and
// MaxSize.
type FetcherOptions struct {
	// RootCAs verifies the server's certificate; nil means the system roots.
	RootCAs *x509.CertPool
	// Resolve redirects dialing, like curl --resolve: a key "host:port"
	// matches that host and port exactly, a key "host" matches any port, and
	// the value is the "ip:port" to dial instead. Keys are case-insensitive;
	// the exact form wins. TLS still verifies the URL's hostname.
	Resolve map[string]string
	// Timeout bounds a whole Fetch, body included; zero means DefaultTimeout.
	Timeout time.Duration
	// MaxSize is the largest body accepted, in bytes; zero means MaxSize.
	MaxSize int64
}

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
}

// NewFetcher returns a Fetcher configured by o. Resolve keys that do not
// parse as ParseResolve would accept them are used lower-cased as given.
func NewFetcher(o FetcherOptions) *Fetcher {
	f := &Fetcher{timeout: o.Timeout, maxSize: o.MaxSize, resolve: map[string]string{}}
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
		Proxy:             nil, // metadata is fetched directly, as the products do
		DialContext:       f.DialContext,
		TLSClientConfig:   &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
		DisableKeepAlives: true,
	}
	f.client = &http.Client{
		Transport: transport,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" {
				return fmt.Errorf("redirected to %s, which is not an https URL", req.URL.Redacted())
			}
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			return nil
		},
	}
	return f
}

// DialContext dials addr ("host:port") from this Fetcher's vantage point:
// where its Resolve overrides send the name, as DNS otherwise. Other
// clients of the same host (the sim's trust probes) dial through it too.
func (f *Fetcher) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	to, ok := f.lookup(addr)
	if !ok {
		return d.DialContext(ctx, network, addr)
	}
	c, err := d.DialContext(ctx, network, to)
	if err != nil {
		return nil, fmt.Errorf("%s resolved to %s: %w", addr, to, err)
	}
	return c, nil
}

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
// the document of partner wantServiceName in realm wantRealm (see Validate).
// It returns the document and its signing certificates. Every failure is a
// *DownloadError (nothing usable arrived) or an *InvalidError (something
// arrived, and is not a valid document).
func (f *Fetcher) Fetch(ctx context.Context, rawURL, wantServiceName, wantRealm string) (*Document, []*x509.Certificate, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, nil, &DownloadError{URL: rawURL, Cause: errors.New("not an https URL")}
	}
	body, err := f.get(ctx, u)
	if err != nil {
		var inv *InvalidError
		if errors.As(err, &inv) {
			inv.URL = rawURL
			return nil, nil, inv
		}
		return nil, nil, &DownloadError{URL: rawURL, Cause: err}
	}
	d, err := decode(body)
	if err != nil {
		return nil, nil, &InvalidError{URL: rawURL, Reason: err.Error()}
	}
	certs, err := Validate(d, wantServiceName, wantRealm)
	if err != nil {
		return nil, nil, &InvalidError{URL: rawURL, Reason: err.Error()}
	}
	return d, certs, nil
}

// get returns the body of a 200 answer for u, at most f.maxSize bytes. An
// oversize body is an *InvalidError; anything else a plain error.
func (f *Fetcher) get(ctx context.Context, u *url.URL) ([]byte, error) {
	tctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(tctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, f.cause(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	if resp.ContentLength > f.maxSize {
		return nil, &InvalidError{Reason: fmt.Sprintf("document is %d bytes, over the %d-byte limit", resp.ContentLength, f.maxSize)}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, f.maxSize+1))
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
