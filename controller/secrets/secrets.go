// Package secrets keeps token-issuer certificates (PFX and password) in
// etcd, sealed with AES-256-GCM under a key kept outside etcd, and serves
// them only to the hosts whose configuration names them.
//
// Secrets are versioned and never swapped in place: every put stores the
// name's next version (1, 2, 3 …), and a name the current topology uses
// takes a new version only when asked (--new-version). A topology revision
// pins the version its hosts use (store.TopologyRecord.Secrets), recorded
// when it is applied: a name new to the topology gets its newest version,
// a name the current revision already uses keeps that revision's pin. So
// storing a new version changes no host's desired state; a rotation or
// rollout stores a revision with the new pin. The newest version lives
// under secrets/<name> (what the hub watches and ListSecrets shows), every
// version under secretversions/<name>/<version>; a record written before
// versions existed is version 1.
package secrets

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	"github.com/s2strust/s2strust/internal/secretbox"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// record is what etcd holds for one secret: a description anyone with
// admin rights may read, and the sealed PFX and password.
type record struct {
	Info   json.RawMessage `json:"info"`
	Sealed []byte          `json:"sealed"`
	// Version is 0 in records written before versions existed: version 1.
	Version uint64 `json:"version,omitempty"`
}

// version is the record's version, 1 for a record from before versions.
func (r record) version() uint64 { return max(r.Version, 1) }

// Ref names one version of a secret; Version 0 is the newest.
type Ref struct {
	Name    string
	Version uint64
	// As is the name the delivered material carries, Name when empty: a
	// rotation's next certificate travels as "name@vN", beside the
	// current version of the same secret.
	As string
}

// plain is the sealed part.
type plain struct {
	PFX      []byte `json:"pfx"`
	Password string `json:"password"`
}

// Store reads and writes sealed secrets.
type Store struct {
	st  *store.Store
	key []byte
	now func() time.Time

	// opened caches secrets decrypted for delivery, by etcd key; an entry
	// serves only while the key's mod revision is the one it was opened
	// at, so a push reads the key (one small read) but decodes and opens
	// it only after a change.
	mu     sync.Mutex
	opened map[string]openedSecret
	// reads coalesces the reads of one key by concurrent pushes (see
	// readKey), by etcd key.
	reads map[string]*keyReads
}

// keyReads are the reads of one key: at most one in flight, and the
// callers that came while it was (they share the next one).
type keyReads struct {
	inFlight bool
	next     *keyRead
}

// keyRead is one read of a key, shared by every caller waiting for it.
type keyRead struct {
	done chan struct{}
	kv   *mvccpb.KeyValue // nil: no such key
	err  error
}

// openedSecret is one stored secret record decrypted.
type openedSecret struct {
	modRev   int64
	version  uint64
	material *pb.SecretMaterial // shared: never modified
}

// maxOpened bounds the decrypted secrets kept; beyond it the cache starts
// over (a topology names a few secrets, a rotation two versions of one).
const maxOpened = 256

// New returns a secret store sealing with key (32 bytes).
func New(st *store.Store, key []byte, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{st: st, key: key, now: now}
}

// etcdKey is the key of a secret's newest version. Every version is sealed
// with it as additional data: the ciphertext is bound to its name.
func (s *Store) etcdKey(name string) string { return s.st.Key("secrets/" + name) }

func (s *Store) versionKey(name string, v uint64) string {
	return s.st.Key(fmt.Sprintf("secretversions/%s/%020d", name, v))
}

// ValidName reports whether name can name a secret.
func ValidName(name string) error {
	if name == "" || len(name) > 128 {
		return errors.New("a secret name of 1 to 128 characters")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return errors.New("letters, digits, '-', '_' and '.' only")
		}
	}
	return nil
}

func invalid(field, value, want string) error {
	return &topology.Error{Violations: []topology.FieldViolation{{Field: field, Value: value, Description: want}}}
}

// Put opens the PFX with its password, then stores it sealed as the
// name's next version. It returns the certificate's description and
// whether anything changed. A name the current topology uses is refused
// (FAILED_PRECONDITION): see PutVersion.
func (s *Store) Put(ctx context.Context, name string, pfx []byte, password string) (*pb.Secret, bool, error) {
	return s.PutVersion(ctx, name, pfx, password, false)
}

// PutVersion is Put; with newVersion set, a name the current topology uses
// gets a new version too, which no host uses until a rotation or rollout
// pins it. Putting the newest version's PFX and password again changes
// nothing, so a retry is safe.
func (s *Store) PutVersion(ctx context.Context, name string, pfx []byte, password string, newVersion bool) (*pb.Secret, bool, error) {
	if err := ValidName(name); err != nil {
		return nil, false, invalid("name", name, err.Error())
	}
	b, err := certs.LoadPFXContext(ctx, pfx, password)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, fmt.Errorf("open secret %s: %w", name, err)
		}
		// The error names the cause (wrong password, no private key, corrupt) and never the password.
		return nil, false, invalid("pfx", fmt.Sprintf("%d bytes", len(pfx)), err.Error())
	}
	info := certs.Info(b.Cert, b.Key != nil)
	cur, err := s.get(ctx, name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, false, err
	}
	usedBy, pinned, err := s.usedBy(ctx, name)
	if err != nil {
		return nil, false, err
	}
	var curRev int64
	version := uint64(1)
	if cur != nil {
		if proto.Equal(cur.info, info) {
			if p, err := s.open(name, cur.rec); err == nil && string(p.PFX) == string(pfx) && p.Password == password {
				return &pb.Secret{Name: name, Certificate: info, Version: cur.rec.version(), UsedBy: usedBy}, false, nil
			}
		}
		if len(usedBy) > 0 && !newVersion {
			// Swapping the certificate in place would change the token
			// issuer on every host at once, before any partner has the new
			// key in its cached metadata: every trust edge would break.
			return nil, false, status.Errorf(codes.FailedPrecondition,
				"secret %s is in use by deployment %s of the current topology (version %d, certificate %s): it is not replaced in place; store the new certificate with `secret put %s --new-version` and roll it out with `s2s-controller rotate issuer`",
				name, strings.Join(usedBy, ", "), cur.rec.version(), cur.info.GetThumbprint(), name)
		}
		if len(usedBy) > 0 && !pinned {
			// A revision stored before versions uses the newest version of
			// each secret: a new one would reach its hosts at once.
			return nil, false, status.Errorf(codes.FailedPrecondition,
				"secret %s is in use by deployment %s and the current topology revision, stored before secret versions, does not record which version it uses: apply the topology again (`s2s-controller apply -f FILE`), then store the new version",
				name, strings.Join(usedBy, ", "))
		}
		version, curRev = cur.rec.version()+1, cur.modRev
	}
	ij, err := protojson.Marshal(info)
	if err != nil {
		return nil, false, fmt.Errorf("encode secret %s: %w", name, err)
	}
	pj, err := json.Marshal(plain{PFX: pfx, Password: password})
	if err != nil {
		return nil, false, fmt.Errorf("encode secret %s: %w", name, err)
	}
	sealed, err := secretbox.Seal(s.key, pj, []byte(s.etcdKey(name)))
	if err != nil {
		return nil, false, fmt.Errorf("seal secret %s: %w", name, err)
	}
	val, err := json.Marshal(record{Info: ij, Sealed: sealed, Version: version})
	if err != nil {
		return nil, false, fmt.Errorf("encode secret %s: %w", name, err)
	}
	// The audit record is written in the same transaction as the secret.
	now := s.now()
	ops := []clientv3.Op{
		clientv3.OpPut(s.etcdKey(name), string(val)),
		clientv3.OpPut(s.versionKey(name, version), string(val)),
		clientv3.OpPut(store.AuditKey(s.st, "secret", now), string(s.auditRecord(ctx, now, name, version, info))),
	}
	if cur != nil && cur.rec.Version == 0 {
		// A record from before versions is version 1: kept as such, so a
		// revision that uses it still finds it.
		old, err := json.Marshal(record{Info: cur.rec.Info, Sealed: cur.rec.Sealed, Version: 1})
		if err != nil {
			return nil, false, fmt.Errorf("encode secret %s: %w", name, err)
		}
		ops = append(ops, clientv3.OpPut(s.versionKey(name, 1), string(old)))
	}
	// Conditioned on the newest version read above: two puts racing never
	// store the same version twice.
	resp, err := s.st.Client().Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.etcdKey(name)), "=", curRev)).Then(ops...).Commit()
	if err != nil {
		return nil, false, fmt.Errorf("store secret %s: %w", name, err)
	}
	if !resp.Succeeded {
		return nil, false, status.Errorf(codes.Aborted, "secret %s changed while it was stored: retry", name)
	}
	return &pb.Secret{Name: name, Certificate: info, Version: version, UsedBy: usedBy}, true, nil
}

// usedBy names the deployments of the current topology whose token issuer
// is the secret name, and whether the current revision pins its version.
func (s *Store) usedBy(ctx context.Context, name string) (deployments []string, pinned bool, err error) {
	t, rec, err := s.currentTopology(ctx)
	if err != nil || t == nil {
		return nil, false, err
	}
	for _, d := range t.Deployments {
		if d.TokenIssuer != nil && d.TokenIssuer.Secret == name {
			deployments = append(deployments, d.Name)
		}
	}
	_, pinned = rec.Secrets[name]
	return deployments, pinned, nil
}

// currentTopology loads the current topology and its record; nil, nil
// when none has been applied.
func (s *Store) currentTopology(ctx context.Context) (*topology.Topology, *store.TopologyRecord, error) {
	rec, err := s.st.CurrentTopology(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	t, err := topology.Load("stored revision", rec.Document)
	if err != nil {
		return nil, nil, fmt.Errorf("load current topology revision %d: %w", rec.Revision, err)
	}
	return t, rec, nil
}

// Pins chooses the secret version each secret t names is to use, for
// storing with t (store.PutTopologyPinned): the version the current
// revision pins for that name, and for a name it does not pin, the newest
// version. A name with no stored secret is left out (CheckTopology
// refuses it).
func (s *Store) Pins(ctx context.Context, t *topology.Topology) (map[string]store.SecretPin, error) {
	// The current record's pins are all it takes: its document is not
	// parsed (an apply would otherwise parse the current revision again).
	cur, err := s.st.CurrentTopology(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		cur = nil
	case err != nil:
		return nil, err
	}
	pins := map[string]store.SecretPin{}
	for _, d := range t.Deployments {
		if d.TokenIssuer == nil || d.TokenIssuer.Secret == "" {
			continue
		}
		name := d.TokenIssuer.Secret
		if _, done := pins[name]; done {
			continue
		}
		if cur != nil {
			if p, ok := cur.Secrets[name]; ok {
				pins[name] = p
				continue
			}
		}
		st, err := s.get(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		pins[name] = store.SecretPin{Version: st.rec.version(), Thumbprint: st.info.GetThumbprint()}
	}
	return pins, nil
}

// auditRecord says who put which certificate under name: the secret
// appears by name, version and thumbprint only, never key material.
func (s *Store) auditRecord(ctx context.Context, now time.Time, name string, version uint64, info *pb.CertificateInfo) []byte {
	who := "unknown"
	if v, ok := ctx.Value(callerKey{}).(string); ok {
		who = v
	}
	from := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		from = p.Addr.String()
	}
	what := fmt.Sprintf("put secret %s version %d (certificate %s)", name, version, info.GetThumbprint())
	rec := map[string]any{"kind": "secret", "who": who, "from": from, "when": now.UTC(), "what": what, "result": "ok",
		"secret": name, "version": version, "thumbprint": info.GetThumbprint(), "changes": []string{what}}
	b, _ := json.Marshal(rec)
	return b
}

// callerKey carries the caller's identity for the audit trail.
type callerKey struct{}

// WithCaller records who makes the calls on ctx, for the audit trail.
func WithCaller(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, callerKey{}, who)
}

type stored struct {
	rec    record
	info   *pb.CertificateInfo
	modRev int64
}

// get reads the newest version of a secret.
func (s *Store) get(ctx context.Context, name string) (*stored, error) {
	resp, err := s.st.Client().Get(ctx, s.etcdKey(name))
	if err != nil {
		return nil, fmt.Errorf("read secret %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("secret %s: %w", name, store.ErrNotFound)
	}
	st, err := decode(name, resp.Kvs[0].Value)
	if err != nil {
		return nil, err
	}
	st.modRev = resp.Kvs[0].ModRevision
	return st, nil
}

// getVersion reads one version of a secret (0: the newest).
func (s *Store) getVersion(ctx context.Context, name string, v uint64) (*stored, error) {
	latest, err := s.get(ctx, name)
	if err != nil || v == 0 || latest.rec.version() == v {
		return latest, err
	}
	resp, err := s.st.Client().Get(ctx, s.versionKey(name, v))
	if err != nil {
		return nil, fmt.Errorf("read secret %s version %d: %w", name, v, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("secret %s version %d: %w", name, v, store.ErrNotFound)
	}
	return decode(name, resp.Kvs[0].Value)
}

// Info describes one version of a secret's certificate (0: the newest)
// without opening its sealed part, so it needs no key: the fleet view
// reads expiry dates with it.
func Info(ctx context.Context, st *store.Store, name string, version uint64) (*pb.CertificateInfo, error) {
	s, err := (&Store{st: st}).getVersion(ctx, name, version)
	if err != nil {
		return nil, err
	}
	return s.info, nil
}

// Resolve gives the version number of one version of a secret (0: the
// newest) with its certificate's description, without opening its sealed
// part; store.ErrNotFound for an unknown name or version.
func Resolve(ctx context.Context, st *store.Store, name string, version uint64) (uint64, *pb.CertificateInfo, error) {
	s, err := (&Store{st: st}).getVersion(ctx, name, version)
	if err != nil {
		return 0, nil, err
	}
	return s.rec.version(), s.info, nil
}

// DecodeInfo reads the certificate description of a stored secret value,
// without opening its sealed part.
func DecodeInfo(value []byte) (*pb.CertificateInfo, error) {
	st, err := decode("", value)
	if err != nil {
		return nil, err
	}
	return st.info, nil
}

// Describe is what ListSecrets shows of the stored value of secret name
// (its used_by aside): its newest version and its certificate, never the
// sealed part. The controller's last view of etcd keeps this much.
func Describe(name string, value []byte) (*pb.Secret, error) {
	st, err := decode(name, value)
	if err != nil {
		return nil, err
	}
	return &pb.Secret{Name: name, Certificate: st.info, Version: st.rec.version()}, nil
}

func decode(name string, v []byte) (*stored, error) {
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("decode secret %s: %w", name, err)
	}
	info := &pb.CertificateInfo{}
	if err := protojson.Unmarshal(r.Info, info); err != nil {
		return nil, fmt.Errorf("decode secret %s: %w", name, err)
	}
	return &stored{rec: r, info: info}, nil
}

func (s *Store) open(name string, r record) (*plain, error) {
	pj, err := secretbox.Open(s.key, r.Sealed, []byte(s.etcdKey(name)))
	if err != nil {
		return nil, fmt.Errorf("open secret %s (is the data dir's secret key the one it was sealed with?): %w", name, err)
	}
	var p plain
	if err := json.Unmarshal(pj, &p); err != nil {
		return nil, fmt.Errorf("decode secret %s: %w", name, err)
	}
	return &p, nil
}

// List describes every secret, sorted by name.
func (s *Store) List(ctx context.Context) ([]*pb.Secret, error) {
	out, _, err := s.ListPage(ctx, "", 0)
	return out, err
}

// ListPage lists up to limit secrets (0: all) named after after, sorted
// by name, and whether more follow.
func (s *Store) ListPage(ctx context.Context, after string, limit int) ([]*pb.Secret, bool, error) {
	p := s.st.Key("secrets/")
	start := p
	if after != "" {
		start = p + after + "\x00"
	}
	resp, err := s.st.Client().Get(ctx, start, clientv3.WithRange(clientv3.GetPrefixRangeEnd(p)), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, false, fmt.Errorf("list secrets: %w", err)
	}
	var out []*pb.Secret
	for _, kv := range resp.Kvs {
		sec, err := Describe(strings.TrimPrefix(string(kv.Key), p), kv.Value)
		if err != nil {
			return nil, false, err
		}
		out = append(out, sec)
	}
	t, _, err := s.currentTopology(ctx)
	if err != nil {
		return nil, false, err
	}
	if t != nil {
		for _, sec := range out {
			for _, d := range t.Deployments {
				if d.TokenIssuer != nil && d.TokenIssuer.Secret == sec.GetName() {
					sec.UsedBy = append(sec.UsedBy, d.Name)
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, resp.More, nil
}

// Secrets returns the newest version of the named secrets decrypted.
func (s *Store) Secrets(ctx context.Context, names []string) ([]*pb.SecretMaterial, error) {
	refs := make([]Ref, len(names))
	for i, n := range names {
		refs[i] = Ref{Name: n}
	}
	return s.SecretVersions(ctx, refs)
}

// SecretVersions returns the given versions of secrets decrypted, for
// delivery to a host. The messages returned are shared between callers
// (see Store.opened) and must not be modified.
func (s *Store) SecretVersions(ctx context.Context, refs []Ref) ([]*pb.SecretMaterial, error) {
	var out []*pb.SecretMaterial
	for _, ref := range refs {
		m, err := s.material(ctx, ref.Name, ref.Version)
		if err != nil {
			return nil, err
		}
		if ref.As != "" && ref.As != m.GetName() {
			// Delivered under another name (a rotation's "name@vN"): a
			// copy, the cached message being shared.
			m = &pb.SecretMaterial{Name: ref.As, Pfx: m.GetPfx(), Password: m.GetPassword(), Thumbprint: m.GetThumbprint()}
		}
		out = append(out, m)
	}
	return out, nil
}

// material returns version v of secret name decrypted (0: the newest),
// from the cache while the etcd record it was opened from is unchanged.
func (s *Store) material(ctx context.Context, name string, v uint64) (*pb.SecretMaterial, error) {
	latest, err := s.openKey(ctx, name, s.etcdKey(name), fmt.Sprintf("secret %s", name))
	if err != nil || v == 0 || latest.version == v {
		return latest.material, err
	}
	o, err := s.openKey(ctx, name, s.versionKey(name, v), fmt.Sprintf("secret %s version %d", name, v))
	return o.material, err
}

// readKey reads key from etcd for a caller, sharing the read with the
// callers that arrive together: a read is shared only by callers that
// came before it started, so each caller sees the key as it was at some
// moment after its call (10,000 pushes at once read a secret a few times,
// not 10,000 times, and none gets a value older than its call).
func (s *Store) readKey(ctx context.Context, key string) (*mvccpb.KeyValue, error) {
	s.mu.Lock()
	if s.reads == nil {
		s.reads = map[string]*keyReads{}
	}
	kr := s.reads[key]
	if kr == nil {
		kr = &keyReads{}
		s.reads[key] = kr
	}
	if kr.next == nil {
		kr.next = &keyRead{done: make(chan struct{})}
	}
	r := kr.next
	if !kr.inFlight {
		kr.inFlight, kr.next = true, nil
		go s.runReads(key, kr, r)
	}
	s.mu.Unlock()
	select {
	case <-r.done:
		return r.kv, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// readTimeout bounds one shared read.
const readTimeout = 5 * time.Second

// runReads performs r, then the read the callers that came meanwhile wait
// for, until none is waiting.
func (s *Store) runReads(key string, kr *keyReads, r *keyRead) {
	for r != nil {
		ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
		resp, err := s.st.Client().Get(ctx, key)
		cancel()
		if err == nil && len(resp.Kvs) > 0 {
			r.kv = resp.Kvs[0]
		}
		r.err = err
		close(r.done)
		s.mu.Lock()
		r, kr.next = kr.next, nil
		if r == nil {
			kr.inFlight = false
			delete(s.reads, key)
		}
		s.mu.Unlock()
	}
}

// openKey reads the secret record under key and returns it decrypted.
func (s *Store) openKey(ctx context.Context, name, key, what string) (openedSecret, error) {
	kv, err := s.readKey(ctx, key)
	if err != nil {
		return openedSecret{}, fmt.Errorf("read %s: %w", what, err)
	}
	if kv == nil {
		return openedSecret{}, fmt.Errorf("%s: %w", what, store.ErrNotFound)
	}
	s.mu.Lock()
	o, ok := s.opened[key]
	s.mu.Unlock()
	if ok && o.modRev == kv.ModRevision {
		return o, nil
	}
	st, err := decode(name, kv.Value)
	if err != nil {
		return openedSecret{}, err
	}
	p, err := s.open(name, st.rec)
	if err != nil {
		return openedSecret{}, err
	}
	o = openedSecret{modRev: kv.ModRevision, version: st.rec.version(),
		material: &pb.SecretMaterial{Name: name, Pfx: p.PFX, Password: p.Password, Thumbprint: st.info.GetThumbprint()}}
	s.mu.Lock()
	if s.opened == nil || len(s.opened) >= maxOpened {
		s.opened = map[string]openedSecret{}
	}
	s.opened[key] = o
	s.mu.Unlock()
	return o, nil
}

// CheckTopology checks every token-issuer secret a topology names: it must
// exist and open, and its certificate is checked against the rules that
// bind the deployment's product (certs.RuleAppliesTo: the SIP-domain rules
// are Lync's) and the topology's SIP domains. Errors refuse the topology;
// warnings (CN not exactly the default SIP domain, a SAN lacking an
// additional SIP domain, expiry within 30 days) are shown to the operator
// and refuse nothing, unless the topology says certificateRules: strict,
// which makes them errors. Both point at the tokenIssuer.secret line of the
// file and end with the rule id. err is for a failure to read the store.
func (s *Store) CheckTopology(ctx context.Context, t *topology.Topology) (errs, warnings []topology.FieldViolation, err error) {
	// Every violation points at the tokenIssuer line of the file.
	defer func() {
		for _, vs := range [][]topology.FieldViolation{errs, warnings} {
			for i := range vs {
				vs[i].Line, vs[i].Column = t.Position(vs[i].Field)
			}
		}
	}()
	now := s.now()
	// The version checked is the one the hosts will use.
	pins, err := s.Pins(ctx, t)
	if err != nil {
		return nil, nil, err
	}
	type pfx struct {
		b   *certs.Bundle
		err error
	}
	loaded := map[Ref]pfx{}
	for i, d := range t.Deployments {
		if d.TokenIssuer == nil || d.TokenIssuer.Secret == "" {
			continue
		}
		field := "deployments[" + strconv.Itoa(i) + "].tokenIssuer.secret"
		name := d.TokenIssuer.Secret
		ref := Ref{Name: name, Version: pins[name].Version}
		l, ok := loaded[ref]
		if !ok {
			// Once per secret version, however many deployments name it:
			// opening a PFX is slow by design (its key derivation).
			m, err := s.material(ctx, name, ref.Version)
			if errors.Is(err, store.ErrNotFound) {
				errs = append(errs, topology.FieldViolation{Field: field, Value: name, Description: "no such secret: upload the PFX first with `s2s-controller secret put " + name + " --pfx FILE --password-file FILE`"})
				continue
			}
			if err != nil {
				return nil, nil, err
			}
			l.b, l.err = certs.LoadPFXContext(ctx, m.GetPfx(), m.GetPassword())
			loaded[ref] = l
		}
		b, err := l.b, l.err
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, fmt.Errorf("check secret %s: %w", name, err)
			}
			errs = append(errs, topology.FieldViolation{Field: field, Value: name, Description: err.Error()})
			continue
		}
		product, _ := products.Parse(d.Product)
		req := certs.Requirements{
			Product:              product,
			DefaultSIPDomain:     t.SIPDomains.Default,
			AdditionalSIPDomains: t.SIPDomains.Additional,
			Strict:               t.CertificateRules == topology.CertificateRulesStrict,
			Now:                  now,
		}
		for _, f := range certs.Check(b.Cert, b.Key != nil, req) {
			v := topology.FieldViolation{Field: field, Value: name, Description: f.Message}
			if f.Severity == certs.SeverityError {
				errs = append(errs, v)
			} else {
				warnings = append(warnings, v)
			}
		}
	}
	return errs, warnings, nil
}

// CertificateOf parses a PFX's certificate; used by tests and the CLI.
func CertificateOf(pfx []byte, password string) (*x509.Certificate, error) {
	b, err := certs.LoadPFX(pfx, password)
	if err != nil {
		return nil, err
	}
	return b.Cert, nil
}
