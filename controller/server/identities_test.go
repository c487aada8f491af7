package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/s2strust/s2strust/controller/store"
)

// A revocation ends every open stream of the host whose certificate was
// issued before it, and only those; a stream that ended no longer counts,
// whichever of the host's streams ends first.
func TestRevocationEndsTheHostsTrackedStreams(t *testing.T) {
	ids := &Identities{st: store.New(nil, ""), log: slog.New(slog.DiscardHandler), revoked: map[string]time.Time{}, streams: map[string]*tracked{}, written: map[string]seenWrite{}}
	revokedAt := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	before := &x509.Certificate{NotBefore: revokedAt.Add(-time.Hour)}
	after := &x509.Certificate{NotBefore: revokedAt.Add(time.Hour)}
	type stream struct {
		ctx context.Context
		t   *tracked
	}
	open := func(host string, cert *x509.Certificate) stream {
		ctx, cancel := context.WithCancelCause(context.Background())
		t.Cleanup(func() { cancel(nil) })
		return stream{ctx, ids.track(host, cert, cancel)}
	}
	a1, a2, a3 := open("a.contoso.com", before), open("a.contoso.com", before), open("a.contoso.com", before)
	aNew := open("a.contoso.com", after)
	b := open("b.contoso.com", before)
	ids.untrack(a2.t) // in the middle of the host's list
	ids.untrack(a1.t) // one opened earlier than the rest

	val, _ := json.Marshal(revocation{RevokedAt: revokedAt, By: "admin/test"})
	ids.apply(ids.st.Key("revoked/a.contoso.com"), val)
	if !errors.Is(context.Cause(a3.ctx), ErrRevoked) {
		t.Errorf("the open stream of the revoked host, certificate issued before: cause %v, want ErrRevoked", context.Cause(a3.ctx))
	}
	for name, s := range map[string]stream{"a1 (ended)": a1, "a2 (ended)": a2, "a with a newer certificate": aNew, "b": b} {
		if s.ctx.Err() != nil {
			t.Errorf("stream %s was ended: %v", name, context.Cause(s.ctx))
		}
	}

	for _, s := range []stream{a3, aNew, b} {
		ids.untrack(s.t)
	}
	if len(ids.streams) != 0 {
		t.Errorf("every stream ended, but %d hosts are still tracked", len(ids.streams))
	}
}
