package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"
)

// agentsPerChild is how many simulated agents one child process runs: each
// holds one descriptor per agent, well within the usual hard limit, and
// four children for 10,000 agents spread their work over the cores.
const agentsPerChild = 2500

// fleet is the simulated agents, run by child processes so that the
// controller's process holds only the controller's side of each
// connection: its memory, CPU time and open files are the controller's own.
type fleet struct {
	hosts    []string
	index    map[string]int // host → agent number
	children []*childProc

	mu       sync.Mutex
	epoch    int64
	answered *countdown
	// Per agent: the epoch of its last first answer, and when.
	answeredEpoch []int64
	answeredAt    []time.Time

	desired atomic.Int64 // Desired messages received, all agents
	drains  atomic.Int64 // drain messages received, all agents
	resumed atomic.Int64 // streams whose connection resumed a TLS session
}

// childProc is one child process and its pipes.
type childProc struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	in      *bufio.Writer
	enc     *json.Encoder
	replies chan event // everything but per-agent events
	done    chan error // the read loop's end, then the process's
	agents  int
}

// startFleet starts the child processes for hosts; argv is the command
// that runs ChildMain (the binary itself with a hidden subcommand, or a
// test binary), started with ChildEnv set. Each child issues its agents'
// certificates from the CA.
func startFleet(ctx context.Context, argv []string, hosts []string, caCert, caKey []byte, timeout time.Duration) (*fleet, error) {
	if len(argv) == 0 {
		return nil, errors.New("bench: no command to start the agents' processes with")
	}
	f := &fleet{hosts: hosts, index: make(map[string]int, len(hosts)), answered: newCountdown(0),
		answeredEpoch: make([]int64, len(hosts)), answeredAt: make([]time.Time, len(hosts))}
	for i, h := range hosts {
		f.index[h] = i
	}
	for first := 0; first < len(hosts); first += agentsPerChild {
		last := min(first+agentsPerChild, len(hosts))
		c, err := f.spawn(argv, last-first)
		if err != nil {
			f.close()
			return nil, err
		}
		f.children = append(f.children, c)
		if err := c.send(command{Op: "init", Hosts: hosts[first:last], First: first, CACert: caCert, CAKey: caKey}); err != nil {
			f.close()
			return nil, err
		}
	}
	if err := f.await(ctx, "ready", timeout); err != nil {
		f.close()
		return nil, fmt.Errorf("bench: issue the agents' certificates: %w", err)
	}
	return f, nil
}

func (f *fleet) spawn(argv []string, agents int) (*childProc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), ChildEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start the agents' process %s: %w", argv[0], err)
	}
	in := bufio.NewWriter(stdin)
	c := &childProc{cmd: cmd, stdin: stdin, in: in, enc: json.NewEncoder(in), replies: make(chan event, 16), done: make(chan error, 1), agents: agents}
	go func() {
		dec := json.NewDecoder(bufio.NewReaderSize(stdout, 64<<10))
		for {
			var e event
			if err := dec.Decode(&e); err != nil {
				close(c.replies)
				werr := cmd.Wait()
				if errors.Is(err, io.EOF) {
					err = werr
				}
				c.done <- err
				return
			}
			f.handle(c, e)
		}
	}()
	return c, nil
}

func (c *childProc) send(cmd command) error {
	if err := c.enc.Encode(cmd); err != nil {
		return fmt.Errorf("bench: command the agents' process: %w", err)
	}
	if err := c.in.Flush(); err != nil {
		return fmt.Errorf("bench: command the agents' process: %w", err)
	}
	return nil
}

// handle takes one event from a child.
func (f *fleet) handle(c *childProc, e event) {
	switch e.E {
	case "answer":
		if e.I < 0 || e.I >= len(f.hosts) {
			return
		}
		f.mu.Lock()
		first := f.answeredEpoch[e.I] != f.epoch
		f.answeredEpoch[e.I], f.answeredAt[e.I] = f.epoch, time.Unix(0, e.T)
		answered := f.answered
		f.mu.Unlock()
		if first {
			answered.add()
		}
	case "desired":
		f.desired.Add(1)
	case "drain":
		f.drains.Add(1)
	case "resumed":
		f.resumed.Add(1)
	default:
		c.replies <- e
	}
}

// await waits until every child has answered with the event kind want.
func (f *fleet) await(ctx context.Context, want string, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for i, c := range f.children {
		select {
		case e, ok := <-c.replies:
			switch {
			case !ok:
				return fmt.Errorf("agents' process %d ended: %v", i, <-c.done)
			case e.E == "error":
				return fmt.Errorf("agents' process %d: %s", i, e.Err)
			case e.E != want:
				return fmt.Errorf("agents' process %d answered %q, want %q", i, e.E, want)
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return fmt.Errorf("agents' process %d: no %q within %s", i, want, timeout)
		}
	}
	return nil
}

func (f *fleet) command(ctx context.Context, cmd command, reply string, timeout time.Duration) error {
	for _, c := range f.children {
		if err := c.send(cmd); err != nil {
			return err
		}
	}
	return f.await(ctx, reply, timeout)
}

// start connects every agent to method at addr, each with a fresh state,
// rate agents a second (0: all at once).
func (f *fleet) start(ctx context.Context, addr, method string, rate float64) error {
	return f.command(ctx, command{Op: "start", Addr: addr, Method: method, Rate: rate}, "started", time.Minute)
}

// stop disconnects every agent.
func (f *fleet) stop(ctx context.Context) error {
	return f.command(ctx, command{Op: "stop"}, "stopped", 2*time.Minute)
}

// memory returns the children's resident memory and Go heap and stacks in
// all.
func (f *fleet) memory(ctx context.Context) (rss, goMem int64, err error) {
	for i, c := range f.children {
		if err := c.send(command{Op: "rss"}); err != nil {
			return 0, 0, err
		}
		select {
		case e, ok := <-c.replies:
			if !ok || e.E != "rss" {
				return 0, 0, fmt.Errorf("agents' process %d: no memory figure (%s %s)", i, e.E, e.Err)
			}
			rss += e.B
			goMem += e.H
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
	}
	return rss, goMem, nil
}

// expectAnswers starts counting first answers anew: every stream opened
// from now on counts once per agent.
func (f *fleet) expectAnswers() *countdown {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.epoch++
	f.answered = newCountdown(len(f.hosts))
	return f.answered
}

// lastAnswer is when the last agent got its first answer since expectAnswers.
func (f *fleet) lastAnswer() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	var last time.Time
	for i, e := range f.answeredEpoch {
		if e == f.epoch && f.answeredAt[i].After(last) {
			last = f.answeredAt[i]
		}
	}
	return last
}

// answerTimes returns, per agent answered since expectAnswers, the time
// from origin to its first answer.
func (f *fleet) answerTimes(origin time.Time) []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]time.Duration, 0, len(f.hosts))
	for i, e := range f.answeredEpoch {
		if e == f.epoch {
			out = append(out, f.answeredAt[i].Sub(origin))
		}
	}
	return out
}

// close ends the child processes: closing their input stops them.
func (f *fleet) close() error {
	var errs []error
	for i, c := range f.children {
		_ = c.stdin.Close()
		t := time.NewTimer(time.Minute)
		select {
		case err := <-c.done:
			if err != nil {
				errs = append(errs, fmt.Errorf("agents' process %d: %w", i, err))
			}
		case <-t.C:
			_ = c.cmd.Process.Kill()
			errs = append(errs, fmt.Errorf("agents' process %d: %w", i, <-c.done))
		}
		t.Stop()
	}
	f.children = nil
	return errors.Join(errs...)
}

// ackRecorder counts, per agent, the first answer recorded by the server
// (the controller once it has stored the ACK, the floor once it has read
// it) for a version newer than after.
type ackRecorder struct {
	index map[string]int

	mu    sync.Mutex
	after uint64
	at    []time.Time
	done  *countdown

	pushed atomic.Int64 // Desired messages the server sent, all hosts
}

func newAckRecorder(index map[string]int) *ackRecorder {
	return &ackRecorder{index: index, at: make([]time.Time, len(index)), done: newCountdown(0)}
}

// expect starts counting ACKs of versions newer than after.
func (r *ackRecorder) expect(after uint64) *countdown {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.after = after
	clear(r.at)
	r.done = newCountdown(len(r.at))
	return r.done
}

func (r *ackRecorder) record(host string, version uint64) {
	now := time.Now()
	i, ok := r.index[host]
	if !ok {
		return
	}
	r.mu.Lock()
	first := version > r.after && r.at[i].IsZero()
	if first {
		r.at[i] = now
	}
	done := r.done
	r.mu.Unlock()
	if first {
		done.add()
	}
}

// latencies returns, per agent recorded since expect, the time from origin.
func (r *ackRecorder) latencies(origin time.Time) []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]time.Duration, 0, len(r.at))
	for _, t := range r.at {
		if !t.IsZero() {
			out = append(out, t.Sub(origin))
		}
	}
	return out
}

// The controller's stream observer (server.SyncObserver).

func (r *ackRecorder) Connected(string, string, uint64, string) {}
func (r *ackRecorder) Pushed(string, uint64, string)            { r.pushed.Add(1) }
func (r *ackRecorder) Acked(host string, version uint64, _ string) {
	r.record(host, version)
}
func (r *ackRecorder) Nacked(string, uint64, string, int) {}
