//go:build !windows

package powershell

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
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
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %d outlived the timeout's tree kill", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := w.Call(context.Background(), "init", nil, nil); err != nil {
		t.Fatalf("the call after the timeout: %v", err)
	}
}

// alive reports whether pid is a live process: a zombie (killed, not yet
// reaped by whatever init the machine runs) is dead.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		return true // no procfs: kill(pid, 0) is all there is
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesized command name.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}
