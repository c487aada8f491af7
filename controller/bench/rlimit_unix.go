//go:build unix

package bench

import (
	"fmt"
	"syscall"
	"time"
)

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// raiseFileLimit raises the open-file limit to need when it is lower:
// within the hard limit, and beyond it when the process may raise that
// (root). It returns the limit now in force.
func raiseFileLimit(need uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read the open-file limit: %w", err)
	}
	if lim.Cur >= need {
		return lim.Cur, nil
	}
	var hardErr error
	if lim.Max < need {
		if hardErr = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: need, Max: need}); hardErr == nil {
			return need, nil
		}
		hardErr = fmt.Errorf("raise the hard open-file limit from %d to %d: %w", lim.Max, need, hardErr)
	}
	next := syscall.Rlimit{Cur: min(need, lim.Max), Max: lim.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err != nil {
		return lim.Cur, fmt.Errorf("raise the open-file limit to %d: %w", next.Cur, err)
	}
	return next.Cur, hardErr
}
