package topology

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func compileTopology(t *testing.T, top *Topology) []*pb.HostConfig {
	t.Helper()
	cfgs, err := Compile(top)
	if err != nil {
		t.Fatal(err)
	}
	return cfgs
}

// planLines renders a plan as "host: item action: detail" lines, and
// "host: unchanged" for hosts without items.
func planLines(plans []*pb.HostPlan) []string {
	var out []string
	for _, p := range plans {
		if len(p.Items) == 0 {
			out = append(out, p.Host+": unchanged")
		}
		for _, it := range p.Items {
			out = append(out, fmt.Sprintf("%s: %s %s: %s", p.Host, it.Item, it.Action, it.Detail))
		}
	}
	return out
}

func TestPlan(t *testing.T) {
	const (
		exchangeMetadata   = "https://autodiscover.contoso.com/autodiscover/metadata/json/1"
		sharepointMetadata = "https://sp.contoso.com/_layouts/15/metadata/json/1"
	)
	tests := []struct {
		name string
		edit func(*Topology)
		want []string
	}{
		{"nothing", func(*Topology) {}, []string{
			"ex01.contoso.com: unchanged",
			"ex02.contoso.com: unchanged",
			"fe01.contoso.com: unchanged",
			"fe02.contoso.com: unchanged",
			"sp01.contoso.com: unchanged",
		}},
		{"add a partner", func(t *Topology) { t.Trusts = append(t.Trusts, Trust{From: "sharepoint", To: "exchange"}) }, []string{
			"ex01.contoso.com: partner/SharePointEnterprise-sharepoint create: Configure-EnterprisePartnerApplication.ps1 -ApplicationType SharePoint -AuthMetadataUrl " + sharepointMetadata + " (as SharePointEnterprise-sharepoint)",
			"ex02.contoso.com: partner/SharePointEnterprise-sharepoint create: Configure-EnterprisePartnerApplication.ps1 -ApplicationType SharePoint -AuthMetadataUrl " + sharepointMetadata + " (as SharePointEnterprise-sharepoint)",
			"fe01.contoso.com: unchanged",
			"fe02.contoso.com: unchanged",
			"sp01.contoso.com: trust-probes update: probe exchange deployment exchange at ex01.contoso.com, ex02.contoso.com",
		}},
		{"update a partner", func(t *Topology) { t.Trusts[0].TrustLevel = "User" }, []string{
			"ex01.contoso.com: unchanged",
			"ex02.contoso.com: unchanged",
			"fe01.contoso.com: partner/microsoft.exchange update: Set-CsPartnerApplication -Identity microsoft.exchange -ApplicationTrustLevel User (trust level Full -> User)",
			"fe02.contoso.com: partner/microsoft.exchange update: Set-CsPartnerApplication -Identity microsoft.exchange -ApplicationTrustLevel User (trust level Full -> User)",
			"sp01.contoso.com: unchanged",
		}},
		{"remove a partner", func(t *Topology) { t.Trusts = append(t.Trusts[:1], t.Trusts[2:]...) }, []string{
			"ex01.contoso.com: unchanged",
			"ex02.contoso.com: unchanged",
			"fe01.contoso.com: partner/microsoft.sharepoint remove: Remove-CsPartnerApplication -Identity microsoft.sharepoint",
			"fe02.contoso.com: partner/microsoft.sharepoint remove: Remove-CsPartnerApplication -Identity microsoft.sharepoint",
			"sp01.contoso.com: trust-probes update: stop probing lync deployment pool01",
		}},
		{"move a partner's metadata and disable it", func(t *Topology) {
			t.Trusts[2].MetadataURL = "https://pool01-metadata.contoso.com/metadata/json/1"
			no := false
			t.Trusts[0].Enabled = &no
		}, []string{
			"ex01.contoso.com: partner/LyncEnterprise-pool01 update: Set-PartnerApplication -Identity LyncEnterprise-pool01 -AuthMetadataUrl https://pool01-metadata.contoso.com/metadata/json/1 (metadata URL https://pool01.contoso.com/metadata/json/1 -> https://pool01-metadata.contoso.com/metadata/json/1)",
			"ex02.contoso.com: partner/LyncEnterprise-pool01 update: Set-PartnerApplication -Identity LyncEnterprise-pool01 -AuthMetadataUrl https://pool01-metadata.contoso.com/metadata/json/1 (metadata URL https://pool01.contoso.com/metadata/json/1 -> https://pool01-metadata.contoso.com/metadata/json/1)",
			"fe01.contoso.com: partner/microsoft.exchange update: Set-CsPartnerApplication -Identity microsoft.exchange -Enabled $false (enabled true -> false)",
			"fe02.contoso.com: partner/microsoft.exchange update: Set-CsPartnerApplication -Identity microsoft.exchange -Enabled $false (enabled true -> false)",
			"sp01.contoso.com: unchanged",
		}},
		{"hosts come and go", func(t *Topology) {
			t.Deployments[0].Hosts = append(t.Deployments[0].Hosts, "fe03.contoso.com")
			t.Deployments[1].Hosts = t.Deployments[1].Hosts[:1]
		}, []string{
			"ex01.contoso.com: trust-probes update: probe lync deployment pool01 at fe01.contoso.com, fe02.contoso.com, fe03.contoso.com in realm contoso.com (was lync deployment pool01 at fe01.contoso.com, fe02.contoso.com in realm contoso.com)",
			"ex02.contoso.com: host remove: ex02.contoso.com is no longer in the topology (it was in exchange deployment exchange): s2strust stops managing it and changes nothing on it",
			"fe01.contoso.com: trust-probes update: probe exchange deployment exchange at ex01.contoso.com (was exchange deployment exchange at ex01.contoso.com, ex02.contoso.com)",
			"fe02.contoso.com: trust-probes update: probe exchange deployment exchange at ex01.contoso.com (was exchange deployment exchange at ex01.contoso.com, ex02.contoso.com)",
			"fe03.contoso.com: host create: manage fe03.contoso.com as a host of lync deployment pool01 (Lync / Skype for Business Server 2015; own metadata https://pool01.contoso.com/metadata/json/1)",
			"fe03.contoso.com: oauth-configuration create: Set-CsOAuthConfiguration -ServiceName 00000004-0000-0ff1-ce00-000000000000 -Realm contoso.com -ExchangeAutodiscoverUrl https://autodiscover.contoso.com/autodiscover/autodiscover.svc",
			"fe03.contoso.com: token-issuer create: Import-CsCertificate -Identity global -Type OAuthTokenIssuer -Path <PFX from secret oauth-2026> -Password <its password>",
			"fe03.contoso.com: partner/app remove: Remove-CsPartnerApplication -Identity app when present (listed in removePartners)",
			"fe03.contoso.com: partner/microsoft.exchange create: New-CsPartnerApplication -Identity microsoft.exchange -MetadataUrl " + exchangeMetadata + " -ApplicationTrustLevel Full",
			"fe03.contoso.com: partner/microsoft.sharepoint create: New-CsPartnerApplication -Identity microsoft.sharepoint -MetadataUrl " + sharepointMetadata + " -ApplicationTrustLevel Full",
			"fe03.contoso.com: trust-probes create: probe exchange deployment exchange at ex01.contoso.com; probe sharepoint deployment sharepoint at sp01.contoso.com",
			"sp01.contoso.com: trust-probes update: probe lync deployment pool01 at fe01.contoso.com, fe02.contoso.com, fe03.contoso.com in realm contoso.com (was lync deployment pool01 at fe01.contoso.com, fe02.contoso.com in realm contoso.com)",
		}},
		{"realm, certificate and stale partners", func(t *Topology) {
			t.Realm = "contoso.local"
			t.Deployments[0].TokenIssuer = &TokenIssuer{Thumbprint: "3b9a1f00112233445566778899aabbccddeeff01"}
			t.Deployments[0].RemovePartners = []string{"old-app"}
			t.Deployments[0].ExchangeAutodiscoverURL = ""
			t.Deployments = t.Deployments[:2]
			t.Trusts = t.Trusts[:1]
		}, []string{
			"ex01.contoso.com: partner/LyncEnterprise-pool01 remove: Remove-PartnerApplication -Identity LyncEnterprise-pool01",
			"ex01.contoso.com: trust-probes update: probe lync deployment pool01 at fe01.contoso.com, fe02.contoso.com in realm contoso.local (was lync deployment pool01 at fe01.contoso.com, fe02.contoso.com in realm contoso.com); stop probing sharepoint deployment sharepoint",
			"ex02.contoso.com: partner/LyncEnterprise-pool01 remove: Remove-PartnerApplication -Identity LyncEnterprise-pool01",
			"ex02.contoso.com: trust-probes update: probe lync deployment pool01 at fe01.contoso.com, fe02.contoso.com in realm contoso.local (was lync deployment pool01 at fe01.contoso.com, fe02.contoso.com in realm contoso.com); stop probing sharepoint deployment sharepoint",
			"fe01.contoso.com: host update: no longer removes partner app",
			"fe01.contoso.com: oauth-configuration update: Set-CsOAuthConfiguration -Realm contoso.local -ExchangeAutodiscoverUrl $null (realm contoso.com -> contoso.local; Exchange autodiscover URL https://autodiscover.contoso.com/autodiscover/autodiscover.svc -> (none)) [disruptive: changes the realm of pool01]",
			"fe01.contoso.com: token-issuer update: replace the token-issuer certificate (secret oauth-2026 -> thumbprint 3B9A1F00112233445566778899AABBCCDDEEFF01): Set-CsCertificate -Identity global -Type OAuthTokenIssuer -Thumbprint 3B9A1F00112233445566778899AABBCCDDEEFF01",
			"fe01.contoso.com: partner/microsoft.sharepoint remove: Remove-CsPartnerApplication -Identity microsoft.sharepoint",
			"fe01.contoso.com: partner/old-app remove: Remove-CsPartnerApplication -Identity old-app when present (listed in removePartners)",
			"fe01.contoso.com: trust-probes update: stop probing exchange deployment exchange; stop probing sharepoint deployment sharepoint",
			"fe02.contoso.com: host update: no longer removes partner app",
			"fe02.contoso.com: oauth-configuration update: Set-CsOAuthConfiguration -Realm contoso.local -ExchangeAutodiscoverUrl $null (realm contoso.com -> contoso.local; Exchange autodiscover URL https://autodiscover.contoso.com/autodiscover/autodiscover.svc -> (none)) [disruptive: changes the realm of pool01]",
			"fe02.contoso.com: token-issuer update: replace the token-issuer certificate (secret oauth-2026 -> thumbprint 3B9A1F00112233445566778899AABBCCDDEEFF01): Set-CsCertificate -Identity global -Type OAuthTokenIssuer -Thumbprint 3B9A1F00112233445566778899AABBCCDDEEFF01",
			"fe02.contoso.com: partner/microsoft.sharepoint remove: Remove-CsPartnerApplication -Identity microsoft.sharepoint",
			"fe02.contoso.com: partner/old-app remove: Remove-CsPartnerApplication -Identity old-app when present (listed in removePartners)",
			"fe02.contoso.com: trust-probes update: stop probing exchange deployment exchange; stop probing sharepoint deployment sharepoint",
			"sp01.contoso.com: host remove: sp01.contoso.com is no longer in the topology (it was in sharepoint deployment sharepoint): s2strust stops managing it and changes nothing on it",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			from := compileTopology(t, contoso(t))
			top := contoso(t)
			tc.edit(top)
			to := compileTopology(t, top)
			plans := Plan(from, to)
			if got := planLines(plans); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			checkPlanHashes(t, plans, from, to)
		})
	}
}

// checkPlanHashes checks each host plan's hashes and that a host has items
// exactly when its hash changes.
func checkPlanHashes(t *testing.T, plans []*pb.HostPlan, from, to []*pb.HostConfig) {
	t.Helper()
	fm, tm := hostsOf(from), hostsOf(to)
	for _, p := range plans {
		var fh, th string
		if c := fm[p.Host]; c != nil {
			fh = Hash(c)
		}
		if c := tm[p.Host]; c != nil {
			th = Hash(c)
		}
		if p.FromHash != fh || p.ToHash != th {
			t.Errorf("%s: hashes %q -> %q, want %q -> %q", p.Host, p.FromHash, p.ToHash, fh, th)
		}
		if (len(p.Items) > 0) != (fh != th) {
			t.Errorf("%s: %d items, but hashes %q -> %q", p.Host, len(p.Items), fh, th)
		}
	}
}

func TestPlanNewFleet(t *testing.T) {
	to := compileFile(t, "contoso.yaml")
	plans := Plan(nil, to)
	if len(plans) != len(to) {
		t.Fatalf("%d host plans for %d hosts", len(plans), len(to))
	}
	want := map[string][]string{
		"ex01.contoso.com": {"host create", "oauth-configuration create", "partner/LyncEnterprise-pool01 create", "trust-probes create"},
		"fe01.contoso.com": {"host create", "oauth-configuration create", "token-issuer create", "partner/app remove", "partner/microsoft.exchange create", "partner/microsoft.sharepoint create", "trust-probes create"},
		"sp01.contoso.com": {"host create", "oauth-configuration create", "partner/exchange create", "partner/pool01 create", "trust-probes create"},
	}
	for _, p := range plans {
		if p.FromHash != "" || p.ToHash == "" || p.Deployment == "" || p.Product == pb.Product_PRODUCT_UNSPECIFIED {
			t.Errorf("%s: plan header %v", p.Host, p)
		}
		w, ok := want[p.Host]
		if !ok {
			continue
		}
		var got []string
		for _, it := range p.Items {
			got = append(got, it.Item+" "+it.Action)
		}
		if strings.Join(got, ", ") != strings.Join(w, ", ") {
			t.Errorf("%s: items %s, want %s", p.Host, strings.Join(got, ", "), strings.Join(w, ", "))
		}
	}
	sp := plans[len(plans)-1]
	if sp.Host != "sp01.contoso.com" || sp.Items[3].Detail != "New-SPTrustedSecurityTokenIssuer -Name pool01 -MetadataEndPoint https://pool01.contoso.com/metadata/json/1 -IsTrustBroker" {
		t.Errorf("sp01 trusts Lync with %v, want it as a trust broker", sp.Items[3])
	}

	// A fleet that goes away entirely.
	for _, p := range Plan(to, nil) {
		if len(p.Items) != 1 || p.Items[0].Action != ActionRemove || p.ToHash != "" {
			t.Errorf("%s: plan to nothing %v", p.Host, p)
		}
	}
}

func TestPlanIgnoresPrimary(t *testing.T) {
	from := compileFile(t, "contoso.yaml")
	to := compileFile(t, "contoso.yaml")
	to[0].Primary = true
	p := Plan(from, to)[0]
	if len(p.Items) != 0 || p.FromHash != p.ToHash || p.ToHash != Hash(from[0]) {
		t.Errorf("a new primary changed the plan: %v", p)
	}
}

// TestPlanSeesEveryField changes each field of a host configuration, and of
// its partners, in turn and checks that the plan reports it, so that no
// change reaches a host unannounced.
func TestPlanSeesEveryField(t *testing.T) {
	base := hostsOf(compileFile(t, "contoso.yaml"))["fe01.contoso.com"]
	check := func(t *testing.T, edit func(*pb.HostConfig)) {
		t.Helper()
		changed := proto.CloneOf(base)
		edit(changed)
		if proto.Equal(changed, base) {
			t.Fatal("the edit changed nothing")
		}
		if p := Plan([]*pb.HostConfig{base}, []*pb.HostConfig{changed})[0]; len(p.Items) == 0 {
			t.Error("the change planned nothing")
		}
	}
	fields := base.ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch fd.Name() {
		case "primary", "host", "confirm_realm_change": // not planned: the controller's choice, the key, and a confirmation
		case "deployment_hosts": // deprecated: Compile leaves it empty
		case "partners", "trusted_by":
			pfields := fd.Message().Fields()
			for j := range pfields.Len() {
				pfd := pfields.Get(j)
				t.Run(string(fd.Name())+"."+string(pfd.Name()), func(t *testing.T) {
					check(t, func(c *pb.HostConfig) {
						change(t, c.ProtoReflect().Get(fd).List().Get(0).Message(), pfd)
					})
				})
			}
		default:
			t.Run(string(fd.Name()), func(t *testing.T) {
				check(t, func(c *pb.HostConfig) { change(t, c.ProtoReflect(), fd) })
			})
		}
	}
}

// change sets field fd of m to a different value.
func change(t *testing.T, m protoreflect.Message, fd protoreflect.FieldDescriptor) {
	switch {
	case fd.IsList() && fd.Kind() == protoreflect.StringKind:
		m.Mutable(fd).List().Append(protoreflect.ValueOfString("extra.contoso.com"))
	case fd.IsList() || fd.IsMap():
		t.Fatalf("no change defined for %s", fd.FullName())
	case fd.Kind() == protoreflect.StringKind:
		m.Set(fd, protoreflect.ValueOfString(m.Get(fd).String()+"-changed"))
	case fd.Kind() == protoreflect.EnumKind:
		m.Set(fd, protoreflect.ValueOfEnum(m.Get(fd).Enum()%3+1))
	case fd.Kind() == protoreflect.BoolKind:
		m.Set(fd, protoreflect.ValueOfBool(!m.Get(fd).Bool()))
	case fd.Message() != nil && fd.Message().FullName() == "s2strust.v1.NextTokenIssuer":
		m.Set(fd, protoreflect.ValueOfMessage((&pb.NextTokenIssuer{Secret: "next@2", SecretThumbprint: strings.Repeat("CD", 20)}).ProtoReflect()))
	case fd.Message() != nil && fd.Message().FullName() == "s2strust.v1.TokenIssuer":
		m.Set(fd, protoreflect.ValueOfMessage((&pb.TokenIssuer{Source: &pb.TokenIssuer_Thumbprint{Thumbprint: strings.Repeat("AB", 20)}}).ProtoReflect()))
	default:
		t.Fatalf("no change defined for %s", fd.FullName())
	}
}

// A fleet's plan, spread over the CPUs, is each host's plan in host
// order: hosts added, removed, changed and unchanged alike.
func TestPlanOfAFleetIsEveryHostsPlanInOrder(t *testing.T) {
	from := compileTopology(t, bigContoso(t, 1500))
	// 100 more hosts in each deployment, and some of the first gone.
	to := slices.Delete(compileTopology(t, bigContoso(t, 1600)), 10, 17)
	got := Plan(from, to)

	fm, tm := byHost(from), byHost(to)
	var hosts []string
	for h := range fm {
		hosts = append(hosts, h)
	}
	for h := range tm {
		if fm[h] == nil {
			hosts = append(hosts, h)
		}
	}
	slices.Sort(hosts)
	if len(got) != len(hosts) {
		t.Fatalf("%d host plans, want %d", len(got), len(hosts))
	}
	var added, removed, changed, same int
	for i, h := range hosts {
		want := planHost(h, fm[h], tm[h])
		if !proto.Equal(got[i], want) {
			t.Fatalf("plan %d is %v,\nwant %v", i, got[i], want)
		}
		switch {
		case fm[h] == nil:
			added++
		case tm[h] == nil:
			removed++
		case len(want.Items) > 0:
			changed++
		default:
			same++
		}
	}
	if added == 0 || removed == 0 || changed == 0 || same == 0 {
		t.Errorf("plan of %d added, %d removed, %d changed, %d unchanged hosts: want some of each", added, removed, changed, same)
	}
}
