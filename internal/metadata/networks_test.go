package metadata

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// TestAllowedNetworksFromContext: a topology's metadataNetworks, carried in
// the context, narrow the dial guard on top of the Fetcher's own networks.
func TestAllowedNetworksFromContext(t *testing.T) {
	nets, err := ParseNetworks([]string{"10.20.0.7/16"})
	if err != nil || len(nets) != 1 || nets[0].String() != "10.20.0.0/16" {
		t.Fatalf("ParseNetworks = %v, %v", nets, err)
	}
	if _, err := ParseNetworks([]string{"10.20.0.0/33"}); err == nil || !strings.Contains(err.Error(), `"10.20.0.0/33"`) {
		t.Errorf("a bad prefix: %v", err)
	}
	ctx := WithAllowedNetworks(context.Background(), nets)
	if got := allowedFrom(ctx); len(got) != 1 || got[0] != nets[0] {
		t.Fatalf("allowedFrom = %v", got)
	}
	if got := allowedFrom(WithAllowedNetworks(context.Background(), nil)); got != nil {
		t.Errorf("empty networks narrow: %v", got)
	}
	own := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	guard := guardedControl(own, allowedFrom(ctx))
	if err := guard("tcp", "10.20.1.2:443", nil); err != nil {
		t.Errorf("an address inside both: %v", err)
	}
	var de *DestinationError
	if err := guard("tcp", "10.30.1.2:443", nil); !errors.As(err, &de) || !strings.Contains(de.Reason, "10.20.0.0/16") {
		t.Errorf("an address inside the Fetcher's networks, outside the topology's: %v", err)
	}
	if err := guard("tcp", "169.254.169.254:80", nil); !errors.As(err, &de) {
		t.Errorf("link-local: %v", err)
	}
}
