//go:build windows

package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/eventlog"
	"golang.org/x/sys/windows/svc/mgr"
)

// install creates the service (automatic start, delayed so that the
// products' own services come first), its recovery actions and its event
// log source.
// https://learn.microsoft.com/windows/win32/api/winsvc/nf-winsvc-createservicew
// https://learn.microsoft.com/windows/win32/api/winsvc/ns-winsvc-service_failure_actionsw
func install(spec Spec) error {
	if spec.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("service install: %w", err)
		}
		spec.Exe = exe
	}
	if err := spec.Validate(); err != nil {
		return err
	}
	cfg, err := filepath.Abs(spec.Config)
	if err != nil {
		return fmt.Errorf("service install: --config %s: %w", spec.Config, err)
	}
	spec.Config = cfg
	m, err := mgr.Connect()
	if err != nil {
		return fmt.Errorf("service install: connect to the service control manager: %w", err)
	}
	defer m.Disconnect()
	if s, err := m.OpenService(Name); err == nil {
		s.Close()
		return fmt.Errorf("service install: service %s already exists (s2s-agent service uninstall first)", Name)
	}
	s, err := m.CreateService(Name, spec.Exe, mgr.Config{
		DisplayName: DisplayName, Description: Description,
		StartType: mgr.StartAutomatic, DelayedAutoStart: true,
		ServiceStartName: spec.Account, Password: spec.Password,
	}, spec.Args()...)
	if err != nil {
		return fmt.Errorf("service install: create service %s: %w", Name, err)
	}
	defer s.Close()
	if err := applyRecovery(s); err != nil {
		s.Delete()
		return fmt.Errorf("service install: %w", err)
	}
	if err := eventlog.InstallAsEventCreate(Name, eventlog.Error|eventlog.Warning|eventlog.Info); err != nil {
		s.Delete()
		return fmt.Errorf("service install: register the event log source %s: %w", Name, err)
	}
	return nil
}

// applyRecovery sets the restart-on-failure actions.
func applyRecovery(s *mgr.Service) error {
	var actions []mgr.RecoveryAction
	for _, r := range RecoveryActions {
		actions = append(actions, mgr.RecoveryAction{Type: mgr.ServiceRestart, Delay: r.Delay})
	}
	if err := s.SetRecoveryActions(actions, uint32(RecoveryReset/time.Second)); err != nil {
		return fmt.Errorf("set the recovery actions of %s: %w", Name, err)
	}
	return nil
}

// setRecovery sets the recovery actions of the installed service: the MSI
// installs the service with ServiceInstall, which cannot express them.
func setRecovery() error {
	m, s, err := open()
	if err != nil {
		return fmt.Errorf("service set-recovery: %w", err)
	}
	defer m.Disconnect()
	defer s.Close()
	if err := applyRecovery(s); err != nil {
		return fmt.Errorf("service set-recovery: %w", err)
	}
	// The event log source too, which the MSI does not register either.
	if err := eventlog.InstallAsEventCreate(Name, eventlog.Error|eventlog.Warning|eventlog.Info); err != nil && !strings.Contains(err.Error(), "exists") {
		return fmt.Errorf("service set-recovery: register the event log source %s: %w", Name, err)
	}
	return nil
}

func open() (*mgr.Mgr, *mgr.Service, error) {
	m, err := mgr.Connect()
	if err != nil {
		return nil, nil, fmt.Errorf("connect to the service control manager: %w", err)
	}
	s, err := m.OpenService(Name)
	if err != nil {
		m.Disconnect()
		return nil, nil, fmt.Errorf("service %s: %w", Name, err)
	}
	return m, s, nil
}

func uninstall() error {
	m, s, err := open()
	if err != nil {
		return fmt.Errorf("service uninstall: %w", err)
	}
	defer m.Disconnect()
	defer s.Close()
	_, _ = s.Control(svc.Stop)
	if err := s.Delete(); err != nil {
		return fmt.Errorf("service uninstall: %w", err)
	}
	if err := eventlog.Remove(Name); err != nil {
		return fmt.Errorf("service uninstall: remove the event log source: %w", err)
	}
	return nil
}

func start() error {
	m, s, err := open()
	if err != nil {
		return fmt.Errorf("service start: %w", err)
	}
	defer m.Disconnect()
	defer s.Close()
	if err := s.Start(); err != nil {
		return fmt.Errorf("service start: %w", err)
	}
	return nil
}

func stop() error {
	m, s, err := open()
	if err != nil {
		return fmt.Errorf("service stop: %w", err)
	}
	defer m.Disconnect()
	defer s.Close()
	st, err := s.Control(svc.Stop)
	if err != nil {
		return fmt.Errorf("service stop: %w", err)
	}
	for deadline := time.Now().Add(30 * time.Second); st.State != svc.Stopped; {
		if time.Now().After(deadline) {
			return fmt.Errorf("service stop: %s did not stop within 30s", Name)
		}
		time.Sleep(300 * time.Millisecond)
		if st, err = s.Query(); err != nil {
			return fmt.Errorf("service stop: %w", err)
		}
	}
	return nil
}

func status() (string, error) {
	m, s, err := open()
	if err != nil {
		return "", fmt.Errorf("service status: %w", err)
	}
	defer m.Disconnect()
	defer s.Close()
	st, err := s.Query()
	if err != nil {
		return "", fmt.Errorf("service status: %w", err)
	}
	cfg, err := s.Config()
	if err != nil {
		return "", fmt.Errorf("service status: %w", err)
	}
	names := map[svc.State]string{svc.Stopped: "stopped", svc.StartPending: "starting", svc.StopPending: "stopping",
		svc.Running: "running", svc.ContinuePending: "continuing", svc.PausePending: "pausing", svc.Paused: "paused"}
	account := cfg.ServiceStartName
	if account == "" {
		account = "LocalSystem"
	}
	return fmt.Sprintf("%s: %s (pid %d), runs as %s: %s", Name, names[st.State], st.ProcessId, account, cfg.BinaryPathName), nil
}

// IsService reports whether the service control manager started this process.
func IsService() bool {
	ok, err := svc.IsWindowsService()
	return err == nil && ok
}

// Run runs fn as the service: the service control manager's Stop or
// Shutdown cancels its context; start, stop and failure go to the event
// log, and so do warnings and errors logged through log.
func Run(ctx context.Context, log *slog.Logger, fn func(context.Context, *slog.Logger) error) error {
	elog, err := eventlog.Open(Name)
	if err != nil {
		return fmt.Errorf("open the event log source %s (s2s-agent service install registers it): %w", Name, err)
	}
	defer elog.Close()
	log = slog.New(NewEventHandler(log.Handler(), elog))
	h := &handler{ctx: ctx, fn: fn, log: log, elog: elog}
	if err := svc.Run(Name, h); err != nil {
		return fmt.Errorf("run as service %s: %w", Name, err)
	}
	return h.err
}

type handler struct {
	ctx  context.Context
	fn   func(context.Context, *slog.Logger) error
	log  *slog.Logger
	elog *eventlog.Log
	err  error
}

// Execute implements svc.Handler.
func (h *handler) Execute(_ []string, req <-chan svc.ChangeRequest, status chan<- svc.Status) (bool, uint32) {
	status <- svc.Status{State: svc.StartPending}
	ctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- h.fn(ctx, h.log) }()
	status <- svc.Status{State: svc.Running, Accepts: svc.AcceptStop | svc.AcceptShutdown}
	_ = h.elog.Info(EventStarted, "s2s-agent started")
	for {
		select {
		case err := <-done:
			h.err = err
			if err != nil && !errors.Is(err, context.Canceled) {
				_ = h.elog.Error(EventFailed, "s2s-agent stopped on an error: "+err.Error())
				// A service-specific exit code other than 0 is a failure, so
				// the recovery actions restart the service.
				return true, 1
			}
			_ = h.elog.Info(EventStopped, "s2s-agent stopped")
			return false, 0
		case c := <-req:
			switch c.Cmd {
			case svc.Interrogate:
				status <- c.CurrentStatus
			case svc.Stop, svc.Shutdown:
				status <- svc.Status{State: svc.StopPending}
				cancel()
			}
		}
	}
}
