package metadata

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// pool is a simulated Lync pool: a real HTTPS server whose certificate
// names pool01.contoso.com, reached through Resolve.
type pool struct {
	srv     *httptest.Server
	roots   *x509.CertPool
	doc     *Document
	spDoc   *Document     // SharePoint-shaped
	release chan struct{} // closed at test end to unblock /slow
}

func newPool(t *testing.T) *pool {
	t.Helper()
	p := &pool{release: make(chan struct{})}
	p.doc = Build(products.LyncID, realm, "pool01.contoso.com", signingCerts())
	p.spDoc = BuildFor(pb.Product_PRODUCT_SHAREPOINT, "", farmID, "", signingCerts())
	mux := http.NewServeMux()
	mux.Handle("/metadata/json/1", Handler(func() *Document { return p.doc }))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<!DOCTYPE html><html><body>Skype for Business Server</body></html>")
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"`+strings.Repeat("a", MaxSize)+`"}`)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-p.release:
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/to-http", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://pool01.contoso.com/metadata/json/1", http.StatusFound)
	})
	mux.HandleFunc("/to-https", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/metadata/json/1", http.StatusMovedPermanently)
	})
	mux.HandleFunc("/to-other-host", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://pool02.contoso.com/metadata/json/1", http.StatusFound)
	})
	mux.HandleFunc("/to-link-local", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://169.254.169.254/latest/meta-data/", http.StatusFound)
	})
	mux.HandleFunc("/big-header", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Padding", strings.Repeat("a", MaxHeaderBytes))
	})
	mux.Handle("/_layouts/15/metadata/json/1", Handler(func() *Document { return p.spDoc }))
	cert, key := newCert(t, "pool01.contoso.com", "pool01.contoso.com")
	p.srv = httptest.NewUnstartedServer(mux)
	// Failed handshakes are what several cases test; do not log them.
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	p.srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}}
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	t.Cleanup(func() { close(p.release) }) // runs before Close: cleanups are LIFO
	p.roots = x509.NewCertPool()
	p.roots.AddCert(p.srv.Certificate())
	return p
}

// addr is where the pool listens, the value to put in Resolve.
func (p *pool) addr() string { return p.srv.Listener.Addr().String() }

func TestFetch(t *testing.T) {
	p := newPool(t)
	otherCA, _ := newCert(t, "Other CA")
	untrusted := x509.NewCertPool()
	untrusted.AddCert(otherCA)

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	closed.Close()

	const base = "https://pool01.contoso.com"
	_, port, err := net.SplitHostPort(p.addr())
	if err != nil {
		t.Fatal(err)
	}
	noResolve := func(o *FetcherOptions) { o.Resolve = nil }
	tests := []struct {
		name        string
		url         string
		opts        func(o *FetcherOptions)
		serviceName string // default: Lync's
		realm       string // default: realm; "-": any
		wantKind    string // "ok", "sharepoint", "download" or "invalid"
		wantMsg     string // the whole message, or its start when it ends in "…"
	}{
		{name: "metadata endpoint", url: base + "/metadata/json/1", wantKind: "ok"},
		{name: "host key matched case-insensitively", url: "https://POOL01.contoso.com/metadata/json/1", wantKind: "ok"},
		{name: "exact host:port key", url: base + "/metadata/json/1", wantKind: "ok", opts: func(o *FetcherOptions) {
			o.Resolve = map[string]string{"pool01.contoso.com:443": p.addr()}
		}},
		{name: "redirect to https followed", url: base + "/to-https", wantKind: "ok"},
		{name: "not a metadata path", url: base + "/nothing/here", wantKind: "download",
			wantMsg: "the metadata document could not be downloaded from https://pool01.contoso.com/nothing/here: HTTP 404 Not Found"},
		{name: "HTML page", url: base + "/", wantKind: "invalid",
			wantMsg: "https://pool01.contoso.com/ is not a valid metadata document: not JSON: invalid character '<' looking for beginning of value"},
		{name: "wrong realm", url: base + "/metadata/json/1", realm: "fabrikam.com", wantKind: "invalid",
			wantMsg: `https://pool01.contoso.com/metadata/json/1 is not a valid metadata document: realm is "contoso.com", want "fabrikam.com"`},
		{name: "oversize body", url: base + "/big", wantKind: "invalid",
			wantMsg: "https://pool01.contoso.com/big is not a valid metadata document: document is over the 262144-byte limit"},
		{name: "document over a smaller MaxSize", url: base + "/metadata/json/1", wantKind: "invalid",
			opts:    func(o *FetcherOptions) { o.MaxSize = 100 },
			wantMsg: "https://pool01.contoso.com/metadata/json/1 is not a valid metadata document: document is over the 100-byte limit"},
		{name: "http URL", url: "http://pool01.contoso.com/metadata/json/1", wantKind: "download",
			wantMsg: "the metadata document could not be downloaded from http://pool01.contoso.com/metadata/json/1: not an https URL"},
		{name: "not a URL", url: "pool01.contoso.com", wantKind: "download",
			wantMsg: "the metadata document could not be downloaded from pool01.contoso.com: not an https URL"},
		{name: "redirect to http refused", url: base + "/to-http", wantKind: "download",
			wantMsg: "the metadata document could not be downloaded from https://pool01.contoso.com/to-http: redirect to http://pool01.contoso.com/metadata/json/1 not followed: it is not an https URL"},
		{name: "redirect to another host refused", url: base + "/to-other-host", wantKind: "download",
			opts: func(o *FetcherOptions) { o.Resolve["pool02.contoso.com"] = p.addr() },
			wantMsg: "the metadata document could not be downloaded from https://pool01.contoso.com/to-other-host: " +
				"redirect to https://pool02.contoso.com/metadata/json/1 not followed: it leaves host pool01.contoso.com"},
		{name: "redirect to cloud instance metadata refused", url: base + "/to-link-local", wantKind: "download",
			wantMsg: "the metadata document could not be downloaded from https://pool01.contoso.com/to-link-local: " +
				"redirect to https://169.254.169.254/latest/meta-data/ not followed: it leaves host pool01.contoso.com"},
		{name: "oversize headers", url: base + "/big-header", wantKind: "download",
			wantMsg: "the metadata document could not be downloaded from https://pool01.contoso.com/big-header: net/http: HTTP/1.x transport connection broken: net/http: server response headers exceeded 65536 bytes; aborted"},
		{name: "sharepoint shape, any realm", url: base + "/_layouts/15/metadata/json/1", serviceName: products.SharePointID, realm: "-", wantKind: "sharepoint"},
		{name: "sharepoint shape, its farm realm", url: base + "/_layouts/15/metadata/json/1", serviceName: products.SharePointID, realm: farmID, wantKind: "sharepoint"},
		{name: "sharepoint shape, wrong serviceName", url: base + "/_layouts/15/metadata/json/1", realm: "-", wantKind: "invalid",
			wantMsg: `https://pool01.contoso.com/_layouts/15/metadata/json/1 is not a valid metadata document: serviceName is "00000003-0000-0ff1-ce00-000000000000", want "00000004-0000-0ff1-ce00-000000000000"`},
		{name: "loopback name refused", url: "https://localhost:" + port + "/metadata/json/1", opts: noResolve, wantKind: "download",
			wantMsg: "the metadata document could not be downloaded from https://localhost:" + port + "/metadata/json/1: " +
				"refused to fetch metadata from localhost: it resolves to …"}, // 127.0.0.1 or ::1: see TestFetchErrorsUnwrap
		{name: "loopback literal refused", url: "https://127.0.0.1:" + port + "/metadata/json/1", opts: noResolve, wantKind: "download",
			wantMsg: "the metadata document could not be downloaded from https://127.0.0.1:" + port + "/metadata/json/1: " +
				"refused to fetch metadata from 127.0.0.1: it is a loopback address (this host itself)"},
		{name: "IPv6 loopback literal refused", url: "https://[::1]:" + port + "/metadata/json/1", opts: noResolve, wantKind: "download",
			wantMsg: "the metadata document could not be downloaded from https://[::1]:" + port + "/metadata/json/1: " +
				"refused to fetch metadata from ::1: it is a loopback address (this host itself)"},
		{name: "cloud instance metadata refused", url: "https://169.254.169.254/metadata/json/1", opts: noResolve, wantKind: "download",
			wantMsg: "the metadata document could not be downloaded from https://169.254.169.254/metadata/json/1: " +
				"refused to fetch metadata from 169.254.169.254: it is a link-local address (where cloud instance metadata is served)"},
		{name: "outside the allowed networks", url: "https://10.1.2.3/metadata/json/1", wantKind: "download",
			opts: func(o *FetcherOptions) { o.AllowedNetworks = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")} },
			wantMsg: "the metadata document could not be downloaded from https://10.1.2.3/metadata/json/1: " +
				"refused to fetch metadata from 10.1.2.3: it is outside the allowed metadata networks (192.168.0.0/16)"},
		{name: "a Resolve mapping is exempt from the allowed networks", url: base + "/metadata/json/1", wantKind: "ok",
			opts: func(o *FetcherOptions) { o.AllowedNetworks = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")} }},
		{name: "nothing listening", url: base + "/metadata/json/1", wantKind: "download",
			opts: func(o *FetcherOptions) { o.Resolve = map[string]string{"pool01.contoso.com": deadAddr} },
			wantMsg: "the metadata document could not be downloaded from https://pool01.contoso.com/metadata/json/1: pool01.contoso.com:443 resolved to " +
				deadAddr + ": dial tcp " + deadAddr + ": connect: connection refused"},
		{name: "untrusted CA", url: base + "/metadata/json/1", wantKind: "download",
			opts:    func(o *FetcherOptions) { o.RootCAs = untrusted },
			wantMsg: "the metadata document could not be downloaded from https://pool01.contoso.com/metadata/json/1: tls: failed to verify certificate: x509: certificate signed by unknown authority…"},
		{name: "certificate for another host", url: "https://pool02.contoso.com/metadata/json/1", wantKind: "download",
			opts: func(o *FetcherOptions) { o.Resolve = map[string]string{"pool02.contoso.com": p.addr()} },
			wantMsg: "the metadata document could not be downloaded from https://pool02.contoso.com/metadata/json/1: " +
				"tls: failed to verify certificate: x509: certificate is valid for pool01.contoso.com, not pool02.contoso.com"},
		{name: "timeout", url: base + "/slow", wantKind: "download",
			opts:    func(o *FetcherOptions) { o.Timeout = 200 * time.Millisecond },
			wantMsg: "the metadata document could not be downloaded from https://pool01.contoso.com/slow: no answer within 200ms: …"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := FetcherOptions{RootCAs: p.roots, Resolve: map[string]string{"pool01.contoso.com": p.addr()}}
			if tt.opts != nil {
				tt.opts(&o)
			}
			want := realm
			switch tt.realm {
			case "":
			case "-":
				want = ""
			default:
				want = tt.realm
			}
			serviceName := products.LyncID
			if tt.serviceName != "" {
				serviceName = tt.serviceName
			}
			d, certs, err := NewFetcher(o).Fetch(context.Background(), tt.url, serviceName, want)
			var dl *DownloadError
			var inv *InvalidError
			switch tt.wantKind {
			case "ok", "sharepoint":
				if err != nil {
					t.Fatalf("Fetch: %v", err)
				}
				wantDoc := p.doc
				if tt.wantKind == "sharepoint" {
					wantDoc = p.spDoc
				}
				if !reflect.DeepEqual(d, wantDoc) || len(certs) != 2 || !certs[0].Equal(signingCerts()[0]) {
					t.Fatalf("Fetch returned %+v and %d certificates", d, len(certs))
				}
				return
			case "download":
				if !errors.As(err, &dl) {
					t.Fatalf("Fetch error = %#v, want a *DownloadError", err)
				}
			case "invalid":
				if !errors.As(err, &inv) {
					t.Fatalf("Fetch error = %#v, want an *InvalidError", err)
				}
			}
			if d != nil || certs != nil {
				t.Error("a failed Fetch returned a document")
			}
			if prefix, ok := strings.CutSuffix(tt.wantMsg, "…"); ok {
				if !strings.HasPrefix(err.Error(), prefix) {
					t.Fatalf("Fetch error =\n%v\nwant it to start\n%s", err, prefix)
				}
			} else if err.Error() != tt.wantMsg {
				t.Fatalf("Fetch error =\n%v\nwant\n%s", err, tt.wantMsg)
			}
		})
	}
}

// TestFetchErrorsUnwrap checks that callers can tell kinds of failure apart
// without parsing messages.
func TestFetchErrorsUnwrap(t *testing.T) {
	p := newPool(t)
	f := NewFetcher(FetcherOptions{RootCAs: p.roots, Resolve: map[string]string{"pool01.contoso.com": p.addr()}, Timeout: 100 * time.Millisecond})
	_, _, err := f.Fetch(context.Background(), "https://pool01.contoso.com/slow", products.LyncID, realm)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("timeout: errors.Is(%v, context.DeadlineExceeded) = false", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err = f.Fetch(ctx, "https://pool01.contoso.com/metadata/json/1", products.LyncID, realm)
	if !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "no answer within") {
		t.Errorf("canceled: got %v, want context.Canceled without blaming the timeout", err)
	}

	// A refused destination is told apart, from Fetch and from DialContext
	// (which the sim's trust probes dial through), naming name and address.
	_, _, err = NewFetcher(FetcherOptions{}).Fetch(context.Background(), "https://localhost:1/metadata/json/1", products.LyncID, realm)
	var de *DestinationError
	if !errors.As(err, &de) || de.Host != "localhost" || !de.Addr.IsLoopback() || !strings.HasSuffix(err.Error(), ", a loopback address (this host itself)") {
		t.Errorf("loopback name: errors.As(%v, *DestinationError) = %+v", err, de)
	}
	if _, err := NewFetcher(FetcherOptions{}).DialContext(context.Background(), "tcp", "169.254.169.254:80"); !errors.As(err, &de) || de.Addr.String() != "169.254.169.254" {
		t.Errorf("DialContext to link-local: %v", err)
	}

	f = NewFetcher(FetcherOptions{RootCAs: x509.NewCertPool(), Resolve: map[string]string{"pool01.contoso.com": p.addr()}})
	_, _, err = f.Fetch(context.Background(), "https://pool01.contoso.com/metadata/json/1", products.LyncID, realm)
	var uae x509.UnknownAuthorityError
	if !errors.As(err, &uae) {
		t.Errorf("untrusted: errors.As(%v, x509.UnknownAuthorityError) = false", err)
	}
}

func TestParseResolve(t *testing.T) {
	tests := []struct {
		name    string
		specs   []string
		want    map[string]string
		wantErr string
	}{
		{name: "none", specs: nil, want: map[string]string{}},
		{name: "host and host:port", specs: []string{"Pool01.Contoso.com=127.0.0.1:4443", " autodiscover.contoso.com:443 = [::1]:8443 "},
			want: map[string]string{"pool01.contoso.com": "127.0.0.1:4443", "autodiscover.contoso.com:443": "[::1]:8443"}},
		{name: "no equals sign", specs: []string{"pool01.contoso.com"}, wantErr: `resolve "pool01.contoso.com": want host=ip:port or host:port=ip:port`},
		{name: "no host", specs: []string{"=127.0.0.1:443"}, wantErr: `resolve "=127.0.0.1:443": empty host`},
		{name: "no port", specs: []string{"pool01.contoso.com=127.0.0.1"},
			wantErr: `resolve "pool01.contoso.com=127.0.0.1": address "127.0.0.1" is not ip:port: address 127.0.0.1: missing port in address`},
		{name: "bad port", specs: []string{"pool01.contoso.com=127.0.0.1:https"},
			wantErr: `resolve "pool01.contoso.com=127.0.0.1:https": address "127.0.0.1:https": port "https" is not a number from 1 to 65535`},
		{name: "bad key port", specs: []string{"pool01.contoso.com:0=127.0.0.1:443"},
			wantErr: `resolve "pool01.contoso.com:0=127.0.0.1:443": port "0" is not a number from 1 to 65535`},
		{name: "no address host", specs: []string{"pool01.contoso.com=:443"}, wantErr: `resolve "pool01.contoso.com=:443": address ":443" has no host`},
		{name: "duplicate", specs: []string{"a.contoso.com=127.0.0.1:1", "A.contoso.com=127.0.0.1:2"},
			wantErr: `resolve "A.contoso.com=127.0.0.1:2": a.contoso.com is given more than once`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseResolve(tt.specs)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ParseResolve error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseResolve = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	f := NewFetcher(FetcherOptions{Resolve: map[string]string{
		"pool01.contoso.com":     "127.0.0.1:1",
		"POOL01.contoso.com:444": "127.0.0.1:2",
	}})
	tests := []struct {
		addr, want string
		ok         bool
	}{
		{"pool01.contoso.com:443", "127.0.0.1:1", true},
		{"pool01.contoso.com:444", "127.0.0.1:2", true},
		{"Pool01.Contoso.com:444", "127.0.0.1:2", true},
		{"pool02.contoso.com:443", "", false},
	}
	for _, tt := range tests {
		if got, ok := f.lookup(tt.addr); got != tt.want || ok != tt.ok {
			t.Errorf("lookup(%q) = %q, %v; want %q, %v", tt.addr, got, ok, tt.want, tt.ok)
		}
	}
}

func TestHandler(t *testing.T) {
	doc := Build(products.LyncID, realm, "pool01.contoso.com", signingCerts())
	var current *Document
	h := Handler(func() *Document { return current })
	tests := []struct {
		name       string
		method     string
		doc        *Document
		wantStatus int
		wantType   string
	}{
		{name: "GET", method: http.MethodGet, doc: doc, wantStatus: http.StatusOK, wantType: "application/json"},
		{name: "HEAD", method: http.MethodHead, doc: doc, wantStatus: http.StatusOK, wantType: "application/json"},
		{name: "POST", method: http.MethodPost, doc: doc, wantStatus: http.StatusMethodNotAllowed},
		{name: "nothing published", method: http.MethodGet, doc: nil, wantStatus: http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			current = tt.doc
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, "/metadata/json/1", nil))
			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d", rec.Code, tt.wantStatus)
			}
			if tt.wantType == "" {
				return
			}
			if ct := rec.Header().Get("Content-Type"); ct != tt.wantType {
				t.Errorf("Content-Type = %q, want %q", ct, tt.wantType)
			}
			if tt.method == http.MethodGet {
				got, err := Parse(rec.Body.Bytes())
				if err != nil || !reflect.DeepEqual(got, doc) {
					t.Errorf("served %s (%v)", rec.Body, err)
				}
			}
		})
	}
}
