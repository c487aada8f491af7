package rollout

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Store keeps rollouts in etcd under <prefix>rollouts/<id>, one key per
// rollout, ids zero-padded so that key order is creation order.
type Store struct{ st *store.Store }

// NewStore returns the rollouts of st.
func NewStore(st *store.Store) *Store { return &Store{st: st} }

// Prefix is the key prefix of rollouts, for watching.
func (s *Store) Prefix() string { return s.st.Key("rollouts/") }

const idWidth = 12

// Key is the etcd key of rollout id.
func (s *Store) Key(id uint64) string { return s.key(id) }

func (s *Store) key(id uint64) string { return fmt.Sprintf("%s%0*d", s.Prefix(), idWidth, id) }

// ParseName reads "rollouts/{id}"; "rollouts/-" (the newest) gives 0.
func ParseName(name string) (uint64, error) {
	rest, ok := strings.CutPrefix(name, "rollouts/")
	if !ok {
		return 0, violation("name", name, `a rollout name is "rollouts/{id}" (or "rollouts/-" for the newest)`)
	}
	if rest == "-" {
		return 0, nil
	}
	id, err := strconv.ParseUint(rest, 10, 64)
	if err != nil || id == 0 {
		return 0, violation("name", name, `a rollout name is "rollouts/{id}" with id a number from 1`)
	}
	return id, nil
}

// Name is the AIP name of rollout id.
func Name(id uint64) string { return fmt.Sprintf("rollouts/%d", id) }

// Stored is a rollout with the etcd mod revision it was read at, for a
// compare-and-swap update.
type Stored struct {
	Rollout *pb.Rollout
	ID      uint64
	ModRev  int64
	// CreateRev is the etcd revision the rollout was created at.
	CreateRev int64
}

func (s *Store) decode(kv []byte, key string, modRev int64) (*Stored, error) {
	return s.decodeKV(kv, key, modRev, 0)
}

func (s *Store) decodeKV(kv []byte, key string, modRev, createRev int64) (*Stored, error) {
	r := &pb.Rollout{}
	if err := proto.Unmarshal(kv, r); err != nil {
		return nil, fmt.Errorf("decode rollout %s: %w", key, err)
	}
	id, err := strconv.ParseUint(strings.TrimPrefix(key, s.Prefix()), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("rollout key %s: %w", key, err)
	}
	return &Stored{Rollout: r, ID: id, ModRev: modRev, CreateRev: createRev}, nil
}

// Decode reads a rollout from a watch event or range read.
func (s *Store) Decode(key, value []byte, modRev int64) (*Stored, error) {
	return s.decode(value, string(key), modRev)
}

// Get returns rollout id (0: the newest), store.ErrNotFound when there is none.
func (s *Store) Get(ctx context.Context, id uint64, opts ...clientv3.OpOption) (*Stored, error) {
	var resp *clientv3.GetResponse
	var err error
	if id == 0 {
		resp, err = s.st.Client().Get(ctx, s.Prefix(), append(append([]clientv3.OpOption{clientv3.WithPrefix()}, clientv3.WithLastKey()...), opts...)...)
	} else {
		resp, err = s.st.Client().Get(ctx, s.key(id), opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("read rollout: %w", err)
	}
	if len(resp.Kvs) == 0 {
		if id == 0 {
			return nil, fmt.Errorf("no rollout yet: %w", store.ErrNotFound)
		}
		return nil, fmt.Errorf("%s: %w", Name(id), store.ErrNotFound)
	}
	kv := resp.Kvs[0]
	return s.decodeKV(kv.Value, string(kv.Key), kv.ModRevision, kv.CreateRevision)
}

// List returns up to limit rollouts older than before (0: from the
// newest), newest first.
func (s *Store) List(ctx context.Context, limit int, before uint64) ([]*Stored, error) {
	end := clientv3.GetPrefixRangeEnd(s.Prefix())
	if before > 0 {
		end = s.key(before)
	}
	resp, err := s.st.Client().Get(ctx, s.Prefix(), clientv3.WithRange(end), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	var out []*Stored
	for _, kv := range resp.Kvs {
		r, err := s.decodeKV(kv.Value, string(kv.Key), kv.ModRevision, kv.CreateRevision)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Create stores r as the next rollout and names it. The newest rollout,
// when unfinished, is aborted in the same transaction (superseded), so at
// most one rollout is ever running. fence conditions the write (nil: none).
func (s *Store) Create(ctx context.Context, r *pb.Rollout, fence []clientv3.Cmp, reason func(newName string) string) (*Stored, error) {
	for range 10 {
		cmps, ops, id, err := s.CreateOps(ctx, r, reason)
		if err != nil {
			return nil, err
		}
		resp, err := s.st.Client().Txn(ctx).If(append(append([]clientv3.Cmp{}, fence...), cmps...)...).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("store %s: %w", r.Name, s.st.WriteErr(err))
		}
		if resp.Succeeded {
			return &Stored{Rollout: r, ID: id, ModRev: resp.Header.Revision, CreateRev: resp.Header.Revision}, nil
		}
	}
	return nil, fmt.Errorf("rollouts created concurrently 10 times in a row: %w", store.ErrConflict)
}

// CreateOps names r as the next rollout and returns the writes that store
// it, aborting the newest rollout when it is unfinished, and the
// comparisons under which they hold (no rollout created or changed since
// they were read), for a caller's transaction: the apply that stores a
// revision and its rollout together. A refused comparison asks for a new
// call. reason gives the abort reason from r's name.
func (s *Store) CreateOps(ctx context.Context, r *pb.Rollout, reason func(newName string) string) (cmps []clientv3.Cmp, ops []clientv3.Op, id uint64, err error) {
	prev, err := s.Get(ctx, 0)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, nil, 0, err
	}
	id = 1
	if prev != nil {
		id = prev.ID + 1
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.key(prev.ID)), "=", prev.ModRev))
		if !Finished(prev.Rollout) {
			old := proto.Clone(prev.Rollout).(*pb.Rollout)
			if err := Abort(old, reason(Name(id)), r.GetCreateTime().AsTime()); err != nil {
				return nil, nil, 0, err
			}
			b, err := proto.Marshal(old)
			if err != nil {
				return nil, nil, 0, err
			}
			ops = append(ops, clientv3.OpPut(s.key(prev.ID), string(b)))
		}
	}
	r.Name = Name(id)
	b, err := proto.Marshal(r)
	if err != nil {
		return nil, nil, 0, err
	}
	k := s.key(id)
	cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
	return cmps, append(ops, clientv3.OpPut(k, string(b))), id, nil
}

// storedWith returns the topology revision stored in the transaction that
// created rollout cur (its create revision), nil when none was: the
// rollout was created on its own, before its revision.
func (s *Store) storedWith(ctx context.Context, cur *Stored) (*store.TopologyRecord, error) {
	if cur.CreateRev <= 0 {
		return nil, nil
	}
	rec, err := s.st.TopologyRevision(ctx, uint64(cur.CreateRev))
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	case rec.Hash != cur.Rollout.GetDocumentHash():
		return nil, nil
	}
	return rec, nil
}

// ErrFenced says a write was refused because this replica no longer leads.
var ErrFenced = errors.New("not the leader any more: write refused")

// Update stores r over the version read as cur, fenced. A concurrent
// change is store.ErrConflict; a lost leadership ErrFenced.
func (s *Store) Update(ctx context.Context, cur *Stored, r *pb.Rollout, fence []clientv3.Cmp) (*Stored, error) {
	b, err := proto.Marshal(r)
	if err != nil {
		return nil, err
	}
	k := s.key(cur.ID)
	inner := clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", cur.ModRev)}, []clientv3.Op{clientv3.OpPut(k, string(b))}, nil)
	resp, err := s.st.Client().Txn(ctx).If(fence...).Then(inner).Commit()
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", r.GetName(), s.st.WriteErr(err))
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("store %s: %w", r.GetName(), ErrFenced)
	}
	if !resp.Responses[0].GetResponseTxn().GetSucceeded() {
		return nil, fmt.Errorf("%s changed concurrently: %w", r.GetName(), store.ErrConflict)
	}
	return &Stored{Rollout: r, ID: cur.ID, ModRev: resp.Header.Revision, CreateRev: cur.CreateRev}, nil
}
