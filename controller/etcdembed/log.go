package etcdembed

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"

	"go.uber.org/zap/zapcore"
)

// slogCore is a zap core that hands etcd's log entries at or above a level
// to the controller's slog logger, with etcd's structured fields as
// attributes. etcd logs only through zap; without this its reasons for
// stopping (a full disk, a corrupt database) would be lost.
//
// Two kinds of entry are lowered to debug so that a warning in the log
// always means something: what etcd says while it is being closed (every
// listener reports its own closing as an error), and the fixed advice
// below that does not apply to a single node behind unix sockets.
type slogCore struct {
	log     *slog.Logger
	min     zapcore.Level
	fields  []zapcore.Field
	closing *atomic.Bool
}

// noise are etcd warnings printed at every start of an embedded node.
var noise = map[string]bool{
	// One socket for the gRPC and HTTP APIs: only the controller uses it.
	"Running http and grpc server on single port. This is not recommended for production.": true,
	// Auth tokens: the embedded etcd has no users, so no tokens.
	"simple token is not cryptographically signed": true,
}

func newSlogCore(log *slog.Logger, min zapcore.Level, closing *atomic.Bool) zapcore.Core {
	return &slogCore{log: log.With("component", "etcd"), min: min, closing: closing}
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= c.min }

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, min: c.min, fields: append(slices.Clip(c.fields), fields...), closing: c.closing}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields)+1)
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", e.LoggerName))
	}
	level := slogLevel(e.Level)
	if level < slog.LevelError+4 && (noise[e.Message] || c.closing.Load()) {
		level = slog.LevelDebug
	}
	c.log.LogAttrs(context.Background(), level, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l >= zapcore.DPanicLevel:
		// etcd panics or exits right after: the last words of the store.
		return slog.LevelError + 4
	case l >= zapcore.ErrorLevel:
		return slog.LevelError
	case l >= zapcore.WarnLevel:
		return slog.LevelWarn
	case l >= zapcore.InfoLevel:
		return slog.LevelInfo
	}
	return slog.LevelDebug
}
