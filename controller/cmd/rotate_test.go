package cmd

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestRotateCommands: a rotation scheduled with rotate issuer --at, shown
// by rotate status and list, refused requests with the field and value
// named, and rotate cancel. No agent runs: the rotation waits for its
// start time and is cancelled before it.
func TestRotateCommands(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	const password = "Corr3ct-horse-battery"
	iss := newIssuer(t, password, "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	mustRun(t, dir, "apply", "-f", contosoFile(t))
	next := newIssuer(t, password, "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--new-version", "--pfx", next.pfxFile, "--password-file", next.pwFile)

	// Bad input names the field and the value.
	_, err := mustFail(t, dir, "rotate", "issuer", "--deployment", "pool9", "--secret", "oauth-2026@v2")
	wantRPCError(t, err, "rotate issuer", "InvalidArgument", "deployment", "pool9")
	_, err = mustFail(t, dir, "rotate", "auth-certificate", "--deployment", "pool01", "--secret", "oauth-2026@v2")
	wantRPCError(t, err, "rotate auth-certificate", "InvalidArgument", "pool01", "is a Lync", "rotate issuer")
	_, err = mustFail(t, dir, "rotate", "issuer", "--deployment", "pool01", "--secret", "oauth-2026@v1")
	wantRPCError(t, err, "rotate issuer", "InvalidArgument", "oauth-2026@v1", "signs with now")
	_, err = mustFail(t, dir, "rotate", "issuer", "--deployment", "pool01", "--secret", "oauth-2026@v2", "--at", "2020-01-01T00:00:00Z")
	wantRPCError(t, err, "rotate issuer", "InvalidArgument", "start_time", "2020-01-01T00:00:00Z", "in the past")
	_, err = mustFail(t, dir, "rotate", "issuer", "--deployment", "pool01", "--secret", "oauth-2026@v2", "--at", "tomorrow")
	wantContains(t, "bad --at", err.Error(), `--at "tomorrow"`)
	out := mustRun(t, dir, "rotate", "issuer", "--deployment", "pool01", "--secret", "oauth-2026@v2", "--validate")
	wantContains(t, "rotate --validate", out, "valid: deployment pool01 would rotate from "+iss.thumbprint+" to "+next.thumbprint, "nothing stored")
	out = mustRun(t, dir, "rotate", "list")
	if rows := tableRows(t, out); len(rows) != 0 {
		t.Fatalf("rotate list after refusals and a validation: %s", out)
	}

	at := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	out = mustRun(t, dir, "rotate", "issuer", "--deployment", "pool01", "--secret", "oauth-2026", "--at", at.Format(time.RFC3339))
	wantContains(t, "rotate issuer", out, "rotations/1: deployment pool01, scheduled",
		"from "+iss.thumbprint+" (secret oauth-2026@v1)", "to   "+next.thumbprint+" (secret oauth-2026@v2)",
		"start "+at.Format(time.RFC3339)+", effective "+at.Add(time.Hour).Format(time.RFC3339),
		"probe failures on edges from or to pool01: 0", "phase stage    pending", "phase retire   pending")
	_, err = mustFail(t, dir, "rotate", "issuer", "--deployment", "pool01", "--secret", "oauth-2026@v2")
	wantRPCError(t, err, "rotate issuer", "FailedPrecondition", "rotations/1 of deployment pool01 is scheduled")

	// The leader's engine looks at it and says what it waits for.
	waitFor(t, "the engine to show the schedule", func() (bool, string) {
		out := mustRun(t, dir, "rotate", "status")
		return strings.Contains(out, "rotations/1: deployment pool01, scheduled (scheduled for "+at.Format(time.RFC3339)+")"), out
	})
	rows := tableRows(t, mustRun(t, dir, "rotate", "list"))
	if len(rows) != 1 || rows[0]["ROTATION"] != "rotations/1" || rows[0]["STATE"] != "scheduled" || rows[0]["DEPLOYMENT"] != "pool01" || rows[0]["FAILED"] != "0" {
		t.Errorf("rotate list rows %v", rows)
	}
	// -o json and yaml print the whole rotation; -w refuses them by name.
	for _, args := range [][]string{{"rotate", "status", "1"}, {"rotate", "list"}} {
		js := mustRun(t, dir, append(args, "-o", "json")...)
		r := &pb.Rotation{}
		var err error
		if args[1] == "status" {
			err = protojson.Unmarshal([]byte(js), r)
		} else {
			l := &pb.ListRotationsResponse{}
			if err = protojson.Unmarshal([]byte(js), l); len(l.GetRotations()) == 1 {
				r = l.GetRotations()[0]
			}
		}
		if err != nil || r.GetName() != "rotations/1" || r.GetDeployment() != "pool01" || r.GetNewThumbprint() != next.thumbprint {
			t.Errorf("%s -o json: not rotations/1 of pool01 to %s (%v):\n%s", args, next.thumbprint, err, js)
		}
		y := mustRun(t, dir, append(args, "-o", "yaml")...)
		if j, yy := parseBoth(t, js, y); !sameShape(j, yy) {
			t.Errorf("%s -o yaml is not shaped as -o json:\n%s\n---\n%s", args, y, js)
		}
	}
	_, err = mustFail(t, dir, "rotate", "status", "1", "-w", "-o", "yaml")
	wantContains(t, "rotate status -w -o yaml", err.Error(), "-w prints progress lines: it takes no -o yaml")
	out = mustRun(t, dir, "rotate", "cancel", "1")
	wantContains(t, "rotate cancel", out, "rotations/1: deployment pool01, cancelled (cancelled by ")
	// Following a rotation that did not succeed exits non-zero.
	out, err = mustFail(t, dir, "rotate", "status", "rotations/1", "-w")
	wantContains(t, "rotate status -w", out, "rotations/1 cancelled: phase -, 0 probe failures: cancelled by")
	wantContains(t, "rotate status -w", err.Error(), "rotation did not succeed: cancelled")
	_, err = mustFail(t, dir, "rotate", "status", "7")
	wantRPCError(t, err, "rotate status", "NotFound", "rotations/7")
}
