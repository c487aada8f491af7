package cmd

import (
	"strings"
	"testing"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestStatusPlan checks what status --plan shows of what agents reported:
// a monitor-mode host's plan with its flags, a host that reported no plan,
// a host that never reported, and --host for one host only.
func TestStatusPlan(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	mustRun(t, dir, "apply", "-f", contosoFile(t))

	reportAs(t, dir, "ex01.contoso.com", &pb.StatusReport{Primary: true, Monitor: true, Plan: []*pb.PlannedOp{
		{Item: "oauth-configuration", Cmdlet: "Set-AuthConfig", Command: "Set-AuthConfig -Realm 'contoso.com'", Reason: "Realm is (not set), want contoso.com", Disruptive: true, PrimaryOnly: true},
		{Item: "iis-reset", Cmdlet: "iisreset", Command: "iisreset -noforce", Reason: "Exchange reads the auth configuration at app pool start", Disruptive: true},
	}})
	reportAs(t, dir, "sp01.contoso.com", &pb.StatusReport{Primary: true, Monitor: true})

	var out string
	waitFor(t, "both reports", func() (bool, string) {
		var err error
		out, err = run(t, dir, "status", "--plan")
		return err == nil && strings.Contains(out, "iisreset") && strings.Contains(out, "the host matches its configuration"), out
	})
	_, table, ok := strings.Cut(out, "2 operations it would execute:\n")
	if !ok || !strings.Contains(out, "=== ex01.contoso.com (exchange, ") {
		t.Fatalf("status --plan has no monitor plan for ex01:\n%s", out)
	}
	table, _, _ = strings.Cut(table, "\n\n")
	rows := tableRows(t, table)
	want := []map[string]string{
		{"ITEM": "oauth-configuration", "FLAGS": "primary-only,DISRUPTIVE", "COMMAND": "Set-AuthConfig -Realm 'contoso.com'", "REASON": "Realm is (not set), want contoso.com"},
		{"ITEM": "iis-reset", "FLAGS": "DISRUPTIVE", "COMMAND": "iisreset -noforce", "REASON": "Exchange reads the auth configuration at app pool start"},
	}
	if len(rows) != len(want) {
		t.Fatalf("ex01's plan has %d rows, want %d:\n%s", len(rows), len(want), out)
	}
	for i, w := range want {
		for k, v := range w {
			if rows[i][k] != v {
				t.Errorf("row %d column %s = %q, want %q\n%s", i, k, rows[i][k], v, out)
			}
		}
	}
	wantContains(t, "status --plan", out,
		"MONITOR MODE: nothing applied\n2 operations it would execute:\n",
		"=== sp01.contoso.com (sharepoint, ", "no operations planned: the host matches its configuration\n",
		"=== fe01.contoso.com (pool01, ", "no status report yet\n")

	out, err := mustFail(t, dir, "status") // three hosts have no agent
	if ExitCode(err) != exitDisconnected {
		t.Errorf("status: exit %d (%v), want %d", ExitCode(err), err, exitDisconnected)
	}
	wantContains(t, "status", out,
		"Monitor mode: 2 operations planned, nothing applied (s2s-controller status --plan --host ex01.contoso.com)\n",
		"Monitor mode: 0 operations planned, nothing applied (s2s-controller status --plan --host sp01.contoso.com)\n")
	one := mustRun(t, dir, "status", "--plan", "--host", "SP01.contoso.com")
	if !strings.HasPrefix(one, "=== sp01.contoso.com (") || strings.Count(one, "===") != 1 {
		t.Errorf("status --plan --host sp01 shows other hosts:\n%s", one)
	}
	_, err = mustFail(t, dir, "status", "--plan", "--host", "nowhere.contoso.com")
	wantRPCError(t, err, "get host nowhere.contoso.com", "NotFound")
	_, err = mustFail(t, dir, "status", "--trust", "--plan")
	wantContains(t, "error", err.Error(), "--trust shows every edge: it takes neither --plan nor --host")
}
