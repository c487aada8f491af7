package sessionticket

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/s2strust/s2strust/internal/pki"
)

// fleet is a CA, a server certificate and one client's configuration, as
// the controller and an agent have them.
type fleet struct {
	ca     *pki.CA
	server tls.Certificate
	client *tls.Config
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	now := time.Now()
	ca, err := pki.NewCA("sessionticket test CA", now)
	if err != nil {
		t.Fatal(err)
	}
	sc, sk, err := ca.IssueServer([]string{"127.0.0.1"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(sc, sk)
	if err != nil {
		t.Fatal(err)
	}
	cc, ck, err := ca.IssueHost("lync01.contoso.com", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client, err := pki.ClientTLSConfig(cc, ck, ca.CertPEM(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return &fleet{ca: ca, server: pair, client: client}
}

// serverConfig is a controller's: a fresh tls.Config (as after a restart)
// with tickets sealed by k, and verify as its VerifyConnection.
func (f *fleet) serverConfig(k *Keys, verify func(tls.ConnectionState) error) *tls.Config {
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{f.server},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        f.client.RootCAs,
		VerifyConnection: verify,
	}
	if k != nil {
		k.Install(cfg)
	}
	return cfg
}

// connect runs one handshake of the client against a server with cfg on
// loopback and reads one byte, so the client also reads the tickets the
// server sends after the handshake. It returns the server's view of the
// connection, or the first error of either side.
func connect(t *testing.T, client, server *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	type result struct {
		cs  tls.ConnectionState
		err error
	}
	done := make(chan result, 1)
	go func() {
		raw, err := lis.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		conn := tls.Server(raw, server)
		defer conn.Close()
		if err := conn.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		if _, err := conn.Write([]byte{1}); err != nil {
			done <- result{err: err}
			return
		}
		done <- result{cs: conn.ConnectionState()}
	}()
	conn, err := tls.Dial("tcp", lis.Addr().String(), client)
	if err != nil {
		r := <-done
		return tls.ConnectionState{}, errors.Join(err, r.err)
	}
	defer conn.Close()
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		r := <-done
		return tls.ConnectionState{}, errors.Join(err, r.err)
	}
	r := <-done
	return r.cs, r.err
}

func newKeys(t *testing.T, root []byte) *Keys {
	t.Helper()
	k, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestResumesAcrossRestartWithTheSameRoot(t *testing.T) {
	f := newFleet(t)
	root, err := NewRoot()
	if err != nil {
		t.Fatal(err)
	}
	var verified []bool // DidResume of every VerifyConnection call
	verify := func(cs tls.ConnectionState) error {
		verified = append(verified, cs.DidResume)
		return nil
	}
	cs, err := connect(t, f.client, f.serverConfig(newKeys(t, root), verify))
	if err != nil {
		t.Fatal(err)
	}
	if cs.DidResume {
		t.Fatal("the first connection resumed a session it never had")
	}
	// A new process: new Keys and tls.Config from the same root.
	cs, err = connect(t, f.client, f.serverConfig(newKeys(t, root), verify))
	if err != nil {
		t.Fatal(err)
	}
	if !cs.DidResume {
		t.Fatal("the second connection did not resume the session sealed by the first process")
	}
	if len(cs.PeerCertificates) == 0 || cs.PeerCertificates[0].Subject.CommonName == "" {
		t.Fatalf("the resumed session lost the client certificate: %v", cs.PeerCertificates)
	}
	if len(cs.VerifiedChains) == 0 {
		t.Fatal("the resumed session lost the verified chain the revocation check reads")
	}
	if len(verified) != 2 || verified[0] || !verified[1] {
		t.Fatalf("VerifyConnection ran %v (DidResume per call), want once per handshake, the second resumed", verified)
	}
}

func TestVerifyConnectionRefusesAResumption(t *testing.T) {
	f := newFleet(t)
	root, _ := NewRoot()
	if _, err := connect(t, f.client, f.serverConfig(newKeys(t, root), nil)); err != nil {
		t.Fatal(err)
	}
	revoked := errors.New("host revoked")
	_, err := connect(t, f.client, f.serverConfig(newKeys(t, root), func(cs tls.ConnectionState) error {
		if !cs.DidResume {
			t.Error("expected a resumption")
		}
		return revoked
	}))
	if !errors.Is(err, revoked) {
		t.Fatalf("a revoked host resumed its session: %v", err)
	}
}

func TestAnotherRootFallsBackToAFullHandshake(t *testing.T) {
	f := newFleet(t)
	a, _ := NewRoot()
	b, _ := NewRoot()
	if _, err := connect(t, f.client, f.serverConfig(newKeys(t, a), nil)); err != nil {
		t.Fatal(err)
	}
	cs, err := connect(t, f.client, f.serverConfig(newKeys(t, b), nil))
	if err != nil {
		t.Fatalf("a ticket of another root broke the handshake instead of being ignored: %v", err)
	}
	if cs.DidResume {
		t.Fatal("a ticket sealed under another root was resumed")
	}
	// crypto/tls's own random keys, as before this package: no resumption
	// across a restart either.
	cs, err = connect(t, f.client, f.serverConfig(nil, nil))
	if err != nil || cs.DidResume {
		t.Fatalf("default ticket keys: resumed %v, err %v", cs.DidResume, err)
	}
}

func TestTicketsExpireAfterTheirLifetime(t *testing.T) {
	root, _ := NewRoot()
	start := time.Date(2026, 12, 2, 23, 59, 0, 0, time.UTC)
	now := start
	k := newKeys(t, root)
	k.now = func() time.Time { return now }
	ss := sessionState(t)
	ticket, err := k.Wrap(tls.ConnectionState{}, ss)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		after time.Duration
		opens bool
	}{
		{0, true},
		{2 * time.Minute, true}, // the next period
		{Lifetime * Period, true},
		{(Lifetime + 1) * Period, false},
		{-Period, true}, // a replica a little behind, across the turn
		{-2 * Period, false},
	} {
		now = start.Add(tc.after)
		got, err := k.Unwrap(ticket, tls.ConnectionState{})
		if err != nil {
			t.Fatalf("%s later: Unwrap returned an error, which ends the connection: %v", tc.after, err)
		}
		if (got != nil) != tc.opens {
			t.Errorf("%s later: opened %v, want %v", tc.after, got != nil, tc.opens)
		}
	}
}

func TestDamagedTicketsAreNoSession(t *testing.T) {
	root, _ := NewRoot()
	k := newKeys(t, root)
	ticket, err := k.Wrap(tls.ConnectionState{}, sessionState(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := range ticket {
		bad := bytes.Clone(ticket)
		bad[i] ^= 0x40
		if ss, err := k.Unwrap(bad, tls.ConnectionState{}); ss != nil || err != nil {
			t.Fatalf("byte %d flipped: session %v, err %v", i, ss != nil, err)
		}
	}
	for _, bad := range [][]byte{nil, {version}, ticket[:headerSize+1], ticket[:len(ticket)-1]} {
		if ss, err := k.Unwrap(bad, tls.ConnectionState{}); ss != nil || err != nil {
			t.Fatalf("%d bytes: session %v, err %v", len(bad), ss != nil, err)
		}
	}
}

func TestNewRefusesARootOfTheWrongSize(t *testing.T) {
	if _, err := New(make([]byte, 16)); err == nil {
		t.Fatal("a 16-byte root was accepted")
	}
}

// FuzzUnwrap feeds Unwrap what a client may send as a ticket: it must never
// panic or fail the connection, and opens only what Wrap sealed.
func FuzzUnwrap(f *testing.F) {
	root := bytes.Repeat([]byte{7}, RootSize)
	k, err := New(root)
	if err != nil {
		f.Fatal(err)
	}
	plain := []byte("not a session state")
	ticket, err := k.seal(plain)
	if err != nil {
		f.Fatal(err)
	}
	if got, ok := k.open(ticket); !ok || !bytes.Equal(got, plain) {
		f.Fatalf("the sealed seed does not open: %q, %v", got, ok)
	}
	f.Add(ticket)
	f.Add([]byte{})
	f.Add([]byte{version, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if ss, err := k.Unwrap(b, tls.ConnectionState{}); ss != nil || err != nil {
			t.Fatalf("Unwrap of a made-up ticket: session %v, err %v", ss != nil, err)
		}
		// Only what seal sealed opens (the fuzzer cannot forge AES-GCM),
		// and the seed is sealed anew, with another nonce, in each
		// fuzzing process: whatever opens is plain.
		if got, ok := k.open(b); ok && !bytes.Equal(got, plain) {
			t.Fatalf("open(%x) = %q", b, got)
		}
	})
}

// sessionState is a session as crypto/tls keeps one: the one a real
// handshake hands to WrapSession.
func sessionState(t *testing.T) *tls.SessionState {
	t.Helper()
	f := newFleet(t)
	var got *tls.SessionState
	cfg := f.serverConfig(nil, nil)
	cfg.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		got = ss
		return cfg.EncryptTicket(cs, ss)
	}
	if _, err := connect(t, f.client, cfg); err != nil {
		t.Fatal(err)
	}
	if got == nil {
		t.Fatal("the server sealed no session")
	}
	return got
}
