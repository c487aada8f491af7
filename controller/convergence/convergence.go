// Package convergence holds the one definition of "host H has converged on
// revision R" that the rollout gates, the demo, the end-to-end harness and
// the bench all use, so they can never disagree about it.
package convergence

import (
	"fmt"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Converged reports whether host h has converged on revision rev: rev is
// what the controller wants the host to run (its target revision), the
// agent reports that exact revision and configuration hash as applied, and
// its last answer is not a NACK of that revision.
//
// Equality, never "at least": during a rollout a host outside the current
// wave keeps an older target on purpose, and a host that applied a later
// revision than the one asked about has not converged on it either.
// The last result is not required to be an ACK of rev: an agent that
// applied rev and reconnected reports it in its Hello (which the
// controller records as applied) even when its ACK was lost.
func Converged(h *pb.Host, rev uint64) bool {
	return Why(h, rev) == ""
}

// Why says why h has not converged on rev, "" when it has.
func Why(h *pb.Host, rev uint64) string {
	lr := h.GetLastResult()
	switch {
	case rev == 0:
		return "revision 0 is no revision"
	case h.GetDesiredVersion() != rev:
		return fmt.Sprintf("%s: target revision is %d, not %d", h.GetHost(), h.GetDesiredVersion(), rev)
	case lr.GetKind() == pb.ResultKind_RESULT_KIND_NACK && lr.GetVersion() == rev && lr.GetHash() == h.GetDesiredHash():
		return fmt.Sprintf("%s: rejected revision %d", h.GetHost(), rev)
	case h.GetAppliedVersion() != rev:
		return fmt.Sprintf("%s: applied revision %d, not %d", h.GetHost(), h.GetAppliedVersion(), rev)
	case h.GetAppliedHash() == "" || h.GetAppliedHash() != h.GetDesiredHash():
		return fmt.Sprintf("%s: applied configuration %q is not the desired %q", h.GetHost(), h.GetAppliedHash(), h.GetDesiredHash())
	}
	return ""
}
