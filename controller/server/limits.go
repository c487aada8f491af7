package server

import (
	"fmt"
	"strconv"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// AgentLimits bound what one agent identity may cost the controller, so
// that no agent — broken or hostile — can starve the fleet: fill etcd,
// hold streams open without a Hello, or make the controller decrypt and
// send key material in a loop. Zero fields take the defaults.
type AgentLimits struct {
	// HelloTimeout is how long a new stream may take to say Hello before
	// it is closed (default 10s).
	HelloTimeout time.Duration
	// ReplaceTimeout is how long a second stream of an identity waits for
	// the first to end before giving up (default 10s).
	ReplaceTimeout time.Duration
	// MaxMessageBytes caps each agent message, encoded; a status report is
	// the largest an honest agent sends (default 64 KiB).
	MaxMessageBytes int
	// MaxStringBytes caps every string field of an agent message (default
	// 4 KiB): long enough for any error text an agent reports.
	MaxStringBytes int
	// ReportsPerSecond and ReportBurst bound the status reports (and late
	// NACKs) of one identity that reach etcd (defaults 5/s, bursts of 20:
	// an honest agent reports when something changed, at most once per
	// verification, far below that). Reports above the rate are not
	// refused: the newest one waits and is stored when the budget allows;
	// the ones it replaced never are.
	ReportsPerSecond float64
	ReportBurst      int
	// HellosPerSecond and HelloBurst bound the streams one identity may
	// open (defaults 1/s, bursts of 10); each costs etcd writes.
	HellosPerSecond float64
	HelloBurst      int
	// SecretResendInterval is how soon key material already sent to a host
	// for one desired state may be sent again for the same state, when the
	// host reconnects without having applied it (default 10s). A change of
	// the desired state sends it at once.
	SecretResendInterval time.Duration
}

// Default agent limits.
const (
	DefaultHelloTimeout         = 10 * time.Second
	DefaultReplaceTimeout       = 10 * time.Second
	DefaultMaxMessageBytes      = 64 << 10
	DefaultMaxStringBytes       = 4 << 10
	DefaultReportsPerSecond     = 5
	DefaultReportBurst          = 20
	DefaultHellosPerSecond      = 1
	DefaultHelloBurst           = 10
	DefaultSecretResendInterval = 10 * time.Second
)

func (l AgentLimits) withDefaults() AgentLimits {
	if l.HelloTimeout <= 0 {
		l.HelloTimeout = DefaultHelloTimeout
	}
	if l.ReplaceTimeout <= 0 {
		l.ReplaceTimeout = DefaultReplaceTimeout
	}
	if l.MaxMessageBytes <= 0 {
		l.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if l.MaxStringBytes <= 0 {
		l.MaxStringBytes = DefaultMaxStringBytes
	}
	if l.ReportsPerSecond <= 0 {
		l.ReportsPerSecond = DefaultReportsPerSecond
	}
	if l.ReportBurst <= 0 {
		l.ReportBurst = DefaultReportBurst
	}
	if l.HellosPerSecond <= 0 {
		l.HellosPerSecond = DefaultHellosPerSecond
	}
	if l.HelloBurst <= 0 {
		l.HelloBurst = DefaultHelloBurst
	}
	if l.SecretResendInterval <= 0 {
		l.SecretResendInterval = DefaultSecretResendInterval
	}
	return l
}

// agentState is what the hub keeps per agent identity, across its
// streams: the rate limits and who holds the identity's one stream.
// Guarded by Hub.mu, except the limiters, which are safe to share.
type agentState struct {
	hellos  *rate.Limiter
	reports *rate.Limiter
	// active is the identity's stream; next the one waiting for it to end.
	active, next *conn
	// secretHash and secretAt record the last push that carried key
	// material to this identity.
	secretHash string
	secretAt   time.Time
}

// idle reports whether the state holds nothing worth keeping: no stream
// and both budgets full again.
func (a *agentState) idle(now time.Time) bool {
	return a.active == nil && a.next == nil &&
		a.hellos.TokensAt(now) >= float64(a.hellos.Burst()) && a.reports.TokensAt(now) >= float64(a.reports.Burst())
}

// maxIdleAgents is how many identities without a stream the hub keeps
// state for before it forgets those whose budgets are full again.
const maxIdleAgents = 4096

// agent returns the state of an identity, creating it. h.mu must not be held.
func (h *Hub) agent(host string) *agentState {
	h.mu.Lock()
	defer h.mu.Unlock()
	if a, ok := h.agents[host]; ok {
		return a
	}
	if len(h.agents) >= maxIdleAgents+len(h.conns) {
		now := time.Now()
		for k, a := range h.agents {
			if a.idle(now) {
				delete(h.agents, k)
			}
		}
	}
	l := h.limits
	a := &agentState{
		hellos:  rate.NewLimiter(rate.Limit(l.HellosPerSecond), l.HelloBurst),
		reports: rate.NewLimiter(rate.Limit(l.ReportsPerSecond), l.ReportBurst),
	}
	h.agents[host] = a
	return a
}

// checkAgentMessage refuses an agent message over the size limits: the
// whole message (RESOURCE_EXHAUSTED) and each string field in it
// (INVALID_ARGUMENT), naming the field, its size and the limit.
func checkAgentMessage(req *pb.SyncRequest, host string, l AgentLimits) error {
	what := "message"
	if fd := req.ProtoReflect().WhichOneof(req.ProtoReflect().Descriptor().Oneofs().ByName("message")); fd != nil {
		what = string(fd.Name())
	}
	if n := proto.Size(req); n > l.MaxMessageBytes {
		return fieldError(codes.ResourceExhausted, what,
			fmt.Sprintf("the %s from host %s is %d bytes encoded, over the limit of %d bytes", what, host, n, l.MaxMessageBytes))
	}
	if field, n := longestOver(req.ProtoReflect(), "", l.MaxStringBytes); field != "" {
		return fieldError(codes.InvalidArgument, field,
			fmt.Sprintf("%s from host %s is %d bytes, over the limit of %d bytes for a string field", field, host, n, l.MaxStringBytes))
	}
	return nil
}

// fieldError is a status with one google.rpc.BadRequest field violation.
func fieldError(code codes.Code, field, msg string) error {
	st := status.New(code, "sync: "+msg)
	if d, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}}}); err == nil {
		return d.Err()
	}
	return st.Err()
}

// longestOver finds the first string field of m (depth first, in field
// order) longer than limit bytes, and returns its path, e.g.
// "status.items[3].message", and its length; "" when there is none.
func longestOver(m protoreflect.Message, prefix string, limit int) (string, int) {
	var field string
	var size int
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := string(fd.Name())
		if prefix != "" {
			name = prefix + "." + name
		}
		check := func(path string, v protoreflect.Value, kind protoreflect.Kind) bool {
			switch kind {
			case protoreflect.StringKind:
				if n := len(v.String()); n > limit {
					field, size = path, n
					return false
				}
			case protoreflect.BytesKind:
				if n := len(v.Bytes()); n > limit {
					field, size = path, n
					return false
				}
			case protoreflect.MessageKind, protoreflect.GroupKind:
				if f, n := longestOver(v.Message(), path, limit); f != "" {
					field, size = f, n
					return false
				}
			}
			return true
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				if !check(name+"["+strconv.Itoa(i)+"]", l.Get(i), fd.Kind()) {
					return false
				}
			}
			return true
		case fd.IsMap():
			ok := true
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				path := name + "[" + strconv.Quote(k.String()) + "]"
				if len(k.String()) > limit {
					field, size, ok = path, len(k.String()), false
					return false
				}
				ok = check(path, mv, fd.MapValue().Kind())
				return ok
			})
			return ok
		default:
			return check(name, v, fd.Kind())
		}
	})
	return field, size
}
