package reconcile

import (
	"strings"
	"time"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Kind is what an Op does, independent of the product's cmdlet.
type Kind string

// The kinds of operation. Each names what a driver executes; the cmdlet and
// parameters of an Op say how the product does it.
const (
	// KindImportIssuer imports the token-issuer certificate from a PFX
	// secret (Lync: Import-CsCertificate -Identity Global -Type
	// OAuthTokenIssuer, once, on the primary; the CMS replicates it).
	KindImportIssuer Kind = "import-issuer"
	// KindAssignIssuer makes a certificate already on the host the token
	// issuer (Lync: Set-CsCertificate -Identity global -Type OAuthTokenIssuer -Thumbprint).
	KindAssignIssuer Kind = "assign-issuer"
	// KindRemovePreviousIssuer removes the previous issuer certificate
	// after a roll (Remove-CsCertificate -Identity Global -Type OAuthTokenIssuer
	// -Previous; Exchange: Set-AuthConfig -ClearPreviousCertificate).
	KindRemovePreviousIssuer Kind = "remove-previous-issuer"
	// KindSetOAuth sets OAuth settings other than the realm
	// (Set-CsOAuthConfiguration -ServiceName/-ExchangeAutodiscoverUrl).
	KindSetOAuth Kind = "set-oauth"
	// KindSetRealm sets the deployment's realm: disruptive.
	KindSetRealm Kind = "set-realm"
	// KindNewPartner registers a partner.
	KindNewPartner Kind = "new-partner"
	// KindSetPartner changes a registered partner in place.
	KindSetPartner Kind = "set-partner"
	// KindRemovePartner removes a registered partner.
	KindRemovePartner Kind = "remove-partner"
	// KindSetAppPermission grants SharePoint's app principal permission.
	KindSetAppPermission Kind = "set-app-permission"
	// KindSetSTS sets SharePoint's STS configuration.
	KindSetSTS Kind = "set-sts"
	// KindResetIIS resets IIS on an Exchange server after a change, and on
	// every SharePoint server after the STS signing certificate changed, as
	// Microsoft advises: disruptive, paced one server at a time.
	KindResetIIS Kind = "reset-iis"
	// KindRestartTimer restarts the SharePoint Timer Service (SPTimerV4)
	// on a SharePoint server after the STS signing certificate changed,
	// after KindResetIIS: disruptive, host scope.
	KindRestartTimer Kind = "restart-timer"

	// The kinds of a certificate rotation (HostConfig.next_token_issuer,
	// Partner.expected_signing_thumbprints, retire_previous_issuer).

	// KindImportNextIssuer imports the next token-issuer certificate's PFX
	// (Secret) into this server's own store: Exchange's
	// Import-ExchangeCertificate, on every Exchange server of the
	// organization, since each signs with its own copy of the key.
	KindImportNextIssuer Kind = "import-next-issuer"
	// KindStageNextIssuer stages the next certificate (Thumbprint, effective
	// at EffectiveDate) as the deployment's next token issuer, published in
	// its metadata beside the current one: Lync's Import-CsCertificate
	// -Roll -EffectiveDate (from Secret; without a Secret, Set-CsCertificate
	// -Thumbprint -Roll re-dates a staged one), Exchange's Set-AuthConfig
	// -NewCertificateThumbprint -NewCertificateEffectiveDate, SharePoint's
	// Set-SPSecurityTokenServiceConfig -QueueSigningCertificate (from Secret).
	KindStageNextIssuer Kind = "stage-next-issuer"
	// KindActivateNextIssuer makes the staged certificate the one that
	// signs: Exchange's Set-AuthConfig -PublishCertificate, SharePoint's
	// Set-SPSecurityTokenServiceConfig -ImportSigningCertificate (from
	// Secret). Lync has none: its CMS rolls at the EffectiveDate by itself.
	KindActivateNextIssuer Kind = "activate-next-issuer"
	// KindRefreshPartnerMetadata downloads a registered partner's metadata
	// again and caches its signing certificates (Name, Partner):
	// Set-PartnerApplication -RefreshAuthMetadata, Set-CsPartnerApplication
	// -MetadataUrl, Set-SPTrustedSecurityTokenIssuer -MetadataEndPoint.
	KindRefreshPartnerMetadata Kind = "refresh-partner-metadata"
)

// Op is one operation of a plan. Its typed fields carry the data a driver
// needs; Cmdlet and Params carry the same as the product's command, for
// the operator (Command) and for a driver that maps them one to one.
type Op struct {
	// Item is the configuration item the operation belongs to; when it
	// fails, that item fails and its later operations are skipped.
	Item string
	Kind Kind
	// Cmdlet is the product's cmdlet or script.
	Cmdlet string
	// Params are its parameters, in the order the command shows them.
	Params []Param
	// Reason says why the operation is needed.
	Reason string
	// Disruptive operations interrupt service (a realm change, an IIS reset).
	Disruptive bool
	// PrimaryOnly operations change deployment-scope state and run on the
	// deployment's primary only.
	PrimaryOnly bool

	// Name is the partner's name (registered or to register).
	Name string
	// Partner is the desired partner, for KindNewPartner and KindSetPartner.
	Partner *pb.Partner
	// Thumbprint is the certificate of KindAssignIssuer, or the one a
	// KindImportIssuer secret holds.
	Thumbprint string
	// Secret is KindImportIssuer's secret name.
	Secret string
	// Realm is KindSetRealm's realm.
	Realm string
	// ServiceName and ExchangeAutodiscoverURL are KindSetOAuth's values
	// (empty: left as they are).
	ServiceName, ExchangeAutodiscoverURL string
	// Set lists the partner properties KindSetPartner changes, by the
	// product's parameter name (e.g. "ApplicationTrustLevel", "Enabled").
	Set []string
	// AppID is KindSetAppPermission's app principal.
	AppID string
	// EffectiveDate is a roll's -EffectiveDate.
	EffectiveDate time.Time
}

// ParamKind says how a parameter is written.
type ParamKind int

// Parameter kinds.
const (
	// ParamString is -Name 'value', quoted literally.
	ParamString ParamKind = iota
	// ParamSwitch is -Name, present or absent.
	ParamSwitch
	// ParamBool is -Name:$true or -Name:$false.
	ParamBool
	// ParamSecret is never shown: -Name <redacted>.
	ParamSecret
	// ParamDate is -Name ([datetime]'2026-12-02T00:00:00Z'): a [datetime]
	// from an invariant ISO 8601 string, never a locale-formatted one.
	ParamDate
	// ParamRaw is a value that is PowerShell syntax of our own making
	// (e.g. `FullControl`, an enum name), never operator input.
	ParamRaw
)

// Param is one cmdlet parameter.
type Param struct {
	Name  string
	Value string
	Kind  ParamKind
}

// Str, Switch, Bool, Secret, Date and Raw build parameters.
func Str(name, value string) Param { return Param{Name: name, Value: value, Kind: ParamString} }

// Switch is a switch parameter.
func Switch(name string) Param { return Param{Name: name, Kind: ParamSwitch} }

// Bool is a Boolean parameter.
func Bool(name string, v bool) Param {
	p := Param{Name: name, Kind: ParamBool, Value: "false"}
	if v {
		p.Value = "true"
	}
	return p
}

// Secret is a parameter whose value is never shown.
func Secret(name string) Param { return Param{Name: name, Kind: ParamSecret} }

// Date is a [datetime] parameter.
func Date(name string, t time.Time) Param {
	return Param{Name: name, Kind: ParamDate, Value: t.UTC().Format(time.RFC3339)}
}

// Raw is a parameter of fixed syntax (an enumeration value).
func Raw(name, value string) Param { return Param{Name: name, Value: value, Kind: ParamRaw} }

// Command renders the operation as PowerShell would read it: every string
// value a single-quoted literal (see Quote), secrets as <redacted>. It is
// for the operator's eyes; drivers never run it (the PowerShell driver
// sends data as JSON to fixed scripts).
func (o Op) Command() string {
	var b strings.Builder
	b.WriteString(o.Cmdlet)
	for _, p := range o.Params {
		b.WriteString(" -")
		b.WriteString(p.Name)
		switch p.Kind {
		case ParamString:
			b.WriteString(" ")
			b.WriteString(Quote(p.Value))
		case ParamBool:
			b.WriteString(":$" + p.Value)
		case ParamSecret:
			b.WriteString(" <redacted>")
		case ParamDate:
			b.WriteString(" ([datetime]" + Quote(p.Value) + ")")
		case ParamRaw:
			b.WriteString(" " + p.Value)
		}
	}
	return b.String()
}

// Proto is the operation as the agent reports it.
func (o Op) Proto() *pb.PlannedOp {
	return &pb.PlannedOp{
		Item: o.Item, Cmdlet: o.Cmdlet, Command: o.Command(), Reason: o.Reason,
		Disruptive: o.Disruptive, PrimaryOnly: o.PrimaryOnly,
	}
}

// singleQuotes are the characters PowerShell's grammar accepts as a single
// quote ("single-quote-character" in the PowerShell language
// specification, section 2.3.5.2: U+0027 and the typographic U+2018,
// U+2019, U+201A, U+201B). Inside a single-quoted string none of $, `,
// ( or " means anything; only these end the string, and each is escaped by
// doubling it.
const singleQuotes = "'\u2018\u2019\u201a\u201b"

// Quote returns s as a PowerShell single-quoted string literal that
// PowerShell reads back as exactly s, whatever s holds.
func Quote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for _, r := range s {
		if strings.ContainsRune(singleQuotes, r) {
			b.WriteRune(r)
		}
		b.WriteRune(r)
	}
	b.WriteByte('\'')
	return b.String()
}
