package cmd

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/etcdembed"
)

// With etcd down, the read commands of rollouts, rotations, secrets, the
// audit trail, the revisions and the host identities print the controller's last view under a
// STALE warning with its age and reason, as `get hosts` does, and their
// -o json carries the stale mark; `rollout status -w` says it once.
func TestReadCommandsWhileEtcdIsDown(t *testing.T) {
	t.Parallel()
	etcd, err := etcdembed.Start(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stopEtcd := func() { once.Do(etcd.Close) }
	t.Cleanup(stopEtcd) // after the controller's cleanup, which closes its client
	dir := t.TempDir()
	startControllerConfig(t, dir, app.ServeConfig{EtcdEndpoints: []string{etcd.Endpoint()}, PresenceTTL: 2 * time.Second})
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	mustRun(t, dir, "apply", "-f", contosoFile(t))
	// The next revision starts a rollout once the controller's watch has
	// taken this one (the first goes to every host at once).
	waitFor(t, "the first revision's hosts", func() (bool, string) {
		out, err := run(t, dir, "get", "hosts")
		return err == nil && strings.Contains(out, "sp01.contoso.com"), out
	})
	wantContains(t, "apply output", mustRun(t, dir, "apply", "-f", stalePartner(t, "old1")), "rollouts/1")
	fresh := mustRun(t, dir, "rollout", "history")
	if strings.Contains(fresh, "STALE") || !strings.Contains(fresh, "rollouts/1") {
		t.Fatalf("rollout history with etcd up:\n%s", fresh)
	}

	// A follower opened before etcd goes: it says once that it is stale.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var follow syncBuffer
	root := NewRoot(&follow)
	root.SetErr(&follow)
	root.SetArgs([]string{"--data-dir", dir, "rollout", "status", "1", "-w"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	waitFor(t, "the follower's first line", func() (bool, string) { return strings.Contains(follow.String(), "rollouts/1"), follow.String() })

	stopEtcd()
	for _, tc := range []struct {
		args  []string
		wants []string
	}{
		{[]string{"rollout", "history"}, []string{"rollouts/1"}},
		{[]string{"rollout", "status"}, []string{"rollouts/1"}},
		{[]string{"rollout", "history", "-o", "json"}, []string{`"stale"`, `"rollouts/1"`}},
		{[]string{"secret", "list"}, []string{"oauth-2026", "pool01"}},
		{[]string{"secret", "list", "-o", "json"}, []string{`"stale"`, `"oauth-2026"`}},
		{[]string{"get", "revisions"}, []string{"admin"}},
		{[]string{"get", "revisions", "-o", "yaml"}, []string{"stale:"}},
		{[]string{"get", "audit"}, []string{"apply topology"}},
		{[]string{"get", "audit", "-o", "json"}, []string{`"stale"`}},
		{[]string{"rotate", "list"}, []string{"ROTATION"}},
		{[]string{"host", "list"}, []string{"sp01.contoso.com", "pool01"}},
		{[]string{"host", "list", "-o", "json"}, []string{`"stale"`, "kept only in etcd"}},
	} {
		out := mustRun(t, dir, tc.args...)
		wantContains(t, strings.Join(tc.args, " ")+" with etcd down", out, append(tc.wants, "WARNING: STALE", "old)")...)
	}
	waitFor(t, "the follower's warning", func() (bool, string) { return strings.Contains(follow.String(), "WARNING: STALE"), follow.String() })
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("rollout status -w did not end when interrupted")
	}
	if n := strings.Count(follow.String(), "STALE"); n != 1 {
		t.Errorf("the follower warned %d times, want once:\n%s", n, follow.String())
	}
}
