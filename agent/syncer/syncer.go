// Package syncer is the agent's side of the Sync stream: it keeps one
// stream open to the controller, applies each desired state through the
// product driver, verifies it, answers ack or nack, reports status, and
// goes on checking for drift while the controller is away.
//
// In monitor mode (Config.Monitor, `s2s-agent run --apply=false`) the agent
// reads, verifies, probes and plans, and changes nothing: it reports the
// plan it would execute (each operation's cmdlet and parameters, secrets
// redacted) and answers every Desired with a monitor Nack (Nack.monitor,
// first item "monitor": "N operations planned"), never with an Ack, since
// it applied nothing. It commits no configuration to its state directory
// either, so a later run in apply mode starts from what it last applied.
package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/agent/metrics"
	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/atomicfile"
	"github.com/s2strust/s2strust/internal/statusreport"
	"github.com/s2strust/s2strust/internal/topology"
	"github.com/s2strust/s2strust/internal/version"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Version is the agent's version, sent in its Hello.
const Version = version.Release

// Config configures an agent.
type Config struct {
	// Host is this host's FQDN, as its certificate names it.
	Host string
	// Conn is the client connection to the controller.
	Conn grpc.ClientConnInterface
	// Driver reads and changes the product's configuration.
	Driver driver.Driver
	// StateDir keeps the last good configuration.
	StateDir string
	Logger   *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// DriftInterval is how often the applied configuration is re-read (default 1m).
	DriftInterval time.Duration
	// ProbeInterval is how often every edge's metadata checks and trust
	// probes run again while nothing else runs them (default 1m), each
	// wait jittered by ±10% so a fleet started together spreads its
	// probes. An apply, a retry or a drift check that probed restarts the
	// wait, so they never add up to more than one round per interval plus
	// the rounds those do anyway. A round's result is reported when it
	// changed; a failing probe is re-run sooner (see engine).
	ProbeInterval time.Duration
	// AutoCorrect re-applies drifted items; otherwise drift is only reported.
	AutoCorrect bool
	// VerifyInterval is how often a pending verification is retried (default 2s).
	VerifyInterval time.Duration
	// BackoffBase and BackoffMax bound reconnect delays (defaults 500ms, 30s).
	BackoffBase, BackoffMax time.Duration
	// PendingTimeout is how long a verification may wait on the
	// deployment's primary before the agent NACKs it (default 30s), so the
	// controller can push a newer revision; a later success still ACKs it.
	// A wait for a date the product acts on by itself (a Lync roll at its
	// EffectiveDate, reconcile.EffectiveDateWait) is never NACKed.
	PendingTimeout time.Duration
	// OnDesired, when set, is called for every Desired received (tests
	// and metrics count pushes with it).
	OnDesired func(*pb.Desired)
	// Metrics records applies, reports and syncs; nil records nothing.
	Metrics metrics.Recorder
	// ClockCheckInterval is how often the agent looks for a step of its
	// host's clock (default 10s); see clockWatch.
	ClockCheckInterval time.Duration
	// Monitor runs the agent read-only (see the package comment). The
	// driver must be a Planner or a reconcile.Backend; AutoCorrect must be
	// off.
	Monitor bool
}

// Planner is implemented by drivers that run the shared reconciler
// (package reconcile) and can say what they execute or would execute:
// the sim does. The agent reports the plan and needs it for monitor mode;
// a driver that is no Planner is applied through Driver.Apply and reports
// no plan, and in monitor mode is planned through reconcile.Apply when it
// is a reconcile.Backend. (It lives here, not in package driver, because
// package reconcile imports driver.)
type Planner interface {
	// ApplyPlan is Driver.Apply returning the operations too; with monitor
	// set it executes nothing and returns what it would do.
	ApplyPlan(ctx context.Context, cfg *pb.HostConfig, secrets []*pb.SecretMaterial, monitor bool) reconcile.Result
}

// monitorPlanner is how monitor mode plans with d: its own ApplyPlan, or
// for a driver that is only a reconcile.Backend the shared reconciler
// with monitor set, which executes nothing. Nil when d can do neither.
func monitorPlanner(d driver.Driver, now func() time.Time) Planner {
	if p, ok := d.(Planner); ok {
		return p
	}
	if b, ok := d.(reconcile.Backend); ok {
		return backendPlanner{b: b, now: now}
	}
	return nil
}

// backendPlanner plans through the shared reconciler; it is used in
// monitor mode only, where reconcile.Apply executes nothing.
type backendPlanner struct {
	b   reconcile.Backend
	now func() time.Time
}

func (p backendPlanner) ApplyPlan(ctx context.Context, cfg *pb.HostConfig, secrets []*pb.SecretMaterial, monitor bool) reconcile.Result {
	return reconcile.Apply(ctx, p.b, cfg, secrets, p.now(), monitor)
}

// DefaultProbeInterval is Config.ProbeInterval's default.
const DefaultProbeInterval = time.Minute

// ItemMonitor is the item of a monitor Nack's first error.
const ItemMonitor = "monitor"

// Agent runs the agent protocol.
type Agent struct {
	cfg Config
	log *slog.Logger
	in  chan *pb.Desired // latest desired state; newer ones replace older
	// sessions counts streams the controller answered.
	sessions atomic.Int64
	mu       sync.Mutex
	good     *lastGood        // guarded by mu
	sess     *session         // the current stream, nil when disconnected
	last     *pb.StatusReport // the latest report, re-sent on reconnect
	// secrets of the last good state, in memory only, for auto-correct.
	secrets []*pb.SecretMaterial
	// leftToPrimary is set once a non-primary host with auto-correct has
	// said that it leaves correcting its drift to the primary, and cleared
	// when the drift is gone. Used by the engine goroutine only.
	leftToPrimary bool
	// plan is what every report carries: in monitor mode the operations
	// the agent would execute, otherwise those executed for the current
	// configuration (planHash), over all its applies. Guarded by mu.
	plan     []*pb.PlannedOp
	planHash string
	// metadata and probes are the latest metadata checks and trust
	// probes; every report carries them (see report), so a report of a
	// verification alone does not drop them. Guarded by mu.
	metadata []*pb.MetadataCheck
	probes   []*pb.TrustProbe
	// probedAt is when the last round of checks and probes ran, on the
	// monotonic clock, and roundFailed whether something in it failed.
	// Used by the engine goroutine only.
	probedAt    time.Time
	roundFailed bool
}

// leftToPrimaryNote is the Expected of drift a non-primary host leaves to
// its deployment's primary to correct.
const leftToPrimaryNote = "as applied; auto-correct is left to the deployment's primary host"

// New loads the agent's state and returns an agent.
func New(cfg Config) (*Agent, error) {
	if cfg.Host == "" || cfg.Conn == nil || cfg.Driver == nil || cfg.StateDir == "" {
		return nil, errors.New("agent: host, connection, driver and state directory are required")
	}
	if cfg.Monitor {
		if monitorPlanner(cfg.Driver, cfg.Now) == nil {
			return nil, fmt.Errorf("agent: monitor mode (--apply=false) needs a driver that plans; driver %s does not", cfg.Driver.Name())
		}
		if cfg.AutoCorrect {
			return nil, errors.New("agent: --auto-correct changes the host, monitor mode (--apply=false) changes nothing: choose one")
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DriftInterval <= 0 {
		cfg.DriftInterval = time.Minute
	}
	if cfg.ProbeInterval < 0 {
		return nil, fmt.Errorf("agent: probe interval %s is negative; give a positive duration such as 1m (0 takes the default %s)", cfg.ProbeInterval, DefaultProbeInterval)
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.VerifyInterval <= 0 {
		cfg.VerifyInterval = 2 * time.Second
	}
	if cfg.ClockCheckInterval <= 0 {
		cfg.ClockCheckInterval = 10 * time.Second
	}
	if cfg.PendingTimeout <= 0 {
		cfg.PendingTimeout = 30 * time.Second
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 500 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.Nop{}
	}
	// A kill mid-write leaves the state file's temporary copy behind;
	// nothing writes here yet.
	removed, err := atomicfile.CleanTemp(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if len(removed) > 0 {
		cfg.Logger.Info("removed temporary files left by an interrupted write", "dir", cfg.StateDir, "files", strings.Join(removed, ", "))
	}
	good, err := loadState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	return &Agent{cfg: cfg, log: cfg.Logger.With("host", cfg.Host), in: make(chan *pb.Desired, 1), good: good}, nil
}

// Sessions counts the streams the controller has answered, first with a
// Desired or an UpToDate.
func (a *Agent) Sessions() int64 { return a.sessions.Load() }

// Applied returns the version and hash last applied and verified.
func (a *Agent) Applied() (uint64, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.good == nil {
		return 0, ""
	}
	return a.good.Version, a.good.Hash
}

// Run connects and serves until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.connectLoop(ctx) })
	g.Go(func() error { return a.engine(ctx) })
	return g.Wait()
}

// connectLoop keeps one stream open, reconnecting with exponential backoff
// and full jitter (a uniformly random delay up to the exponential bound),
// which spreads a fleet's reconnects after a controller restart.
func (a *Agent) connectLoop(ctx context.Context) error {
	attempt := 0
	for {
		a.resetConnectBackoff()
		connected, err := a.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if connected {
			attempt = 0
		}
		bound := a.cfg.BackoffBase << min(attempt, 16)
		if bound > a.cfg.BackoffMax || bound <= 0 {
			bound = a.cfg.BackoffMax
		}
		delay := time.Duration(rand.Int64N(int64(bound) + 1))
		attempt++
		var drain *drainedError
		if errors.As(err, &drain) {
			// The controller is stopping and said when to come back: it
			// spreads its fleet's returns, so no jitter of ours.
			delay, attempt = drain.after, 0
			a.log.Info("controller stopping; reconnecting when it said", "reason", drain.reason, "retry_in", delay.Round(time.Millisecond))
		} else {
			a.log.Warn("controller stream ended; reconnecting", "error", err, "retry_in", delay.Round(time.Millisecond))
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// resetConnectBackoff makes the connection dial now if it is waiting out
// gRPC's own reconnect backoff (1 s growing 1.6-fold to 2 minutes), so
// that this loop alone says when the agent tries again: after a Drain an
// agent that came back before the new controller was serving would
// otherwise fail fast, without dialing, for as long as that backoff has
// grown to, long after the controller is back.
func (a *Agent) resetConnectBackoff() {
	if c, ok := a.cfg.Conn.(interface{ ResetConnectBackoff() }); ok {
		c.ResetConnectBackoff()
	}
}

// session is one open stream.
type session struct {
	stream pb.AgentService_SyncClient
	// out is the session's bounded outbox; one goroutine sends from it,
	// so a controller that stops reading never blocks the engine.
	out    chan *pb.SyncRequest
	cancel context.CancelFunc
}

// outboxSize bounds the messages waiting for a slow controller.
const outboxSize = 16

// send queues m. A full outbox ends the session: the agent reconnects and
// says again what it has, which loses nothing.
func (s *session) send(m *pb.SyncRequest) error {
	select {
	case s.out <- m:
		return nil
	default:
		s.cancel()
		return errors.New("the controller is not reading: outbox full, reconnecting")
	}
}

// sendLoop sends queued messages until the stream fails or ctx ends.
func (s *session) sendLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-s.out:
			if err := s.stream.Send(m); err != nil {
				s.cancel()
				return
			}
		}
	}
}

// session runs one stream until it fails. connected reports whether the
// controller answered at all, which resets the backoff.
func (a *Agent) session(ctx context.Context) (connected bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := pb.NewAgentServiceClient(a.cfg.Conn).Sync(sctx)
	if err != nil {
		return false, fmt.Errorf("open sync stream: %w", err)
	}
	products, err := a.cfg.Driver.Detect(ctx)
	if err != nil {
		return false, fmt.Errorf("detect products: %w", err)
	}
	v, h := a.Applied()
	s := &session{stream: stream, out: make(chan *pb.SyncRequest, outboxSize), cancel: cancel}
	var senders sync.WaitGroup
	senders.Add(1)
	go func() { defer senders.Done(); s.sendLoop(sctx) }()
	defer senders.Wait()
	defer cancel() // runs before the wait: the sender stops
	hello := &pb.Hello{Host: a.cfg.Host, AgentVersion: Version, Driver: a.cfg.Driver.Name(), Products: products, AppliedVersion: v, AppliedHash: h, Monitor: a.cfg.Monitor}
	if err := s.send(&pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: hello}}); err != nil {
		return false, fmt.Errorf("send hello: %w", err)
	}
	a.mu.Lock()
	a.sess = s
	last := a.last
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		if a.sess == s {
			a.sess = nil
		}
		a.mu.Unlock()
	}()
	if last != nil {
		// The clock says when the report is sent: the controller measures
		// the host's clock offset from it.
		last = proto.Clone(last).(*pb.StatusReport)
		last.Clock = timestamppb.New(a.cfg.Now())
		if err := s.send(&pb.SyncRequest{Message: &pb.SyncRequest_Status{Status: last}}); err != nil {
			return false, fmt.Errorf("send status: %w", err)
		}
	}
	a.log.Info("connected to controller", "applied_version", v)
	for {
		resp, err := stream.Recv()
		if err != nil {
			return connected, err
		}
		if !connected {
			connected = true
			a.sessions.Add(1)
			a.cfg.Metrics.Connected(true)
			defer a.cfg.Metrics.Connected(false)
		}
		if u := resp.GetUpToDate(); u != nil {
			a.log.Info("controller has nothing new", "version", u.GetVersion())
			// In sync with the controller as much as after an ACK.
			a.cfg.Metrics.Synced(a.cfg.Now())
		}
		if dr := resp.GetDrain(); dr != nil {
			return connected, drainedBy(dr)
		}
		if d := resp.GetDesired(); d != nil {
			if a.cfg.OnDesired != nil {
				a.cfg.OnDesired(d)
			}
			a.offer(d)
		}
	}
}

// maxDrainDelay bounds the reconnect time a Drain may name: a controller
// asking for longer is taken at this.
const maxDrainDelay = 5 * time.Minute

// drainedError ends a session the controller drained: reconnect after.
type drainedError struct {
	after  time.Duration
	reason string
}

func (e *drainedError) Error() string {
	return fmt.Sprintf("the controller is stopping (%s): reconnect in %s", e.reason, e.after)
}

// drainedBy is the end of a session by Drain d; its time is clamped to
// [0, maxDrainDelay].
func drainedBy(d *pb.Drain) *drainedError {
	after := min(max(d.GetReconnectAfter().AsDuration(), 0), maxDrainDelay)
	reason := d.GetReason()
	if len(reason) > 200 {
		reason = reason[:200] + "…" // only for the log, which quotes it
	}
	return &drainedError{after: after, reason: reason}
}

// offer hands the engine the newest desired state, replacing one not yet taken.
func (a *Agent) offer(d *pb.Desired) {
	for {
		select {
		case a.in <- d:
			return
		default:
		}
		select {
		case <-a.in:
		default:
		}
	}
}

// send sends on the current stream, if any. A message lost with its stream
// is harmless: the next Hello says what was applied and the controller
// pushes again.
// It reports whether m was queued on a stream.
func (a *Agent) send(m *pb.SyncRequest) bool {
	a.mu.Lock()
	s := a.sess
	a.mu.Unlock()
	if s == nil {
		return false
	}
	if err := s.send(m); err != nil {
		a.log.Debug("send to controller failed", "error", err)
		return false
	}
	return true
}

// prober is what a driver offers when it can check metadata and prove
// trust from its host (driver.Prober).
type prober interface {
	CheckMetadata(ctx context.Context, cfg *pb.HostConfig) []*pb.MetadataCheck
	Probe(ctx context.Context, cfg *pb.HostConfig) []*pb.TrustProbe
}

// outcome is how processing a desired state ended.
type outcome int

const (
	done      outcome = iota // applied, verified and acknowledged
	waiting                  // verification waits on the deployment's primary
	failed                   // apply or verification failed
	monitored                // monitor mode: planned and verified, nothing applied
)

// engine owns applying and verifying: desired states from the controller,
// retries of what failed or waits, trust probes and periodic drift checks.
func (a *Agent) engine(ctx context.Context) error {
	drift := time.NewTicker(a.cfg.DriftInterval)
	defer drift.Stop()
	// periodic runs every edge's checks and probes while nothing else
	// does, so a change on a partner's side (a certificate it rolled, a
	// partner registration removed by hand) shows within an interval.
	periodic := time.NewTimer(jittered(a.cfg.ProbeInterval))
	defer periodic.Stop()
	clock := time.NewTicker(a.cfg.ClockCheckInterval)
	defer clock.Stop()
	watch := newClockWatch(a.cfg.Now)
	var (
		cur      *pb.Desired // not yet acknowledged: waiting or failed
		nacked   bool        // cur was NACKed; a later success ACKs it late
		retry    <-chan time.Time
		delay    time.Duration
		probe    <-chan time.Time // re-run failing probes sooner than drift checks
		probeGap = a.cfg.VerifyInterval
	)
	maxDelay := min(a.cfg.DriftInterval, time.Minute)
	var lastNack []*pb.ItemError
	var waitingSince time.Time
	settle := func(d *pb.Desired, o outcome, errs []*pb.ItemError) {
		switch o {
		case done:
			cur, retry = nil, nil
			probeGap = a.cfg.VerifyInterval
			if a.roundFailed {
				probe = time.After(probeGap)
			}
		case waiting:
			if cur != d {
				waitingSince = a.cfg.Now()
			}
			if !nacked && a.cfg.Now().Sub(waitingSince) > a.cfg.PendingTimeout && !scheduledOnly(errs) {
				a.nack(d, errs)
				nacked, lastNack = true, errs
			}
			cur, retry = d, time.After(a.cfg.VerifyInterval)
			if probe == nil {
				probe = time.After(probeGap)
			}
		case failed:
			// A NACK is sent again only when the errors change, so the
			// controller shows the latest cause without a NACK per retry.
			if !nacked || !sameErrors(lastNack, errs) {
				a.nack(d, errs)
				nacked, lastNack = true, errs
			}
			cur, retry = d, time.After(delay)
			delay = min(delay*2, maxDelay)
			// What did apply is in effect: check and probe it too, so the
			// edges that work show as working.
			if a.observe(ctx, d.GetConfig()) && probe == nil {
				probe = time.After(probeGap)
			}
		case monitored:
			// Answered again only when the plan's outcome changes; the plan
			// is re-read at every drift interval, so a change made by hand
			// shows up in the report.
			if !nacked || !sameErrors(lastNack, errs) {
				a.send(&pb.SyncRequest{Message: &pb.SyncRequest_Nack{Nack: &pb.Nack{Version: d.GetVersion(), Nonce: d.GetNonce(), Hash: d.GetHash(), Errors: errs, Monitor: true}}})
				nacked, lastNack = true, errs
			}
			cur, retry = d, time.After(a.cfg.DriftInterval)
			if a.observe(ctx, d.GetConfig()) && probe == nil {
				probe = time.After(probeGap)
			}
		}
	}
	// Verify the last good state at start: it reports what the host has
	// now, even before the controller answers.
	a.checkDrift(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case d := <-a.in:
			nacked, delay = false, a.cfg.VerifyInterval
			o, errs := a.process(ctx, d, true)
			settle(d, o, errs)
		case <-retry:
			retry = nil
			if cur != nil {
				o, errs := a.process(ctx, cur, false)
				settle(cur, o, errs)
			}
		case <-probe:
			probe = nil
			var cfg *pb.HostConfig
			if cur != nil {
				cfg = cur.GetConfig()
			}
			if a.observe(ctx, cfg) {
				probeGap = min(probeGap*2, maxDelay)
				probe = time.After(probeGap)
			} else {
				probeGap = a.cfg.VerifyInterval
			}
		case <-periodic.C:
			if since := time.Since(a.probedAt); since < a.cfg.ProbeInterval-a.cfg.ProbeInterval/10 {
				// Something else probed meanwhile: wait out the rest.
				periodic.Reset(jittered(a.cfg.ProbeInterval) - since)
				continue
			}
			periodic.Reset(jittered(a.cfg.ProbeInterval))
			var cfg *pb.HostConfig
			if cur != nil {
				cfg = cur.GetConfig()
			}
			if a.observe(ctx, cfg) && probe == nil {
				probe = time.After(probeGap)
			}
		case <-drift.C:
			if cur == nil {
				a.checkDrift(ctx)
			}
		case <-clock.C:
			if step := watch.check(); step >= clockStep || -step >= clockStep {
				a.log.Warn("the host's clock was stepped; reporting it to the controller", "step", step.Round(time.Millisecond).String())
				a.reportClock()
			}
		}
	}
}

// jittered is d moved by a uniformly random amount of up to ±10%.
func jittered(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

// process applies and verifies one desired state and, when it is good,
// commits and acknowledges it.
func (a *Agent) process(ctx context.Context, d *pb.Desired, first bool) (outcome, []*pb.ItemError) {
	if a.cfg.Monitor {
		return a.monitor(ctx, d, first)
	}
	v, h := a.Applied()
	if first && h == d.GetHash() && h != "" {
		// Same configuration under a newer revision: nothing to apply.
		if v != d.GetVersion() {
			if err := a.commit(d); err != nil {
				return failed, []*pb.ItemError{{Item: "agent-state", Message: err.Error()}}
			}
		}
		a.ack(d)
		return done, nil
	}
	if first {
		a.log.Info("applying configuration", "version", d.GetVersion(), "hash", d.GetHash(), "primary", d.GetConfig().GetPrimary())
	}
	// Apply is idempotent, so a retry applies what is still missing, such
	// as a host-scope item that needed the primary's change first.
	start := a.cfg.Now()
	applyErrs := a.apply(ctx, d.GetConfig(), d.GetSecrets())
	rep, err := a.cfg.Driver.Verify(ctx, d.GetConfig())
	took := a.cfg.Now().Sub(start)
	if err != nil {
		a.cfg.Metrics.Applied(took, metrics.ResultFailed)
		return failed, append(applyErrs, &pb.ItemError{Item: "verify", Message: err.Error()})
	}
	errs := mergeErrors(applyErrs, rep.GetItems())
	pendingItems := itemsIn(rep, pb.ItemState_ITEM_STATE_PENDING)
	switch {
	case len(errs) > 0:
		a.cfg.Metrics.Applied(took, metrics.ResultFailed)
	case len(pendingItems) > 0:
		a.cfg.Metrics.Applied(took, metrics.ResultPending)
	default:
		a.cfg.Metrics.Applied(took, metrics.ResultOK)
	}
	a.report(rep, nil)
	if len(errs) > 0 {
		if first {
			a.log.Warn("configuration not applied", "version", d.GetVersion(), "errors", len(errs), "first", errs[0].GetItem()+": "+errs[0].GetMessage())
		}
		return failed, errs
	}
	if len(pendingItems) > 0 {
		if first {
			a.log.Info("waiting for the deployment's primary", "version", d.GetVersion(), "items", strings.Join(pendingItems, ", "))
		}
		var pend []*pb.ItemError
		for _, it := range rep.GetItems() {
			switch {
			case it.GetState() != pb.ItemState_ITEM_STATE_PENDING:
			case strings.Contains(it.GetMessage(), reconcile.EffectiveDateWait):
				// The product changes it at its date, by itself.
				pend = append(pend, &pb.ItemError{Item: it.GetItem(), Message: it.GetMessage()})
			default:
				pend = append(pend, &pb.ItemError{Item: it.GetItem(), Message: "waiting for the deployment's primary host to apply it: " + it.GetMessage()})
			}
		}
		return waiting, pend
	}
	if err := a.commit(d); err != nil {
		return failed, []*pb.ItemError{{Item: "agent-state", Message: err.Error()}}
	}
	a.log.Info("configuration applied and verified", "version", d.GetVersion())
	// Check and probe what is now applied before answering: every report
	// carries the latest probes, and the one that goes with the ACK must
	// carry this configuration's, not those of the one before (a
	// rollout's gate reads them).
	a.observe(ctx, nil)
	a.ack(d)
	return done, nil
}

// scheduledOnly reports whether every pending item waits for a date the
// product itself acts on (a Lync roll at its EffectiveDate): such a wait
// is no stuck primary, so PendingTimeout does not NACK it.
func scheduledOnly(pend []*pb.ItemError) bool {
	for _, e := range pend {
		if !strings.Contains(e.GetMessage(), reconcile.EffectiveDateWait) {
			return false
		}
	}
	return len(pend) > 0
}

// apply applies cfg through the driver, keeping the operations it
// executed for the reports when the driver is a Planner.
func (a *Agent) apply(ctx context.Context, cfg *pb.HostConfig, secrets []*pb.SecretMaterial) []*pb.ItemError {
	p, ok := a.cfg.Driver.(Planner)
	if !ok {
		return a.cfg.Driver.Apply(ctx, cfg, secrets)
	}
	res := p.ApplyPlan(ctx, cfg, secrets, false)
	if len(res.Ops) > 0 {
		a.addPlan(topology.Hash(cfg), res.Ops)
	}
	return res.Errors
}

// addPlan records ops as executed for the configuration of hash: the
// operations of every apply of one configuration (its first apply and the
// retries of what failed, e.g. a partner whose metadata came later) add up,
// so the report shows all it took to converge on it; a new configuration
// starts afresh.
func (a *Agent) addPlan(hash string, ops []reconcile.Op) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if hash != a.planHash {
		a.plan, a.planHash = nil, hash
	}
	seen := map[string]bool{}
	for _, p := range a.plan {
		seen[p.GetItem()+"\x00"+p.GetCommand()] = true
	}
	for _, o := range ops {
		p := o.Proto()
		if k := p.GetItem() + "\x00" + p.GetCommand(); !seen[k] {
			seen[k] = true
			a.plan = append(a.plan, p)
		}
	}
}

func (a *Agent) setPlan(ops []reconcile.Op) {
	plan := make([]*pb.PlannedOp, len(ops))
	for i, o := range ops {
		plan[i] = o.Proto()
	}
	a.mu.Lock()
	a.plan, a.planHash = plan, ""
	a.mu.Unlock()
}

// monitor plans and verifies d without changing anything, reports the
// plan and returns the monitor Nack's errors: the "monitor" item first,
// then the items that would fail even if the plan were executed (the
// product refused, or a check no operation fixes).
func (a *Agent) monitor(ctx context.Context, d *pb.Desired, first bool) (outcome, []*pb.ItemError) {
	cfg := d.GetConfig()
	res := monitorPlanner(a.cfg.Driver, a.cfg.Now).ApplyPlan(ctx, cfg, d.GetSecrets(), true)
	a.setPlan(res.Ops)
	planned := map[string]bool{}
	for _, o := range res.Ops {
		planned[o.Item] = true
	}
	n := len(res.Ops)
	ops := "operations"
	if n == 1 {
		ops = "operation"
	}
	errs := []*pb.ItemError{{Item: ItemMonitor, Message: fmt.Sprintf("%d %s planned, nothing applied (monitor mode, --apply=false)", n, ops)}}
	seen := map[string]bool{}
	for _, e := range res.Errors {
		if !seen[e.GetItem()] {
			seen[e.GetItem()] = true
			errs = append(errs, e)
		}
	}
	rep, err := a.cfg.Driver.Verify(ctx, cfg)
	if err != nil {
		return monitored, append(errs, &pb.ItemError{Item: "verify", Message: err.Error()})
	}
	for _, it := range rep.GetItems() {
		if it.GetState() == pb.ItemState_ITEM_STATE_FAILED && !planned[it.GetItem()] && !seen[it.GetItem()] {
			seen[it.GetItem()] = true
			errs = append(errs, &pb.ItemError{Item: it.GetItem(), Message: it.GetMessage()})
		}
	}
	if first {
		a.log.Info("monitor mode: planned, applied nothing", "version", d.GetVersion(), "operations", n, "plan", reconcile.Redacted(res.Ops))
	}
	a.report(rep, nil)
	return monitored, errs
}

// observe checks metadata and runs trust probes for cfg (nil: the last
// good configuration) and reports the result. It returns true when
// something failed, so the caller checks again sooner.
func (a *Agent) observe(ctx context.Context, cfg *pb.HostConfig) (anyFailed bool) {
	p, ok := a.cfg.Driver.(prober)
	a.mu.Lock()
	good, last := a.good, a.last
	a.mu.Unlock()
	if cfg == nil && good != nil {
		cfg = good.config
	}
	if !ok || cfg == nil || last == nil {
		return false
	}
	a.probe(ctx, p, cfg)
	a.report(last, last.GetDrift())
	return a.roundFailed
}

// probe checks metadata and runs the trust probes for cfg, and keeps the
// results as the latest, which every report from now on carries.
func (a *Agent) probe(ctx context.Context, p prober, cfg *pb.HostConfig) {
	meta, probes := p.CheckMetadata(ctx, cfg), p.Probe(ctx, cfg)
	a.probedAt = time.Now()
	a.roundFailed = slices.ContainsFunc(meta, func(m *pb.MetadataCheck) bool { return !m.GetOk() }) ||
		slices.ContainsFunc(probes, func(p *pb.TrustProbe) bool { return !p.GetOk() })
	a.mu.Lock()
	a.metadata, a.probes = meta, keepSince(a.probes, probes)
	a.mu.Unlock()
}

// keepSince gives each probe of next whose result (ok and reason) is the
// one prev had for its target prev's since; the others get theirs from
// the first report that carries them (report).
func keepSince(prev, next []*pb.TrustProbe) []*pb.TrustProbe {
	type target struct{ deployment, host string }
	was := make(map[target]*pb.TrustProbe, len(prev))
	for _, p := range prev {
		was[target{p.GetToDeployment(), p.GetTargetHost()}] = p
	}
	out := make([]*pb.TrustProbe, len(next))
	for i, p := range next {
		p = proto.Clone(p).(*pb.TrustProbe)
		p.Since = nil
		if w := was[target{p.GetToDeployment(), p.GetTargetHost()}]; w != nil && w.GetOk() == p.GetOk() && w.GetReason() == p.GetReason() {
			p.Since = w.GetSince()
		}
		out[i] = p
	}
	return out
}

// checkDrift re-reads the applied configuration and reports what moved;
// with auto-correct it applies it again.
func (a *Agent) checkDrift(ctx context.Context) {
	a.mu.Lock()
	good := a.good
	a.mu.Unlock()
	if good == nil {
		return
	}
	rep, err := a.cfg.Driver.Verify(ctx, good.config)
	if err != nil {
		a.log.Warn("drift check failed", "error", err)
		return
	}
	drift := driftOf(rep)
	if len(drift) == 0 {
		a.leftToPrimary = false
	}
	if p := monitorPlanner(a.cfg.Driver, a.cfg.Now); p != nil && a.cfg.Monitor {
		// What correcting the drift would take.
		a.mu.Lock()
		secrets := a.secrets
		a.mu.Unlock()
		a.setPlan(p.ApplyPlan(ctx, good.config, secrets, true).Ops)
	}
	if len(drift) > 0 && a.cfg.AutoCorrect && !good.config.GetPrimary() {
		// The drifted settings are the deployment's (the CMS, the Exchange
		// organization, the farm), which only the primary applies: an
		// Apply here would change nothing. The primary corrects them; its
		// own drift check sees them too.
		if !a.leftToPrimary {
			a.leftToPrimary = true
			a.log.Warn("drift found; this host is not its deployment's primary, which corrects it", "items", len(drift), "deployment", good.config.GetDeployment(), "first", drift[0].GetItem()+": "+drift[0].GetActual())
		}
		for _, d := range drift {
			d.Expected = leftToPrimaryNote
		}
	} else if len(drift) > 0 && a.cfg.AutoCorrect {
		a.log.Warn("drift found; correcting", "items", len(drift))
		a.mu.Lock()
		secrets := a.secrets
		a.mu.Unlock()
		_ = a.apply(ctx, good.config, secrets)
		after, err := a.cfg.Driver.Verify(ctx, good.config)
		if err == nil {
			still := map[string]bool{}
			for _, d := range driftOf(after) {
				still[d.GetItem()] = true
			}
			for _, d := range drift {
				d.Corrected = !still[d.GetItem()]
			}
			rep = after
		}
	} else if len(drift) > 0 {
		a.log.Warn("drift found", "items", len(drift), "first", drift[0].GetItem()+": "+drift[0].GetActual())
	}
	if p, ok := a.cfg.Driver.(prober); ok {
		a.probe(ctx, p, good.config)
	}
	a.report(rep, drift)
}

// driftOf lists the items of a report that are not as applied.
func driftOf(rep *pb.StatusReport) []*pb.Drift {
	var out []*pb.Drift
	for _, it := range rep.GetItems() {
		if it.GetState() == pb.ItemState_ITEM_STATE_OK {
			continue
		}
		it.State = pb.ItemState_ITEM_STATE_DRIFTED
		out = append(out, &pb.Drift{Item: it.GetItem(), Expected: "as applied", Actual: it.GetMessage()})
	}
	return out
}

// report sends a status report when it differs from the last one. Its
// metadata checks and trust probes are always the latest the agent has
// (a verification does not run them): a report without them would show
// the controller's trust report problems that are none ("no probe
// result", a signing certificate missing from its metadata) until the
// next probes.
func (a *Agent) report(rep *pb.StatusReport, drift []*pb.Drift) {
	rep = proto.Clone(rep).(*pb.StatusReport)
	rep.AppliedVersion, rep.AppliedHash = a.Applied()
	rep.Drift = drift
	rep.Monitor = a.cfg.Monitor
	a.mu.Lock()
	rep.Plan = a.plan
	rep.Clock = timestamppb.New(a.cfg.Now())
	// A result reported for the first time is dated by this report.
	if slices.ContainsFunc(a.probes, func(p *pb.TrustProbe) bool { return p.GetSince() == nil }) {
		dated := make([]*pb.TrustProbe, len(a.probes))
		for i, p := range a.probes {
			if p.GetSince() == nil {
				p = proto.Clone(p).(*pb.TrustProbe)
				p.Since = rep.Clock
			}
			dated[i] = p
		}
		a.probes = dated
	}
	rep.Metadata, rep.Probes = a.metadata, a.probes
	same := a.last != nil && statusreport.Same(a.last, rep)
	if !same {
		a.last = rep
	}
	a.mu.Unlock()
	a.cfg.Metrics.Reported(rep)
	if !same {
		a.send(&pb.SyncRequest{Message: &pb.SyncRequest_Status{Status: rep}})
	}
}

// clockStep is the smallest step of the host's clock that is reported at
// once: the controller records a host's clock offset when it moves by this
// much.
const clockStep = time.Second

// clockWatch notices a step of the host's wall clock (an administrator or
// a time service setting it, a virtual machine resumed) as the wall clock
// moving apart from the process's monotonic clock, which steps do not
// move. Without it the controller would learn of the new offset, and of a
// skew that now breaks tokens, only with the next report that differs.
type clockWatch struct {
	now        func() time.Time
	wall, mono time.Time
}

func newClockWatch(now func() time.Time) *clockWatch {
	w := &clockWatch{now: now}
	w.check()
	return w
}

// check returns how far the wall clock moved apart from the monotonic one
// since the last check (positive: forward).
func (w *clockWatch) check() time.Duration {
	// Round(0) drops the monotonic reading, so that Sub compares wall times.
	wall, mono := w.now().Round(0), time.Now()
	var step time.Duration
	if !w.wall.IsZero() {
		step = wall.Sub(w.wall) - mono.Sub(w.mono)
	}
	w.wall, w.mono = wall, mono
	return step
}

// reportClock sends the latest report again with the clock as it reads
// now, from which the controller measures the host's clock offset.
func (a *Agent) reportClock() {
	a.mu.Lock()
	if a.last == nil {
		a.mu.Unlock()
		return
	}
	rep := proto.Clone(a.last).(*pb.StatusReport)
	rep.Clock = timestamppb.New(a.cfg.Now())
	a.last = rep
	a.mu.Unlock()
	a.send(&pb.SyncRequest{Message: &pb.SyncRequest_Status{Status: rep}})
}

func (a *Agent) commit(d *pb.Desired) error {
	g, err := saveState(a.cfg.StateDir, d.GetVersion(), d.GetHash(), d.GetConfig())
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.good = g
	if len(d.GetSecrets()) > 0 {
		a.secrets = d.GetSecrets()
	}
	a.mu.Unlock()
	return nil
}

func (a *Agent) ack(d *pb.Desired) {
	if a.send(&pb.SyncRequest{Message: &pb.SyncRequest_Ack{Ack: &pb.Ack{Version: d.GetVersion(), Nonce: d.GetNonce(), Hash: d.GetHash()}}}) {
		a.cfg.Metrics.Synced(a.cfg.Now())
	}
	// The report's applied version moves with the ack.
	a.mu.Lock()
	last := a.last
	a.mu.Unlock()
	if last != nil {
		a.report(last, last.GetDrift())
	}
}

func (a *Agent) nack(d *pb.Desired, errs []*pb.ItemError) {
	a.send(&pb.SyncRequest{Message: &pb.SyncRequest_Nack{Nack: &pb.Nack{Version: d.GetVersion(), Nonce: d.GetNonce(), Hash: d.GetHash(), Errors: errs}}})
}

// mergeErrors combines apply errors and failed verification items, one per item.
func mergeErrors(applyErrs []*pb.ItemError, items []*pb.ItemStatus) []*pb.ItemError {
	seen := map[string]bool{}
	var out []*pb.ItemError
	for _, e := range applyErrs {
		if !seen[e.GetItem()] {
			seen[e.GetItem()] = true
			out = append(out, e)
		}
	}
	for _, it := range items {
		if it.GetState() == pb.ItemState_ITEM_STATE_FAILED && !seen[it.GetItem()] {
			seen[it.GetItem()] = true
			out = append(out, &pb.ItemError{Item: it.GetItem(), Message: it.GetMessage()})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].GetItem() < out[j].GetItem() })
	return out
}

// sameErrors reports whether two NACKs say the same: errors that differ
// only by the temporary file they name (a retry writes a new one) are
// the same error, so they are not sent again.
func sameErrors(a, b []*pb.ItemError) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].GetItem() != b[i].GetItem() || atomicfile.NormalizeTemp(a[i].GetMessage()) != atomicfile.NormalizeTemp(b[i].GetMessage()) {
			return false
		}
	}
	return true
}

func itemsIn(rep *pb.StatusReport, st pb.ItemState) []string {
	var out []string
	for _, it := range rep.GetItems() {
		if it.GetState() == st {
			out = append(out, it.GetItem())
		}
	}
	return out
}
