// Package pki issues and checks the certificates that s2strust's controller,
// agents and administrators use to authenticate each other over mutual TLS.
//
// The controller runs a small certificate authority. Every certificate it
// issues to a client names exactly one identity in a SPIFFE-style URI SAN:
//
//	spiffe://s2strust/admin/<name>  an administrator
//	spiffe://s2strust/host/<fqdn>   the agent on host <fqdn> (lower case)
//	spiffe://s2strust/server        the controller's serving certificate
//
// The subject CN repeats the name for people reading the certificate, but
// authorization never looks at it: a CN is free text that any certificate,
// from any issuer, can carry, and a CN of "admin" on a host certificate (or a
// host CN that happens to match another host) must not grant anything. The
// URI is typed (admin or host), unambiguous (exactly one per certificate)
// and only ever written by this package from validated input, so an identity
// read back from a verified chain cannot be forged by a CN collision.
//
// Only the standard library does cryptography here (crypto/x509,
// crypto/ecdsa, crypto/tls); keys are ECDSA P-256.
package pki

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// TrustDomain is the authority part of every identity URI this package
// issues and accepts.
const TrustDomain = "s2strust"

// Kind is the kind of principal a certificate identifies.
type Kind int

// The kinds of identity. KindUnknown is the zero value and never the result
// of a successful parse.
const (
	KindUnknown Kind = iota
	// KindAdmin is an administrator calling the admin API.
	KindAdmin
	// KindHost is the agent on one host, named by its FQDN.
	KindHost
	// KindServer is the controller's serving certificate.
	KindServer
)

// String returns "admin", "host", "server" or "unknown".
func (k Kind) String() string {
	switch k {
	case KindAdmin:
		return "admin"
	case KindHost:
		return "host"
	case KindServer:
		return "server"
	default:
		return "unknown"
	}
}

// Role is what an administrator may do. Roles are ordered: each may do
// everything the ones below it may.
type Role int

// The admin roles. RoleNone is the role of every non-admin identity.
const (
	RoleNone Role = iota
	// RoleViewer may call the read-only APIs.
	RoleViewer
	// RoleOperator may also run rollouts and retry hosts.
	RoleOperator
	// RoleAdmin may do everything, including secrets and join tokens.
	RoleAdmin
)

// String returns "viewer", "operator", "admin" or "none".
func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	default:
		return "none"
	}
}

// ParseRole parses "viewer", "operator" or "admin".
func ParseRole(s string) (Role, error) {
	switch s {
	case "viewer":
		return RoleViewer, nil
	case "operator":
		return RoleOperator, nil
	case "admin":
		return RoleAdmin, nil
	}
	return RoleNone, fmt.Errorf("role %q: want admin, operator or viewer", s)
}

// Identity is the authenticated principal behind a certificate. Name is the
// admin name for KindAdmin, the lower-case FQDN for KindHost and empty for
// KindServer. Role is the admin's role (RoleNone for other kinds).
//
// An admin's role is part of its identity URI: spiffe://s2strust/admin/<name>
// is role admin (the form every admin certificate had before roles), and
// spiffe://s2strust/admin/<name>/<role> names role operator or viewer.
type Identity struct {
	Kind Kind
	Name string
	Role Role
}

// String returns "admin/<name>", "host/<fqdn>", "server" or "unknown"; it is
// the path of the identity URI without the leading slash, suitable for logs
// and audit records.
func (i Identity) String() string {
	switch i.Kind {
	case KindAdmin:
		if i.Role != RoleAdmin {
			return i.Kind.String() + "/" + i.Name + "/" + i.Role.String()
		}
		return i.Kind.String() + "/" + i.Name
	case KindHost:
		return i.Kind.String() + "/" + i.Name
	case KindServer:
		return "server"
	default:
		return "unknown"
	}
}

// uri returns the URI SAN for the identity. The name must already be
// validated.
func (i Identity) uri() *url.URL {
	u := &url.URL{Scheme: "spiffe", Host: TrustDomain}
	switch {
	case i.Kind == KindServer:
		u.Path = "/server"
	case i.Kind == KindAdmin && i.Role != RoleAdmin:
		u.Path = "/admin/" + i.Name + "/" + i.Role.String()
	default:
		u.Path = "/" + i.Kind.String() + "/" + i.Name
	}
	return u
}

// IdentityFromCert returns the identity named by cert's spiffe URI SAN. It
// fails when the certificate carries no spiffe URI, more than one (which
// would make the identity ambiguous), one from another trust domain, or one
// that does not parse as an s2strust identity. The subject CN is ignored.
//
// The caller is responsible for cert having been verified against the CA;
// use the leaf of a verified chain, never an unverified peer certificate.
func IdentityFromCert(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, errors.New("identity from certificate: no certificate")
	}
	var spiffe []*url.URL
	for _, u := range cert.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			spiffe = append(spiffe, u)
		}
	}
	switch len(spiffe) {
	case 0:
		return Identity{}, fmt.Errorf("identity from certificate %q: no spiffe URI SAN", cert.Subject.CommonName)
	case 1:
	default:
		return Identity{}, fmt.Errorf("identity from certificate %q: %d spiffe URI SANs, want exactly one", cert.Subject.CommonName, len(spiffe))
	}
	id, err := parseIdentityURI(spiffe[0])
	if err != nil {
		return Identity{}, fmt.Errorf("identity from certificate %q: %w", cert.Subject.CommonName, err)
	}
	return id, nil
}

// parseIdentityURI accepts exactly the URIs that Identity.uri produces.
func parseIdentityURI(u *url.URL) (Identity, error) {
	if u.Host != TrustDomain {
		return Identity{}, fmt.Errorf("uri %q: trust domain %q, want %q", u, u.Host, TrustDomain)
	}
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawPath != "" {
		return Identity{}, fmt.Errorf("uri %q: unexpected opaque part, user, query, fragment or escaping", u)
	}
	segs := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	switch {
	case len(segs) == 1 && segs[0] == "server":
		return Identity{Kind: KindServer}, nil
	case len(segs) == 2 && segs[0] == "admin":
		if err := validateAdminName(segs[1]); err != nil {
			return Identity{}, fmt.Errorf("uri %q: %w", u, err)
		}
		return Identity{Kind: KindAdmin, Name: segs[1], Role: RoleAdmin}, nil
	case len(segs) == 3 && segs[0] == "admin" && (segs[2] == "operator" || segs[2] == "viewer"):
		if err := validateAdminName(segs[1]); err != nil {
			return Identity{}, fmt.Errorf("uri %q: %w", u, err)
		}
		role, _ := ParseRole(segs[2])
		return Identity{Kind: KindAdmin, Name: segs[1], Role: role}, nil
	case len(segs) == 2 && segs[0] == "host":
		fqdn, err := normalizeFQDN(segs[1])
		if err != nil {
			return Identity{}, fmt.Errorf("uri %q: %w", u, err)
		}
		if fqdn != segs[1] {
			return Identity{}, fmt.Errorf("uri %q: host name is not in canonical lower-case form", u)
		}
		return Identity{Kind: KindHost, Name: fqdn}, nil
	default:
		return Identity{}, fmt.Errorf("uri %q: path is not /admin/<name>, /admin/<name>/operator, /admin/<name>/viewer, /host/<fqdn> or /server", u)
	}
}

// IdentityFromContext returns the identity of the client of a gRPC call: the
// leaf of the chain that the TLS handshake verified, read with
// IdentityFromCert. It fails when the call did not arrive over TLS or the
// client presented no verified certificate, so a server configured without
// client verification can never yield an identity.
func IdentityFromContext(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, errors.New("identity from context: no grpc peer")
	}
	var info credentials.TLSInfo
	switch ai := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		info = ai
	case *credentials.TLSInfo:
		if ai == nil {
			return Identity{}, errors.New("identity from context: peer has nil tls info")
		}
		info = *ai
	default:
		return Identity{}, fmt.Errorf("identity from context: peer is not authenticated with tls (auth info %T)", p.AuthInfo)
	}
	chains := info.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return Identity{}, errors.New("identity from context: peer presented no verified client certificate")
	}
	id, err := IdentityFromCert(chains[0][0])
	if err != nil {
		return Identity{}, fmt.Errorf("identity from context: %w", err)
	}
	return id, nil
}

// maxNameLen bounds admin names; it is also the X.509 upper bound on a CN
// (ub-common-name), which repeats the name.
const maxNameLen = 64

// validateAdminName allows the characters of a SPIFFE ID path segment.
func validateAdminName(name string) error {
	if name == "" {
		return errors.New("admin name is empty")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("admin name %q is longer than %d bytes", name, maxNameLen)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("admin name %q is not allowed", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("admin name %q: character %q not allowed (want letters, digits, '.', '-', '_')", name, r)
		}
	}
	return nil
}

// normalizeFQDN lower-cases s, drops one trailing dot and checks that the
// result is a fully qualified DNS host name: at least two labels of letters,
// digits and inner hyphens, at most 63 bytes each and 253 in all, and not an
// IP address.
func normalizeFQDN(s string) (string, error) {
	fqdn := strings.ToLower(strings.TrimSuffix(s, "."))
	if err := validateDNSName(fqdn); err != nil {
		return "", fmt.Errorf("invalid fqdn %q: %w", s, err)
	}
	if !strings.Contains(fqdn, ".") {
		return "", fmt.Errorf("invalid fqdn %q: not fully qualified", s)
	}
	return fqdn, nil
}

// validateDNSName checks a lower-case host name (one label is enough).
func validateDNSName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > 253 {
		return errors.New("longer than 253 bytes")
	}
	if net.ParseIP(name) != nil {
		return errors.New("an IP address, not a host name")
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" {
			return errors.New("empty label")
		}
		if len(l) > 63 {
			return fmt.Errorf("label %q longer than 63 bytes", l)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("label %q: character %q not allowed", l, c)
			}
		}
	}
	if last := labels[len(labels)-1]; strings.Trim(last, "0123456789") == "" {
		return fmt.Errorf("top-level label %q is numeric", last)
	}
	return nil
}

// LeafFromContext returns the verified client certificate of a gRPC call
// (the leaf that IdentityFromContext reads), or nil when there is none.
func LeafFromContext(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	var info credentials.TLSInfo
	switch ai := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		info = ai
	case *credentials.TLSInfo:
		if ai == nil {
			return nil
		}
		info = *ai
	default:
		return nil
	}
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return info.State.VerifiedChains[0][0]
}
