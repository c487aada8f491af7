package cmd

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// hostileText is what a hostile agent, metadata server or file might put
// in any string: a terminal escape that clears the screen and sets the
// window title, a forged line, a bidirectional override.
const hostileText = "x\x1b[2J\x1b]0;pwned\x07\r\nFORGED ROW\t\u202eevil\u2066\u200b"

// fill sets every string field of m, at any depth, to hostileText and
// gives every repeated message field one element, so that whatever a
// printer shows, it shows a hostile value.
func fill(m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.ContainingOneof() != nil && !fd.HasPresence() {
			continue
		}
		switch {
		case fd.IsMap():
		case fd.IsList() && fd.Kind() == protoreflect.StringKind:
			l := m.Mutable(fd).List()
			l.Append(protoreflect.ValueOfString(hostileText))
			l.Append(protoreflect.ValueOfString(hostileText))
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind && depth > 0:
			l := m.Mutable(fd).List()
			e := l.NewElement()
			fill(e.Message(), depth-1)
			l.Append(e)
		case fd.Kind() == protoreflect.StringKind:
			m.Set(fd, protoreflect.ValueOfString(hostileText))
		case fd.Kind() == protoreflect.MessageKind && depth > 0 && fd.Message().FullName() != "google.protobuf.Timestamp":
			fill(m.Mutable(fd).Message(), depth-1)
		}
	}
}

func hostile[M proto.Message](m M) M {
	fill(m.ProtoReflect(), 4)
	return m
}

// checkSafe fails when out holds anything a terminal would act on beyond
// the printer's own line breaks, or a line the hostile value forged, or
// when the hostile value is not shown escaped.
func checkSafe(t *testing.T, what, out string, multiline bool) {
	t.Helper()
	if out == "" {
		t.Fatalf("%s printed nothing", what)
	}
	for _, r := range out {
		if r != '\n' && (unicode.IsControl(r) || unicode.Is(unicode.Cf, r)) {
			t.Errorf("%s printed %U raw:\n%s", what, r, out)
			break
		}
	}
	want := `x\x1b[2J\x1b]0;pwned\x07\r\nFORGED ROW\t\u202eevil\u2066\u200b`
	if multiline {
		// Messages of several lines (a list of violations) keep their line
		// breaks; everything else is escaped.
		want = strings.Replace(want, `\n`, "\n", 1)
	} else {
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "FORGED ROW") {
				t.Errorf("%s let a value forge a line: %q", what, line)
			}
		}
	}
	if !strings.Contains(out, want) {
		t.Errorf("%s does not show the hostile value escaped:\n%s", what, out)
	}
}

func TestPrintersEscapeHostileText(t *testing.T) {
	run := func(what string, print func(*bytes.Buffer)) {
		var b bytes.Buffer
		print(&b)
		checkSafe(t, what, b.String(), false)
	}
	run("hosts", func(b *bytes.Buffer) {
		h := hostile(&pb.Host{})
		h.LastResult.Kind = pb.ResultKind_RESULT_KIND_NACK
		printHosts(b, []*pb.Host{h})
	})
	for _, p := range []pb.Product{pb.Product_PRODUCT_LYNC, pb.Product_PRODUCT_EXCHANGE, pb.Product_PRODUCT_SHAREPOINT} {
		run("status of "+p.String(), func(b *bytes.Buffer) {
			h := hostile(&pb.Host{})
			h.Product = p
			printStatus(b, []hostDetail{{host: h, report: hostile(&pb.StatusReport{})}})
		})
	}
	run("trust", func(b *bytes.Buffer) {
		e := hostile(&pb.TrustEdge{})
		printTrust(b, []*pb.TrustEdge{e, hostile(&pb.TrustEdge{RealmsMatch: true})})
	})
	run("plan", func(b *bytes.Buffer) { printPlan(b, hostile(&pb.ApplyTopologyResponse{})) })
	run("hosts in monitor mode", func(b *bytes.Buffer) {
		h := hostile(&pb.Host{})
		h.LastResult.Kind, h.LastResult.Monitor = pb.ResultKind_RESULT_KIND_NACK, true
		h.LastResult.Errors = append(h.LastResult.Errors, &pb.ItemError{Item: "monitor", Message: hostileText})
		printHosts(b, []*pb.Host{h})
	})
	for _, monitor := range []bool{false, true} {
		run("status --plan", func(b *bytes.Buffer) {
			r := hostile(&pb.StatusReport{})
			r.Monitor = monitor
			printPlans(b, []hostDetail{{host: hostile(&pb.Host{}), report: r}})
		})
	}
	run("discover's findings", func(b *bytes.Buffer) {
		cur, err := topology.Load("contoso.yaml", mustRead(t, filepath.Join("..", "..", "deploy", "examples", "contoso.yaml")))
		if err != nil {
			t.Fatal(err)
		}
		var details []hostDetail
		for _, h := range []string{"fe01.contoso.com", "fe02.contoso.com"} {
			details = append(details, hostDetail{host: &pb.Host{Host: h, Deployment: "pool01", Connected: true, Product: pb.Product_PRODUCT_LYNC,
				DetectedProducts: []*pb.DetectedProduct{{Product: pb.Product_PRODUCT_LYNC, Version: h}}}, report: hostile(&pb.StatusReport{})})
		}
		d := discover(cur, details, nil)
		if len(d.conflicts) == 0 {
			t.Fatal("no conflicts from hostile reports")
		}
		d.printFindings(b)
	})
	run("revisions", func(b *bytes.Buffer) { printRevisions(b, []*pb.TopologyRevision{hostile(&pb.TopologyRevision{})}) })
	now := time.Now()
	nacked := func() hostDetail {
		h := hostile(&pb.Host{DesiredVersion: 3, Connected: true})
		h.LastResult.Kind, h.LastResult.Version = pb.ResultKind_RESULT_KIND_NACK, 3
		r := hostile(&pb.StatusReport{})
		r.Items[0].State = pb.ItemState_ITEM_STATE_FAILED
		return hostDetail{host: h, report: r}
	}
	run("status table", func(b *bytes.Buffer) { _ = printStatusTable(b, []hostDetail{nacked()}, now) })
	run("status summary", func(b *bytes.Buffer) {
		h := nacked()
		h.host.LastSeen, h.host.ClockOffsetMs = timestamppb.New(now), 10*60*1000
		printSummary(b, summarize([]hostDetail{h, {host: &pb.Host{Host: "x", LastSeen: timestamppb.New(now)}}}, hostile(&pb.GetTrustReportResponse{})))
	})
	run("status problems", func(b *bytes.Buffer) { printHostProblems(b, nacked()) })
	run("get host", func(b *bytes.Buffer) { printHostDetail(b, nacked(), now) })
	run("secrets, audit, identities", func(b *bytes.Buffer) {
		t := newTable(b, "A", "B~")
		t.row(hostileText, hostileText)
		_ = t.flush()
	})
	checkSafe(t, "an error from the controller", rpcError("apply contoso.yaml", status.Error(codes.InvalidArgument, hostileText)).Error(), true)
}
