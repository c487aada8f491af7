package cmd

import (
	"fmt"
	"io"
	"strings"

	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// printPlans prints, per host, the plan its agent last reported: in
// monitor mode what it would execute, otherwise what it last executed.
// Each operation is the exact command, values quoted as PowerShell reads
// them, secrets shown as <redacted> (the agent never sends them).
func printPlans(w io.Writer, details []hostDetail) {
	for i, d := range details {
		h, r := d.host, d.report
		if i > 0 {
			fmt.Fprintln(w)
		}
		role := "secondary"
		if h.GetPrimary() {
			role = "primary"
		}
		mode := "applying"
		if r.GetMonitor() {
			mode = "MONITOR MODE: nothing applied"
		}
		fmt.Fprintf(w, "=== %s (%s, %s %s, %s) %s\n", safe(h.GetHost()), safe(h.GetDeployment()), products.DisplayName(h.GetProduct()), safe(h.GetProductVersion()), role, mode)
		switch {
		case r == nil:
			fmt.Fprintln(w, "no status report yet")
			continue
		case len(r.GetPlan()) == 0 && r.GetMonitor():
			fmt.Fprintln(w, "no operations planned: the host matches its configuration")
			continue
		case len(r.GetPlan()) == 0:
			fmt.Fprintln(w, "no operations executed since the agent started")
			continue
		case r.GetMonitor():
			fmt.Fprintf(w, "%s it would execute:\n", count(len(r.GetPlan()), "operation"))
		default:
			fmt.Fprintf(w, "%s of its last apply that changed anything (a failed item's later operations did not run):\n", count(len(r.GetPlan()), "operation"))
		}
		// The command is shown whole, to be read or run; the reason may be cut.
		t := newTable(w, "ITEM", "FLAGS", "COMMAND", "REASON~")
		for _, op := range r.GetPlan() {
			t.row(op.GetItem(), opFlags(op), op.GetCommand(), op.GetReason())
		}
		_ = t.flush()
	}
}

// opFlags marks an operation that only the deployment's primary runs
// (deployment scope) and one that interrupts service.
func opFlags(op *pb.PlannedOp) string {
	var f []string
	if op.GetPrimaryOnly() {
		f = append(f, "primary-only")
	}
	if op.GetDisruptive() {
		f = append(f, "DISRUPTIVE")
	}
	if len(f) == 0 {
		return "-"
	}
	return strings.Join(f, ",")
}

// count is "1 operation", "2 operations".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
