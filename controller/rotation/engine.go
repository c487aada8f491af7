package rotation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/rollout"
	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Source is what the engine reads of the fleet.
type Source interface {
	// Observe returns every host's observation and which edges the
	// current topology disables.
	Observe(ctx context.Context) (rollout.Observations, func(from, to string) bool, error)
	// Configs returns the current topology revision (0: none) and its
	// compiled configurations in topology order, the revision's phase
	// overlay laid over them.
	Configs(ctx context.Context) (uint64, []*pb.HostConfig, error)
}

// Applier stores the topology revision of a rotation's current phase.
type Applier interface {
	// ApplyPhase stores the revision of r's current phase with the rollout
	// that delivers it, and returns its revision, sequence number and
	// rollout ("" when it goes to every host at once). Storing the same
	// phase again stores nothing and returns the revision and rollout
	// stored before: the engine may call it again after a crash.
	ApplyPhase(ctx context.Context, r *pb.Rotation) (rev, seq uint64, rollout string, err error)
}

// Engine advances the unfinished rotation on the leader.
type Engine struct {
	Store    *Store
	Rollouts *rollout.Store
	Source   Source
	Applier  Applier
	// Fence conditions every write on the leadership (nil: unfenced).
	Fence func() []clientv3.Cmp
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Interval is how often the engine looks (default 1s).
	Interval time.Duration
	Log      *slog.Logger
}

// Lead advances rotations until ctx ends (the leadership with it).
func (e *Engine) Lead(ctx context.Context) {
	iv := e.Interval
	if iv <= 0 {
		iv = time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		if err := e.Advance(ctx); err != nil && ctx.Err() == nil {
			e.Log.Warn("advance rotation", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (e *Engine) now() time.Time {
	if e.Now == nil {
		return time.Now()
	}
	return e.Now()
}

// Advance runs Step on the unfinished rotation, stores the current
// phase's revision when Step asks for it, and stores the result.
func (e *Engine) Advance(ctx context.Context) error {
	cur, err := e.Store.Active(ctx)
	if err != nil || cur == nil {
		return err
	}
	r := proto.Clone(cur.Rotation).(*pb.Rotation)
	v := View{Now: e.now()}
	if v.Revision, v.Configs, err = e.Source.Configs(ctx); err != nil {
		return err
	}
	if v.Obs, v.Disabled, err = e.Source.Observe(ctx); err != nil {
		return err
	}
	if ps := phaseOf(r, r.GetCurrentPhase()); ps.GetRollout() != "" {
		id, err := rollout.ParseName(ps.GetRollout())
		if err != nil {
			return err
		}
		ro, err := e.Rollouts.Get(ctx, id)
		if err != nil {
			return err
		}
		v.Rollout = ro.Rollout
	}
	if r.GetState() == pb.RotationState_ROTATION_STATE_SCHEDULED {
		newest, err := e.Rollouts.Get(ctx, 0)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if newest != nil && !rollout.Finished(newest.Rollout) {
			v.Blocker = newest.Rollout.GetName()
		}
	}
	act, changed := Step(r, v)
	if act == ApplyPhase {
		// Stored before the rotation records it: a crash in between stores
		// the same revision again, which ApplyPhase turns into nothing.
		rev, seq, ro, err := e.Applier.ApplyPhase(ctx, r)
		if err != nil {
			return fmt.Errorf("%s: store the revision of phase %s: %w", r.GetName(), PhaseName(r.GetCurrentPhase()), err)
		}
		Applied(r, rev, seq, ro, v.Now)
		changed = true
		e.Log.Info("rotation phase stored", "rotation", r.GetName(), "deployment", r.GetDeployment(), "phase", PhaseName(r.GetCurrentPhase()), "revision", rev, "rollout", ro)
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
			return nil // cancelled meanwhile: next round
		}
		return err
	}
	if r.GetState() != cur.Rotation.GetState() || r.GetCurrentPhase() != cur.Rotation.GetCurrentPhase() {
		e.Log.Info("rotation "+StateName(r.GetState()), "rotation", r.GetName(), "deployment", r.GetDeployment(),
			"phase", PhaseName(r.GetCurrentPhase()), "probe_failures", r.GetProbeFailures(), "reason", r.GetReason())
	}
	return nil
}
