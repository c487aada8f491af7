package powershell

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func testWorker(t *testing.T, product string, mod func(*WorkerConfig)) *Worker {
	t.Helper()
	dir := t.TempDir()
	if err := writeScripts(dir); err != nil {
		t.Fatal(err)
	}
	cfg := WorkerConfig{Product: product, Executable: os.Args[0], Script: filepath.Join(dir, scriptOf[product]),
		CallTimeout: 10 * time.Second, StartTimeout: 10 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	w := NewWorker(cfg)
	t.Cleanup(func() { w.Close() })
	return w
}

func wantError(t *testing.T, err error, parts ...string) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", parts)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *powershell.Error", err, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
	return e
}

func TestWorkerCallAndKeepAlive(t *testing.T) {
	fakeEnv(t, "normal")
	w := testWorker(t, ProductLync, nil)
	var hello struct{ OSVersion, Module string }
	if err := w.Hello(context.Background(), &hello); err != nil {
		t.Fatal(err)
	}
	if hello.OSVersion != "10.0.17763.0" || hello.Module != "SkypeForBusiness" {
		t.Fatalf("hello = %+v", hello)
	}
	for i := 0; i < 3; i++ {
		if err := w.Call(context.Background(), "init", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := w.Starts(); n != 1 {
		t.Fatalf("worker started %d times for four calls, want once (the module import is paid once)", n)
	}
}

func TestWorkerStructuredErrorKeepsWorker(t *testing.T) {
	fakeEnv(t, "normal")
	w := testWorker(t, ProductLync, nil)
	err := w.Call(context.Background(), "no-such-op", nil, nil)
	e := wantError(t, err, "lync/skype for business", "no-such-op", "this worker has no operation no-such-op", "S2SUnknownOperation")
	if e.Record == nil {
		t.Fatal("no structured record")
	}
	if err := w.Call(context.Background(), "init", nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := w.Starts(); n != 1 {
		t.Fatalf("a PowerShell error restarted the worker (%d starts)", n)
	}
}

func TestWorkerBadInput(t *testing.T) {
	for _, tc := range []struct {
		name, mode, product, op string
		mod                     func(*WorkerConfig)
		want                    []string
	}{
		{name: "executable missing", mode: "normal", product: ProductLync, op: "get-partner-applications",
			mod:  func(c *WorkerConfig) { c.Executable = filepath.Join(os.TempDir(), "no-such-dir", "powershell.exe") },
			want: []string{"lync/skype for business", "get-partner-applications", "--powershell", "no-such-dir"}},
		{name: "module not installed", mode: "no-module", product: ProductLync, op: "get-partner-applications",
			want: []string{"lync/skype for business", "get-partner-applications", "Import-Module", "neither the SkypeForBusiness nor the Lync module", "S2SModuleNotInstalled"}},
		{name: "exchange session refused", mode: "session-refused", product: ProductExchange, op: "get-auth-config",
			mod:  func(c *WorkerConfig) { c.Init = map[string]string{"fqdn": "ex01.contoso.com"} },
			want: []string{"exchange", "get-auth-config", "New-PSSession", "Access is denied", "PSSessionOpenFailed"}},
		{name: "dies at start", mode: "die-at-start", product: ProductSharePoint, op: "get-trusted-issuers",
			want: []string{"sharepoint", "get-trusted-issuers", "the worker exited", "exit status 3", "was not loaded"}},
		{name: "exits mid-call", mode: "normal", product: ProductLync, op: "exit",
			want: []string{"lync/skype for business", "exit", "the worker exited", "exit status 4", "pipeline has been stopped"}},
		{name: "not json", mode: "normal", product: ProductLync, op: "garbage",
			want: []string{"lync/skype for business", "garbage", "not a JSON response", "WARNING: The names"}},
		{name: "oversized", mode: "normal", product: ProductLync, op: "huge",
			mod:  func(c *WorkerConfig) { c.MaxResponse = 1024 },
			want: []string{"lync/skype for business", "huge", "over the 1024-byte limit"}},
		{name: "wrong id", mode: "normal", product: ProductLync, op: "wrong-id",
			want: []string{"wrong-id", "while request"}},
		{name: "answer then exit", mode: "normal", product: ProductLync, op: "answer-then-exit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fakeEnv(t, tc.mode)
			w := testWorker(t, tc.product, tc.mod)
			err := w.Call(context.Background(), tc.op, nil, nil)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantError(t, err, tc.want...)
		})
	}
}

func TestWorkerRestartsAfterDeath(t *testing.T) {
	fakeEnv(t, "normal")
	w := testWorker(t, ProductLync, nil)
	if err := w.Call(context.Background(), "exit", nil, nil); err == nil {
		t.Fatal("exit: no error")
	}
	if err := w.Call(context.Background(), "init", nil, nil); err != nil {
		t.Fatalf("the call after the worker died: %v", err)
	}
	if n := w.Starts(); n != 2 {
		t.Fatalf("%d starts, want 2 (one restart)", n)
	}
}

func TestWorkerCancel(t *testing.T) {
	fakeEnv(t, "normal")
	w := testWorker(t, ProductLync, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		// Cancel once the worker is busy on the call.
		for w.Starts() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	err := w.Call(ctx, "hang", nil, nil)
	e := wantError(t, err, "hang", "cancelled")
	if !errors.Is(e, context.Canceled) {
		t.Fatalf("%v does not wrap context.Canceled", err)
	}
}

func TestWorkerStartBackoff(t *testing.T) {
	fakeEnv(t, "no-module")
	w := testWorker(t, ProductLync, nil)
	for i := 0; i < 3; i++ {
		err := w.Call(context.Background(), "get-partner-applications", nil, nil)
		wantError(t, err, "Import-Module", "S2SModuleNotInstalled")
	}
	if n := w.Starts(); n != 1 {
		t.Fatalf("%d starts for three calls in quick succession, want 1 (the failed start is not retried at once)", n)
	}
}

func TestWorkerNoLeak(t *testing.T) {
	fakeEnv(t, "normal")
	w := testWorker(t, ProductLync, nil)
	if err := w.Call(context.Background(), "exit", nil, nil); err == nil {
		t.Fatal("exit: no error")
	}
	if err := w.Call(context.Background(), "init", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t)
}
