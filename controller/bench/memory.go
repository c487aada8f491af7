package bench

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
)

// memSample is this process's memory after a full collection with the
// freed pages returned to the system. The agents run in other processes,
// so all of it is the server's (and the benchmark's bookkeeping, sized
// before the sample that precedes the streams).
type memSample struct {
	rss        int64 // resident set size, from /proc
	goMem      int64 // Go heap in use and goroutine stacks
	goroutines int
}

func sampleMemory() memSample {
	runtime.GC()
	debug.FreeOSMemory() // a GC, and the freed pages back to the system
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, _ := residentBytes("self")
	return memSample{rss: rss, goMem: int64(ms.HeapInuse + ms.StackInuse), goroutines: runtime.NumGoroutine()}
}

// memDelta is the memory per stream between two samples.
type memDelta struct {
	rss, goMem int64   // bytes per stream
	goroutines float64 // goroutines per stream
	total      int64   // resident set size with the streams open
}

func memoryDelta(before, after memSample, n int) memDelta {
	return memDelta{
		rss:        (after.rss - before.rss) / int64(n),
		goMem:      (after.goMem - before.goMem) / int64(n),
		goroutines: float64(after.goroutines-before.goroutines) / float64(n),
		total:      after.rss,
	}
}

// residentBytes reads VmRSS of /proc/<pid>/status ("self" for this
// process): 0 and an error where there is no /proc.
func residentBytes(pid string) (int64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, fmt.Errorf("read the resident memory: %w", err)
	}
	return statusField(string(b), "VmRSS:")
}

// statusField reads a size field (in kB) of a /proc/<pid>/status text.
func statusField(status, field string) (int64, error) {
	for _, line := range strings.Split(status, "\n") {
		rest, ok := strings.CutPrefix(line, field)
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("read the resident memory: %s %q: %w", field, rest, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("read the resident memory: no %s in /proc status", field)
}
