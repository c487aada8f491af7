package metadata

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// farmID is a SharePoint farm's default realm: its farm id, lower case.
const farmID = "5f3a1c2e-8b7d-4e61-9a0f-3c2d1b4e5a69"

// slashEscaped writes base64 as .NET's JSON serializer does, "/" as "\/",
// which a parser must read as "/".
func slashEscaped(b64 string) string { return strings.ReplaceAll(b64, "/", `\/`) }

// realDocuments are documents in each product's own shape and casing, as
// the products serve them (see Shape for the sources), around our own
// certificate.
func realDocuments(c *x509.Certificate) map[string]string {
	value := base64.StdEncoding.EncodeToString(c.Raw)
	return map[string]string{
		// SharePoint: no realm, no keyinfo, no endpoints; keyValue, "Signing",
		// "x509certificate", name is the service name, slashes escaped.
		"sharepoint": `{"issuer":"00000003-0000-0ff1-ce00-000000000000@` + farmID + `","keys":[{"keyValue":{"type":"x509certificate","value":"` +
			slashEscaped(value) + `"},"usage":"Signing"}],"name":"00000003-0000-0ff1-ce00-000000000000","serviceName":"00000003-0000-0ff1-ce00-000000000000"}`,
		// Exchange: realm "*", issuer "…@*".
		"exchange": `{"id":"_70b34511-d105-4e2b-9675-39f53305bb01","version":"1.0","name":"Exchange","realm":"*",` +
			`"serviceName":"00000002-0000-0ff1-ce00-000000000000","issuer":"00000002-0000-0ff1-ce00-000000000000@*",` +
			`"allowedAudiences":["00000002-0000-0ff1-ce00-000000000000@*"],"keys":[{"usage":"signing","keyinfo":{"x5t":"` + x5t(c.Raw) +
			`"},"keyvalue":{"type":"x509Certificate","value":"` + value + `"}}],"endpoints":[{"location":"https://ex01.contoso.com:444/autodiscover/metadata/json/1","protocol":"OAuth2","usage":"metadata"}]}`,
		// Lync: the fullest form, here with camel-case keyInfo/keyValue.
		"lync": `{"id":"_1","version":"1.0","name":"pool01.contoso.com","realm":"contoso.com","serviceName":"00000004-0000-0ff1-ce00-000000000000",` +
			`"issuer":"00000004-0000-0ff1-ce00-000000000000@contoso.com","allowedAudiences":["00000004-0000-0ff1-ce00-000000000000/pool01.contoso.com@contoso.com"],` +
			`"keys":[{"usage":"signing","keyInfo":{"x5t":"` + x5t(c.Raw) + `"},"keyValue":{"type":"x509Certificate","value":"` + value + `"}}],` +
			`"endpoints":[{"location":"https://pool01.contoso.com/metadata/json/1","protocol":"OAuth2","usage":"metadata"}]}`,
	}
}

func TestRealShapesAccepted(t *testing.T) {
	c := signingCerts()[0]
	docs := realDocuments(c)
	tests := []struct {
		name, serviceName, wantRealm string
		wantShape                    Shape
	}{
		{name: "sharepoint", serviceName: products.SharePointID, wantRealm: farmID, wantShape: ShapeSharePoint},
		{name: "exchange", serviceName: products.ExchangeID, wantRealm: "*", wantShape: ShapeFull},
		{name: "lync", serviceName: products.LyncID, wantRealm: "contoso.com", wantShape: ShapeFull},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse([]byte(docs[tt.name]))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if d.Shape != tt.wantShape || d.EffectiveRealm() != tt.wantRealm {
				t.Errorf("shape %v, effective realm %q; want %v, %q", d.Shape, d.EffectiveRealm(), tt.wantShape, tt.wantRealm)
			}
			// The receiver knows no realm in advance, or knows the right one.
			// Exchange's "*" accepts any wanted realm.
			wants := []string{"", tt.wantRealm}
			if tt.wantRealm == "*" {
				wants = append(wants, "contoso.com")
			}
			for _, want := range wants {
				signing, err := Validate(d, tt.serviceName, want)
				if err != nil {
					t.Fatalf("Validate(realm %q): %v", want, err)
				}
				if len(signing) != 1 || !signing[0].Equal(c) {
					t.Fatalf("Validate returned %d certificates", len(signing))
				}
			}
			// Written again, a document keeps its shape.
			again, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse(again)
			if err != nil || !reflect.DeepEqual(back, d) {
				t.Errorf("rewritten document differs (%v):\n%s", err, again)
			}
		})
	}
}

func TestRealShapesRefused(t *testing.T) {
	c := signingCerts()[0]
	other := signingCerts()[1]
	sp := realDocuments(c)["sharepoint"]
	tests := []struct {
		name, doc, serviceName, realm string
		wantField, wantErr            string
	}{
		{name: "sharepoint document as another partner", doc: sp, serviceName: products.ExchangeID,
			wantField: "serviceName", wantErr: `serviceName is "00000003-0000-0ff1-ce00-000000000000", want "00000002-0000-0ff1-ce00-000000000000"`},
		{name: "sharepoint farm of another realm", doc: sp, serviceName: products.SharePointID, realm: "11111111-2222-3333-4444-555555555555",
			wantField: "issuer", wantErr: `realm (from issuer "00000003-0000-0ff1-ce00-000000000000@` + farmID + `") is "` + farmID + `", want "11111111-2222-3333-4444-555555555555"`},
		{name: "sharepoint without a signing key", doc: strings.Replace(sp, `"usage":"Signing"`, `"usage":"Encryption"`, 1), serviceName: products.SharePointID,
			wantField: "keys", wantErr: "no signing key"},
		{name: "sharepoint key that does not parse", doc: strings.Replace(sp, `"value":"MII`, `"value":"AAA`, 1), serviceName: products.SharePointID,
			wantField: "keys[0].keyvalue", wantErr: "key 1: certificate does not parse: "},
		{name: "sharepoint issuer of another client", doc: strings.Replace(sp, `"issuer":"00000003`, `"issuer":"00000004`, 1), serviceName: products.SharePointID,
			wantField: "issuer", wantErr: `issuer "00000004-0000-0ff1-ce00-000000000000@` + farmID + `" names client id`},
		{name: "sharepoint with a wrong x5t", doc: strings.Replace(sp, `"keyValue":`, `"keyInfo":{"x5t":"`+x5t(other.Raw)+`"},"keyValue":`, 1), serviceName: products.SharePointID,
			wantField: "keys[0].keyinfo.x5t", wantErr: `key 1: x5t "` + x5t(other.Raw) + `" does not match its certificate`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse([]byte(tt.doc))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			_, err = Validate(d, tt.serviceName, tt.realm)
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("Validate error = %v, want an *InvalidError", err)
			}
			if inv.Field != tt.wantField || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("Validate error = %q (field %q), want %q (field %q)", err, inv.Field, tt.wantErr, tt.wantField)
			}
		})
	}
}

func TestBuildFor(t *testing.T) {
	c := signingCerts()[0]
	value := base64.StdEncoding.EncodeToString(c.Raw)
	tests := []struct {
		name                           string
		product                        pb.Product
		serviceName, realm, hostOrName string
		want                           string
	}{
		{
			name: "sharepoint", product: pb.Product_PRODUCT_SHAREPOINT, realm: farmID, hostOrName: "https://sp.contoso.com",
			want: `{"issuer":"00000003-0000-0ff1-ce00-000000000000@` + farmID + `","keys":[{"keyValue":{"type":"x509certificate","value":"` + value +
				`"},"usage":"Signing"}],"name":"00000003-0000-0ff1-ce00-000000000000","serviceName":"00000003-0000-0ff1-ce00-000000000000"}`,
		},
		{
			name: "exchange with a blank realm", product: pb.Product_PRODUCT_EXCHANGE, hostOrName: "autodiscover.contoso.com",
			want: `{"id":"` + documentID(products.ExchangeID, "*", "autodiscover.contoso.com") + `","version":"1.0","name":"Exchange","realm":"*",` +
				`"serviceName":"00000002-0000-0ff1-ce00-000000000000","issuer":"00000002-0000-0ff1-ce00-000000000000@*",` +
				`"allowedAudiences":["00000002-0000-0ff1-ce00-000000000000@*"],"keys":[{"usage":"signing","keyinfo":{"x5t":"` + x5t(c.Raw) +
				`"},"keyvalue":{"type":"x509Certificate","value":"` + value + `"}}],` +
				`"endpoints":[{"location":"https://autodiscover.contoso.com/autodiscover/metadata/json/1","protocol":"OAuth2","usage":"metadata"}]}`,
		},
		{
			name: "exchange with a declared realm", product: pb.Product_PRODUCT_EXCHANGE, realm: "contoso.com", hostOrName: "autodiscover.contoso.com",
			want: `{"id":"` + documentID(products.ExchangeID, "contoso.com", "autodiscover.contoso.com") + `","version":"1.0","name":"Exchange","realm":"contoso.com",` +
				`"serviceName":"00000002-0000-0ff1-ce00-000000000000","issuer":"00000002-0000-0ff1-ce00-000000000000@contoso.com",` +
				`"allowedAudiences":["00000002-0000-0ff1-ce00-000000000000@contoso.com"],"keys":[{"usage":"signing","keyinfo":{"x5t":"` + x5t(c.Raw) +
				`"},"keyvalue":{"type":"x509Certificate","value":"` + value + `"}}],` +
				`"endpoints":[{"location":"https://autodiscover.contoso.com/autodiscover/metadata/json/1","protocol":"OAuth2","usage":"metadata"}]}`,
		},
		{
			name: "lync", product: pb.Product_PRODUCT_LYNC, realm: "contoso.com", hostOrName: "pool01.contoso.com",
			want: `{"id":"` + documentID(products.LyncID, "contoso.com", "pool01.contoso.com") + `","version":"1.0","name":"pool01.contoso.com","realm":"contoso.com",` +
				`"serviceName":"00000004-0000-0ff1-ce00-000000000000","issuer":"00000004-0000-0ff1-ce00-000000000000@contoso.com",` +
				`"allowedAudiences":["00000004-0000-0ff1-ce00-000000000000/pool01.contoso.com@contoso.com","00000004-0000-0ff1-ce00-000000000000@contoso.com"],` +
				`"keys":[{"usage":"signing","keyinfo":{"x5t":"` + x5t(c.Raw) + `"},"keyvalue":{"type":"x509Certificate","value":"` + value + `"}}],` +
				`"endpoints":[{"location":"https://pool01.contoso.com/metadata/json/1","protocol":"OAuth2","usage":"metadata"}]}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := BuildFor(tt.product, tt.serviceName, tt.realm, tt.hostOrName, []*x509.Certificate{c, nil})
			got, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("BuildFor wrote\n%s\nwant\n%s", got, tt.want)
			}
			back, err := Parse(got)
			if err != nil || !reflect.DeepEqual(back, d) {
				t.Fatalf("round trip changed the document (%v):\n got %+v\nwant %+v", err, back, d)
			}
			signing, err := Validate(back, products.ServiceName(tt.product), "")
			if err != nil || len(signing) != 1 || !signing[0].Equal(c) {
				t.Fatalf("Validate: %d certificates, %v", len(signing), err)
			}
		})
	}
	if empty, _ := json.Marshal(BuildFor(pb.Product_PRODUCT_SHAREPOINT, "", farmID, "", nil)); !strings.Contains(string(empty), `"keys":[]`) {
		t.Errorf("a SharePoint document without keys should carry an empty list, not null: %s", empty)
	}
}
