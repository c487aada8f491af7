package ui_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"image"
	"image/png"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/cmd"
	"github.com/s2strust/s2strust/controller/ui"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// chromiumPath finds Debian's Chromium. Its absence fails the test: a
// dashboard test that skips where the browser is missing would pass in a
// CI that never ran it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("Chromium is not installed, and the dashboard's browser test needs it: run `apt-get update && apt-get install -y chromium` (Debian's package, /usr/bin/chromium) and run the test again")
	return ""
}

// browser starts a headless Chromium with a fresh profile, with the flags
// that work on a machine with no outside network, trusting the server
// key whose SPKI hash is given (the controller's development CA is not in
// the browser's store).
func browser(t *testing.T, spki string) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1500),
	}
	if spki != "" {
		opts = append(opts, chromedp.Flag("ignore-certificate-errors-spki-list", spki))
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(cancel)
	// Start the browser now, so that a Chromium that cannot start fails here, saying so.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return ctx
}

// spkiHash is the base64 SHA-256 of a PEM certificate's public key, as
// Chromium's --ignore-certificate-errors-spki-list wants it.
func spkiHash(t *testing.T, certFile string) string {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM certificate", certFile)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestDashboardShowsTheDemoFleet runs the demo fleet in-process, opens the
// login URL it prints in headless Chromium and checks what an operator
// sees: five hosts, five trust edges that passed, an edge's trust row on
// click, a certificate timeline, "no rollouts", and a graph in the
// screenshot.
func TestDashboardShowsTheDemoFleet(t *testing.T) {
	chromiumPath(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	demoCtx, stopDemo := context.WithCancel(ctx)
	loginURL := make(chan string, 1)
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- cmd.RunDemo(demoCtx, cmd.DemoConfig{
			Dir: dir, Listen: "127.0.0.1:0", UIListen: "127.0.0.1:0", Timeout: 90 * time.Second, Out: &out,
			DashboardReady: func(u string) { loginURL <- u },
		})
	}()
	defer func() {
		stopDemo()
		if err := <-done; err != nil {
			t.Errorf("demo: %v\n%s", err, out.String())
		}
	}()
	var u string
	select {
	case u = <-loginURL:
	case err := <-done:
		done <- err
		t.Fatalf("demo ended before its dashboard started: %v\n%s", err, out.String())
	}
	if !strings.HasPrefix(u, "https://127.0.0.1:") || !strings.Contains(u, "#login=") {
		t.Fatalf("dashboard login URL %q: want https on loopback with a #login= token", u)
	}
	if !strings.Contains(out.String(), "dashboard: "+u) {
		t.Errorf("the demo does not print the dashboard's URL:\n%s", out.String())
	}
	dataDir := filepath.Join(dir, "controller")
	dashboard, _, _ := strings.Cut(u, "#")
	bctx := browser(t, spkiHash(t, filepath.Join(app.PKIDir(dataDir), "server.crt")))
	bctx, cancelB := context.WithTimeout(bctx, 2*time.Minute)
	defer cancelB()

	// The fleet converges while the page follows it: wait for five hosts that
	// acked and five edges whose probes passed.
	converged := `document.querySelectorAll('#trust-graph .edge[data-state="ok"]').length === 5 &&
		document.querySelectorAll('#hosts tbody tr').length === 5 &&
		[...document.querySelectorAll('#hosts tbody tr')].every(r => r.textContent.includes('ack v'))`
	if err := chromedp.Do(bctx,
		chromedp.Navigate(u),
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Poll[chromedp.Void](converged, chromedp.WithPollingTimeout(100*time.Second), chromedp.WithPollingInterval(250*time.Millisecond))(ctx, tg)
			return err
		}),
	); err != nil {
		page, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.body.innerText`))
		t.Fatalf("dashboard never showed five hosts in sync and five passing trust edges: %v\npage:\n%s\ndemo output:\n%s", err, page, out.String())
	}
	// It converged live: the event stream brought every change, and the
	// page never fell back to polling.
	if upd := eval[string](t, bctx, `document.getElementById('updated').textContent`); !strings.Contains(upd, "live") {
		t.Errorf("the page says %q, want it live", upd)
	}
	if n := eval[int](t, bctx, `performance.getEntriesByType('resource').filter(e => new URL(e.name).pathname === '/api/fleet').length`); n != 0 {
		t.Errorf("the page polled /api/fleet %d times while its event stream was open", n)
	}
	if hash := eval[string](t, bctx, `location.hash`); hash != "" {
		t.Errorf("the login token stays in the address bar: location.hash %q", hash)
	}
	hosts := eval[[]string](t, bctx, `[...document.querySelectorAll('#hosts tbody tr')].map(r => r.dataset.host)`)
	want := []string{"ex01.contoso.com", "ex02.contoso.com", "fe01.contoso.com", "fe02.contoso.com", "sp01.contoso.com"}
	if strings.Join(hosts, " ") != strings.Join(want, " ") {
		t.Errorf("hosts shown %v, want %v", hosts, want)
	}
	if n := eval[int](t, bctx, `document.querySelectorAll('#trust-graph .edge').length`); n != 5 {
		t.Errorf("%d trust edges drawn, want 5", n)
	}
	const edgeSel = `#trust-graph .edge[data-from="exchange"][data-to="pool01"]`
	// The live page redraws the graph whenever a host changes: a click can
	// find the label it resolved replaced ("Could not find node with given
	// id"); it is tried again on the new one.
	var clickErr error
	for range 5 {
		if clickErr = chromedp.Do(bctx, chromedp.Click(chromedp.CSS(edgeSel+` .edge-label`))); clickErr == nil || !strings.Contains(clickErr.Error(), "Could not find node") {
			break
		}
	}
	if clickErr == nil {
		clickErr = chromedp.Do(bctx, chromedp.WaitVisible(chromedp.CSS(`#edge-row[data-from="exchange"][data-to="pool01"]`)))
	}
	if clickErr != nil {
		t.Fatalf("click the exchange → pool01 edge: %v", clickErr)
	}
	rowText := eval[string](t, bctx, `document.getElementById('edge-detail').innerText`)
	// Lync registers Exchange as microsoft.exchange, by Exchange's well-known identifier.
	for _, w := range []string{"exchange → pool01", "microsoft.exchange", "00000002-0000-0ff1-ce00-000000000000", "Probes", "passed", "accepted"} {
		if !strings.Contains(rowText, w) {
			t.Errorf("edge row lacks %q:\n%s", w, rowText)
		}
	}
	certs := eval[string](t, bctx, `document.querySelector('#cert-table tbody').innerText`)
	for _, d := range []string{"pool01", "exchange", "sharepoint"} {
		if !strings.Contains(certs, d) {
			t.Errorf("certificate expiry table lacks deployment %s:\n%s", d, certs)
		}
	}
	if n := eval[int](t, bctx, `document.querySelectorAll('#cert-timeline .cert').length`); n < 3 {
		t.Errorf("%d certificates on the expiry timeline, want one per deployment (3)", n)
	}
	if r := eval[string](t, bctx, `document.getElementById('rollouts').innerText`); !strings.Contains(r, "no rollouts") {
		t.Errorf("rollouts section %q, want \"no rollouts\"", r)
	}
	box := `(r => [r.x, r.y, r.width, r.height])(document.querySelector(%q).getBoundingClientRect())`
	svgBox := eval[[]float64](t, bctx, fmt.Sprintf(box, "#trust-graph"))
	edgeBox := eval[[]float64](t, bctx, fmt.Sprintf(box, edgeSel))
	if !waitFor(10*time.Second, func() bool { return strings.Contains(out.String(), "dashboard: "+dashboard+" (log in with") }) {
		t.Errorf("the demo does not repeat the dashboard's URL once the fleet is up:\n%s", out.String())
	}
	shot, err := chromedp.Run(bctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	// Kept with `go test -artifacts -outputdir DIR`, for a person to look at.
	saveArtifact(t, "dashboard.png", shot)
	checkGraphDrawn(t, shot, svgBox, edgeBox)
}

// checkGraphDrawn decodes the screenshot and checks that the graph's SVG
// has a size and that its area is drawn on: enough pixels unlike its
// background, and enough in the passing edges' green.
func checkGraphDrawn(t *testing.T, shot []byte, svgBox, edgeBox []float64) {
	t.Helper()
	if len(svgBox) != 4 || svgBox[2] < 300 || svgBox[3] < 200 {
		t.Fatalf("trust graph's bounding box %v: want at least 300×200", svgBox)
	}
	if len(edgeBox) != 4 || edgeBox[2]*edgeBox[3] < 100 {
		t.Errorf("edge's bounding box %v is empty", edgeBox)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("decode the screenshot: %v", err)
	}
	r := image.Rect(int(svgBox[0]), int(svgBox[1]), int(svgBox[0]+svgBox[2]), int(svgBox[1]+svgBox[3])).Intersect(img.Bounds())
	drawn, green := 0, 0
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			cr, cg, cb = cr>>8, cg>>8, cb>>8
			// The graph's background is near white (#fbfcfd); nodes, edges and labels are not.
			if cr+cg+cb < 3*235 {
				drawn++
			}
			// The passing edges' colour, #23955a, give or take antialiasing.
			if cg > 120 && cg < 175 && cr < 70 && cb > 60 && cb < 120 {
				green++
			}
		}
	}
	area := r.Dx() * r.Dy()
	t.Logf("trust graph %dx%d: %d pixels drawn (%.1f%%), %d green", r.Dx(), r.Dy(), drawn, 100*float64(drawn)/float64(area), green)
	if drawn < area/40 {
		t.Errorf("trust graph area has %d drawn pixels of %d: the graph is not in the screenshot", drawn, area)
	}
	if green < 500 {
		t.Errorf("trust graph area has %d pixels of a passing edge's green, want at least 500", green)
	}
}

func saveArtifact(t *testing.T, name string, b []byte) {
	t.Helper()
	p := filepath.Join(t.ArtifactDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", p)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// hostile is what a compromised agent might report, hoping the page turns
// it into markup.
const hostile = `<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>`

// TestDashboardEscapesWhatAgentsReport serves the dashboard over a fleet
// whose names, drift and trust problems are HTML, and checks that the
// page shows them as text and runs none of it; it also draws a failed, a
// pending and a disabled edge.
func TestDashboardEscapesWhatAgentsReport(t *testing.T) {
	now := time.Now()
	fleet := &stubFleet{
		hosts: []*pb.Host{{Host: "fe01.contoso.com", Deployment: "pool01", Product: pb.Product_PRODUCT_LYNC, ProductVersion: hostile,
			Drift:      []*pb.Drift{{Item: hostile, Expected: "a", Actual: "b"}},
			LastResult: &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_NACK, Version: 1, Errors: []*pb.ItemError{{Item: "partner/x", Message: hostile}}}},
			{Host: "ex01.contoso.com", Deployment: "exchange", Product: pb.Product_PRODUCT_EXCHANGE},
			{Host: "sp01.contoso.com", Deployment: "sharepoint", Product: pb.Product_PRODUCT_SHAREPOINT}},
		report: &pb.StatusReport{Clock: timestamppb.New(now), IssuerCertificate: &pb.CertificateInfo{Thumbprint: "AB", Subject: hostile, NotAfter: timestamppb.New(now.Add(20 * 24 * time.Hour))}},
		trust: &pb.GetTrustReportResponse{Edges: []*pb.TrustEdge{
			{From: "exchange", To: "pool01", PartnerName: hostile, Problems: []string{hostile},
				Probes: []*pb.TrustProbeResult{{FromHost: "ex01.contoso.com", Probe: &pb.TrustProbe{TargetHost: "fe01.contoso.com", Reason: "unknown-key", Detail: hostile}}}},
			{From: "pool01", To: "exchange", Problems: []string{"not probed yet"}},
			{From: "sharepoint", To: "pool01", Ok: true, Disabled: true},
		}},
	}
	key := bytes.Repeat([]byte{3}, ui.KeySize)
	rollouts := &stubRollouts{resp: &pb.ListRolloutsResponse{Rollouts: []*pb.Rollout{{
		Name: "rollouts/7", FromRevision: 30, ToRevision: 41, FromSequence: 3, ToSequence: 4, State: pb.RolloutState_ROLLOUT_STATE_PAUSED, Reason: "paused: failure threshold reached",
		Waves: []*pb.RolloutWave{
			{Title: "canary", Hosts: []*pb.RolloutHost{{Host: "fe01.contoso.com", State: pb.RolloutHostState_ROLLOUT_HOST_STATE_FAILED, Cause: hostile,
				FromRevision: 30, TargetRevision: 41, FromSequence: 3, TargetSequence: 4}}},
			{Title: "wave 1", Hosts: []*pb.RolloutHost{{Host: "ex01.contoso.com", State: pb.RolloutHostState_ROLLOUT_HOST_STATE_WAITING}}},
		},
	}}}}
	h, err := ui.NewHandler(ui.Config{Fleet: fleet, Rollouts: rollouts, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	// Closed after the browser (cleanups run last first): Close waits for
	// the page's event stream, which ends when the browser goes.
	t.Cleanup(srv.Close)
	signer, _ := ui.NewSigner(key)
	tok, _ := signer.MintLogin(now, time.Minute)
	bctx := browser(t, "")
	bctx, cancel := context.WithTimeout(bctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(bctx,
		chromedp.Navigate(app.LoginURL(srv.URL+"/", tok)),
		chromedp.WaitVisible(chromedp.CSS(`#hosts tbody tr[data-host="fe01.contoso.com"]`)),
		chromedp.Click(chromedp.CSS(`#trust-graph .edge[data-from="exchange"][data-to="pool01"] .edge-label`)),
		chromedp.WaitVisible(chromedp.CSS(`#edge-row`)),
	); err != nil {
		t.Fatalf("load the dashboard and click the failed edge: %v", err)
	}
	if n := eval[int](t, bctx, `document.querySelectorAll('img').length + document.querySelectorAll('script').length`); n != 1 {
		t.Errorf("%d img and script elements in the page, want only the dashboard's own script: agent data became markup", n)
	}
	if p := eval[bool](t, bctx, `window.pwned !== undefined`); p {
		t.Error("agent data ran as script")
	}
	for sel, want := range map[string]string{
		`#hosts tbody tr[data-host="fe01.contoso.com"]`: hostile,
		`#edge-detail .problems`:                        hostile,
		`#edge-detail .probes`:                          "refused unknown-key (" + hostile + ")",
		`#cert-table tbody`:                             hostile,
		`#rollouts .rollout[data-name="rollouts/7"]`:    "fe01.contoso.com (revision 3 → 4, versions 30 → 41): " + hostile,
	} {
		if got := eval[string](t, bctx, fmt.Sprintf(`document.querySelector(%q).textContent`, sel)); !strings.Contains(got, want) {
			t.Errorf("%s shows %q, want the text %q", sel, got, want)
		}
	}
	if got := eval[string](t, bctx, `document.querySelector('#rollouts .rollout').innerText`); !strings.Contains(got, "rollouts/7: revision 3 → 4 (versions 30 → 41) · paused · wave 1 of 2") || !strings.Contains(got, "0/1 passed, 1 failed") {
		t.Errorf("rollout shown as %q, want its revisions, state, wave and progress", got)
	}
	if n := eval[int](t, bctx, `document.querySelectorAll('#rollouts .wave .seg.failed').length`); n != 1 {
		t.Errorf("%d failed segments in the rollout's progress bars, want 1", n)
	}
	states := eval[[]string](t, bctx, `[...document.querySelectorAll('#trust-graph .edge')].map(e => e.dataset.state)`)
	if strings.Join(states, " ") != "failed pending disabled" {
		t.Errorf("edge states drawn %v, want failed pending disabled", states)
	}
	if got := eval[string](t, bctx, `document.querySelector('#cert-table tbody td.num').className`); !strings.Contains(got, "bad") {
		t.Errorf("a certificate expiring in 20 days is not marked: class %q", got)
	}
	shot, err := chromedp.Run(bctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	saveArtifact(t, "dashboard-failing.png", shot)
}

// stubFleet answers with fixed data; fe01 has report, the others none.
type stubFleet struct {
	hosts  []*pb.Host
	report *pb.StatusReport
	trust  *pb.GetTrustReportResponse
}

// ListHosts answers in one page, with fe01's report for HOST_VIEW_FULL
// (the dashboard reads the reports so, not by GetHost).
func (f *stubFleet) ListHosts(_ context.Context, r *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	resp := &pb.ListHostsResponse{Hosts: f.hosts}
	if r.GetView() == pb.HostView_HOST_VIEW_FULL {
		resp.Statuses = map[string]*pb.StatusReport{"fe01.contoso.com": f.report}
	}
	return resp, nil
}

func (f *stubFleet) GetHost(_ context.Context, r *pb.GetHostRequest) (*pb.GetHostResponse, error) {
	if r.GetHost() != "fe01.contoso.com" {
		return &pb.GetHostResponse{}, nil
	}
	return &pb.GetHostResponse{Status: f.report}, nil
}

func (f *stubFleet) GetTrustReport(context.Context, *pb.GetTrustReportRequest) (*pb.GetTrustReportResponse, error) {
	return f.trust, nil
}

// WatchHosts sends the snapshot, then nothing until the page goes.
func (f *stubFleet) WatchHosts(_ *pb.WatchHostsRequest, stream pb.FleetService_WatchHostsServer) error {
	if err := stream.Send(&pb.WatchHostsResponse{Hosts: f.hosts, InitialComplete: true}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

// TestMain checks that the dashboard, the demo fleet and the browser
// leave no goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stubRollouts answers ListRollouts with a fixed page.
type stubRollouts struct{ resp *pb.ListRolloutsResponse }

func (r *stubRollouts) ListRollouts(context.Context, *pb.ListRolloutsRequest) (*pb.ListRolloutsResponse, error) {
	return r.resp, nil
}
