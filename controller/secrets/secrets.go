// Package secrets keeps token-issuer certificates (PFX and password) in
// etcd, sealed with AES-256-GCM under a key kept outside etcd, and serves
// them only to the hosts whose configuration names them.
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
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/peer"
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
}

// New returns a secret store sealing with key (32 bytes).
func New(st *store.Store, key []byte, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{st: st, key: key, now: now}
}

func (s *Store) etcdKey(name string) string { return s.st.Key("secrets/" + name) }

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

// Put opens the PFX with its password, then stores it sealed. It returns
// the certificate's description and whether anything changed.
func (s *Store) Put(ctx context.Context, name string, pfx []byte, password string) (*pb.Secret, bool, error) {
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
	if cur, err := s.get(ctx, name); err == nil && proto.Equal(cur.info, info) {
		if p, err := s.open(name, cur.rec); err == nil && string(p.PFX) == string(pfx) && p.Password == password {
			return &pb.Secret{Name: name, Certificate: info}, false, nil
		}
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
	val, err := json.Marshal(record{Info: ij, Sealed: sealed})
	if err != nil {
		return nil, false, fmt.Errorf("encode secret %s: %w", name, err)
	}
	// The audit record is written in the same transaction as the secret.
	now := s.now()
	_, err = s.st.Client().Txn(ctx).Then(
		clientv3.OpPut(s.etcdKey(name), string(val)),
		clientv3.OpPut(store.AuditKey(s.st, "secret", now), string(s.auditRecord(ctx, now, name, info))),
	).Commit()
	if err != nil {
		return nil, false, fmt.Errorf("store secret %s: %w", name, err)
	}
	return &pb.Secret{Name: name, Certificate: info}, true, nil
}

// auditRecord says who put which certificate under name; never key material.
func (s *Store) auditRecord(ctx context.Context, now time.Time, name string, info *pb.CertificateInfo) []byte {
	who := "unknown"
	if v, ok := ctx.Value(callerKey{}).(string); ok {
		who = v
	}
	from := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		from = p.Addr.String()
	}
	what := "put secret " + name + " (certificate " + info.GetThumbprint() + ", " + info.GetSubject() + ")"
	rec := map[string]any{"kind": "secret", "who": who, "from": from, "when": now.UTC(), "what": what, "result": "ok", "changes": []string{what}}
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
	rec  record
	info *pb.CertificateInfo
}

func (s *Store) get(ctx context.Context, name string) (*stored, error) {
	resp, err := s.st.Client().Get(ctx, s.etcdKey(name))
	if err != nil {
		return nil, fmt.Errorf("read secret %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("secret %s: %w", name, store.ErrNotFound)
	}
	return decode(name, resp.Kvs[0].Value)
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
	p := s.st.Key("secrets/")
	resp, err := s.st.Client().Get(ctx, p, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list secrets: %w", err)
	}
	var out []*pb.Secret
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), p)
		st, err := decode(name, kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, &pb.Secret{Name: name, Certificate: st.info})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, nil
}

// Secrets returns the named secrets decrypted, for delivery to a host.
func (s *Store) Secrets(ctx context.Context, names []string) ([]*pb.SecretMaterial, error) {
	var out []*pb.SecretMaterial
	for _, name := range names {
		st, err := s.get(ctx, name)
		if err != nil {
			return nil, err
		}
		p, err := s.open(name, st.rec)
		if err != nil {
			return nil, err
		}
		out = append(out, &pb.SecretMaterial{Name: name, Pfx: p.PFX, Password: p.Password, Thumbprint: st.info.GetThumbprint()})
	}
	return out, nil
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
	for i, d := range t.Deployments {
		if d.TokenIssuer == nil || d.TokenIssuer.Secret == "" {
			continue
		}
		field := "deployments[" + strconv.Itoa(i) + "].tokenIssuer.secret"
		name := d.TokenIssuer.Secret
		st, err := s.get(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			errs = append(errs, topology.FieldViolation{Field: field, Value: name, Description: "no such secret: upload the PFX first with `s2s-controller secret put " + name + " --pfx FILE --password-file FILE`"})
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		p, err := s.open(name, st.rec)
		if err != nil {
			return nil, nil, err
		}
		b, err := certs.LoadPFXContext(ctx, p.PFX, p.Password)
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
