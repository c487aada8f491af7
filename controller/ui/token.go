package ui

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// A token is base64url(version | purpose | expiry | id | mac): 1 + 1 + 8 +
// 16 bytes of payload and an HMAC-SHA256 over it with the dashboard key.
// Tokens are stateless so that any controller holding the key checks them;
// only the one-time use of a login token is remembered, in memory.
const (
	tokenVersion = 1
	idSize       = 16
	payloadSize  = 1 + 1 + 8 + idSize
	tokenSize    = payloadSize + sha256.Size
	// KeySize is the size of the dashboard's signing key.
	KeySize = 32
)

// Purpose says what a token may be used for, so that a login token is not
// a session and the other way round.
type Purpose byte

const (
	// PurposeLogin is the short-lived token `s2s-controller ui token`
	// prints; the browser exchanges it once for a session.
	PurposeLogin Purpose = 1
	// PurposeSession is the session kept in the HttpOnly cookie.
	PurposeSession Purpose = 2
)

// String names the purpose, for error messages.
func (p Purpose) String() string {
	switch p {
	case PurposeLogin:
		return "login"
	case PurposeSession:
		return "session"
	}
	return fmt.Sprintf("purpose %d", byte(p))
}

// MaxLoginTTL bounds a login token's lifetime: it is printed on a terminal
// and may end up in a shell history or a chat.
const MaxLoginTTL = 24 * time.Hour

// SessionTTL is how long a browser session lasts after login.
const SessionTTL = 12 * time.Hour

// Token is a checked token's content.
type Token struct {
	Purpose Purpose
	Expires time.Time
	ID      [idSize]byte
}

// Signer mints and checks dashboard tokens with one key.
type Signer struct {
	key []byte
}

// NewSigner returns a signer for key, which must be KeySize bytes.
func NewSigner(key []byte) (*Signer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("dashboard token key: %d bytes, want %d", len(key), KeySize)
	}
	return &Signer{key: append([]byte(nil), key...)}, nil
}

// Mint returns a new token for purpose that expires at expires.
func (s *Signer) Mint(purpose Purpose, expires time.Time) (string, error) {
	var id [idSize]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", fmt.Errorf("mint dashboard token: %w", err)
	}
	return s.sign(Token{Purpose: purpose, Expires: expires, ID: id}), nil
}

func (s *Signer) sign(t Token) string {
	b := make([]byte, payloadSize, tokenSize)
	b[0], b[1] = tokenVersion, byte(t.Purpose)
	binary.BigEndian.PutUint64(b[2:10], uint64(t.Expires.Unix()))
	copy(b[10:payloadSize], t.ID[:])
	b = append(b, s.mac(b)...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// MintLogin returns a login token valid for ttl from now (at most MaxLoginTTL).
func (s *Signer) MintLogin(now time.Time, ttl time.Duration) (string, error) {
	if ttl <= 0 || ttl > MaxLoginTTL {
		return "", fmt.Errorf("login token lifetime %s: want more than 0 and at most %s", ttl, MaxLoginTTL)
	}
	return s.Mint(PurposeLogin, now.Add(ttl))
}

func (s *Signer) mac(payload []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("s2strust dashboard token\x00"))
	m.Write(payload)
	return m.Sum(nil)
}

// Check parses token and returns its content when it is well formed,
// signed with this key, meant for purpose and not expired at now.
func (s *Signer) Check(token string, purpose Purpose, now time.Time) (Token, error) {
	if len(token) != base64.RawURLEncoding.EncodedLen(tokenSize) {
		return Token{}, fmt.Errorf("dashboard token: %d characters, want %d", len(token), base64.RawURLEncoding.EncodedLen(tokenSize))
	}
	// Strict: one token has one spelling, so a used token cannot come back re-spelled.
	b, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil || len(b) != tokenSize {
		return Token{}, errors.New("dashboard token: not base64url")
	}
	payload, mac := b[:payloadSize], b[payloadSize:]
	if !hmac.Equal(mac, s.mac(payload)) {
		return Token{}, errors.New("dashboard token: bad signature (made with another controller's key?)")
	}
	if payload[0] != tokenVersion {
		return Token{}, fmt.Errorf("dashboard token: version %d, want %d", payload[0], tokenVersion)
	}
	t := Token{Purpose: Purpose(payload[1])}
	if t.Purpose != purpose {
		return Token{}, fmt.Errorf("dashboard token: a %s token, want a %s token", t.Purpose, purpose)
	}
	exp := binary.BigEndian.Uint64(payload[2:10])
	if exp > 1<<62 {
		return Token{}, errors.New("dashboard token: expiry out of range")
	}
	t.Expires = time.Unix(int64(exp), 0)
	if !now.Before(t.Expires) {
		return Token{}, fmt.Errorf("dashboard token: expired at %s", t.Expires.UTC().Format(time.RFC3339))
	}
	copy(t.ID[:], payload[10:payloadSize])
	return t, nil
}

// usedTokens remembers the login tokens already exchanged until they
// expire, so that one printed token opens one session.
type usedTokens struct {
	mu   sync.Mutex
	seen map[[idSize]byte]time.Time
}

// use records t; false when it was used before.
func (u *usedTokens) use(t Token, now time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.seen == nil {
		u.seen = map[[idSize]byte]time.Time{}
	}
	for id, exp := range u.seen {
		if !now.Before(exp) {
			delete(u.seen, id)
		}
	}
	if _, ok := u.seen[t.ID]; ok {
		return false
	}
	u.seen[t.ID] = t.Expires
	return true
}
