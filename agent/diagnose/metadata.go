// Package diagnose holds the checks of "s2s-agent diagnose": what an
// administrator runs on a host, from that host's own vantage point, when a
// product's cmdlet fails — first of all New-CsPartnerApplication,
// Configure-EnterprisePartnerApplication.ps1 or
// New-SPTrustedSecurityTokenIssuer failing on a partner's metadata URL with
// the seed's "could not be downloaded ... or ... is not a valid metadata
// document", which never says which.
package diagnose

import (
	"context"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// MetadataOptions says which metadata URL to diagnose, and from where.
type MetadataOptions struct {
	// URL is the partner's metadata URL, as given to the product's cmdlet.
	URL string
	// Product is this host's product, whose cmdlet takes the URL: it names
	// the URL parameter in the error (MetadataUrl for Lync, the seed's,
	// AuthMetadataUrl for Exchange, MetadataEndPoint for SharePoint).
	// PRODUCT_UNSPECIFIED means Lync's.
	Product pb.Product
	// Partner is the product whose document the URL serves, which fixes
	// the serviceName it must carry; PRODUCT_UNSPECIFIED means the product
	// whose metadata path the URL has (Lync's when none matches).
	Partner pb.Product
	// Roots verifies the server's certificate; nil means the system roots.
	Roots *x509.CertPool
	// RootsName names Roots in the report ("--ca ca.pem"); empty means
	// "the system roots".
	RootsName string
	// Resolve maps names to addresses as metadata.FetcherOptions.Resolve.
	Resolve map[string]string
	// Timeout bounds the download; zero means metadata.DefaultTimeout.
	Timeout time.Duration
	// Now is the clock for expiry; nil means time.Now.
	Now func() time.Time
}

// MetadataError is a failed diagnosis: the products' own message, with the
// metadata URL parameter of the partner's product, and the precise cause.
type MetadataError struct {
	// Parameter is the cmdlet parameter that takes the URL.
	Parameter string
	// Cause is what was wrong: a *metadata.DownloadError or a
	// *metadata.InvalidError.
	Cause error
}

// Error is the products' message followed by the cause. The products'
// message is quoted as they print it, capital letter and full stop
// included, so that an administrator recognises it.
func (e *MetadataError) Error() string {
	return SeedMessage(e.Parameter) + " Cause: " + e.Cause.Error()
}

// Unwrap returns the cause.
func (e *MetadataError) Unwrap() error { return e.Cause }

// SeedMessage is the error the products give when a partner's metadata
// cannot be used, with parameter, the cmdlet parameter that takes its URL.
func SeedMessage(parameter string) string {
	return "The metadata document could not be downloaded from the URL in the " + parameter +
		" parameter or downloaded data is not a valid metadata document."
}

// URLParameter is the cmdlet parameter that takes a partner's metadata URL
// on a receiver of product p: New-CsPartnerApplication -MetadataUrl (Lync),
// Configure-EnterprisePartnerApplication.ps1 -AuthMetadataUrl (Exchange),
// New-SPTrustedSecurityTokenIssuer -MetadataEndPoint (SharePoint).
func URLParameter(p pb.Product) string {
	switch p {
	case pb.Product_PRODUCT_EXCHANGE:
		return "AuthMetadataUrl"
	case pb.Product_PRODUCT_SHAREPOINT:
		return "MetadataEndPoint"
	}
	return "MetadataUrl"
}

// productOfURL is the product whose metadata path rawURL has, Lync's when
// none matches (Lync's path, /metadata/json/1, is the others' suffix).
func productOfURL(rawURL string) pb.Product {
	u, err := url.Parse(rawURL)
	if err != nil {
		return pb.Product_PRODUCT_LYNC
	}
	path := strings.ToLower(u.Path)
	for _, p := range []pb.Product{pb.Product_PRODUCT_SHAREPOINT, pb.Product_PRODUCT_EXCHANGE} {
		if strings.HasSuffix(path, products.MetadataPath(p)) {
			return p
		}
	}
	return pb.Product_PRODUCT_LYNC
}

// Metadata downloads and validates the document at o.URL as a receiver
// would, through metadata.Fetcher (so with the same destination rules,
// redirects and limits), accepting any realm, and writes to w what it saw:
// DNS, TLS, HTTP and the document, with non-printing characters escaped.
// It returns nil when the document is valid, a *MetadataError otherwise.
func Metadata(ctx context.Context, w io.Writer, o MetadataOptions) error {
	w = escaper{w}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	p, how := o.Partner, ""
	if p == pb.Product_PRODUCT_UNSPECIFIED {
		p, how = productOfURL(o.URL), " (from the URL's path; --partner to choose)"
	}
	parameter := URLParameter(o.Product)
	fail := func(err error) error { return &MetadataError{Parameter: parameter, Cause: err} }
	rootsName := o.RootsName
	if rootsName == "" {
		rootsName = "the system roots"
	}
	fmt.Fprintf(w, "metadata URL  %s (the -%s parameter)\n", o.URL, parameter)
	fmt.Fprintf(w, "partner       %s%s: serviceName %s\n", products.DisplayName(p), how, products.ServiceName(p))

	f := metadata.NewFetcher(metadata.FetcherOptions{RootCAs: o.Roots, Resolve: o.Resolve, Timeout: o.Timeout})
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		_, err := f.Inspect(ctx, o.URL, products.ServiceName(p), "")
		return fail(err)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "443"
	}

	fmt.Fprintln(w, "\nDNS")
	writeDNS(ctx, w, f, host, port)

	in, fetchErr := f.Inspect(ctx, o.URL, products.ServiceName(p), "")

	fmt.Fprintln(w, "\nTLS")
	writeTLS(w, in, host, o.Roots, rootsName, now())

	fmt.Fprintln(w, "\nHTTP")
	if in.Status == "" {
		fmt.Fprintln(w, "  no answer")
	} else {
		ct := in.ContentType
		if ct == "" {
			ct = "none"
		}
		fmt.Fprintf(w, "  status %s, content type %s, %d bytes read\n", in.Status, ct, in.Size)
	}

	if in.Document != nil {
		fmt.Fprintln(w, "\ndocument")
		writeDocument(w, in.Document, now())
	}

	fmt.Fprintln(w)
	if fetchErr != nil {
		fmt.Fprintf(w, "result: NOT VALID: %v\n", fetchErr)
		return fail(fetchErr)
	}
	fmt.Fprintf(w, "result: a valid metadata document of %s in realm %s, %d signing key(s)\n",
		products.DisplayName(p), realmText(in.Document), len(in.Signing))
	return nil
}

// writeDNS shows where the name leads from this host: the --resolve
// mapping, the IP literal, or what DNS answers, with the addresses the
// Fetcher would refuse.
func writeDNS(ctx context.Context, w io.Writer, f *metadata.Fetcher, host, port string) {
	hostport := net.JoinHostPort(host, port)
	if to, ok := f.Mapping(hostport); ok {
		fmt.Fprintf(w, "  %s -> %s (--resolve mapping; DNS not asked)\n", hostport, to)
		return
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		fmt.Fprintf(w, "  %s is an IP address%s\n", host, refusal(addr))
		return
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(lctx, "ip", host)
	if err != nil {
		fmt.Fprintf(w, "  %s does not resolve: %v\n", host, err)
		return
	}
	fmt.Fprintf(w, "  %s resolves to\n", host)
	for _, a := range addrs {
		fmt.Fprintf(w, "    %s%s\n", a, refusal(a))
	}
}

// refusal is " (refused: …)" for an address the Fetcher refuses, or "".
func refusal(a netip.Addr) string {
	if r := metadata.ForbiddenAddress(a); r != "" {
		return " (refused: " + r + "; only a --resolve mapping may lead there)"
	}
	return ""
}

// writeTLS shows the chain the server presented, whether it names host, and
// whether it verifies against the roots.
func writeTLS(w io.Writer, in *metadata.Inspection, host string, roots *x509.CertPool, rootsName string, now time.Time) {
	if in.RemoteAddr != "" {
		fmt.Fprintf(w, "  connected to %s", in.RemoteAddr)
		if in.TLSVersion != "" {
			fmt.Fprintf(w, " with %s", in.TLSVersion)
		}
		fmt.Fprintln(w)
	}
	if len(in.Chain) == 0 {
		fmt.Fprintln(w, "  no certificate received")
		return
	}
	for i, c := range in.Chain {
		fmt.Fprintf(w, "  certificate %d\n", i+1)
		fmt.Fprintf(w, "    subject     %s\n", c.Subject)
		fmt.Fprintf(w, "    issuer      %s\n", c.Issuer)
		if len(c.DNSNames) > 0 || len(c.IPAddresses) > 0 {
			names := append([]string{}, c.DNSNames...)
			for _, ip := range c.IPAddresses {
				names = append(names, ip.String())
			}
			fmt.Fprintf(w, "    names       %s\n", strings.Join(names, ", "))
		}
		fmt.Fprintf(w, "    expires     %s\n", expiry(c, now))
		fmt.Fprintf(w, "    thumbprint  %s\n", Thumbprint(c))
	}
	leaf := in.Chain[0]
	if err := leaf.VerifyHostname(host); err != nil {
		fmt.Fprintf(w, "  name %s: DOES NOT MATCH: %v\n", host, err)
	} else {
		fmt.Fprintf(w, "  name %s: matches the certificate\n", host)
	}
	inter := x509.NewCertPool()
	for _, c := range in.Chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now}); err != nil {
		fmt.Fprintf(w, "  chain: NOT TRUSTED by %s: %v\n", rootsName, err)
	} else {
		fmt.Fprintf(w, "  chain: trusted by %s\n", rootsName)
	}
}

// writeDocument shows what a receiver takes from the document.
func writeDocument(w io.Writer, d *metadata.Document, now time.Time) {
	fmt.Fprintf(w, "  serviceName  %s\n", orNone(d.ServiceName))
	fmt.Fprintf(w, "  realm        %s\n", realmText(d))
	fmt.Fprintf(w, "  issuer       %s\n", orNone(d.Issuer))
	fmt.Fprintf(w, "  name         %s\n", orNone(d.Name))
	if len(d.Keys) == 0 {
		fmt.Fprintln(w, "  keys         none")
	}
	certs := make([]*x509.Certificate, len(d.Keys))
	if all, err := d.Certificates(); err == nil {
		certs = all
	}
	for i, k := range d.Keys {
		fmt.Fprintf(w, "  key %d        usage %s", i+1, orNone(k.Usage))
		if c := certs[i]; c != nil {
			fmt.Fprintf(w, ", thumbprint %s, expires %s, subject %s", Thumbprint(c), expiry(c, now), c.Subject)
		}
		fmt.Fprintln(w)
	}
}

// realmText is the document's effective realm and where it comes from.
func realmText(d *metadata.Document) string {
	r := d.EffectiveRealm()
	switch {
	case r == "":
		return "none"
	case r == "*":
		return `"*" (tokens for any realm)`
	case d.Realm == "":
		return r + " (from issuer)"
	}
	return r
}

// orNone is s, or "none" when empty.
func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// expiry is a certificate's NotAfter, flagged when past or not yet valid.
func expiry(c *x509.Certificate, now time.Time) string {
	s := c.NotAfter.UTC().Format("2006-01-02 15:04:05 UTC")
	switch {
	case now.After(c.NotAfter):
		return s + " (EXPIRED)"
	case now.Before(c.NotBefore):
		return s + " (NOT YET VALID: from " + c.NotBefore.UTC().Format("2006-01-02 15:04:05 UTC") + ")"
	}
	return s
}

// Thumbprint is a certificate's thumbprint as Windows shows it: the
// upper-case hex SHA-1 of its DER.
func Thumbprint(c *x509.Certificate) string {
	sum := sha1.Sum(c.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}
