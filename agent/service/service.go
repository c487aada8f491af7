// Package service runs the agent as a Windows service and installs it:
// `s2s-agent service install|uninstall|start|stop|status`. The service's
// command line is short (`s2s-agent.exe run --config <agent.yaml>`):
// everything else is in the configuration file. On other systems the
// commands exist and say that the agent is installed there with its
// systemd unit.
package service

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// Name is the service's name, and the source name of its event log entries.
const (
	Name        = "s2s-agent"
	DisplayName = "s2strust agent"
	Description = "Keeps this server's server-to-server OAuth trust (Lync / Skype for Business, Exchange, SharePoint) as the s2strust controller declares it."
)

// Spec is what install creates.
type Spec struct {
	// Exe is the agent's executable; Config its agent.yaml.
	Exe, Config string
	// Account runs the service, e.g. CONTOSO\s2s-agent$ (a group managed
	// service account, which needs no password) or CONTOSO\svc-s2s.
	// Empty: LocalSystem, which lacks the product rights (see
	// deploy/windows/README.md).
	Account string
	// Password is the account's password; empty for a gMSA.
	Password string
}

// Args are the service's arguments after the executable.
func (s Spec) Args() []string { return []string{"run", "--config", s.Config} }

// Validate checks the spec before anything is created.
func (s Spec) Validate() error {
	if s.Exe == "" {
		return errors.New("service install: the agent's executable is unknown")
	}
	if s.Config == "" {
		return errors.New("service install: --config is required: the service reads its settings from agent.yaml")
	}
	if s.Account != "" && !strings.Contains(s.Account, `\`) && !strings.Contains(s.Account, "@") {
		return fmt.Errorf("service install: --account %q: want DOMAIN\\name (a gMSA ends in $) or name@domain", s.Account)
	}
	if strings.HasSuffix(s.Account, "$") && s.Password != "" {
		return fmt.Errorf("service install: --account %q is a group managed service account, which takes no password", s.Account)
	}
	return nil
}

// Recovery is one failure action: restart after Delay.
type Recovery struct{ Delay time.Duration }

// RecoveryActions restart the service after its first, second and later
// failures, with growing delays; the failure count resets after a day
// without failure.
var RecoveryActions = []Recovery{{10 * time.Second}, {30 * time.Second}, {2 * time.Minute}}

// RecoveryReset is when the failure count resets.
const RecoveryReset = 24 * time.Hour

// EventWriter is the Windows Event Log (golang.org/x/sys/windows/svc/eventlog.Log).
type EventWriter interface {
	Info(eid uint32, msg string) error
	Warning(eid uint32, msg string) error
	Error(eid uint32, msg string) error
}

// Event ids of the agent's entries.
const (
	EventStarted uint32 = 1
	EventStopped uint32 = 2
	EventFailed  uint32 = 3
	EventWarning uint32 = 10
	EventError   uint32 = 11
)

// EventHandler is a slog.Handler that passes every record to next and
// writes warnings and errors to the event log too, so that an
// administrator sees a failing apply in Event Viewer. Records carry no
// secret (the agent never logs one), so the entry is the record's text.
type EventHandler struct {
	next  slog.Handler
	log   EventWriter
	attrs []slog.Attr
}

// NewEventHandler returns an EventHandler.
func NewEventHandler(next slog.Handler, log EventWriter) *EventHandler {
	return &EventHandler{next: next, log: log}
}

// Enabled is next's.
func (h *EventHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// Handle writes r to next and, from Warn up, to the event log.
func (h *EventHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		var b strings.Builder
		b.WriteString(r.Message)
		for _, a := range h.attrs {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		}
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		})
		if r.Level >= slog.LevelError {
			_ = h.log.Error(EventError, b.String())
		} else {
			_ = h.log.Warning(EventWarning, b.String())
		}
	}
	return h.next.Handle(ctx, r)
}

// WithAttrs keeps attrs for both outputs.
func (h *EventHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &EventHandler{next: h.next.WithAttrs(attrs), log: h.log, attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

// WithGroup is next's; event log entries stay flat.
func (h *EventHandler) WithGroup(name string) slog.Handler {
	return &EventHandler{next: h.next.WithGroup(name), log: h.log, attrs: h.attrs}
}

// Command is `s2s-agent service`.
func Command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Install, remove, start, stop or query the agent's Windows service",
	}
	var spec Spec
	var passwordStdin bool
	install := &cobra.Command{
		Use:   "install",
		Short: "Install the agent as a Windows service (automatic start, restart on failure, event log source)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if passwordStdin {
				pw, err := readPassword(cmd.InOrStdin())
				if err != nil {
					return err
				}
				spec.Password = pw
			}
			return install(spec)
		},
	}
	install.Flags().StringVar(&spec.Config, "config", `C:\ProgramData\s2strust\agent.yaml`, "the agent.yaml the service runs with")
	install.Flags().StringVar(&spec.Account, "account", "", `the account the service runs as, e.g. CONTOSO\s2s-agent$ (a gMSA); see deploy/windows/README.md for its rights`)
	install.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the account's password from standard input (never from the command line)")
	cmd.AddCommand(install,
		&cobra.Command{Use: "uninstall", Short: "Stop and remove the service", Args: cobra.NoArgs, RunE: func(*cobra.Command, []string) error { return uninstall() }},
		&cobra.Command{Use: "set-recovery", Short: "Set the installed service's restart-on-failure actions (the MSI runs this after installing the service)", Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error { return setRecovery() }},
		&cobra.Command{Use: "start", Short: "Start the service", Args: cobra.NoArgs, RunE: func(*cobra.Command, []string) error { return start() }},
		&cobra.Command{Use: "stop", Short: "Stop the service", Args: cobra.NoArgs, RunE: func(*cobra.Command, []string) error { return stop() }},
		&cobra.Command{Use: "status", Short: "Show the service's state", Args: cobra.NoArgs, RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := status()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), s)
			return nil
		}},
	)
	return cmd
}

func readPassword(r io.Reader) (string, error) {
	line, err := bufio.NewReader(io.LimitReader(r, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read the password from standard input: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", errors.New("--password-stdin: standard input held no password")
	}
	return pw, nil
}
