package rotation

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/rollout"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// ErrStarted is a FAILED_PRECONDITION: the rotation has started.
var ErrStarted = fmt.Errorf("rotation started: %w", store.ErrConflict)

// Store keeps rotations in etcd under <prefix>rotations/<id>, one key per
// rotation, ids zero-padded so that key order is creation order. At most
// one rotation is unfinished at any time, and it is the newest: Create
// refuses another.
type Store struct{ st *store.Store }

// NewStore returns the rotations of st.
func NewStore(st *store.Store) *Store { return &Store{st: st} }

// Prefix is the key prefix of rotations, for watching.
func (s *Store) Prefix() string { return s.st.Key("rotations/") }

const idWidth = 12

// Key is the etcd key of rotation id.
func (s *Store) Key(id uint64) string { return fmt.Sprintf("%s%0*d", s.Prefix(), idWidth, id) }

// Name is the AIP name of rotation id.
func Name(id uint64) string { return fmt.Sprintf("rotations/%d", id) }

// ParseName reads "rotations/{id}"; "rotations/-" (the newest) gives 0.
func ParseName(name string) (uint64, error) {
	rest, ok := strings.CutPrefix(name, "rotations/")
	if !ok {
		return 0, violation("name", name, `a rotation name is "rotations/{id}" (or "rotations/-" for the newest)`)
	}
	if rest == "-" {
		return 0, nil
	}
	id, err := strconv.ParseUint(rest, 10, 64)
	if err != nil || id == 0 {
		return 0, violation("name", name, `a rotation name is "rotations/{id}" with id a number from 1`)
	}
	return id, nil
}

func violation(field, value, format string, args ...any) error {
	return &topology.Error{Violations: []topology.FieldViolation{{Field: field, Value: value, Description: fmt.Sprintf(format, args...)}}}
}

// Stored is a rotation with the etcd mod revision it was read at, for a
// compare-and-swap update.
type Stored struct {
	Rotation *pb.Rotation
	ID       uint64
	ModRev   int64
}

// Decode reads a rotation from a watch event or range read.
func (s *Store) Decode(key, value []byte, modRev int64) (*Stored, error) {
	r := &pb.Rotation{}
	if err := proto.Unmarshal(value, r); err != nil {
		return nil, fmt.Errorf("decode rotation %s: %w", key, err)
	}
	id, err := strconv.ParseUint(strings.TrimPrefix(string(key), s.Prefix()), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("rotation key %s: %w", key, err)
	}
	return &Stored{Rotation: r, ID: id, ModRev: modRev}, nil
}

// Get returns rotation id (0: the newest), store.ErrNotFound when there is none.
func (s *Store) Get(ctx context.Context, id uint64) (*Stored, error) {
	var resp *clientv3.GetResponse
	var err error
	if id == 0 {
		resp, err = s.st.Client().Get(ctx, s.Prefix(), append([]clientv3.OpOption{clientv3.WithPrefix()}, clientv3.WithLastKey()...)...)
	} else {
		resp, err = s.st.Client().Get(ctx, s.Key(id))
	}
	if err != nil {
		return nil, fmt.Errorf("read rotation: %w", err)
	}
	if len(resp.Kvs) == 0 {
		if id == 0 {
			return nil, fmt.Errorf("no rotation yet: %w", store.ErrNotFound)
		}
		return nil, fmt.Errorf("%s: %w", Name(id), store.ErrNotFound)
	}
	kv := resp.Kvs[0]
	return s.Decode(kv.Key, kv.Value, kv.ModRevision)
}

// Active returns the unfinished rotation, nil when there is none.
func (s *Store) Active(ctx context.Context) (*Stored, error) {
	cur, err := s.Get(ctx, 0)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil || Finished(cur.Rotation) {
		return nil, err
	}
	return cur, nil
}

// List returns up to limit rotations older than before (0: from the
// newest), newest first.
func (s *Store) List(ctx context.Context, limit int, before uint64) ([]*Stored, error) {
	end := clientv3.GetPrefixRangeEnd(s.Prefix())
	if before > 0 {
		end = s.Key(before)
	}
	resp, err := s.st.Client().Get(ctx, s.Prefix(), clientv3.WithRange(end), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("list rotations: %w", err)
	}
	var out []*Stored
	for _, kv := range resp.Kvs {
		r, err := s.Decode(kv.Key, kv.Value, kv.ModRevision)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Create stores r as the next rotation and names it. An unfinished
// rotation is a FAILED_PRECONDITION naming it, and so is one created
// concurrently; nothing is stored then.
func (s *Store) Create(ctx context.Context, r *pb.Rotation) (*Stored, error) {
	prev, err := s.Get(ctx, 0)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	id := uint64(1)
	var cmps []clientv3.Cmp
	if prev != nil {
		if !Finished(prev.Rotation) {
			return nil, Busy(prev.Rotation)
		}
		id = prev.ID + 1
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.Key(prev.ID)), "=", prev.ModRev))
	}
	r.Name = Name(id)
	b, err := proto.Marshal(r)
	if err != nil {
		return nil, err
	}
	k := s.Key(id)
	cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
	resp, err := s.st.Client().Txn(ctx).If(cmps...).Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", r.Name, s.st.WriteErr(err))
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("another rotation was created at the same time: %w", store.ErrConflict)
	}
	return &Stored{Rotation: r, ID: id, ModRev: resp.Header.Revision}, nil
}

// Busy is the FAILED_PRECONDITION of a rotation refused because r is unfinished.
func Busy(r *pb.Rotation) error {
	what := StateName(r.GetState())
	if r.GetState() == pb.RotationState_ROTATION_STATE_RUNNING {
		what += " (phase " + PhaseName(r.GetCurrentPhase()) + ")"
	}
	return fmt.Errorf("a rotation is already under way: %s of deployment %s is %s; one rotation at a time: wait for it (`s2s-controller rotate status -w`), or cancel it while it is only scheduled: %w",
		r.GetName(), r.GetDeployment(), what, store.ErrConflict)
}

// Update stores r over the version read as cur, fenced. A concurrent
// change is store.ErrConflict; a lost leadership rollout.ErrFenced.
func (s *Store) Update(ctx context.Context, cur *Stored, r *pb.Rotation, fence []clientv3.Cmp) (*Stored, error) {
	b, err := proto.Marshal(r)
	if err != nil {
		return nil, err
	}
	k := s.Key(cur.ID)
	inner := clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", cur.ModRev)}, []clientv3.Op{clientv3.OpPut(k, string(b))}, nil)
	resp, err := s.st.Client().Txn(ctx).If(fence...).Then(inner).Commit()
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", r.GetName(), s.st.WriteErr(err))
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("store %s: %w", r.GetName(), rollout.ErrFenced)
	}
	if !resp.Responses[0].GetResponseTxn().GetSucceeded() {
		return nil, fmt.Errorf("%s changed concurrently: %w", r.GetName(), store.ErrConflict)
	}
	return &Stored{Rotation: r, ID: cur.ID, ModRev: resp.Header.Revision}, nil
}
