package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/s2strust/s2strust/agent/driver/sim"
	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/certs"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// trustReport fetches the trust report, by "from→to".
func (f *fleet) trustReport() map[string]*pb.TrustEdge {
	f.t.Helper()
	resp, err := pb.NewFleetServiceClient(f.conn).GetTrustReport(context.Background(), &pb.GetTrustReportRequest{})
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]*pb.TrustEdge{}
	for _, e := range resp.GetEdges() {
		out[e.GetFrom()+"→"+e.GetTo()] = e
	}
	return out
}

// waitEdges waits until every edge's state satisfies want.
func (f *fleet) waitEdges(what string, want func(edge string, e *pb.TrustEdge) bool) map[string]*pb.TrustEdge {
	f.t.Helper()
	var last map[string]*pb.TrustEdge
	waitFor(f.t, waitTimeout, what, func() (bool, string) {
		last = f.trustReport()
		if len(last) != 5 {
			return false, fmt.Sprintf("%d edges", len(last))
		}
		for k, e := range last {
			if !want(k, e) {
				return false, fmt.Sprintf("%s: ok=%v problems=%v", k, e.GetOk(), e.GetProblems())
			}
		}
		return true, ""
	})
	return last
}

func allOK(string, *pb.TrustEdge) bool { return true }

func TestEveryTrustEdgeIsProvedWithARealToken(t *testing.T) {
	f := startFleet(t, examples.Contoso, agentOpts{})
	rev := f.apply(examples.Contoso)
	f.waitConverged(rev)
	edges := f.waitEdges("every edge to pass", func(_ string, e *pb.TrustEdge) bool { return e.GetOk() })

	want := map[string]struct {
		name, id string
		probes   int
	}{
		"exchange→pool01":   {"microsoft.exchange", "00000002-0000-0ff1-ce00-000000000000", 4},
		"sharepoint→pool01": {"microsoft.sharepoint", "00000003-0000-0ff1-ce00-000000000000", 2},
		// Configure-EnterprisePartnerApplication.ps1 names it: LyncEnterprise-….
		"pool01→exchange":     {"LyncEnterprise-", "00000004-0000-0ff1-ce00-000000000000", 4},
		"pool01→sharepoint":   {"pool01", "00000004-0000-0ff1-ce00-000000000000", 2},
		"exchange→sharepoint": {"exchange", "00000002-0000-0ff1-ce00-000000000000", 2},
	}
	for k, w := range want {
		e := edges[k]
		if e == nil {
			t.Errorf("no edge %s", k)
			continue
		}
		nameOK := e.GetPartnerName() == w.name || (strings.HasSuffix(w.name, "-") && strings.HasPrefix(e.GetPartnerName(), w.name))
		if !nameOK || e.GetRegistration().GetApplicationIdentifier() != w.id || !e.GetRegistration().GetEnabled() {
			t.Errorf("%s: registration %v under %q, want %s with identifier %s, enabled", k, e.GetRegistration(), e.GetPartnerName(), w.name, w.id)
		}
		if !e.GetKeyInMetadata() || !e.GetKeyInPartnerCache() || !e.GetRealmsMatch() || e.GetIssuerThumbprint() == "" || e.GetIssuerNotAfter() == nil {
			t.Errorf("%s: key in metadata %v, in partner cache %v, realms match %v, issuer %q expires %v",
				k, e.GetKeyInMetadata(), e.GetKeyInPartnerCache(), e.GetRealmsMatch(), e.GetIssuerThumbprint(), e.GetIssuerNotAfter())
		}
		if len(e.GetProbes()) != w.probes {
			t.Errorf("%s: %d probes, want %d (every issuing host to every receiving host)", k, len(e.GetProbes()), w.probes)
		}
		for _, p := range e.GetProbes() {
			if !p.GetProbe().GetOk() {
				t.Errorf("%s: probe %s → %s failed: %s", k, p.GetFromHost(), p.GetProbe().GetTargetHost(), p.GetProbe().GetReason())
			}
		}
	}

	// The edges pass across three realms, none of which s2strust set:
	// Exchange's stays blank (its metadata says "*"), SharePoint's stays
	// its farm id, Lync's is the declared contoso.com.
	fl := pb.NewFleetServiceClient(f.conn)
	for host, want := range map[string]func(string) bool{
		"ex01.contoso.com": func(r string) bool { return r == "" },
		"sp01.contoso.com": func(r string) bool { return len(r) == 36 && strings.Count(r, "-") == 4 && strings.ToLower(r) == r },
		"fe01.contoso.com": func(r string) bool { return r == "contoso.com" },
	} {
		h, err := fl.GetHost(context.Background(), &pb.GetHostRequest{Host: host})
		if err != nil {
			t.Fatal(err)
		}
		if r := h.GetStatus().GetOauth().GetRealm(); !want(r) {
			t.Errorf("%s reports realm %q", host, r)
		}
	}

	// A realm declared for Exchange without confirmRealmChange is refused,
	// naming the deployment and the realm it has now; nothing is stored.
	bad := bytes.Replace(examples.Contoso, []byte("autodiscoverFqdn: autodiscover.contoso.com,"), []byte("autodiscoverFqdn: autodiscover.contoso.com, realm: fabrikam.com,"), 1)
	_, err := pb.NewTopologyServiceClient(f.conn).ApplyTopology(context.Background(), &pb.ApplyTopologyRequest{Immediate: true, Document: bad, Filename: "contoso.yaml"})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `exchange deployment "exchange"`) ||
		!regexp.MustCompile(`its current realm, as ex0[12]\.contoso\.com reports it: \(blank\)`).MatchString(err.Error()) {
		t.Errorf("unconfirmed exchange realm: %v, want INVALID_ARGUMENT naming the deployment and its current (blank) realm", err)
	}
	if cur, err := pb.NewTopologyServiceClient(f.conn).GetTopology(context.Background(), &pb.GetTopologyRequest{}); err != nil || cur.GetTopology().GetRevision() != rev {
		t.Errorf("after the refused apply the topology is %v (%v), want revision %d unchanged", cur.GetTopology().GetRevision(), err, rev)
	}
}

func TestBrokenMetadataURLsFailOnlyTheirEdgesAndConverge(t *testing.T) {
	// A port nothing listens on, reached by name through a --resolve
	// mapping (the metadata client refuses a loopback IP literal).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	f := startFleet(t, examples.Contoso, agentOpts{driftInterval: 500 * time.Millisecond, resolve: []string{"closed.contoso.com=" + closed}})
	broken := bytes.Replace(examples.Contoso, []byte("{from: sharepoint, to: pool01}"),
		[]byte("{from: sharepoint, to: pool01, metadataUrl: \"https://sp.contoso.com/_layouts/15/not-metadata\"}"), 1)
	broken = bytes.Replace(broken, []byte("{from: exchange, to: sharepoint}"),
		[]byte("{from: exchange, to: sharepoint, metadataUrl: \"https://closed.contoso.com/autodiscover/metadata/json/1\"}"), 1)
	rev := f.apply(broken)

	fleetAPI := pb.NewFleetServiceClient(f.conn)
	nackOf := func(host string) string {
		h, err := fleetAPI.GetHost(context.Background(), &pb.GetHostRequest{Host: host})
		if err != nil || h.GetHost().GetLastResult().GetKind() != pb.ResultKind_RESULT_KIND_NACK || h.GetHost().GetLastResult().GetVersion() != rev {
			return ""
		}
		var parts []string
		for _, e := range h.GetHost().GetLastResult().GetErrors() {
			parts = append(parts, e.GetItem()+": "+e.GetMessage())
		}
		return strings.Join(parts, "\n")
	}
	var lyncNack, spNack string
	// The first NACK may also name partners whose hosts had not applied
	// yet; the agent NACKs again when the errors change, so wait for the
	// steady state.
	waitFor(t, waitTimeout, "the broken edges' hosts to nack them alone", func() (bool, string) {
		lyncNack = nackOf(f.primaryOf("pool01"))
		spNack = nackOf("sp01.contoso.com")
		return strings.Count(lyncNack, "partner/") == 1 && strings.Count(spNack, "partner/") == 1, lyncNack + " | " + spNack
	})
	if !strings.Contains(lyncNack, "partner/microsoft.sharepoint") || !strings.Contains(lyncNack, "could not be downloaded") || !strings.Contains(lyncNack, "404") {
		t.Errorf("pool01's nack does not give the seed's error with its cause for the wrong path:\n%s", lyncNack)
	}
	if strings.Contains(lyncNack, "microsoft.exchange") {
		t.Errorf("pool01's nack names the working partner microsoft.exchange:\n%s", lyncNack)
	}
	if !strings.Contains(spNack, "partner/exchange") || !strings.Contains(spNack, "could not be downloaded") || !strings.Contains(spNack, "connection refused") {
		t.Errorf("sp01's nack does not give the seed's error with its cause for the closed port:\n%s", spNack)
	}
	// Every other edge proves its trust; the broken ones report why they fail.
	f.waitEdges("the working edges to pass", func(k string, e *pb.TrustEdge) bool {
		switch k {
		case "sharepoint→pool01", "exchange→sharepoint":
			return !e.GetOk()
		}
		return e.GetOk()
	})

	// Fixing the topology converges everything.
	rev2 := f.apply(examples.Contoso)
	f.waitConverged(rev2)
	f.waitEdges("every edge to pass after the fix", func(_ string, e *pb.TrustEdge) bool { return e.GetOk() })
}

// primaryOf returns the current primary host of a deployment.
func (f *fleet) primaryOf(dep string) string {
	f.t.Helper()
	resp, err := pb.NewFleetServiceClient(f.conn).ListHosts(context.Background(), &pb.ListHostsRequest{Deployment: dep})
	if err != nil {
		f.t.Fatal(err)
	}
	for _, h := range resp.GetHosts() {
		if h.GetPrimary() {
			return h.GetHost()
		}
	}
	return ""
}

func TestDriftIsReportedAndProbesFail(t *testing.T) {
	f := startFleet(t, examples.Contoso, agentOpts{driftInterval: 300 * time.Millisecond})
	rev := f.apply(examples.Contoso)
	f.waitConverged(rev)
	f.waitEdges("every edge to pass", func(_ string, e *pb.TrustEdge) bool { return e.GetOk() })

	// The issuer certificate swapped on one Front End behind s2strust's back.
	secondary := "fe01.contoso.com"
	if f.primaryOf("pool01") == secondary {
		secondary = "fe02.contoso.com"
	}
	if err := f.agents[secondary].sim.ReplaceLocalIssuerCertificate(); err != nil {
		t.Fatal(err)
	}
	fleetAPI := pb.NewFleetServiceClient(f.conn)
	waitFor(t, waitTimeout, "drift on "+secondary, func() (bool, string) {
		h, err := fleetAPI.GetHost(context.Background(), &pb.GetHostRequest{Host: secondary})
		if err != nil {
			return false, err.Error()
		}
		for _, d := range h.GetStatus().GetDrift() {
			if d.GetItem() == "issuer-certificate" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("drift %v", h.GetStatus().GetDrift())
	})
	f.waitEdges("pool01's outgoing edges to fail from "+secondary, func(k string, e *pb.TrustEdge) bool {
		if e.GetFrom() != "pool01" {
			return e.GetOk()
		}
		if !strings.Contains(strings.Join(e.GetProblems(), " "), secondary) {
			return false // the edge names the Front End whose certificate differs
		}
		for _, p := range e.GetProbes() {
			if p.GetFromHost() == secondary && p.GetProbe().GetOk() {
				return false
			}
		}
		return !e.GetOk()
	})

	// A partner application deleted and a trust level lowered on Lync's
	// global settings show as drift on the Front Ends.
	if err := sim.RemovePartner(filepath.Join(f.dir, "sim"), "pool01", "microsoft.sharepoint"); err != nil {
		t.Fatal(err)
	}
	if err := sim.SetTrustLevel(filepath.Join(f.dir, "sim"), "pool01", "microsoft.exchange", pb.TrustLevel_TRUST_LEVEL_APPLICATION); err != nil {
		t.Fatal(err)
	}
	primary := f.primaryOf("pool01")
	waitFor(t, waitTimeout, "drift of both partners on "+primary, func() (bool, string) {
		h, err := fleetAPI.GetHost(context.Background(), &pb.GetHostRequest{Host: primary})
		if err != nil {
			return false, err.Error()
		}
		got := map[string]bool{}
		for _, d := range h.GetStatus().GetDrift() {
			got[d.GetItem()] = true
		}
		return got["partner/microsoft.sharepoint"] && got["partner/microsoft.exchange"], fmt.Sprintf("drift %v", h.GetStatus().GetDrift())
	})
	// The fleet view counts the drift, and the trust row shows the level
	// the pool really has, naming the difference.
	hosts, err := fleetAPI.ListHosts(context.Background(), &pb.ListHostsRequest{Deployment: "pool01"})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts.GetHosts() {
		if h.GetHost() == primary && len(h.GetDrift()) < 2 {
			t.Errorf("ListHosts shows drift %v on %s, want both partners", h.GetDrift(), primary)
		}
	}
	f.waitEdges("exchange→pool01 to show the lowered trust level", func(k string, e *pb.TrustEdge) bool {
		if k != "exchange→pool01" {
			return true
		}
		return e.GetRegistration().GetTrustLevel() == pb.TrustLevel_TRUST_LEVEL_APPLICATION && !e.GetOk() &&
			strings.Contains(strings.Join(e.GetProblems(), "\n"), "ApplicationTrustLevel Application, the topology wants Full")
	})
}

func TestAutoCorrectRestoresDriftedPartners(t *testing.T) {
	f := startFleet(t, examples.Contoso, agentOpts{driftInterval: 300 * time.Millisecond, autoCorrect: true})
	rev := f.apply(examples.Contoso)
	f.waitConverged(rev)
	if err := sim.RemovePartner(filepath.Join(f.dir, "sim"), "pool01", "microsoft.sharepoint"); err != nil {
		t.Fatal(err)
	}
	primary := f.primaryOf("pool01")
	fleetAPI := pb.NewFleetServiceClient(f.conn)
	waitFor(t, waitTimeout, "the deleted partner to be corrected on "+primary, func() (bool, string) {
		h, err := fleetAPI.GetHost(context.Background(), &pb.GetHostRequest{Host: primary})
		if err != nil {
			return false, err.Error()
		}
		for _, d := range h.GetStatus().GetDrift() {
			if d.GetItem() == "partner/microsoft.sharepoint" && d.GetCorrected() {
				return true, ""
			}
		}
		return false, fmt.Sprintf("drift %v", h.GetStatus().GetDrift())
	})
	st, err := sim.ReadDeploymentStore(filepath.Join(f.dir, "sim"), "pool01")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range st.Lync.PartnerApplications {
		if p.Identity == "microsoft.sharepoint" {
			found = true
		}
	}
	if !found {
		t.Error("microsoft.sharepoint was not recreated by auto-correct")
	}
}

func TestSecretsAreSealedAtRestAndNeverShown(t *testing.T) {
	f := startFleet(t, examples.Contoso, agentOpts{})
	pfx := f.putIssuerSecret("second", "contoso.com", []string{"contoso.com", "fabrikam.com"}, "a-very-secret-password")
	rev := f.apply(examples.Contoso)
	f.waitConverged(rev)

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdembed.ClientEndpoint(filepath.Join(f.c.dir, "etcd"))}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(context.Background(), "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		t.Fatal("read nothing from etcd")
	}
	needles := map[string][]byte{
		"password":        []byte("a-very-secret-password"),
		"issuer password": []byte(issuerPassword),
		"PFX bytes":       pfx[len(pfx)/2 : len(pfx)/2+64],
		"PFX base64":      []byte(base64.StdEncoding.EncodeToString(pfx)[100:164]),
	}
	for _, kv := range resp.Kvs {
		for what, n := range needles {
			if bytes.Contains(kv.Value, n) {
				t.Errorf("etcd key %s holds the %s in plain form", kv.Key, what)
			}
		}
	}
	// Nor does any API response.
	list, err := pb.NewSecretServiceClient(f.conn).ListSecrets(context.Background(), &pb.ListSecretsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s := list.String(); strings.Contains(s, "a-very-secret-password") || len(list.GetSecrets()) != 2 {
		t.Errorf("ListSecrets: %s", s)
	}
	for h := range f.agents {
		g, err := pb.NewFleetServiceClient(f.conn).GetHost(context.Background(), &pb.GetHostRequest{Host: h})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(g.String(), issuerPassword) {
			t.Errorf("GetHost %s shows the PFX password", h)
		}
	}
	if logs := testLogs(); strings.Contains(logs, issuerPassword) || strings.Contains(logs, "a-very-secret-password") {
		t.Error("a log line holds a PFX password")
	}
}

// TestSecretInUseIsNotSwappedInPlace: replacing the token-issuer
// certificate under a name in use would change it on every Front End at
// once and break every edge from pool01 until the partners refresh their
// metadata. That put is refused; a new version is stored without any host
// changing, and every edge keeps working.
func TestSecretInUseIsNotSwappedInPlace(t *testing.T) {
	f := startFleet(t, examples.Contoso, agentOpts{})
	rev := f.apply(examples.Contoso)
	f.waitConverged(rev)
	before := f.received()
	fleetAPI := pb.NewFleetServiceClient(f.conn)
	thumbprints := func() map[string]string {
		out := map[string]string{}
		for _, fe := range []string{"fe01.contoso.com", "fe02.contoso.com"} {
			h, err := fleetAPI.GetHost(context.Background(), &pb.GetHostRequest{Host: fe})
			if err != nil {
				t.Fatal(err)
			}
			out[fe] = h.GetStatus().GetIssuerCertificate().GetThumbprint()
		}
		return out
	}
	old := thumbprints()

	now := time.Now()
	b, err := certs.Generate(certs.Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com", "fabrikam.com"}, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0), KeyBits: 2048})
	if err != nil {
		t.Fatal(err)
	}
	pfx, err := certs.EncodePFX(b, "rotated-password")
	if err != nil {
		t.Fatal(err)
	}
	secretsAPI := pb.NewSecretServiceClient(f.conn)
	_, err = secretsAPI.PutSecret(context.Background(), &pb.PutSecretRequest{Name: "oauth-2026", Pfx: pfx, Password: "rotated-password"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "deployment pool01") || !strings.Contains(err.Error(), "rotate issuer") {
		t.Fatalf("put over the secret in use: %v; want FAILED_PRECONDITION naming pool01 and pointing at rotate issuer", err)
	}
	put, err := secretsAPI.PutSecret(context.Background(), &pb.PutSecretRequest{Name: "oauth-2026", Pfx: pfx, Password: "rotated-password", NewVersion: true})
	if err != nil || put.GetSecret().GetVersion() != 2 || put.GetSecret().GetCertificate().GetThumbprint() != certs.Thumbprint(b.Cert) {
		t.Fatalf("put --new-version = %v, %v; want version 2", put, err)
	}
	// Nothing moves: every edge keeps working on the old certificate, and
	// no host is sent anything.
	f.waitEdges("every edge to keep working", func(_ string, e *pb.TrustEdge) bool { return e.GetOk() })
	if now := thumbprints(); now["fe01.contoso.com"] != old["fe01.contoso.com"] || now["fe02.contoso.com"] != old["fe02.contoso.com"] {
		t.Errorf("Front Ends' certificates %v, were %v: a new version changed a host", now, old)
	}
	for h, n := range f.received() {
		if n != before[h] {
			t.Errorf("%s was sent %d desired states for a secret version no revision uses", h, n-before[h])
		}
	}

	// Every change is audited with who made it.
	cli := f.c.etcd()
	defer cli.Close()
	resp, err := cli.Get(context.Background(), "/s2strust/audit/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, kv := range resp.Kvs {
		if !bytes.Contains(kv.Value, []byte(`"who":"admin/admin"`)) {
			t.Errorf("audit record %s does not name the admin: %s", kv.Key, kv.Value)
		}
		if bytes.Contains(kv.Value, []byte("rotated-password")) {
			t.Errorf("audit record %s holds a password", kv.Key)
		}
		switch {
		case bytes.Contains(kv.Key, []byte("/audit/topology/")):
			kinds["topology"]++
		case bytes.Contains(kv.Key, []byte("/audit/secret/")):
			kinds["secret"]++
		}
	}
	if kinds["topology"] != 1 || kinds["secret"] != 2 {
		t.Errorf("audit records %v, want 1 topology and 2 secret changes", kinds)
	}
}

func TestADisabledEdgeWorksWhenItRefusesTokens(t *testing.T) {
	doc := bytes.Replace(examples.Contoso, []byte("{from: exchange, to: pool01}"), []byte("{from: exchange, to: pool01, enabled: false}"), 1)
	f := startFleet(t, doc, agentOpts{})
	rev := f.apply(doc)
	f.waitConverged(rev)
	edges := f.waitEdges("every edge to be as declared", func(_ string, e *pb.TrustEdge) bool { return e.GetOk() })
	e := edges["exchange→pool01"]
	if !e.GetDisabled() || e.GetRegistration().GetEnabled() {
		t.Errorf("exchange→pool01: disabled %v, registration enabled %v; want a disabled edge registered disabled", e.GetDisabled(), e.GetRegistration().GetEnabled())
	}
	if len(e.GetProbes()) != 4 {
		t.Fatalf("exchange→pool01: %d probes, want 4", len(e.GetProbes()))
	}
	for _, p := range e.GetProbes() {
		if p.GetProbe().GetOk() || p.GetProbe().GetReason() != "partner-disabled" {
			t.Errorf("probe %s → %s: ok %v reason %q, want refused as partner-disabled", p.GetFromHost(), p.GetProbe().GetTargetHost(), p.GetProbe().GetOk(), p.GetProbe().GetReason())
		}
	}
}
