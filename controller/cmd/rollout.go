package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/s2strust/s2strust/internal/progress"
	"github.com/s2strust/s2strust/internal/termsafe"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// rolloutName accepts "7", "rollouts/7" or nothing (the newest).
func rolloutName(args []string) string {
	if len(args) == 0 || args[0] == "" {
		return "rollouts/-"
	}
	if strings.Contains(args[0], "/") {
		return args[0] // a full name, checked (and named when wrong) by the controller
	}
	return "rollouts/" + args[0]
}

func newRollout(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "rollout", Short: "Show and steer rollouts: how a revision reaches the fleet wave by wave"}
	var watch bool
	status := &cobra.Command{
		Use:   "status [ID]",
		Short: "Show a rollout (the newest by default) per wave and host; -w follows it live",
		Args:  cobra.MaximumNArgs(1),
	}
	statusOut := addOutput(status, formatTable, formatJSON, formatYAML)
	status.RunE = func(cmd *cobra.Command, args []string) error {
		if watch {
			if statusOut.machine() {
				return fmt.Errorf("-w prints progress lines: it takes no -o %s", statusOut.format)
			}
			return g.followRollout(cmd, rolloutName(args))
		}
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			resp, err := pb.NewRolloutServiceClient(conn).GetRollout(ctx, &pb.GetRolloutRequest{Name: rolloutName(args)})
			if err != nil {
				return rpcError("rollout status", err)
			}
			warnStale(cmd.ErrOrStderr(), resp.GetStale())
			return statusOut.print(g.out, resp.GetRollout(), func() error {
				printRollout(g.out, resp.GetRollout())
				return nil
			})
		})
	}
	status.Flags().BoolVarP(&watch, "watch", "w", false, "follow the rollout until it finishes")
	verb := func(use, short string, call func(context.Context, pb.RolloutServiceClient, string) (*pb.Rollout, error)) *cobra.Command {
		return &cobra.Command{
			Use: use + " [ID]", Short: short, Args: cobra.MaximumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
					r, err := call(ctx, pb.NewRolloutServiceClient(conn), rolloutName(args))
					if err != nil {
						return rpcError("rollout "+use, err)
					}
					printRollout(g.out, r)
					return nil
				})
			},
		}
	}
	pause := verb("pause", "Stop releasing hosts; released hosts keep their revision", func(ctx context.Context, c pb.RolloutServiceClient, n string) (*pb.Rollout, error) {
		r, err := c.PauseRollout(ctx, &pb.PauseRolloutRequest{Name: n})
		return r.GetRollout(), err
	})
	resume := verb("resume", "Continue a paused rollout (past a manual gate, or re-checking failed hosts)", func(ctx context.Context, c pb.RolloutServiceClient, n string) (*pb.Rollout, error) {
		r, err := c.ResumeRollout(ctx, &pb.ResumeRolloutRequest{Name: n})
		return r.GetRollout(), err
	})
	abort := verb("abort", "End a rollout for good; hosts stay where they are", func(ctx context.Context, c pb.RolloutServiceClient, n string) (*pb.Rollout, error) {
		r, err := c.AbortRollout(ctx, &pb.AbortRolloutRequest{Name: n})
		return r.GetRollout(), err
	})
	undo := verb("undo", "Roll back to the revision the rollout started from (a new rollout)", func(ctx context.Context, c pb.RolloutServiceClient, n string) (*pb.Rollout, error) {
		r, err := c.UndoRollout(ctx, &pb.UndoRolloutRequest{Name: n})
		return r.GetRollout(), err
	})
	history := &cobra.Command{
		Use:   "history",
		Short: "List rollouts, newest first",
		Args:  cobra.NoArgs,
	}
	historyOut := addOutput(history, formatTable, formatJSON, formatYAML)
	var historyLimit int
	history.Flags().IntVar(&historyLimit, "limit", 0, "show only the newest N rollouts (default: every one)")
	history.RunE = func(cmd *cobra.Command, _ []string) error {
		if historyLimit < 0 {
			return fmt.Errorf("--limit %d: want 0 (every rollout) or a positive number", historyLimit)
		}
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			resp, err := listRollouts(ctx, pb.NewRolloutServiceClient(conn), historyLimit)
			if err != nil {
				return rpcError("rollout history", err)
			}
			warnStale(cmd.ErrOrStderr(), resp.GetStale())
			return historyOut.print(g.out, resp, func() error {
				t := newTable(g.out, "ROLLOUT", "REVISION", "STATE", "CREATED", "REASON~")
				for _, r := range resp.GetRollouts() {
					t.row(r.GetName(), seqText(r.GetFromSequence(), r.GetFromRevision())+"→"+seqText(r.GetToSequence(), r.GetToRevision()),
						rolloutState(r.GetState()), r.GetCreateTime().AsTime().Format("2006-01-02 15:04:05"), r.GetReason())
				}
				return t.flush()
			})
		})
	}
	c.AddCommand(status, pause, resume, abort, undo, history)
	return c
}

// errRolloutStopped is the exit of a followed rollout that did not succeed.
var errRolloutStopped = errors.New("rollout stopped")

// followRollout prints the rollout at each change until it finishes or
// pauses; it returns an exit error unless it succeeded, so `rollout status
// -w` and `apply --wait` both exit 2 on a paused rollout (a manual gate
// included: a script waiting on the rollout must not take a pause for
// success). The watch is not reopened: a stream that ends early ends the
// follow with the last state received.
func (g *globals) followRollout(cmd *cobra.Command, name string) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	stream, err := pb.NewRolloutServiceClient(conn).WatchRollout(ctx, &pb.WatchRolloutRequest{Name: name})
	if err != nil {
		return rpcError("watch "+name, err)
	}
	var last *pb.Rollout
	lastLine := ""
	// The live counter (hosts passed of all the rollout's hosts) goes to
	// standard error: standard output stays the progress lines and the
	// final rollout, the same on a terminal and in a pipe.
	counter := progress.New(cmd.ErrOrStderr(), "hosts passed", 0)
	defer counter.Done()
	stale := false
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rpcError("watch "+name, err)
		}
		last = resp.GetRollout()
		if (resp.GetStale() != nil) != stale {
			counter.Clear()
			stale = warnStaleChange(cmd.ErrOrStderr(), stale, resp.GetStale())
		}
		// A change within a wave (a gate's text) that moves no count
		// prints no new line. On a terminal the live counter is taken off
		// the screen first, so that the line does not run into it.
		if line := progressLine(last); line != lastLine {
			counter.Clear()
			fmt.Fprintln(g.out, line)
			lastLine = line
		}
		done, total := passedHosts(last)
		counter.Set(done, total, counterNote(last))
		if last.GetState() == pb.RolloutState_ROLLOUT_STATE_PAUSED {
			break
		}
	}
	counter.Done()
	if last == nil {
		return &exitError{code: 1, err: fmt.Errorf("watch %s: no state received", name)}
	}
	printRollout(g.out, last)
	if last.GetState() != pb.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		why := safe(last.GetReason())
		if st := rolloutState(last.GetState()); !strings.HasPrefix(why, st) {
			why = st + ": " + why
		}
		return &exitError{code: 2, err: fmt.Errorf("%s: %w: %s", last.GetName(), errRolloutStopped, why)}
	}
	return nil
}

// passedHosts is how many of the rollout's hosts passed, of all of them.
func passedHosts(r *pb.Rollout) (done, total int) {
	for _, wv := range r.GetWaves() {
		for _, h := range wv.GetHosts() {
			total++
			if h.GetState() == pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED {
				done++
			}
		}
	}
	return done, total
}

// counterNote is what the live counter says besides the count: the
// current wave while the rollout runs, else its state.
func counterNote(r *pb.Rollout) string {
	if r.GetState() == pb.RolloutState_ROLLOUT_STATE_RUNNING {
		if ws := r.GetWaves(); int(r.GetCurrentWave()) < len(ws) {
			return "running " + ws[r.GetCurrentWave()].GetTitle()
		}
	}
	return rolloutState(r.GetState())
}

// seqText names a revision by its sequence number (1, 2, 3 …, as `get
// revisions` shows it); by its version when the sequence is unknown, "-"
// when there is none yet.
func seqText(seq, rev uint64) string {
	switch {
	case seq > 0:
		return strconv.FormatUint(seq, 10)
	case rev > 0:
		return "v" + strconv.FormatUint(rev, 10)
	}
	return "-"
}

// versionText is an etcd version, "-" before it is known.
func versionText(rev uint64) string {
	if rev == 0 {
		return "-"
	}
	return strconv.FormatUint(rev, 10)
}

func rolloutState(s pb.RolloutState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "ROLLOUT_STATE_"))
}

func hostState(s pb.RolloutHostState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "ROLLOUT_HOST_STATE_"))
}

// progressLine is one line of a followed rollout: its state and each
// wave's passed/total, the current wave marked.
func progressLine(r *pb.Rollout) string {
	var waves []string
	for i, wv := range r.GetWaves() {
		passed := 0
		for _, h := range wv.GetHosts() {
			if h.GetState() == pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED {
				passed++
			}
		}
		mark := ""
		if uint32(i) == r.GetCurrentWave() && r.GetState() == pb.RolloutState_ROLLOUT_STATE_RUNNING {
			mark = "*"
		}
		waves = append(waves, fmt.Sprintf("%s%s %d/%d", mark, wv.GetTitle(), passed, len(wv.GetHosts())))
	}
	return fmt.Sprintf("%s %s (revision %s → %s): %s", r.GetName(), rolloutState(r.GetState()), seqText(r.GetFromSequence(), r.GetFromRevision()), seqText(r.GetToSequence(), r.GetToRevision()), strings.Join(waves, ", "))
}

// printRollout prints a rollout per wave and host.
func printRollout(w io.Writer, r *pb.Rollout) {
	fmt.Fprintf(w, "%s: revision %s → %s (versions %d → %s), %s", r.GetName(), seqText(r.GetFromSequence(), r.GetFromRevision()), seqText(r.GetToSequence(), r.GetToRevision()),
		r.GetFromRevision(), versionText(r.GetToRevision()), rolloutState(r.GetState()))
	if r.GetReason() != "" {
		fmt.Fprintf(w, " (%s)", termsafe.Text(r.GetReason()))
	}
	fmt.Fprintln(w)
	for i, wv := range r.GetWaves() {
		cur := ""
		if uint32(i) == r.GetCurrentWave() && !strings.HasPrefix(rolloutState(r.GetState()), "succeeded") {
			cur = " (current)"
		}
		fmt.Fprintf(w, "  %s%s\n", wv.GetTitle(), cur)
		for _, h := range wv.GetHosts() {
			detail := h.GetGate()
			if h.GetCause() != "" {
				detail = h.GetCause()
			}
			fmt.Fprintf(w, "    %-28s %-9s revision %-4s %s\n", safe(h.GetHost()), hostState(h.GetState()), seqText(h.GetTargetSequence(), h.GetTargetRevision()), termsafe.Text(detail))
		}
	}
}
