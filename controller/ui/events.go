package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"google.golang.org/grpc/metadata"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// eventRefresh is the longest the live view goes without a new event:
// report ages, certificate countdowns and rollouts move without a host
// changing.
const eventRefresh = 15 * time.Second

// events serves GET /api/fleet/events: the page's view as server-sent
// events, one at once and another whenever a host changes (the fleet's
// WatchHosts stream, which looks for changes every second), at least
// every eventRefresh, until the client goes, the dashboard stops or the
// session (or admin certificate) expires at until. An event "fleet"
// carries the view as GET /api/fleet answers it; "fleet-error" carries
// {"error": ...} when the view could not be read, and the stream goes on.
func (h *Handler) events(w http.ResponseWriter, r *http.Request, until time.Time) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "live updates: the server cannot stream; use GET /api/fleet")
		return
	}
	ctx, cancel := context.WithDeadline(r.Context(), until)
	defer cancel()
	changed := make(chan struct{}, 1)
	watched := make(chan error, 1)
	go func() {
		watched <- h.cfg.Fleet.WatchHosts(&pb.WatchHostsRequest{}, &watchSignal{ctx: ctx, changed: changed})
	}()
	defer func() {
		cancel()
		<-watched
	}()

	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	// The browser reconnects by itself 3 s after the stream ends.
	if _, err := fmt.Fprint(w, "retry: 3000\n\n"); err != nil {
		return
	}
	refresh := time.NewTicker(eventRefresh)
	defer refresh.Stop()
	for {
		if err := h.sendView(ctx, w); err != nil {
			return // the client is gone
		}
		flusher.Flush()
		select {
		case <-ctx.Done():
			return
		case err := <-watched:
			// The watch ended (the controller stops, or the fleet cannot
			// be watched): end the stream; the page falls back to polling
			// and reconnects.
			watched <- err
			if err != nil {
				_ = writeEvent(w, "fleet-error", errorBody{Error: "live updates stopped: " + err.Error()})
				flusher.Flush()
			}
			return
		case <-changed:
		case <-refresh.C:
		}
	}
}

// sendView writes the current view as a "fleet" event, or a "fleet-error"
// event saying why it could not be read; an error is the client's.
func (h *Handler) sendView(ctx context.Context, w http.ResponseWriter) error {
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := buildView(vctx, h.cfg.Fleet, h.cfg.Rollouts, h.cfg.Now())
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return writeEvent(w, "fleet-error", errorBody{Error: err.Error()})
	}
	return writeEvent(w, "fleet", v)
}

// writeEvent writes one server-sent event: JSON has no raw newline, so
// the data is one line.
func writeEvent(w http.ResponseWriter, name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", name, b)
	return err
}

// watchSignal is the in-process end of a WatchHosts stream: every message
// is only a sign that something changed, coalesced while the view is
// being rebuilt.
type watchSignal struct {
	ctx     context.Context
	changed chan<- struct{}
}

func (s *watchSignal) Send(*pb.WatchHostsResponse) error {
	select {
	case s.changed <- struct{}{}:
	default:
	}
	return s.ctx.Err()
}

func (s *watchSignal) Context() context.Context     { return s.ctx }
func (s *watchSignal) SetHeader(metadata.MD) error  { return nil }
func (s *watchSignal) SendHeader(metadata.MD) error { return nil }
func (s *watchSignal) SetTrailer(metadata.MD)       {}
func (s *watchSignal) SendMsg(m any) error          { return s.Send(nil) }
func (s *watchSignal) RecvMsg(any) error            { return nil }
