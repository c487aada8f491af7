//go:build !windows

package powershell

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"
)

func TestWorkerTimeoutKillsTree(t *testing.T) {
	log := fakeEnv(t, "normal")
	w := testWorker(t, ProductLync, func(c *WorkerConfig) { c.CallTimeout = 2 * time.Second })
	err := w.Call(context.Background(), "hang", nil, nil)
	wantError(t, err, "hang", "no answer within 2s", "process tree was killed")
	b, _ := os.ReadFile(log)
	m := regexp.MustCompile(`GRANDCHILD (\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("the fake worker did not start its grandchild:\n%s", b)
	}
	pid, _ := strconv.Atoi(string(m[1]))
	// The kill is synchronous for the worker (we waited for it); the
	// grandchild got the same SIGKILL and is reaped by init: wait for it
	// to be gone.
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %d outlived the timeout's tree kill", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := w.Call(context.Background(), "init", nil, nil); err != nil {
		t.Fatalf("the call after the timeout: %v", err)
	}
}
