package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// An agents' process runs every one of its threads at childNice, so the
// simulated fleet yields the CPU to the controller under test.
func TestChildRunsAtLowerPriority(t *testing.T) {
	f := &fleet{index: map[string]int{}}
	c, err := f.spawn(childArgv(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	f.children = append(f.children, c)
	defer func() {
		if err := f.close(); err != nil {
			t.Error(err)
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		nices, err := threadNices(c.cmd.Process.Pid)
		ok := err == nil && len(nices) > 0
		for _, n := range nices {
			ok = ok && n >= childNice
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agents' process's threads have nice values %v (%v) after 20s; want all at least %d", nices, err, childNice)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition another process sets
	}
}

// threadNices reads the nice value of each thread of process pid.
func threadNices(pid int) ([]int, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, task.Name(), "stat"))
		if err != nil {
			return nil, err
		}
		// Fields after the command's closing parenthesis start at the
		// third (state); the nice value is the nineteenth.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		fields := strings.Fields(rest)
		if len(fields) < 17 {
			return nil, fmt.Errorf("%s/stat: %d fields after the command", task.Name(), len(fields))
		}
		n, err := strconv.Atoi(fields[16])
		if err != nil {
			return nil, fmt.Errorf("%s/stat: nice %q: %w", task.Name(), fields[16], err)
		}
		out = append(out, n)
	}
	return out, nil
}
