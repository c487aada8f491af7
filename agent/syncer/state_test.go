package syncer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func testConfig(version string) *pb.HostConfig {
	return &pb.HostConfig{
		Host:            "fe01.contoso.com",
		Deployment:      "pool01",
		Product:         pb.Product_PRODUCT_LYNC,
		ProductVersion:  version,
		DeploymentHosts: []string{"fe01.contoso.com", "fe02.contoso.com"},
		Realm:           "contoso.com",
		TokenIssuer:     &pb.TokenIssuer{Source: &pb.TokenIssuer_Secret{Secret: "oauth-2026"}, SecretThumbprint: "AB12"},
		Partners:        []*pb.Partner{{Name: "exchange", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, Enabled: true}},
		Primary:         true,
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig("2015")
	saved, err := saveState(dir, 42, "hash-1", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if saved.Version != 42 || saved.Hash != "hash-1" || !proto.Equal(saved.config, cfg) {
		t.Errorf("saveState returned %+v; want version 42, hash-1 and the config", saved)
	}

	path := filepath.Join(dir, stateFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v; want 0600", path, fi.Mode().Perm())
	}

	got, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got == nil || got.Version != 42 || got.Hash != "hash-1" || !proto.Equal(got.config, cfg) {
		t.Fatalf("loadState = %+v; want what was saved", got)
	}

	// A second save replaces the first whole, through a temporary file
	// that does not stay behind.
	cfg2 := testConfig("2019")
	if _, err := saveState(dir, 43, "hash-2", cfg2); err != nil {
		t.Fatal(err)
	}
	got, err = loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 43 || got.Hash != "hash-2" || !proto.Equal(got.config, cfg2) {
		t.Errorf("after a second save, loadState = %+v; want version 43", got)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != stateFile {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("state directory holds %v; want only %s", names, stateFile)
	}
}

func TestLoadStateMissing(t *testing.T) {
	got, err := loadState(t.TempDir())
	if got != nil || err != nil {
		t.Fatalf("loadState of a directory without state = %+v, %v; want nil, nil", got, err)
	}
}

func TestLoadStateCorrupt(t *testing.T) {
	tests := []struct {
		name    string
		content string
		wantMsg string
	}{
		{name: "not json", content: "{\"version\": 4", wantMsg: "unexpected end of JSON input"},
		{name: "empty", content: "", wantMsg: "unexpected end of JSON input"},
		{name: "wrong type", content: `{"version":"four","hash":"h","config":{}}`, wantMsg: "cannot unmarshal"},
		{name: "bad config", content: `{"version":4,"hash":"h","config":{"host":5}}`, wantMsg: "configuration"},
		{name: "unknown config field", content: `{"version":4,"hash":"h","config":{"nope":true}}`, wantMsg: "configuration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, stateFile)
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := loadState(dir)
			if err == nil {
				t.Fatalf("loadState of %q = %+v; want an error", tc.content, got)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not name %s and say %q", err, path, tc.wantMsg)
			}
		})
	}
}

func TestMergeErrors(t *testing.T) {
	tests := []struct {
		name  string
		apply []*pb.ItemError
		items []*pb.ItemStatus
		want  []*pb.ItemError
	}{
		{name: "nothing"},
		{name: "only OK and pending items", items: []*pb.ItemStatus{
			{Item: "oauth", State: pb.ItemState_ITEM_STATE_OK},
			{Item: "partner/exchange", State: pb.ItemState_ITEM_STATE_PENDING, Message: "waiting"},
		}},
		{
			name: "dedup and sort",
			apply: []*pb.ItemError{
				{Item: "partner/sharepoint", Message: "apply failed first"},
				{Item: "oauth", Message: "Set-CsOAuthConfiguration failed"},
				{Item: "partner/sharepoint", Message: "apply failed again"},
			},
			items: []*pb.ItemStatus{
				{Item: "oauth", State: pb.ItemState_ITEM_STATE_FAILED, Message: "verify says realm differs"},
				{Item: "issuer-certificate", State: pb.ItemState_ITEM_STATE_FAILED, Message: "not in the store"},
				{Item: "partner/exchange", State: pb.ItemState_ITEM_STATE_OK},
				{Item: "partner/lync", State: pb.ItemState_ITEM_STATE_PENDING, Message: "waiting"},
				{Item: "issuer-certificate", State: pb.ItemState_ITEM_STATE_FAILED, Message: "listed twice"},
			},
			want: []*pb.ItemError{
				{Item: "issuer-certificate", Message: "not in the store"},
				{Item: "oauth", Message: "Set-CsOAuthConfiguration failed"},
				{Item: "partner/sharepoint", Message: "apply failed first"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := mergeErrors(tc.apply, tc.items)
			if len(got) != len(tc.want) {
				t.Fatalf("mergeErrors = %v; want %v", got, tc.want)
			}
			for i := range got {
				if !proto.Equal(got[i], tc.want[i]) {
					t.Errorf("mergeErrors[%d] = %v; want %v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestDriftOf(t *testing.T) {
	rep := &pb.StatusReport{Items: []*pb.ItemStatus{
		{Item: "oauth", State: pb.ItemState_ITEM_STATE_OK},
		{Item: "partner/exchange", State: pb.ItemState_ITEM_STATE_FAILED, Message: "partner missing"},
		{Item: "issuer-certificate", State: pb.ItemState_ITEM_STATE_PENDING, Message: "replica behind"},
		{Item: "partner/sharepoint", State: pb.ItemState_ITEM_STATE_DRIFTED, Message: "disabled"},
	}}
	got := driftOf(rep)
	want := []*pb.Drift{
		{Item: "partner/exchange", Expected: "as applied", Actual: "partner missing"},
		{Item: "issuer-certificate", Expected: "as applied", Actual: "replica behind"},
		{Item: "partner/sharepoint", Expected: "as applied", Actual: "disabled"},
	}
	if len(got) != len(want) {
		t.Fatalf("driftOf = %v; want %v", got, want)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("driftOf[%d] = %v; want %v", i, got[i], want[i])
		}
	}
	wantStates := []pb.ItemState{pb.ItemState_ITEM_STATE_OK, pb.ItemState_ITEM_STATE_DRIFTED, pb.ItemState_ITEM_STATE_DRIFTED, pb.ItemState_ITEM_STATE_DRIFTED}
	for i, it := range rep.GetItems() {
		if it.GetState() != wantStates[i] {
			t.Errorf("item %s state %v; want %v", it.GetItem(), it.GetState(), wantStates[i])
		}
	}
	if d := driftOf(&pb.StatusReport{Items: []*pb.ItemStatus{{Item: "oauth", State: pb.ItemState_ITEM_STATE_OK}}}); len(d) != 0 {
		t.Errorf("driftOf an all-OK report = %v; want none", d)
	}
}

// TestScheduledOnly: a wait for a Lync roll's EffectiveDate is not a stuck
// primary; any other pending item is.
func TestScheduledOnly(t *testing.T) {
	roll := &pb.ItemError{Item: "issuer-certificate", Message: "staged; Lync makes it current at its EffectiveDate: waits for EffectiveDate 2027-01-01T00:00:00Z"}
	primary := &pb.ItemError{Item: "partner/x", Message: "waiting for the deployment's primary host to apply it: partner x: not registered"}
	for _, tc := range []struct {
		pend []*pb.ItemError
		want bool
	}{
		{nil, false},
		{[]*pb.ItemError{roll}, true},
		{[]*pb.ItemError{roll, primary}, false},
		{[]*pb.ItemError{primary}, false},
	} {
		if got := scheduledOnly(tc.pend); got != tc.want {
			t.Errorf("scheduledOnly(%v) = %v, want %v", tc.pend, got, tc.want)
		}
	}
}
