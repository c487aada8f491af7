package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
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

// The certificate a host connects with is recorded (in the writer's
// batches, not waited for): every host of a fleet connecting at once has
// its record, with the certificate's serial and expiry and when it was
// seen.
func TestSeenRecordsEveryConnectingHost(t *testing.T) {
	ctx := context.Background()
	f := startHub(t, Config{})
	ids, _, err := NewIdentities(ctx, f.st, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	notAfter := time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids.seen(fmt.Sprintf("h%02d.contoso.com", i), &x509.Certificate{SerialNumber: big.NewInt(int64(0x1000 + i)), NotAfter: notAfter})
		}()
	}
	wg.Wait()
	for i := range 50 {
		host := fmt.Sprintf("h%02d.contoso.com", i)
		rec, _ := waitIdentityRecord(t, f, host, fmt.Sprintf("%x", 0x1000+i))
		if !rec.NotAfter.Equal(notAfter) || rec.LastSeen.Before(start.Add(-time.Second)) {
			t.Errorf("%s: recorded %+v; want not after %s, last seen since %s", host, rec, notAfter, start)
		}
	}
}

// waitIdentityRecord waits until host's identity record names serial, and
// returns it with its etcd mod revision.
func waitIdentityRecord(t *testing.T, f *hubFixture, host, serial string) (identityRecord, int64) {
	t.Helper()
	var rec identityRecord
	var rev int64
	waitFor(t, host+"'s identity record of serial "+serial, func() bool {
		resp, err := f.st.Client().Get(context.Background(), f.st.Key("identities/"+host))
		if err != nil || len(resp.Kvs) != 1 {
			return false
		}
		rec, rev = identityRecord{}, resp.Kvs[0].ModRevision
		return json.Unmarshal(resp.Kvs[0].Value, &rec) == nil && rec.Serial == serial
	})
	return rec, rev
}

// fakeStream is a server stream with only a context.
type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s fakeStream) Context() context.Context { return s.ctx }

// A host's stream handler ends its stream through the context the access
// layer made for revocations, making none of its own (streamContext): a
// revocation ends the handler's context, with the revocation as its
// cause, and the stream with UNAUTHENTICATED; the handler ending its own
// stream (a newer stream took over) is no revocation.
func TestHostStreamHandlerSharesTheRevocationContext(t *testing.T) {
	ctx := context.Background()
	f := startHub(t, Config{})
	log := slog.New(slog.DiscardHandler)
	ids, _, err := NewIdentities(ctx, f.st, log)
	if err != nil {
		t.Fatal(err)
	}
	id := pki.Identity{Kind: pki.KindHost, Name: "fe01.contoso.com"}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	for _, revoke := range []bool{false, true} {
		started := make(chan context.CancelCauseFunc, 1)
		handler := func(_ any, ss grpc.ServerStream) error {
			sctx, end := streamContext(ss.Context())
			defer end(nil)
			if sctx != ss.Context() {
				t.Error("the handler made a context of its own for a host's stream")
			}
			started <- end
			<-sctx.Done()
			return status.FromContextError(sctx.Err()).Err()
		}
		errc := make(chan error, 1)
		go func() { errc <- ids.serveHost(id, leaf, nil, fakeStream{ctx: ctx}, handler, log) }()
		end := <-started
		if revoke {
			val, _ := json.Marshal(revocation{RevokedAt: time.Now(), By: "admin/test"})
			ids.apply(ids.st.Key("revoked/"+id.Name), val)
		} else {
			end(nil)
		}
		err := <-errc
		if want := map[bool]codes.Code{false: codes.Canceled, true: codes.Unauthenticated}[revoke]; status.Code(err) != want {
			t.Errorf("revoked %v: the stream ended with %v; want %v", revoke, err, want)
		}
	}
}
