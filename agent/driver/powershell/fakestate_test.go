package powershell

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
)

// The stateful fake: a product store kept in a JSON file
// (S2S_FAKE_STATE) that the write operations change and the read
// operations show, in the scripts' output shapes, so that apply, verify and
// a second apply run end to end through the driver and the shared
// reconciler. It starts from the golden read results.

type fakeState struct {
	LyncPartners []lyncPartner     `json:"lyncPartners"`
	LyncOAuth    lyncOAuth         `json:"lyncOAuth"`
	LyncCerts    lyncCertificates  `json:"lyncCerts"`
	ExPartners   []exchangePartner `json:"exPartners"`
	ExAuth       authConfig        `json:"exAuth"`
	ExCerts      []exchangeCertificate
	SPIssuers    []spIssuer     `json:"spIssuers"`
	SPRealm      string         `json:"spRealm"`
	SPSTS        stsConfig      `json:"spSts"`
	SPPerm       *appPermission `json:"spPerm"`
}

func goldenResult(script, op string, out any) {
	g, err := findGolden(script, op, mustJSON(goldenRequest(script, op)))
	if err != nil || g == nil {
		panic("stateful fake: no golden " + script + "/" + op)
	}
	if err := json.Unmarshal(g.Response, out); err != nil {
		panic(err)
	}
}

// goldenRequest is the request of the op's base golden file.
func goldenRequest(script, op string) json.RawMessage {
	b, err := os.ReadFile(os.Getenv("S2S_FAKE_GOLDEN") + "/" + script + "/" + op + ".json")
	if err != nil {
		panic(err)
	}
	var g golden
	_ = json.Unmarshal(b, &g)
	return g.Request
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func loadState() *fakeState {
	p := os.Getenv("S2S_FAKE_STATE")
	var st fakeState
	if b, err := os.ReadFile(p); err == nil {
		if json.Unmarshal(b, &st) == nil {
			return &st
		}
	}
	goldenResult("lync", "get-partner-applications", &st.LyncPartners)
	goldenResult("lync", "get-oauth-configuration", &st.LyncOAuth)
	goldenResult("lync", "get-certificates", &st.LyncCerts)
	goldenResult("exchange", "get-partner-applications", &st.ExPartners)
	goldenResult("exchange", "get-auth-config", &st.ExAuth)
	goldenResult("exchange", "get-exchange-certificates", &st.ExCerts)
	goldenResult("sharepoint", "get-trusted-issuers", &st.SPIssuers)
	var realm struct{ Realm string }
	goldenResult("sharepoint", "get-authentication-realm", &realm)
	st.SPRealm = realm.Realm
	goldenResult("sharepoint", "get-sts-config", &st.SPSTS)
	return &st
}

func (st *fakeState) save() {
	b, _ := json.Marshal(st)
	_ = os.WriteFile(os.Getenv("S2S_FAKE_STATE"), b, 0o600)
}

// appIDOf is what a metadata document at url would say about its issuer.
func appIDOf(url string) string {
	switch {
	case strings.Contains(url, "/autodiscover/"):
		return "00000002-0000-0ff1-ce00-000000000000"
	case strings.Contains(url, "/_layouts/"):
		return "00000003-0000-0ff1-ce00-000000000000"
	}
	return "00000004-0000-0ff1-ce00-000000000000"
}

func statefulAnswer(script, op string, raw json.RawMessage) (any, *ErrorRecord, bool) {
	var a map[string]any
	_ = json.Unmarshal(raw, &a)
	str := func(k string) string { s, _ := a[k].(string); return s }
	boolean := func(k string, def bool) bool {
		if b, ok := a[k].(bool); ok {
			return b
		}
		return def
	}
	st := loadState()
	notFound := func(cmdlet, what string) (any, *ErrorRecord, bool) {
		return nil, &ErrorRecord{Cmdlet: cmdlet, FullyQualifiedErrorID: "NotFound", Category: "ObjectNotFound", Message: what + " was not found"}, true
	}
	done := func(v any) (any, *ErrorRecord, bool) { st.save(); return v, nil, true }
	switch script + "/" + op {
	case "lync/get-partner-applications":
		return st.LyncPartners, nil, true
	case "lync/get-oauth-configuration":
		return st.LyncOAuth, nil, true
	case "lync/get-certificates":
		return st.LyncCerts, nil, true
	case "lync/new-partner-application":
		p := lyncPartner{Identity: str("identity"), Name: str("identity"), MetadataURL: str("metadataUrl"), ApplicationIdentifier: appIDOf(str("metadataUrl")),
			Realm: "acme-s2s.example", ApplicationTrustLevel: str("applicationTrustLevel"), Enabled: boolean("enabled", true)}
		st.LyncPartners = append(st.LyncPartners, p)
		return done(p)
	case "lync/set-partner-application":
		i := slices.IndexFunc(st.LyncPartners, func(p lyncPartner) bool { return p.Identity == str("identity") })
		if i < 0 {
			return notFound("Set-CsPartnerApplication", "partner application "+str("identity"))
		}
		p := &st.LyncPartners[i]
		if v := str("applicationTrustLevel"); v != "" {
			p.ApplicationTrustLevel = v
		}
		if v := str("metadataUrl"); v != "" {
			p.MetadataURL = v
		}
		p.Enabled = boolean("enabled", p.Enabled)
		return done(*p)
	case "lync/remove-partner-application":
		n := len(st.LyncPartners)
		st.LyncPartners = slices.DeleteFunc(st.LyncPartners, func(p lyncPartner) bool { return p.Identity == str("identity") })
		if len(st.LyncPartners) == n {
			return notFound("Remove-CsPartnerApplication", "partner application "+str("identity"))
		}
		return done(map[string]bool{"removed": true})
	case "lync/set-oauth-configuration":
		if v := str("serviceName"); v != "" {
			st.LyncOAuth.ServiceName = v
		}
		if v := str("exchangeAutodiscoverUrl"); v != "" {
			st.LyncOAuth.ExchangeAutodiscoverURL = v
		}
		if v := str("realm"); v != "" {
			st.LyncOAuth.Realm = v
		}
		return done(map[string]bool{"updated": true})
	case "lync/set-issuer-certificate":
		i := slices.IndexFunc(st.LyncCerts.Default, func(c csCertificate) bool { return strings.EqualFold(c.Thumbprint, str("thumbprint")) })
		if i < 0 {
			return notFound("Set-CsCertificate", "certificate "+str("thumbprint"))
		}
		c := st.LyncCerts.Default[i]
		c.Use, c.EffectiveDate = "OAuthTokenIssuer", "2026-01-01T00:00:00.0000000Z"
		st.LyncCerts.OAuthTokenIssuer = []csCertificate{c}
		return done(map[string]bool{"assigned": true})

	case "exchange/get-partner-applications":
		return st.ExPartners, nil, true
	case "exchange/get-auth-config":
		return st.ExAuth, nil, true
	case "exchange/get-exchange-certificates":
		return st.ExCerts, nil, true
	case "exchange/configure-partner-application":
		name := map[string]string{"Lync": "LyncEnterprise-acme", "SharePoint": "SharePointEnterprise-acme2"}[str("applicationType")]
		p := exchangePartner{Name: name, AuthMetadataURL: str("authMetadataUrl"), ApplicationIdentifier: appIDOf(str("authMetadataUrl")), Enabled: boolean("enabled", true)}
		st.ExPartners = append(st.ExPartners, p)
		return done(p)
	case "exchange/set-partner-application":
		i := slices.IndexFunc(st.ExPartners, func(p exchangePartner) bool { return p.Name == str("identity") })
		if i < 0 {
			return notFound("Set-PartnerApplication", "partner application "+str("identity"))
		}
		p := &st.ExPartners[i]
		p.Enabled = boolean("enabled", p.Enabled)
		if v := str("authMetadataUrl"); v != "" {
			p.AuthMetadataURL = v
		}
		return done(*p)
	case "exchange/import-exchange-certificate":
		t := os.Getenv("S2S_TEST_THUMBPRINT")
		st.ExCerts = append(st.ExCerts, exchangeCertificate{Thumbprint: t, HasPrivateKey: true, Subject: "CN=acme-s2s.example"})
		return done(map[string]string{"thumbprint": t})
	case "exchange/set-auth-config":
		switch str("action") {
		case "current-certificate":
			st.ExAuth.PreviousCertificateThumbprint, st.ExAuth.CurrentCertificateThumbprint = st.ExAuth.CurrentCertificateThumbprint, str("thumbprint")
		case "realm":
			st.ExAuth.Realm = str("realm")
		}
		return done(map[string]bool{"updated": true})
	case "exchange/iisreset", "sharepoint/iisreset":
		return map[string]any{"exitCode": 0, "output": "Internet services successfully restarted"}, nil, true
	case "sharepoint/restart-timer":
		return map[string]string{"restarted": "SPTimerV4"}, nil, true

	case "sharepoint/get-trusted-issuers":
		return st.SPIssuers, nil, true
	case "sharepoint/get-authentication-realm":
		return map[string]string{"realm": st.SPRealm}, nil, true
	case "sharepoint/get-sts-config":
		return st.SPSTS, nil, true
	case "sharepoint/get-app-principal-permission":
		if st.SPPerm == nil {
			return appPermission{NameIdentifier: str("clientId") + "@" + st.SPRealm, Found: true, Right: "Read"}, nil, true
		}
		return *st.SPPerm, nil, true
	case "sharepoint/new-trusted-issuer":
		id := appIDOf(str("metadataEndPoint"))
		i := spIssuer{Name: str("name"), RegisteredIssuerName: id + "@" + st.SPRealm, MetadataEndPoint: str("metadataEndPoint"), IsSelfIssuer: !boolean("isTrustBroker", false)}
		st.SPIssuers = append(st.SPIssuers, i)
		return done(i)
	case "sharepoint/set-app-principal-permission":
		st.SPPerm = &appPermission{NameIdentifier: str("clientId") + "@" + st.SPRealm, Found: true, Right: "FullControl", AppOnly: true}
		return done(map[string]bool{"updated": true})
	case "sharepoint/set-sts-http":
		st.SPSTS.AllowOAuthOverHTTP, st.SPSTS.AllowMetadataOverHTTP = boolean("allowOAuthOverHttp", false), boolean("allowMetadataOverHttp", false)
		return done(map[string]bool{"updated": true})
	case "sharepoint/import-signing-certificate":
		t := os.Getenv("S2S_TEST_THUMBPRINT")
		st.SPSTS.SigningCertificate = &certificateFacts{Thumbprint: t, HasPrivateKey: true}
		return done(map[string]string{"thumbprint": t})
	}
	return nil, nil, false
}
