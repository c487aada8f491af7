package powershell

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of a WorkerConfig.
const (
	// DefaultCallTimeout bounds one operation. Exchange cmdlets run through
	// a remote session and iisreset restarts IIS, so minutes, not seconds.
	DefaultCallTimeout = 3 * time.Minute
	// DefaultStartTimeout bounds the start of a worker: the module import,
	// snap-in load or Exchange remote session.
	DefaultStartTimeout = 5 * time.Minute
	// DefaultMaxResponse bounds one response line. A farm's partners with
	// their cached certificates fit in tens of kilobytes.
	DefaultMaxResponse = 4 << 20
	// stopGrace is how long a worker may take to leave after its standard
	// input closes (it removes the Exchange remote session) before its
	// process tree is killed.
	stopGrace = 10 * time.Second
)

// WorkerArgs are the arguments the driver gives powershell.exe, before the
// script's path. They are fixed: nothing from the topology or the operator
// is ever on the command line. See about_PowerShell_exe:
// https://learn.microsoft.com/powershell/module/microsoft.powershell.core/about/about_powershell_exe
var WorkerArgs = []string{"-NoLogo", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File"}

// WorkerConfig configures one long-lived worker: a powershell.exe process
// running one of the embedded scripts for one product's shell.
type WorkerConfig struct {
	// Product is ProductLync, ProductExchange, ProductSharePoint or the
	// detection worker; it names the worker in every error.
	Product string
	// Executable is the powershell.exe to run (the --powershell flag).
	Executable string
	// Script is the path of the embedded script written to the state directory.
	Script string
	// BeforeStart, when set, runs before every start: the driver rewrites
	// the scripts there, so that a worker never runs a copy edited on disk
	// since the agent started.
	BeforeStart func() error
	// Init is the argument of the "init" operation sent first after every
	// start (e.g. this server's FQDN for the Exchange remote session).
	Init any
	// CallTimeout, StartTimeout and MaxResponse default to the constants above.
	CallTimeout  time.Duration
	StartTimeout time.Duration
	MaxResponse  int
	Logger       *slog.Logger
}

// Worker runs one product's script and sends it one request at a time. It
// starts the process on the first call, keeps it for the next ones (the
// module import and the remote session are paid once) and starts a new one
// on the call after the old one died, timed out or answered out of
// protocol. A Worker is safe for concurrent use; calls are serialized, as a
// PowerShell runspace runs one pipeline at a time.
type Worker struct {
	cfg WorkerConfig
	log *slog.Logger

	mu     sync.Mutex
	p      *proc
	nextID uint64
	hello  json.RawMessage
	starts atomic.Int64
	// After a failed start the worker is not started again before
	// retryAt: a shell that cannot load (a module missing, a session
	// refused) is not hammered by every caller. The delay doubles from
	// minRetry to maxRetry and resets on success.
	startErr error
	retryAt  time.Time
	delay    time.Duration
}

const (
	minRetry = time.Second
	maxRetry = time.Minute
)

// NewWorker returns a worker that starts nothing until its first call.
func NewWorker(cfg WorkerConfig) *Worker {
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.MaxResponse <= 0 {
		cfg.MaxResponse = DefaultMaxResponse
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Worker{cfg: cfg, log: log.With("product", cfg.Product)}
}

// Call runs operation op with args and decodes its result into out (which
// may be nil). Every error is an *Error naming the product, the operation
// and the cause.
func (w *Worker) Call(ctx context.Context, op string, args, out any) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.p == nil {
		if err := w.start(ctx); err != nil {
			return w.wrap(op, err)
		}
	}
	began := time.Now()
	raw, err := w.roundTrip(ctx, op, args, w.cfg.CallTimeout)
	// The op's name only: its arguments may hold a key file's password.
	w.log.Debug("powershell call", "op", op, "duration", time.Since(began), "ok", err == nil)
	if err != nil {
		return w.wrap(op, err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return &Error{Product: w.cfg.Product, Op: op, Err: fmt.Errorf("decode the result: %w", err)}
		}
	}
	return nil
}

// Hello is the result of the last successful init: facts about the host the
// script reports once (Windows and product versions).
func (w *Worker) Hello(ctx context.Context, out any) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.p == nil {
		if err := w.start(ctx); err != nil {
			return w.wrap("init", err)
		}
	}
	if err := json.Unmarshal(w.hello, out); err != nil {
		return &Error{Product: w.cfg.Product, Op: "init", Err: fmt.Errorf("decode the result: %w", err)}
	}
	return nil
}

// Starts is how many worker processes were started so far.
func (w *Worker) Starts() int { return int(w.starts.Load()) }

// Close stops the worker: its standard input is closed so that the script
// can leave cleanly, and its process tree is killed if it has not left
// after a grace period.
func (w *Worker) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.p == nil {
		return nil
	}
	p := w.p
	w.p = nil
	_ = p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		p.kill()
		<-p.done
	}
	p.release()
	return nil
}

func (w *Worker) wrap(op string, err error) error {
	var rec *errRecord
	if errors.As(err, &rec) {
		return &Error{Product: w.cfg.Product, Op: op, Record: rec.rec}
	}
	var e *Error
	if errors.As(err, &e) {
		e.Op = op
		return e
	}
	return &Error{Product: w.cfg.Product, Op: op, Err: err}
}

// errRecord carries a structured PowerShell error through roundTrip.
type errRecord struct{ rec *ErrorRecord }

func (e *errRecord) Error() string { return e.rec.Message }

func (w *Worker) start(ctx context.Context) error {
	if w.startErr != nil && time.Now().Before(w.retryAt) {
		return w.startErr
	}
	err := w.startOnce(ctx)
	if err == nil {
		w.startErr, w.delay = nil, 0
		return nil
	}
	w.delay = min(max(2*w.delay, minRetry), maxRetry)
	w.startErr, w.retryAt = err, time.Now().Add(w.delay)
	return err
}

func (w *Worker) startOnce(ctx context.Context) error {
	if w.cfg.BeforeStart != nil {
		if err := w.cfg.BeforeStart(); err != nil {
			return err
		}
	}
	exe, err := exec.LookPath(w.cfg.Executable)
	if err != nil {
		return fmt.Errorf("start %s: --powershell %q: %w", w.cfg.Executable, w.cfg.Executable, err)
	}
	if _, err := os.Stat(w.cfg.Script); err != nil {
		return fmt.Errorf("start %s: script: %w", exe, err)
	}
	p, err := startProc(exe, append(append([]string(nil), WorkerArgs...), w.cfg.Script), w.cfg.MaxResponse)
	if err != nil {
		return fmt.Errorf("start %s: %w", exe, err)
	}
	w.p = p
	w.starts.Add(1)
	w.log.Debug("powershell worker started", "pid", p.cmd.Process.Pid, "script", w.cfg.Script)
	hello, err := w.roundTrip(ctx, "init", w.cfg.Init, w.cfg.StartTimeout)
	if err != nil {
		w.stop()
		var rec *errRecord
		if errors.As(err, &rec) {
			return &Error{Product: w.cfg.Product, Record: rec.rec}
		}
		return fmt.Errorf("start the worker: %w", err)
	}
	w.hello = hello
	return nil
}

// stop kills the current process tree and forgets it.
func (w *Worker) stop() {
	if w.p == nil {
		return
	}
	w.p.kill()
	<-w.p.done
	w.p.release()
	w.p = nil
}

// roundTrip sends one request and waits for its response. Any failure but
// a structured PowerShell error leaves the stream in an unknown state, so
// the process is killed and the next call starts a new one.
func (w *Worker) roundTrip(ctx context.Context, op string, args any, timeout time.Duration) (json.RawMessage, error) {
	w.nextID++
	id := w.nextID
	line, err := json.Marshal(request{ID: id, Op: op, Args: args})
	if err != nil {
		return nil, fmt.Errorf("encode the request: %w", err)
	}
	p := w.p
	if _, err := p.stdin.Write(append(line, '\n')); err != nil {
		return nil, w.died(fmt.Errorf("send the request: %w", err))
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		w.stop()
		return nil, fmt.Errorf("cancelled, the worker's process tree was killed: %w", ctx.Err())
	case <-timer.C:
		w.stop()
		return nil, fmt.Errorf("no answer within %s; the worker's process tree was killed", timeout)
	case r := <-p.lines:
		return w.answer(r, id)
	case <-p.done:
		// It may have answered just before it left: standard output is
		// read to its end before the answer is given up for lost.
		select {
		case <-p.eof:
		case <-time.After(stopGrace):
		}
		select {
		case r := <-p.lines:
			if r.err == nil {
				return w.answer(r, id)
			}
		default:
		}
		return nil, w.died(nil)
	}
}

// answer decodes the worker's answer r to request id.
func (w *Worker) answer(r lineResult, id uint64) (json.RawMessage, error) {
	if r.err != nil {
		w.stop()
		return nil, r.err
	}
	var resp response
	dec := json.NewDecoder(bytes.NewReader(r.line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&resp); err != nil || dec.More() {
		w.stop()
		return nil, fmt.Errorf("the worker answered with something that is not a JSON response (%s); the worker was stopped", preview(r.line))
	}
	if resp.ID != id {
		w.stop()
		return nil, fmt.Errorf("the worker answered request %d while request %d was outstanding; the worker was stopped", resp.ID, id)
	}
	if !resp.OK {
		rec := resp.Error
		if rec == nil {
			rec = &ErrorRecord{Message: "the worker reported a failure without an error record"}
		}
		return nil, &errRecord{rec}
	}
	return resp.Result, nil
}

// died reports a worker that exited (or whose pipe broke because it exited).
func (w *Worker) died(cause error) error {
	p := w.p
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		p.kill()
		<-p.done
	}
	w.p = nil
	p.release()
	msg := "the worker exited"
	if p.waitErr != nil {
		msg += " (" + p.waitErr.Error() + ")"
	}
	if tail := strings.TrimSpace(p.stderr.String()); tail != "" {
		msg += "; its last error output: " + tail
	}
	if cause != nil {
		return fmt.Errorf("%s: %w", msg, cause)
	}
	return errors.New(msg)
}

// preview quotes the start of an out-of-protocol line for an error message.
func preview(b []byte) string {
	const n = 80
	if len(b) > n {
		return fmt.Sprintf("%q…", b[:n])
	}
	return fmt.Sprintf("%q", b)
}

// proc is one running worker process.
type proc struct {
	cmd   *exec.Cmd
	tree  *processTree
	stdin io.WriteCloser
	lines chan lineResult
	done  chan struct{}
	// eof is closed when standard output has been read to its end.
	eof    chan struct{}
	stderr *tailBuffer
	// waitErr is set before done is closed.
	waitErr error
}

type lineResult struct {
	line []byte
	err  error
}

func startProc(exe string, args []string, maxLine int) (*proc, error) {
	// Pipes of our own rather than exec's: the reader must own standard
	// output until EOF, which Wait would otherwise close under it.
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdin, cmd.Stdout = inR, outW
	stderr := &tailBuffer{max: 2048}
	cmd.Stderr = stderr
	cmd.WaitDelay = stopGrace
	prepareTree(cmd)
	tree, err := newProcessTree()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		tree.release()
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, err
	}
	inR.Close()
	outW.Close()
	if err := tree.attach(cmd); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		tree.release()
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("put the worker in its own process tree: %w", err)
	}
	p := &proc{cmd: cmd, tree: tree, stdin: inW, lines: make(chan lineResult, 1), done: make(chan struct{}), eof: make(chan struct{}), stderr: stderr}
	go p.read(outR, maxLine)
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// read delivers standard output line by line, each at most maxLine bytes,
// until EOF or the first oversized line.
func (p *proc) read(r *os.File, maxLine int) {
	defer close(p.eof)
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := readLine(br, maxLine)
		if err == io.EOF {
			return
		}
		if err != nil {
			select {
			case p.lines <- lineResult{err: err}:
			case <-p.done:
			}
			// Drain so that the process is not blocked writing while
			// it is killed.
			_, _ = io.Copy(io.Discard, br)
			return
		}
		select {
		case p.lines <- lineResult{line: line}:
		case <-p.done:
			// The process may have written its answer and exited at
			// once: both cases are then ready and select picks either.
			// The answer is still handed over if nobody has taken the
			// last one, since roundTrip looks in p.lines after p.eof.
			select {
			case p.lines <- lineResult{line: line}:
			default:
			}
			return
		}
	}
}

func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(buf)+len(chunk) > max+2 { // allow CR LF
			return nil, fmt.Errorf("the worker's response is over the %d-byte limit; the worker was stopped", max)
		}
		buf = append(buf, chunk...)
		switch {
		case err == nil:
			return bytes.TrimRight(buf, "\r\n"), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && len(buf) > 0:
			return nil, fmt.Errorf("the worker's output ended in the middle of a response (%s)", preview(buf))
		default:
			return nil, err
		}
	}
}

func (p *proc) kill() {
	if err := p.tree.kill(p.cmd); err != nil {
		_ = p.cmd.Process.Kill()
	}
}

func (p *proc) release() {
	_ = p.stdin.Close()
	p.tree.release()
}

// tailBuffer keeps the last max bytes written to it: the end of a worker's
// error output, for the message when it dies. The scripts write no secret there.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
