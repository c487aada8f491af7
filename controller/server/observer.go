package server

import (
	"context"
	"log/slog"
)

// SyncObserver hears what happens on the agents' Sync streams. Logging
// implements it (LogObserver) and metrics can later; calls are made on the
// stream's goroutines, so an implementation must be quick and safe for
// concurrent use.
type SyncObserver interface {
	// Connected: host's agent opened a stream from peer, reporting the
	// revision it has applied.
	Connected(host, peer string, appliedVersion uint64, agentVersion string)
	// Pushed: the desired state (version, hash) went to host.
	Pushed(host string, version uint64, hash string)
	// Acked: host applied (version, hash).
	Acked(host string, version uint64, hash string)
	// Nacked: host could not apply (version, hash); errors counts its item errors.
	Nacked(host string, version uint64, hash string, errors int)
}

// LogObserver logs what it observes, as the hub always has. A commit is
// heard once per host, 10,000 times at fleet scale: the lines are built
// only when their level is enabled (LogAttrs boxes nothing), and the
// per-host success of a push or an ACK is Debug — an operator reads
// those in status, metrics and the rollout; a NACK is a warning.
type LogObserver struct{ Log *slog.Logger }

// Connected implements SyncObserver.
func (o LogObserver) Connected(host, peer string, appliedVersion uint64, agentVersion string) {
	o.Log.LogAttrs(context.Background(), slog.LevelInfo, "agent connected", slog.String("host", host), slog.String("peer", peer),
		slog.Uint64("applied_version", appliedVersion), slog.String("agent_version", agentVersion))
}

// Pushed implements SyncObserver.
func (o LogObserver) Pushed(host string, version uint64, hash string) {
	o.Log.LogAttrs(context.Background(), slog.LevelDebug, "pushed desired state", slog.String("host", host), slog.Uint64("version", version), slog.String("hash", hash))
}

// Acked implements SyncObserver.
func (o LogObserver) Acked(host string, version uint64, hash string) {
	o.Log.LogAttrs(context.Background(), slog.LevelDebug, "host acknowledged", slog.String("host", host), slog.Uint64("version", version))
}

// Nacked implements SyncObserver.
func (o LogObserver) Nacked(host string, version uint64, hash string, errors int) {
	o.Log.LogAttrs(context.Background(), slog.LevelWarn, "host rejected configuration", slog.String("host", host), slog.Uint64("version", version), slog.Int("errors", errors))
}

// Observers fans each observation out to every observer in turn.
type Observers []SyncObserver

// Connected implements SyncObserver.
func (os Observers) Connected(host, peer string, appliedVersion uint64, agentVersion string) {
	for _, o := range os {
		o.Connected(host, peer, appliedVersion, agentVersion)
	}
}

// Pushed implements SyncObserver.
func (os Observers) Pushed(host string, version uint64, hash string) {
	for _, o := range os {
		o.Pushed(host, version, hash)
	}
}

// Acked implements SyncObserver.
func (os Observers) Acked(host string, version uint64, hash string) {
	for _, o := range os {
		o.Acked(host, version, hash)
	}
}

// Nacked implements SyncObserver.
func (os Observers) Nacked(host string, version uint64, hash string, errors int) {
	for _, o := range os {
		o.Nacked(host, version, hash, errors)
	}
}
