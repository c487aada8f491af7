package topology

import (
	"strings"
	"testing"
)

// TestRealmsPerDeployment: a realm is set only where the topology declares
// it; Exchange and SharePoint need confirmRealmChange; the top-level realm
// is Lync's only.
func TestRealmsPerDeployment(t *testing.T) {
	withDeploymentField := func(name, field string) []byte {
		doc := string(readFile(t, "contoso.yaml"))
		// Insert field into the flow mapping of deployment name.
		i := strings.Index(doc, "{name: "+name+",")
		if i < 0 {
			t.Fatalf("contoso.yaml has no flow deployment %s", name)
		}
		i += len("{name: " + name + ",")
		return []byte(doc[:i] + " " + field + "," + doc[i:])
	}
	for _, tc := range []struct {
		name, deployment, field string
		want                    []string
	}{
		{"exchange realm without confirmation", "exchange", "realm: fabrikam.com", []string{
			`deployments[1].realm: "fabrikam.com": exchange deployment "exchange": Exchange's AuthConfig realm is normally blank (tokens for every accepted domain are accepted); -Realm is only for a non-accepted domain; add confirmRealmChange: true to the deployment to change it`}},
		{"sharepoint realm without confirmation", "sharepoint", "realm: fabrikam.com", []string{
			`deployments[2].realm: "fabrikam.com": sharepoint deployment "sharepoint": SharePoint's realm is the farm id, and changing it on a live farm breaks its existing app principals; add confirmRealmChange: true to the deployment to change it`}},
		{"confirmation without a realm", "exchange", "confirmRealmChange: true", []string{
			`deployments[1].confirmRealmChange: "true": confirms a realm change, but deployment "exchange" declares no realm`}},
		{"confirmed sharepoint realm", "sharepoint", "realm: 2d4a9c1e-7b3f-4f0a-9d1e-5c6b7a8f9e0d, confirmRealmChange: true", nil},
		{"not a realm", "sharepoint", "realm: 'two words', confirmRealmChange: true", []string{
			`deployments[2].realm: "two words": not a realm; accepted: a DNS name such as contoso.com, or a GUID such as a SharePoint farm id`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load("contoso.yaml", withDeploymentField(tc.deployment, tc.field))
			var got []string
			if err != nil {
				for _, v := range violations(t, err) {
					// Positions are not the point here.
					if _, rest, ok := strings.Cut(v, ": "); ok && strings.HasPrefix(v, "contoso.yaml:") {
						v = rest
					}
					got = append(got, v)
				}
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}

	// Compiled: only Lync carries the top-level realm; a confirmed
	// SharePoint realm reaches the farm and the partners that register it.
	top, err := Load("contoso.yaml", withDeploymentField("sharepoint", "realm: 2d4a9c1e-7b3f-4f0a-9d1e-5c6b7a8f9e0d, confirmRealmChange: true"))
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := Compile(top)
	if err != nil {
		t.Fatal(err)
	}
	by := hostsOf(cfgs)
	if r := by["ex01.contoso.com"].GetRealm(); r != "" {
		t.Errorf("exchange realm = %q, want none set", r)
	}
	if r := by["fe01.contoso.com"].GetRealm(); r != "contoso.com" {
		t.Errorf("lync realm = %q, want the top-level contoso.com", r)
	}
	sp := by["sp01.contoso.com"]
	if sp.GetRealm() != "2d4a9c1e-7b3f-4f0a-9d1e-5c6b7a8f9e0d" || !sp.GetConfirmRealmChange() {
		t.Errorf("sharepoint realm = %q confirm %v", sp.GetRealm(), sp.GetConfirmRealmChange())
	}
	for _, p := range by["fe01.contoso.com"].GetPartners() {
		if p.GetName() == "microsoft.sharepoint" && p.GetRealm() != "2d4a9c1e-7b3f-4f0a-9d1e-5c6b7a8f9e0d" {
			t.Errorf("lync's sharepoint partner realm = %q, want the declared farm realm", p.GetRealm())
		}
		if p.GetName() == "microsoft.exchange" && p.GetRealm() != "" {
			t.Errorf("lync's exchange partner realm = %q, want it learned from the metadata", p.GetRealm())
		}
	}
}

// TestExistingDefaultIssuer: {existing: Default} is Lync's; elsewhere it is
// refused naming the product.
func TestExistingDefaultIssuer(t *testing.T) {
	doc := strings.Replace(string(readFile(t, "contoso.yaml")), "tokenIssuer: {secret: oauth-2026}", "tokenIssuer: {existing: default}", 1)
	top, err := Load("contoso.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if got := top.Deployments[0].TokenIssuer.Existing; got != "Default" {
		t.Errorf("existing = %q, want it normalized to Default", got)
	}
	cfgs, err := Compile(top)
	if err != nil {
		t.Fatal(err)
	}
	if ti := hostsOf(cfgs)["fe01.contoso.com"].GetTokenIssuer(); ti.GetExisting() != "Default" {
		t.Errorf("compiled token issuer = %v", ti)
	}
	bad := strings.Replace(string(readFile(t, "contoso.yaml")), "autodiscoverFqdn: autodiscover.contoso.com,", "autodiscoverFqdn: autodiscover.contoso.com, tokenIssuer: {existing: Default},", 1)
	_, err = Load("contoso.yaml", []byte(bad))
	if err == nil || !strings.Contains(err.Error(), `deployments[1].tokenIssuer.existing: "Default": Exchange Server has no certificate of type Default`) {
		t.Errorf("existing Default on exchange: %v", err)
	}
	_, err = Load("contoso.yaml", []byte(strings.Replace(doc, "{existing: default}", "{existing: OAuth}", 1)))
	if err == nil || !strings.Contains(err.Error(), `deployments[0].tokenIssuer.existing: "OAuth": unknown certificate type; accepted: Default`) {
		t.Errorf("existing OAuth: %v", err)
	}
}

// TestMetadataDestinations: a metadata URL no partner's metadata can be at
// (the cloud instance metadata service, loopback) is refused at apply,
// naming the field; metadataNetworks narrows the allowed addresses further.
func TestMetadataDestinations(t *testing.T) {
	base := string(readFile(t, "contoso.yaml"))
	edge := "  - {from: exchange, to: sharepoint}"
	if !strings.Contains(base, edge) {
		t.Fatal("contoso.yaml changed: no exchange → sharepoint edge")
	}
	for _, tc := range []struct{ name, doc, want string }{
		{"instance metadata", strings.Replace(base, edge, "  - {from: exchange, to: sharepoint, metadataUrl: 'https://169.254.169.254/metadata/json/1'}", 1),
			`trusts[4].metadataUrl: "https://169.254.169.254/metadata/json/1": a link-local address (where cloud instance metadata is served): no partner's metadata can be there`},
		{"loopback", strings.Replace(base, edge, "  - {from: exchange, to: sharepoint, metadataUrl: 'https://127.0.0.1/metadata/json/1'}", 1),
			`trusts[4].metadataUrl: "https://127.0.0.1/metadata/json/1": a loopback address (this host itself)`},
		{"localhost", strings.Replace(base, edge, "  - {from: exchange, to: sharepoint, metadataUrl: 'https://localhost/metadata/json/1'}", 1),
			`trusts[4].metadataUrl: "https://localhost/metadata/json/1": metadata URL "https://localhost/metadata/json/1": host localhost names this host itself (loopback)`},
		{"outside metadataNetworks", strings.Replace(strings.Replace(base, edge, "  - {from: exchange, to: sharepoint, metadataUrl: 'https://10.9.0.5/metadata/json/1'}", 1),
			"deployments:", "metadataNetworks: [10.20.0.0/16]\ndeployments:", 1),
			`trusts[4].metadataUrl: "https://10.9.0.5/metadata/json/1": outside the allowed metadata networks (10.20.0.0/16)`},
		{"not a prefix", strings.Replace(base, "deployments:", "metadataNetworks: [10.20.0.0/33]\ndeployments:", 1),
			`metadataNetworks[0]: "10.20.0.0/33": not a CIDR prefix`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load("contoso.yaml", []byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	// A private address inside metadataNetworks is fine, and the networks
	// reach every host's configuration.
	doc := strings.Replace(strings.Replace(base, edge, "  - {from: exchange, to: sharepoint, metadataUrl: 'https://10.20.0.5/metadata/json/1'}", 1),
		"deployments:", "metadataNetworks: [10.20.0.7/16]\ndeployments:", 1)
	top, err := Load("contoso.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := Compile(top)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cfgs {
		if strings.Join(c.GetMetadataNetworks(), ",") != "10.20.0.0/16" {
			t.Errorf("%s: metadata networks %v, want [10.20.0.0/16]", c.GetHost(), c.GetMetadataNetworks())
		}
	}
}

// TestProbeAccounts: the products' test cmdlets' accounts reach every host;
// values that are no SIP URI or mailbox, or could be read as code, are
// refused naming the field.
func TestProbeAccounts(t *testing.T) {
	base := string(readFile(t, "contoso.yaml"))
	with := func(v string) []byte { return []byte(strings.Replace(base, "deployments:", v+"\ndeployments:", 1)) }
	top, err := Load("contoso.yaml", with("probeAccounts: {sipUri: 'sip:s2sprobe@contoso.com', mailbox: s2sprobe@contoso.com}"))
	if err != nil {
		t.Fatal(err)
	}
	cfgs, err := Compile(top)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cfgs {
		if c.GetProbeSipUri() != "sip:s2sprobe@contoso.com" || c.GetProbeMailbox() != "s2sprobe@contoso.com" {
			t.Errorf("%s: probe accounts %q %q", c.GetHost(), c.GetProbeSipUri(), c.GetProbeMailbox())
		}
	}
	for _, tc := range []struct{ doc, want string }{
		{"probeAccounts: {sipUri: 's2sprobe@contoso.com'}", `probeAccounts.sipUri: "s2sprobe@contoso.com": a SIP URI is sip:user@domain`},
		{"probeAccounts: {sipUri: 'sip:a$(b)@contoso.com'}", `probeAccounts.sipUri: "sip:a$(b)@contoso.com"`},
		{"probeAccounts: {mailbox: 'x; Stop-Computer'}", `probeAccounts.mailbox: "x; Stop-Computer": a mailbox is user@domain`},
	} {
		if _, err := Load("contoso.yaml", with(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.doc, err, tc.want)
		}
	}
}
