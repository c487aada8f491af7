// Package sessionticket seals the controller's TLS 1.3 session tickets
// with keys derived from one root secret that every replica shares and that
// outlives a restart, so an agent reconnecting to a restarted controller (or
// to another replica) resumes its session instead of running a full mutual
// TLS handshake: no certificate sent, signed or verified on either side.
//
// crypto/tls's own ticket keys are random per process, so after a restart
// every one of a fleet's agents pays a full handshake at once; the resync
// after a restart is then bounded by handshake CPU. Resuming changes nothing
// about who may connect: the session keeps the client certificate of the
// full handshake, crypto/tls refuses to resume one whose certificate has
// expired or whose chain no longer ends in a trusted CA, and
// tls.Config.VerifyConnection (the controller's revocation check) runs on
// every resumption as on every full handshake.
//
// The root is as sensitive as the CA's key (whoever has it can mint a
// session for any identity), so the controller stores it sealed like the
// CA's key. Keys change every Period; a ticket is accepted for Lifetime
// periods after the one that sealed it.
package sessionticket

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	"github.com/s2strust/s2strust/internal/secretbox"
)

const (
	// RootSize is the size of the root secret.
	RootSize = 32
	// Period is how long one ticket key seals new tickets.
	Period = 24 * time.Hour
	// Lifetime is how many periods after its own a ticket still opens:
	// seven days, crypto/tls's own limit on a resumed session's age.
	Lifetime = 7

	version    = 1
	headerSize = 1 + 4 // version, period
)

// Keys seals and opens session tickets. It is safe for concurrent use.
type Keys struct {
	root [RootSize]byte
	now  func() time.Time

	mu   sync.Mutex
	keys map[uint32][]byte // by period, only those in the window
}

// New returns the keys derived from root, which must be RootSize bytes.
func New(root []byte) (*Keys, error) {
	if len(root) != RootSize {
		return nil, fmt.Errorf("session ticket root: %d bytes, want %d", len(root), RootSize)
	}
	k := &Keys{now: time.Now, keys: map[uint32][]byte{}}
	copy(k.root[:], root)
	return k, nil
}

// NewRoot returns a new random root secret.
func NewRoot() ([]byte, error) {
	root := make([]byte, RootSize)
	if _, err := rand.Read(root); err != nil {
		return nil, fmt.Errorf("session ticket root: %w", err)
	}
	return root, nil
}

// Install makes cfg seal and open its session tickets with k. It must be
// called before cfg is used (or cloned, as gRPC's credentials do).
func (k *Keys) Install(cfg *tls.Config) {
	cfg.WrapSession = k.Wrap
	cfg.UnwrapSession = k.Unwrap
}

// Wrap seals a session into a ticket with the current period's key
// (tls.Config.WrapSession).
func (k *Keys) Wrap(_ tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
	plain, err := ss.Bytes()
	if err != nil {
		return nil, fmt.Errorf("session ticket: %w", err)
	}
	return k.seal(plain)
}

// seal encrypts a ticket's plaintext with the current period's key:
// the version and period in the clear, bound to the sealed rest.
func (k *Keys) seal(plain []byte) ([]byte, error) {
	period := k.period()
	key, err := k.key(period)
	if err != nil {
		return nil, err
	}
	header := make([]byte, headerSize, headerSize+secretbox.Overhead+len(plain))
	header[0] = version
	binary.BigEndian.PutUint32(header[1:], period)
	sealed, err := secretbox.Seal(key, plain, header)
	if err != nil {
		return nil, fmt.Errorf("session ticket: %w", err)
	}
	return append(header, sealed...), nil
}

// Unwrap opens a ticket (tls.Config.UnwrapSession). A ticket it cannot
// open (another root, too old, damaged, not one of ours) is no session:
// (nil, nil), and the handshake goes on as a full one. An error would end
// the connection instead.
func (k *Keys) Unwrap(identity []byte, _ tls.ConnectionState) (*tls.SessionState, error) {
	plain, ok := k.open(identity)
	if !ok {
		return nil, nil
	}
	ss, err := tls.ParseSessionState(plain)
	if err != nil {
		return nil, nil
	}
	return ss, nil
}

// open decrypts a ticket, or says it cannot.
func (k *Keys) open(ticket []byte) ([]byte, bool) {
	if len(ticket) < headerSize || ticket[0] != version {
		return nil, false
	}
	period := binary.BigEndian.Uint32(ticket[1:headerSize])
	if !k.inWindow(period, k.period()) {
		return nil, false
	}
	key, err := k.key(period)
	if err != nil {
		return nil, false
	}
	plain, err := secretbox.Open(key, ticket[headerSize:], ticket[:headerSize])
	if err != nil {
		return nil, false
	}
	return plain, true
}

// period is the number of the current key period.
func (k *Keys) period() uint32 {
	return uint32(k.now().Unix() / int64(Period/time.Second))
}

// inWindow says whether a ticket sealed in period p opens in period cur:
// up to Lifetime periods later, or one period early, for a replica whose
// clock is a little ahead of this one's at a period's turn.
func (k *Keys) inWindow(p, cur uint32) bool {
	return p+Lifetime >= cur && p <= cur+1
}

// key returns the period's key, deriving it once.
func (k *Keys) key(period uint32) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if key, ok := k.keys[period]; ok {
		return key, nil
	}
	var info [len("s2strust session ticket key") + 4]byte
	copy(info[:], "s2strust session ticket key")
	binary.BigEndian.PutUint32(info[len(info)-4:], period)
	key, err := hkdf.Key(sha256.New, k.root[:], nil, string(info[:]), secretbox.KeySize)
	if err != nil {
		return nil, fmt.Errorf("session ticket key: %w", err)
	}
	cur := k.period()
	for p := range k.keys {
		if !k.inWindow(p, cur) {
			delete(k.keys, p)
		}
	}
	k.keys[period] = key
	return key, nil
}
