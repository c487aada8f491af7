// Package topology is the operator's trust topology: its document model,
// parsing with positioned errors, validation and normalization, a canonical
// form, and its compilation into one configuration per host.
//
// A topology declares deployments (a Lync/Skype for Business pool, an
// Exchange organization, a SharePoint farm) and directed trust edges between
// them; an edge "from A to B" means B accepts S2S tokens issued by A, so B
// registers A as a partner. Compile turns a validated topology into the
// per-host pb.HostConfig the controller streams to agents, deterministically:
// the same topology gives the same bytes and the same Hash. Plan describes
// what changes between two compilations, host by host.
package topology

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/goccy/go-yaml"
)

// APIVersion and Kind are the only accepted values of a document's
// apiVersion and kind.
const (
	APIVersion = "s2strust/v1"
	Kind       = "TrustTopology"
)

// The accepted values of Topology.CertificateRules.
const (
	// CertificateRulesStandard reports the softer certificate rules as
	// warnings: what Microsoft requires is an error, its advice a warning.
	CertificateRulesStandard = "standard"
	// CertificateRulesStrict makes those warnings errors, as advised for
	// estates with several SIP domains.
	CertificateRulesStrict = "strict"
)

// MaxDocumentSize is the largest topology document Parse accepts.
const MaxDocumentSize = 1 << 20

// Topology is a trust topology document. Parse fills it as written; Validate
// checks it and normalizes it in place (see Validate).
type Topology struct {
	// APIVersion must be APIVersion.
	APIVersion string `json:"apiVersion"`
	// Kind must be Kind.
	Kind string `json:"kind"`
	// Name names the topology; it reaches every host as topology_name.
	Name string `json:"name"`
	// SIPDomains are the organization's SIP domains. The default one is the
	// default realm and must be the token-issuer certificate's subject.
	SIPDomains SIPDomains `json:"sipDomains"`
	// Realm is Lync's OAuth realm (Set-CsOAuthConfiguration -Realm) for
	// every Lync deployment that declares none of its own. Optional: Lync's
	// own default is the default SIP domain, and s2strust sets no realm the
	// topology does not declare. It never applies to Exchange or SharePoint,
	// whose realms are their own (blank; the farm id).
	Realm string `json:"realm,omitempty"`
	// MetadataNetworks, when given, narrows where partners' metadata may be
	// fetched from to these CIDR prefixes (on top of the addresses no
	// metadata can legitimately come from: loopback, link-local, unspecified
	// and multicast, always refused).
	MetadataNetworks []string `json:"metadataNetworks,omitempty"`
	// ProbeAccounts are the test accounts the products' own test cmdlets
	// prove trust with on real hosts (the sim mints tokens itself).
	ProbeAccounts *ProbeAccounts `json:"probeAccounts,omitempty"`
	// Deployments are the pools, organizations and farms of the topology.
	Deployments []Deployment `json:"deployments"`
	// Trusts are the trust edges between deployments.
	Trusts []Trust `json:"trusts"`
	// CertificateRules is how the token-issuer certificate rules apply:
	// CertificateRulesStandard (the default) or CertificateRulesStrict,
	// which makes the rules that are otherwise warnings (CN not exactly the
	// default SIP domain, a SAN lacking an additional SIP domain, expiry
	// within 30 days) errors.
	CertificateRules string `json:"certificateRules,omitempty"`
	// Rollout is how a new revision reaches the fleet; nil for the
	// controller's default strategy. controller/rollout checks it against
	// the topology when a revision is applied.
	Rollout *Rollout `json:"rollout,omitempty"`

	// file is the name given to Parse, for error messages.
	file string
	// pos maps a field path such as "deployments[1].version" to where its
	// value starts in the document; nil when the topology was not parsed.
	pos map[string]position
}

// SIPDomains are the SIP domains of the organization.
type SIPDomains struct {
	// Default is the default SIP domain.
	Default string `json:"default"`
	// Additional are the other SIP domains; the token-issuer certificate's
	// SAN must list each.
	Additional []string `json:"additional,omitempty"`
}

// Deployment is one Lync/Skype for Business pool, Exchange organization or
// SharePoint farm.
type Deployment struct {
	// Name identifies the deployment within the topology: 1-63 characters of
	// a-z, 0-9 and '-'. SharePoint registers partners under it.
	Name string `json:"name"`
	// Product is lync, exchange or sharepoint.
	Product string `json:"product"`
	// Version is the product version: 2013, 2015/2016, 2019 or SE.
	Version string `json:"version"`
	// PoolFQDN is a Lync pool's FQDN (Lync only, required).
	PoolFQDN string `json:"poolFqdn,omitempty"`
	// AutodiscoverFQDN is the Exchange organization's autodiscover FQDN
	// (Exchange only, required).
	AutodiscoverFQDN string `json:"autodiscoverFqdn,omitempty"`
	// WebAppURL is the SharePoint web application URL (SharePoint only,
	// required, HTTPS).
	WebAppURL string `json:"webAppUrl,omitempty"`
	// MetadataURL overrides the deployment's own auth metadata URL, which is
	// otherwise derived from the product and its endpoint.
	MetadataURL string `json:"metadataUrl,omitempty"`
	// Hosts are the FQDNs of the deployment's servers.
	Hosts []string `json:"hosts"`
	// TokenIssuer names the deployment's token-issuer certificate.
	TokenIssuer *TokenIssuer `json:"tokenIssuer,omitempty"`
	// ExchangeAutodiscoverURL is Set-CsOAuthConfiguration's
	// -ExchangeAutodiscoverUrl (Lync only, HTTPS).
	ExchangeAutodiscoverURL string `json:"exchangeAutodiscoverUrl,omitempty"`
	// RemovePartners are stale partner identities to remove when present.
	RemovePartners []string `json:"removePartners,omitempty"`
	// Realm is the realm s2strust sets on this deployment: Lync's OAuth
	// realm, Exchange's AuthConfig realm (only for a non-accepted domain),
	// SharePoint's authentication realm. Optional; a change of it is
	// disruptive, and on Exchange and SharePoint it needs
	// ConfirmRealmChange (a live farm's app principals break).
	Realm string `json:"realm,omitempty"`
	// ConfirmRealmChange confirms that Realm may change an Exchange or
	// SharePoint deployment's realm.
	ConfirmRealmChange bool `json:"confirmRealmChange,omitempty"`
}

// ProbeAccounts are test accounts for the products' own trust tests.
type ProbeAccounts struct {
	// SIPURI is a Lync user whose Exchange mailbox
	// `Test-CsExStorageConnectivity -SipUri <it> -DeleteItem` writes and
	// deletes a test item in (sip:user@domain).
	SIPURI string `json:"sipUri,omitempty"`
	// Mailbox is an Exchange mailbox `Test-OAuthConnectivity -Mailbox <it>`
	// tests partners with (user@domain).
	Mailbox string `json:"mailbox,omitempty"`
}

// TokenIssuer names a token-issuer certificate: exactly one of Secret,
// Thumbprint and Existing.
type TokenIssuer struct {
	// Secret names a PFX uploaded to the controller once.
	Secret string `json:"secret,omitempty"`
	// Thumbprint selects a certificate already in the hosts' store, as
	// Windows shows it; Validate normalizes it to 40 upper-case hex digits.
	Thumbprint string `json:"thumbprint,omitempty"`
	// Existing names a certificate the product already holds by its type:
	// "Default" (Lync only) is the seed's path, the primary's
	// `(Get-CsCertificate -Type Default).Thumbprint` assigned with
	// `Set-CsCertificate -Identity global -Type OAuthTokenIssuer`.
	Existing string `json:"existing,omitempty"`
}

// Trust is a trust edge: To accepts tokens issued by From.
type Trust struct {
	// From is the issuing deployment (the partner).
	From string `json:"from"`
	// To is the receiving deployment, which registers From as a partner.
	To string `json:"to"`
	// TrustLevel is Full (the default), Application or User: Lync's
	// ApplicationTrustLevel, so only edges into a Lync deployment may set
	// anything but Full.
	TrustLevel string `json:"trustLevel,omitempty"`
	// Enabled says whether the partner is enabled; the default is true.
	Enabled *bool `json:"enabled,omitempty"`
	// MetadataURL overrides the partner's metadata URL for this edge only.
	MetadataURL string `json:"metadataUrl,omitempty"`
}

// Load parses a document and validates it: the usual way in.
func Load(filename string, data []byte) (*Topology, error) {
	t, err := Parse(filename, data)
	if err != nil {
		return nil, err
	}
	if err := Validate(t); err != nil {
		return nil, err
	}
	return t, nil
}

// Canonical returns the canonical JSON form of the topology: validated and
// normalized, with defaults (realm, trust level, enabled) written out, in a
// fixed field order. Two documents that mean the same thing field by field
// have the same canonical form, and Load of the canonical form gives it back
// byte for byte. t itself is not modified. It is an *Error when t is invalid.
func (t *Topology) Canonical() ([]byte, error) {
	c, err := t.normalized()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("encode topology %q as JSON: %w", c.Name, err)
	}
	return buf.Bytes(), nil
}

// YAML returns the canonical form as YAML (for `get topology -o yaml`);
// Load of it gives the same Canonical bytes. t itself is not modified.
func (t *Topology) YAML() ([]byte, error) {
	c, err := t.normalized()
	if err != nil {
		return nil, err
	}
	out, err := yaml.MarshalWithOptions(c, yaml.IndentSequence(true), yaml.CustomMarshaler[string](marshalYAMLString))
	if err != nil {
		return nil, fmt.Errorf("encode topology %q as YAML: %w", c.Name, err)
	}
	return out, nil
}

// marshalYAMLString writes s as the YAML library would, unless YAML would
// read that back as something else (the library leaves .inf and .nan
// unquoted), in which case it writes s double-quoted.
func marshalYAMLString(s string) ([]byte, error) {
	out, err := yaml.Marshal(s)
	if err == nil {
		var back any
		if yaml.Unmarshal(out, &back) == nil && back == s {
			return out, nil
		}
	}
	return []byte(strconv.Quote(s)), nil
}

// normalized returns a validated, normalized copy of t.
func (t *Topology) normalized() (*Topology, error) {
	c := t.clone()
	if err := Validate(c); err != nil {
		return nil, err
	}
	return c, nil
}

// clone returns a deep copy of t (the position map is shared: it is never
// written after Parse).
func (t *Topology) clone() *Topology {
	if t == nil {
		return nil
	}
	c := *t
	c.SIPDomains.Additional = cloneStrings(t.SIPDomains.Additional)
	c.MetadataNetworks = cloneStrings(t.MetadataNetworks)
	if t.ProbeAccounts != nil {
		pa := *t.ProbeAccounts
		c.ProbeAccounts = &pa
	}
	if t.Deployments != nil {
		c.Deployments = make([]Deployment, len(t.Deployments))
		for i, d := range t.Deployments {
			d.Hosts = cloneStrings(d.Hosts)
			d.RemovePartners = cloneStrings(d.RemovePartners)
			if d.TokenIssuer != nil {
				ti := *d.TokenIssuer
				d.TokenIssuer = &ti
			}
			c.Deployments[i] = d
		}
	}
	if t.Trusts != nil {
		c.Trusts = make([]Trust, len(t.Trusts))
		for i, tr := range t.Trusts {
			if tr.Enabled != nil {
				e := *tr.Enabled
				tr.Enabled = &e
			}
			c.Trusts[i] = tr
		}
	}
	return &c
}

func cloneStrings(s []string) []string {
	if s == nil {
		return nil
	}
	return append([]string{}, s...)
}

// Rollout is the rollout strategy of a topology: ordered waves, a canary
// host per deployment first. See controller/rollout for its semantics.
type Rollout struct {
	// Canary sends a new revision to one host per deployment first (the
	// deployment's primary for deployment-scope changes); default true.
	Canary *bool `json:"canary,omitempty"`
	// Waves follow the canary in order, each naming hosts, a count or a
	// percentage of the hosts left; hosts no wave takes form a last wave.
	Waves []RolloutWave `json:"waves,omitempty"`
	// MaxUnavailable bounds the hosts of a wave being changed at once.
	MaxUnavailable int `json:"maxUnavailable,omitempty"`
	// FailureThreshold is how many hosts of a wave may fail before the
	// rollout stops; 0 stops it at the first.
	FailureThreshold int `json:"failureThreshold,omitempty"`
	// BakeTime is how long a wave must stay healthy before the next
	// starts, as Go writes durations ("30s", "5m").
	BakeTime string `json:"bakeTime,omitempty"`
	// ManualGates pauses the rollout before each wave after the canary
	// until an operator resumes it.
	ManualGates bool `json:"manualGates,omitempty"`
}

// RolloutWave is one wave: exactly one of Hosts, Count and Percent.
type RolloutWave struct {
	// Hosts names the wave's hosts.
	Hosts []string `json:"hosts,omitempty"`
	// Count takes this many of the hosts left, in topology order.
	Count int `json:"count,omitempty"`
	// Percent takes this share of the fleet's hosts (rounded up).
	Percent int `json:"percent,omitempty"`
}

// GetSIPURI is SIPURI, "" for nil accounts.
func (p *ProbeAccounts) GetSIPURI() string {
	if p == nil {
		return ""
	}
	return p.SIPURI
}

// GetMailbox is Mailbox, "" for nil accounts.
func (p *ProbeAccounts) GetMailbox() string {
	if p == nil {
		return ""
	}
	return p.Mailbox
}
