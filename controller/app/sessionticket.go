package app

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/secretbox"
	"github.com/s2strust/s2strust/internal/sessionticket"
)

// ticketRootKey is where the root of the TLS session ticket keys lives in
// the store (under the prefix).
const ticketRootKey = "pki/session-ticket-root"

// sealedTicketRoot is the stored root, sealed with the secret key like the
// CA's private key: whoever holds it can mint a TLS session for any
// identity, so etcd alone must not yield it.
type sealedTicketRoot struct {
	SealedRoot []byte    `json:"sealedRoot"`
	CreatedAt  time.Time `json:"createdAt"`
}

// sharedTicketKeys returns the session ticket keys every replica on this
// store uses (internal/sessionticket), from the root the first replica
// stored. With them an agent resumes its TLS session with a restarted
// controller or another replica instead of a full handshake, which is
// what bounds the resync of a whole fleet after a restart.
func sharedTicketKeys(ctx context.Context, st *store.Store, secretKey []byte) (*sessionticket.Keys, error) {
	key := st.Key(ticketRootKey)
	val, _, err := loadOrCreate(ctx, st, key, func() ([]byte, error) {
		root, err := sessionticket.NewRoot()
		if err != nil {
			return nil, err
		}
		sealed, err := secretbox.Seal(secretKey, root, []byte(key))
		if err != nil {
			return nil, fmt.Errorf("store the session ticket root: %w", err)
		}
		return json.Marshal(sealedTicketRoot{SealedRoot: sealed, CreatedAt: time.Now().UTC()})
	})
	if err != nil {
		return nil, fmt.Errorf("session ticket root: %w", err)
	}
	var s sealedTicketRoot
	if err := json.Unmarshal(val, &s); err != nil {
		return nil, fmt.Errorf("session ticket root at %s: decode: %w", key, err)
	}
	root, err := secretbox.Open(secretKey, s.SealedRoot, []byte(key))
	if err != nil {
		return nil, fmt.Errorf("session ticket root at %s: %w (every replica on one etcd cluster needs the same --secret-key file)", key, err)
	}
	keys, err := sessionticket.New(root)
	if err != nil {
		return nil, fmt.Errorf("session ticket root at %s: %w", key, err)
	}
	return keys, nil
}
