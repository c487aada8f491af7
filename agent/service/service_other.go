//go:build !windows

package service

import (
	"context"
	"errors"
	"log/slog"
)

var errNotWindows = errors.New("the service commands manage a Windows service; on this system the agent runs under systemd: install deploy/systemd/s2s-agent.service and run systemctl enable --now s2s-agent")

func install(Spec) error      { return errNotWindows }
func uninstall() error        { return errNotWindows }
func setRecovery() error      { return errNotWindows }
func start() error            { return errNotWindows }
func stop() error             { return errNotWindows }
func status() (string, error) { return "", errNotWindows }

// IsService reports whether the process runs as a Windows service: never here.
func IsService() bool { return false }

// Run runs fn; outside Windows there is no service control manager to
// talk to.
func Run(ctx context.Context, log *slog.Logger, fn func(context.Context, *slog.Logger) error) error {
	return fn(ctx, log)
}
