// Package store keeps the controller's state in etcd: every topology
// revision, host state and status reports, the primary host of each
// deployment, agent presence, and (sealed) secrets.
//
// Key layout under the prefix (default "/s2strust/"):
//
//	topology/current          canonical JSON of the current topology; its ModRevision is the version
//	topology/rev/<%020d>      every stored revision, written after the current key
//	secrets/<name>            the newest version of a secret (sealed PFX and password)
//	secretversions/<name>/<%020d>  every version of a secret, the newest included
//	hoststate/<fqdn>          pb.Host (binary), written only when it changes
//	hostreport/<fqdn>         pb.StatusReport (binary), written only when it changes
//	primary/<deployment>      the host that applies deployment-scope items
//	presence/<fqdn>           present while the host's agent has a stream; leased
//
// Host state and status reports live under separate prefixes, so that
// listing hosts (a range over hoststate/) reads no report. Controllers
// before that kept both under hosts/<fqdn>/state and hosts/<fqdn>/report:
// MigrateHostLayout moves them, and the hub runs it before loading state.
//
// Versions are etcd revisions, so they only grow, also across controller
// restarts and failovers; they order revisions internally. Operators see a
// second number beside each: the sequence 1, 2, 3 … of the topology's
// revisions, stored in the revision's record (see TopologyRecord.Sequence).
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// DefaultPrefix is the key prefix of everything s2strust stores.
const DefaultPrefix = "/s2strust/"

// ErrConflict means an expected revision did not match the stored one.
var ErrConflict = errors.New("revision conflict")

// ErrNotFound means the requested record does not exist.
var ErrNotFound = errors.New("not found")

// Store reads and writes the controller's state in etcd.
type Store struct {
	cli    *clientv3.Client
	prefix string
	quota  int64

	// current is the current topology record as last read, decoded (see
	// CurrentTopology); nil until then.
	currentMu sync.Mutex
	current   *TopologyRecord
}

// New returns a Store using cli, with every key under prefix.
func New(cli *clientv3.Client, prefix string, opts ...Option) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	s := &Store{cli: cli, prefix: prefix}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Client is the underlying etcd client.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Key returns the full etcd key for a relative key.
func (s *Store) Key(rel string) string { return s.prefix + rel }

// TopologyPrefix is the prefix under which topology keys live, for watching.
func (s *Store) TopologyPrefix() string { return s.Key("topology/") }

// PresencePrefix is the prefix of presence keys, for watching.
func (s *Store) PresencePrefix() string { return s.Key("presence/") }

// TopologyRecord is one stored topology revision.
type TopologyRecord struct {
	// Revision is the etcd revision of the change: versions pushed to
	// agents, ordering revisions internally.
	Revision  uint64    `json:"-"`
	Name      string    `json:"name"`
	Document  []byte    `json:"document"`
	Hash      string    `json:"hash"`
	AppliedAt time.Time `json:"appliedAt"`
	AppliedBy string    `json:"appliedBy"`
	// Sequence numbers the topology's revisions 1, 2, 3 … for operators.
	// Records written before it existed have none stored; reading them
	// fills it in by their order among the stored revisions, which is the
	// number they would have had (migration by order, nothing rewritten).
	Sequence uint64 `json:"sequence,omitempty"`
	// Secrets pins, for each secret the topology names, the version its
	// hosts use. Storing a new version of a secret changes no pin, so no
	// host's desired state; a rotation or rollout stores a revision with a
	// new pin. Records without pins use each secret's newest version.
	Secrets map[string]SecretPin `json:"secrets,omitempty"`
	// Rotation is the phase of a certificate rotation this revision
	// carries beside the operator's document (nil outside a rotation):
	// the compiler lays it over the hosts' configurations. Hash covers
	// it, so each phase is a revision of its own with its own rollout.
	Rotation *RotationOverlay `json:"rotation,omitempty"`
}

// RotationOverlay is one phase of a token-issuer certificate rotation as
// a revision stores it (see package controller/rotation, which lays it
// over the compiled host configurations).
type RotationOverlay struct {
	// Rotation names it: "rotations/{id}".
	Rotation   string `json:"rotation"`
	Deployment string `json:"deployment"`
	// Phase is "stage", "refresh", "activate" or "retire".
	Phase string `json:"phase"`
	// OldThumbprint is the certificate rotated from, NewThumbprint the one
	// rotated to: secret NewSecret at NewVersion.
	OldThumbprint string    `json:"oldThumbprint"`
	NewSecret     string    `json:"newSecret"`
	NewVersion    uint64    `json:"newVersion"`
	NewThumbprint string    `json:"newThumbprint"`
	Effective     time.Time `json:"effective"`
}

// RecordHash is the hash a revision is stored under: its document's
// (DocumentHash) outside a rotation, the document's and the rotation
// phase's together during one.
func RecordHash(doc []byte, o *RotationOverlay) string {
	if o == nil {
		return DocumentHash(doc)
	}
	b, _ := json.Marshal(o)
	sum := sha256.New()
	sum.Write(doc)
	sum.Write([]byte("\x00rotation\x00"))
	sum.Write(b)
	return hex.EncodeToString(sum.Sum(nil))
}

// SecretPin is the version of a secret a topology revision uses, with the
// thumbprint of its certificate (part of the hosts' desired state).
type SecretPin struct {
	Version    uint64 `json:"version"`
	Thumbprint string `json:"thumbprint"`
}

// samePins reports whether two revisions pin the same secret versions.
func samePins(a, b map[string]SecretPin) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func (s *Store) currentKey() string { return s.Key("topology/current") }

func (s *Store) revKey(rev uint64) string {
	return s.Key(fmt.Sprintf("topology/rev/%020d", rev))
}

// DocumentHash is the hash stored with a topology document.
func DocumentHash(doc []byte) string {
	sum := sha256.Sum256(doc)
	return hex.EncodeToString(sum[:])
}

// DecodeTopology decodes the value of topology/current at revision rev.
func DecodeTopology(value []byte, rev int64) (*TopologyRecord, error) {
	var rec TopologyRecord
	if err := json.Unmarshal(value, &rec); err != nil {
		return nil, fmt.Errorf("decode stored topology at revision %d: %w", rev, err)
	}
	rec.Revision = uint64(rev)
	return &rec, nil
}

// IsCurrentTopologyKey reports whether key is topology/current.
func (s *Store) IsCurrentTopologyKey(key []byte) bool { return string(key) == s.currentKey() }

// CurrentRevision returns the etcd revision of the current topology,
// read without the record itself (a large fleet's is megabytes), or
// ErrNotFound.
func (s *Store) CurrentRevision(ctx context.Context) (uint64, error) {
	resp, err := s.cli.Get(ctx, s.currentKey(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("read current topology: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return 0, ErrNotFound
	}
	return uint64(resp.Kvs[0].ModRevision), nil
}

// CurrentTopology returns the current topology, or ErrNotFound. The
// record of a large fleet is megabytes, and an apply asks for it several
// times (its secret checks, its pins, its write): the revision is read
// first, without the value, and the record last read is returned again
// while it is still current (a key's value at one mod revision never
// changes). The copy returned shares the document and the pins: callers
// do not modify them.
func (s *Store) CurrentTopology(ctx context.Context) (*TopologyRecord, error) {
	s.currentMu.Lock()
	cached := s.current
	s.currentMu.Unlock()
	if cached != nil {
		rev, err := s.CurrentRevision(ctx)
		if err != nil {
			return nil, err
		}
		if rev == cached.Revision {
			rec := *cached
			return &rec, nil
		}
	}
	resp, err := s.cli.Get(ctx, s.currentKey())
	if err != nil {
		return nil, fmt.Errorf("read current topology: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, ErrNotFound
	}
	rec, err := DecodeTopology(resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
	if err != nil {
		return nil, err
	}
	if err := s.fillSequences(ctx, []*TopologyRecord{rec}); err != nil {
		return nil, err
	}
	keep := *rec
	s.currentMu.Lock()
	if s.current == nil || s.current.Revision < keep.Revision {
		s.current = &keep
	}
	s.currentMu.Unlock()
	return rec, nil
}

// fillSequences gives records stored without a sequence number (written
// before it existed) the number of their place among the stored
// revisions. recs are sorted newest first; those without a number are
// older than every one with a number, since every newer write stores it.
func (s *Store) fillSequences(ctx context.Context, recs []*TopologyRecord) error {
	var prev uint64
	for i := len(recs) - 1; i >= 0; i-- {
		r := recs[i]
		if r.Sequence == 0 {
			if prev == 0 {
				n, err := s.revisionsBefore(ctx, r.Revision)
				if err != nil {
					return err
				}
				prev = n
			}
			r.Sequence = prev + 1
		}
		prev = r.Sequence
	}
	return nil
}

// revisionsBefore counts the stored revisions older than rev.
func (s *Store) revisionsBefore(ctx context.Context, rev uint64) (uint64, error) {
	resp, err := s.cli.Get(ctx, s.Key("topology/rev/"), clientv3.WithRange(s.revKey(rev)), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("number topology revision %d: %w", rev, err)
	}
	return uint64(resp.Count), nil
}

// SequenceOf returns the sequence number (1, 2, 3 …) operators know the
// topology revision rev by, or ErrNotFound. Rollouts and the fleet view
// show it beside the version.
func (s *Store) SequenceOf(ctx context.Context, rev uint64) (uint64, error) {
	rec, err := s.TopologyRevision(ctx, rev)
	if err != nil {
		return 0, err
	}
	return rec.Sequence, nil
}

// PutTopology stores doc as the new current topology and returns its
// revision. With expected set, it stores only if the current revision
// equals *expected (0: none yet) and returns ErrConflict otherwise. A
// document identical to the current one is not stored again: the current
// revision is returned with changed false.
//
// audit, when set, is written in the same transaction under
// audit/topology/<time>: a stored change never lacks its audit record. The
// record's create revision is the topology revision.
func (s *Store) PutTopology(ctx context.Context, name string, doc []byte, appliedBy string, now time.Time, expected *uint64, audit []byte) (rev uint64, changed bool, err error) {
	rev, _, changed, err = s.PutTopologyPinned(ctx, name, doc, nil, appliedBy, now, expected, audit)
	return rev, changed, err
}

// PutTopologyPinned is PutTopology for a document whose secrets are
// pinned to versions (nil: none pinned). A document identical to the
// current one with the same pins is not stored again. It also returns the
// revision's sequence number: the current one's plus one.
func (s *Store) PutTopologyPinned(ctx context.Context, name string, doc []byte, pins map[string]SecretPin, appliedBy string, now time.Time, expected *uint64, audit []byte) (rev, seq uint64, changed bool, err error) {
	return s.PutTopologyWith(ctx, name, doc, pins, nil, appliedBy, now, expected, audit, nil)
}

// WithTopology adds writes to the transaction that stores a topology
// revision. It is called on each attempt with the current revision (nil:
// none yet) and the new revision's sequence number; its comparisons guard
// its operations, and the revision is stored together with them or, like
// them, not at all. A refused comparison makes PutTopologyWith try again
// on what is current then (also with expected set: only a changed current
// revision is a conflict). An error from it ends the put, nothing stored.
type WithTopology func(ctx context.Context, cur *TopologyRecord, seq uint64) ([]clientv3.Cmp, []clientv3.Op, error)

// PutTopologyWith is PutTopologyPinned for a revision that carries a
// rotation phase o (nil: none), storing also's writes in the same
// transaction (also nil: none). A revision identical to the current one
// (document, pins and phase) is not stored again, and also is then not
// called.
func (s *Store) PutTopologyWith(ctx context.Context, name string, doc []byte, pins map[string]SecretPin, o *RotationOverlay, appliedBy string, now time.Time, expected *uint64, audit []byte, also WithTopology) (rev, seq uint64, changed bool, err error) {
	rec := TopologyRecord{Name: name, Document: doc, Hash: RecordHash(doc, o), AppliedAt: now.UTC(), AppliedBy: appliedBy, Rotation: o}
	if len(pins) > 0 {
		rec.Secrets = pins
	}
	// Without a precondition a lost race is retried on the new current, a
	// bounded number of times.
	const attempts = 10
	for range attempts {
		cur, err := s.CurrentTopology(ctx)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return 0, 0, false, err
		}
		var curRev int64
		var curSeq uint64
		if cur != nil {
			curRev, curSeq = int64(cur.Revision), cur.Sequence
		}
		if expected != nil && uint64(curRev) != *expected {
			return uint64(curRev), curSeq, false, fmt.Errorf("expected revision %d, current is %d: %w", *expected, curRev, ErrConflict)
		}
		if cur != nil && cur.Hash == rec.Hash && samePins(cur.Secrets, rec.Secrets) {
			return cur.Revision, curSeq, false, nil
		}
		// The transaction below compares the current key's revision, so two
		// applies never get the same number.
		rec.Sequence = curSeq + 1
		val, err := json.Marshal(rec)
		if err != nil {
			return 0, 0, false, fmt.Errorf("encode topology: %w", err)
		}
		// Compare on the revision read above so a concurrent apply is never lost.
		ops := []clientv3.Op{clientv3.OpPut(s.currentKey(), string(val))}
		if audit != nil {
			ops = append(ops, clientv3.OpPut(AuditKey(s, "topology", now), string(audit)))
		}
		var alsoCmps []clientv3.Cmp
		if also != nil {
			cmps, more, err := also(ctx, cur, rec.Sequence)
			if err != nil {
				return 0, 0, false, err
			}
			alsoCmps, ops = cmps, append(ops, more...)
		}
		// also's comparisons guard the whole write from inside, so that a
		// refusal of theirs is told apart from a changed current revision.
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.currentKey()), "=", curRev)).
			Then(clientv3.OpTxn(alsoCmps, ops, nil)).
			Commit()
		if err != nil {
			return 0, 0, false, fmt.Errorf("store topology: %w", s.writeErr(err))
		}
		if !resp.Succeeded {
			if expected != nil {
				return 0, 0, false, fmt.Errorf("topology changed concurrently: %w", ErrConflict)
			}
			continue
		}
		if !resp.Responses[0].GetResponseTxn().GetSucceeded() {
			continue
		}
		rev = uint64(resp.Header.Revision)
		if err := s.recordRevision(ctx, rev, val); err != nil {
			return rev, rec.Sequence, true, err
		}
		return rev, rec.Sequence, true, nil
	}
	return 0, 0, false, fmt.Errorf("topology changed concurrently %d times in a row: %w", attempts, ErrConflict)
}

// AuditKey is a fresh key for an audit record of the given kind: time
// ordered, and unique even when two changes share a timestamp. The
// record's create revision is the revision of the change it records.
func AuditKey(s *Store, kind string, now time.Time) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return s.Key(fmt.Sprintf("audit/%s/%020d-%s", kind, now.UnixNano(), hex.EncodeToString(b)))
}

// recordRevision writes the history entry of a revision. It runs after the
// current key is written; RepairHistory fills an entry lost to a crash in
// between.
func (s *Store) recordRevision(ctx context.Context, rev uint64, val []byte) error {
	if _, err := s.cli.Put(ctx, s.revKey(rev), string(val)); err != nil {
		return fmt.Errorf("record topology revision %d: %w", rev, s.writeErr(err))
	}
	return nil
}

// RepairHistory makes sure the current revision has its history entry.
func (s *Store) RepairHistory(ctx context.Context) error {
	resp, err := s.cli.Get(ctx, s.currentKey())
	if err != nil {
		return fmt.Errorf("read current topology: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	kv := resp.Kvs[0]
	h, err := s.cli.Get(ctx, s.revKey(uint64(kv.ModRevision)), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("read topology history: %w", err)
	}
	if h.Count == 0 {
		return s.recordRevision(ctx, uint64(kv.ModRevision), kv.Value)
	}
	return nil
}

// TopologyRevision returns one stored revision, or ErrNotFound.
func (s *Store) TopologyRevision(ctx context.Context, rev uint64) (*TopologyRecord, error) {
	resp, err := s.cli.Get(ctx, s.revKey(rev))
	if err != nil {
		return nil, fmt.Errorf("read topology revision %d: %w", rev, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("topology revision %d: %w", rev, ErrNotFound)
	}
	rec, err := DecodeTopology(resp.Kvs[0].Value, int64(rev))
	if err != nil {
		return nil, err
	}
	if err := s.fillSequences(ctx, []*TopologyRecord{rec}); err != nil {
		return nil, err
	}
	return rec, nil
}

// ListTopologyRevisions lists up to limit revisions older than before (0:
// from the newest), newest first.
func (s *Store) ListTopologyRevisions(ctx context.Context, limit int, before uint64) ([]*TopologyRecord, error) {
	start := s.Key("topology/rev/")
	end := clientv3.GetPrefixRangeEnd(start)
	if before > 0 {
		end = s.revKey(before)
	}
	resp, err := s.cli.Get(ctx, start, clientv3.WithRange(end),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("list topology revisions: %w", err)
	}
	out := make([]*TopologyRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		n, err := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), start), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("list topology revisions: bad key %q", kv.Key)
		}
		rec, err := DecodeTopology(kv.Value, int64(n))
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	if err := s.fillSequences(ctx, out); err != nil {
		return nil, err
	}
	return out, nil
}

// PutProto writes a message under a relative key.
func (s *Store) PutProto(ctx context.Context, rel string, m proto.Message) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", rel, err)
	}
	if _, err := s.cli.Put(ctx, s.Key(rel), string(b)); err != nil {
		return fmt.Errorf("write %s: %w", rel, s.writeErr(err))
	}
	return nil
}

// GetProto reads a message from a relative key; found is false when absent.
func (s *Store) GetProto(ctx context.Context, rel string, m proto.Message) (found bool, err error) {
	resp, err := s.cli.Get(ctx, s.Key(rel))
	if err != nil {
		return false, fmt.Errorf("read %s: %w", rel, err)
	}
	if len(resp.Kvs) == 0 {
		return false, nil
	}
	if err := proto.Unmarshal(resp.Kvs[0].Value, m); err != nil {
		return false, fmt.Errorf("decode %s: %w", rel, err)
	}
	return true, nil
}

// HostStateKey is the relative key of a host's state.
func HostStateKey(host string) string { return "hoststate/" + host }

// HostReportKey is the relative key of a host's latest status report.
func HostReportKey(host string) string { return "hostreport/" + host }

// HostStatePrefix is the full prefix of host state keys, for ranges and watches.
func (s *Store) HostStatePrefix() string { return s.Key("hoststate/") }

// HostReportPrefix is the full prefix of status report keys, for ranges and watches.
func (s *Store) HostReportPrefix() string { return s.Key("hostreport/") }

// HostStates reads every stored host state, by host (no report).
func (s *Store) HostStates(ctx context.Context) (map[string]*pb.Host, error) {
	resp, err := s.cli.Get(ctx, s.HostStatePrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read host states: %w", err)
	}
	out := make(map[string]*pb.Host, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		h := &pb.Host{}
		if err := proto.Unmarshal(kv.Value, h); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		out[strings.TrimPrefix(string(kv.Key), s.HostStatePrefix())] = h
	}
	return out, nil
}

// HostStatesBetween reads the stored states of the hosts from first to
// last (by name, both included) in one range read. A page of the fleet
// view reads only its own hosts' states.
func (s *Store) HostStatesBetween(ctx context.Context, first, last string) (map[string]*pb.Host, error) {
	return between(ctx, s, s.HostStatePrefix(), first, last, func() *pb.Host { return &pb.Host{} })
}

// HostStatesOf reads the stored states of the given hosts, one Get each,
// in transactions of at most 100.
func (s *Store) HostStatesOf(ctx context.Context, hosts []string) (map[string]*pb.Host, error) {
	return of(ctx, s, s.HostStatePrefix(), hosts, func() *pb.Host { return &pb.Host{} })
}

// HostReportsBetween is HostStatesBetween for status reports.
func (s *Store) HostReportsBetween(ctx context.Context, first, last string) (map[string]*pb.StatusReport, error) {
	return between(ctx, s, s.HostReportPrefix(), first, last, func() *pb.StatusReport { return &pb.StatusReport{} })
}

// HostReportsOf is HostStatesOf for status reports.
func (s *Store) HostReportsOf(ctx context.Context, hosts []string) (map[string]*pb.StatusReport, error) {
	return of(ctx, s, s.HostReportPrefix(), hosts, func() *pb.StatusReport { return &pb.StatusReport{} })
}

func between[M proto.Message](ctx context.Context, s *Store, prefix, first, last string, mk func() M) (map[string]M, error) {
	resp, err := s.cli.Get(ctx, prefix+first, clientv3.WithRange(prefix+last+"\x00"))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", strings.TrimPrefix(prefix, s.prefix), err)
	}
	return decodeAll(prefix, resp.Kvs, mk)
}

func of[M proto.Message](ctx context.Context, s *Store, prefix string, hosts []string, mk func() M) (map[string]M, error) {
	out := make(map[string]M, len(hosts))
	for len(hosts) > 0 {
		n := min(len(hosts), 100)
		ops := make([]clientv3.Op, n)
		for i, h := range hosts[:n] {
			ops[i] = clientv3.OpGet(prefix + h)
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", strings.TrimPrefix(prefix, s.prefix), err)
		}
		for _, r := range resp.Responses {
			m, err := decodeAll(prefix, r.GetResponseRange().GetKvs(), mk)
			if err != nil {
				return nil, err
			}
			maps.Copy(out, m)
		}
		hosts = hosts[n:]
	}
	return out, nil
}

func decodeAll[M proto.Message](prefix string, kvs []*mvccpb.KeyValue, mk func() M) (map[string]M, error) {
	out := make(map[string]M, len(kvs))
	for _, kv := range kvs {
		m := mk()
		if err := proto.Unmarshal(kv.Value, m); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		out[strings.TrimPrefix(string(kv.Key), prefix)] = m
	}
	return out, nil
}

// HostRecord reads one host's state and latest report in one etcd round
// trip; either is nil when absent.
func (s *Store) HostRecord(ctx context.Context, host string) (*pb.Host, *pb.StatusReport, error) {
	resp, err := s.cli.Txn(ctx).Then(clientv3.OpGet(s.Key(HostStateKey(host))), clientv3.OpGet(s.Key(HostReportKey(host)))).Commit()
	if err != nil {
		return nil, nil, fmt.Errorf("read host %s: %w", host, err)
	}
	var st *pb.Host
	var rep *pb.StatusReport
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
		st = &pb.Host{}
		if err := proto.Unmarshal(kvs[0].Value, st); err != nil {
			return nil, nil, fmt.Errorf("decode %s: %w", kvs[0].Key, err)
		}
	}
	if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) == 1 {
		rep = &pb.StatusReport{}
		if err := proto.Unmarshal(kvs[0].Value, rep); err != nil {
			return nil, nil, fmt.Errorf("decode %s: %w", kvs[0].Key, err)
		}
	}
	return st, rep, nil
}

// legacyHostsPrefix is where controllers before the split kept host state
// and reports: hosts/<fqdn>/state and hosts/<fqdn>/report.
const legacyHostsPrefix = "hosts/"

// migrateBatch keys move per transaction (two operations each, within
// etcd's default limit of 128 operations per transaction).
const migrateBatch = 60

// MigrateHostLayout moves host state and reports from the layout before
// the split (hosts/<fqdn>/state, hosts/<fqdn>/report) to hoststate/<fqdn>
// and hostreport/<fqdn>, and returns how many keys it moved. A key already
// in the new layout is newer (written by a controller that has the split)
// and wins; the old one is deleted. Each move is conditioned on the old
// key being unchanged, so a write by an old replica meanwhile is moved by
// the next run rather than lost. Safe to run concurrently and again: with
// nothing left it costs one count-only read.
func (s *Store) MigrateHostLayout(ctx context.Context) (int, error) {
	old := s.Key(legacyHostsPrefix)
	moved, raced := 0, 0
	for {
		resp, err := s.cli.Get(ctx, old, clientv3.WithPrefix(), clientv3.WithLimit(migrateBatch))
		if err != nil {
			return moved, fmt.Errorf("read host keys of the old layout: %w", err)
		}
		if len(resp.Kvs) == 0 {
			return moved, nil
		}
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for _, kv := range resp.Kvs {
			rel := strings.TrimPrefix(string(kv.Key), old)
			var next string
			switch host, kind, _ := strings.Cut(rel, "/"); kind {
			case "state":
				next = s.Key(HostStateKey(host))
			case "report":
				next = s.Key(HostReportKey(host))
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision))
			ops = append(ops, clientv3.OpDelete(string(kv.Key)))
			if next != "" { // anything else under hosts/ was never written by s2strust: dropped
				ops = append(ops, clientv3.OpTxn(
					[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(next), "=", 0)},
					[]clientv3.Op{clientv3.OpPut(next, string(kv.Value))}, nil))
			}
		}
		tr, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return moved, fmt.Errorf("move host keys to the new layout: %w", s.writeErr(err))
		}
		if tr.Succeeded {
			moved, raced = moved+len(resp.Kvs), 0
			continue
		}
		// An old replica rewrote one of them: read the batch again, a
		// bounded number of times in a row.
		if raced++; raced == 10 {
			return moved, fmt.Errorf("move host keys to the new layout: rewritten concurrently %d times in a row (a controller of an older version still running?): %w", raced, ErrConflict)
		}
	}
}

// Primaries reads the primary host of every deployment.
func (s *Store) Primaries(ctx context.Context) (map[string]string, error) {
	return s.stringsUnder(ctx, "primary/")
}

// PrimaryPrefix is the prefix of primary keys, for watching.
func (s *Store) PrimaryPrefix() string { return s.Key("primary/") }

// SecretsPrefix is the prefix of secret keys, for watching.
func (s *Store) SecretsPrefix() string { return s.Key("secrets/") }

// SwapPrimary records next as the primary of a deployment if the stored
// one is still prev ("" for none). Otherwise it returns won false and
// the primary stored now.
func (s *Store) SwapPrimary(ctx context.Context, deployment, prev, next string) (won bool, stored string, err error) {
	k := s.Key("primary/" + deployment)
	cmp := clientv3.Compare(clientv3.Value(k), "=", prev)
	if prev == "" {
		cmp = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
	}
	resp, err := s.cli.Txn(ctx).If(cmp).Then(clientv3.OpPut(k, next)).Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return false, "", fmt.Errorf("record primary of %s: %w", deployment, s.writeErr(err))
	}
	if resp.Succeeded {
		return true, next, nil
	}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
		stored = string(kvs[0].Value)
	}
	return false, stored, nil
}

// Present lists the hosts whose presence key exists, with the owner that wrote it.
func (s *Store) Present(ctx context.Context) (map[string]string, error) {
	return s.stringsUnder(ctx, "presence/")
}

// SetPresent marks host present under lease and returns the revision of
// the write, which a conditional delete of PresenceKey(host) (BatchPut's
// DeleteAt) compares against: a stream clears only its own presence.
func (s *Store) SetPresent(ctx context.Context, host, owner string, lease clientv3.LeaseID) (int64, error) {
	resp, err := s.cli.Put(ctx, s.Key("presence/"+host), owner, clientv3.WithLease(lease))
	if err != nil {
		return 0, fmt.Errorf("record presence of %s: %w", host, s.writeErr(err))
	}
	return resp.Header.Revision, nil
}

// HostFromPresenceKey returns the host of a full presence key.
func (s *Store) HostFromPresenceKey(key []byte) string {
	return strings.TrimPrefix(string(key), s.PresencePrefix())
}

func (s *Store) stringsUnder(ctx context.Context, rel string) (map[string]string, error) {
	p := s.Key(rel)
	resp, err := s.cli.Get(ctx, p, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", rel, err)
	}
	out := make(map[string]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), p)] = string(kv.Value)
	}
	return out, nil
}
