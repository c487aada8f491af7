package metadata

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestForbiddenAddress(t *testing.T) {
	tests := []struct {
		addr string
		want string // "" allowed; else the start of the reason
	}{
		{"10.0.0.5", ""}, {"172.16.1.1", ""}, {"192.168.1.10", ""}, {"fd00::1", ""}, {"203.0.113.7", ""}, {"2001:db8::1", ""},
		{"127.0.0.1", "a loopback"}, {"127.255.0.1", "a loopback"}, {"::1", "a loopback"}, {"::ffff:127.0.0.1", "a loopback"},
		{"169.254.169.254", "a link-local"}, {"169.254.0.1", "a link-local"}, {"fe80::1", "a link-local"}, {"::ffff:169.254.169.254", "a link-local"},
		{"0.0.0.0", "an unspecified"}, {"0.1.2.3", "an unspecified"}, {"::", "an unspecified"},
		{"224.0.0.1", "a multicast"}, {"239.1.1.1", "a multicast"}, {"ff02::1", "a multicast"}, {"ff05::2", "a multicast"},
		{"255.255.255.255", "the broadcast"},
	}
	for _, tt := range tests {
		got := ForbiddenAddress(netip.MustParseAddr(tt.addr))
		if (tt.want == "") != (got == "") || !strings.HasPrefix(got, tt.want) {
			t.Errorf("ForbiddenAddress(%s) = %q, want %q", tt.addr, got, tt.want)
		}
	}
	if ForbiddenAddress(netip.Addr{}) == "" {
		t.Error("the zero Addr is allowed")
	}
}

func TestCheckURLDestination(t *testing.T) {
	private := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	tests := []struct {
		name    string
		url     string
		allowed []netip.Prefix
		wantErr string // "" valid
		wantDst bool   // a *DestinationError
	}{
		{name: "name", url: "https://pool01.contoso.com/metadata/json/1"},
		{name: "name with allowed networks: checked at dial time", url: "https://pool01.contoso.com/metadata/json/1", allowed: private},
		{name: "private literal", url: "https://10.0.0.5/metadata/json/1"},
		{name: "private literal in allowed networks", url: "https://10.0.0.5:4443/metadata/json/1", allowed: private},
		{name: "IPv6 private literal", url: "https://[fd00::5]/metadata/json/1", allowed: private},
		{name: "cloud instance metadata", url: "https://169.254.169.254/metadata/json/1", wantDst: true,
			wantErr: `metadata URL "https://169.254.169.254/metadata/json/1": refused to fetch metadata from 169.254.169.254: it is a link-local address (where cloud instance metadata is served)`},
		{name: "loopback", url: "https://127.0.0.1:8443/metadata/json/1", wantDst: true,
			wantErr: `metadata URL "https://127.0.0.1:8443/metadata/json/1": refused to fetch metadata from 127.0.0.1: it is a loopback address (this host itself)`},
		{name: "IPv6 link-local with zone", url: "https://[fe80::1%25eth0]/metadata/json/1", wantDst: true,
			wantErr: `metadata URL "https://[fe80::1%25eth0]/metadata/json/1": refused to fetch metadata from fe80::1: it is a link-local address`},
		{name: "mapped loopback", url: "https://[::ffff:127.0.0.1]/metadata/json/1", wantDst: true,
			wantErr: `metadata URL "https://[::ffff:127.0.0.1]/metadata/json/1": refused to fetch metadata from ::ffff:127.0.0.1: it is a loopback address`},
		{name: "unspecified", url: "https://0.0.0.0/metadata/json/1", wantDst: true, wantErr: `metadata URL "https://0.0.0.0/metadata/json/1": refused to fetch metadata from 0.0.0.0: it is an unspecified address`},
		{name: "multicast", url: "https://[ff02::1]/metadata/json/1", wantDst: true, wantErr: `metadata URL "https://[ff02::1]/metadata/json/1": refused to fetch metadata from ff02::1: it is a multicast address`},
		{name: "literal outside allowed networks", url: "https://192.168.1.1/metadata/json/1", allowed: private, wantDst: true,
			wantErr: `metadata URL "https://192.168.1.1/metadata/json/1": refused to fetch metadata from 192.168.1.1: it is outside the allowed metadata networks (10.0.0.0/8, fd00::/8)`},
		{name: "localhost", url: "https://localhost/metadata/json/1", wantErr: `metadata URL "https://localhost/metadata/json/1": host localhost names this host itself (loopback)`},
		{name: "a .localhost name", url: "https://pool.LOCALHOST./metadata/json/1", wantErr: `metadata URL "https://pool.LOCALHOST./metadata/json/1": host pool.LOCALHOST. names this host itself (loopback)`},
		{name: "decimal IPv4", url: "https://2130706433/metadata/json/1", wantErr: `metadata URL "https://2130706433/metadata/json/1": host 2130706433 is neither a host name nor a dotted IPv4 address`},
		{name: "short IPv4", url: "https://127.1/metadata/json/1", wantErr: `metadata URL "https://127.1/metadata/json/1": host 127.1 is neither a host name nor a dotted IPv4 address`},
		{name: "hex IPv4", url: "https://0x7f000001/metadata/json/1", wantErr: `metadata URL "https://0x7f000001/metadata/json/1": host 0x7f000001 is neither a host name nor a dotted IPv4 address`},
		{name: "http", url: "http://pool01.contoso.com/metadata/json/1", wantErr: `metadata URL "http://pool01.contoso.com/metadata/json/1" is not an https URL with a host`},
		{name: "no host", url: "https:///metadata/json/1", wantErr: `metadata URL "https:///metadata/json/1" is not an https URL with a host`},
		{name: "does not parse", url: "https://pool01.contoso.com:x/", wantErr: `metadata URL "https://pool01.contoso.com:x/" does not parse: `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckURLDestination(tt.url, tt.allowed)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckURLDestination: %v", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("CheckURLDestination error =\n%v\nwant it to start\n%s", err, tt.wantErr)
			}
			var de *DestinationError
			if errors.As(err, &de) != tt.wantDst {
				t.Errorf("errors.As(*DestinationError) = %v, want %v", !tt.wantDst, tt.wantDst)
			}
		})
	}
}
