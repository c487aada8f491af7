package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/store"
	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

const (
	// DefaultJoinTokenTTL is a join token's lifetime when none is asked for.
	DefaultJoinTokenTTL = time.Hour
	// MaxJoinTokenTTL bounds a join token's lifetime: it is a bearer
	// credential for a host identity.
	MaxJoinTokenTTL = 24 * time.Hour
	// minJoinTokenTTL is etcd's smallest useful lease.
	minJoinTokenTTL = 10 * time.Second
	// DefaultHostCertTTL is the lifetime of a certificate issued at
	// enrollment or renewal: short, as agents renew a third of it before
	// expiry over their own connection.
	DefaultHostCertTTL = 7 * 24 * time.Hour

	tokenBytes    = 32
	maxTokenLen   = 128
	maxCSRLen     = 8 << 10
	tokenPrefixID = "s2s."
)

// errTokenRefused is the one answer to every bad token: wrong, expired,
// used, or for another host. It says nothing about which, nor whether the
// host exists.
var errTokenRefused = status.Error(codes.Unauthenticated, "join token refused: it is wrong, expired, already used or made for another host (make a new one with `s2s-controller token create --host FQDN`)")

// joinToken is the stored form of a token, under tokens/<sha256 of the
// token>: the token itself is never stored.
type joinToken struct {
	Host      string    `json:"host"`
	CreatedBy string    `json:"createdBy"`
	CreatedAt time.Time `json:"createdAt"`
	ExpiresAt time.Time `json:"expiresAt"`
}

func tokenKey(st *store.Store, token string) string {
	sum := sha256.Sum256([]byte(token))
	return st.Key("tokens/" + hex.EncodeToString(sum[:]))
}

// Enrollment implements the join-token services: JoinTokenService for
// admins and EnrollmentService for hosts without an identity yet.
type Enrollment struct {
	pb.UnimplementedEnrollmentServiceServer
	pb.UnimplementedJoinTokenServiceServer
	st          *store.Store
	ca          *pki.CA
	hostCertTTL time.Duration
	now         func() time.Time
	log         *slog.Logger
	// refusals bounds the audit records of refused enrollments, which
	// anyone can cause; beyond it they are only logged.
	refusals *rate.Limiter
}

// NewEnrollment returns the services issuing host identities from ca.
// hostCertTTL is the enrolled certificates' lifetime (default
// DefaultHostCertTTL).
func NewEnrollment(st *store.Store, ca *pki.CA, hostCertTTL time.Duration, log *slog.Logger) *Enrollment {
	if hostCertTTL <= 0 {
		hostCertTTL = DefaultHostCertTTL
	}
	if log == nil {
		log = slog.Default()
	}
	return &Enrollment{st: st, ca: ca, hostCertTTL: hostCertTTL, now: time.Now, log: log, refusals: rate.NewLimiter(2, 20)}
}

// JoinTokens returns the admin half, for registration.
func (e *Enrollment) JoinTokens() pb.JoinTokenServiceServer { return joinTokenServer{e} }

type joinTokenServer struct{ *Enrollment }

// CreateJoinToken implements the RPC; see the proto for its contract.
func (e joinTokenServer) CreateJoinToken(ctx context.Context, req *pb.CreateJoinTokenRequest) (*pb.CreateJoinTokenResponse, error) {
	host, err := pki.NormalizeHost(req.GetHost())
	if err != nil {
		return nil, invalid("host", req.GetHost(), err.Error())
	}
	ttl := DefaultJoinTokenTTL
	if req.Ttl != nil {
		ttl = req.GetTtl().AsDuration()
		if ttl < minJoinTokenTTL || ttl > MaxJoinTokenTTL {
			return nil, invalid("ttl", ttl.String(), fmt.Sprintf("between %s and %s", minJoinTokenTTL, MaxJoinTokenTTL))
		}
	}
	raw := make([]byte, tokenBytes)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("draw join token: %w", err)
	}
	token := tokenPrefixID + base64.RawURLEncoding.EncodeToString(raw)
	now := e.now()
	who := callerName(ctx)
	rec, _ := json.Marshal(joinToken{Host: host, CreatedBy: who, CreatedAt: now.UTC(), ExpiresAt: now.Add(ttl).UTC()})
	cli := e.st.Client()
	lease, err := cli.Grant(ctx, int64((ttl+time.Second-1)/time.Second))
	if err != nil {
		return nil, fmt.Errorf("create join token for %s: grant lease: %w", host, err)
	}
	audit := auditJSON(map[string]any{"kind": "token", "who": who, "from": peerAddr(ctx), "when": now.UTC(), "host": host,
		"what": fmt.Sprintf("create join token for %s, valid until %s", host, now.Add(ttl).UTC().Format(time.RFC3339)), "result": "ok"})
	if _, err := cli.Txn(ctx).Then(
		clientv3.OpPut(tokenKey(e.st, token), string(rec), clientv3.WithLease(lease.ID)),
		clientv3.OpPut(store.AuditKey(e.st, "token", now), audit),
	).Commit(); err != nil {
		return nil, fmt.Errorf("create join token for %s: %w", host, err)
	}
	e.log.Info("join token created", "host", host, "by", who, "expires", now.Add(ttl).UTC())
	return &pb.CreateJoinTokenResponse{Token: token, CaPin: pki.CAPin(e.ca.Cert), Host: host, ExpiresAt: timestamppb.New(now.Add(ttl))}, nil
}

// Enroll implements the RPC; see the proto for its contract.
func (e *Enrollment) Enroll(ctx context.Context, req *pb.EnrollRequest) (*pb.EnrollResponse, error) {
	host, err := pki.NormalizeHost(req.GetHost())
	if err != nil {
		return nil, invalid("host", req.GetHost(), err.Error())
	}
	if len(req.GetCsr()) > maxCSRLen {
		return nil, invalid("csr", fmt.Sprintf("%d bytes", len(req.GetCsr())), fmt.Sprintf("at most %d bytes", maxCSRLen))
	}
	token := req.GetToken()
	now := e.now()
	refuse := func(reason string) error {
		// The reason goes to the log and the audit trail, never to the caller.
		e.log.Warn("enrollment refused", "host", host, "from", peerAddr(ctx), "reason", reason)
		e.audit(ctx, now, host, "refused: "+reason)
		return errTokenRefused
	}
	if len(token) == 0 || len(token) > maxTokenLen {
		return nil, refuse("malformed token")
	}
	key := tokenKey(e.st, token)
	resp, err := e.st.Client().Get(ctx, key)
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, refuse("unknown, expired or used token")
	}
	kv := resp.Kvs[0]
	var rec joinToken
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, refuse("undecodable token record")
	}
	if subtle.ConstantTimeCompare([]byte(rec.Host), []byte(host)) != 1 {
		return nil, refuse("token made for another host")
	}
	if !now.Before(rec.ExpiresAt) {
		return nil, refuse("expired token") // the lease ends it soon; not a second later
	}
	if err := pki.CheckHostCSR(req.GetCsr(), host); err != nil {
		return nil, invalid("csr", host, err.Error())
	}
	certPEM, err := e.ca.SignHostCSR(req.GetCsr(), host, now, e.hostCertTTL)
	if err != nil {
		return nil, invalid("csr", host, err.Error())
	}
	leaf, err := parsePEMCert(certPEM)
	if err != nil {
		return nil, err
	}
	// Consumed with the audit record, only if nobody used it meanwhile.
	audit := auditJSON(map[string]any{"kind": "token", "who": "host/" + host, "from": peerAddr(ctx), "when": now.UTC(), "host": host,
		"what":   fmt.Sprintf("enroll %s with a join token made by %s", host, rec.CreatedBy),
		"result": "ok", "changes": []string{"issued certificate serial " + leaf.SerialNumber.Text(16) + ", valid until " + leaf.NotAfter.UTC().Format(time.RFC3339)}})
	// `host list` shows the identity's expiry from now on; last seen stays
	// empty until the host connects.
	idRec, _ := json.Marshal(identityRecord{NotAfter: leaf.NotAfter.UTC(), Serial: leaf.SerialNumber.Text(16)})
	identity := string(idRec)
	txn, err := e.st.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
		Then(clientv3.OpDelete(key), clientv3.OpPut(store.AuditKey(e.st, "token", now), audit),
			clientv3.OpPut(e.st.Key("identities/"+host), identity)).
		Commit()
	if err != nil {
		return nil, err
	}
	if !txn.Succeeded {
		return nil, refuse("token used concurrently")
	}
	e.log.Info("host enrolled", "host", host, "from", peerAddr(ctx), "not_after", leaf.NotAfter.UTC())
	return &pb.EnrollResponse{CertificatePem: certPEM, CaPem: e.ca.CertPEM(), NotAfter: timestamppb.New(leaf.NotAfter)}, nil
}

// audit records a refused enrollment; best effort, as the refusal stands
// whether or not the store takes the record.
func (e *Enrollment) audit(ctx context.Context, now time.Time, host, result string) {
	if !e.refusals.Allow() {
		return // logged by the caller
	}
	rec := auditJSON(map[string]any{"kind": "token", "who": "anonymous", "from": peerAddr(ctx), "when": now.UTC(), "host": host,
		"what": "enroll " + host + " with a join token", "result": result})
	if _, err := e.st.Client().Put(ctx, store.AuditKey(e.st, "token", now), rec); err != nil {
		e.log.Warn("audit record of a refused enrollment not stored", "host", host, "error", err)
	}
}

func auditJSON(rec map[string]any) string {
	b, _ := json.Marshal(rec)
	return string(b)
}

func parsePEMCert(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("issued certificate is not PEM")
	}
	return x509.ParseCertificate(block.Bytes)
}
