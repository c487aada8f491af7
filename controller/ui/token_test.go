package ui

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func testSigner(t testing.TB, fill byte) *Signer {
	t.Helper()
	s, err := NewSigner(bytes.Repeat([]byte{fill}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTokenChecks(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	s, other := testSigner(t, 1), testSigner(t, 2)
	login, err := s.MintLogin(now, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	session, err := s.Mint(PurposeSession, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Check(login, PurposeLogin, now)
	if err != nil {
		t.Fatalf("check a fresh login token: %v", err)
	}
	if got.Purpose != PurposeLogin || !got.Expires.Equal(now.Add(10*time.Minute)) {
		t.Errorf("login token %+v: want purpose login, expiring at %s", got, now.Add(10*time.Minute))
	}
	// A different character in the middle: the expiry's bytes change.
	flipped := []byte(login)
	flipped[5] = map[bool]byte{true: 'B', false: 'A'}[flipped[5] == 'A']
	// The last character carries 2 bits and 4 zero pad bits: setting a pad
	// bit spells the same bytes differently, which a lax decoder accepts.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	respelled := login[:len(login)-1] + string(alphabet[strings.IndexByte(alphabet, login[len(login)-1])+1])
	for _, tc := range []struct {
		name, token string
		signer      *Signer
		purpose     Purpose
		at          time.Time
		want        string
	}{
		{"expired", login, s, PurposeLogin, now.Add(10 * time.Minute), "expired at 2026-12-02T12:10:00Z"},
		{"another key", login, other, PurposeLogin, now, "bad signature"},
		{"tampered", string(flipped), s, PurposeLogin, now, "bad signature"},
		{"a session as a login", session, s, PurposeLogin, now, "a session token, want a login token"},
		{"a login as a session", login, s, PurposeSession, now, "a login token, want a session token"},
		{"too short", login[:20], s, PurposeLogin, now, "20 characters, want 78"},
		{"not base64url", strings.Repeat("*", len(login)), s, PurposeLogin, now, "not base64url"},
		{"empty", "", s, PurposeLogin, now, "0 characters"},
		{"re-spelled", respelled, s, PurposeLogin, now, "not base64url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.signer.Check(tc.token, tc.purpose, tc.at)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("check: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestMintLoginBoundsTheLifetime(t *testing.T) {
	s := testSigner(t, 1)
	for _, ttl := range []time.Duration{0, -time.Minute, MaxLoginTTL + time.Second} {
		if _, err := s.MintLogin(time.Now(), ttl); err == nil || !strings.Contains(err.Error(), "lifetime "+ttl.String()) {
			t.Errorf("mint a login token for %s: %v, want an error naming the lifetime", ttl, err)
		}
	}
	if _, err := NewSigner(make([]byte, 16)); err == nil || !strings.Contains(err.Error(), "16 bytes, want 32") {
		t.Errorf("a 16-byte key: %v, want refused naming its size", err)
	}
}

func TestLoginTokenWorksOnce(t *testing.T) {
	now := time.Now()
	s := testSigner(t, 1)
	var used usedTokens
	tok, _ := s.MintLogin(now, time.Minute)
	a, err := s.Check(tok, PurposeLogin, now)
	if err != nil {
		t.Fatal(err)
	}
	if !used.use(a, now) {
		t.Fatal("first use refused")
	}
	if used.use(a, now) {
		t.Fatal("second use of the same token accepted")
	}
	// Expired entries are forgotten: the set does not grow without bound.
	later, _ := s.MintLogin(now.Add(2*time.Minute), time.Minute)
	b, _ := s.Check(later, PurposeLogin, now.Add(2*time.Minute))
	used.use(b, now.Add(2*time.Minute))
	if len(used.seen) != 1 {
		t.Errorf("%d tokens remembered, want only the unexpired one", len(used.seen))
	}
}

// FuzzCheckToken feeds arbitrary strings to the token parser: it must
// never panic, and accept only what the key signed.
func FuzzCheckToken(f *testing.F) {
	s := testSigner(f, 7)
	now := time.Unix(1_800_000_000, 0)
	// A fixed token: every fuzzing process must know the one it may accept.
	tok := s.sign(Token{Purpose: PurposeLogin, Expires: now.Add(time.Minute), ID: [idSize]byte{1, 2, 3}})
	f.Add(tok)
	f.Add("")
	f.Add(strings.Repeat("A", len(tok)))
	f.Add(tok[:len(tok)-1] + "_")
	f.Fuzz(func(t *testing.T, in string) {
		got, err := s.Check(in, PurposeLogin, now)
		if err != nil {
			return
		}
		if in != tok {
			t.Fatalf("accepted a token the key never signed: %q (%+v)", in, got)
		}
	})
}
