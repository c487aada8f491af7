package bench

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// childNice is the scheduling priority (nice value) of the agents'
// processes: they simulate a fleet that in production runs on other
// machines, so they yield the CPU to the controller under test.
const childNice = 10

// lowerPriority gives every thread of this process the nice value
// childNice, or leaves it nicer. On Linux a nice value belongs to a
// thread, and a new thread inherits its creator's: once every thread has
// it, so do all later ones.
func lowerPriority() error {
	for range 2 { // a thread created during the first pass is caught by the second
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("list this process's threads: %w", err)
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			// The raw system call answers 20 minus the nice value. A thread
			// already nicer (a bench run under nice) is left as it is.
			if prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, tid); err == nil && 20-prio >= childNice {
				continue
			}
			if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, childNice); err != nil {
				return fmt.Errorf("lower the priority of thread %d: %w", tid, err)
			}
		}
	}
	return nil
}
