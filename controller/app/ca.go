package app

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/secretbox"
)

// caKey is where the fleet's CA lives in the store (under the prefix).
const caKey = "pki/ca"

// sealedCA is the stored form of the fleet's CA: the certificate in the
// clear, the private key sealed with the secret key (AES-256-GCM, bound to
// the etcd key name), so etcd alone never yields the key.
type sealedCA struct {
	CertPEM   string    `json:"certPem"`
	SealedKey []byte    `json:"sealedKey"`
	CreatedAt time.Time `json:"createdAt"`
}

// SharedCA returns the CA that every controller replica on this store
// uses. The first replica to start stores one, made by candidate, with a
// compare-and-swap on the key's creation; every later one (and every
// replica that lost the race) loads the stored CA. A CA that the secret key
// does not open is an error naming the key: replicas need the same
// --secret-key.
func SharedCA(ctx context.Context, st *store.Store, secretKey []byte, candidate func() (*pki.CA, error)) (ca *pki.CA, created bool, err error) {
	key := st.Key(caKey)
	var cand *pki.CA
	val, created, err := loadOrCreate(ctx, st, key, func() ([]byte, error) {
		c, err := candidate()
		if err != nil {
			return nil, err
		}
		cand = c
		keyPEM, err := cand.KeyPEM()
		if err != nil {
			return nil, fmt.Errorf("store the shared CA: %w", err)
		}
		sealed, err := secretbox.Seal(secretKey, keyPEM, []byte(key))
		if err != nil {
			return nil, fmt.Errorf("store the shared CA: %w", err)
		}
		return json.Marshal(sealedCA{CertPEM: string(cand.CertPEM()), SealedKey: sealed, CreatedAt: time.Now().UTC()})
	})
	if err != nil {
		return nil, false, err
	}
	if created {
		return cand, true, nil
	}
	ca, err = openCA(key, val, secretKey)
	return ca, false, err
}

// loadOrCreate returns the value at key, or stores the one create makes
// when there is none, with a compare-and-swap on the key's creation so
// that of replicas starting at once one wins and every other loads what it
// stored. created says this call stored it.
func loadOrCreate(ctx context.Context, st *store.Store, key string, create func() ([]byte, error)) (val []byte, created bool, err error) {
	resp, err := st.Client().Get(ctx, key)
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) > 0 {
		return resp.Kvs[0].Value, false, nil
	}
	val, err = create()
	if err != nil {
		return nil, false, err
	}
	txn, err := st.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return nil, false, fmt.Errorf("store %s: %w", key, err)
	}
	if txn.Succeeded {
		return val, true, nil
	}
	kvs := txn.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, false, fmt.Errorf("store %s: lost the race but found nothing", key)
	}
	return kvs[0].Value, false, nil
}

func openCA(key string, val, secretKey []byte) (*pki.CA, error) {
	var s sealedCA
	if err := json.Unmarshal(val, &s); err != nil {
		return nil, fmt.Errorf("shared CA at %s: decode: %w", key, err)
	}
	keyPEM, err := secretbox.Open(secretKey, s.SealedKey, []byte(key))
	if err != nil {
		return nil, fmt.Errorf("shared CA at %s: %w (every replica on one etcd cluster needs the same --secret-key file)", key, err)
	}
	ca, err := pki.LoadCA([]byte(s.CertPEM), keyPEM)
	if err != nil {
		return nil, fmt.Errorf("shared CA at %s: %w", key, err)
	}
	return ca, nil
}
