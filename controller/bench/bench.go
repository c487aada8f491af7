// Package bench measures SPEC "Scale and speed": N simulated agents over
// real gRPC with mTLS against a controller running in this process (real
// embedded etcd), side by side with a bare gRPC fan-out of the same
// payload to the same N streams (the floor).
//
// The agents run in child processes (ChildMain), so the N connections fit
// the open-file limit (each process holds one end of each) and this
// process's memory and CPU time are the controller's own. Each simulated
// agent is what the controller sees of a real one: its own TLS connection
// with its own host certificate (the controller authorizes a stream by its
// client certificate's host, so agents cannot share a connection) and one
// Sync stream. It keeps nothing but one goroutine that reads the stream and
// ACKs every Desired at once, with no driver, and reconnects with the real
// agent's backoff, or when the controller says.
//
// Limits of the method: agents and server share the machine's cores, so
// the times include the agents' work; loopback hides the network.
package bench

import (
	"context"
	"errors"
	"fmt"
	"github.com/s2strust/s2strust/controller/server"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"text/tabwriter"
	"time"
)

// Config configures Run.
type Config struct {
	// Agents is the number of simulated agents (hosts), at least 1.
	Agents int
	// Deployments is the number of exchange deployments the hosts are
	// spread over (default Agents/100, at least 1). Each names one
	// token-issuer secret, so every push carries key material.
	Deployments int
	// Runs is how many times each measurement is taken (default 3); the
	// table shows the median and the spread.
	Runs int
	// ConnectRate paces the agents' first connections to the floor and to
	// the controller, agents a second (default 1000, the controller's
	// stream rate; negative: all at once). A restart's reconnections are
	// paced by the controller's Drain instead.
	ConnectRate float64
	// Timeout bounds every wait (default one minute and 20ms per agent).
	Timeout time.Duration
	// Dir holds the controller's data directory; it should be empty.
	Dir string
	// ChildArgv is the command that runs ChildMain in a child process,
	// started with ChildEnv set: the s2s-controller binary with its hidden
	// bench-agents subcommand, or a test binary whose TestMain calls
	// ChildMain. Required.
	ChildArgv []string
	// AgentBinary, when set, is an s2s-agent binary the benchmark runs
	// beside the simulated agents, as one more host with the sim driver,
	// to measure a real agent's memory.
	AgentBinary string
	// CPUProfile, when set, is a file the controller process's CPU profile
	// of the commits is written to (go tool pprof reads it).
	CPUProfile string
	// MemProfile, when set, is a file the controller process's heap
	// profile is written to with every stream open and idle.
	MemProfile string
	// Out receives the results table; nil discards it.
	Out io.Writer
	// Logger is the controller's logger; nil discards its logs.
	Logger *slog.Logger
}

// Result holds the figures Run measured, one entry per run where a
// measurement is repeated. Commit latencies are per host, from the start
// of the ApplyTopology call (the commit happens inside it) to the moment
// the controller has stored the host's ACK; the floor's from the moment it
// hands its streams their push to the moment it has read the ACK.
type Result struct {
	Agents, Deployments, Runs, Children int
	// ConnectRate is the pace of the first connections, agents a second.
	ConnectRate float64

	// ConnectAll is the time from starting every agent at once until the
	// last one had its first answer from the controller.
	ConnectAll, FloorConnectAll time.Duration
	// P50, P99 and Max are the commit-to-ACK-stored latencies of each run
	// over all hosts for a change touching every host; First the first
	// host's.
	P50, P99, Max, First                     []time.Duration
	FloorP50, FloorP99, FloorMax, FloorFirst []time.Duration
	// ApplyRPC is how long each ApplyTopology call took, CommitCPU the
	// controller process's CPU time from the call until every ACK was stored.
	ApplyRPC, CommitCPU []time.Duration
	// CommitAllocated is the bytes the controller's process allocated
	// meanwhile, CommitGCs its garbage collections.
	CommitAllocated, CommitGCs []int64
	// HostsConfirmed is how many hosts ListHosts showed connected and
	// applied at the last revision.
	HostsConfirmed int
	// RSSPerStream is the growth of the controller process's resident
	// memory per idle agent stream (freed pages returned to the system
	// first), GoPerStream its Go heap and stacks per stream,
	// GoroutinesPerStream its goroutines per stream, RSS the whole
	// process's with every stream open.
	RSSPerStream, GoPerStream, FloorRSSPerStream, FloorGoPerStream int64
	GoroutinesPerStream, FloorGoroutinesPerStream                  float64
	RSS                                                            int64
	// AgentRSS is the resident memory of the agents' processes per
	// simulated agent.
	AgentRSS int64
	// RealAgentRSS is the peak resident memory of the real agent
	// (AgentBinary) over the run; 0 when none ran.
	RealAgentRSS int64
	// RestartStop is how long each stop of the controller took,
	// RestartStartup how long the new one took to serve, RestartResync the
	// time from the stop until every agent had reconnected and had its
	// first answer, RestartResyncP50 until half had.
	RestartStop, RestartStartup, RestartResync, RestartResyncP50 []time.Duration
	// RestartExit is how long the whole controller took to stop after its
	// gRPC server had (RestartStop): the embedded etcd closing.
	RestartExit []time.Duration
	// ResentAfterRestart counts, per restart, the Desired messages the
	// controller sent from the stop until the fleet was connected and
	// current again; every agent was current, so it must be 0.
	ResentAfterRestart []int64
	// Drains counts, per restart, the agents told to reconnect later;
	// Resumed the agents whose reconnection resumed its TLS session.
	Drains, Resumed []int64
}

// The targets of SPEC "Scale and speed".
const (
	targetP99            = time.Second
	targetFloorRatio     = 1.5
	targetBytesPerStream = 48 << 10
	targetResync         = 15 * time.Second
	targetStop           = 2 * time.Second
	targetAgentRSS       = 30 << 20
)

// Run starts a controller in cfg.Dir and cfg.Agents simulated agents in
// child processes; it measures them against a bare gRPC server (the floor)
// and then against the controller, each measurement cfg.Runs times, and
// prints both side by side to cfg.Out. It stops by itself: every wait has
// a deadline that grows with the number of agents.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Agents < 1 {
		return nil, errNoAgents
	}
	if cfg.Deployments <= 0 {
		cfg.Deployments = max(cfg.Agents/100, 1)
	}
	cfg.Deployments = min(cfg.Deployments, cfg.Agents)
	if cfg.Runs <= 0 {
		cfg.Runs = 3
	}
	if cfg.Dir == "" {
		return nil, errors.New("bench: Dir is required")
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// One descriptor per agent (the controller's end) and some for etcd,
	// its WAL, the admin client and the children's pipes.
	need := uint64(cfg.Agents + 300)
	if got, err := raiseFileLimit(need); got < need {
		return nil, fmt.Errorf("bench: %d agents need %d open files in the controller's process, the limit is %d: %v", cfg.Agents, need, got, err)
	}
	// Deadlines: generous, and growing with the fleet.
	timeout := time.Minute + time.Duration(cfg.Agents)*20*time.Millisecond
	if cfg.Timeout > 0 {
		timeout = cfg.Timeout
	}

	h, err := newHarness(ctx, filepath.Join(cfg.Dir, "controller"), cfg.Agents, cfg.Deployments, cfg.ChildArgv, timeout, log)
	if err != nil {
		return nil, err
	}
	defer h.close()
	switch {
	case cfg.ConnectRate == 0:
		h.connectRate = server.DefaultReconnectRate
	case cfg.ConnectRate > 0:
		h.connectRate = cfg.ConnectRate
	}
	res := &Result{ConnectRate: h.connectRate, Agents: cfg.Agents, Deployments: cfg.Deployments, Runs: cfg.Runs, Children: len(h.agents.children)}

	// The floor first, so the controller's figures do not carry its garbage.
	floor, err := runFloor(ctx, h, cfg.Runs, timeout)
	if err != nil {
		return nil, fmt.Errorf("bench: floor: %w", err)
	}
	res.FloorConnectAll = floor.connectAll
	for _, lat := range floor.commits {
		p50, p99, maxd := percentiles(lat)
		res.FloorP50, res.FloorP99, res.FloorMax = append(res.FloorP50, p50), append(res.FloorP99, p99), append(res.FloorMax, maxd)
		res.FloorFirst = append(res.FloorFirst, slices.Min(lat))
	}
	res.FloorRSSPerStream, res.FloorGoPerStream, res.FloorGoroutinesPerStream = floor.mem.rss, floor.mem.goMem, floor.mem.goroutines

	if cfg.AgentBinary != "" {
		h.layout.real = realHost
	}
	if err := h.applyFirst(ctx); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if cfg.AgentBinary != "" {
		// Before the baseline: its stream is not one of the N measured.
		if err := h.startReal(ctx, cfg.AgentBinary, filepath.Join(cfg.Dir, "agent"), timeout); err != nil {
			return nil, err
		}
	}
	before := sampleMemory()
	if res.ConnectAll, err = h.connect(ctx, timeout); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	// Idle: every stream open, every host applied, nothing outstanding.
	if _, err := h.waitFleet(ctx, timeout); err != nil {
		return nil, fmt.Errorf("bench: waiting for the fleet to settle: %w", err)
	}
	mem := memoryDelta(before, sampleMemory(), cfg.Agents)
	if cfg.MemProfile != "" {
		if err := writeHeapProfile(cfg.MemProfile); err != nil {
			return nil, err
		}
	}
	res.RSSPerStream, res.GoPerStream, res.GoroutinesPerStream, res.RSS = mem.rss, mem.goMem, mem.goroutines, mem.total
	if rss, _, err := h.agents.memory(ctx); err == nil {
		res.AgentRSS = rss / int64(cfg.Agents)
	}

	stopProfile := func() {}
	if cfg.CPUProfile != "" {
		if stopProfile, err = startCPUProfile(cfg.CPUProfile); err != nil {
			return nil, err
		}
		defer func() { stopProfile() }()
	}
	for range cfg.Runs {
		c, err := h.commit(ctx, timeout)
		if err != nil {
			return nil, fmt.Errorf("bench: commit: %w", err)
		}
		p50, p99, maxd := percentiles(c.latencies)
		res.P50, res.P99, res.Max = append(res.P50, p50), append(res.P99, p99), append(res.Max, maxd)
		res.First = append(res.First, slices.Min(c.latencies))
		res.ApplyRPC, res.CommitCPU = append(res.ApplyRPC, c.apply), append(res.CommitCPU, c.cpu)
		res.CommitAllocated, res.CommitGCs = append(res.CommitAllocated, c.allocated), append(res.CommitGCs, c.gcs)
		n, err := h.waitFleet(ctx, timeout)
		res.HostsConfirmed = n
		if err != nil {
			return nil, fmt.Errorf("bench: confirm with ListHosts: %w", err)
		}
	}

	stopProfile()

	for range cfg.Runs {
		rr, err := h.restart(ctx, timeout)
		if err != nil {
			return nil, fmt.Errorf("bench: restart: %w", err)
		}
		res.RestartStop = append(res.RestartStop, rr.stop)
		res.RestartExit = append(res.RestartExit, rr.exit)
		res.RestartStartup = append(res.RestartStartup, rr.startup)
		res.RestartResync = append(res.RestartResync, rr.resync)
		res.RestartResyncP50 = append(res.RestartResyncP50, rr.resyncP50)
		res.ResentAfterRestart = append(res.ResentAfterRestart, rr.resent)
		res.Drains = append(res.Drains, rr.drains)
		res.Resumed = append(res.Resumed, rr.resumed)
	}

	if h.real != nil {
		if res.RealAgentRSS, err = h.real.peakRSS(); err != nil {
			return nil, err
		}
	}
	if err := h.close(); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	res.print(cfg.Out)
	return res, nil
}

// percentiles returns the 50th and 99th percentiles (nearest rank) and the
// maximum.
func percentiles(d []time.Duration) (p50, p99, maxd time.Duration) {
	if len(d) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return rank(0.50), rank(0.99), s[len(s)-1]
}

// median returns the median of d (the lower middle one of an even count)
// and its spread, the smallest and largest.
func median(d []time.Duration) (med, lo, hi time.Duration) {
	if len(d) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)/2], s[0], s[len(s)-1]
}

func medianInt(n []int64) (med, lo, hi int64) {
	if len(n) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(n)
	slices.Sort(s)
	return s[(len(s)-1)/2], s[0], s[len(s)-1]
}

// Median returns the median of the runs of a measurement.
func Median(d []time.Duration) time.Duration { m, _, _ := median(d); return m }

// MedianInt returns the median of the runs of a count.
func MedianInt(n []int64) int64 { m, _, _ := medianInt(n); return m }

// FloorRatio is the median commit-to-ACK p99 over the floor's.
func (r *Result) FloorRatio() float64 {
	f := Median(r.FloorP99)
	if f <= 0 {
		return 0
	}
	return float64(Median(r.P99)) / float64(f)
}

func (r *Result) print(out io.Writer) {
	ms := func(d time.Duration) string {
		if d < 10*time.Millisecond {
			return d.Round(100 * time.Microsecond).String()
		}
		return d.Round(time.Millisecond).String()
	}
	spread := func(d []time.Duration) string {
		if len(d) == 0 {
			return ""
		}
		m, lo, hi := median(d)
		if len(d) == 1 {
			return ms(m)
		}
		return fmt.Sprintf("%s (%s–%s)", ms(m), ms(lo), ms(hi))
	}
	kib := func(b int64) string { return fmt.Sprintf("%.1f KiB", float64(b)/1024) }
	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	fmt.Fprintf(out, "s2strust scale benchmark: %d agents in %d deployments (token issuer on each), %d CPUs, controller in this process, agents in %d child processes, loopback, mTLS\n",
		r.Agents, r.Deployments, runtime.NumCPU(), r.Children)
	fmt.Fprintf(out, "each figure: median of %d runs (min–max)\n\n", r.Runs)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "\tcontroller\tfloor (bare gRPC)\ttarget")
	ramp := "all at once"
	if r.ConnectRate > 0 {
		ramp = fmt.Sprintf("%g/s", r.ConnectRate)
	}
	fmt.Fprintf(w, "connect all, %s (last first answer)\t%s\t%s\t\n", ramp, ms(r.ConnectAll), ms(r.FloorConnectAll))
	fmt.Fprintf(w, "commit to first ACK stored\t%s\t%s\t\n", spread(r.First), spread(r.FloorFirst))
	fmt.Fprintf(w, "commit to ACK stored p50\t%s\t%s\t\n", spread(r.P50), spread(r.FloorP50))
	p99 := Median(r.P99)
	fmt.Fprintf(w, "commit to ACK stored p99\t%s\t%s\t< %s: %s\n", spread(r.P99), spread(r.FloorP99), targetP99, verdict(p99 < targetP99))
	fmt.Fprintf(w, "  p99 over the floor's\t%.2f×\t\t<= %.1f×: %s\n", r.FloorRatio(), targetFloorRatio, verdict(r.FloorRatio() <= targetFloorRatio))
	fmt.Fprintf(w, "commit to all ACKs stored (max)\t%s\t%s\t\n", spread(r.Max), spread(r.FloorMax))
	fmt.Fprintf(w, "ApplyTopology call\t%s\t\t\n", spread(r.ApplyRPC))
	fmt.Fprintf(w, "controller CPU per commit\t%s\t\t\n", spread(r.CommitCPU))
	am, alo, ahi := medianInt(r.CommitAllocated)
	fmt.Fprintf(w, "  allocated per commit\t%s (%s–%s)\t\t\n", mib(am), mib(alo), mib(ahi))
	gm, glo, ghi := medianInt(r.CommitGCs)
	fmt.Fprintf(w, "  garbage collections per commit\t%d (%d–%d)\t\t\n", gm, glo, ghi)
	fmt.Fprintf(w, "ListHosts: applied last revision\t%d/%d\t\t\n", r.HostsConfirmed, r.hostsWanted())
	fmt.Fprintf(w, "RSS per idle stream\t%s\t%s\t<= %s: %s\n", kib(r.RSSPerStream), kib(r.FloorRSSPerStream), kib(targetBytesPerStream), verdict(r.RSSPerStream <= targetBytesPerStream))
	fmt.Fprintf(w, "  Go heap and stacks per stream\t%s\t%s\t\n", kib(r.GoPerStream), kib(r.FloorGoPerStream))
	fmt.Fprintf(w, "  goroutines per stream\t%.2f\t%.2f\t\n", r.GoroutinesPerStream, r.FloorGoroutinesPerStream)
	fmt.Fprintf(w, "controller RSS, all streams open\t%s\t\t\n", mib(r.RSS))
	if r.RealAgentRSS > 0 {
		fmt.Fprintf(w, "agent RSS (s2s-agent, sim driver, peak)\t%s\t\t< %s: %s\n", mib(r.RealAgentRSS), mib(targetAgentRSS), verdict(r.RealAgentRSS < targetAgentRSS))
	} else {
		fmt.Fprintf(w, "agent RSS (s2s-agent, sim driver, peak)\tnot measured: no s2s-agent binary\t\t< %s\n", mib(targetAgentRSS))
	}
	fmt.Fprintf(w, "simulated agent RSS (children / agents)\t%s\t\t\n", kib(r.AgentRSS))
	stop, _, _ := median(r.RestartStop)
	fmt.Fprintf(w, "restart: graceful stop (streams drained)\t%s\t\t< %s: %s\n", spread(r.RestartStop), targetStop, verdict(stop < targetStop))
	fmt.Fprintf(w, "  whole process stopped (etcd closed)\t%s\t\t\n", spread(r.RestartExit))
	fmt.Fprintf(w, "restart: new controller serving\t%s\t\t\n", spread(r.RestartStartup))
	fmt.Fprintf(w, "restart: half resynced\t%s\t\t\n", spread(r.RestartResyncP50))
	resync, _, _ := median(r.RestartResync)
	fmt.Fprintf(w, "restart: all resynced\t%s\t\t< %s: %s\n", spread(r.RestartResync), targetResync, verdict(resync < targetResync))
	resent, _, maxResent := medianInt(r.ResentAfterRestart)
	fmt.Fprintf(w, "restart: Desired re-sent\t%d (max %d)\t\t0: %s\n", resent, maxResent, verdict(maxResent == 0))
	drains, _, _ := medianInt(r.Drains)
	fmt.Fprintf(w, "restart: agents told when to return\t%d\t\t\n", drains)
	resumed, _, _ := medianInt(r.Resumed)
	fmt.Fprintf(w, "restart: TLS sessions resumed\t%d\t\t\n", resumed)
	w.Flush()
	fmt.Fprint(out, `
Method:
- The agents run in child processes (re-executions of this binary), so the
  controller's process holds only its own end of each connection: its
  memory and CPU figures are the controller's (with its embedded etcd).
- Each agent is its own mTLS connection (own host certificate) with one Sync
  stream: the controller sees one stream per agent. An agent only reads and
  ACKs at once; it reconnects with the real agent's backoff (500 ms to 30 s,
  full jitter), or at the time a drain message names.
- Commit latency: from the start of ApplyTopology (the commit is inside it)
  to the controller having stored each host's ACK in etcd, taken in the
  controller. The floor's: from handing its streams their push (the same
  compiled configuration and key material) to reading each ACK.
- Memory: resident set of the controller's process after a GC with freed
  pages returned, with N idle streams minus before any agent connected,
  over N; Go heap and stacks likewise.
- Agent RSS: the peak resident set (VmHWM) of one real s2s-agent with the
  sim driver, one more host of the topology, over the whole run.
- Restart: stop the controller (its gRPC graceful stop timed: every stream
  drained and ended; and the whole process's stop), start it on the
  same address and data directory; resync runs from the stop to the last
  agent's first answer. Desired re-sent are counted in the controller until
  ListHosts shows the whole fleet connected and current again.
- Agents and controller share the CPUs: every time above includes the
  agents' own TLS and protobuf work. The agents' processes run at nice 10
  (Linux): they stand for hosts that in production have their own CPUs,
  and they yield to the controller (and the floor's server) when both
  want the CPU, as a remote fleet would not take the controller's.
`)
}

// startCPUProfile starts writing this process's CPU profile to file; the
// function returned stops it.
func startCPUProfile(file string) (func(), error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, fmt.Errorf("bench: CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("bench: CPU profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// writeHeapProfile writes this process's heap profile to file.
func writeHeapProfile(file string) error {
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("bench: heap profile: %w", err)
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("bench: heap profile: %w", err)
	}
	return f.Close()
}

// hostsWanted is the number of hosts with an agent.
func (r *Result) hostsWanted() int {
	if r.RealAgentRSS > 0 {
		return r.Agents + 1
	}
	return r.Agents
}
