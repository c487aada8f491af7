//go:build !windows

package service

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestCommandOutsideWindows(t *testing.T) {
	for _, sub := range []string{"install", "uninstall", "set-recovery", "start", "stop", "status"} {
		cmd := Command()
		cmd.SetArgs([]string{sub})
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), "systemd") || !strings.Contains(err.Error(), "s2s-agent.service") {
			t.Errorf("service %s: %v; want the systemd pointer", sub, err)
		}
	}
	if IsService() {
		t.Error("IsService outside Windows")
	}
	called := false
	if err := Run(context.Background(), slog.Default(), func(context.Context, *slog.Logger) error { called = true; return nil }); err != nil || !called {
		t.Errorf("Run: %v, called %v", err, called)
	}
}
