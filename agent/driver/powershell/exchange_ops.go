package powershell

import (
	"context"
	"fmt"
	"time"

	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// The steps of an Exchange auth certificate rotation beyond what the
// reconciler plans today (it assigns the current certificate): a
// certificate rollout stages the next one, has partners refresh, publishes
// it, and clears the previous one. Each is one Set-AuthConfig parameter
// set, or Set-PartnerApplication -RefreshAuthMetadata.
// https://learn.microsoft.com/powershell/module/exchangepowershell/set-authconfig
// https://learn.microsoft.com/powershell/module/exchangepowershell/set-partnerapplication

// StageAuthCertificate sets the next auth certificate and when it takes
// effect (-NewCertificateThumbprint -NewCertificateEffectiveDate -Force).
func (d *Driver) StageAuthCertificate(ctx context.Context, cfg *pb.HostConfig, thumbprint string, effective time.Time) error {
	t, err := certs.NormalizeThumbprint(thumbprint)
	if err != nil {
		return fmt.Errorf("stage the auth certificate on host %s: %w", cfg.GetHost(), err)
	}
	return d.exchangeCall(ctx, cfg, "set-auth-config", map[string]any{"action": "new-certificate", "thumbprint": t, "effectiveDate": effective.UTC().Format(time.RFC3339)})
}

// PublishAuthCertificate makes the staged certificate current (-PublishCertificate).
func (d *Driver) PublishAuthCertificate(ctx context.Context, cfg *pb.HostConfig) error {
	return d.exchangeCall(ctx, cfg, "set-auth-config", map[string]any{"action": "publish"})
}

// ClearPreviousAuthCertificate drops the previous certificate (-ClearPreviousCertificate).
func (d *Driver) ClearPreviousAuthCertificate(ctx context.Context, cfg *pb.HostConfig) error {
	return d.exchangeCall(ctx, cfg, "set-auth-config", map[string]any{"action": "clear-previous"})
}

// RefreshPartnerMetadata re-reads a partner's metadata and cached keys
// (-RefreshAuthMetadata).
func (d *Driver) RefreshPartnerMetadata(ctx context.Context, cfg *pb.HostConfig, partner string) error {
	return d.exchangeCall(ctx, cfg, "set-partner-application", map[string]any{"identity": partner, "refreshAuthMetadata": true})
}

func (d *Driver) exchangeCall(ctx context.Context, cfg *pb.HostConfig, op string, args map[string]any) error {
	if cfg.GetProduct() != pb.Product_PRODUCT_EXCHANGE {
		return fmt.Errorf("%s: an Exchange operation, not for %s host %s", op, products.DisplayName(cfg.GetProduct()), cfg.GetHost())
	}
	w, _, err := d.start(ctx, cfg)
	if err != nil {
		return err
	}
	if err := w.Call(ctx, op, args, nil); err != nil {
		return fmt.Errorf("host %s: %w", cfg.GetHost(), err)
	}
	return nil
}
