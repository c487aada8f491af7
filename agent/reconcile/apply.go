package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/s2strust/s2strust/agent/driver"
	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Backend is what a product driver implements: reading the actual state
// and executing one operation. Everything else (planning, ordering,
// per-item failure, verification) is this package's.
type Backend interface {
	// Read returns the host's actual state for cfg's product and
	// deployment. A *ProductError means the host cannot take cfg at all
	// (another product, an unsupported version); other errors are
	// failures to read.
	Read(ctx context.Context, cfg *pb.HostConfig) (*State, error)
	// Execute runs op. secrets holds the key material op may need. An
	// error fails op's item; its message becomes the item's NACK text.
	Execute(ctx context.Context, cfg *pb.HostConfig, op Op, secrets []*pb.SecretMaterial) error
}

// ProductError says the host cannot take the configuration: it is the
// "product" item's failure.
type ProductError struct{ Err error }

func (e *ProductError) Error() string { return e.Err.Error() }

// Unwrap returns the cause.
func (e *ProductError) Unwrap() error { return e.Err }

// Result is what Apply did.
type Result struct {
	// Errors has one entry per failed item; nil when every item applied.
	Errors []*pb.ItemError
	// Ops are the operations planned (and, unless monitoring, executed).
	Ops []Op
}

// Apply reads the actual state, plans and executes the operations in order.
// It goes on past a failing item, skipping that item's later operations,
// and returns one error per failed item. With monitor set it executes
// nothing: Result.Ops is what it would do.
func Apply(ctx context.Context, b Backend, cfg *pb.HostConfig, secrets []*pb.SecretMaterial, now time.Time, monitor bool) Result {
	st, err := b.Read(ctx, cfg)
	if err != nil {
		return Result{Errors: readFailure(cfg, err)}
	}
	ops := Plan(Input{Config: cfg, State: st, Secrets: secrets, Now: now})
	if monitor {
		return Result{Ops: ops}
	}
	var errs []*pb.ItemError
	failed := map[string]bool{}
	for _, op := range ops {
		if failed[op.Item] {
			continue
		}
		if err := ctx.Err(); err != nil {
			err = fmt.Errorf("apply on host %s: %w", cfg.GetHost(), err)
			errs = append(errs, &pb.ItemError{Item: op.Item, Message: err.Error()})
			failed[op.Item] = true
			continue
		}
		err := error(nil)
		if op.Secret != "" && slices.Contains(rotationSecretKinds, op.Kind) {
			err = checkSecret(cfg, op, secrets, now)
		}
		if err == nil {
			err = b.Execute(ctx, cfg, op, secrets)
		}
		if err == nil && op.Kind == KindRefreshPartnerMetadata && len(op.Partner.GetExpectedSigningThumbprints()) > 0 {
			err = checkRefreshed(ctx, b, cfg, op)
		}
		if err != nil {
			errs = append(errs, &pb.ItemError{Item: op.Item, Message: err.Error()})
			failed[op.Item] = true
		}
	}
	return Result{Errors: errs, Ops: ops}
}

// readFailure fails the product item, or every item of cfg, with err.
func readFailure(cfg *pb.HostConfig, err error) []*pb.ItemError {
	if pe := (*ProductError)(nil); errors.As(err, &pe) {
		return []*pb.ItemError{{Item: driver.ItemProduct, Message: err.Error()}}
	}
	var out []*pb.ItemError
	for _, it := range Items(cfg) {
		out = append(out, &pb.ItemError{Item: it, Message: err.Error()})
	}
	return out
}

// Items lists every item of cfg, in plan order.
func Items(cfg *pb.HostConfig) []string {
	items := []string{driver.ItemIssuerCertificate}
	if cfg.GetNextTokenIssuer() != nil {
		items = append(items, ItemNextIssuer)
	}
	if cfg.GetRetirePreviousIssuer() {
		items = append(items, ItemPreviousIssuer)
	}
	items = append(items, driver.ItemOAuthConfiguration)
	for _, n := range cfg.GetRemovePartners() {
		items = append(items, driver.RemovePartnerItem(n))
	}
	for _, p := range cfg.GetPartners() {
		items = append(items, driver.PartnerItem(p.GetName()))
	}
	return items
}

// Verify reads the actual state and compares it with cfg: the report's
// items (the "product" item first), the partners in the shape of
// Get-CsPartnerApplication, the OAuth configuration and the current issuer
// certificate. It changes nothing. Version, hash, clock and drift are the
// agent's to fill in.
func Verify(ctx context.Context, b Backend, cfg *pb.HostConfig, now time.Time) (*pb.StatusReport, error) {
	r := &pb.StatusReport{Primary: cfg.GetPrimary()}
	st, err := b.Read(ctx, cfg)
	if err != nil {
		if pe := (*ProductError)(nil); errors.As(err, &pe) {
			r.Items = append(r.Items, &pb.ItemStatus{Item: driver.ItemProduct, State: pb.ItemState_ITEM_STATE_FAILED, Message: err.Error()})
			return r, nil
		}
		return nil, fmt.Errorf("verify on host %s: %w", cfg.GetHost(), err)
	}
	r.Items = append(r.Items, &pb.ItemStatus{Item: driver.ItemProduct, State: pb.ItemState_ITEM_STATE_OK})
	r.Items = append(r.Items, Check(Input{Config: cfg, State: st, Now: now})...)
	Describe(r, cfg.GetProduct(), st)
	return r, nil
}

// Describe fills r's partners, OAuth configuration and issuer certificate
// from st, as the products' Get- cmdlets show them.
func Describe(r *pb.StatusReport, p pb.Product, st *State) {
	desc, _ := products.Describe(p)
	for _, v := range st.Partners {
		pa := &pb.PartnerApplication{
			Identity: v.Name, Name: v.Name, ApplicationIdentifier: v.ApplicationIdentifier, MetadataUrl: v.MetadataURL,
			Realm: v.Realm, Enabled: v.Enabled, TrustBroker: v.TrustBroker, CachedThumbprints: v.CachedThumbprints,
		}
		if desc.TrustLevels {
			pa.TrustLevel = v.TrustLevel
		}
		r.Partners = append(r.Partners, pa)
	}
	r.Oauth = &pb.OAuthConfiguration{
		ServiceName: st.OAuth.ServiceName, Realm: st.OAuth.Realm,
		ExchangeAutodiscoverUrl: st.OAuth.ExchangeAutodiscoverURL, IssuerThumbprint: st.Issuer.Current,
		NextIssuerThumbprint: st.Issuer.Next, PreviousIssuerThumbprint: st.Issuer.Previous,
	}
	if st.Issuer.Next != "" && !st.Issuer.NextEffective.IsZero() {
		r.Oauth.NextIssuerEffective = timestamppb.New(st.Issuer.NextEffective)
	}
	if lc := st.Find(st.Issuer.Current); lc != nil && lc.Cert != nil {
		r.IssuerCertificate = certs.Info(lc.Cert, lc.HasPrivateKey)
	}
}

// Redacted renders ops for a log line or an error: their commands, secrets
// redacted.
func Redacted(ops []Op) string {
	s := make([]string, len(ops))
	for i, o := range ops {
		s[i] = o.Command()
	}
	return strings.Join(s, "; ")
}
