package cmd

import (
	"context"
	"errors"
	"io"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// scriptedAgent answers the controller of a data dir as one host over a
// real Sync stream (mTLS, an agent identity from the data dir's CA): it
// acks every push and reports the pushed revision applied and verified,
// unless nack, asked about the pushed configuration, returns an error
// text, which it NACKs with. It stands in for an agent where a test is
// about what the CLI shows of rollouts, not about applying.
type scriptedAgent struct {
	host     string
	received atomic.Int64
}

func startScriptedAgent(t *testing.T, dataDir, host string, nack func(*pb.HostConfig) string) *scriptedAgent {
	t.Helper()
	a := &scriptedAgent{host: host}
	conn := agentConn(t, dataDir, host)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := pb.NewAgentServiceClient(conn).Sync(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	if err := stream.Send(&pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: &pb.Hello{Host: host, AgentVersion: "test", Driver: "scripted"}}}); err != nil {
		t.Fatalf("hello as %s: %v", host, err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			d := m.GetDesired()
			if d == nil {
				continue
			}
			a.received.Add(1)
			var msgs []*pb.SyncRequest
			if why := nack(d.GetConfig()); why != "" {
				msgs = []*pb.SyncRequest{{Message: &pb.SyncRequest_Nack{Nack: &pb.Nack{Version: d.GetVersion(), Nonce: d.GetNonce(), Hash: d.GetHash(),
					Errors: []*pb.ItemError{{Item: "oauth-configuration", Message: why}}}}}}
			} else {
				msgs = []*pb.SyncRequest{
					{Message: &pb.SyncRequest_Ack{Ack: &pb.Ack{Version: d.GetVersion(), Nonce: d.GetNonce(), Hash: d.GetHash()}}},
					{Message: &pb.SyncRequest_Status{Status: &pb.StatusReport{AppliedVersion: d.GetVersion(), AppliedHash: d.GetHash(),
						Items: []*pb.ItemStatus{{Item: "oauth-configuration", State: pb.ItemState_ITEM_STATE_OK}}}}},
				}
			}
			for _, m := range msgs {
				if err := stream.Send(m); err != nil {
					if !errors.Is(err, io.EOF) && ctx.Err() == nil {
						t.Errorf("send as %s: %v", host, err)
					}
					return
				}
			}
		}
	}()
	return a
}

// rolloutFleet starts a controller in dir with the contoso example's
// secret and a scripted agent per host; sp01 NACKs while failSP is set.
func rolloutFleet(t *testing.T, dir string) (failSP *atomic.Bool, agents map[string]*scriptedAgent) {
	t.Helper()
	startController(t, dir)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	failSP = &atomic.Bool{}
	agents = map[string]*scriptedAgent{}
	for _, h := range contosoHosts {
		agents[h] = startScriptedAgent(t, dir, h, func(*pb.HostConfig) string {
			if h == "sp01.contoso.com" && failSP.Load() {
				return "Set-SPTrustedSecurityTokenIssuer: access denied"
			}
			return ""
		})
	}
	return failSP, agents
}

// stalePartner is the contoso example with one more stale partner to
// remove, a new revision that changes every pool01 and Exchange host.
func stalePartner(t *testing.T, name string, more ...string) string {
	return contosoFile(t, append([]string{"removePartners: [app]", "removePartners: [app, " + name + "]"}, more...)...)
}

// rolloutStatus is `rollout status [ID]`'s output.
func rolloutStatus(t *testing.T, dir string, id ...string) string {
	t.Helper()
	return mustRun(t, dir, append([]string{"rollout", "status"}, id...)...)
}

// waitRollout waits until `rollout status ID` shows state.
func waitRollout(t *testing.T, dir, id, state string) string {
	t.Helper()
	var out string
	waitFor(t, "rollouts/"+id+" "+state, func() (bool, string) {
		out = rolloutStatus(t, dir, id)
		first, _, _ := strings.Cut(out, "\n")
		return strings.HasSuffix(first, ", "+state) || strings.Contains(first, ", "+state+" ("), out
	})
	return out
}

// wantExit checks that err is an exit error with code code holding wants.
func wantExit(t *testing.T, err error, code int, wants ...string) {
	t.Helper()
	if got := ExitCode(err); err == nil || got != code {
		t.Errorf("exit code %d (error %v), want %d", got, err, code)
	}
	if err != nil {
		wantContains(t, "error", err.Error(), wants...)
	}
}

// revisionCount is the number of rows of `get revisions`.
func revisionCount(t *testing.T, dir string) int {
	t.Helper()
	return len(tableRows(t, mustRun(t, dir, "get", "revisions")))
}

// TestRolloutCommands drives rollouts from the command line as an operator
// would, against a real controller with an agent per host: apply --wait
// following a rollout to its end, and exiting 2 when it stops at the
// failure threshold; rollout status (per wave and host), status -w
// following live, pause, resume, abort, undo and history; revisions named
// by their sequence numbers 1, 2, 3 … throughout; and every refused
// request naming what is wrong and changing nothing.
func TestRolloutCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	failSP, agents := rolloutFleet(t, dir)

	// Nothing to show or undo before the first revision, nor after it:
	// the first revision goes to every host at once.
	if rows := tableRows(t, mustRun(t, dir, "rollout", "history")); len(rows) != 0 {
		t.Errorf("history before any rollout: %v", rows)
	}
	_, err := mustFail(t, dir, "rollout", "undo")
	wantRPCError(t, err, "FailedPrecondition", `cannot undo "rollouts/-": no rollout yet, so there is no previous revision`)
	out := mustRun(t, dir, "apply", "-f", contosoFile(t))
	wantNotContains(t, "the first apply", out, "rollout:")
	_, err = mustFail(t, dir, "rollout", "undo")
	wantRPCError(t, err, "FailedPrecondition", "no previous revision")
	wantNotContains(t, "the error", err.Error(), "revision conflict")

	// Bad strategies: refused naming field and value, nothing stored.
	_, err = mustFail(t, dir, "apply", "-f", stalePartner(t, "old1"), "--no-canary")
	wantRPCError(t, err, "InvalidArgument", `rollout.maxUnavailable: "0": is 0 with no canary`)
	_, err = mustFail(t, dir, "apply", "-f", stalePartner(t, "old1", "trusts:", "rollout:\n  waves: [{hosts: [fe01.contoso.com, fe09.contoso.com]}]\ntrusts:"))
	wantRPCError(t, err, "InvalidArgument", `rollout.waves[0].hosts[1]: "fe09.contoso.com": is not a host of the topology`)
	if n := revisionCount(t, dir); n != 1 {
		t.Errorf("refused applies stored revisions: %d, want 1", n)
	}
	if rows := tableRows(t, mustRun(t, dir, "rollout", "history")); len(rows) != 0 {
		t.Errorf("refused applies stored rollouts: %v", rows)
	}

	// apply --wait follows the rollout live, wave by wave, to its end.
	out = mustRun(t, dir, "apply", "-f", stalePartner(t, "old1"), "--wait")
	wantContains(t, "apply --wait", out, "5/5 hosts passed: succeeded\n", "applied: revision 2 (version ", "rollout: rollouts/1",
		"rollouts/1 running (revision 1 → 2): *canary 0/3, wave 1 0/2\n", "canary 3/3, *wave 1 0/2\n",
		"rollouts/1 succeeded (revision 1 → 2): canary 3/3, wave 1 2/2\n", "rollouts/1: revision 1 → 2 (versions ")
	for _, h := range contosoHosts {
		if !containsLine(strings.Split(out, "\n"), h) || !regexp.MustCompile(regexp.QuoteMeta(h)+` +passed +revision 2 `).MatchString(out) {
			t.Errorf("apply --wait does not show %s passed at revision 2:\n%s", h, out)
		}
	}

	// A failing canary stops the next rollout: apply --wait exits 2,
	// naming the host and its cause.
	failSP.Store(true)
	spChange := []string{"webAppUrl: https://sp.contoso.com,", "webAppUrl: https://sp.contoso.com, removePartners: [old2],"}
	out, err = mustFail(t, dir, "apply", "-f", stalePartner(t, "old2", spChange...), "--wait", "--bake-time", "3s")
	wantExit(t, err, 2, "rollouts/2: rollout stopped: paused: failure threshold reached: 1 of 3 hosts of canary failed (threshold 0): ",
		"sp01.contoso.com: NACK of revision 3 (version ", "Set-SPTrustedSecurityTokenIssuer: access denied")
	wantNotContains(t, "the error", err.Error(), "paused: paused")
	wantContains(t, "apply --wait", out, "rollouts/2 paused (revision 2 → 3): canary 2/3, wave 1 0/2\n")
	out = rolloutStatus(t, dir)
	wantContains(t, "rollout status", out, "rollouts/2: revision 2 → 3 (versions ", "), paused (paused: failure threshold reached", "  canary (current)\n")
	for _, want := range []string{`sp01\.contoso\.com +failed +revision 3 +NACK of revision 3 \(version \d+\): oauth-configuration: Set-SPTrustedSecurityTokenIssuer: access denied`,
		`fe02\.contoso\.com +waiting +revision 2 `, `ex01\.contoso\.com +passed +revision 3 `} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("rollout status does not match %s:\n%s", want, out)
		}
	}
	_, err = mustFail(t, dir, "rollout", "status", "2", "-w")
	wantExit(t, err, 2, "rollouts/2: rollout stopped: paused: failure threshold reached")

	// Refused steering changes nothing: pausing a finished rollout,
	// undoing one that a newer rollout followed.
	before := rolloutStatus(t, dir, "1")
	_, err = mustFail(t, dir, "rollout", "pause", "1")
	wantRPCError(t, err, "FailedPrecondition", "cannot pause rollouts/1: it is succeeded")
	wantNotContains(t, "the error", err.Error(), "revision conflict")
	_, err = mustFail(t, dir, "rollout", "undo", "1")
	wantRPCError(t, err, "FailedPrecondition", "cannot undo rollouts/1: rollouts/2 is newer; undo that one")
	if after := rolloutStatus(t, dir, "1"); after != before {
		t.Errorf("refused requests changed rollouts/1:\n%s\nnow:\n%s", before, after)
	}
	_, err = mustFail(t, dir, "rollout", "status", "rollout/1")
	wantRPCError(t, err, "InvalidArgument", `"rollout/1"`)

	// Fixed, retried and resumed, it goes on; status -w follows it live
	// (the 3s bake holds the canary wave) to its end.
	failSP.Store(false)
	mustRun(t, dir, "host", "retry", "sp01.contoso.com")
	out = mustRun(t, dir, "rollout", "resume", "2")
	wantContains(t, "rollout resume", out, "rollouts/2: revision 2 → 3 (versions ", "), running\n")
	out, errOut, err := runIO(t, dir, "", "rollout", "status", "2", "-w")
	if err != nil {
		t.Fatalf("rollout status 2 -w: %v\n%s%s", err, out, errOut)
	}
	// The live counter is on standard error only, plain lines (no
	// terminal here), ending with every host passed.
	wantNotContains(t, "rollout status -w's standard output", out, "hosts passed")
	if counter := strings.Split(strings.TrimSpace(errOut), "\n"); counter[len(counter)-1] != "5/5 hosts passed: succeeded" || strings.Contains(errOut, "\r") {
		t.Errorf("rollout status -w's standard error %q, want plain counter lines ending \"5/5 hosts passed: succeeded\"", errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var progress []string
	for _, l := range lines {
		if strings.HasPrefix(l, "rollouts/2 ") {
			progress = append(progress, l)
		}
	}
	if len(progress) < 2 || !strings.HasPrefix(progress[0], "rollouts/2 running (revision 2 → 3): ") ||
		progress[len(progress)-1] != "rollouts/2 succeeded (revision 2 → 3): canary 3/3, wave 1 2/2" {
		t.Errorf("status -w showed %q, want the running rollout's progress ending succeeded:\n%s", progress, out)
	}

	// undo rolls back to revision 2's document, stored as revision 4.
	out = mustRun(t, dir, "rollout", "undo")
	wantContains(t, "rollout undo", out, "rollouts/3: revision 3 → 4 (versions ")
	waitRollout(t, dir, "3", "succeeded")
	out = mustRun(t, dir, "get", "revisions")
	if n := len(tableRows(t, out)); n != 4 {
		t.Errorf("get revisions after the undo has %d rows, want 4:\n%s", n, out)
	}

	// A manual gate pauses after the canary; pausing a paused rollout is
	// fine; abort ends it with each host where it is, for good.
	mustRun(t, dir, "apply", "-f", stalePartner(t, "old3"), "--manual-gates")
	out = waitRollout(t, dir, "4", "paused")
	wantContains(t, "rollout status", out, "paused: manual gate before wave 1: resume to continue")
	mustRun(t, dir, "rollout", "pause", "4")
	out = mustRun(t, dir, "rollout", "abort", "4")
	wantContains(t, "rollout abort", out, "rollouts/4: revision 4 → 5 (versions ", "), aborted (aborted by ")
	if !regexp.MustCompile(`fe02\.contoso\.com +waiting +revision 4 `).MatchString(out) || !regexp.MustCompile(`fe01\.contoso\.com +passed +revision 5 `).MatchString(out) {
		t.Errorf("after the abort the canary should be on revision 5 and the rest on 4:\n%s", out)
	}
	aborted := rolloutStatus(t, dir, "4")
	for _, verb := range []string{"resume", "pause", "abort"} {
		out, err := run(t, dir, "rollout", verb, "4")
		switch verb {
		case "abort":
			if err != nil {
				t.Errorf("aborting an aborted rollout: %v\n%s", err, out)
			}
		default:
			wantRPCError(t, err, "FailedPrecondition", "cannot "+verb+" rollouts/4: it is aborted")
		}
	}
	if now := rolloutStatus(t, dir, "4"); now != aborted {
		t.Errorf("steering an aborted rollout changed it:\n%s\nnow:\n%s", aborted, now)
	}

	// history lists them newest first, by sequence numbers.
	// (Split into fields: the arrows are wider in bytes than in columns.)
	hist := strings.Split(strings.TrimSpace(mustRun(t, dir, "rollout", "history")), "\n")
	var got []string
	for _, l := range hist[1:] {
		got = append(got, strings.Join(strings.Fields(l)[:3], " "))
	}
	want := []string{"rollouts/4 4→5 aborted", "rollouts/3 3→4 succeeded", "rollouts/2 2→3 succeeded", "rollouts/1 1→2 succeeded"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("rollout history:\n got %q\nwant %q", got, want)
	}
	// -o json and yaml print the whole answer; -w refuses them by name.
	js := mustRun(t, dir, "rollout", "history", "-o", "json")
	var l pb.ListRolloutsResponse
	if err := protojson.Unmarshal([]byte(js), &l); err != nil || len(l.GetRollouts()) != 4 || l.GetRollouts()[0].GetName() != "rollouts/4" {
		t.Errorf("rollout history -o json: want rollouts/4 … 1 (%v):\n%s", err, js)
	}
	js = mustRun(t, dir, "rollout", "status", "1", "-o", "json")
	var r pb.Rollout
	if err := protojson.Unmarshal([]byte(js), &r); err != nil || r.GetName() != "rollouts/1" || r.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED || len(r.GetWaves()) != 2 {
		t.Errorf("rollout status 1 -o json: want rollouts/1 succeeded in 2 waves (%v):\n%s", err, js)
	}
	if j, y := parseBoth(t, js, mustRun(t, dir, "rollout", "status", "1", "-o", "yaml")); !sameShape(j, y) {
		t.Errorf("rollout status -o yaml is not shaped as -o json")
	}
	_, err = mustFail(t, dir, "rollout", "status", "1", "-w", "-o", "json")
	wantContains(t, "rollout status -w -o json", err.Error(), "-w prints progress lines: it takes no -o json")
	// get revisions and rollout history read every page (here of 2)
	// newest first; --limit shows only the newest N.
	listPageSize = 2
	defer func() { listPageSize = 0 }()
	for _, tc := range []struct {
		args   []string
		column string
		want   string
	}{
		{[]string{"get", "revisions"}, "REVISION", "5 4 3 2 1"},
		{[]string{"get", "revisions", "--limit", "3"}, "REVISION", "5 4 3"},
		{[]string{"get", "revisions", "--limit", "9"}, "REVISION", "5 4 3 2 1"},
		{[]string{"rollout", "history"}, "ROLLOUT", "rollouts/4 rollouts/3 rollouts/2 rollouts/1"},
		{[]string{"rollout", "history", "--limit", "3"}, "ROLLOUT", "rollouts/4 rollouts/3 rollouts/2"},
	} {
		var got []string
		for _, row := range tableRows(t, mustRun(t, dir, tc.args...)) {
			got = append(got, row[tc.column])
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%v: %s %q, want %s", tc.args, tc.column, got, tc.want)
		}
	}
	_, err = mustFail(t, dir, "get", "revisions", "--limit", "-1")
	wantContains(t, "get revisions --limit -1", err.Error(), "--limit -1: want 0 (every revision) or a positive number")
	_, err = mustFail(t, dir, "rollout", "history", "--limit", "-2")
	wantContains(t, "rollout history --limit -2", err.Error(), "--limit -2: want 0 (every rollout) or a positive number")
	if n := agents["sp01.contoso.com"].received.Load(); n < 3 {
		t.Errorf("sp01 received %d pushes, want at least 3 (revision 1, the NACKed 3, its retry)", n)
	}
}
