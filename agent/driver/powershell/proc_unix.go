//go:build !windows

package powershell

import (
	"os/exec"
	"syscall"
)

// processTree is the worker and everything it started: on Unix-like
// systems its own process group, so that a timeout kills the children
// (e.g. a hung helper a cmdlet started) along with the shell.
type processTree struct{}

func newProcessTree() (*processTree, error) { return &processTree{}, nil }

func prepareTree(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

func (t *processTree) attach(*exec.Cmd) error { return nil }

func (t *processTree) kill(cmd *exec.Cmd) error {
	// The group's id is the leader's pid (Setpgid with Pgid 0).
	return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}

func (t *processTree) release() {}
