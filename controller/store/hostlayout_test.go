package store_test

import (
	"fmt"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func marshal(t *testing.T, m proto.Message) string {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The state and reports of 130 hosts (more than two migration batches) in
// the layout before the split move to hoststate/ and hostreport/; a key
// already in the new layout wins; nothing is left under hosts/; a second
// run moves nothing.
func TestMigrateHostLayout(t *testing.T) {
	st, cli := newStore(t)
	ctx := testCtx(t)
	const n = 130
	for i := range n {
		host := fmt.Sprintf("h%03d.contoso.com", i)
		if _, err := cli.Put(ctx, st.Key("hosts/"+host+"/state"), marshal(t, &pb.Host{Host: host, AppliedVersion: uint64(i)})); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := cli.Put(ctx, st.Key("hosts/"+host+"/report"), marshal(t, &pb.StatusReport{AppliedVersion: uint64(i)})); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A newer controller already wrote h007's state in the new layout.
	if err := st.PutProto(ctx, store.HostStateKey("h007.contoso.com"), &pb.Host{Host: "h007.contoso.com", AppliedVersion: 999}); err != nil {
		t.Fatal(err)
	}
	moved, err := st.MigrateHostLayout(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := n + (n+1)/2; moved != want {
		t.Errorf("moved %d keys, want %d", moved, want)
	}
	left, err := cli.Get(ctx, st.Key("hosts/"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || left.Count != 0 {
		t.Fatalf("%d keys left under hosts/ (%v)", left.Count, err)
	}
	states, err := st.HostStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != n {
		t.Fatalf("%d states after the move, want %d", len(states), n)
	}
	for i := range n {
		host := fmt.Sprintf("h%03d.contoso.com", i)
		want := uint64(i)
		if i == 7 {
			want = 999
		}
		if got := states[host].GetAppliedVersion(); got != want {
			t.Errorf("%s: applied version %d, want %d", host, got, want)
		}
		s, rep, err := st.HostRecord(ctx, host)
		if err != nil {
			t.Fatal(err)
		}
		if s.GetHost() != host || (i%2 == 0) != (rep != nil) || (rep != nil && rep.GetAppliedVersion() != uint64(i)) {
			t.Errorf("%s: HostRecord = %v, %v", host, s, rep)
		}
	}
	if again, err := st.MigrateHostLayout(ctx); err != nil || again != 0 {
		t.Errorf("second run moved %d keys (%v), want none", again, err)
	}
}

// A page of states is read by range or by name, and reads no report.
func TestHostStatesPage(t *testing.T) {
	st, _ := newStore(t)
	ctx := testCtx(t)
	for _, h := range []string{"a.contoso.com", "b.contoso.com", "c.contoso.com", "d.contoso.com"} {
		if err := st.PutProto(ctx, store.HostStateKey(h), &pb.Host{Host: h}); err != nil {
			t.Fatal(err)
		}
		if err := st.PutProto(ctx, store.HostReportKey(h), &pb.StatusReport{}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := st.HostStatesBetween(ctx, "b.contoso.com", "c.contoso.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["b.contoso.com"] == nil || got["c.contoso.com"] == nil {
		t.Errorf("HostStatesBetween(b, c) = %v, want b and c", got)
	}
	got, err = st.HostStatesOf(ctx, []string{"d.contoso.com", "a.contoso.com", "x.contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["a.contoso.com"] == nil || got["d.contoso.com"] == nil {
		t.Errorf("HostStatesOf(d, a, x) = %v, want a and d", got)
	}
}
