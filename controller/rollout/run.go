package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Source is what the engine reads of the fleet.
type Source interface {
	// Observe returns every host's observation and which edges the
	// current topology disables (disabled(from, to) for deployments).
	Observe(ctx context.Context) (Observations, func(from, to string) bool, error)
	// Current returns the current topology revision, its sequence number
	// and its document hash.
	Current(ctx context.Context) (rev, seq uint64, hash string, err error)
}

// Engine advances the newest rollout on the leader.
type Engine struct {
	Store  *Store
	Source Source
	// Fence conditions every write on the leadership (nil: unfenced).
	Fence func() []clientv3.Cmp
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Interval is how often the engine looks when nothing wakes it
	// (default 1s).
	Interval time.Duration
	// StoreGrace is how long a rollout stored on its own, before its
	// revision (as controllers did before the two shared a transaction),
	// may wait for that revision (default 1 minute); after it, the rollout
	// is aborted as never stored.
	StoreGrace time.Duration
	Log        *slog.Logger
}

// Lead advances rollouts until ctx ends (the leadership with it).
func (e *Engine) Lead(ctx context.Context, wake <-chan struct{}) {
	iv := e.Interval
	if iv <= 0 {
		iv = time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		if err := e.Advance(ctx); err != nil && ctx.Err() == nil {
			e.Log.Warn("advance rollout", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
		}
	}
}

func (e *Engine) now() time.Time {
	if e.Now == nil {
		return time.Now()
	}
	return e.Now()
}

// Advance runs one Step of the newest rollout and stores the result.
func (e *Engine) Advance(ctx context.Context) error {
	cur, err := e.Store.Get(ctx, 0)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if Finished(cur.Rollout) {
		return nil
	}
	r := proto.Clone(cur.Rollout).(*pb.Rollout)
	now := e.now()
	rev, seq, hash, err := e.Source.Current(ctx)
	if err != nil {
		return err
	}
	changed := false
	if r.GetToRevision() == 0 {
		switch to, err := e.Store.storedWith(ctx, cur); {
		case err != nil:
			return err
		case to != nil:
			// Stored in one transaction with its revision (the apply's).
			r.ToRevision, changed = to.Revision, true
			if r.GetToSequence() == 0 {
				r.ToSequence = to.Sequence
			}
		case hash == r.GetDocumentHash():
			// A rollout stored before its revision (older controllers).
			r.ToRevision, changed = rev, true
			if r.GetToSequence() == 0 {
				r.ToSequence = seq
			}
		case now.Sub(r.GetCreateTime().AsTime()) < e.storeGrace():
			return nil // the apply that created it has not stored its revision yet
		default:
			_ = Abort(r, fmt.Sprintf("aborted: its revision was never stored (revision %d is current)", seq), now)
			changed = true
		}
	}
	if r.GetToRevision() != 0 && r.GetToRevision() != rev && !Finished(r) {
		_ = Abort(r, fmt.Sprintf("aborted: superseded by revision %d (version %d)", seq, rev), now)
		changed = true
	}
	if r.GetState() == pb.RolloutState_ROLLOUT_STATE_RUNNING {
		obs, disabled, err := e.Source.Observe(ctx)
		if err != nil {
			return err
		}
		if Step(r, obs, disabled, now) {
			changed = true
		}
	}
	if !changed {
		return nil
	}
	var fence []clientv3.Cmp
	if e.Fence != nil {
		fence = e.Fence()
	}
	if _, err := e.Store.Update(ctx, cur, r, fence); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil // an operator paused or aborted it meanwhile: next round
		}
		return err
	}
	if r.GetState() != cur.Rollout.GetState() {
		e.Log.Info("rollout "+stateName(r.GetState()), "rollout", r.GetName(), "revision", r.GetToRevision(), "reason", r.GetReason())
	}
	return nil
}

func (e *Engine) storeGrace() time.Duration {
	if e.StoreGrace <= 0 {
		return time.Minute
	}
	return e.StoreGrace
}
