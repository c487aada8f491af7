//go:build windows

package powershell

import (
	"fmt"
	"os/exec"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/windows"
)

// processTree is the worker and everything it started, held in a Job
// object: TerminateJobObject ends them all, and
// JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE ends them if the agent itself dies.
// https://learn.microsoft.com/windows/win32/procthread/job-objects
type processTree struct {
	job windows.Handle
}

func newProcessTree() (*processTree, error) {
	job, err := windows.CreateJobObject(nil, nil)
	if err != nil {
		return nil, fmt.Errorf("create job object: %w", err)
	}
	info := windows.JOBOBJECT_EXTENDED_LIMIT_INFORMATION{
		BasicLimitInformation: windows.JOBOBJECT_BASIC_LIMIT_INFORMATION{LimitFlags: windows.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE},
	}
	if _, err := windows.SetInformationJobObject(job, windows.JobObjectExtendedLimitInformation,
		uintptr(unsafe.Pointer(&info)), uint32(unsafe.Sizeof(info))); err != nil {
		windows.CloseHandle(job)
		return nil, fmt.Errorf("configure job object: %w", err)
	}
	return &processTree{job: job}, nil
}

func prepareTree(cmd *exec.Cmd) {
	// No console window for the service's children.
	cmd.SysProcAttr = &syscall.SysProcAttr{CreationFlags: windows.CREATE_NEW_PROCESS_GROUP, HideWindow: true}
}

// attach puts the started worker into the job. Anything it started before
// this (PowerShell takes far longer to load than this takes) would escape
// the job; taskkill /T in kill covers that case.
func (t *processTree) attach(cmd *exec.Cmd) error {
	h, err := windows.OpenProcess(windows.PROCESS_SET_QUOTA|windows.PROCESS_TERMINATE, false, uint32(cmd.Process.Pid))
	if err != nil {
		return err
	}
	defer windows.CloseHandle(h)
	return windows.AssignProcessToJobObject(t.job, h)
}

func (t *processTree) kill(cmd *exec.Cmd) error {
	// taskkill /T first, by parentage, while the worker is still there to
	// find its children by; then the job, which ends whatever is in it.
	// https://learn.microsoft.com/windows-server/administration/windows-commands/taskkill
	tk := exec.Command("taskkill", "/T", "/F", "/PID", strconv.Itoa(cmd.Process.Pid))
	tk.SysProcAttr = &syscall.SysProcAttr{HideWindow: true}
	tkErr := tk.Run()
	if err := windows.TerminateJobObject(t.job, 1); err != nil {
		return fmt.Errorf("terminate the worker's job: %w (taskkill: %v)", err, tkErr)
	}
	return nil
}

func (t *processTree) release() {
	if t.job != 0 {
		windows.CloseHandle(t.job)
		t.job = 0
	}
}
