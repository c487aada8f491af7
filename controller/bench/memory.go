package bench

import (
	"bufio"
	"bytes"
	"math"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
)

// memProfileRate is the heap profile's sampling rate during Run for n
// agents: some ten thousand samples over n streams (about 200 KiB of heap
// each, both sides), so the split between agents and server rests on
// many samples, and no finer, since a fine rate costs CPU on every
// allocation and would slow the latencies measured.
func memProfileRate(n int) int { return min(max(n*20, 4096), 512<<10) }

// memSample is the process's live memory after a full collection, with
// the part the simulated agents hold estimated apart.
type memSample struct {
	heapInuse, stackInuse uint64
	// profileTotal and profileAgent are the live heap bytes the heap
	// profile sees in all and in allocations made by client-side code.
	profileTotal, profileAgent  float64
	goroutines, agentGoroutines int
}

func sampleMemory() memSample {
	// The heap profile shows the heap as of the last completed collection;
	// the second one also frees what the first one's finalizers released.
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := memSample{heapInuse: ms.HeapInuse, stackInuse: ms.StackInuse}
	var recs []runtime.MemProfileRecord
	for n := 256; ; {
		recs = make([]runtime.MemProfileRecord, n+64)
		var ok bool
		if n, ok = runtime.MemProfile(recs, false); ok {
			recs = recs[:n]
			break
		}
	}
	for i := range recs {
		r := &recs[i]
		objs, bytes := r.InUseObjects(), r.InUseBytes()
		if objs <= 0 || bytes <= 0 {
			continue
		}
		b := scaleHeap(objs, bytes, runtime.MemProfileRate)
		s.profileTotal += b
		if clientStack(r.Stack()) {
			s.profileAgent += b
		}
	}
	s.goroutines, s.agentGoroutines = countGoroutines()
	return s
}

// scaleHeap undoes the heap profile's sampling as runtime/pprof does.
func scaleHeap(objs, bytes int64, rate int) float64 {
	if rate <= 1 {
		return float64(bytes)
	}
	avg := float64(bytes) / float64(objs)
	return float64(bytes) / (1 - math.Exp(-avg/float64(rate)))
}

// clientMarkers are functions only the client side of a gRPC connection
// runs, and the simulated agents themselves. The grpc transport starts its
// goroutines from closures named after their constructor, so a reader or
// writer goroutine's allocations carry newHTTP2Client or http2Client.
var clientMarkers = []string{
	"/controller/bench.(*agent)",
	"google.golang.org/grpc.NewClient",
	"google.golang.org/grpc.(*ClientConn)",
	"google.golang.org/grpc.(*addrConn)",
	"google.golang.org/grpc.newClientStream",
	"google.golang.org/grpc.(*clientStream)",
	"google.golang.org/grpc.(*csAttempt)",
	"google.golang.org/grpc.(*ccBalancerWrapper)",
	"google.golang.org/grpc.(*ccResolverWrapper)",
	"google.golang.org/grpc.(*acBalancerWrapper)",
	"google.golang.org/grpc/internal/transport.NewHTTP2Client",
	"google.golang.org/grpc/internal/transport.newHTTP2Client",
	"google.golang.org/grpc/internal/transport.(*http2Client)",
	"google.golang.org/grpc/balancer/",
	"google.golang.org/grpc/internal/balancer/",
	"google.golang.org/grpc/internal/resolver/",
	"crypto/tls.(*Conn).clientHandshake",
	"crypto/tls.(*clientHandshakeStateTLS13)",
}

func clientStack(stack []uintptr) bool {
	frames := runtime.CallersFrames(stack)
	for {
		f, more := frames.Next()
		for _, m := range clientMarkers {
			if strings.Contains(f.Function, m) {
				return true
			}
		}
		if !more {
			return false
		}
	}
}

// countGoroutines counts all goroutines and those carrying the agents'
// label.
func countGoroutines() (all, agents int) {
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		return runtime.NumGoroutine(), 0
	}
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	last := 0
	for sc.Scan() {
		line := sc.Text()
		if n, rest, ok := strings.Cut(line, " @ "); ok && rest != "" {
			if c, err := strconv.Atoi(n); err == nil {
				last = c
				all += c
				continue
			}
		}
		if strings.HasPrefix(line, "# labels:") && strings.Contains(line, `"`+sideLabel+`":"agent"`) {
			agents += last
		}
	}
	return all, agents
}

// streamMemory is the memory per stream between two samples.
type streamMemory struct {
	total  int64 // process-wide growth per stream, agents included
	agents int64 // the agents' estimated share
	server int64 // total minus agents: what the server side holds
}

// perStream splits the growth from before to after over n streams. The
// heap growth is split in the proportion the heap profile attributes to
// client-side code; the stack growth in the proportion of goroutines that
// carry the agents' label (stacks of both sides are taken as equal in size).
func perStream(before, after memSample, n int) streamMemory {
	heap := float64(int64(after.heapInuse) - int64(before.heapInuse))
	stack := float64(int64(after.stackInuse) - int64(before.stackInuse))
	agentHeap := 0.0
	if dt := after.profileTotal - before.profileTotal; dt > 0 {
		share := (after.profileAgent - before.profileAgent) / dt
		agentHeap = heap * min(max(share, 0), 1)
	}
	agentStack := 0.0
	if dg := after.goroutines - before.goroutines; dg > 0 {
		share := float64(after.agentGoroutines-before.agentGoroutines) / float64(dg)
		agentStack = stack * min(max(share, 0), 1)
	}
	total := (heap + stack) / float64(n)
	agents := (agentHeap + agentStack) / float64(n)
	return streamMemory{total: int64(total), agents: int64(agents), server: int64(total - agents)}
}
