// Package bench measures SPEC "Scale and speed": N simulated agents over
// real gRPC with mTLS against a controller running in this process (real
// embedded etcd), side by side with a bare gRPC fan-out of the same
// payload to the same N streams (the floor).
//
// Each simulated agent is what the controller sees of a real one: its own
// TLS connection with its own host certificate (the controller authorizes
// a stream by its client certificate's host, so agents cannot share a
// connection) and one Sync stream. It keeps nothing but one goroutine that
// reads the stream and ACKs every Desired at once, with no driver, and
// reconnects with the real agent's backoff.
//
// Limits of the method: the agents and the server run in one process on
// the same cores, so every time measured includes the agents' own work,
// and memory per stream is the process's growth with the agents' share
// estimated apart (see perStream); loopback hides the network.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"text/tabwriter"
	"time"
)

// Config configures Run.
type Config struct {
	// Agents is the number of simulated agents (hosts), at least 1.
	Agents int
	// Deployments is the number of exchange deployments the hosts are
	// spread over (default Agents/100, at least 1). They have no token
	// issuer, so no push carries secrets.
	Deployments int
	// Dir holds the controller's data directory; it should be empty.
	Dir string
	// Out receives the results table; nil discards it.
	Out io.Writer
	// Logger is the controller's logger; nil discards its logs.
	Logger *slog.Logger
}

// Result holds the figures Run measured. Latencies are per agent, from the
// start of the ApplyTopology call (the commit happens inside it) to the
// moment the agent has sent its ACK.
type Result struct {
	Agents, Deployments int

	// ConnectAll is the time from starting every agent at once until the
	// last one had its first answer from the controller.
	ConnectAll time.Duration
	// P50, P99 and Max are commit-to-ACK latencies over all agents for a
	// change touching every host.
	P50, P99, Max time.Duration
	// First is the first agent's latency: how soon pushes begin.
	First time.Duration
	// ApplyRPC is how long the ApplyTopology call took.
	ApplyRPC time.Duration
	// HostsConfirmed is how many hosts ListHosts then showed connected
	// and applied at the new revision.
	HostsConfirmed int
	// BytesPerStream is the controller's memory per idle agent stream
	// (heap and stacks, agents' share subtracted); TotalBytesPerStream is
	// the whole process's growth per stream, AgentBytesPerStream the part
	// attributed to the simulated agents.
	BytesPerStream, TotalBytesPerStream, AgentBytesPerStream int64
	// RestartStop is how long stopping the controller took,
	// RestartStartup how long the new one took to serve, and RestartResync
	// the time from starting it until every agent had reconnected and got
	// its first answer.
	RestartStop, RestartStartup, RestartResync time.Duration
	// RestartResyncP50 is when half the agents had reconnected.
	RestartResyncP50 time.Duration
	// ResentAfterRestart counts Desired messages agents received from the
	// restart until the fleet was connected and current again; every agent
	// was current, so it must be 0.
	ResentAfterRestart int64

	// The floor: the same agents against a bare gRPC server.
	FloorConnectAll                                                         time.Duration
	FloorP50, FloorP99, FloorMax, FloorFirst                                time.Duration
	FloorBytesPerStream, FloorTotalBytesPerStream, FloorAgentBytesPerStream int64
}

// The targets of SPEC "Scale and speed".
const (
	targetP99            = 2 * time.Second
	targetBytesPerStream = 16 << 10
	targetResync         = 30 * time.Second
)

// Run starts a controller in cfg.Dir, connects cfg.Agents simulated agents
// to it and measures, then does the same against the floor server, and
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
	// Two descriptors per agent (its end and the server's) and some for
	// etcd, its WAL and the admin client.
	need := uint64(2*cfg.Agents + 200)
	if got, err := raiseFileLimit(need); got < need {
		return nil, fmt.Errorf("bench: %d agents need %d open files (two per agent: both ends share this process), the limit is %d: %v", cfg.Agents, need, got, err)
	}
	prevRate := runtime.MemProfileRate
	runtime.MemProfileRate = memProfileRate(cfg.Agents)
	defer func() { runtime.MemProfileRate = prevRate }()

	// Deadlines: generous, and growing with the fleet.
	timeout := time.Minute + time.Duration(cfg.Agents)*20*time.Millisecond

	h, err := newHarness(ctx, filepath.Join(cfg.Dir, "controller"), cfg.Agents, cfg.Deployments, log)
	if err != nil {
		return nil, err
	}
	defer h.close()
	res := &Result{Agents: cfg.Agents, Deployments: cfg.Deployments}

	// The floor first, so the controller's figures do not carry its garbage.
	floor, err := runFloor(ctx, h, timeout)
	if err != nil {
		return nil, fmt.Errorf("bench: floor: %w", err)
	}
	res.FloorConnectAll = floor.connectAll
	res.FloorP50, res.FloorP99, res.FloorMax = percentiles(floor.latencies)
	res.FloorFirst = slices.Min(floor.latencies)
	res.FloorBytesPerStream, res.FloorTotalBytesPerStream, res.FloorAgentBytesPerStream = floor.mem.server, floor.mem.total, floor.mem.agents

	if err := h.applyFirst(ctx); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	before := sampleMemory()
	if res.ConnectAll, err = h.connect(ctx, timeout); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	// Idle: every stream open, every host applied, nothing outstanding.
	if _, err := h.waitFleet(ctx, timeout); err != nil {
		return nil, fmt.Errorf("bench: waiting for the fleet to settle: %w", err)
	}
	mem := perStream(before, sampleMemory(), cfg.Agents)
	res.BytesPerStream, res.TotalBytesPerStream, res.AgentBytesPerStream = mem.server, mem.total, mem.agents

	lat, took, err := h.commit(ctx, timeout)
	if err != nil {
		return nil, fmt.Errorf("bench: commit: %w", err)
	}
	res.ApplyRPC = took
	res.P50, res.P99, res.Max = percentiles(lat)
	res.First = slices.Min(lat)
	n, err := h.waitFleet(ctx, timeout)
	res.HostsConfirmed = n
	if err != nil {
		return nil, fmt.Errorf("bench: confirm with ListHosts: %w", err)
	}

	rr, err := h.restart(ctx, timeout)
	if err != nil {
		return nil, fmt.Errorf("bench: restart: %w", err)
	}
	res.RestartStop, res.RestartStartup, res.RestartResync, res.RestartResyncP50, res.ResentAfterRestart = rr.stop, rr.startup, rr.resync, rr.resyncP50, rr.resent

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

func (r *Result) print(out io.Writer) {
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	kib := func(b int64) string { return fmt.Sprintf("%.1f KiB", float64(b)/1024) }
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	fmt.Fprintf(out, "s2strust scale benchmark: %d agents in %d deployments, %d CPUs, one process, loopback, mTLS\n\n",
		r.Agents, r.Deployments, runtime.NumCPU())
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "\tcontroller\tfloor (bare gRPC)\ttarget")
	fmt.Fprintf(w, "connect all (last first answer)\t%s\t%s\t\n", ms(r.ConnectAll), ms(r.FloorConnectAll))
	fmt.Fprintf(w, "commit to first ACK\t%s\t%s\t\n", ms(r.First), ms(r.FloorFirst))
	fmt.Fprintf(w, "commit to ACK p50\t%s\t%s\t\n", ms(r.P50), ms(r.FloorP50))
	fmt.Fprintf(w, "commit to ACK p99\t%s\t%s\t< %s: %s\n", ms(r.P99), ms(r.FloorP99), targetP99, verdict(r.P99 < targetP99))
	fmt.Fprintf(w, "commit to ACK max (all ACKed)\t%s\t%s\t\n", ms(r.Max), ms(r.FloorMax))
	fmt.Fprintf(w, "ApplyTopology call\t%s\t\t\n", ms(r.ApplyRPC))
	fmt.Fprintf(w, "ListHosts: applied new revision\t%d/%d\t\t\n", r.HostsConfirmed, r.Agents)
	fmt.Fprintf(w, "memory per idle stream, server side\t%s\t%s\t<= 16 KiB: %s\n", kib(r.BytesPerStream), kib(r.FloorBytesPerStream), verdict(r.BytesPerStream <= targetBytesPerStream))
	fmt.Fprintf(w, "  whole process per stream\t%s\t%s\t\n", kib(r.TotalBytesPerStream), kib(r.FloorTotalBytesPerStream))
	fmt.Fprintf(w, "  agents' share (subtracted)\t%s\t%s\t\n", kib(r.AgentBytesPerStream), kib(r.FloorAgentBytesPerStream))
	fmt.Fprintf(w, "restart: stop / start serving\t%s / %s\t\t\n", ms(r.RestartStop), ms(r.RestartStartup))
	fmt.Fprintf(w, "restart: half resynced\t%s\t\t\n", ms(r.RestartResyncP50))
	fmt.Fprintf(w, "restart: all resynced\t%s\t\t< %s: %s\n", ms(r.RestartResync), targetResync, verdict(r.RestartResync < targetResync))
	fmt.Fprintf(w, "restart: Desired re-sent\t%d\t\t0: %s\n", r.ResentAfterRestart, verdict(r.ResentAfterRestart == 0))
	w.Flush()
	fmt.Fprint(out, `
Method:
- Each agent is its own mTLS connection (own host certificate) with one Sync
  stream: the controller sees one stream per agent. An agent only reads and
  ACKs at once; it reconnects with the real agent's backoff (500 ms to 30 s,
  full jitter).
- Latency: from the start of ApplyTopology (the commit is inside it) to each
  agent having sent its ACK, taken at the agent. The floor's origin is the
  moment it hands its streams their push.
- Memory: HeapInuse+StackInuse after two GCs, with N idle streams minus
  before any agent connected, over N. Agents and server share the process;
  the agents' share is estimated and subtracted: heap growth split by the
  heap profile's allocation stacks (client-side gRPC, TLS and agent code),
  stack growth by the share of goroutines labelled as the agents'. The
  controller's figure includes its embedded etcd's growth (host state and
  presence keys). Both sides use the same client code, so the two columns'
  agents' shares should agree; where they differ, that is the error bar.
- Restart: stop the controller, start it on the same address and data
  directory; resync runs from that start (its own startup included) to the
  last agent's first answer. Re-sent Desired are counted until ListHosts
  shows the whole fleet connected and current again.
- Agents and server share the CPUs: every time above includes the agents'
  own TLS and protobuf work.
`)
}
