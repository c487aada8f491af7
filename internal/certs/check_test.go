package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

var checkNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func generate(t testing.TB, tmpl Template) *Bundle {
	t.Helper()
	b, err := Generate(tmpl)
	if err != nil {
		t.Fatalf("Generate(%+v): %v", tmpl, err)
	}
	return b
}

// goodTemplate satisfies every rule under checkRequirements.
func goodTemplate() Template {
	return Template{
		CommonName: "contoso.com",
		DNSNames:   []string{"lyncpool.contoso.com", "contoso.com", "fabrikam.com"},
		NotBefore:  checkNow.AddDate(0, -1, 0),
		NotAfter:   checkNow.AddDate(1, 0, 0),
	}
}

func checkRequirements() Requirements {
	return Requirements{
		DefaultSIPDomain:     "contoso.com",
		AdditionalSIPDomains: []string{"fabrikam.com"},
		Now:                  checkNow,
	}
}

// rawCert signs tmpl with a fresh ECDSA key, for shapes Generate does not
// make. The rules checked against it must not include key-size.
func rawCert(t testing.TB, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(1)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return mustParse(t, der)
}

func TestCheck(t *testing.T) {
	type want struct {
		rule     string
		severity Severity
		mention  []string // besides thumbprint and subject
	}
	tests := []struct {
		name   string
		modify func(*Template)
		noKey  bool
		req    func(*Requirements)
		want   []want
	}{
		{name: "good certificate"},
		{
			name: "names compare case-insensitively",
			modify: func(tm *Template) {
				tm.CommonName = "Contoso.COM"
				tm.DNSNames = []string{"CONTOSO.com", "Fabrikam.Com."}
			},
		},
		{
			name: "no additional domains required",
			req:  func(r *Requirements) { r.AdditionalSIPDomains = nil },
		},
		{
			name:   "additional domain equal to the default is not asked twice",
			modify: func(tm *Template) { tm.DNSNames = []string{"contoso.com"} },
			req:    func(r *Requirements) { r.AdditionalSIPDomains = []string{"CONTOSO.COM", ""} },
		},
		{
			name:   "subject CN is the pool, not the SIP domain: a warning",
			modify: func(tm *Template) { tm.CommonName = "lyncpool.contoso.com" },
			want:   []want{{RuleSubjectCN, SeverityWarning, []string{`subject common name is "lyncpool.contoso.com", not exactly the default SIP domain contoso.com`, "(rule subject-cn)"}}},
		},
		{
			name:   "strict: the CN warning is an error",
			modify: func(tm *Template) { tm.CommonName = "lyncpool.contoso.com" },
			req:    func(r *Requirements) { r.Strict = true },
			want:   []want{{RuleSubjectCN, SeverityError, []string{`"lyncpool.contoso.com"`, "certificateRules: strict makes this an error (rule subject-cn)"}}},
		},
		{
			name:   "empty subject CN, the domain in the SAN",
			modify: func(tm *Template) { tm.CommonName = "" },
			want:   []want{{RuleSubjectCN, SeverityWarning, []string{"subject common name is empty", "no subject"}}},
		},
		{
			// The seed's path: the pool's Default certificate as the issuer.
			name: "a pool's Default certificate qualifies, with warnings",
			modify: func(tm *Template) {
				tm.CommonName = "pool01.contoso.com"
				tm.DNSNames = []string{"pool01.contoso.com", "fe01.contoso.com", "fe02.contoso.com", "sip.contoso.com", "sip.fabrikam.com"}
			},
			want: []want{
				{RuleSubjectCN, SeverityWarning, []string{`"pool01.contoso.com"`}},
				{RuleSANAdditionalDomain, SeverityWarning, []string{"SAN does not list fabrikam.com", "(rule san-additional-domain)"}},
			},
		},
		{
			name: "the domain only under a wildcard SAN qualifies",
			modify: func(tm *Template) {
				tm.CommonName = "web.example.net"
				tm.DNSNames = []string{"*.contoso.com", "fabrikam.com"}
			},
			want: []want{{RuleSubjectCN, SeverityWarning, []string{`"web.example.net"`}}},
		},
		{
			name:   "SAN lacks the default domain, the CN has it",
			modify: func(tm *Template) { tm.DNSNames = []string{"lyncpool.contoso.com", "fabrikam.com"} },
		},
		{
			name: "the default SIP domain nowhere",
			modify: func(tm *Template) {
				tm.CommonName = "contoso.com.example.net"
				tm.DNSNames = []string{"notcontoso.com", "contoso.com.example.net", "fabrikam.com"}
			},
			want: []want{{RuleDefaultSIPDomain, SeverityError, []string{`neither the subject common name ("contoso.com.example.net") nor a subject alternative name is the default SIP domain contoso.com or a name under it`, "(rule default-sip-domain)"}}},
		},
		{
			name:   "the default SIP domain nowhere, empty CN",
			modify: func(tm *Template) { tm.CommonName = ""; tm.DNSNames = []string{"fabrikam.com"} },
			want:   []want{{RuleDefaultSIPDomain, SeverityError, []string{"subject common name (empty)"}}},
		},
		{
			name:   "SAN lacks an additional domain: a warning",
			modify: func(tm *Template) { tm.DNSNames = []string{"contoso.com"} },
			want:   []want{{RuleSANAdditionalDomain, SeverityWarning, []string{"SAN does not list fabrikam.com, an additional SIP domain"}}},
		},
		{
			name:   "strict: SAN lacks an additional domain is an error",
			modify: func(tm *Template) { tm.DNSNames = []string{"contoso.com"} },
			req:    func(r *Requirements) { r.Strict = true },
			want:   []want{{RuleSANAdditionalDomain, SeverityError, []string{"SAN does not list fabrikam.com", "strict"}}},
		},
		{
			name:   "a wildcard does not stand for an additional domain itself",
			modify: func(tm *Template) { tm.DNSNames = []string{"contoso.com", "*.fabrikam.com"} },
			want:   []want{{RuleSANAdditionalDomain, SeverityWarning, []string{"SAN does not list fabrikam.com"}}},
		},
		{
			name:   "one finding per missing additional domain",
			modify: func(tm *Template) { tm.DNSNames = []string{"contoso.com", "fabrikam.com"} },
			req: func(r *Requirements) {
				r.AdditionalSIPDomains = []string{"northwind.com", "fabrikam.com", "tailspin.com", "Northwind.com"}
			},
			want: []want{
				{RuleSANAdditionalDomain, SeverityWarning, []string{"SAN does not list northwind.com"}},
				{RuleSANAdditionalDomain, SeverityWarning, []string{"SAN does not list tailspin.com"}},
			},
		},
		{
			name: "Exchange: no SIP-domain or server-auth rules",
			modify: func(tm *Template) {
				tm.CommonName = "exchange.example.net"
				tm.DNSNames = nil
				tm.NoServerAuth = true
			},
			req: func(r *Requirements) { r.Product = pb.Product_PRODUCT_EXCHANGE },
		},
		{
			name: "SharePoint: expiry and key size still apply",
			modify: func(tm *Template) {
				tm.CommonName = "sp"
				tm.DNSNames = nil
				tm.KeyBits = 1024
				tm.NotAfter = checkNow.AddDate(0, 0, 12)
			},
			req: func(r *Requirements) { r.Product = pb.Product_PRODUCT_SHAREPOINT },
			want: []want{
				{RuleKeySize, SeverityError, []string{"RSA key is 1024 bits"}},
				{RuleExpiring, SeverityWarning, []string{"in 12 days"}},
			},
		},
		{
			name: "key not exportable",
			req:  func(r *Requirements) { r.KeyNotExportable = true },
			want: []want{{RulePrivateKeyExportable, SeverityError, []string{"private key is not exportable", "(rule private-key-exportable)"}}},
		},
		{
			name:   "strict: expiring within 30 days is an error",
			modify: func(tm *Template) { tm.NotAfter = checkNow.AddDate(0, 0, 12) },
			req:    func(r *Requirements) { r.Strict = true },
			want:   []want{{RuleExpiring, SeverityError, []string{"in 12 days", "strict"}}},
		},
		{
			name:   "strict does not soften errors",
			modify: func(tm *Template) { tm.KeyBits = 1024 },
			req:    func(r *Requirements) { r.Strict = true },
			want:   []want{{RuleKeySize, SeverityError, []string{"RSA key is 1024 bits"}}},
		},
		{
			name:   "no SIP domain known skips the name rules",
			modify: func(tm *Template) { tm.CommonName = "anything"; tm.DNSNames = nil },
			req:    func(r *Requirements) { r.DefaultSIPDomain = "" },
		},
		{
			name:   "RSA 1024",
			modify: func(tm *Template) { tm.KeyBits = 1024 },
			want:   []want{{RuleKeySize, SeverityError, []string{"RSA key is 1024 bits; at least 2048"}}},
		},
		{
			name:   "ECDSA",
			modify: func(tm *Template) { tm.ECDSA = true },
			want:   []want{{RuleKeySize, SeverityError, []string{"ECDSA P-256", "RSA key of at least 2048 bits"}}},
		},
		{
			name:  "no private key",
			noKey: true,
			want:  []want{{RulePrivateKey, SeverityError, []string{"private key is missing"}}},
		},
		{
			name:   "not yet valid",
			modify: func(tm *Template) { tm.NotBefore = checkNow.Add(3 * time.Hour) },
			want:   []want{{RuleNotYetValid, SeverityError, []string{"not valid before 2026-06-01T15:00:00Z (3 hours from now)"}}},
		},
		{
			name: "expired",
			modify: func(tm *Template) {
				tm.NotBefore = checkNow.AddDate(-2, 0, 0)
				tm.NotAfter = checkNow.AddDate(0, 0, -10)
			},
			want: []want{{RuleExpired, SeverityError, []string{"expired on 2026-05-22T12:00:00Z (10 days ago)"}}},
		},
		{
			name:   "expiring within 30 days",
			modify: func(tm *Template) { tm.NotAfter = checkNow.AddDate(0, 0, 12) },
			want:   []want{{RuleExpiring, SeverityWarning, []string{"expires on 2026-06-13T12:00:00Z, in 12 days"}}},
		},
		{
			name:   "31 days left is not yet a warning",
			modify: func(tm *Template) { tm.NotAfter = checkNow.AddDate(0, 0, 31) },
		},
		{
			name:   "custom warning period",
			modify: func(tm *Template) { tm.NotAfter = checkNow.AddDate(0, 0, 45) },
			req:    func(r *Requirements) { r.ExpiryWarning = 60 * 24 * time.Hour },
			want:   []want{{RuleExpiring, SeverityWarning, []string{"in 45 days"}}},
		},
		{
			name:   "client authentication only",
			modify: func(tm *Template) { tm.NoServerAuth = true },
			want:   []want{{RuleServerAuth, SeverityError, []string{"extended key usage (clientAuth) lacks server authentication"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tmpl := goodTemplate()
			if tt.modify != nil {
				tt.modify(&tmpl)
			}
			b := generate(t, tmpl)
			req := checkRequirements()
			if tt.req != nil {
				tt.req(&req)
			}
			got := Check(b.Cert, !tt.noKey, req)
			if len(got) != len(tt.want) {
				t.Fatalf("Check = %v, want %d finding(s)", got, len(tt.want))
			}
			for i, w := range tt.want {
				assertFinding(t, got[i], w.rule, w.severity, append([]string{Thumbprint(b.Cert), "(" + subjectOrNone(b.Cert) + ")"}, w.mention...))
			}
			if HasErrors(got) != slices.ContainsFunc(tt.want, func(w want) bool { return w.severity == SeverityError }) {
				t.Errorf("HasErrors(%v) = %v", got, HasErrors(got))
			}
		})
	}
}

func subjectOrNone(c *x509.Certificate) string {
	if s := c.Subject.String(); s != "" {
		return s
	}
	return "no subject"
}

func assertFinding(t *testing.T, f Finding, rule string, sev Severity, mentions []string) {
	t.Helper()
	if f.Rule != rule || f.Severity != sev {
		t.Errorf("finding %v: want rule %s, severity %s", f, rule, sev)
	}
	for _, m := range mentions {
		if !strings.Contains(f.Message, m) {
			t.Errorf("finding message %q does not mention %q", f.Message, m)
		}
	}
}

// TestCheckExtendedKeyUsage covers EKU shapes Generate does not make: a
// certificate with no EKU extension is valid for all purposes, as Windows
// treats it, and so is one with anyExtendedKeyUsage.
func TestCheckExtendedKeyUsage(t *testing.T) {
	base := func() *x509.Certificate {
		return &x509.Certificate{
			Subject:   pkix.Name{CommonName: "contoso.com"},
			DNSNames:  []string{"contoso.com", "fabrikam.com"},
			NotBefore: checkNow.AddDate(0, -1, 0),
			NotAfter:  checkNow.AddDate(1, 0, 0),
		}
	}
	msSmartcardLogon := asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 2}
	tests := []struct {
		name     string
		eku      []x509.ExtKeyUsage
		unknown  []asn1.ObjectIdentifier
		wantRule bool
		mention  string
	}{
		{name: "no EKU extension means all purposes"},
		{name: "anyExtendedKeyUsage", eku: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}},
		{name: "serverAuth among others", eku: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning, x509.ExtKeyUsageServerAuth}},
		{name: "code signing only", eku: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, wantRule: true, mention: "(codeSigning)"},
		{name: "unknown purpose only", unknown: []asn1.ObjectIdentifier{msSmartcardLogon}, wantRule: true, mention: "(1.3.6.1.4.1.311.20.2.2)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := base()
			tmpl.ExtKeyUsage, tmpl.UnknownExtKeyUsage = tt.eku, tt.unknown
			cert := rawCert(t, tmpl)
			var got []Finding
			for _, f := range Check(cert, true, checkRequirements()) {
				if f.Rule != RuleKeySize { // rawCert's key is ECDSA
					got = append(got, f)
				}
			}
			if !tt.wantRule {
				if len(got) != 0 {
					t.Fatalf("Check = %v, want no findings", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("Check = %v, want one server-auth finding", got)
			}
			assertFinding(t, got[0], RuleServerAuth, SeverityError, []string{Thumbprint(cert), "CN=contoso.com", tt.mention})
		})
	}
}

func TestCheckSame(t *testing.T) {
	const (
		a = "3A1F0C5B9E2D4A6F8B7C1D3E5F708192A3B4C5D6"
		b = "B4C5D63A1F0C5B9E2D4A6F8B7C1D3E5F708192A3"
		c = "0000000000000000000000000000000000000001"
	)
	type want struct {
		host    string
		mention []string
	}
	tests := []struct {
		name  string
		hosts map[string]string
		want  []want
	}{
		{name: "no hosts"},
		{name: "one host", hosts: map[string]string{"fe1": a}},
		{
			name:  "same certificate written differently",
			hosts: map[string]string{"fe1": a, "fe2": strings.ToLower(a), "fe3": "\u200e" + a[:2] + " " + a[2:]},
		},
		{name: "no host has a certificate", hosts: map[string]string{"fe1": "", "fe2": ""}},
		{
			name:  "one differs from the majority",
			hosts: map[string]string{"fe1.contoso.com": a, "fe2.contoso.com": b, "fe3.contoso.com": a},
			want:  []want{{"fe2.contoso.com", []string{"front end fe2.contoso.com has certificate " + b + ", but 2 of 3 front ends have " + a}}},
		},
		{
			name:  "two differ, reported in host order",
			hosts: map[string]string{"fe5": a, "fe4": c, "fe3": a, "fe2": a, "fe1": b},
			want: []want{
				{"fe1", []string{"certificate " + b, "3 of 5 front ends have " + a}},
				{"fe4", []string{"certificate " + c, "3 of 5 front ends have " + a}},
			},
		},
		{
			name:  "a host without a certificate",
			hosts: map[string]string{"fe1": a, "fe2": a, "fe3": ""},
			want:  []want{{"fe3", []string{"front end fe3 has no token-issuer certificate, but 2 of 3 front ends have " + a}}},
		},
		{
			name:  "a tie has no majority: every host is named",
			hosts: map[string]string{"fe1": a, "fe2": b},
			want: []want{
				{"fe1", []string{"front end fe1 has certificate " + a, "no certificate is on a majority of the 2 front ends", a + " on 1", b + " on 1"}},
				{"fe2", []string{"front end fe2 has certificate " + b, "no certificate is on a majority"}},
			},
		},
		{
			name:  "an unparsable thumbprint still counts as different",
			hosts: map[string]string{"fe1": a, "fe2": a, "fe3": "garbage"},
			want:  []want{{"fe3", []string{"certificate garbage"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CheckSame(tt.hosts)
			if len(got) != len(tt.want) {
				t.Fatalf("CheckSame = %v, want %d finding(s)", got, len(tt.want))
			}
			for i, w := range tt.want {
				assertFinding(t, got[i], RuleSameOnAllFrontEnds, SeverityError, append([]string{"front end " + w.host + " "}, w.mention...))
			}
			// Deterministic: map iteration order must not matter.
			for range 20 {
				if again := CheckSame(tt.hosts); !slices.Equal(again, got) {
					t.Fatalf("CheckSame not deterministic: %v then %v", got, again)
				}
			}
		})
	}
}

func TestSeverityString(t *testing.T) {
	for s, want := range map[Severity]string{SeverityError: "error", SeverityWarning: "warning", Severity(7): "Severity(7)"} {
		if got := s.String(); got != want {
			t.Errorf("Severity(%d).String() = %q, want %q", int(s), got, want)
		}
	}
	var zero Finding
	if !HasErrors([]Finding{zero}) {
		t.Error("a finding with unset severity must count as an error")
	}
	if HasErrors(nil) || HasErrors([]Finding{{Severity: SeverityWarning}}) {
		t.Error("HasErrors is true without an error")
	}
}

func TestInfo(t *testing.T) {
	ca := generate(t, Template{CommonName: "Contoso Issuing CA", IsCA: true, NotBefore: checkNow.AddDate(-1, 0, 0), NotAfter: checkNow.AddDate(5, 0, 0)})
	b := generate(t, Template{CommonName: "contoso.com", DNSNames: []string{"contoso.com", "fabrikam.com"}, NotBefore: checkNow, NotAfter: checkNow.AddDate(1, 0, 0), Issuer: ca})
	info := Info(b.Cert, true)
	if info.GetThumbprint() != Thumbprint(b.Cert) || info.GetSubject() != "CN=contoso.com" ||
		info.GetIssuer() != "CN=Contoso Issuing CA" || !slices.Equal(info.GetDnsNames(), []string{"contoso.com", "fabrikam.com"}) ||
		!info.GetNotBefore().AsTime().Equal(checkNow) || !info.GetNotAfter().AsTime().Equal(checkNow.AddDate(1, 0, 0)) ||
		!info.GetHasPrivateKey() {
		t.Errorf("Info = %v", info)
	}
	if Info(b.Cert, false).GetHasPrivateKey() {
		t.Error("Info(cert, false) claims a private key")
	}
	if Info(nil, true) != nil {
		t.Error("Info(nil) is not nil")
	}
}

func TestRequirementsFor(t *testing.T) {
	lync := &pb.HostConfig{
		Product:              pb.Product_PRODUCT_LYNC,
		DefaultSipDomain:     "contoso.com",
		AdditionalSipDomains: []string{"fabrikam.com"},
	}
	tests := []struct {
		name  string
		cfg   *pb.HostConfig
		rules string
		want  Requirements
	}{
		{"lync", lync, "", Requirements{Product: pb.Product_PRODUCT_LYNC, DefaultSIPDomain: "contoso.com", AdditionalSIPDomains: []string{"fabrikam.com"}, Now: checkNow}},
		{"lync standard", lync, "standard", Requirements{Product: pb.Product_PRODUCT_LYNC, DefaultSIPDomain: "contoso.com", AdditionalSIPDomains: []string{"fabrikam.com"}, Now: checkNow}},
		{"lync strict", lync, "strict", Requirements{Product: pb.Product_PRODUCT_LYNC, DefaultSIPDomain: "contoso.com", AdditionalSIPDomains: []string{"fabrikam.com"}, Strict: true, Now: checkNow}},
		// The SIP-domain rules are Lync's: other products get none.
		{"exchange strict", &pb.HostConfig{Product: pb.Product_PRODUCT_EXCHANGE, DefaultSipDomain: "contoso.com"}, "strict", Requirements{Product: pb.Product_PRODUCT_EXCHANGE, Strict: true, Now: checkNow}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &pb.HostConfig{Product: tc.cfg.Product, DefaultSipDomain: tc.cfg.DefaultSipDomain, AdditionalSipDomains: tc.cfg.AdditionalSipDomains, CertificateRules: tc.rules}
			got := RequirementsFor(cfg, checkNow)
			if got.Product != tc.want.Product || got.DefaultSIPDomain != tc.want.DefaultSIPDomain ||
				!slices.Equal(got.AdditionalSIPDomains, tc.want.AdditionalSIPDomains) || got.Strict != tc.want.Strict || !got.Now.Equal(tc.want.Now) {
				t.Errorf("RequirementsFor = %+v; want %+v", got, tc.want)
			}
		})
	}
	// The agent's check of the seed's Default certificate under strict rules.
	b := generate(t, Template{CommonName: "pool01.contoso.com", DNSNames: []string{"pool01.contoso.com", "sip.contoso.com"}, NotBefore: checkNow.AddDate(0, -1, 0), NotAfter: checkNow.AddDate(1, 0, 0)})
	strict := &pb.HostConfig{Product: pb.Product_PRODUCT_LYNC, DefaultSipDomain: "contoso.com", AdditionalSipDomains: []string{"fabrikam.com"}, CertificateRules: "strict"}
	fs := Check(b.Cert, true, RequirementsFor(strict, checkNow))
	if len(fs) != 2 || fs[0].Rule != RuleSubjectCN || fs[1].Rule != RuleSANAdditionalDomain || !HasErrors(fs) || !strings.Contains(fs[1].Message, "fabrikam.com") {
		t.Errorf("Check under strict rules = %v; want subject-cn and san-additional-domain (fabrikam.com) errors", fs)
	}
}
