package metadata

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
)

// A partner's metadata endpoint is an on-premises web server: a private
// address is normal, so private ranges stay allowed. What is refused is what
// no partner's metadata can legitimately be served from, and what an agent
// must never be made to fetch on a topology author's behalf (server-side
// request forgery): this host itself (loopback), link-local addresses
// (169.254.169.254 is the cloud instance metadata service), the unspecified
// address and multicast. Explicit Resolve mappings are the one exemption:
// the operator typed them, and the sim, the demo and tests serve on loopback.

// thisNetwork is 0.0.0.0/8, "this host on this network" (RFC 1122 3.2.1.3):
// Linux dials 0.x.y.z as the local host.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// ForbiddenAddress says why a partner's metadata may not be fetched from
// addr ("" when it may): loopback, link-local (169.254.0.0/16, fe80::/10),
// unspecified (0.0.0.0/8, ::), multicast or the IPv4 broadcast address. An
// IPv4-mapped IPv6 address is judged as the IPv4 address it maps.
func ForbiddenAddress(addr netip.Addr) string {
	addr = addr.Unmap()
	switch {
	case !addr.IsValid():
		return "not an IP address"
	case addr.IsLoopback():
		return "a loopback address (this host itself)"
	case addr.IsLinkLocalUnicast():
		return "a link-local address (where cloud instance metadata is served)"
	case addr.IsUnspecified(), addr.Is4() && thisNetwork.Contains(addr):
		return "an unspecified address"
	case addr.IsMulticast():
		return "a multicast address"
	case addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	return ""
}

// outside says why addr is not in allowed ("" when it is, or when allowed
// is empty: then any address not forbidden is allowed).
func outside(addr netip.Addr, allowed []netip.Prefix) string {
	if len(allowed) == 0 {
		return ""
	}
	addr = addr.Unmap()
	for _, p := range allowed {
		if p.Contains(addr) {
			return ""
		}
	}
	return "outside the allowed metadata networks (" + prefixList(allowed) + ")"
}

// prefixList formats prefixes for a message.
func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// DestinationError reports a metadata URL or dial refused because of where
// it leads.
type DestinationError struct {
	// Host is the URL's host name or IP literal.
	Host string
	// Addr is the address refused: the IP literal, or what Host resolved to.
	Addr netip.Addr
	// Reason says what is wrong with Addr.
	Reason string
}

// Error names the host, the address and why it is refused.
func (e *DestinationError) Error() string {
	if e.Host == e.Addr.String() || e.Host == "" {
		return fmt.Sprintf("refused to fetch metadata from %s: it is %s", e.Addr, e.Reason)
	}
	return fmt.Sprintf("refused to fetch metadata from %s: it resolves to %s, %s", e.Host, e.Addr, e.Reason)
}

// CheckURLDestination checks a metadata URL where it is written down (at
// apply, before any agent fetches it): it must be an https URL with a host,
// and a host that is an IP literal must not be a forbidden address (see
// ForbiddenAddress) nor, when allowed is not empty, outside allowed. A host
// name is only refused when it names this host ("localhost", "*.localhost",
// RFC 6761) or looks like a numeric IPv4 form the resolver could read as an
// address ("2130706433", "127.1"); where other names lead is checked at
// dial time, after resolution. The error is a *DestinationError for a
// refused address, and names the URL and the host.
func CheckURLDestination(rawURL string, allowed []netip.Prefix) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("metadata URL %q does not parse: %w", rawURL, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("metadata URL %q is not an https URL with a host", rawURL)
	}
	host := u.Hostname()
	if addr, err := netip.ParseAddr(host); err == nil {
		reason := ForbiddenAddress(addr)
		if reason == "" {
			reason = outside(addr, allowed)
		}
		if reason != "" {
			return fmt.Errorf("metadata URL %q: %w", rawURL, &DestinationError{Host: addr.WithZone("").String(), Addr: addr.WithZone(""), Reason: reason})
		}
		return nil
	}
	lower := strings.ToLower(strings.TrimSuffix(host, "."))
	if lower == "localhost" || strings.HasSuffix(lower, ".localhost") {
		return fmt.Errorf("metadata URL %q: host %s names this host itself (loopback)", rawURL, host)
	}
	labels := strings.Split(lower, ".")
	if last := labels[len(labels)-1]; last != "" && strings.Trim(last, "0123456789") == "" || strings.HasPrefix(last, "0x") {
		return fmt.Errorf("metadata URL %q: host %s is neither a host name nor a dotted IPv4 address", rawURL, host)
	}
	return nil
}

// guardedControl is a net.Dialer Control function that refuses, after
// resolution and before connecting, an address that is forbidden or outside
// allowed. It sees every address the dialer tries, so a name that resolves
// partly to a forbidden address is refused only that address.
func guardedControl(allowed ...[]netip.Prefix) func(network, address string, _ syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("dial %s %s: not an IP address and port", network, address)
		}
		addr := ap.Addr().WithZone("")
		reason := ForbiddenAddress(addr)
		for _, a := range allowed {
			if reason == "" {
				reason = outside(addr, a)
			}
		}
		if reason != "" {
			return &DestinationError{Addr: addr, Reason: reason}
		}
		return nil
	}
}

// nameDestination adds the dialed name to a *DestinationError from the
// dialer, so the message names both the name and the address.
func nameDestination(hostport string, err error) error {
	var de *DestinationError
	if !errors.As(err, &de) {
		return err
	}
	host, _, splitErr := net.SplitHostPort(hostport)
	if splitErr != nil {
		host = hostport
	}
	named := *de
	named.Host = host
	return &named
}

// allowedKey is the context key of WithAllowedNetworks.
type allowedKey struct{}

// WithAllowedNetworks narrows, for the fetches and dials made with the
// returned context, where a name may lead to networks (on top of the
// Fetcher's own AllowedNetworks): a topology's metadataNetworks, which the
// host learns with its configuration. Empty networks narrow nothing.
func WithAllowedNetworks(ctx context.Context, networks []netip.Prefix) context.Context {
	if len(networks) == 0 {
		return ctx
	}
	return context.WithValue(ctx, allowedKey{}, networks)
}

// ParseNetworks parses CIDR prefixes such as a topology's metadataNetworks.
func ParseNetworks(cidrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("metadata network %q is not a CIDR prefix such as 10.20.0.0/16: %w", c, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func allowedFrom(ctx context.Context) []netip.Prefix {
	n, _ := ctx.Value(allowedKey{}).([]netip.Prefix)
	return n
}
