package cmd

import (
	"strings"
	"testing"
)

// TestDiff: diff -f of the applied file exits 0 and says nothing differs;
// of a changed file exits 1 and shows the change in the document and the
// plan; nothing is stored either way.
func TestDiff(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	applied := contosoFile(t)
	mustRun(t, dir, "apply", "-f", applied)

	out := mustRun(t, dir, "diff", "-f", applied)
	if !strings.Contains(out, "is the current revision: nothing differs") || strings.Contains(out, "@@") {
		t.Errorf("diff of the applied file:\n%s", out)
	}

	changed := contosoFile(t, "removePartners: [app]", "removePartners: [app, legacy]")
	out, err := mustFail(t, dir, "diff", "-f", changed)
	if ExitCode(err) != exitDiff || !strings.Contains(err.Error(), "differs from the current revision") {
		t.Errorf("diff of a changed file: exit %d, %v; want %d", ExitCode(err), err, exitDiff)
	}
	for _, want := range []string{"--- revision 1", "+++ " + changed, "+      - legacy\n", "remove  partner/legacy: Remove-CsPartnerApplication -Identity legacy", "2 of 5 hosts change"} {
		if !strings.Contains(out, want) {
			t.Errorf("diff output lacks %q:\n%s", want, out)
		}
	}
	if revs := mustRun(t, dir, "get", "revisions"); strings.Count(revs, "contoso") != 1 {
		t.Errorf("diff stored a revision:\n%s", revs)
	}
}

func TestVersion(t *testing.T) {
	out := mustRun(t, t.TempDir(), "version")
	if !strings.HasPrefix(out, "s2s-controller 0.") {
		t.Errorf("version = %q", out)
	}
}
