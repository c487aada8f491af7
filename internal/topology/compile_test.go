package topology

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func compileFile(t *testing.T, file string) []*pb.HostConfig {
	t.Helper()
	top, err := Load(file, readFile(t, file))
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := Compile(top)
	if err != nil {
		t.Fatal(err)
	}
	return cfgs
}

func hostsOf(cfgs []*pb.HostConfig) map[string]*pb.HostConfig {
	m := map[string]*pb.HostConfig{}
	for _, c := range cfgs {
		m[c.Host] = c
	}
	return m
}

func checkConfig(t *testing.T, got, want *pb.HostConfig) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("configuration of %s:\n%s\nwant:\n%s", want.Host, prototext.Format(got), prototext.Format(want))
	}
}

func TestCompileContoso(t *testing.T) {
	cfgs := compileFile(t, "contoso.yaml")

	var hosts []string
	for _, c := range cfgs {
		hosts = append(hosts, c.Host)
		if c.Primary {
			t.Errorf("%s is primary; the controller chooses the primary", c.Host)
		}
	}
	if got, want := strings.Join(hosts, " "), "ex01.contoso.com ex02.contoso.com fe01.contoso.com fe02.contoso.com sp01.contoso.com"; got != want {
		t.Errorf("hosts %s, want %s (one per host, sorted)", got, want)
	}

	const (
		lyncMetadata       = "https://pool01.contoso.com/metadata/json/1"
		exchangeMetadata   = "https://autodiscover.contoso.com/autodiscover/metadata/json/1"
		sharepointMetadata = "https://sp.contoso.com/_layouts/15/metadata/json/1"
	)
	full := pb.TrustLevel_TRUST_LEVEL_FULL
	byHost := hostsOf(cfgs)

	// The Lync pool registers Exchange and SharePoint under their fixed
	// identities, by metadata URL, at trust level Full.
	checkConfig(t, byHost["fe01.contoso.com"], &pb.HostConfig{
		Host:                 "fe01.contoso.com",
		Deployment:           "pool01",
		Product:              pb.Product_PRODUCT_LYNC,
		ProductVersion:       "2015",
		Realm:                "contoso.com",
		ServiceName:          "00000004-0000-0ff1-ce00-000000000000",
		DefaultSipDomain:     "contoso.com",
		AdditionalSipDomains: []string{"fabrikam.com"},
		MetadataUrl:          lyncMetadata,
		TokenIssuer:          &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: "oauth-2026"}},
		Partners: []*pb.Partner{
			{Name: "microsoft.exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ApplicationIdentifier: "00000002-0000-0ff1-ce00-000000000000",
				MetadataUrl: exchangeMetadata, TrustLevel: full, Enabled: true},
			{Name: "microsoft.sharepoint", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ApplicationIdentifier: "00000003-0000-0ff1-ce00-000000000000",
				MetadataUrl: sharepointMetadata, TrustLevel: full, Enabled: true},
		},
		RemovePartners:          []string{"app"},
		ExchangeAutodiscoverUrl: "https://autodiscover.contoso.com/autodiscover/autodiscover.svc",
		TopologyName:            "contoso",
		Endpoint:                "pool01.contoso.com",
		// Where the pool's tokens go: the deployments that trust it.
		TrustedBy: []*pb.TrustTarget{
			{Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ServiceName: products.ExchangeID, Hosts: []string{"ex01.contoso.com", "ex02.contoso.com"}, MetadataUrl: exchangeMetadata},
			{Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ServiceName: products.SharePointID, Hosts: []string{"sp01.contoso.com"}, MetadataUrl: sharepointMetadata},
		},
	})

	// Exchange registers the Lync pool.
	checkConfig(t, byHost["ex02.contoso.com"], &pb.HostConfig{
		Host:           "ex02.contoso.com",
		Deployment:     "exchange",
		Product:        pb.Product_PRODUCT_EXCHANGE,
		ProductVersion: "2019",
		// Exchange keeps its own (blank) realm.
		ServiceName:          products.ExchangeID,
		DefaultSipDomain:     "contoso.com",
		AdditionalSipDomains: []string{"fabrikam.com"},
		MetadataUrl:          exchangeMetadata,
		Partners: []*pb.Partner{
			{Name: "LyncEnterprise-pool01", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ApplicationIdentifier: products.LyncID,
				MetadataUrl: lyncMetadata, Realm: "contoso.com", TrustLevel: full, Enabled: true},
		},
		TopologyName: "contoso",
		Endpoint:     "autodiscover.contoso.com",
		TrustedBy: []*pb.TrustTarget{
			{Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ServiceName: products.LyncID, Hosts: []string{"fe01.contoso.com", "fe02.contoso.com"}, MetadataUrl: lyncMetadata, Realm: "contoso.com"},
			{Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT, ServiceName: products.SharePointID, Hosts: []string{"sp01.contoso.com"}, MetadataUrl: sharepointMetadata},
		},
	})

	// SharePoint trusts two issuers, Lync as a trust broker.
	checkConfig(t, byHost["sp01.contoso.com"], &pb.HostConfig{
		Host:           "sp01.contoso.com",
		Deployment:     "sharepoint",
		Product:        pb.Product_PRODUCT_SHAREPOINT,
		ProductVersion: "2019",
		// SharePoint keeps its own realm, the farm id.
		ServiceName:          products.SharePointID,
		DefaultSipDomain:     "contoso.com",
		AdditionalSipDomains: []string{"fabrikam.com"},
		MetadataUrl:          sharepointMetadata,
		Partners: []*pb.Partner{
			{Name: "exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, ApplicationIdentifier: products.ExchangeID,
				MetadataUrl: exchangeMetadata, TrustLevel: full, Enabled: true},
			{Name: "pool01", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ApplicationIdentifier: products.LyncID,
				MetadataUrl: lyncMetadata, Realm: "contoso.com", TrustLevel: full, Enabled: true, TrustBroker: true},
		},
		TopologyName: "contoso",
		Endpoint:     "https://sp.contoso.com",
		TrustedBy: []*pb.TrustTarget{
			{Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ServiceName: products.LyncID, Hosts: []string{"fe01.contoso.com", "fe02.contoso.com"}, MetadataUrl: lyncMetadata, Realm: "contoso.com"},
		},
	})

	// Hosts of one deployment differ only in their name.
	fe02 := proto.CloneOf(byHost["fe02.contoso.com"])
	fe02.Host = "fe01.contoso.com"
	checkConfig(t, fe02, byHost["fe01.contoso.com"])
}

// TestCompileOverrides covers the realm default, metadata URL overrides,
// thumbprints, trust levels and disabled edges.
func TestCompileOverrides(t *testing.T) {
	byHost := hostsOf(compileFile(t, "thumbprint.yaml"))
	fe := byHost["fe1.fabrikam.com"]
	sp := byHost["sp2.fabrikam.com"]
	if fe == nil || sp == nil {
		t.Fatalf("missing hosts in %v", byHost)
	}
	checkConfig(t, fe, &pb.HostConfig{
		Host:           "fe1.fabrikam.com",
		Deployment:     "sfb",
		Product:        pb.Product_PRODUCT_LYNC,
		ProductVersion: "SE",
		// No realm declared: Lync keeps its default, the default SIP domain.
		ServiceName:      products.LyncID,
		DefaultSipDomain: "fabrikam.com",
		MetadataUrl:      "https://sfb.fabrikam.com/metadata/json/1",
		TokenIssuer:      &pb.TokenIssuer{Source: &pb.TokenIssuer_Thumbprint{Thumbprint: "3B9A1F00112233445566778899AABBCCDDEEFF01"}},
		Partners: []*pb.Partner{{
			Name: "microsoft.sharepoint", Deployment: "farm", Product: pb.Product_PRODUCT_SHAREPOINT, ApplicationIdentifier: products.SharePointID,
			MetadataUrl: "https://sp-metadata.fabrikam.com/_layouts/15/metadata/json/1", // the edge's override
			TrustLevel:  pb.TrustLevel_TRUST_LEVEL_APPLICATION, Enabled: false,
		}},
		TopologyName: "fabrikam",
		Endpoint:     "sfb.fabrikam.com",
		TrustedBy: []*pb.TrustTarget{
			{Deployment: "farm", Product: pb.Product_PRODUCT_SHAREPOINT, ServiceName: products.SharePointID, Hosts: []string{"sp1.fabrikam.com", "sp2.fabrikam.com"}, MetadataUrl: "https://intranet.fabrikam.com/_layouts/15/metadata/json/1"},
		},
	})
	checkConfig(t, sp, &pb.HostConfig{
		Host:           "sp2.fabrikam.com",
		Deployment:     "farm",
		Product:        pb.Product_PRODUCT_SHAREPOINT,
		ProductVersion: "2016",
		// SharePoint keeps its own realm.
		ServiceName:      products.SharePointID,
		DefaultSipDomain: "fabrikam.com",
		MetadataUrl:      "https://intranet.fabrikam.com/_layouts/15/metadata/json/1", // the deployment's override
		Partners: []*pb.Partner{{
			Name: "sfb", Deployment: "sfb", Product: pb.Product_PRODUCT_LYNC, ApplicationIdentifier: products.LyncID,
			MetadataUrl: "https://sfb.fabrikam.com/metadata/json/1",
			TrustLevel:  pb.TrustLevel_TRUST_LEVEL_FULL, Enabled: true, TrustBroker: true,
		}},
		TopologyName: "fabrikam",
		Endpoint:     "https://intranet.fabrikam.com/",
		TrustedBy: []*pb.TrustTarget{
			{Deployment: "sfb", Product: pb.Product_PRODUCT_LYNC, ServiceName: products.LyncID, Hosts: []string{"fe1.fabrikam.com"}, MetadataUrl: "https://sfb.fabrikam.com/metadata/json/1"},
		},
	})
}

func TestCompileDeterministic(t *testing.T) {
	top, err := Load("contoso.yaml", readFile(t, "contoso.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	first, err := Compile(top)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Compile(top)
	if err != nil {
		t.Fatal(err)
	}
	fromJSON := compileFile(t, "contoso.json")
	canonical, err := top.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	fromCanonical, err := Load("canonical.json", canonical)
	if err != nil {
		t.Fatal(err)
	}
	recompiled, err := Compile(fromCanonical)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range first {
		h := Hash(c)
		if len(h) != 64 {
			t.Fatalf("Hash(%s) = %q, want 64 hex digits", c.Host, h)
		}
		for name, other := range map[string][]*pb.HostConfig{"again": again, "from JSON": fromJSON, "from the canonical form": recompiled} {
			if got := Hash(other[i]); got != h {
				t.Errorf("%s compiled %s: hash %s, want %s", name, c.Host, got, h)
			}
		}
	}

	// Hashes are part of the protocol with agents: a change here re-pushes
	// every host of every fleet, so it must be deliberate. (Changed when
	// deployment_hosts stopped being filled: one re-push of every host, once,
	// bought a revision linear in the deployments' sizes.)
	const fe01 = "3b2fa4c0764128b6492eb98985fdf00bc08bf2d5752f3cfc050e2ac5ed54232d"
	if got := Hash(hostsOf(first)["fe01.contoso.com"]); got != fe01 {
		t.Errorf("Hash(fe01.contoso.com) = %s, want %s: did the compiled configuration change on purpose?", got, fe01)
	}

	// Changing anything changes the hash.
	c := proto.CloneOf(first[0])
	c.Partners[0].Enabled = false
	if Hash(c) == Hash(first[0]) {
		t.Error("disabling a partner did not change the hash")
	}
}

func TestCompileDoesNotModify(t *testing.T) {
	top := contoso(t)
	top.Deployments[0].Hosts[0] = "FE01.contoso.com"
	if _, err := Compile(top); err != nil {
		t.Fatal(err)
	}
	if top.Deployments[0].Hosts[0] != "FE01.contoso.com" || top.Trusts[0].Enabled != nil {
		t.Error("Compile modified its topology")
	}
}

func TestCompileInvalid(t *testing.T) {
	top := contoso(t)
	top.Deployments[1].Version = "2010"
	_, err := Compile(top)
	var e *Error
	if !errors.As(err, &e) || !strings.Contains(err.Error(), "Exchange Server 2010 on ex01.contoso.com, ex02.contoso.com does not support") {
		t.Errorf("Compile of an invalid topology: error %v", err)
	}
	if _, err := Compile(nil); err == nil {
		t.Error("Compile(nil) succeeded")
	}
}

func TestCompileHostsShareNothing(t *testing.T) {
	byHost := hostsOf(compileFile(t, "contoso.yaml"))
	byHost["fe01.contoso.com"].Partners[0].MetadataUrl = "https://changed.contoso.com/"
	byHost["fe01.contoso.com"].AdditionalSipDomains[0] = "changed.contoso.com"
	byHost["fe01.contoso.com"].TokenIssuer.Source = nil
	byHost["fe01.contoso.com"].TrustedBy[0].Hosts[0] = "changed.contoso.com"
	fe02 := byHost["fe02.contoso.com"]
	if fe02.Partners[0].MetadataUrl == "https://changed.contoso.com/" || fe02.AdditionalSipDomains[0] == "changed.contoso.com" ||
		fe02.TokenIssuer.Source == nil || fe02.TrustedBy[0].Hosts[0] == "changed.contoso.com" {
		t.Error("changing one host's configuration changed another's")
	}
}
