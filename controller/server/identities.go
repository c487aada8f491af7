package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/pagetoken"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// ErrRevoked is the cause with which a revoked host's streams end.
var ErrRevoked = errors.New("the host's certificate was revoked")

// revocation is the stored form of a deny-list entry, revoked/<fqdn>.
type revocation struct {
	RevokedAt time.Time `json:"revokedAt"`
	By        string    `json:"by"`
}

// identityRecord is what the controller last saw of a host's certificate,
// identities/<fqdn>.
type identityRecord struct {
	NotAfter time.Time `json:"notAfter"`
	Serial   string    `json:"serial"`
	LastSeen time.Time `json:"lastSeen"`
}

// Identities is the deny list of host identities, kept in etcd and
// watched, so that every replica refuses a revoked certificate at the
// handshake and at every call, and ends the host's streams as soon as the
// revocation is written. It also records each host's certificate expiry.
type Identities struct {
	st  *store.Store
	log *slog.Logger
	// writes batches the records seen writes, as the hub's writer does
	// the streams' writes: a reconnecting fleet's records go together.
	writes *writer

	mu      sync.Mutex
	revoked map[string]time.Time
	// streams lists each host's open streams (nearly always one).
	streams map[string]*tracked
	// written is when seen last stored each host's record, and for which
	// certificate, so that an agent reconnecting in a loop costs no write
	// per stream.
	written map[string]seenWrite
}

type seenWrite struct {
	serial string
	at     time.Time
}

// seenEvery is how often a host's unchanged identity record is refreshed.
const seenEvery = time.Minute

// tracked is an open stream of a host, in its host's list.
type tracked struct {
	host     string
	issuedAt time.Time
	cancel   context.CancelCauseFunc
	next     *tracked
}

// memory is this replica's deny list and the hosts with open streams
// here, copied: what ListHostIdentities answers from while etcd does not.
func (ids *Identities) memory() (revoked map[string]time.Time, open map[string]bool) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	open = make(map[string]bool, len(ids.streams))
	for host := range ids.streams {
		open[host] = true
	}
	return maps.Clone(ids.revoked), open
}

// NewIdentities loads the deny list from st; Run keeps it current.
func NewIdentities(ctx context.Context, st *store.Store, log *slog.Logger) (*Identities, int64, error) {
	if log == nil {
		log = slog.Default()
	}
	ids := &Identities{st: st, log: log, writes: newWriter(st), revoked: map[string]time.Time{}, streams: map[string]*tracked{}, written: map[string]seenWrite{}}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second) // a store without quorum fails the start, clearly
	defer cancel()
	rev, err := ids.reload(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("load the deny list: %w", err)
	}
	return ids, rev, nil
}

// Run watches the deny list from after revision rev until ctx ends.
func (ids *Identities) Run(ctx context.Context, rev int64) error {
	prefix := ids.st.Key("revoked/")
	for ctx.Err() == nil {
		wch := ids.st.Client().Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for wr := range wch {
			if err := wr.Err(); err != nil {
				ids.log.Warn("deny list watch", "error", err)
				if wr.CompactRevision > 0 {
					// History is gone: read the whole list again and go on from there.
					if r, err := ids.reload(ctx); err == nil {
						rev = r
					}
				}
				break
			}
			for _, ev := range wr.Events {
				rev = ev.Kv.ModRevision
				if ev.Type == clientv3.EventTypeDelete {
					ids.mu.Lock()
					delete(ids.revoked, strings.TrimPrefix(string(ev.Kv.Key), prefix))
					ids.mu.Unlock()
					continue
				}
				ids.apply(string(ev.Kv.Key), ev.Kv.Value)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second): // the watch broke (no leader): resume from rev
		}
	}
	return nil
}

// reload reads the whole deny list and returns its revision.
func (ids *Identities) reload(ctx context.Context) (int64, error) {
	resp, err := ids.st.Client().Get(ctx, ids.st.Key("revoked/"), clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	for _, kv := range resp.Kvs {
		ids.apply(string(kv.Key), kv.Value)
	}
	return resp.Header.Revision, nil
}

// apply records one deny-list entry and ends the streams it revokes.
func (ids *Identities) apply(key string, val []byte) {
	host := strings.TrimPrefix(key, ids.st.Key("revoked/"))
	var r revocation
	if err := json.Unmarshal(val, &r); err != nil {
		ids.log.Warn("undecodable deny list entry: revoking the host from now", "host", host, "error", err)
		r.RevokedAt = time.Now()
	}
	ids.mu.Lock()
	defer ids.mu.Unlock()
	ids.revoked[host] = r.RevokedAt
	for t := ids.streams[host]; t != nil; t = t.next {
		if !t.issuedAt.After(r.RevokedAt) {
			t.cancel(ErrRevoked)
		}
	}
}

// Check refuses a host certificate issued before its host was revoked;
// other certificates pass.
func (ids *Identities) Check(cert *x509.Certificate) error {
	if cert == nil {
		return nil
	}
	id, err := pki.IdentityFromCert(cert)
	if err != nil || id.Kind != pki.KindHost {
		return nil
	}
	ids.mu.Lock()
	at, ok := ids.revoked[id.Name]
	ids.mu.Unlock()
	if ok && !pki.IssuedAt(cert).After(at) {
		return fmt.Errorf("the certificate of %s (serial %s) was revoked at %s", id, cert.SerialNumber.Text(16), at.UTC().Format(time.RFC3339))
	}
	return nil
}

// track registers a host's stream so that a revocation ends it; untrack
// unregisters it.
func (ids *Identities) track(host string, cert *x509.Certificate, cancel context.CancelCauseFunc) *tracked {
	t := &tracked{host: host, issuedAt: pki.IssuedAt(cert), cancel: cancel}
	ids.mu.Lock()
	defer ids.mu.Unlock()
	t.next = ids.streams[host]
	ids.streams[host] = t
	return t
}

// untrack unregisters a stream track registered.
func (ids *Identities) untrack(t *tracked) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	if head := ids.streams[t.host]; head == t {
		if t.next == nil {
			delete(ids.streams, t.host)
		} else {
			ids.streams[t.host] = t.next
		}
		return
	}
	for p := ids.streams[t.host]; p != nil; p = p.next {
		if p.next == t {
			p.next = t.next
			return
		}
	}
}

// seen records the certificate a host connected with (best effort: the
// record is for `host list`, not for any decision): when the certificate
// changed, else at most every seenEvery. The write is queued, not waited
// for: a fleet reconnecting after a restart would otherwise open no
// stream before etcd had stored its last-seen times, and a slow store
// delays no stream.
func (ids *Identities) seen(host string, cert *x509.Certificate) {
	serial := cert.SerialNumber.Text(16)
	now := time.Now()
	ids.mu.Lock()
	w, ok := ids.written[host]
	if ok && w.serial == serial && now.Sub(w.at) < seenEvery {
		ids.mu.Unlock()
		return
	}
	ids.written[host] = seenWrite{serial: serial, at: now}
	ids.mu.Unlock()
	rec, _ := json.Marshal(identityRecord{NotAfter: cert.NotAfter.UTC(), Serial: serial, LastSeen: now.UTC()})
	if !ids.writes.post(store.BatchPut{Key: "identities/" + host, Value: rec}) {
		ids.mu.Lock()
		if ids.written[host].at.Equal(now) {
			delete(ids.written, host) // the next stream tries again
		}
		ids.mu.Unlock()
		ids.log.Debug("record host identity: the store is behind; not recorded this time", "host", host)
	}
}

// HostIdentityService implements pb.HostIdentityServiceServer.
type HostIdentityService struct {
	pb.UnimplementedHostIdentityServiceServer
	ids *Identities
	hub *Hub
	ca  *pki.CA
	ttl time.Duration
}

// NewHostIdentityService renews from ca (certificates valid ttl, default
// DefaultHostCertTTL), revokes into ids and lists with the hub's view.
func NewHostIdentityService(ids *Identities, hub *Hub, ca *pki.CA, ttl time.Duration) *HostIdentityService {
	if ttl <= 0 {
		ttl = DefaultHostCertTTL
	}
	return &HostIdentityService{ids: ids, hub: hub, ca: ca, ttl: ttl}
}

// RenewHostCertificate implements the RPC; see the proto for its contract.
func (s *HostIdentityService) RenewHostCertificate(ctx context.Context, req *pb.RenewHostCertificateRequest) (*pb.RenewHostCertificateResponse, error) {
	id, err := pki.IdentityFromContext(ctx)
	if err != nil || id.Kind != pki.KindHost {
		return nil, status.Error(codes.PermissionDenied, "renew: only an agent renews, its own certificate")
	}
	if len(req.GetCsr()) > maxCSRLen {
		return nil, invalid("csr", fmt.Sprintf("%d bytes", len(req.GetCsr())), fmt.Sprintf("at most %d bytes", maxCSRLen))
	}
	if err := pki.CheckHostCSR(req.GetCsr(), id.Name); err != nil {
		return nil, invalid("csr", id.Name, err.Error())
	}
	now := time.Now()
	certPEM, err := s.ca.SignHostCSR(req.GetCsr(), id.Name, now, s.ttl)
	if err != nil {
		return nil, invalid("csr", id.Name, err.Error())
	}
	leaf, err := parsePEMCert(certPEM)
	if err != nil {
		return nil, err
	}
	// LastSeen stays what the last connection set: it says when the host
	// last opened a stream, which a renewal is not.
	st := s.ids.st
	var prev identityRecord
	if got, err := st.Client().Get(ctx, st.Key("identities/"+id.Name)); err == nil && len(got.Kvs) > 0 {
		_ = json.Unmarshal(got.Kvs[0].Value, &prev)
	}
	rec, _ := json.Marshal(identityRecord{NotAfter: leaf.NotAfter.UTC(), Serial: leaf.SerialNumber.Text(16), LastSeen: prev.LastSeen})
	audit := auditJSON(map[string]any{"kind": "identity", "who": id.String(), "from": peerAddr(ctx), "when": now.UTC(), "host": id.Name,
		"what": "renew the certificate of " + id.Name, "result": "ok",
		"changes": []string{"issued serial " + leaf.SerialNumber.Text(16) + ", valid until " + leaf.NotAfter.UTC().Format(time.RFC3339)}})
	if _, err := st.Client().Txn(ctx).Then(
		clientv3.OpPut(st.Key("identities/"+id.Name), string(rec)),
		clientv3.OpPut(store.AuditKey(st, "identity", now), audit),
	).Commit(); err != nil {
		return nil, err
	}
	return &pb.RenewHostCertificateResponse{CertificatePem: certPEM, CaPem: s.ca.CertPEM(), NotAfter: timestamppb.New(leaf.NotAfter)}, nil
}

// RevokeHost implements the RPC; see the proto for its contract.
func (s *HostIdentityService) RevokeHost(ctx context.Context, req *pb.RevokeHostRequest) (*pb.RevokeHostResponse, error) {
	host, err := pki.NormalizeHost(req.GetHost())
	if err != nil {
		return nil, invalid("host", req.GetHost(), err.Error())
	}
	st := s.ids.st
	key := st.Key("revoked/" + host)
	now := time.Now()
	who := callerName(ctx)
	val, _ := json.Marshal(revocation{RevokedAt: now.UTC(), By: who})
	audit := auditJSON(map[string]any{"kind": "identity", "who": who, "from": peerAddr(ctx), "when": now.UTC(), "host": host,
		"what": "revoke host " + host, "result": "ok"})
	txn, err := st.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val)), clientv3.OpPut(store.AuditKey(st, "identity", now), audit)).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return nil, err
	}
	if !txn.Succeeded {
		var r revocation
		if kvs := txn.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			_ = json.Unmarshal(kvs[0].Value, &r)
		}
		return &pb.RevokeHostResponse{RevokedAt: timestamppb.New(r.RevokedAt), AlreadyRevoked: true}, nil
	}
	s.ids.apply(key, val) // at once here; the watch brings it to every other replica
	s.hub.log.Warn("host revoked", "host", host, "by", who)
	return &pb.RevokeHostResponse{RevokedAt: timestamppb.New(now)}, nil
}

// ListHostIdentities implements the RPC; see the proto for its contract.
// A page merges three sorted sources (identities/, revoked/, the
// topology's hosts), each read from the cursor on and bounded by the
// page size.
func (s *HostIdentityService) ListHostIdentities(ctx context.Context, req *pb.ListHostIdentitiesRequest) (*pb.ListHostIdentitiesResponse, error) {
	size, err := pagetoken.Size(req.GetPageSize(), 500, 1000)
	if err != nil {
		return nil, err
	}
	after := ""
	if tok := req.GetPageToken(); tok != "" {
		if after, err = pagetoken.Decode("ListHostIdentities", tok); err != nil {
			return nil, err
		}
	}
	st := s.ids.st
	byHost := map[string]*pb.HostIdentity{}
	get := func(h string) *pb.HostIdentity {
		if byHost[h] == nil {
			byHost[h] = &pb.HostIdentity{Host: h}
		}
		return byHost[h]
	}
	more := false
	stale, err := readOrStale(ctx, s.hub, 0, func(ctx context.Context) error {
		clear(byHost)
		more = false
		from := func(rel string) ([]*mvccpb.KeyValue, error) {
			p := st.Key(rel)
			start := p
			if after != "" {
				start = p + after + "\x00"
			}
			resp, err := st.Client().Get(ctx, start, clientv3.WithRange(clientv3.GetPrefixRangeEnd(p)), clientv3.WithLimit(int64(size)))
			if err != nil {
				return nil, err
			}
			more = more || resp.More
			return resp.Kvs, nil
		}
		ids, err := from("identities/")
		if err != nil {
			return err
		}
		for _, kv := range ids {
			var r identityRecord
			if json.Unmarshal(kv.Value, &r) != nil {
				continue
			}
			h := get(strings.TrimPrefix(string(kv.Key), st.Key("identities/")))
			h.NotAfter, h.Serial = timestamppb.New(r.NotAfter), r.Serial
			if !r.LastSeen.IsZero() {
				h.LastSeen = timestamppb.New(r.LastSeen)
			}
		}
		rev, err := from("revoked/")
		if err != nil {
			return err
		}
		for _, kv := range rev {
			var r revocation
			_ = json.Unmarshal(kv.Value, &r)
			get(strings.TrimPrefix(string(kv.Key), st.Key("revoked/"))).RevokedAt = timestamppb.New(r.RevokedAt)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var open map[string]bool
	if stale != nil {
		// etcd did not answer: the deny list and the open streams, as
		// this replica holds them, stand in for what it would have said.
		clear(byHost)
		var revoked map[string]time.Time
		revoked, open = s.ids.memory()
		for host, at := range revoked {
			if host > after {
				get(host).RevokedAt = timestamppb.New(at)
			}
		}
		for host := range open {
			if host > after {
				get(host)
			}
		}
		stale.Reason += "; certificate expiry, serial and last-seen time are kept only in etcd and are left out"
	}
	snap := s.hub.snapshot()
	if snap.topo != nil {
		i, _ := slices.BinarySearch(snap.topo.order, after)
		if i < len(snap.topo.order) && snap.topo.order[i] == after {
			i++
		}
		hosts := snap.topo.order[i:]
		if len(hosts) > size {
			hosts, more = hosts[:size], true
		}
		for _, host := range hosts {
			get(host)
		}
		for host, h := range byHost {
			if cfg := snap.topo.hosts[host]; cfg != nil {
				h.Deployment = cfg.GetDeployment()
			}
		}
	}
	out := &pb.ListHostIdentitiesResponse{Stale: stale}
	for host, h := range byHost {
		h.Connected = snap.connected[host] || snap.present[host] || open[host]
		out.Hosts = append(out.Hosts, h)
	}
	sort.Slice(out.Hosts, func(i, j int) bool { return out.Hosts[i].GetHost() < out.Hosts[j].GetHost() })
	if len(out.Hosts) > size {
		// The sources together hold more than a page: the rest on the next.
		out.Hosts, more = out.Hosts[:size], true
	}
	if more && len(out.Hosts) > 0 {
		out.NextPageToken = pagetoken.Encode("ListHostIdentities", out.Hosts[len(out.Hosts)-1].GetHost())
	}
	return out, nil
}
