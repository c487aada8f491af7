package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/internal/version"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// runIO runs a command line with stdin as its standard input and returns
// its standard output and standard error apart.
func runIO(t *testing.T, dataDir, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	root := NewRoot(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"--data-dir", dataDir}, args...))
	err = root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

// appliedContoso starts a controller with contoso.yaml applied and
// returns its data directory.
func appliedContoso(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	startController(t, dir)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	mustRun(t, dir, "apply", "-f", contosoFile(t))
	waitFor(t, "the five hosts", func() (bool, string) {
		out, err := run(t, dir, "get", "hosts")
		return err == nil && len(tableRows(t, out)) == 5, out
	})
	return dir
}

// parseBoth parses the JSON j and the YAML y and returns both
// re-marshalled by encoding/json, which sorts keys and spells numbers one
// way.
func parseBoth(t *testing.T, j, y string) (any, any) {
	t.Helper()
	var fromJSON, fromYAML any
	if err := json.Unmarshal([]byte(j), &fromJSON); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, j)
	}
	if err := yaml.Unmarshal([]byte(y), &fromYAML); err != nil {
		t.Fatalf("not YAML: %v\n%s", err, y)
	}
	// Through encoding/json both ways: YAML's integers become JSON's numbers.
	norm := func(v any) any {
		b, _ := json.Marshal(v)
		var out any
		_ = json.Unmarshal(b, &out)
		return out
	}
	return norm(fromJSON), norm(fromYAML)
}

// sameShape reports whether a and b have the same keys at every level and
// lists of the same lengths, whatever the values: two runs of a command
// see a fleet a moment apart (a pending push's age ticks).
func sameShape(a, b any) bool {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || !sameShape(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameShape(x[i], y[i]) {
				return false
			}
		}
		return true
	case nil:
		return true
	}
	_, isMap := b.(map[string]any)
	_, isList := b.([]any)
	return !isMap && !isList
}

// TestEveryReadCommandPrintsJSONAndYAML runs each read command with -o
// json and -o yaml against a real controller: the JSON parses, the YAML
// holds the same data, a format the command does not print is refused
// naming the value and the accepted ones, and nothing else goes to
// standard output.
func TestEveryReadCommandPrintsJSONAndYAML(t *testing.T) {
	dir := appliedContoso(t)
	reportAs(t, dir, "fe01.contoso.com", &pb.StatusReport{Primary: true, Clock: timestamppb.Now()})
	waitFor(t, "fe01's report", func() (bool, string) {
		out, err := run(t, dir, "get", "host", "fe01.contoso.com")
		return err == nil && strings.Contains(out, "Realm: "), out
	})
	tests := []struct {
		args []string
		// exit is the exit code expected (status exits non-zero while hosts are disconnected).
		exit     int
		accepted string
		// check, when set, checks the JSON.
		check func(t *testing.T, js string)
	}{
		{args: []string{"get", "hosts"}, accepted: "table, json or yaml", check: func(t *testing.T, js string) {
			var l pb.ListHostsResponse
			if err := protojson.Unmarshal([]byte(js), &l); err != nil || len(l.GetHosts()) != 5 {
				t.Errorf("not a ListHostsResponse of 5 hosts (%v):\n%s", err, js)
			}
			// Every field is there, set or not.
			wantContains(t, "get hosts -o json", js, `"connected": false`, `"clockOffsetMs": "0"`, `"drift": []`)
		}},
		{args: []string{"get", "host", "fe01.contoso.com"}, accepted: "table, json or yaml", check: func(t *testing.T, js string) {
			var d struct {
				Host   map[string]any `json:"host"`
				Status map[string]any `json:"status"`
				State  string         `json:"state"`
			}
			if err := json.Unmarshal([]byte(js), &d); err != nil || d.Host["host"] != "fe01.contoso.com" || d.Status["primary"] != true || d.State != statePending {
				t.Errorf("not fe01 pending with its report (%v):\n%s", err, js)
			}
		}},
		{args: []string{"get", "revisions"}, accepted: "table, json or yaml"},
		{args: []string{"get", "topology"}, accepted: "yaml or json"},
		{args: []string{"get", "audit"}, accepted: "table, json or yaml"},
		{args: []string{"secret", "list"}, accepted: "table, json or yaml"},
		{args: []string{"host", "list"}, accepted: "table, json or yaml"},
		{args: []string{"status"}, exit: exitDisconnected, accepted: "table, json or yaml", check: func(t *testing.T, js string) {
			var s struct {
				Summary summary `json:"summary"`
				Hosts   []struct {
					State string `json:"state"`
				} `json:"hosts"`
			}
			if err := json.Unmarshal([]byte(js), &s); err != nil || s.Summary.Hosts != 5 || s.Summary.Disconnected != 4 || s.Summary.Pending != 1 ||
				s.Summary.TrustFailing != 5 || len(s.Hosts) != 5 {
				t.Errorf("status -o json: want 5 hosts, 4 disconnected, 1 pending, 5 failing edges (%v):\n%s", err, js)
			}
		}},
		{args: []string{"status", "--host", "fe01.contoso.com"}, accepted: "table, json or yaml"},
		{args: []string{"status", "--trust"}, exit: exitTrust, accepted: "table, json or yaml", check: func(t *testing.T, js string) {
			var r pb.GetTrustReportResponse
			if err := protojson.Unmarshal([]byte(js), &r); err != nil || len(r.GetEdges()) != 5 {
				t.Errorf("not a trust report of 5 edges (%v):\n%s", err, js)
			}
		}},
		{args: []string{"status", "--plan"}, accepted: "table, json or yaml"},
		{args: []string{"version"}, accepted: "table, json or yaml", check: func(t *testing.T, js string) {
			var v version.Info
			if err := json.Unmarshal([]byte(js), &v); err != nil || v.Name != "s2s-controller" || v.Release != version.Release || v.Go == "" {
				t.Errorf("version -o json (%v):\n%s", err, js)
			}
		}},
		{args: []string{"discover", "--allow-conflicts"}, accepted: "yaml or json"},
		{args: []string{"rollout", "history"}, accepted: "table, json or yaml", check: func(t *testing.T, js string) {
			var l pb.ListRolloutsResponse
			if err := protojson.Unmarshal([]byte(js), &l); err != nil || len(l.GetRollouts()) != 0 {
				t.Errorf("not an empty ListRolloutsResponse (%v):\n%s", err, js)
			}
		}},
		{args: []string{"rotate", "list"}, accepted: "table, json or yaml", check: func(t *testing.T, js string) {
			var l pb.ListRotationsResponse
			if err := protojson.Unmarshal([]byte(js), &l); err != nil || len(l.GetRotations()) != 0 {
				t.Errorf("not an empty ListRotationsResponse (%v):\n%s", err, js)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			outs := map[string]string{}
			for _, f := range []string{formatJSON, formatYAML} {
				out, _, err := runIO(t, dir, "", append(tt.args, "-o", f)...)
				if (tt.exit == 0 && err != nil) || (tt.exit != 0 && ExitCode(err) != tt.exit) {
					t.Fatalf("-o %s: %v (exit %d), want exit %d\n%s", f, err, ExitCode(err), tt.exit, out)
				}
				outs[f] = out
			}
			if !json.Valid([]byte(outs[formatJSON])) {
				t.Fatalf("-o json is not JSON:\n%s", outs[formatJSON])
			}
			if j, y := parseBoth(t, outs[formatJSON], outs[formatYAML]); !sameShape(j, y) {
				t.Errorf("-o yaml is not shaped as -o json:\n%s\n---\n%s", outs[formatYAML], outs[formatJSON])
			}
			if tt.check != nil {
				tt.check(t, outs[formatJSON])
			}
			out, _, err := runIO(t, dir, "", append(tt.args, "-o", "xml")...)
			if err == nil || ExitCode(err) != 1 {
				t.Fatalf("-o xml: %v, want exit 1", err)
			}
			wantContains(t, "-o xml", err.Error(), `-o "xml": want `+tt.accepted)
			if out != "" {
				t.Errorf("-o xml printed %q, want nothing", out)
			}
		})
	}
}

// TestReadCommandsHaveOutput walks the command tree: every command that
// only reads must take -o, so that a new one cannot be added without it.
func TestReadCommandsHaveOutput(t *testing.T) {
	// Commands that change something, run something or print what is not
	// a record (a diff, a URL, a token).
	notRead := map[string]bool{
		"apply": true, "diff": true, "serve": true, "demo": true, "bench": true, "certs issue-agent": true, "certs issue-token-issuer": true,
		"certs issue-admin": true, "secret put": true, "store defrag": true, "host revoke": true, "host retry": true,
		"ui token": true, "rollout pause": true, "rollout resume": true, "rollout abort": true, "rollout undo": true,
		"rotate issuer": true, "rotate auth-certificate": true, "rotate sts-certificate": true, "rotate cancel": true,
		"completion": true, "help": true,
	}
	var walk func(c *cobra.Command, path string)
	seen := 0
	walk = func(c *cobra.Command, path string) {
		if c.Hidden {
			return // internal, e.g. the bench's agent processes
		}
		if len(c.Commands()) == 0 {
			name := strings.TrimPrefix(path, " ")
			if strings.HasPrefix(name, "completion") || notRead[name] {
				return
			}
			seen++
			if c.Flags().Lookup("output") == nil || c.Flags().ShorthandLookup("o") == nil {
				t.Errorf("read command %q has no -o/--output", name)
			}
			return
		}
		for _, sub := range c.Commands() {
			walk(sub, path+" "+sub.Name())
		}
	}
	walk(NewRoot(&bytes.Buffer{}), "")
	if seen < 10 {
		t.Errorf("only %d read commands found; the walk is broken", seen)
	}
}

// TestTopologyFromStandardInput applies and diffs a topology read from
// standard input (-f -).
func TestTopologyFromStandardInput(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	doc := string(mustRead(t, contosoFile(t)))

	out, _, err := runIO(t, dir, doc, "apply", "-f", "-")
	if err != nil {
		t.Fatalf("apply -f -: %v\n%s", err, out)
	}
	wantContains(t, "apply -f -", out, "5 of 5 hosts change\n", "applied: revision 1 ")
	out, _, err = runIO(t, dir, doc, "diff", "-f", "-")
	if err != nil || !strings.HasSuffix(out, "(standard input) is the current revision: nothing differs\n") {
		t.Errorf("diff -f - of the applied document: %v\n%s", err, out)
	}
	out, _, err = runIO(t, dir, strings.Replace(doc, "removePartners: [app]", "removePartners: [app, old]", 1), "diff", "-f", "-")
	if ExitCode(err) != exitDiff || !strings.Contains(out, "+++ (standard input)") || !strings.Contains(out, "old") {
		t.Errorf("diff -f - of a changed document: exit %d (%v), want %d and the change\n%s", ExitCode(err), err, exitDiff, out)
	}

	_, _, err = runIO(t, dir, "", "apply", "-f", "-")
	wantContains(t, "error", fmt.Sprint(err), "topology (standard input) is empty")
	_, _, err = runIO(t, dir, strings.Replace(doc, `product: exchange, version: "2019"`, `product: exchange, version: "2010"`, 1), "apply", "-f", "-")
	wantRPCError(t, err, "apply (standard input): ", "InvalidArgument", "(standard input):", "deployments[1].version")
	if rows := tableRows(t, mustRun(t, dir, "get", "revisions")); len(rows) != 1 {
		t.Errorf("refused applies from standard input stored a revision: %v", rows)
	}
}

// TestGetHost shows one host in detail, the same by `get host H` and
// `get hosts H`, and refuses a host the topology does not have.
func TestGetHost(t *testing.T) {
	dir := appliedContoso(t)
	reportAs(t, dir, "fe01.contoso.com", &pb.StatusReport{Primary: true, Clock: timestamppb.New(time.Now().Add(10 * time.Minute)),
		Items: []*pb.ItemStatus{{Item: "partner/microsoft.exchange", State: pb.ItemState_ITEM_STATE_OK}}})
	var out string
	waitFor(t, "fe01's report and clock", func() (bool, string) {
		var err error
		out, err = run(t, dir, "get", "host", "FE01.contoso.com")
		return err == nil && strings.Contains(out, "partner/microsoft.exchange") && regexp.MustCompile(`(?m)^Clock offset +: \+(10m|9m59)`).MatchString(out), out
	})
	wantContains(t, "get host", out, "Host            : fe01.contoso.com\n", "Deployment      : pool01\n", "State           : pending\n",
		"Connected       : yes\n", "\n=== fe01.contoso.com (pool01, Lync / Skype for Business Server 2015, primary)\n")
	if !regexp.MustCompile(`(?m)^Reported +: \ds ago$`).MatchString(out) {
		t.Errorf("get host shows no report age of a few seconds:\n%s", out)
	}
	if other := mustRun(t, dir, "get", "hosts", "fe01.contoso.com"); !sameHostDetail(other, out) {
		t.Errorf("get hosts fe01 differs from get host fe01:\n%s\n---\n%s", other, out)
	}
	out, err := mustFail(t, dir, "get", "host", "nowhere.contoso.com")
	wantRPCError(t, err, "get host nowhere.contoso.com: NotFound", `"nowhere.contoso.com" is not in the current topology`, "get hosts lists them")
	if out != "" {
		t.Errorf("get host of an unknown host printed %q", out)
	}
	_, err = mustFail(t, dir, "get", "host")
	wantContains(t, "error", err.Error(), "accepts 1 arg")
}

// sameHostDetail compares two get host outputs but for the report age,
// which may tick between them.
func sameHostDetail(a, b string) bool {
	re := regexp.MustCompile(`(?m)^Reported +: .*$`)
	return re.ReplaceAllString(a, "") == re.ReplaceAllString(b, "")
}

// TestStatusClock checks that status shows each host's clock offset and
// report age, warns naming the host whose clock is off and the two hosts
// too far apart for tokens, and that --host narrows it to one host.
func TestStatusClock(t *testing.T) {
	dir := appliedContoso(t)
	reportAs(t, dir, "fe01.contoso.com", &pb.StatusReport{Primary: true, Clock: timestamppb.New(time.Now().Add(10 * time.Minute))})
	reportAs(t, dir, "ex01.contoso.com", &pb.StatusReport{Primary: true, Clock: timestamppb.Now()})
	var out string
	waitFor(t, "both clocks in status", func() (bool, string) {
		out, _ = run(t, dir, "status")
		rows := map[string]map[string]string{}
		_, table, _ := strings.Cut(out, "\n\n")
		for _, r := range tableRows(t, table) {
			rows[r["HOST"]] = r
		}
		return strings.HasPrefix(rows["fe01.contoso.com"]["CLOCK"], "+") && rows["fe01.contoso.com"]["CLOCK"] != "+0s" && rows["ex01.contoso.com"]["CLOCK"] != "-", out
	})
	if !strings.HasPrefix(out, "5 hosts: 0 converged, 2 pending, 0 NACK, 0 drift, 3 disconnected\ntrust edges: 0 ok, 5 failing\n") {
		t.Errorf("status does not start with its summary:\n%s", out)
	}
	for _, re := range []string{
		`(?m)^warning: clock of fe01\.contoso\.com \(pool01\) is (10m0s|9m59s) ahead of the controller's$`,
		`(?m)^warning: clock skew between fe01\.contoso\.com \(\+(10m0s|9m59s|10m1s)\) and ex01\.contoso\.com \([-+][0-9]+s\) is (10m0s|9m59s), beyond the 5m0s the products allow: tokens between them fail$`,
		`(?m)^fe01\.contoso\.com +pool01 +lync 2015 +pending +1 \(applied none\) +- +\ds +\+(10m|9m59)`,
		`(?m)^ex02\.contoso\.com +exchange +exchange 2019 +disconnected +1 \(applied none\) +- +- +- +-$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("status does not match %s:\n%s", re, out)
		}
	}
	wantNotContains(t, "status", out, "warning: clock of ex01")

	one, _, err := runIO(t, dir, "", "status", "--host", "fe01.contoso.com")
	if err != nil {
		t.Errorf("status --host fe01 (connected, no NACK, no drift): %v", err)
	}
	if !strings.HasPrefix(one, "1 host: 0 converged, 1 pending, 0 NACK, 0 drift, 0 disconnected\ntrust edges: 0 ok, 4 failing\n") ||
		!strings.Contains(one, "=== fe01.contoso.com (") || strings.Contains(one, "ex01") {
		t.Errorf("status --host fe01 shows more than fe01 and its deployment's edges:\n%s", one)
	}
}

// sixHosts is a fleet for the one-screen test: three hosts converged and
// clean, one that NACKed, one drifted, one disconnected.
func sixHosts(now time.Time) []hostDetail {
	clean := func(name string, offsetMs int64) hostDetail {
		h := &pb.Host{Host: name, Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ProductVersion: "2015", Connected: true,
			DesiredVersion: 9, AppliedVersion: 9, DesiredHash: "h9", AppliedHash: "h9", DesiredSequence: 2, AppliedSequence: 2,
			LastResult: &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_ACK, Version: 9, Hash: "h9"}, ClockOffsetMs: offsetMs, LastSeen: timestamppb.New(now.Add(-10 * time.Second))}
		r := &pb.StatusReport{AppliedVersion: 9, AppliedHash: "h9", Clock: timestamppb.New(now.Add(-4*time.Second + time.Duration(offsetMs)*time.Millisecond)),
			Items:    []*pb.ItemStatus{{Item: "partner/microsoft.exchange", State: pb.ItemState_ITEM_STATE_OK}, {Item: "oauth-configuration", State: pb.ItemState_ITEM_STATE_OK}},
			Partners: []*pb.PartnerApplication{{Identity: "microsoft.exchange", Name: "microsoft.exchange", Enabled: true}, {Identity: "microsoft.sharepoint", Name: "microsoft.sharepoint", Enabled: true}},
			Oauth:    &pb.OAuthConfiguration{ServiceName: "00000004-0000-0ff1-ce00-000000000000", Realm: "contoso.com"}}
		return hostDetail{host: h, report: r}
	}
	nack := clean("ex01.contoso.com", 0)
	nack.host.LastResult = &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_NACK, Version: 9, Hash: "h9",
		Errors: []*pb.ItemError{{Item: "auth-config", Message: "Set-AuthConfig: the certificate " + strings.Repeat("AB", 40) + " is not in the local store"}}}
	nack.host.AppliedVersion, nack.host.AppliedHash = 8, "h8"
	drift := clean("fe02.contoso.com", 0)
	drift.host.Drift = []*pb.Drift{{Item: "partner/microsoft.exchange", Actual: "ApplicationTrustLevel is Application"}}
	gone := clean("sp01.contoso.com", 0)
	gone.host.Connected = false
	return []hostDetail{nack, clean("ex02.contoso.com", 0), clean("fe01.contoso.com", 90_000), drift, clean("fe03.contoso.com", -400), gone}
}

// TestStatusFitsOneScreen: six hosts, three of them with a problem, print
// a summary, six rows and three sections, not a page per host.
func TestStatusFitsOneScreen(t *testing.T) {
	now := time.Now()
	details := sixHosts(now)
	rep := &pb.GetTrustReportResponse{Edges: []*pb.TrustEdge{{From: "pool01", To: "exchange", Ok: true}, {From: "exchange", To: "pool01", Problems: []string{"x"}}},
		Realms: []*pb.DeploymentRealm{{Deployment: "pool01", IssuerExpiryWarning: "pool01's OAuthTokenIssuer certificate AB expires in 20 days"}}}
	var b bytes.Buffer
	if err := printFleetStatus(&b, &output{format: formatTable}, details, rep, now, false); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	want := "6 hosts: 3 converged, 0 pending, 1 NACK, 1 drift, 1 disconnected\ntrust edges: 1 ok, 1 failing\n" +
		"warning: pool01's OAuthTokenIssuer certificate AB expires in 20 days\n" +
		"warning: clock of fe01.contoso.com (pool01) is 1m30s ahead of the controller's\n\n"
	if !strings.HasPrefix(out, want) {
		t.Errorf("status begins\n%s\nwant\n%s", out, want)
	}
	for _, h := range []string{"ex01", "fe02", "sp01"} {
		wantContains(t, "status", out, "\n=== "+h+".contoso.com (")
	}
	for _, h := range []string{"ex02", "fe01", "fe03"} {
		wantNotContains(t, "status", out, "\n=== "+h+".contoso.com (")
	}
	wantContains(t, "status", out, "(3 hosts without problems not shown in detail: status --details, or get host HOST)\n",
		"\n=== ex01.contoso.com (pool01, Lync / Skype for Business Server 2015, secondary)\nRealm: contoso.com; own metadata: not fetched\nNACK of version 9:\n"+
			"  auth-config: Set-AuthConfig: the certificate\n    "+strings.Repeat("AB", 40)+" is not in the\n    local store\n",
		"\n=== fe02.contoso.com (pool01, Lync / Skype for Business Server 2015, secondary)\nRealm: contoso.com; own metadata: not fetched\nDRIFT partner/microsoft.exchange: ApplicationTrustLevel is Application\n",
		"\n=== sp01.contoso.com (pool01, Lync / Skype for Business Server 2015, secondary)\nRealm: contoso.com; own metadata: not fetched\n",
		"(text longer than 72 characters is cut at …; -o json shows it whole)\n")
	_, table, _ := strings.Cut(out, "\n\n")
	rows := tableRows(t, table)
	if len(rows) != 6 {
		t.Fatalf("%d rows, want 6:\n%s", len(rows), out)
	}
	wantRow := map[string][4]string{
		"ex01.contoso.com": {stateNack, "4s", "+0s", "NACK v9: auth-config: Set-AuthConfig: the certificate ABABABABABABABABA…"},
		"fe01.contoso.com": {stateConverged, "4s", "+1m30s", "ack v9"},
		"fe03.contoso.com": {stateConverged, "4s", "+0s", "ack v9"},
		"sp01.contoso.com": {stateDisconnected, "4s", "+0s", "ack v9"},
	}
	for _, r := range rows {
		if w, ok := wantRow[r["HOST"]]; ok {
			if got := [4]string{r["STATE"], r["REPORTED"], r["CLOCK"], r["LAST RESULT"]}; got != w {
				t.Errorf("row %s = %q, want %q", r["HOST"], got, w)
			}
		}
	}
	wantNotContains(t, "status", out, "Get-CsPartnerApplication")
	if n := strings.Count(out, "\n"); n > 40 {
		t.Errorf("status of six hosts prints %d lines, want a screen or so:\n%s", n, out)
	}
	err := statusError(details)
	if ExitCode(err) != exitNack || err.Error() != "rejected its configuration (NACK): ex01.contoso.com; drift on fe02.contoso.com (partner/microsoft.exchange); disconnected: sp01.contoso.com" {
		t.Errorf("status exit %d, %q", ExitCode(err), err)
	}

	// --details shows every section; -o json every host in full.
	b.Reset()
	_ = printFleetStatus(&b, &output{format: formatTable}, details, rep, now, true)
	for _, h := range []string{"ex01", "ex02", "fe01", "fe02", "fe03", "sp01"} {
		wantContains(t, "status --details", b.String(), "\n=== "+h+".contoso.com (")
	}
	b.Reset()
	_ = printFleetStatus(&b, &output{format: formatJSON}, details, rep, now, false)
	wantContains(t, "status -o json", b.String(), "the certificate "+strings.Repeat("AB", 40)+" is not in the local store", `"state": "NACK"`, `"nack": 1`)
}

// TestYAMLIsTheJSON prints one answer both ways: the same data, hostile
// strings included.
func TestYAMLIsTheJSON(t *testing.T) {
	resp := &pb.ListHostsResponse{Hosts: []*pb.Host{hostile(&pb.Host{DesiredVersion: 1 << 60, ClockOffsetMs: -1500, Connected: true}), {Host: "fe01.contoso.com"}}}
	var j, y bytes.Buffer
	if err := (&output{format: formatJSON}).print(&j, resp, nil); err != nil {
		t.Fatal(err)
	}
	if err := (&output{format: formatYAML}).print(&y, resp, nil); err != nil {
		t.Fatal(err)
	}
	a, b := parseBoth(t, j.String(), y.String())
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("-o yaml holds other data than -o json:\n%s\n---\n%s", y.String(), j.String())
	}
	wantContains(t, "-o yaml", y.String(), "desiredVersion: \"1152921504606846976\"", "clockOffsetMs: \"-1500\"")
	for _, r := range y.String() {
		if r != '\n' && (r < 0x20 || r == 0x7f || r == '\u202e' || r == '\u2066' || r == '\u200b') {
			t.Fatalf("-o yaml printed %U raw:\n%s", r, y.String())
		}
	}
}

func TestTruncate(t *testing.T) {
	for _, tt := range []struct {
		in   string
		n    int
		want string
		cut  bool
	}{
		{"short", 10, "short", false},
		{"exactly10!", 10, "exactly10!", false},
		{"eleven char", 10, "eleven ch…", true},
		{"ÄÖÜäöüßéèê€", 5, "ÄÖÜä…", true},
	} {
		got, cut := truncate(tt.in, tt.n)
		if got != tt.want || cut != tt.cut {
			t.Errorf("truncate(%q, %d) = %q, %v; want %q, %v", tt.in, tt.n, got, cut, tt.want, tt.cut)
		}
	}
}

// TestJSONOutputIsSafeAndWhole: -o json of hostile values holds no raw
// control or bidirectional character and parses back to the very value.
func TestJSONOutputIsSafeAndWhole(t *testing.T) {
	h := hostile(&pb.Host{})
	var b bytes.Buffer
	if err := (&output{format: formatJSON}).print(&b, &pb.ListHostsResponse{Hosts: []*pb.Host{h}}, nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range b.String() {
		if r != '\n' && (r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u202e' || r == '\u2066' || r == '\u200b') {
			t.Fatalf("-o json printed %U raw:\n%s", r, b.String())
		}
	}
	var back pb.ListHostsResponse
	if err := protojson.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if got := back.GetHosts()[0].GetHost(); got != hostileText {
		t.Errorf("-o json gave back %q, want %q", got, hostileText)
	}
}

// FuzzYAMLOutput: any string an agent or a file may hold comes back from
// -o yaml as the same string, and the YAML holds nothing a terminal acts on.
func FuzzYAMLOutput(f *testing.F) {
	for _, s := range []string{"", "plain", hostileText, "a\tb\rc", "- x: y", "'\"", "#", "ü€\u2028", "\xff", "0x1f", "true", "null", "~", "012", "1e3", ": x", "&a", "*a", "!tag", "%x", "@x", "`x", " lead", "trail ", "{a}", "[b]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		j, err := json.Marshal(map[string]any{"k": s, "l": []string{s}})
		if err != nil {
			t.Fatal(err)
		}
		// JSON carries the string as valid UTF-8.
		var want map[string]any
		if err := json.Unmarshal(j, &want); err != nil {
			t.Fatal(err)
		}
		y, err := jsonToYAML(j)
		if err != nil {
			t.Fatalf("jsonToYAML(%s): %v", j, err)
		}
		for _, r := range string(y) {
			if r != '\n' && (r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' || r == '\u202e' || r == '\u200b') {
				t.Fatalf("YAML of %q holds %U raw:\n%s", s, r, y)
			}
		}
		var got map[string]any
		if err := yaml.Unmarshal(y, &got); err != nil {
			t.Fatalf("YAML of %q does not parse: %v\n%s", s, err, y)
		}
		k, _ := got["k"].(string)
		l, _ := got["l"].([]any)
		if k != want["k"] || len(l) != 1 || l[0] != want["k"] {
			t.Fatalf("YAML of %q gave back %q, %q:\n%s", want["k"], got["k"], got["l"], y)
		}
	})
}

// TestClockStepShowsInStatus sends what an agent sends when its host's
// clock is stepped (syncer.TestClockStepIsReported): its last report
// again, unchanged but for the clock. status shows the new offset and
// warns naming the host.
func TestClockStepShowsInStatus(t *testing.T) {
	dir := appliedContoso(t)
	conn := agentConn(t, dir, "fe01.contoso.com")
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := pb.NewAgentServiceClient(conn).Sync(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	rep := &pb.StatusReport{Primary: true, Items: []*pb.ItemStatus{{Item: "oauth-configuration", State: pb.ItemState_ITEM_STATE_OK}}}
	send := func(m *pb.SyncRequest) {
		t.Helper()
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	send(&pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: &pb.Hello{Host: "fe01.contoso.com", AgentVersion: "test", Driver: "none"}}})
	rep.Clock = timestamppb.Now()
	send(&pb.SyncRequest{Message: &pb.SyncRequest_Status{Status: rep}})
	clock := func() (string, string) {
		out, _, _ := runIO(t, dir, "", "status", "--host", "fe01.contoso.com")
		_, table, _ := strings.Cut(out, "\n\n")
		for _, r := range tableRows(t, table) {
			return r["CLOCK"], out
		}
		return "", out
	}
	waitFor(t, "fe01's clock measured", func() (bool, string) {
		c, out := clock()
		d, err := time.ParseDuration(c)
		return err == nil && d.Abs() < time.Minute, out
	})
	rep.Clock = timestamppb.New(time.Now().Add(-7 * time.Minute))
	send(&pb.SyncRequest{Message: &pb.SyncRequest_Status{Status: rep}})
	var out string
	waitFor(t, "fe01's stepped clock", func() (bool, string) {
		var c string
		c, out = clock()
		d, err := time.ParseDuration(c)
		return err == nil && (d+7*time.Minute).Abs() < 2*time.Second, out
	})
	// The report, unchanged but for its clock, came a moment ago.
	if !regexp.MustCompile(`(?m)^fe01\.contoso\.com .* [0-9]s +-(7m0s|6m59s|7m1s) `).MatchString(out) {
		t.Errorf("status does not date fe01's report a few seconds back:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^warning: clock of fe01\.contoso\.com \(pool01\) is (7m0s|6m59s|7m1s) behind the controller's$`).MatchString(out) {
		t.Errorf("status does not warn of fe01's clock:\n%s", out)
	}
}
