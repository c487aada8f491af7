package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/rotation"
	"github.com/s2strust/s2strust/controller/server"
	"github.com/s2strust/s2strust/deploy/examples"
	"github.com/s2strust/s2strust/internal/certs"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// putIssuerVersion stores a new version of secret name holding a fresh
// certificate for cn/sans, and returns its thumbprint.
func (f *fleet) putIssuerVersion(name, cn string, sans []string, notAfter time.Time) string {
	f.t.Helper()
	now := time.Now()
	b, err := certs.Generate(certs.Template{CommonName: cn, DNSNames: sans, NotBefore: now.Add(-time.Hour), NotAfter: notAfter, KeyBits: 2048})
	if err != nil {
		f.t.Fatal(err)
	}
	pfx, err := certs.EncodePFX(b, issuerPassword)
	if err != nil {
		f.t.Fatal(err)
	}
	resp, err := pb.NewSecretServiceClient(f.conn).PutSecret(context.Background(), &pb.PutSecretRequest{Name: name, Pfx: pfx, Password: issuerPassword, NewVersion: true})
	if err != nil {
		f.t.Fatal(err)
	}
	return resp.GetSecret().GetCertificate().GetThumbprint()
}

// rotationAgents are the agent options of the rotation tests: probes of
// every edge run continuously (rotationProbeInterval) besides the drift
// checks.
var rotationAgents = agentOpts{driftInterval: 300 * time.Millisecond, probeInterval: rotationProbeInterval}

const (
	rotationProbeInterval = 250 * time.Millisecond
	// maxProbeGap bounds how long ago every host must have finished a
	// round of probes, unless one runs, at each look: many probe
	// intervals, for an apply in between on a loaded machine.
	maxProbeGap = 40 * rotationProbeInterval
)

// followRotation looks at rotation name until it succeeds. At every look
// no probe on an edge from or to its deployment has failed, it has not
// failed, every host has probed its edges within maxProbeGap, and the
// trust report passes, every edge of it; look sees it each time (and may
// restart the controller: f.conn is read afresh).
func (f *fleet) followRotation(name string, look func(*pb.Rotation)) *pb.Rotation {
	f.t.Helper()
	var last *pb.Rotation
	looks := 0
	waitFor(f.t, 3*waitTimeout, name+" to succeed", func() (bool, string) {
		resp, err := pb.NewRotationServiceClient(f.conn).GetRotation(context.Background(), &pb.GetRotationRequest{Name: name})
		if err != nil {
			f.t.Fatal(err)
		}
		last = resp.GetRotation()
		phase := rotation.PhaseName(last.GetCurrentPhase())
		if last.GetProbeFailures() != 0 {
			f.t.Fatalf("%d probe failures during the rotation (phase %s): %v", last.GetProbeFailures(), phase, last.GetRecentProbeFailures())
		}
		if last.GetState() == pb.RotationState_ROTATION_STATE_FAILED {
			f.t.Fatalf("rotation failed: %s", last.GetReason())
		}
		for host, a := range f.agents {
			if gap, ok := a.drv.sinceProbe(); !ok || gap > maxProbeGap {
				f.t.Fatalf("during phase %s %s last probed %s ago (probed at all: %v), want probes every %s: they are not continuous", phase, host, gap.Round(time.Millisecond), ok, rotationProbeInterval)
			}
		}
		var bad []string
		for k, e := range f.trustReport() {
			if !e.GetOk() {
				bad = append(bad, fmt.Sprintf("%s: %v", k, e.GetProblems()))
			}
		}
		if len(bad) > 0 {
			sort.Strings(bad)
			f.t.Fatalf("trust report fails during phase %s (look %d): %v", phase, looks, bad)
		}
		looks++
		look(last)
		return last.GetState() == pb.RotationState_ROTATION_STATE_SUCCEEDED, fmt.Sprintf("%s phase %s: %s", rotation.StateName(last.GetState()), phase, last.GetReason())
	})
	f.t.Logf("%s: the trust report passed at each of %d looks, 0 probe failures", name, looks)
	return last
}

// TestRotateIssuerOfTheLyncPool rotates pool01's token-issuer certificate
// on the contoso fleet (Lync pool, Exchange organization, SharePoint
// farm) through every phase, with the trust probes of every edge from and
// to pool01 running all along: none fails, the trust report passes at
// every look, the rotation survives a restart of the controller both
// while it is only scheduled and half-way through, and the topology
// names the new secret version at the end.
func TestRotateIssuerOfTheLyncPool(t *testing.T) {
	t.Parallel()
	f := startFleetWith(t, examples.Contoso, rotationAgents, func(c *app.ServeConfig) {
		c.RolloutInterval = 100 * time.Millisecond
		c.ElectionTTL = 2 * time.Second
	})
	rev := f.apply(examples.Contoso)
	f.waitConverged(rev)
	f.waitEdges("every edge to pass before the rotation", func(_ string, e *pb.TrustEdge) bool { return e.GetOk() })
	ctx := context.Background()
	oldTP := f.trustReport()["pool01→exchange"].GetIssuerThumbprint()
	newTP := f.putIssuerVersion("oauth-2026", "contoso.com", []string{"contoso.com", "fabrikam.com"}, time.Now().AddDate(2, 0, 0))

	rot := pb.NewRotationServiceClient(f.conn)

	// Bad input: each refused naming the field and the value, nothing stored.
	f.putIssuerSecret("wrong-domain", "wrong.example", []string{"wrong.example"}, issuerPassword)
	now := time.Now()
	for _, tc := range []struct {
		name string
		req  *pb.CreateRotationRequest
		code codes.Code
		want []string
	}{
		{"unknown deployment", &pb.CreateRotationRequest{Deployment: "pool99", Secret: "oauth-2026@v2"}, codes.InvalidArgument, []string{"deployment", "pool99", "is not a deployment of topology contoso", "pool01, exchange, sharepoint"}},
		{"unknown secret", &pb.CreateRotationRequest{Deployment: "pool01", Secret: "nope"}, codes.InvalidArgument, []string{"secret", "nope", "no such secret"}},
		{"unknown version", &pb.CreateRotationRequest{Deployment: "pool01", Secret: "oauth-2026@v9"}, codes.InvalidArgument, []string{"secret", "oauth-2026@v9", "no such secret or version"}},
		{"malformed secret", &pb.CreateRotationRequest{Deployment: "pool01", Secret: "oauth-2026@vx"}, codes.InvalidArgument, []string{"secret", "oauth-2026@vx", "NAME@vN"}},
		{"certificate rules", &pb.CreateRotationRequest{Deployment: "pool01", Secret: "wrong-domain"}, codes.InvalidArgument, []string{"secret", "wrong-domain@v1", "contoso.com"}},
		{"same certificate", &pb.CreateRotationRequest{Deployment: "pool01", Secret: "oauth-2026@v1"}, codes.InvalidArgument, []string{"secret", "oauth-2026@v1", "the one deployment pool01 signs with now"}},
		{"effective too late", &pb.CreateRotationRequest{Deployment: "pool01", Secret: "oauth-2026@v2", EffectiveTime: timestamppb.New(now.AddDate(1, 0, 0))}, codes.InvalidArgument, []string{"effective_time", "later than 24 hours before the current certificate", "expires"}},
		{"start in the past", &pb.CreateRotationRequest{Deployment: "pool01", Secret: "oauth-2026@v2", StartTime: timestamppb.New(now.Add(-time.Hour))}, codes.InvalidArgument, []string{"start_time", now.Add(-time.Hour).UTC().Format(time.RFC3339), "is in the past"}},
		{"effective before start", &pb.CreateRotationRequest{Deployment: "pool01", Secret: "oauth-2026@v2", StartTime: timestamppb.New(now.Add(time.Hour)), EffectiveTime: timestamppb.New(now.Add(time.Minute))}, codes.InvalidArgument, []string{"effective_time", "before the rotation starts"}},
		{"wrong product", &pb.CreateRotationRequest{Deployment: "pool01", Secret: "oauth-2026@v2", Product: pb.Product_PRODUCT_EXCHANGE}, codes.InvalidArgument, []string{"deployment", "pool01", "rotate issuer"}},
	} {
		_, err := rot.CreateRotation(ctx, tc.req)
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.code)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want it to contain %q", tc.name, err, w)
			}
		}
	}
	if list, err := rot.ListRotations(ctx, &pb.ListRotationsRequest{}); err != nil || len(list.GetRotations()) != 0 {
		t.Fatalf("after the refused requests: %v, %v; want no rotation stored", list, err)
	}
	if cur, err := pb.NewTopologyServiceClient(f.conn).GetTopology(ctx, &pb.GetTopologyRequest{}); err != nil || cur.GetTopology().GetRevision() != rev {
		t.Fatalf("after the refused requests the topology is %v (%v), want revision %d", cur.GetTopology().GetRevision(), err, rev)
	}

	start := time.Now().Add(2 * time.Second)
	// The effective time leaves stage and refresh time to finish first.
	eff := start.Add(45 * time.Second)
	created, err := rot.CreateRotation(ctx, &pb.CreateRotationRequest{Deployment: "pool01", Secret: "oauth-2026@v2",
		StartTime: timestamppb.New(start), EffectiveTime: timestamppb.New(eff), RequestId: "e2e-1"})
	if err != nil {
		t.Fatal(err)
	}
	r := created.GetRotation()
	if r.GetName() != "rotations/1" || r.GetState() != pb.RotationState_ROTATION_STATE_SCHEDULED || r.GetOldThumbprint() != oldTP ||
		r.GetNewThumbprint() != newTP || r.GetOldSecret() != "oauth-2026@v1" || r.GetNewSecret() != "oauth-2026@v2" {
		t.Fatalf("created %v", r)
	}
	// A retry with the same request id returns the same rotation; another
	// request is refused while this one is scheduled.
	again, err := rot.CreateRotation(ctx, &pb.CreateRotationRequest{Deployment: "pool01", Secret: "oauth-2026@v2", StartTime: timestamppb.New(start), RequestId: "e2e-1"})
	if err != nil || again.GetRotation().GetName() != "rotations/1" {
		t.Fatalf("retry: %v, %v", again, err)
	}
	_, err = rot.CreateRotation(ctx, &pb.CreateRotationRequest{Deployment: "pool01", Secret: "oauth-2026@v2", RequestId: "e2e-2"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "rotations/1 of deployment pool01 is scheduled") {
		t.Fatalf("a second rotation: %v, want FAILED_PRECONDITION naming rotations/1", err)
	}

	// The schedule is in etcd: a controller restarted before the start
	// time starts it.
	f.c = f.c.restart()
	f.conn = f.c.admin()
	rot = pb.NewRotationServiceClient(f.conn)

	// Follow it: at every look, the trust report passes and no probe on
	// an edge from or to pool01 has failed. Restart the controller once
	// the refresh phase runs.
	restarted := false
	var stageRev uint64
	seen := map[pb.RotationPhase]bool{}
	last := f.followRotation("rotations/1", func(last *pb.Rotation) {
		seen[last.GetCurrentPhase()] = true
		if !restarted && last.GetCurrentPhase() == pb.RotationPhase_ROTATION_PHASE_REFRESH {
			stageRev = last.GetPhases()[0].GetRevision()
			restarted = true
			// While it runs: another rotation and an apply are refused.
			_, err := rot.CreateRotation(ctx, &pb.CreateRotationRequest{Deployment: "pool01", Secret: "oauth-2026@v2"})
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "rotations/1 of deployment pool01 is running (phase refresh)") {
				t.Errorf("a rotation while rotations/1 runs: %v", err)
			}
			_, err = pb.NewTopologyServiceClient(f.conn).ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: examples.Contoso, Filename: "contoso.yaml", Immediate: true})
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "rotation rotations/1 of deployment pool01 is running") {
				t.Errorf("apply while rotations/1 runs: %v", err)
			}
			f.c = f.c.restart()
			f.conn = f.c.admin()
		}
	})
	if !restarted {
		t.Fatal("the rotation never showed its refresh phase")
	}
	for _, p := range rotation.Phases {
		if !seen[p] {
			t.Errorf("phase %s was never current at a look", rotation.PhaseName(p))
		}
	}
	if got := last.GetPhases()[0].GetRevision(); got != stageRev {
		t.Errorf("stage revision %d after the restart, was %d: the phase was stored again", got, stageRev)
	}
	var revs []uint64
	for _, ps := range last.GetPhases() {
		if ps.GetState() != pb.RotationPhaseState_ROTATION_PHASE_STATE_PASSED || ps.GetRollout() == "" || ps.GetStartTime() == nil || ps.GetEndTime() == nil || len(ps.GetHosts()) == 0 {
			t.Errorf("phase %s: %v", rotation.PhaseName(ps.GetPhase()), ps)
		}
		for _, h := range ps.GetHosts() {
			if !h.GetPassed() {
				t.Errorf("phase %s: host %s did not pass: %s", rotation.PhaseName(ps.GetPhase()), h.GetHost(), h.GetGate())
			}
		}
		revs = append(revs, ps.GetRevision())
	}
	if !(revs[0] < revs[1] && revs[1] < revs[2] && revs[2] < revs[3]) {
		t.Errorf("phase revisions %v, want one new revision per phase", revs)
	}
	// Host by host: the stage and activate phases gate pool01's two Front
	// Ends, the refresh phase the three hosts trusting pool01.
	roles := func(ps *pb.RotationPhaseStatus) string {
		var out []string
		for _, h := range ps.GetHosts() {
			out = append(out, h.GetHost()+"/"+h.GetRole())
		}
		return strings.Join(out, " ")
	}
	if got := roles(last.GetPhases()[0]); got != "fe01.contoso.com/issuer fe02.contoso.com/issuer" {
		t.Errorf("stage gated %s", got)
	}
	if got := roles(last.GetPhases()[1]); got != "ex01.contoso.com/partner ex02.contoso.com/partner sp01.contoso.com/partner" {
		t.Errorf("refresh gated %s", got)
	}

	// Every edge works on the new certificate; the document names the new
	// version, and no previous certificate is left on pool01.
	edges := f.waitEdges("every edge to pass on the new certificate", func(k string, e *pb.TrustEdge) bool {
		return e.GetOk() && (!strings.HasPrefix(k, "pool01→") || e.GetIssuerThumbprint() == newTP)
	})
	for k, e := range edges {
		if strings.HasPrefix(k, "pool01→") {
			for _, p := range e.GetProbes() {
				if p.GetProbe().GetIssuerThumbprint() != newTP {
					t.Errorf("%s: probe %s → %s signed with %s", k, p.GetFromHost(), p.GetProbe().GetTargetHost(), p.GetProbe().GetIssuerThumbprint())
				}
			}
		}
	}
	topo, err := pb.NewTopologyServiceClient(f.conn).GetTopology(ctx, &pb.GetTopologyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var pin *pb.SecretVersion
	for _, s := range topo.GetTopology().GetSecrets() {
		if s.GetName() == "oauth-2026" {
			pin = s
		}
	}
	if topo.GetTopology().GetRevision() != revs[3] || pin.GetVersion() != 2 || pin.GetThumbprint() != newTP {
		t.Errorf("current topology revision %d pins %v; want the retire phase's revision %d pinning oauth-2026 version 2", topo.GetTopology().GetRevision(), pin, revs[3])
	}
	for _, fe := range []string{"fe01.contoso.com", "fe02.contoso.com"} {
		h, err := pb.NewFleetServiceClient(f.conn).GetHost(ctx, &pb.GetHostRequest{Host: fe})
		if err != nil {
			t.Fatal(err)
		}
		if o := h.GetStatus().GetOauth(); o.GetIssuerThumbprint() != newTP || o.GetPreviousIssuerThumbprint() != "" || o.GetNextIssuerThumbprint() != "" {
			t.Errorf("%s: issuer %s, previous %q, next %q", fe, o.GetIssuerThumbprint(), o.GetPreviousIssuerThumbprint(), o.GetNextIssuerThumbprint())
		}
	}
	// Applying the operator's document again is allowed after the rotation.
	if _, err := pb.NewTopologyServiceClient(f.conn).ApplyTopology(ctx, &pb.ApplyTopologyRequest{Document: examples.Contoso, Filename: "contoso.yaml", DryRun: true}); err != nil {
		t.Errorf("dry run after the rotation: %v", err)
	}
}

// TestRotateExchangeAuthCertificate rotates the Exchange organization's
// auth certificate (the product's own, which the topology did not name)
// to a secret: every phase passes with no probe failing, the activation's
// rollout changes one Exchange server at a time (each an IIS reset), and
// the document names the secret as exchange's token issuer at the end.
func TestRotateExchangeAuthCertificate(t *testing.T) {
	t.Parallel()
	rotateProductCertificate(t, "exchange", pb.Product_PRODUCT_EXCHANGE, "ex-auth-2027", "Microsoft Exchange Server Auth Certificate", 2)
}

// TestRotateSharePointSTSCertificate is the same for the SharePoint
// farm's STS signing certificate.
func TestRotateSharePointSTSCertificate(t *testing.T) {
	t.Parallel()
	rotateProductCertificate(t, "sharepoint", pb.Product_PRODUCT_SHAREPOINT, "sp-sts-2027", "SharePoint Security Token Service", 1)
}

func rotateProductCertificate(t *testing.T, dep string, product pb.Product, secret, cn string, hosts int) {
	f := startFleetWith(t, examples.Contoso, rotationAgents, func(c *app.ServeConfig) {
		c.RolloutInterval = 100 * time.Millisecond
	})
	rev := f.apply(examples.Contoso)
	f.waitConverged(rev)
	f.waitEdges("every edge to pass before the rotation", func(_ string, e *pb.TrustEdge) bool { return e.GetOk() })
	ctx := context.Background()
	oldTP := f.trustReport()[dep+"→pool01"].GetIssuerThumbprint()
	f.putIssuerSecret(secret, cn, nil, issuerPassword)
	rot := pb.NewRotationServiceClient(f.conn)
	// The product's command refuses another product's deployment.
	_, err := rot.CreateRotation(ctx, &pb.CreateRotationRequest{Deployment: dep, Secret: secret, Product: pb.Product_PRODUCT_LYNC})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "rotate "+server.RotateCommand(product)) {
		t.Fatalf("a Lync rotation of %s: %v", dep, err)
	}
	created, err := rot.CreateRotation(ctx, &pb.CreateRotationRequest{Deployment: dep, Secret: secret, Product: product,
		EffectiveTime: timestamppb.New(time.Now().Add(45 * time.Second))})
	if err != nil {
		t.Fatal(err)
	}
	r := created.GetRotation()
	if r.GetOldThumbprint() != oldTP || r.GetOldSecret() != "" || r.GetNewSecret() != secret+"@v1" || r.GetOldNotAfter() == nil {
		t.Fatalf("created %v", r)
	}
	newTP := r.GetNewThumbprint()
	last := f.followRotation(r.GetName(), func(*pb.Rotation) {})

	ac := last.GetPhases()[2]
	ro, err := pb.NewRolloutServiceClient(f.conn).GetRollout(ctx, &pb.GetRolloutRequest{Name: ac.GetRollout()})
	if err != nil {
		t.Fatal(err)
	}
	if s := ro.GetRollout().GetStrategy(); s.GetMaxUnavailable() > 1 || s.GetImmediate() {
		t.Errorf("activation rollout strategy %v, want one host at a time", s)
	}
	if got := len(ac.GetHosts()); got != hosts {
		t.Errorf("activation gated %d hosts, want %s's %d", got, dep, hosts)
	}
	f.waitEdges("every edge to pass on the new certificate", func(k string, e *pb.TrustEdge) bool {
		return e.GetOk() && (!strings.HasPrefix(k, dep+"→") || e.GetIssuerThumbprint() == newTP)
	})
	topo, err := pb.NewTopologyServiceClient(f.conn).GetTopology(ctx, &pb.GetTopologyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if doc := topo.GetTopology().GetDocument(); !strings.Contains(doc, `"secret": "`+secret+`"`) {
		t.Errorf("the document after the rotation does not name %s:\n%s", secret, doc)
	}
}
