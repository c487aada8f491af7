package powershell

import (
	"fmt"
	"slices"
	"time"

	"github.com/s2strust/s2strust/agent/reconcile"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// scriptCall is one worker request: the script's operation and its data.
type scriptCall struct {
	op   string
	args map[string]any
	// keyFile: the op imports the secret op.Secret; Execute adds pfxPath
	// and pfxPassword.
	keyFile bool
}

// translate maps a reconciler Op onto the script operation that runs its
// cmdlet. It reads the Op's typed fields, never its rendered Command: the
// script binds each value to the cmdlet's parameter itself.
func translate(cfg *pb.HostConfig, op reconcile.Op) (scriptCall, error) {
	p := cfg.GetProduct()
	c := scriptCall{args: map[string]any{}}
	a := c.args
	switch op.Kind {
	case reconcile.KindImportIssuer:
		c.keyFile = true
		switch p {
		case pb.Product_PRODUCT_LYNC:
			c.op = "import-issuer-certificate"
			if !op.EffectiveDate.IsZero() {
				a["effectiveDate"] = op.EffectiveDate.UTC().Format(time.RFC3339)
			}
		case pb.Product_PRODUCT_EXCHANGE:
			// Into this server's store; the reconciler's next op makes it current.
			c.op = "import-exchange-certificate"
		case pb.Product_PRODUCT_SHAREPOINT:
			c.op = "import-signing-certificate"
		}
	case reconcile.KindAssignIssuer:
		a["thumbprint"] = op.Thumbprint
		switch p {
		case pb.Product_PRODUCT_LYNC:
			c.op = "set-issuer-certificate"
			if !op.EffectiveDate.IsZero() {
				a["effectiveDate"] = op.EffectiveDate.UTC().Format(time.RFC3339)
			}
		case pb.Product_PRODUCT_EXCHANGE:
			c.op = "set-auth-config"
			a["action"] = "current-certificate"
			if !op.EffectiveDate.IsZero() {
				a["action"] = "new-certificate"
				a["effectiveDate"] = op.EffectiveDate.UTC().Format(time.RFC3339)
			}
		case pb.Product_PRODUCT_SHAREPOINT:
			c.op = "set-signing-certificate"
		}
	case reconcile.KindRemovePreviousIssuer:
		switch p {
		case pb.Product_PRODUCT_LYNC:
			c.op = "remove-previous-issuer-certificate"
		case pb.Product_PRODUCT_EXCHANGE:
			c.op = "set-auth-config"
			a["action"] = "clear-previous"
		}
	case reconcile.KindImportNextIssuer:
		if p == pb.Product_PRODUCT_EXCHANGE {
			// Into this server's own store: every server of the
			// organization imports its copy.
			c.op, c.keyFile = "import-exchange-certificate", true
		}
	case reconcile.KindStageNextIssuer:
		switch p {
		case pb.Product_PRODUCT_LYNC:
			if op.EffectiveDate.IsZero() {
				break
			}
			a["effectiveDate"] = op.EffectiveDate.UTC().Format(time.RFC3339)
			if op.Secret != "" {
				// Import-CsCertificate -Roll -EffectiveDate.
				c.op, c.keyFile = "import-issuer-certificate", true
			} else {
				// Set-CsCertificate -Thumbprint -Roll -EffectiveDate.
				c.op = "set-issuer-certificate"
				a["thumbprint"] = op.Thumbprint
			}
		case pb.Product_PRODUCT_EXCHANGE:
			c.op = "set-auth-config"
			a["action"] = "new-certificate"
			a["thumbprint"] = op.Thumbprint
			if !op.EffectiveDate.IsZero() {
				a["effectiveDate"] = op.EffectiveDate.UTC().Format(time.RFC3339)
			}
		case pb.Product_PRODUCT_SHAREPOINT:
			if op.Secret != "" {
				c.op, c.keyFile = "queue-signing-certificate", true
			}
		}
	case reconcile.KindActivateNextIssuer:
		switch p {
		case pb.Product_PRODUCT_EXCHANGE:
			c.op = "set-auth-config"
			a["action"] = "publish"
		case pb.Product_PRODUCT_SHAREPOINT:
			if op.Secret != "" {
				c.op, c.keyFile = "import-signing-certificate", true
			}
		}
	case reconcile.KindRefreshPartnerMetadata:
		url := op.Partner.GetMetadataUrl()
		switch p {
		case pb.Product_PRODUCT_EXCHANGE:
			c.op = "set-partner-application"
			a["identity"] = op.Name
			a["refreshAuthMetadata"] = true
		case pb.Product_PRODUCT_LYNC:
			// Setting the URL again downloads the document again.
			c.op = "set-partner-application"
			a["identity"] = op.Name
			a["metadataUrl"] = url
		case pb.Product_PRODUCT_SHAREPOINT:
			c.op = "set-trusted-issuer"
			a["name"] = op.Name
			a["metadataEndPoint"] = url
		}
	case reconcile.KindSetOAuth:
		if p == pb.Product_PRODUCT_LYNC {
			c.op = "set-oauth-configuration"
			if op.ServiceName != "" {
				a["serviceName"] = op.ServiceName
			}
			if op.ExchangeAutodiscoverURL != "" {
				a["exchangeAutodiscoverUrl"] = op.ExchangeAutodiscoverURL
			}
		}
	case reconcile.KindSetRealm:
		switch p {
		case pb.Product_PRODUCT_LYNC:
			c.op = "set-oauth-configuration"
			a["realm"] = op.Realm
		case pb.Product_PRODUCT_EXCHANGE:
			c.op = "set-auth-config"
			a["action"] = "realm"
			a["realm"] = op.Realm
		case pb.Product_PRODUCT_SHAREPOINT:
			c.op = "set-authentication-realm"
			a["realm"] = op.Realm
		}
	case reconcile.KindNewPartner:
		return newPartnerCall(p, op)
	case reconcile.KindSetPartner:
		return setPartnerCall(p, op)
	case reconcile.KindRemovePartner:
		switch p {
		case pb.Product_PRODUCT_LYNC, pb.Product_PRODUCT_EXCHANGE:
			c.op = "remove-partner-application"
			a["identity"] = op.Name
		case pb.Product_PRODUCT_SHAREPOINT:
			c.op = "remove-trusted-issuer"
			a["name"] = op.Name
		}
	case reconcile.KindSetAppPermission:
		if p == pb.Product_PRODUCT_SHAREPOINT {
			c.op = "set-app-principal-permission"
			a["siteUrl"] = cfg.GetEndpoint()
			a["clientId"] = op.AppID
		}
	case reconcile.KindSetSTS:
		if p == pb.Product_PRODUCT_SHAREPOINT {
			c.op = "set-sts-http"
			a["allowOAuthOverHttp"] = false
			a["allowMetadataOverHttp"] = false
		}
	case reconcile.KindResetIIS:
		if p == pb.Product_PRODUCT_EXCHANGE || p == pb.Product_PRODUCT_SHAREPOINT {
			c.op = "iisreset"
		}
	case reconcile.KindRestartTimer:
		if p == pb.Product_PRODUCT_SHAREPOINT {
			c.op = "restart-timer"
		}
	}
	if c.op == "" {
		return c, fmt.Errorf("the PowerShell driver has no script operation for %s on %s", op.Kind, products.DisplayName(p))
	}
	return c, nil
}

func newPartnerCall(p pb.Product, op reconcile.Op) (scriptCall, error) {
	partner := op.Partner
	if partner == nil {
		return scriptCall{}, fmt.Errorf("partner %s: the operation carries no partner", op.Name)
	}
	a := map[string]any{}
	c := scriptCall{args: a}
	switch p {
	case pb.Product_PRODUCT_LYNC:
		c.op = "new-partner-application"
		level := partner.GetTrustLevel()
		if level == pb.TrustLevel_TRUST_LEVEL_UNSPECIFIED {
			level = pb.TrustLevel_TRUST_LEVEL_FULL
		}
		a["identity"] = partner.GetName()
		a["metadataUrl"] = partner.GetMetadataUrl()
		a["applicationTrustLevel"] = products.TrustLevelName(level)
		a["enabled"] = partner.GetEnabled()
	case pb.Product_PRODUCT_EXCHANGE:
		switch partner.GetProduct() {
		case pb.Product_PRODUCT_LYNC, pb.Product_PRODUCT_SHAREPOINT:
			c.op = "configure-partner-application"
			a["applicationType"] = map[pb.Product]string{pb.Product_PRODUCT_LYNC: "Lync", pb.Product_PRODUCT_SHAREPOINT: "SharePoint"}[partner.GetProduct()]
		default:
			c.op = "new-partner-application"
			a["name"] = partner.GetName()
		}
		a["authMetadataUrl"] = partner.GetMetadataUrl()
		a["enabled"] = partner.GetEnabled()
	case pb.Product_PRODUCT_SHAREPOINT:
		c.op = "new-trusted-issuer"
		a["name"] = partner.GetName()
		a["metadataEndPoint"] = partner.GetMetadataUrl()
		a["isTrustBroker"] = partner.GetTrustBroker()
	default:
		return c, fmt.Errorf("partner %s: no script for %s", op.Name, products.DisplayName(p))
	}
	return c, nil
}

func setPartnerCall(p pb.Product, op reconcile.Op) (scriptCall, error) {
	partner := op.Partner
	if partner == nil {
		return scriptCall{}, fmt.Errorf("partner %s: the operation carries no partner", op.Name)
	}
	a := map[string]any{}
	c := scriptCall{args: a}
	has := func(param string) bool { return slices.Contains(op.Set, param) }
	switch p {
	case pb.Product_PRODUCT_LYNC:
		c.op = "set-partner-application"
		a["identity"] = op.Name
		if has("MetadataUrl") {
			a["metadataUrl"] = partner.GetMetadataUrl()
		}
		if has("ApplicationTrustLevel") {
			level := partner.GetTrustLevel()
			if level == pb.TrustLevel_TRUST_LEVEL_UNSPECIFIED {
				level = pb.TrustLevel_TRUST_LEVEL_FULL
			}
			a["applicationTrustLevel"] = products.TrustLevelName(level)
		}
		if has("Enabled") {
			a["enabled"] = partner.GetEnabled()
		}
	case pb.Product_PRODUCT_EXCHANGE:
		c.op = "set-partner-application"
		a["identity"] = op.Name
		if has("AuthMetadataUrl") {
			a["authMetadataUrl"] = partner.GetMetadataUrl()
		}
		if has("Enabled") {
			a["enabled"] = partner.GetEnabled()
		}
	case pb.Product_PRODUCT_SHAREPOINT:
		c.op = "set-trusted-issuer"
		a["name"] = op.Name
		a["metadataEndPoint"] = partner.GetMetadataUrl()
		if has("IsTrustBroker") {
			a["isTrustBroker"] = partner.GetTrustBroker()
		}
	default:
		return c, fmt.Errorf("partner %s: no script for %s", op.Name, products.DisplayName(p))
	}
	return c, nil
}
