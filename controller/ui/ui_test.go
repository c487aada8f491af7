package ui

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/internal/pki"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// fakeFleet answers the FleetService calls from fixed data; WatchHosts
// sends its snapshot, then one message per value on changes.
type fakeFleet struct {
	mu      sync.Mutex // guards hosts, which a test may change while served
	hosts   []*pb.Host
	reports map[string]*pb.StatusReport
	trust   *pb.GetTrustReportResponse
	err     error
	changes chan struct{}
}

func (f *fakeFleet) WatchHosts(_ *pb.WatchHostsRequest, stream pb.FleetService_WatchHostsServer) error {
	if err := stream.Send(&pb.WatchHostsResponse{Hosts: f.hostList(), InitialComplete: true}); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-f.changes:
			if err := stream.Send(&pb.WatchHostsResponse{Hosts: f.hostList()}); err != nil {
				return err
			}
		}
	}
}

func (f *fakeFleet) hostList() []*pb.Host {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.hosts)
}

func (f *fakeFleet) setHosts(hosts ...*pb.Host) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hosts = hosts
}

func (f *fakeFleet) ListHosts(_ context.Context, r *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	resp := &pb.ListHostsResponse{Hosts: f.hostList()}
	if r.GetView() == pb.HostView_HOST_VIEW_FULL {
		resp.Statuses = f.reports
	}
	return resp, f.err
}

func (f *fakeFleet) GetHost(_ context.Context, r *pb.GetHostRequest) (*pb.GetHostResponse, error) {
	for _, h := range f.hostList() {
		if h.GetHost() == r.GetHost() {
			return &pb.GetHostResponse{Host: h, Status: f.reports[h.GetHost()]}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "host %q is not in the current topology", r.GetHost())
}

func (f *fakeFleet) GetTrustReport(context.Context, *pb.GetTrustReportRequest) (*pb.GetTrustReportResponse, error) {
	if f.trust == nil {
		return &pb.GetTrustReportResponse{}, f.err
	}
	return f.trust, f.err
}

func oneHostFleet() *fakeFleet {
	return &fakeFleet{hosts: []*pb.Host{{Host: "fe01.contoso.com", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, Connected: true,
		DesiredVersion: 2, AppliedVersion: 2, DesiredHash: "h", AppliedHash: "h"}}}
}

func testKey() []byte { return bytes.Repeat([]byte{9}, KeySize) }

func newTestHandler(t *testing.T, fleet Fleet, now func() time.Time) *Handler {
	t.Helper()
	h, err := NewHandler(Config{Fleet: fleet, Key: testKey(), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func postLogin(t *testing.T, c *http.Client, base, token string) *http.Response {
	t.Helper()
	body, _ := json.Marshal(loginRequest{Token: token})
	resp, err := c.Post(base+"/api/login", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func getFleet(t *testing.T, c *http.Client, base string) (int, string) {
	t.Helper()
	resp, err := c.Get(base + "/api/fleet")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestLoginTokenOpensOneSession follows the token login: refused before,
// a cookie (HttpOnly, SameSite=Strict) after, and the token refused the
// second time.
func TestLoginTokenOpensOneSession(t *testing.T) {
	now := time.Now()
	h := newTestHandler(t, oneHostFleet(), func() time.Time { return now })
	srv := httptest.NewServer(h)
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}

	if code, body := getFleet(t, c, srv.URL); code != http.StatusUnauthorized || !strings.Contains(body, "ui token") {
		t.Fatalf("fleet before login: %d %s, want 401 telling how to log in", code, body)
	}
	tok, err := h.signer.MintLogin(now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	resp := postLogin(t, c, srv.URL, tok)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("login: %s", resp.Status)
	}
	cookies := resp.Cookies()
	if len(cookies) != 1 || cookies[0].Name != sessionCookie || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteStrictMode || cookies[0].MaxAge != int(SessionTTL/time.Second) {
		t.Fatalf("login cookies %+v: want one HttpOnly, SameSite=Strict session cookie for %s", cookies, SessionTTL)
	}
	code, body := getFleet(t, c, srv.URL)
	if code != http.StatusOK || !strings.Contains(body, `"host":"fe01.contoso.com"`) || !strings.Contains(body, `"rollouts":[]`) {
		t.Fatalf("fleet after login: %d %s", code, body)
	}
	// The same token again, from a browser with no cookie: refused.
	other := &http.Client{}
	if resp := postLogin(t, other, srv.URL, tok); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("second use of a login token: %s, want 401", resp.Status)
	}
	// A session token is no login token, and a login token no session.
	sess := cookies[0].Value
	if resp := postLogin(t, other, srv.URL, sess); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a session token used to log in: %s, want 401", resp.Status)
	}
	fresh, _ := h.signer.MintLogin(now, time.Minute)
	req, _ := http.NewRequest("GET", srv.URL+"/api/fleet", nil)
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: fresh})
	r2, err := other.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusUnauthorized {
		t.Errorf("a login token as the session cookie: %s, want 401", r2.Status)
	}
	// Sessions end.
	now = now.Add(SessionTTL)
	if code, body := getFleet(t, c, srv.URL); code != http.StatusUnauthorized || !strings.Contains(body, "expired") {
		t.Errorf("fleet after the session's end: %d %s, want 401 saying it expired", code, body)
	}
}

func TestLoginRefusesBadInput(t *testing.T) {
	h := newTestHandler(t, oneHostFleet(), nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, tc := range []struct{ name, body, want string }{
		{"not JSON", "token=abc", "body is not"},
		{"garbage token", `{"token":"abc"}`, "3 characters"},
		{"expired", `{"token":"` + h.signer.sign(Token{Purpose: PurposeLogin, Expires: time.Now().Add(-time.Second)}) + `"}`, "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Post(srv.URL+"/api/login", "application/json", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 != 4 || !strings.Contains(string(b), tc.want) || len(resp.Cookies()) != 0 {
				t.Errorf("login with %s: %s %s, want a 4xx naming %q and no cookie", tc.name, resp.Status, b, tc.want)
			}
		})
	}
}

func TestPageHeadersAndFleetErrors(t *testing.T) {
	fleet := oneHostFleet()
	h := newTestHandler(t, fleet, nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, p := range []string{"/", "/app.js", "/app.css"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", p, resp.Status)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: Content-Security-Policy %q", p, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no X-Content-Type-Options: nosniff", p)
		}
	}
	// The fleet service failing shows as 503 with its reason, not as an empty fleet.
	fleet.err = errors.New("etcd: no quorum")
	tok, _ := h.signer.Mint(PurposeSession, time.Now().Add(time.Hour))
	req, _ := http.NewRequest("GET", srv.URL+"/api/fleet", nil)
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: tok})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "list hosts: etcd: no quorum") {
		t.Errorf("fleet with a failing store: %s %s", resp.Status, b)
	}
}

// TestAdminCertificateNeedsNoToken serves the dashboard over TLS with a
// CA of its own: an admin client certificate reads the fleet at once; an
// agent's certificate, or none, gets the page but not the fleet.
func TestAdminCertificateNeedsNoToken(t *testing.T) {
	now := time.Now()
	ca, err := pki.NewCA("test CA", now)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := ca.IssueServer([]string{"127.0.0.1"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := pki.ServerTLSConfig(srvCert, srvKey, ca.CertPEM())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	urls := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ServeConfig{Config: Config{Fleet: oneHostFleet(), Key: testKey()}, Listen: "127.0.0.1:0", TLS: tlsCfg, Ready: func(u string) { urls <- u }})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	base := strings.TrimSuffix(<-urls, "/")
	if !strings.HasPrefix(base, "https://127.0.0.1:") {
		t.Fatalf("dashboard URL %q, want https on loopback", base)
	}
	client := func(certPEM, keyPEM []byte) *http.Client {
		cfg, err := pki.ClientTLSConfig(certPEM, keyPEM, ca.CertPEM(), "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if certPEM == nil {
			cfg.Certificates = nil
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	adminCert, adminKey, err := ca.IssueAdmin("alice", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hostCert, hostKey, err := ca.IssueHost("fe01.contoso.com", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := getFleet(t, client(adminCert, adminKey), base); code != http.StatusOK || !strings.Contains(body, "fe01.contoso.com") {
		t.Errorf("fleet with an admin certificate: %d %s", code, body)
	}
	// The dashboard only reads: the least admin role, viewer, is enough.
	viewerCert, viewerKey, err := ca.IssueAdminRole("bob", pki.RoleViewer, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := getFleet(t, client(viewerCert, viewerKey), base); code != http.StatusOK {
		t.Errorf("fleet with a viewer's certificate: %d %s", code, body)
	}
	if code, _ := getFleet(t, client(hostCert, hostKey), base); code != http.StatusUnauthorized {
		t.Errorf("fleet with an agent's certificate: %d, want 401", code)
	}
	noCert := client(adminCert, adminKey)
	noCert.Transport.(*http.Transport).TLSClientConfig.Certificates = nil
	if code, _ := getFleet(t, noCert, base); code != http.StatusUnauthorized {
		t.Errorf("fleet without a certificate: %d, want 401", code)
	}
	resp, err := noCert.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the page without a certificate: %s, want 200 (it asks for a token)", resp.Status)
	}
	// Over TLS the session cookie is Secure.
	signer, _ := NewSigner(testKey())
	tok, _ := signer.MintLogin(time.Now(), time.Minute)
	login := postLogin(t, noCert, base, tok)
	if c := login.Cookies(); login.StatusCode != http.StatusNoContent || len(c) != 1 || !c[0].Secure {
		t.Errorf("login over TLS: %s, cookies %+v: want one Secure cookie", login.Status, c)
	}
}

func TestServeRefusesPlaintextOffLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "192.0.2.1:0", "nohost"} {
		err := Serve(context.Background(), ServeConfig{Config: Config{Fleet: oneHostFleet(), Key: testKey()}, Listen: addr})
		if err == nil || !strings.Contains(err.Error(), addr) {
			t.Errorf("plaintext dashboard on %s: %v, want refused naming the address", addr, err)
		}
	}
}

// TestViewShapesTheFleet checks the JSON the page draws from: edge states,
// revisions, drift, results and certificates from reports and edges.
func TestViewShapesTheFleet(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	exp := now.AddDate(1, 0, 0)
	f := &fakeFleet{
		hosts: []*pb.Host{
			{Host: "ex01.contoso.com", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE, DesiredVersion: 3, AppliedVersion: 2, DesiredHash: "b", AppliedHash: "a",
				LastResult: &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_NACK, Version: 3, Errors: []*pb.ItemError{{Item: "auth-config", Message: "refused"}}},
				Drift:      []*pb.Drift{{Item: "partner/x", Expected: "True", Actual: "False"}}},
			{Host: "fe01.contoso.com", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, Connected: true, DesiredVersion: 3, AppliedVersion: 3, DesiredHash: "c", AppliedHash: "c",
				LastResult: &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_ACK, Version: 3}},
		},
		reports: map[string]*pb.StatusReport{"fe01.contoso.com": {Clock: timestamppb.New(now.Add(-5 * time.Second)),
			IssuerCertificate: &pb.CertificateInfo{Thumbprint: "AA", Subject: "CN=contoso.com", NotAfter: timestamppb.New(exp)}}},
		trust: &pb.GetTrustReportResponse{Edges: []*pb.TrustEdge{
			{From: "exchange", To: "pool01", Ok: false, Problems: []string{"no probe"}},
			{From: "pool01", To: "exchange", Ok: false, Problems: []string{"refused"}, IssuerThumbprint: "AA", IssuerNotAfter: timestamppb.New(exp),
				Probes: []*pb.TrustProbeResult{{FromHost: "fe01.contoso.com", Probe: &pb.TrustProbe{TargetHost: "ex01.contoso.com", Reason: "unknown-key"}}}},
			{From: "exchange", To: "sharepoint", Ok: true, Disabled: true},
			{From: "sharepoint", To: "exchange", Ok: true, Probes: []*pb.TrustProbeResult{{Probe: &pb.TrustProbe{Ok: true}}}},
		}},
	}
	v, err := buildView(context.Background(), f, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, e := range v.Edges {
		states = append(states, e.State)
	}
	if got := strings.Join(states, " "); got != "pending failed disabled ok" {
		t.Errorf("edge states %q, want pending failed disabled ok", got)
	}
	ex, fe := v.Hosts[0], v.Hosts[1]
	if ex.InSync || ex.Result != "nack" || len(ex.ResultErrors) != 1 || ex.ResultErrors[0] != "auth-config: refused" || len(ex.Drift) != 1 || ex.ReportClock != nil {
		t.Errorf("ex01 row %+v", ex)
	}
	if !fe.InSync || fe.Result != "ack" || fe.ReportClock == nil || !fe.ReportClock.Equal(now.Add(-5*time.Second)) {
		t.Errorf("fe01 row %+v", fe)
	}
	// One certificate, seen both in fe01's report and on the pool01 edge.
	if len(v.Certificates) != 1 || v.Certificates[0].Deployment != "pool01" || v.Certificates[0].Subject != "CN=contoso.com" ||
		strings.Join(v.Certificates[0].Hosts, ",") != "fe01.contoso.com" || !v.Certificates[0].NotAfter.Equal(exp) {
		t.Errorf("certificates %+v", v.Certificates)
	}
	if len(v.Deployments) != 2 || v.Deployments[0].Name != "exchange" || v.Deployments[1].Connected != 1 {
		t.Errorf("deployments %+v", v.Deployments)
	}
}

// TestServeBarePortIsLoopback: like --metrics-listen, a port without a
// host binds loopback, never every interface.
func TestServeBarePortIsLoopback(t *testing.T) {
	for _, addr := range []string{":0", "0"} {
		ctx, cancel := context.WithCancel(context.Background())
		urls := make(chan string, 1)
		done := make(chan error, 1)
		go func() {
			done <- Serve(ctx, ServeConfig{Config: Config{Fleet: oneHostFleet(), Key: testKey()}, Listen: addr, Ready: func(u string) { urls <- u }})
		}()
		select {
		case u := <-urls:
			if !strings.HasPrefix(u, "http://127.0.0.1:") {
				t.Errorf("--ui-listen %q serves on %s, want loopback", addr, u)
			}
		case err := <-done:
			t.Fatalf("--ui-listen %q: %v", addr, err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
}

// fixedRollouts answers ListRollouts with a fixed page.
type fixedRollouts struct{ resp *pb.ListRolloutsResponse }

func (r fixedRollouts) ListRollouts(context.Context, *pb.ListRolloutsRequest) (*pb.ListRolloutsResponse, error) {
	return r.resp, nil
}

// TestRolloutRowsNameRevisionsBySequence: the dashboard's rollouts carry
// the revisions' sequence numbers beside their etcd versions, and a failed
// host's cause names its revisions the way the CLI does (its version when
// the sequence is unknown).
func TestRolloutRowsNameRevisionsBySequence(t *testing.T) {
	rs := fixedRollouts{resp: &pb.ListRolloutsResponse{Rollouts: []*pb.Rollout{{
		Name: "rollouts/7", FromRevision: 30, ToRevision: 41, FromSequence: 3, ToSequence: 4, State: pb.RolloutState_ROLLOUT_STATE_PAUSED,
		Waves: []*pb.RolloutWave{{Title: "canary", Hosts: []*pb.RolloutHost{
			{Host: "fe01.contoso.com", State: pb.RolloutHostState_ROLLOUT_HOST_STATE_FAILED, Cause: "nack", FromRevision: 30, TargetRevision: 41, FromSequence: 3, TargetSequence: 4},
			{Host: "fe02.contoso.com", State: pb.RolloutHostState_ROLLOUT_HOST_STATE_FAILED, Cause: "nack", TargetRevision: 41},
		}}},
	}}}}
	rows, err := listRollouts(context.Background(), rs)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].FromSequence != 3 || rows[0].ToSequence != 4 || rows[0].FromRevision != 30 || rows[0].ToRevision != 41 {
		t.Fatalf("rows = %+v, want rollouts/7 from sequence 3 (version 30) to 4 (version 41)", rows)
	}
	b, err := json.Marshal(rows[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"fromSequence":3`, `"toSequence":4`, `"fromRevision":30`, `"toRevision":41`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("row JSON %s lacks %s", b, want)
		}
	}
	want := []string{"fe01.contoso.com (revision 3 → 4, versions 30 → 41): nack", "fe02.contoso.com (revision - → v41, versions - → 41): nack"}
	if got := rows[0].Waves[0].Causes; !slices.Equal(got, want) {
		t.Errorf("causes = %q, want %q", got, want)
	}
}

// readEvents reads server-sent events from body until n of the given name
// have come, or the stream ends; it returns their data.
func readEvents(t *testing.T, body io.Reader, name string, n int) []string {
	t.Helper()
	var got []string
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	event := ""
	for sc.Scan() && len(got) < n {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && event == name:
			got = append(got, strings.TrimPrefix(line, "data: "))
		case line == "":
			event = ""
		}
	}
	return got
}

// TestEventsStreamTheViewAsHostsChange opens the live stream: the view
// comes at once, again when WatchHosts says a host changed, and the stream
// ends when the session expires.
func TestEventsStreamTheViewAsHostsChange(t *testing.T) {
	fleet := oneHostFleet()
	fleet.changes = make(chan struct{})
	now := time.Now()
	h := newTestHandler(t, fleet, func() time.Time { return now })
	srv := httptest.NewServer(h)
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}

	resp, err := c.Get(srv.URL + "/api/fleet/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("events without a session: %s, want 401", resp.Status)
	}

	// A session that expires in two seconds.
	session, err := h.signer.Mint(PurposeSession, time.Now().Add(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/fleet/events", nil)
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: session})
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("events: %s, %q; want 200 text/event-stream", resp.Status, ct)
	}
	first := readEvents(t, resp.Body, "fleet", 1)
	if len(first) != 1 || !strings.Contains(first[0], `"fe01.contoso.com"`) {
		t.Fatalf("first event: %q, want the view with fe01", first)
	}
	fleet.setHosts(&pb.Host{Host: "fe01.contoso.com", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, Connected: false})
	fleet.changes <- struct{}{}
	var v view
	for _, data := range readEvents(t, resp.Body, "fleet", 2) {
		if err := json.Unmarshal([]byte(data), &v); err != nil {
			t.Fatalf("event data %q: %v", data, err)
		}
		if len(v.Hosts) == 1 && !v.Hosts[0].Connected {
			break
		}
	}
	if len(v.Hosts) != 1 || v.Hosts[0].Connected {
		t.Fatalf("after the change: %+v, want fe01 disconnected", v.Hosts)
	}
	// The session expires: the stream ends (the page then polls, is told
	// 401 and asks for a token).
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, resp.Body)
		done <- err
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the event stream outlived its session by 8s")
	}
}
