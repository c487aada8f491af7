package cmd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/internal/termsafe"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// rotationName accepts "3", "rotations/3" or nothing (the newest).
func rotationName(args []string) string {
	if len(args) == 0 || args[0] == "" {
		return "rotations/-"
	}
	if strings.HasPrefix(args[0], "rotations/") {
		return args[0]
	}
	return "rotations/" + args[0]
}

// parseWhen reads a flag's time: RFC 3339 ("2026-12-24T02:00:00Z"), or a
// duration from now ("+2h", "90m").
func parseWhen(flag, v string, now time.Time) (*timestamppb.Timestamp, error) {
	if v == "" {
		return nil, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return timestamppb.New(t), nil
	}
	if d, err := time.ParseDuration(strings.TrimPrefix(v, "+")); err == nil {
		return timestamppb.New(now.Add(d)), nil
	}
	return nil, &exitError{code: 2, err: fmt.Errorf("--%s %q: a time such as 2026-12-24T02:00:00Z or a duration from now such as +2h", flag, v)}
}

func newRotate(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate a deployment's token-issuer certificate with no downtime (stage, refresh, activate, retire)",
		Long: `Rotate a deployment's token-issuer certificate to a new one held in a secret
(upload it first with "secret put NAME --new-version"). Four phases follow,
each a new topology revision delivered by a rollout and gated on the hosts'
reports: stage the new certificate on the deployment's hosts and see it
published in their metadata; have every partner refresh its cached copy of
the metadata until it holds both; make the new certificate the signing one
(Exchange servers one at a time) and see probes signed with it pass; retire
the old one. Trust probes run throughout and the rotation counts each one
that fails.

  rotate issuer           any deployment (Lync/Skype for Business: the OAuthTokenIssuer certificate)
  rotate auth-certificate an Exchange organization's auth certificate
  rotate sts-certificate  a SharePoint farm's STS signing certificate
  rotate status [ID] [-w] each phase host by host, and the probe failures
  rotate list             rotations, newest first
  rotate cancel [ID]      cancel a scheduled rotation`,
	}
	kind := func(use string, product pb.Product, short string) *cobra.Command {
		var deployment, secret, at, effective string
		var wait, validate bool
		cc := &cobra.Command{
			Use:   use + " --deployment D --secret NAME[@vN] [--at TIME] [--effective TIME]",
			Short: short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				now := time.Now()
				start, err := parseWhen("at", at, now)
				if err != nil {
					return err
				}
				eff, err := parseWhen("effective", effective, now)
				if err != nil {
					return err
				}
				id := make([]byte, 8)
				_, _ = rand.Read(id)
				req := &pb.CreateRotationRequest{Deployment: deployment, Secret: secret, StartTime: start, EffectiveTime: eff, Product: product,
					RequestId: hex.EncodeToString(id), ValidateOnly: validate}
				var name string
				err = g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
					resp, err := pb.NewRotationServiceClient(conn).CreateRotation(ctx, req)
					if err != nil {
						return rpcError("rotate "+use, err)
					}
					r := resp.GetRotation()
					name = r.GetName()
					if validate {
						fmt.Fprintf(g.out, "valid: deployment %s would rotate from %s to %s (%s), effective %s; nothing stored\n",
							safe(r.GetDeployment()), r.GetOldThumbprint(), r.GetNewThumbprint(), safe(r.GetNewSecret()), r.GetEffectiveTime().AsTime().UTC().Format(time.RFC3339))
						return nil
					}
					printRotation(g.out, r)
					return nil
				})
				if err != nil || !wait || validate {
					return err
				}
				return g.followRotation(cmd, name)
			},
		}
		f := cc.Flags()
		f.StringVar(&deployment, "deployment", "", "the deployment (Lync pool, Exchange organization, SharePoint farm)")
		f.StringVar(&secret, "secret", "", "the secret holding the new certificate: NAME (its newest version) or NAME@vN")
		f.StringVar(&at, "at", "", "start at this time (RFC 3339, or +DURATION from now); stored in etcd, it survives restarts")
		f.StringVar(&effective, "effective", "", "when the product switches to the new certificate (default: one hour after the start; at most 24 h before the current one expires)")
		f.BoolVarP(&wait, "wait", "w", false, "follow the rotation until it finishes; exit non-zero unless it succeeds")
		f.BoolVar(&validate, "validate", false, "check everything, store nothing")
		_ = cc.MarkFlagRequired("deployment")
		_ = cc.MarkFlagRequired("secret")
		return cc
	}
	var watch bool
	status := &cobra.Command{
		Use:   "status [ID]",
		Short: "Show a rotation (the newest by default): each phase host by host and the probe failures; -w follows it",
		Args:  cobra.MaximumNArgs(1),
	}
	statusOut := addOutput(status, formatTable, formatJSON, formatYAML)
	status.RunE = func(cmd *cobra.Command, args []string) error {
		if watch {
			if statusOut.machine() {
				return fmt.Errorf("-w prints progress lines: it takes no -o %s", statusOut.format)
			}
			return g.followRotation(cmd, rotationName(args))
		}
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			resp, err := pb.NewRotationServiceClient(conn).GetRotation(ctx, &pb.GetRotationRequest{Name: rotationName(args)})
			if err != nil {
				return rpcError("rotate status", err)
			}
			warnStale(cmd.ErrOrStderr(), resp.GetStale())
			return statusOut.print(g.out, resp.GetRotation(), func() error {
				printRotation(g.out, resp.GetRotation())
				return nil
			})
		})
	}
	status.Flags().BoolVarP(&watch, "watch", "w", false, "follow the rotation until it finishes")
	list := &cobra.Command{
		Use: "list", Short: "List rotations, newest first", Args: cobra.NoArgs,
	}
	listOut := addOutput(list, formatTable, formatJSON, formatYAML)
	var listLimit int
	list.Flags().IntVar(&listLimit, "limit", 0, "show only the newest N rotations (default: every one)")
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			resp, err := listRotations(ctx, pb.NewRotationServiceClient(conn), listLimit)
			if err != nil {
				return rpcError("rotate list", err)
			}
			warnStale(cmd.ErrOrStderr(), resp.GetStale())
			return listOut.print(g.out, resp, func() error {
				t := newTable(g.out, "ROTATION", "DEPLOYMENT", "STATE", "PHASE", "FAILED", "START", "REASON~")
				for _, r := range resp.GetRotations() {
					t.row(r.GetName(), r.GetDeployment(), rotationState(r.GetState()), phaseName(r.GetCurrentPhase()),
						strconv.FormatUint(uint64(r.GetProbeFailures()), 10), r.GetStartTime().AsTime().UTC().Format("2006-01-02 15:04:05"), r.GetReason())
				}
				return t.flush()
			})
		})
	}
	cancel := &cobra.Command{
		Use: "cancel [ID]", Short: "Cancel a scheduled rotation before it starts", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := pb.NewRotationServiceClient(conn).CancelRotation(ctx, &pb.CancelRotationRequest{Name: rotationName(args)})
				if err != nil {
					return rpcError("rotate cancel", err)
				}
				printRotation(g.out, resp.GetRotation())
				return nil
			})
		},
	}
	c.AddCommand(
		kind("issuer", pb.Product_PRODUCT_UNSPECIFIED, "Rotate a deployment's token-issuer certificate (Lync: OAuthTokenIssuer; any product)"),
		kind("auth-certificate", pb.Product_PRODUCT_EXCHANGE, "Rotate an Exchange organization's auth certificate (Set-AuthConfig)"),
		kind("sts-certificate", pb.Product_PRODUCT_SHAREPOINT, "Rotate a SharePoint farm's STS signing certificate (Set-SPSecurityTokenServiceConfig)"),
		status, list, cancel)
	return c
}

// errRotationStopped is the exit of a followed rotation that did not succeed.
var errRotationStopped = errors.New("rotation did not succeed")

// followRotation prints a line at each change until the rotation
// finishes, then the whole rotation; it returns an exit error unless it
// succeeded. A dropped stream is reopened (each opens with the whole
// state).
func (g *globals) followRotation(cmd *cobra.Command, name string) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	var last *pb.Rotation
	stale := false
	for attempt := 0; ; attempt++ {
		stream, err := pb.NewRotationServiceClient(conn).WatchRotation(ctx, &pb.WatchRotationRequest{Name: name})
		if err != nil {
			return rpcError("watch "+name, err)
		}
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				if attempt < 5 && ctx.Err() == nil {
					break // reopen: the first message is the whole state
				}
				return rpcError("watch "+name, err)
			}
			stale = warnStaleChange(cmd.ErrOrStderr(), stale, resp.GetStale())
			last = resp.GetRotation()
			name = last.GetName()
			fmt.Fprintf(g.out, "%s %s: phase %s, %d probe failures: %s\n", last.GetName(), rotationState(last.GetState()), phaseName(last.GetCurrentPhase()),
				last.GetProbeFailures(), termsafe.Text(last.GetReason()))
		}
		if last != nil && (last.GetState() == pb.RotationState_ROTATION_STATE_SUCCEEDED || last.GetState() == pb.RotationState_ROTATION_STATE_FAILED ||
			last.GetState() == pb.RotationState_ROTATION_STATE_CANCELLED) {
			break
		}
	}
	printRotation(g.out, last)
	if last.GetState() != pb.RotationState_ROTATION_STATE_SUCCEEDED {
		return &exitError{code: 2, err: fmt.Errorf("%s: %w: %s: %s", last.GetName(), errRotationStopped, rotationState(last.GetState()), safe(last.GetReason()))}
	}
	return nil
}

func rotationState(s pb.RotationState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "ROTATION_STATE_"))
}

func phaseName(p pb.RotationPhase) string {
	if p == pb.RotationPhase_ROTATION_PHASE_UNSPECIFIED {
		return "-"
	}
	return strings.ToLower(strings.TrimPrefix(p.String(), "ROTATION_PHASE_"))
}

func phaseState(s pb.RotationPhaseState) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.String(), "ROTATION_PHASE_STATE_")), "_", " ")
}

// printRotation prints a rotation: its certificates and times, each phase
// with its revision and rollout and each host's gate, and the probe
// failures with the newest ones.
func printRotation(w io.Writer, r *pb.Rotation) {
	fmt.Fprintf(w, "%s: deployment %s, %s", r.GetName(), safe(r.GetDeployment()), rotationState(r.GetState()))
	if r.GetReason() != "" {
		fmt.Fprintf(w, " (%s)", termsafe.Text(r.GetReason()))
	}
	fmt.Fprintln(w)
	old := r.GetOldThumbprint()
	if r.GetOldSecret() != "" {
		old += " (secret " + safe(r.GetOldSecret()) + ")"
	}
	fmt.Fprintf(w, "  from %s, expires %s\n", old, stamp(r.GetOldNotAfter()))
	fmt.Fprintf(w, "  to   %s (secret %s), expires %s\n", r.GetNewThumbprint(), safe(r.GetNewSecret()), stamp(r.GetNewNotAfter()))
	fmt.Fprintf(w, "  start %s, effective %s\n", stamp(r.GetStartTime()), stamp(r.GetEffectiveTime()))
	fmt.Fprintf(w, "  probe failures on edges from or to %s: %d\n", safe(r.GetDeployment()), r.GetProbeFailures())
	for _, pf := range r.GetRecentProbeFailures() {
		fmt.Fprintf(w, "    %s %s → %s (%s): %s: %s\n", stamp(pf.GetTime()), safe(pf.GetFromHost()), safe(pf.GetToHost()), safe(pf.GetToDeployment()), safe(pf.GetReason()), termsafe.Text(pf.GetDetail()))
	}
	for _, ps := range r.GetPhases() {
		cur := ""
		if ps.GetPhase() == r.GetCurrentPhase() {
			cur = " (current)"
		}
		fmt.Fprintf(w, "  phase %-8s %s%s", phaseName(ps.GetPhase()), phaseState(ps.GetState()), cur)
		if ps.GetRevision() != 0 {
			fmt.Fprintf(w, ", revision %d", ps.GetSequence())
		}
		if ps.GetRollout() != "" {
			fmt.Fprintf(w, ", %s", ps.GetRollout())
		}
		fmt.Fprintln(w)
		for _, h := range ps.GetHosts() {
			verdict := "waiting"
			if h.GetPassed() {
				verdict = "passed"
			}
			fmt.Fprintf(w, "    %-28s %-8s %-8s %s\n", safe(h.GetHost()), h.GetRole(), verdict, termsafe.Text(h.GetGate()))
		}
	}
}

func stamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}
