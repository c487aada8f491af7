package store

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Option configures a Store.
type Option func(*Store)

// WithQuotaBytes tells the store etcd's space quota, so that a write
// refused over it names the quota. Unknown (0) for an external cluster.
func WithQuotaBytes(n int64) Option { return func(s *Store) { s.quota = n } }

// NoSpaceError is a write refused because etcd's database reached its
// space quota and raised the NOSPACE alarm. etcd then refuses every write,
// from every client, and still serves reads, until space is reclaimed
// (compaction and defragmentation) and the alarm disarmed: Reclaim, or
// `s2s-controller store defrag`.
type NoSpaceError struct {
	// QuotaBytes is the quota, 0 when unknown.
	QuotaBytes int64
	// Err is etcd's error (rpctypes.ErrNoSpace).
	Err error
}

func (e *NoSpaceError) Error() string {
	quota := "etcd space quota"
	if e.QuotaBytes > 0 {
		quota = fmt.Sprintf("etcd space quota of %d bytes", e.QuotaBytes)
	}
	return quota + " exceeded (NOSPACE alarm): etcd refuses every write until space is reclaimed; run `s2s-controller store defrag` (compaction, defragmentation, alarm disarm): " + e.Err.Error()
}

func (e *NoSpaceError) Unwrap() error { return e.Err }

// WriteErr names the quota in a write refused over it, for writes made
// with Client() directly (rollouts).
func (s *Store) WriteErr(err error) error { return s.writeErr(err) }

// writeErr names the quota in a write refused over it.
func (s *Store) writeErr(err error) error {
	var nse *NoSpaceError
	if errors.Is(err, rpctypes.ErrNoSpace) && !errors.As(err, &nse) {
		return &NoSpaceError{QuotaBytes: s.quota, Err: err}
	}
	return err
}

// ReclaimResult is what Reclaim did.
type ReclaimResult struct {
	// CompactedRevision is the revision up to which history was compacted.
	CompactedRevision int64
	// Members are the etcd members defragmented, in endpoint order.
	Members []MemberSpace
	// DisarmedAlarms counts the NOSPACE alarms disarmed.
	DisarmedAlarms int
}

// MemberSpace is one member's database size before and after defragmentation.
type MemberSpace struct {
	Endpoint    string
	BeforeBytes int64
	AfterBytes  int64
}

// Reclaim frees the space of etcd's database so that writes are accepted
// again after the NOSPACE alarm: it compacts all history up to the current
// revision (the controller keeps its own topology history as keys, never
// as etcd history), defragments every member it is connected to, and then
// disarms the NOSPACE alarms. Each step is safe to repeat, so a Reclaim cut
// short is simply run again. It fails naming the step and the member.
//
// Space held by live keys stays: if the live data alone exceeds the quota,
// the alarm comes back on the next write and the quota must be raised.
func (s *Store) Reclaim(ctx context.Context) (*ReclaimResult, error) {
	resp, err := s.cli.Get(ctx, s.currentKey(), clientv3.WithCountOnly())
	if err != nil {
		return nil, fmt.Errorf("read the current etcd revision: %w", err)
	}
	res := &ReclaimResult{CompactedRevision: resp.Header.Revision}
	if _, err := s.cli.Compact(ctx, res.CompactedRevision, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return nil, fmt.Errorf("compact etcd history up to revision %d: %w", res.CompactedRevision, err)
	}
	for _, ep := range s.cli.Endpoints() {
		m := MemberSpace{Endpoint: ep}
		st, err := s.cli.Status(ctx, ep)
		if err != nil {
			return nil, fmt.Errorf("read the status of etcd member %s: %w", ep, err)
		}
		m.BeforeBytes = st.DbSize
		if _, err := s.cli.Defragment(ctx, ep); err != nil {
			return nil, fmt.Errorf("defragment etcd member %s: %w", ep, err)
		}
		if st, err = s.cli.Status(ctx, ep); err != nil {
			return nil, fmt.Errorf("read the status of etcd member %s: %w", ep, err)
		}
		m.AfterBytes = st.DbSize
		res.Members = append(res.Members, m)
	}
	alarms, err := s.cli.AlarmList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd alarms: %w", err)
	}
	for _, a := range alarms.Alarms {
		if a.Alarm != etcdserverpb.AlarmType_NOSPACE {
			continue
		}
		if _, err := s.cli.AlarmDisarm(ctx, (*clientv3.AlarmMember)(a)); err != nil {
			return nil, fmt.Errorf("disarm the NOSPACE alarm of etcd member %x: %w", a.MemberID, err)
		}
		res.DisarmedAlarms++
	}
	return res, nil
}

// SpaceAlarm reports whether etcd has a NOSPACE alarm raised.
func (s *Store) SpaceAlarm(ctx context.Context) (bool, error) {
	alarms, err := s.cli.AlarmList(ctx)
	if err != nil {
		return false, fmt.Errorf("list etcd alarms: %w", err)
	}
	for _, a := range alarms.Alarms {
		if a.Alarm == etcdserverpb.AlarmType_NOSPACE {
			return true, nil
		}
	}
	return false, nil
}
