package store

import (
	"context"
	"fmt"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// BatchPut is one write of PutBatch: a relative key, its value, and the
// lease the key is bound to (0: none) — or, with DeleteAt set, a
// conditional delete of the key.
type BatchPut struct {
	Key   string
	Value []byte
	Lease clientv3.LeaseID
	// DeleteAt, when not 0, makes the write a delete of Key that takes
	// place only while Key's mod revision is still DeleteAt (nothing wrote
	// it since); otherwise it changes nothing, and is no error. Value and
	// Lease are then unused. It is carried as a transaction nested in the
	// batch's, so many go in one transaction (the presence of a fleet's
	// streams ending together, each cleared only if its stream wrote it).
	DeleteAt int64
}

// MaxBatchOps is the number of writes one PutBatch may carry: etcd's
// default limit of operations per transaction (--max-txn-ops).
const MaxBatchOps = 128

// MaxBatchOpsWithDelete is the number of writes a PutBatch with a
// conditional delete (DeleteAt) may carry: etcd counts a nested
// transaction's operation against what the outer one leaves.
const MaxBatchOpsWithDelete = MaxBatchOps - 1

// PutBatch writes every put (or conditional delete) in one etcd
// transaction: all or none are stored. It returns the transaction's
// revision, the mod revision of each key written. Keys must be distinct
// (etcd refuses a transaction writing one key twice) and at most
// MaxBatchOps (MaxBatchOpsWithDelete with a conditional delete).
func (s *Store) PutBatch(ctx context.Context, puts []BatchPut) (int64, error) {
	if len(puts) > MaxBatchOps {
		return 0, fmt.Errorf("write %d keys in one transaction: at most %d", len(puts), MaxBatchOps)
	}
	if len(puts) > MaxBatchOpsWithDelete && slices.ContainsFunc(puts, func(p BatchPut) bool { return p.DeleteAt != 0 }) {
		return 0, fmt.Errorf("write %d keys in one transaction with a conditional delete: at most %d", len(puts), MaxBatchOpsWithDelete)
	}
	ops := make([]clientv3.Op, len(puts))
	for i, p := range puts {
		if p.DeleteAt != 0 {
			k := s.Key(p.Key)
			ops[i] = clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", p.DeleteAt)}, []clientv3.Op{clientv3.OpDelete(k)}, nil)
			continue
		}
		var opts []clientv3.OpOption
		if p.Lease != 0 {
			opts = append(opts, clientv3.WithLease(p.Lease))
		}
		ops[i] = clientv3.OpPut(s.Key(p.Key), string(p.Value), opts...)
	}
	resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		what := puts[0].Key
		if len(puts) > 1 {
			what = fmt.Sprintf("%s and %d more keys", what, len(puts)-1)
		}
		return 0, fmt.Errorf("write %s: %w", what, s.writeErr(err))
	}
	return resp.Header.Revision, nil
}

// PresenceKey is the relative key of host's presence (see SetPresent).
func PresenceKey(host string) string { return "presence/" + host }
