package powershell

import (
	"context"

	"github.com/s2strust/s2strust/agent/reconcile"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// ApplyPlan is Apply returning the operations too (syncer.Planner), so the
// agent reports what it executed; with monitor set it executes nothing and
// returns what it would do (s2s-agent run --apply=false).
func (d *Driver) ApplyPlan(ctx context.Context, cfg *pb.HostConfig, secrets []*pb.SecretMaterial, monitor bool) reconcile.Result {
	return reconcile.Apply(ctx, d, cfg, secrets, d.cfg.Now(), monitor)
}
