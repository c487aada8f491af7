package cmd

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// status -w against a real controller: the table of every host, then the
// host whose agent connects, until interrupted (no error then).
func TestStatusWatch(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	mustRun(t, dir, "apply", "-f", contosoFile(t))
	// The controller serves the revision once its watch has taken it:
	// only then does the watch's first snapshot hold the five hosts.
	waitFor(t, "the applied revision's hosts", func() (bool, string) {
		out, err := run(t, dir, "get", "hosts")
		return err == nil && strings.Contains(out, "sp01.contoso.com"), out
	})

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out syncBuffer
	root := NewRoot(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"--data-dir", dir, "status", "-w"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	waitFor(t, "the hosts table", func() (bool, string) {
		s := out.String()
		return strings.Contains(s, "5 hosts: 0 connected") && strings.Contains(s, "sp01.contoso.com"), s
	})
	reportAs(t, dir, "sp01.contoso.com", &pb.StatusReport{})
	waitFor(t, "sp01's change", func() (bool, string) {
		s := out.String()
		_, after, ok := strings.Cut(s, "changed:")
		return ok && strings.Contains(after, "sp01.contoso.com"), s
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("status -w interrupted: %v, want no error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("status -w did not end when interrupted")
	}
	if _, after, _ := strings.Cut(out.String(), "changed:"); strings.Contains(after, "ex01.contoso.com") {
		t.Errorf("a host that did not change was shown again:\n%s", out.String())
	}
}

// followHosts warns once when the view turns stale and says when it is
// current again; --host keeps one host.
func TestFollowHostsStale(t *testing.T) {
	msgs := []*pb.WatchHostsResponse{
		{Hosts: []*pb.Host{{Host: "a.contoso.com"}, {Host: "b.contoso.com"}}, InitialComplete: true},
		{Hosts: []*pb.Host{{Host: "b.contoso.com", Connected: true}}, Stale: &pb.Staleness{AsOf: timestamppb.Now(), AgeMs: 12000, Reason: "etcd did not answer: context deadline exceeded"}},
		{Hosts: []*pb.Host{{Host: "a.contoso.com", Connected: true}}, Stale: &pb.Staleness{AsOf: timestamppb.Now(), AgeMs: 13000, Reason: "again"}},
		{Removed: []string{"hosts/b.contoso.com"}},
	}
	var out, errw bytes.Buffer
	i := 0
	err := followHosts(&out, &errw, "b.contoso.com", func() (*pb.WatchHostsResponse, error) {
		if i == len(msgs) {
			return nil, context.Canceled
		}
		i++
		return msgs[i-1], nil
	}, func() error {
		if i == len(msgs) {
			return context.Canceled
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(errw.String(), "STALE"); n != 1 || !strings.Contains(errw.String(), "(12s old)") || !strings.Contains(errw.String(), "etcd answers again") {
		t.Errorf("warnings:\n%s", errw.String())
	}
	if strings.Contains(out.String(), "a.contoso.com") || !strings.Contains(out.String(), "1 host: 0 connected") || !strings.Contains(out.String(), "b.contoso.com left the topology") {
		t.Errorf("output:\n%s", out.String())
	}
}

// listOnlyFleet answers ListHosts in pages of one; any other call panics
// (the embedded interface is nil).
type listOnlyFleet struct {
	pb.FleetServiceClient
	hosts   []string
	calls   int
	reports bool
}

func (f *listOnlyFleet) ListHosts(_ context.Context, req *pb.ListHostsRequest, _ ...grpc.CallOption) (*pb.ListHostsResponse, error) {
	f.calls++
	i := 0
	if req.GetPageToken() != "" {
		i, _ = strconv.Atoi(req.GetPageToken())
	}
	resp := &pb.ListHostsResponse{Hosts: []*pb.Host{{Host: f.hosts[i]}}}
	if req.GetView() == pb.HostView_HOST_VIEW_FULL {
		f.reports = true
		resp.Statuses = map[string]*pb.StatusReport{f.hosts[i]: {AppliedVersion: uint64(i + 1)}}
	}
	if i+1 < len(f.hosts) {
		resp.NextPageToken = strconv.Itoa(i + 1)
	}
	return resp, nil
}

// status reads every host with its report from the paged listing: no
// GetHost per host.
func TestFetchStatusPagesWithoutGetHost(t *testing.T) {
	f := &listOnlyFleet{hosts: []string{"a.contoso.com", "b.contoso.com", "c.contoso.com"}}
	details, err := fetchStatus(context.Background(), f, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(details) != 3 || f.calls != 3 || !f.reports {
		t.Fatalf("%d hosts in %d calls (reports asked: %v), want 3 in 3 pages", len(details), f.calls, f.reports)
	}
	for i, d := range details {
		if d.host.GetHost() != f.hosts[i] || d.report.GetAppliedVersion() != uint64(i+1) {
			t.Errorf("host %d: %s with report %v", i, d.host.GetHost(), d.report)
		}
	}
}

// status -w follows the hosts' table: it refuses the views it does not
// follow, before it dials the controller.
func TestStatusWatchRefusedWith(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--trust"}, "-w follows the hosts: it takes neither --trust nor --plan"},
		{[]string{"--plan"}, "-w follows the hosts: it takes neither --trust nor --plan"},
		{[]string{"--details"}, "it takes no --details"},
		{[]string{"-o", "json"}, "-w prints tables: it takes no -o json"},
		{[]string{"-o", "yaml"}, "-w prints tables: it takes no -o yaml"},
	} {
		_, err := mustFail(t, dir, append([]string{"status", "-w"}, c.args...)...)
		wantContains(t, "status -w "+strings.Join(c.args, " "), err.Error(), c.want)
	}
}
