package cmd

import (
	"context"
	"testing"
	"time"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// firstAnswer opens a Sync stream as host, says hello with what it has
// applied and returns the controller's first answer (a Desired or an
// UpToDate); the stream ends when the call returns.
func firstAnswer(t *testing.T, dataDir, host string, version uint64, hash string) *pb.SyncResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := pb.NewAgentServiceClient(agentConn(t, dataDir, host)).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hello := &pb.Hello{Host: host, AgentVersion: "test", Driver: "none", AppliedVersion: version, AppliedHash: hash}
	if err := stream.Send(&pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("sync as %s: %v", host, err)
	}
	return resp
}

// TestSecretVersions: a secret the topology uses is never swapped in
// place; a new version changes no host until something pins it.
func TestSecretVersions(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	iss1 := newIssuer(t, "first-Passw0rd", "contoso.com", "fabrikam.com")
	iss2 := newIssuer(t, "second-Passw0rd", "contoso.com", "fabrikam.com")

	// Not in use yet: a put is a new version and nothing is refused.
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss2.pfxFile, "--password-file", iss2.pwFile)
	out := mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss1.pfxFile, "--password-file", iss1.pwFile)
	wantContains(t, "second put", out, "stored secret oauth-2026 version 2: certificate "+iss1.thumbprint)
	mustRun(t, dir, "apply", "-f", contosoFile(t))

	// fe01 (pool01's primary once it connects) gets version 2 of the secret.
	resp := firstAnswer(t, dir, "fe01.contoso.com", 0, "")
	d := resp.GetDesired()
	if d == nil || len(d.GetSecrets()) != 1 || d.GetSecrets()[0].GetThumbprint() != iss1.thumbprint || d.GetConfig().GetTokenIssuer().GetSecretThumbprint() != iss1.thumbprint {
		t.Fatalf("fe01's first answer = %v; want a push carrying oauth-2026 version 2 (%s)", resp, iss1.thumbprint)
	}
	out = mustRun(t, dir, "get", "revisions")
	if rows := tableRows(t, out); len(rows) != 1 || rows[0]["REVISION"] != "1" || rows[0]["SECRETS"] != "oauth-2026 v2" {
		t.Fatalf("get revisions: want revision 1 using oauth-2026 v2:\n%s", out)
	}

	// In use: the same PFX again is a no-op, another one is refused.
	out = mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss1.pfxFile, "--password-file", iss1.pwFile)
	wantContains(t, "retried put", out, "unchanged secret oauth-2026 version 2")
	out, err := mustFail(t, dir, "secret", "put", "oauth-2026", "--pfx", iss2.pfxFile, "--password-file", iss2.pwFile)
	wantRPCError(t, err, "put secret oauth-2026", "FailedPrecondition", "in use by deployment pool01", "--new-version", "rotate issuer")
	if out != "" {
		t.Errorf("a refused put printed %q", out)
	}
	out = mustRun(t, dir, "secret", "list")
	if rows := tableRows(t, out); len(rows) != 1 || rows[0]["VERSION"] != "2" || rows[0]["THUMBPRINT"] != iss1.thumbprint || rows[0]["USED BY"] != "pool01" {
		t.Fatalf("the refused put changed the secret:\n%s", out)
	}

	// --new-version stores version 3 and changes no host: fe01, having
	// applied what it was sent, is told nothing is new.
	out = mustRun(t, dir, "secret", "put", "oauth-2026", "--new-version", "--pfx", iss2.pfxFile, "--password-file", iss2.pwFile)
	wantContains(t, "new version", out, "stored secret oauth-2026 version 3: certificate "+iss2.thumbprint, "no host uses version 3 yet")
	out = mustRun(t, dir, "secret", "list")
	if rows := tableRows(t, out); len(rows) != 1 || rows[0]["VERSION"] != "3" || rows[0]["THUMBPRINT"] != iss2.thumbprint {
		t.Fatalf("secret list after --new-version:\n%s", out)
	}
	if resp := firstAnswer(t, dir, "fe01.contoso.com", d.GetVersion(), d.GetHash()); resp.GetUpToDate() == nil {
		t.Fatalf("after --new-version fe01 was answered %v; want up to date (no host changes)", resp)
	}

	// A changed topology keeps the version the current revision uses
	// (applied at once: fe01 is no agent that would pass a rollout's gate).
	mustRun(t, dir, "apply", "--immediate", "-f", contosoFile(t, "removePartners: [app]", "removePartners: [app, old]"))
	out = mustRun(t, dir, "get", "revisions")
	rows := tableRows(t, out)
	if len(rows) != 2 || rows[0]["REVISION"] != "2" || rows[0]["SECRETS"] != "oauth-2026 v2" {
		t.Fatalf("get revisions after a second apply: want revision 2 still on oauth-2026 v2:\n%s", out)
	}
	var next *pb.Desired
	waitFor(t, "fe01 pushed revision 2", func() (bool, string) {
		resp := firstAnswer(t, dir, "fe01.contoso.com", d.GetVersion(), d.GetHash())
		next = resp.GetDesired()
		return next != nil, resp.String()
	})
	if got := next.GetConfig().GetTokenIssuer().GetSecretThumbprint(); got != iss1.thumbprint || len(next.GetSecrets()) != 1 || next.GetSecrets()[0].GetThumbprint() != iss1.thumbprint {
		t.Fatalf("revision 2 gave fe01 certificate %s; want version 2's %s", got, iss1.thumbprint)
	}
}
