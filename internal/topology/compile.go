package topology

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"

	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Compile validates t and compiles it into one configuration per host,
// sorted by host name. Each host gets its deployment's settings; as
// partners, every deployment with a trust edge into its own, sorted by the
// name the host's product registers them under; and as trusted_by, every
// deployment its own has an edge into (where its trust probes go), sorted
// by deployment name, disabled edges included, each with at most
// MaxProbeTargets of its hosts (ProbeTargets). A host's configuration does
// not list the other hosts of its deployment, so its size does not grow
// with the deployment's and the whole compilation is linear in the number
// of hosts. Primary is left false: the
// controller chooses the primary among connected hosts. The result is
// deterministic, so the same topology gives the same Hash for every host.
// t is not modified; an invalid t is an *Error.
func Compile(t *Topology) ([]*pb.HostConfig, error) {
	c, err := t.normalized()
	if err != nil {
		return nil, err
	}
	index := make(map[string]int, len(c.Deployments))
	for i, d := range c.Deployments {
		index[d.Name] = i
	}
	partners := make([][]*pb.Partner, len(c.Deployments))
	trustedBy := make([][]*pb.TrustTarget, len(c.Deployments))
	// rings[i] samples the probe targets of deployment i, built once per
	// deployment that something trusts.
	rings := make([]*probeRing, len(c.Deployments))
	for _, tr := range c.Trusts {
		from, to := &c.Deployments[index[tr.From]], &c.Deployments[index[tr.To]]
		rp, pp := mustProduct(to), mustProduct(from)
		level, _ := products.ParseTrustLevel(tr.TrustLevel)
		p := &pb.Partner{
			Name:                  products.PartnerName(rp, pp, from.Name),
			Deployment:            from.Name,
			Product:               pp,
			ApplicationIdentifier: products.ServiceName(pp),
			MetadataUrl:           tr.MetadataURL,
			// A partner's realm is learned from its metadata, as the
			// products do, unless the topology declares it.
			Realm:       realmOf(c, from),
			TrustLevel:  level,
			Enabled:     *tr.Enabled,
			TrustBroker: rp == pb.Product_PRODUCT_SHAREPOINT && pp == pb.Product_PRODUCT_LYNC,
		}
		if p.MetadataUrl == "" {
			p.MetadataUrl = metadataURL(from)
		}
		partners[index[tr.To]] = append(partners[index[tr.To]], p)
		if rings[index[tr.To]] == nil {
			rings[index[tr.To]] = newProbeRing(to.Hosts)
		}
		// Hosts is filled per source host below.
		trustedBy[index[tr.From]] = append(trustedBy[index[tr.From]], &pb.TrustTarget{
			Deployment:  to.Name,
			Product:     rp,
			ServiceName: products.ServiceName(rp),
			MetadataUrl: metadataURL(to),
			Realm:       realmOf(c, to),
		})
	}

	var out []*pb.HostConfig
	for i := range c.Deployments {
		d := &c.Deployments[i]
		p := mustProduct(d)
		sort.Slice(partners[i], func(a, b int) bool { return partners[i][a].Name < partners[i][b].Name })
		sort.Slice(trustedBy[i], func(a, b int) bool { return trustedBy[i][a].Deployment < trustedBy[i][b].Deployment })
		for _, h := range d.Hosts {
			cfg := &pb.HostConfig{
				Host:                    h,
				Deployment:              d.Name,
				Product:                 p,
				ProductVersion:          d.Version,
				Realm:                   realmOf(c, d),
				ConfirmRealmChange:      d.ConfirmRealmChange,
				MetadataNetworks:        cloneStrings(c.MetadataNetworks),
				ProbeSipUri:             c.ProbeAccounts.GetSIPURI(),
				ProbeMailbox:            c.ProbeAccounts.GetMailbox(),
				ServiceName:             products.ServiceName(p),
				DefaultSipDomain:        c.SIPDomains.Default,
				AdditionalSipDomains:    cloneStrings(c.SIPDomains.Additional),
				MetadataUrl:             metadataURL(d),
				Endpoint:                endpoint(d),
				RemovePartners:          cloneStrings(d.RemovePartners),
				CertificateRules:        hostCertificateRules(c.CertificateRules),
				ExchangeAutodiscoverUrl: d.ExchangeAutodiscoverURL,
				TopologyName:            c.Name,
			}
			switch {
			case d.TokenIssuer == nil:
			case d.TokenIssuer.Secret != "":
				cfg.TokenIssuer = &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: d.TokenIssuer.Secret}}
			case d.TokenIssuer.Existing != "":
				cfg.TokenIssuer = &pb.TokenIssuer{Source: &pb.TokenIssuer_Existing{Existing: d.TokenIssuer.Existing}}
			default:
				cfg.TokenIssuer = &pb.TokenIssuer{Source: &pb.TokenIssuer_Thumbprint{Thumbprint: d.TokenIssuer.Thumbprint}}
			}
			// Each host gets its own copies, so that a caller changing one
			// host's configuration changes no other.
			for _, pt := range partners[i] {
				cfg.Partners = append(cfg.Partners, proto.CloneOf(pt))
			}
			for _, tt := range trustedBy[i] {
				tt = proto.CloneOf(tt)
				tt.Hosts = rings[index[tt.Deployment]].sample(h)
				cfg.TrustedBy = append(cfg.TrustedBy, tt)
			}
			out = append(out, cfg)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Host < out[b].Host })
	return out, nil
}

// Hash is the hex SHA-256 of cfg's deterministic protobuf encoding: equal
// configurations give equal hashes. A configuration that cannot be encoded
// (a string that is not UTF-8, which Compile never produces) hashes to "".
func Hash(cfg *pb.HostConfig) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(cfg)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// realmOf is the realm s2strust sets on deployment d: its own declared
// realm, else (Lync only) the topology's; "" leaves the product's own.
func realmOf(t *Topology, d *Deployment) string {
	if d.Realm != "" {
		return d.Realm
	}
	if mustProduct(d) == pb.Product_PRODUCT_LYNC {
		return t.Realm
	}
	return ""
}

// mustProduct is a validated deployment's product.
func mustProduct(d *Deployment) pb.Product {
	p, _ := products.Parse(d.Product)
	return p
}

// endpoint is where a deployment is reached: the Lync pool FQDN, the
// Exchange autodiscover FQDN or the SharePoint web application URL.
func endpoint(d *Deployment) string {
	switch mustProduct(d) {
	case pb.Product_PRODUCT_LYNC:
		return d.PoolFQDN
	case pb.Product_PRODUCT_EXCHANGE:
		return d.AutodiscoverFQDN
	case pb.Product_PRODUCT_SHAREPOINT:
		return d.WebAppURL
	}
	return ""
}

// metadataURL is where a deployment publishes its auth metadata.
func metadataURL(d *Deployment) string {
	if d.MetadataURL != "" {
		return d.MetadataURL
	}
	return products.MetadataURL(mustProduct(d), endpoint(d))
}

// hostCertificateRules is HostConfig.certificate_rules for a topology's
// normalized certificateRules: empty for the default, standard, so that a
// topology that does not use the field compiles to the same bytes (and
// hashes) as before the field existed.
func hostCertificateRules(rules string) string {
	if rules == CertificateRulesStandard {
		return ""
	}
	return rules
}
