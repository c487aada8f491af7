package cmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/controller/store"
)

// startControllerConfig is startController with more of the serve
// configuration given; DataDir, Listen, Logger and Ready are set here.
func startControllerConfig(t *testing.T, dir string, cfg app.ServeConfig) {
	t.Helper()
	ready, done, stop := serveInBackground(t, dir, cfg)
	select {
	case <-ready:
	case err := <-done:
		stop()
		t.Fatalf("controller did not start: %v", err)
	case <-time.After(60 * time.Second):
		stop()
		t.Fatal("controller did not start within 60s")
	}
}

// waitReady waits for a controller started by serveInBackground to serve.
func waitReady(t *testing.T, ready <-chan string) {
	t.Helper()
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatal("controller not ready within 60s")
	}
}

// serveInBackground runs serve without waiting for it to be ready. ready
// receives the address once serving; done its result should it end by
// itself. stop stops it and reports an error it stopped with; it runs at
// the end of the test too, and a second call does nothing.
func serveInBackground(t *testing.T, dir string, cfg app.ServeConfig) (ready <-chan string, done <-chan error, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan string, 1)
	donec := make(chan error, 1)
	result := make(chan error, 1)
	cfg.DataDir, cfg.Listen, cfg.Logger = dir, "127.0.0.1:0", testLogger()
	cfg.Ready = func(a string) { readyc <- a }
	go func() {
		err := app.Serve(ctx, cfg)
		result <- err
		donec <- err
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-result; err != nil {
				t.Errorf("controller stopped with error: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return readyc, donec, stop
}

// Over the embedded etcd's space quota the controller refuses changes with
// UNAVAILABLE naming the quota and the remedy, keeps answering reads, and
// takes changes again after `s2s-controller store defrag`.
func TestStoreQuotaAndDefrag(t *testing.T) {
	dir := t.TempDir()
	const quota = 1 << 20
	cfg := app.ServeConfig{EtcdQuotaBytes: quota}
	ready, _, stop := serveInBackground(t, dir, cfg)
	waitReady(t, ready)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	wantContains(t, "apply output", mustRun(t, dir, "apply", "-f", contosoFile(t)), "applied: revision")

	// Fill the database as rewritten host reports would, straight through
	// the embedded etcd's private socket (this test runs as its owner).
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdembed.ClientEndpoint(filepath.Join(dir, "etcd"))},
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := t.Context()
	big := strings.Repeat("r", 200<<10)
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("no NOSPACE alarm after 100 writes of 200 KiB over a 1 MiB quota")
		}
		if _, err := cli.Put(ctx, store.DefaultPrefix+"filler", big); err != nil {
			if !errors.Is(err, rpctypes.ErrNoSpace) {
				t.Fatal(err)
			}
			break
		}
	}

	changed := contosoFile(t, "realm: contoso.com", "realm: fabrikam.com")
	_, err = mustFail(t, dir, "apply", "-f", changed)
	wantRPCError(t, err, "Unavailable", "nothing was changed", "etcd space quota of 1048576 bytes exceeded", "s2s-controller store defrag")
	_, err = mustFail(t, dir, "secret", "put", "oauth-2027", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	wantRPCError(t, err, "Unavailable", "etcd space quota", "s2s-controller store defrag")
	// Reads still work.
	wantContains(t, "get topology", mustRun(t, dir, "get", "topology"), "realm: contoso.com")
	mustRun(t, dir, "get", "hosts")

	// A controller restarted under the alarm cannot take its presence
	// lease, so it is not ready for agents; its API still answers, and
	// defrag through it is the way out.
	stop()
	ready, _, _ = serveInBackground(t, dir, cfg)
	waitFor(t, "the restarted controller's address file", func() (bool, string) {
		_, err := os.Stat(app.AddrFile(dir))
		return err == nil, fmt.Sprint(err)
	})
	wantContains(t, "get topology after the restart", mustRun(t, dir, "get", "topology"), "realm: contoso.com")
	_, err = mustFail(t, dir, "apply", "-f", changed)
	wantRPCError(t, err, "Unavailable", "etcd space quota of 1048576 bytes exceeded")

	out := mustRun(t, dir, "store", "defrag")
	wantContains(t, "defrag output", out, "compacted etcd history up to revision", "defragmented unix://", "disarmed 1 NOSPACE alarm(s)")
	if _, err := cli.Delete(ctx, store.DefaultPrefix+"filler"); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ready)
	wantContains(t, "apply after defrag", mustRun(t, dir, "apply", "-f", changed), "applied: revision")
	wantContains(t, "defrag again", mustRun(t, dir, "store", "defrag"), "disarmed 0 NOSPACE alarm(s)")

	// Only an admin may maintain the store; an agent's identity may not.
	agent := filepath.Join(t.TempDir(), "fe01")
	mustRun(t, dir, "certs", "issue-agent", "--host", "fe01.contoso.com", "--out", agent)
	_, err = mustFail(t, dir, "store", "defrag", "--cert", filepath.Join(agent, "agent.crt"), "--key", filepath.Join(agent, "agent.key"))
	wantRPCError(t, err, "PermissionDenied", "needs an admin identity")
}

// A data directory where the embedded etcd cannot write stops serve at
// once with an error naming the directory and the cause (for root too:
// the etcd directory is a regular file), instead of a silent exit.
func TestServeUnwritableEtcdDir(t *testing.T) {
	dir := t.TempDir()
	etcdDir := filepath.Join(dir, "etcd")
	if err := os.WriteFile(etcdDir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	root := NewRoot(&out)
	root.SetArgs([]string{"--data-dir", dir, "serve", "--listen", "127.0.0.1:0"})
	err := root.ExecuteContext(ctx)
	if err == nil {
		t.Fatal("serve on an unwritable etcd directory returned no error")
	}
	if ctx.Err() != nil {
		t.Fatalf("serve did not give up on its own: %v", err)
	}
	if ExitCode(err) == 0 {
		t.Error("exit code 0")
	}
	wantContains(t, "error", err.Error(), "create etcd data directory "+etcdDir, "not a directory")
	if _, err := os.Stat(app.AddrFile(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed serve left %s (stat: %v)", app.AddrFile(dir), err)
	}
}

// With --etcd-endpoints the controller logs in as an etcd user whose role
// grants read and write on its prefix only (the README's role), and works
// with nothing more; a wrong password stops serve naming the cause.
func TestServeExternalEtcdPrefixScopedUser(t *testing.T) {
	ctx := t.Context()
	etcd, err := etcdembed.Start(ctx, filepath.Join(t.TempDir(), "external-etcd"))
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: the controller stops before its etcd.
	t.Cleanup(etcd.Close)
	root, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	// etcdctl role add s2strust; role grant-permission s2strust --prefix=true readwrite /s2strust/;
	// user add s2s-controller; user grant-role s2s-controller s2strust; (root user) auth enable
	steps := []func() error{
		func() error { _, err := root.RoleAdd(ctx, "s2strust"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "s2strust", store.DefaultPrefix, clientv3.GetPrefixRangeEnd(store.DefaultPrefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := root.UserAdd(ctx, "s2s-controller", "etcd-Passw0rd"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "s2s-controller", "s2strust"); return err },
		func() error { _, err := root.UserAdd(ctx, "root", "root-Passw0rd"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("etcd auth setup step %d: %v", i, err)
		}
	}

	// A wrong password: serve refuses at once.
	bad := writeFile(t, "etcd.pw", []byte("wrong\n"))
	start := time.Now()
	err = app.Serve(ctx, app.ServeConfig{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: testLogger(), EtcdEndpoints: []string{etcd.Endpoint()},
		EtcdClient: app.EtcdClientConfig{Username: "s2s-controller", PasswordFile: bad}})
	if err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("serve with a wrong etcd password: got %v, want authentication failed", err)
	}
	t.Logf("wrong password refused after %v", time.Since(start))

	dir := t.TempDir()
	pw := writeFile(t, "etcd.pw", []byte("etcd-Passw0rd\n"))
	startControllerConfig(t, dir, app.ServeConfig{EtcdEndpoints: []string{etcd.Endpoint()},
		EtcdClient: app.EtcdClientConfig{Username: "s2s-controller", PasswordFile: pw}})
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	wantContains(t, "apply output", mustRun(t, dir, "apply", "-f", contosoFile(t)), "applied: revision")
	wantContains(t, "get topology", mustRun(t, dir, "get", "topology"), "realm: contoso.com")
	// Maintaining the cluster is etcd's root's business, and the error says so.
	_, err = mustFail(t, dir, "store", "defrag")
	wantRPCError(t, err, "store defrag: FailedPrecondition", "permission denied", "etcdctl defrag")
}

// The embedded etcd's quota and compaction flags are refused with an
// external cluster, whose own settings they would seem to change.
func TestServeEmbeddedOnlyFlagsRefusedWithEndpoints(t *testing.T) {
	for _, flag := range []string{"--etcd-quota-bytes=1048576", "--etcd-compaction-retention=5m"} {
		dir := t.TempDir()
		_, err := mustFail(t, dir, "serve", "--listen", "127.0.0.1:0", "--etcd-endpoints", "https://etcd1:2379", flag)
		name := strings.SplitN(flag, "=", 2)[0]
		wantContains(t, "error", err.Error(), name+" applies to the embedded etcd only", "--quota-backend-bytes")
		if _, err := os.Stat(filepath.Join(dir, "pki")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a refused serve created its PKI (stat: %v)", err)
		}
	}
}
