package store

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// BatchPut is one write of PutBatch: a relative key, its value, and the
// lease the key is bound to (0: none).
type BatchPut struct {
	Key   string
	Value []byte
	Lease clientv3.LeaseID
}

// MaxBatchOps is the number of writes one PutBatch may carry: etcd's
// default limit of operations per transaction (--max-txn-ops).
const MaxBatchOps = 128

// PutBatch writes every put in one etcd transaction: all or none are
// stored. It returns the transaction's revision, the mod revision of each
// key written. Keys must be distinct (etcd refuses a transaction writing
// one key twice) and at most MaxBatchOps.
func (s *Store) PutBatch(ctx context.Context, puts []BatchPut) (int64, error) {
	if len(puts) > MaxBatchOps {
		return 0, fmt.Errorf("write %d keys in one transaction: at most %d", len(puts), MaxBatchOps)
	}
	ops := make([]clientv3.Op, len(puts))
	for i, p := range puts {
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
