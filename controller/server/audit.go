package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/pagetoken"
	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

const (
	defaultAuditPage = 100
	maxAuditPage     = 1000
)

// auditEntry is the stored form of an audit record (JSON), shared by every
// writer: the topology apply, secret put, join tokens and refused calls.
// Older records carry "changes" and no "what"; reading tolerates both.
type auditEntry struct {
	Kind    string    `json:"kind"`
	Who     string    `json:"who"`
	From    string    `json:"from"`
	When    time.Time `json:"when"`
	What    string    `json:"what"`
	Result  string    `json:"result"`
	Host    string    `json:"host"`
	Changes []string  `json:"changes"`
}

// AuditService implements pb.AuditServiceServer.
type AuditService struct {
	pb.UnimplementedAuditServiceServer
	hub *Hub
}

// NewAuditService reads the audit trail of the hub's store, and of its
// last view while etcd does not answer.
func NewAuditService(hub *Hub) *AuditService { return &AuditService{hub: hub} }

// ListAuditRecords implements the RPC; see the proto for its contract.
func (s *AuditService) ListAuditRecords(ctx context.Context, req *pb.ListAuditRecordsRequest) (*pb.ListAuditRecordsResponse, error) {
	size, err := pagetoken.Size(req.GetPageSize(), defaultAuditPage, maxAuditPage)
	if err != nil {
		return nil, err
	}
	from := int64(0)
	if t := req.GetPageToken(); t != "" {
		c, err := pagetoken.Decode("ListAuditRecords", t)
		if err != nil {
			return nil, err
		}
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n <= 0 {
			return nil, invalid("page_token", t, "a next_page_token from a previous response")
		}
		from = n
	}
	var since time.Time
	if req.Since != nil {
		since = req.GetSince().AsTime()
	}
	keep := func(r *pb.AuditRecord) bool {
		return (since.IsZero() || !r.GetWhen().AsTime().Before(since)) && (req.GetWho() == "" || r.GetWho() == req.GetWho())
	}
	var resp *pb.ListAuditRecordsResponse
	stale, err := readOrStale(ctx, s.hub, 0, func(ctx context.Context) error {
		var err error
		resp, err = s.page(ctx, size, from, keep)
		return err
	})
	if err != nil || stale == nil {
		return resp, err
	}
	// The records of the view from the cursor on, as the same listing.
	items, partial := viewFrom(s.hub.view, keptAudit, uint64(from))
	resp = &pb.ListAuditRecordsResponse{Stale: stale}
	for _, k := range items {
		if r := decodeAudit(k.val, int64(k.id)); keep(r) {
			resp.Records = append(resp.Records, r)
		}
		if len(resp.Records) == size {
			resp.NextPageToken = pagetoken.Encode("ListAuditRecords", strconv.FormatUint(k.id+1, 10))
			break
		}
	}
	if partial {
		keepsOnly(stale, viewAudit, "audit records")
	}
	return resp, nil
}

// page reads one page of the trail from etcd: up to size records kept by
// keep, from create revision from on (0: the start).
func (s *AuditService) page(ctx context.Context, size int, from int64, keep func(*pb.AuditRecord) bool) (*pb.ListAuditRecordsResponse, error) {
	st := s.hub.cfg.Store
	prefix := auditPrefix(st)
	resp := &pb.ListAuditRecordsResponse{}
	// Filters may skip records, so read batches until the page is full or
	// the trail ends; each batch is bounded.
	for batches := 0; batches < 20; batches++ {
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend),
			clientv3.WithLimit(int64(size))}
		if from > 0 {
			opts = append(opts, clientv3.WithMinCreateRev(from))
		}
		got, err := st.Client().Get(ctx, prefix, opts...)
		if err != nil {
			return nil, err
		}
		for _, kv := range got.Kvs {
			from = kv.CreateRevision + 1
			r := decodeAudit(kv.Value, kv.CreateRevision)
			if !keep(r) {
				continue
			}
			resp.Records = append(resp.Records, r)
			if len(resp.Records) == size {
				break
			}
		}
		if len(resp.Records) == size {
			// Full: more may follow (a last page may then be empty).
			resp.NextPageToken = pagetoken.Encode("ListAuditRecords", strconv.FormatInt(from, 10))
			return resp, nil
		}
		if !got.More {
			return resp, nil
		}
	}
	resp.NextPageToken = pagetoken.Encode("ListAuditRecords", strconv.FormatInt(from, 10))
	return resp, nil
}

// auditPrefix is the key prefix of the audit trail.
func auditPrefix(st *store.Store) string { return st.Key("audit/") }

func decodeAudit(val []byte, rev int64) *pb.AuditRecord {
	var e auditEntry
	if err := json.Unmarshal(val, &e); err != nil {
		return &pb.AuditRecord{Kind: "unreadable", What: "an audit record that does not decode: " + err.Error(), Revision: rev}
	}
	what := e.What
	details := e.Changes
	if what == "" {
		switch {
		case e.Kind == "topology":
			what = fmt.Sprintf("apply topology (%d changes)", len(e.Changes))
		case len(e.Changes) > 0:
			what, details = e.Changes[0], e.Changes[1:]
		}
	}
	result := e.Result
	if result == "" {
		result = "ok"
	}
	return &pb.AuditRecord{Kind: e.Kind, Who: e.Who, From: e.From, When: timestamppb.New(e.When), What: what, Result: result,
		Revision: rev, Details: details}
}

// RefusalAuditor records calls refused for the caller's identity or role
// (PERMISSION_DENIED, or UNAUTHENTICATED for a revoked certificate, from a
// verified identity) as audit records. Anonymous
// refusals are not recorded: anyone could fill the store with them. Records
// are rate-limited for the same reason; what is dropped is logged.
type RefusalAuditor struct {
	st      *store.Store
	log     *slog.Logger
	limiter *rate.Limiter
	// anonymous bounds the records anyone can cause without a verified
	// identity (refused handshakes), more tightly.
	anonymous *rate.Limiter
}

// NewRefusalAuditor writes refusal records into st: at most 20 a second
// for verified identities, 2 a second for refused handshakes.
func NewRefusalAuditor(st *store.Store, log *slog.Logger) *RefusalAuditor {
	if log == nil {
		log = slog.Default()
	}
	return &RefusalAuditor{st: st, log: log, limiter: rate.NewLimiter(20, 100), anonymous: rate.NewLimiter(2, 20)}
}

// Record is an Access.Audit hook.
func (r *RefusalAuditor) Record(ctx context.Context, method string, err error) {
	if c := status.Code(err); c != codes.PermissionDenied && c != codes.Unauthenticated {
		return
	}
	id, idErr := pki.IdentityFromContext(ctx)
	if idErr != nil {
		return
	}
	if !r.limiter.Allow() {
		r.log.Warn("refused call not audited: too many refusals", "method", method, "who", id.String())
		return
	}
	now := time.Now()
	rec, _ := json.Marshal(auditEntry{Kind: "refused", Who: id.String(), From: peerAddr(ctx), When: now.UTC(), What: "call " + method,
		Result: "refused: " + status.Convert(err).Message()})
	// The call's own context may be ending; the record is short work.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if _, err := r.st.Client().Put(wctx, store.AuditKey(r.st, "refused", now), string(rec)); err != nil {
		r.log.Warn("refused call not audited", "method", method, "who", id.String(), "error", err)
	}
}

// ServerCredentials wraps the controller's TLS credentials so that a
// handshake refused over a client certificate — expired, from another CA,
// revoked — leaves an audit record naming the identity the certificate
// claims (unverified, so marked as such) and the peer's address.
// Handshakes that fail for other reasons (a port scan, a client that
// trusts another CA) are not recorded.
func (r *RefusalAuditor) ServerCredentials(c credentials.TransportCredentials) credentials.TransportCredentials {
	return auditingCreds{TransportCredentials: c, r: r}
}

type auditingCreds struct {
	credentials.TransportCredentials
	r *RefusalAuditor
}

func (c auditingCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		c.r.handshakeRefused(raw.RemoteAddr(), err)
	}
	return conn, info, err
}

func (c auditingCreds) Clone() credentials.TransportCredentials {
	return auditingCreds{TransportCredentials: c.TransportCredentials.Clone(), r: c.r}
}

// handshakeRefused records a refused client certificate, rate-limited as
// every refusal record is.
func (r *RefusalAuditor) handshakeRefused(remote net.Addr, err error) {
	var claimed string
	var cve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &cve) && len(cve.UnverifiedCertificates) > 0:
		claimed = claimedIdentity(cve.UnverifiedCertificates[0])
	case strings.Contains(err.Error(), "revoked"):
		claimed = "a revoked host certificate"
	default:
		return
	}
	from := ""
	if remote != nil {
		from = remote.String()
	}
	if !r.anonymous.Allow() {
		r.log.Warn("refused handshake not audited: too many refusals", "from", from, "error", err)
		return
	}
	now := time.Now()
	rec, _ := json.Marshal(auditEntry{Kind: "refused", Who: claimed, From: from, When: now.UTC(), What: "TLS handshake",
		Result: "refused: " + err.Error()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := r.st.Client().Put(ctx, store.AuditKey(r.st, "refused", now), string(rec)); err != nil {
		r.log.Warn("refused handshake not audited", "from", from, "error", err)
	}
}

// claimedIdentity names what an unverified certificate says it is.
func claimedIdentity(c *x509.Certificate) string {
	if id, err := pki.IdentityFromCert(c); err == nil {
		return "unverified " + id.String()
	}
	return fmt.Sprintf("unverified certificate %q from %q", c.Subject.CommonName, c.Issuer.CommonName)
}
