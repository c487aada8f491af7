package secrets_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/controller/secrets"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/secretbox"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

const password = "Tr0ub4dor&3-correct-horse"

// now is the secret store's clock in these tests; certificates are made
// valid around it.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// env is one embedded etcd with a store on it.
type env struct {
	st  *store.Store
	cli *clientv3.Client
	dir string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	srv, err := etcdembed.Start(ctx, filepath.Join(dir, "etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() }) // runs before srv.Close
	return &env{st: store.New(cli, ""), cli: cli, dir: dir}
}

// secrets opens the secret store with the key in file keyName of the
// environment's directory, created on first use.
func (e *env) secrets(t *testing.T, keyName string) *secrets.Store {
	t.Helper()
	key, err := secretbox.LoadOrCreateKey(filepath.Join(e.dir, keyName))
	if err != nil {
		t.Fatal(err)
	}
	return secrets.New(e.st, key, func() time.Time { return now })
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// issuerPFX makes a token-issuer certificate for contoso.com with the
// given SAN DNS names, valid around now, as a PFX under password.
func issuerPFX(t *testing.T, dnsNames ...string) ([]byte, *certs.Bundle) {
	t.Helper()
	b, err := certs.Generate(certs.Template{CommonName: "contoso.com", DNSNames: dnsNames,
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.AddDate(1, 0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	pfx, err := certs.EncodePFX(b, password)
	if err != nil {
		t.Fatal(err)
	}
	return pfx, b
}

// goodPFX is generated once: RSA key generation is slow under -race.
var goodPFX = sync.OnceValues(func() ([]byte, *certs.Bundle) {
	b, err := certs.Generate(certs.Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com", "fabrikam.com"},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.AddDate(1, 0, 0)})
	if err != nil {
		panic(err)
	}
	pfx, err := certs.EncodePFX(b, password)
	if err != nil {
		panic(err)
	}
	return pfx, b
})

func TestPutAndDeliver(t *testing.T) {
	e := newEnv(t)
	s := e.secrets(t, "k")
	ctx := testCtx(t)
	pfx, b := goodPFX()
	thumb := certs.Thumbprint(b.Cert)

	sec, changed, err := s.Put(ctx, "oauth-2026", pfx, password)
	if err != nil || !changed {
		t.Fatalf("Put = %v, %v, %v; want changed", sec, changed, err)
	}
	if sec.GetName() != "oauth-2026" || sec.GetCertificate().GetThumbprint() != thumb || !sec.GetCertificate().GetHasPrivateKey() {
		t.Errorf("Put returned %v; want oauth-2026 with thumbprint %s and its key", sec, thumb)
	}

	// The same upload again changes nothing.
	if _, changed, err := s.Put(ctx, "oauth-2026", pfx, password); err != nil || changed {
		t.Errorf("second identical Put: changed %v, err %v; want unchanged", changed, err)
	}

	got, err := s.Secrets(ctx, []string{"oauth-2026"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].GetName() != "oauth-2026" || !bytes.Equal(got[0].GetPfx(), pfx) ||
		got[0].GetPassword() != password || got[0].GetThumbprint() != thumb {
		t.Fatalf("Secrets = %v; want the uploaded PFX, password and thumbprint %s", got, thumb)
	}

	if _, err := s.Secrets(ctx, []string{"oauth-2026", "nope"}); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Secrets of a missing name: err = %v; want ErrNotFound naming it", err)
	}

	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].GetName() != "oauth-2026" || list[0].GetCertificate().GetThumbprint() != thumb {
		t.Fatalf("List = %v; want oauth-2026 with thumbprint %s", list, thumb)
	}
	text := prototext.Format(list[0])
	if strings.Contains(text, password) {
		t.Errorf("List shows the password: %s", text)
	}
	if size := proto.Size(list[0]); size >= len(pfx) {
		t.Errorf("List entry is %d bytes, as large as the %d-byte PFX", size, len(pfx))
	}
}

func TestListSorted(t *testing.T) {
	e := newEnv(t)
	s := e.secrets(t, "k")
	ctx := testCtx(t)
	pfx, _ := goodPFX()
	for _, name := range []string{"zeta", "alpha", "mid.dle"} {
		if _, _, err := s.Put(ctx, name, pfx, password); err != nil {
			t.Fatal(err)
		}
	}
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, sec := range list {
		names = append(names, sec.GetName())
	}
	if strings.Join(names, ",") != "alpha,mid.dle,zeta" {
		t.Errorf("List names = %v; want alpha, mid.dle, zeta", names)
	}

	// ListSecrets pages them, one per page, with an opaque token.
	svc := secrets.NewService(s, nil)
	names = nil
	req := &pb.ListSecretsRequest{PageSize: 1}
	for pages := 0; ; pages++ {
		resp, err := svc.ListSecrets(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetSecrets()) != 1 || pages > 3 {
			t.Fatalf("page %d: %v", pages, resp.GetSecrets())
		}
		names = append(names, resp.GetSecrets()[0].GetName())
		if resp.GetNextPageToken() == "" {
			break
		}
		if strings.Contains(resp.GetNextPageToken(), resp.GetSecrets()[0].GetName()) {
			t.Errorf("token %q is not opaque", resp.GetNextPageToken())
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if strings.Join(names, ",") != "alpha,mid.dle,zeta" {
		t.Errorf("paged names = %v; want alpha, mid.dle, zeta", names)
	}
	for _, bad := range []*pb.ListSecretsRequest{{PageToken: "alpha"}, {PageSize: -1}} {
		var te *topology.Error
		if _, err := svc.ListSecrets(ctx, bad); !errors.As(err, &te) {
			t.Errorf("ListSecrets(%v) = %v, want a field violation", bad, err)
		}
	}
}

func TestPutRefused(t *testing.T) {
	e := newEnv(t)
	s := e.secrets(t, "k")
	ctx := testCtx(t)
	pfx, _ := goodPFX()
	tests := []struct {
		name, secret string
		pfx          []byte
		password     string
		wantField    string
		wantMsg      string
	}{
		{name: "wrong password", secret: "oauth", pfx: pfx, password: "hunter2-not-it", wantField: "pfx", wantMsg: "wrong password"},
		{name: "not a pfx", secret: "oauth", pfx: []byte("-----BEGIN CERTIFICATE-----\n"), password: password, wantField: "pfx", wantMsg: "PEM text"},
		{name: "empty pfx", secret: "oauth", password: password, wantField: "pfx", wantMsg: "empty"},
		{name: "bad name", secret: "oauth/2026", pfx: pfx, password: password, wantField: "name", wantMsg: "letters, digits"},
		{name: "empty name", secret: "", pfx: pfx, password: password, wantField: "name", wantMsg: "1 to 128 characters"},
		{name: "too large", secret: "oauth", pfx: append(bytes.Clone(pfx), make([]byte, certs.MaxPFXSize)...), password: password, wantField: "pfx",
			wantMsg: "the file is " + strconv.Itoa(len(pfx)+certs.MaxPFXSize) + " bytes, over the 1048576-byte limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, changed, err := s.Put(ctx, tc.secret, tc.pfx, tc.password)
			var te *topology.Error
			if !errors.As(err, &te) {
				t.Fatalf("Put err = %v (%T); want *topology.Error", err, err)
			}
			if changed {
				t.Error("changed = true on a refused Put")
			}
			if len(te.Violations) != 1 || te.Violations[0].Field != tc.wantField || !strings.Contains(te.Violations[0].Description, tc.wantMsg) {
				t.Errorf("violations = %v; want one on %s saying %q", te.Violations, tc.wantField, tc.wantMsg)
			}
			if strings.Contains(err.Error(), tc.password) || strings.Contains(err.Error(), password) {
				t.Errorf("error %q contains a password", err)
			}
		})
	}
	resp, err := e.cli.Get(ctx, e.st.Key(""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Errorf("refused Puts stored %d keys", resp.Count)
	}
}

func TestSealedAtRest(t *testing.T) {
	e := newEnv(t)
	s := e.secrets(t, "k")
	ctx := testCtx(t)
	pfx, _ := goodPFX()
	if _, _, err := s.Put(secrets.WithCaller(ctx, "admin/alice"), "oauth-2026", pfx, password); err != nil {
		t.Fatal(err)
	}

	resp, err := e.cli.Get(ctx, e.st.Key(""), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var sawSecret, sawAudit bool
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		sawSecret = sawSecret || k == e.st.Key("secrets/oauth-2026")
		if strings.HasPrefix(k, e.st.Key("audit/secret/")) {
			sawAudit = true
			if !bytes.Contains(kv.Value, []byte("admin/alice")) {
				t.Errorf("audit record %s = %s; want it to name the caller", k, kv.Value)
			}
		}
		for what, plain := range map[string][]byte{
			"password":       []byte(password),
			"PFX":            pfx,
			"PFX (base64)":   []byte(base64.StdEncoding.EncodeToString(pfx)),
			"PFX (prefix)":   pfx[:64],
			"PFX (b64 head)": []byte(base64.StdEncoding.EncodeToString(pfx[:48])),
		} {
			if bytes.Contains(kv.Value, plain) {
				t.Errorf("etcd key %s holds the %s in the clear", k, what)
			}
		}
	}
	if !sawSecret || !sawAudit {
		t.Errorf("stored keys: secret %v, audit %v; want both", sawSecret, sawAudit)
	}

	// Another data directory's key cannot open it.
	other := e.secrets(t, "other-key")
	_, err = other.Secrets(ctx, []string{"oauth-2026"})
	if err == nil || !strings.Contains(err.Error(), "open secret oauth-2026") || !strings.Contains(err.Error(), "secret key") {
		t.Errorf("Secrets with another key: err = %v; want one about opening oauth-2026 with the wrong key", err)
	}
	if err != nil && strings.Contains(err.Error(), password) {
		t.Errorf("error %q contains the password", err)
	}
	// Its description is not sealed: List still works.
	if list, err := other.List(ctx); err != nil || len(list) != 1 {
		t.Errorf("List with another key = %v, %v; want the one secret", list, err)
	}
}

const topologyYAML = `apiVersion: s2strust/v1
kind: TrustTopology
name: contoso
sipDomains: {default: contoso.com, additional: [fabrikam.com]}
deployments:
  - name: pool01
    product: lync
    version: "2015"
    poolFqdn: pool01.contoso.com
    hosts: [fe01.contoso.com]
    tokenIssuer: {secret: oauth-2026}
  - {name: exchange, product: exchange, version: "2019",
     autodiscoverFqdn: autodiscover.contoso.com, hosts: [ex01.contoso.com],
     tokenIssuer: {secret: ex-issuer}}
trusts:
  - {from: exchange, to: pool01}
`

func TestCheckTopology(t *testing.T) {
	standard, err := topology.Load("contoso.yaml", []byte(topologyYAML))
	if err != nil {
		t.Fatal(err)
	}
	strict, err := topology.Load("contoso.yaml", []byte(topologyYAML+"certificateRules: strict\n"))
	if err != nil {
		t.Fatal(err)
	}
	good, _ := goodPFX()
	noFabrikam, _ := issuerPFX(t, "contoso.com")
	weak := pfxOf(t, certs.Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com", "fabrikam.com"}, KeyBits: 1024,
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.AddDate(1, 0, 0)})
	expiring := pfxOf(t, certs.Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com", "fabrikam.com"},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.AddDate(0, 0, 10)})
	const lync, exchange = "deployments[0].tokenIssuer.secret", "deployments[1].tokenIssuer.secret"
	tests := []struct {
		name      string
		topo      *topology.Topology
		put       map[string][]byte // secret name → PFX
		wantErrs  map[string]string // field → substrings of its description, "|"-separated
		wantWarns map[string]string
	}{
		{
			name: "both missing",
			topo: standard,
			wantErrs: map[string]string{
				lync:     "no such secret|s2s-controller secret put oauth-2026 --pfx FILE --password-file FILE",
				exchange: "no such secret|secret put ex-issuer",
			},
		},
		{
			name: "all good",
			topo: standard,
			put:  map[string][]byte{"oauth-2026": good, "ex-issuer": good},
		},
		{
			name: "all good, strict",
			topo: strict,
			put:  map[string][]byte{"oauth-2026": good, "ex-issuer": good},
		},
		{
			name: "lync certificate lacks an additional domain: a warning",
			topo: standard,
			// Exchange's certificate lacks it too, but the SIP domain rules bind Lync only.
			put:       map[string][]byte{"oauth-2026": noFabrikam, "ex-issuer": noFabrikam},
			wantWarns: map[string]string{lync: "SAN does not list fabrikam.com|(rule san-additional-domain)"},
		},
		{
			name:     "lync certificate lacks an additional domain, strict: an error",
			topo:     strict,
			put:      map[string][]byte{"oauth-2026": noFabrikam, "ex-issuer": noFabrikam},
			wantErrs: map[string]string{lync: "SAN does not list fabrikam.com|certificateRules: strict|(rule san-additional-domain)"},
		},
		{
			name:     "1024-bit keys are refused for every product",
			topo:     standard,
			put:      map[string][]byte{"oauth-2026": weak, "ex-issuer": weak},
			wantErrs: map[string]string{lync: "RSA key is 1024 bits|(rule key-size)", exchange: "RSA key is 1024 bits|(rule key-size)"},
		},
		{
			name:      "expiry within 30 days is a warning for every product",
			topo:      standard,
			put:       map[string][]byte{"oauth-2026": expiring, "ex-issuer": expiring},
			wantWarns: map[string]string{lync: "in 10 days|(rule expiring)", exchange: "in 10 days|(rule expiring)"},
		},
		{
			name:     "expiry within 30 days, strict: an error for every product",
			topo:     strict,
			put:      map[string][]byte{"oauth-2026": expiring, "ex-issuer": expiring},
			wantErrs: map[string]string{lync: "in 10 days|(rule expiring)", exchange: "in 10 days|(rule expiring)"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			s := e.secrets(t, "k")
			ctx := testCtx(t)
			for name, pfx := range tc.put {
				if _, _, err := s.Put(ctx, name, pfx, password); err != nil {
					t.Fatal(err)
				}
			}
			errs, warns, err := s.CheckTopology(ctx, tc.topo)
			if err != nil {
				t.Fatal(err)
			}
			checkViolations(t, "error", errs, tc.wantErrs)
			checkViolations(t, "warning", warns, tc.wantWarns)
		})
	}
}

// checkViolations asserts one violation per field of want, each naming the
// secret and its line, with want's substrings in its description.
func checkViolations(t *testing.T, kind string, vs []topology.FieldViolation, want map[string]string) {
	t.Helper()
	if len(vs) != len(want) {
		t.Fatalf("CheckTopology gave %s(s) %v; want %d", kind, vs, len(want))
	}
	for _, v := range vs {
		w, ok := want[v.Field]
		if !ok {
			t.Errorf("unexpected %s %v", kind, v)
			continue
		}
		for _, sub := range strings.Split(w, "|") {
			if !strings.Contains(v.Description, sub) {
				t.Errorf("%s %s: description %q does not say %q", kind, v.Field, v.Description, sub)
			}
		}
		if v.Line == 0 {
			t.Errorf("%s %s: no line number", kind, v.Field)
		}
		if v.Value == "" {
			t.Errorf("%s %s: the secret's name is not given as the value", kind, v.Field)
		}
	}
}

// pfxOf makes a certificate from tmpl as a PFX under password.
func pfxOf(t *testing.T, tmpl certs.Template) []byte {
	t.Helper()
	b, err := certs.Generate(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	pfx, err := certs.EncodePFX(b, password)
	if err != nil {
		t.Fatal(err)
	}
	return pfx
}

func TestCheckTopologyExpired(t *testing.T) {
	topo, err := topology.Load("contoso.yaml", []byte(topologyYAML))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	ctx := testCtx(t)
	pfx, _ := goodPFX()
	if _, _, err := e.secrets(t, "k").Put(ctx, "ex-issuer", pfx, password); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.secrets(t, "k").Put(ctx, "oauth-2026", pfx, password); err != nil {
		t.Fatal(err)
	}
	key, err := secretbox.LoadOrCreateKey(filepath.Join(e.dir, "k"))
	if err != nil {
		t.Fatal(err)
	}
	// Two years on, by the store's clock, both certificates have expired:
	// the expiry rule binds every product.
	later := secrets.New(e.st, key, func() time.Time { return now.AddDate(2, 0, 0) })
	vs, _, err := later.CheckTopology(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 {
		t.Fatalf("CheckTopology two years later = %v; want both deployments' certificates expired", vs)
	}
	for i, v := range vs {
		if !strings.Contains(v.Description, "(rule expired)") {
			t.Errorf("violation %d = %v; want rule expired", i, v)
		}
	}
}
