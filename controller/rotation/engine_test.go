package rotation

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/controller/rollout"
	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// fakeSource serves the fake fleet's configurations and reports.
type fakeSource struct{ f *fakeFleet }

func (s fakeSource) Observe(context.Context) (rollout.Observations, func(from, to string) bool, error) {
	return s.f.view(time.Time{}, nil).Obs, nil, nil
}

func (s fakeSource) Configs(context.Context) (uint64, []*pb.HostConfig, error) {
	return s.f.rev, s.f.cfgs, nil
}

// fakeApplier stores a phase as a new revision of the fake fleet, the
// same phase again as nothing new, as the server's ApplyPhase does.
type fakeApplier struct {
	f     *fakeFleet
	calls int
	by    map[pb.RotationPhase]uint64
}

func (a *fakeApplier) ApplyPhase(_ context.Context, r *pb.Rotation) (uint64, uint64, string, error) {
	a.calls++
	if rev, ok := a.by[r.GetCurrentPhase()]; ok {
		return rev, rev, "", nil
	}
	a.f.rev++
	a.by[r.GetCurrentPhase()] = a.f.rev
	return a.f.rev, a.f.rev, "", nil
}

func startStore(t *testing.T) *store.Store {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := etcdembed.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cli.Close()
		srv.Close()
		cancel()
	})
	return store.New(cli, "/test/")
}

// TestEngineFencesAndResumesFromEtcd: the engine stores a phase's
// revision before recording it; a write without the leadership is
// refused and changes nothing; the next leader, starting from what etcd
// holds, stores the same phase again, which is no new revision.
func TestEngineFencesAndResumesFromEtcd(t *testing.T) {
	ctx := context.Background()
	st := startStore(t)
	f := newFakeFleet(t)
	rs := NewStore(st)
	r := newRotation()
	r.StartTime = nil // due at once
	stored, err := rs.Create(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Create(ctx, newRotation()); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a second unfinished rotation: %v, want a conflict", err)
	}
	app := &fakeApplier{f: f, by: map[pb.RotationPhase]uint64{}}
	lost := func() []clientv3.Cmp {
		return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision("/test/election/none"), "=", -1)}
	}
	e := &Engine{Store: rs, Rollouts: rollout.NewStore(st), Source: fakeSource{f}, Applier: app, Fence: lost, Now: func() time.Time { return t0 }, Log: slog.New(slog.DiscardHandler)}
	if err := e.Advance(ctx); !errors.Is(err, rollout.ErrFenced) {
		t.Fatalf("advance without the leadership: %v, want ErrFenced", err)
	}
	got, err := rs.Get(ctx, stored.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Rotation.GetState() != pb.RotationState_ROTATION_STATE_SCHEDULED || got.ModRev != stored.ModRev {
		t.Fatalf("a fenced advance changed the rotation: %v", got.Rotation)
	}
	// The new leader resumes from etcd: the stage phase is applied again,
	// and is the same revision.
	e.Fence = nil
	if err := e.Advance(ctx); err != nil {
		t.Fatal(err)
	}
	got, err = rs.Get(ctx, stored.ID)
	if err != nil {
		t.Fatal(err)
	}
	st0 := got.Rotation.GetPhases()[0]
	if app.calls != 2 || f.rev != 6 || st0.GetRevision() != 6 || st0.GetState() != pb.RotationPhaseState_ROTATION_PHASE_STATE_ROLLING_OUT {
		t.Fatalf("after the leader's advance: %d applies, fleet at %d, stage %v", app.calls, f.rev, st0)
	}
	active, err := rs.Active(ctx)
	if err != nil || active == nil || active.ID != stored.ID {
		t.Fatalf("active %v, %v", active, err)
	}
	if err := Busy(active.Rotation); err == nil || !errors.Is(err, store.ErrConflict) {
		t.Errorf("busy: %v", err)
	}
}
