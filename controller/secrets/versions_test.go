package secrets_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/controller/secrets"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/secretbox"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func TestVersionsPinsAndAudit(t *testing.T) {
	e := newEnv(t)
	s := e.secrets(t, "k")
	ctx := secrets.WithCaller(testCtx(t), "admin/alice")
	pfx1, b1 := goodPFX()
	pfx2, b2 := issuerPFX(t, "contoso.com", "fabrikam.com")
	tp1, tp2 := certs.Thumbprint(b1.Cert), certs.Thumbprint(b2.Cert)

	if sec, _, err := s.Put(ctx, "oauth-2026", pfx1, password); err != nil || sec.GetVersion() != 1 {
		t.Fatalf("first put = %v, %v; want version 1", sec, err)
	}
	// Not in use: a plain put stores the next version.
	if sec, _, err := s.Put(ctx, "ex-issuer", pfx2, password); err != nil || sec.GetVersion() != 1 {
		t.Fatalf("put ex-issuer = %v, %v", sec, err)
	}
	topo, err := topology.Load("contoso.yaml", []byte(topologyYAML))
	if err != nil {
		t.Fatal(err)
	}
	pins, err := s.Pins(ctx, topo)
	if err != nil || pins["oauth-2026"].Version != 1 || pins["oauth-2026"].Thumbprint != tp1 || pins["ex-issuer"].Thumbprint != tp2 {
		t.Fatalf("Pins before any topology = %v, %v; want the newest versions", pins, err)
	}
	doc, err := topo.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := e.st.PutTopologyPinned(ctx, topo.Name, doc, pins, "admin/alice", now, nil, nil); err != nil {
		t.Fatal(err)
	}

	// In use: refused without --new-version, naming the deployment.
	_, _, err = s.Put(ctx, "oauth-2026", pfx2, password)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "deployment pool01") || !strings.Contains(err.Error(), "rotate issuer") {
		t.Fatalf("put over a secret in use: err = %v; want FAILED_PRECONDITION naming pool01 and rotate issuer", err)
	}
	sec, changed, err := s.PutVersion(ctx, "oauth-2026", pfx2, password, true)
	if err != nil || !changed || sec.GetVersion() != 2 || strings.Join(sec.GetUsedBy(), ",") != "pool01" {
		t.Fatalf("put --new-version = %v, %v, %v; want version 2 used by pool01", sec, changed, err)
	}
	// The current revision's pin holds: a re-applied topology keeps version 1.
	pins, err = s.Pins(ctx, topo)
	if err != nil || pins["oauth-2026"].Version != 1 || pins["oauth-2026"].Thumbprint != tp1 {
		t.Fatalf("Pins after a new version = %v, %v; want version 1 kept", pins, err)
	}
	got, err := s.SecretVersions(ctx, []secrets.Ref{{Name: "oauth-2026", Version: 1}, {Name: "oauth-2026", Version: 2}, {Name: "oauth-2026"}})
	if err != nil || len(got) != 3 || got[0].GetThumbprint() != tp1 || got[1].GetThumbprint() != tp2 || got[2].GetThumbprint() != tp2 {
		t.Fatalf("SecretVersions = %v, %v; want v1 %s, v2 and newest %s", got, err, tp1, tp2)
	}
	if _, err := s.SecretVersions(ctx, []secrets.Ref{{Name: "oauth-2026", Version: 7}}); err == nil || !strings.Contains(err.Error(), "version 7") {
		t.Fatalf("SecretVersions(v7) err = %v; want one naming version 7", err)
	}

	// Audit: by name, version and thumbprint only.
	resp, err := e.cli.Get(ctx, e.st.Key("audit/secret/"), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 3 {
		t.Fatalf("%d secret audit records; want 3 (the refused put writes none)", len(resp.Kvs))
	}
	for _, kv := range resp.Kvs {
		var rec map[string]any
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(kv.Value), "CN=") || strings.Contains(string(kv.Value), password) {
			t.Errorf("audit record %s names more than the secret and its thumbprint: %s", kv.Key, kv.Value)
		}
		if rec["secret"] == nil || rec["thumbprint"] == nil || rec["who"] != "admin/alice" {
			t.Errorf("audit record %s = %s; want secret, thumbprint and who", kv.Key, kv.Value)
		}
	}
}

// A secret stored before versions existed is version 1, and stays
// readable as such once a version 2 is stored.
func TestVersionOfOldRecord(t *testing.T) {
	e := newEnv(t)
	s := e.secrets(t, "k")
	ctx := testCtx(t)
	pfx1, b1 := goodPFX()
	if _, _, err := s.Put(ctx, "oauth-2026", pfx1, password); err != nil {
		t.Fatal(err)
	}
	// Rewrite it as an old controller stored it: no version field, no version key.
	key := e.st.Key("secrets/oauth-2026")
	resp, err := e.cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]json.RawMessage
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		t.Fatal(err)
	}
	delete(rec, "version")
	old, _ := json.Marshal(rec)
	if _, err := e.cli.Put(ctx, key, string(old)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cli.Delete(ctx, e.st.Key("secretversions/"), clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	if list, err := s.List(ctx); err != nil || len(list) != 1 || list[0].GetVersion() != 1 {
		t.Fatalf("List of an old record = %v, %v; want version 1", list, err)
	}
	pfx2, b2 := issuerPFX(t, "contoso.com")
	if sec, _, err := s.Put(ctx, "oauth-2026", pfx2, password); err != nil || sec.GetVersion() != 2 {
		t.Fatalf("put over an old record = %v, %v; want version 2", sec, err)
	}
	got, err := s.SecretVersions(ctx, []secrets.Ref{{Name: "oauth-2026", Version: 1}, {Name: "oauth-2026", Version: 2}})
	if err != nil || got[0].GetThumbprint() != certs.Thumbprint(b1.Cert) || got[1].GetThumbprint() != certs.Thumbprint(b2.Cert) {
		t.Fatalf("versions after the old record = %v, %v", got, err)
	}
}

// A topology revision stored before versions pins nothing: its hosts use
// the newest version, so a new version is refused until it is re-applied.
func TestNewVersionNeedsAPinnedRevision(t *testing.T) {
	e := newEnv(t)
	s := e.secrets(t, "k")
	ctx := testCtx(t)
	pfx1, _ := goodPFX()
	pfx2, _ := issuerPFX(t, "contoso.com", "fabrikam.com")
	if _, _, err := s.Put(ctx, "oauth-2026", pfx1, password); err != nil {
		t.Fatal(err)
	}
	topo, err := topology.Load("contoso.yaml", []byte(topologyYAML))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := topo.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.st.PutTopology(ctx, topo.Name, doc, "old controller", now, nil, nil); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.PutVersion(ctx, "oauth-2026", pfx2, password, true)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "apply the topology again") {
		t.Fatalf("new version under an unpinned revision: err = %v; want FAILED_PRECONDITION asking to re-apply", err)
	}
	pins, err := s.Pins(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, changed, err := e.st.PutTopologyPinned(ctx, topo.Name, doc, pins, "admin", now, nil, nil); err != nil || !changed {
		t.Fatalf("re-apply with pins = %v, %v; want a new, pinned revision", changed, err)
	}
	if sec, _, err := s.PutVersion(ctx, "oauth-2026", pfx2, password, true); err != nil || sec.GetVersion() != 2 {
		t.Fatalf("new version after the re-apply = %v, %v; want version 2", sec, err)
	}
}

// Delivery opens a secret once per stored record: the same record gives
// the same decrypted material, a rewrite of it (a new version, or the
// record written again) is read and opened anew.
func TestSecretVersionsCachedByModRevision(t *testing.T) {
	e := newEnv(t)
	s := e.secrets(t, "k")
	ctx := secrets.WithCaller(testCtx(t), "admin/alice")
	pfx1, _ := goodPFX()
	pfx2, _ := issuerPFX(t, "contoso.com", "fabrikam.com")
	if _, _, err := s.Put(ctx, "oauth-2026", pfx1, password); err != nil {
		t.Fatal(err)
	}
	get := func(v uint64) *pb.SecretMaterial {
		t.Helper()
		m, err := s.SecretVersions(ctx, []secrets.Ref{{Name: "oauth-2026", Version: v}})
		if err != nil || len(m) != 1 {
			t.Fatalf("SecretVersions(oauth-2026 v%d) = %v, %v", v, m, err)
		}
		return m[0]
	}
	a, b := get(0), get(1)
	if a != b || !bytes.Equal(a.GetPfx(), pfx1) {
		t.Fatalf("two reads of one record: %p and %p (PFX as put: %v); want one opened record", a, b, bytes.Equal(a.GetPfx(), pfx1))
	}
	if _, _, err := s.PutVersion(ctx, "oauth-2026", pfx2, password, true); err != nil {
		t.Fatal(err)
	}
	if c := get(0); !bytes.Equal(c.GetPfx(), pfx2) {
		t.Fatal("the newest version after a put is still the old PFX")
	}
	if old := get(1); !bytes.Equal(old.GetPfx(), pfx1) {
		t.Fatal("version 1 after a new version is not the first PFX")
	}
	// The newest record written again, unchanged but at a new revision
	// (as a restore would): opened again.
	before := get(0)
	key := e.st.Key("secrets/oauth-2026")
	resp, err := e.cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatal(resp, err)
	}
	if _, err := e.cli.Put(ctx, key, string(resp.Kvs[0].Value)); err != nil {
		t.Fatal(err)
	}
	if after := get(0); after == before || !bytes.Equal(after.GetPfx(), pfx2) {
		t.Errorf("a record rewritten at a new revision: %p, was %p; want it opened anew, same PFX", after, before)
	}
	// A record that no longer opens (sealed under another key) fails, even
	// though an earlier revision of it was cached.
	other := e.secrets(t, "other-key")
	if _, err := other.SecretVersions(ctx, []secrets.Ref{{Name: "oauth-2026"}}); err == nil {
		t.Error("a store with another key opened the secret")
	}
}

// Pushes reading one secret at once share their etcd reads, and each gets
// the secret as stored.
func TestConcurrentDeliveriesShareReads(t *testing.T) {
	e := newEnv(t)
	var ranges atomic.Int64
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if strings.HasSuffix(method, "/Range") {
			ranges.Add(1)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.cli.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(count)}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	key, err := secretbox.LoadOrCreateKey(filepath.Join(e.dir, "k"))
	if err != nil {
		t.Fatal(err)
	}
	s := secrets.New(store.New(cli, ""), key, func() time.Time { return now })
	ctx := secrets.WithCaller(testCtx(t), "admin/alice")
	pfx, _ := goodPFX()
	if _, _, err := s.Put(ctx, "oauth-2026", pfx, password); err != nil {
		t.Fatal(err)
	}
	const n = 300
	before := ranges.Load()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := s.SecretVersions(ctx, []secrets.Ref{{Name: "oauth-2026", Version: 1}})
			if err == nil && (len(m) != 1 || !bytes.Equal(m[0].GetPfx(), pfx)) {
				err = fmt.Errorf("got %d secrets, PFX as stored: %v", len(m), len(m) == 1 && bytes.Equal(m[0].GetPfx(), pfx))
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}
	if got := ranges.Load() - before; got >= n {
		t.Errorf("%d deliveries at once read etcd %d times; want the reads shared", n, got)
	}
}
