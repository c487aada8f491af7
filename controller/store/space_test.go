package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/s2strust/s2strust/controller/etcdembed"
	"github.com/s2strust/s2strust/controller/store"
)

// Over a tiny quota every write is refused with an error naming the quota
// and the remedy, reads keep working, and Reclaim makes writes work again.
func TestSpaceQuotaAndReclaim(t *testing.T) {
	const quota = 1 << 20
	srv, err := etcdembed.StartConfig(context.Background(), etcdembed.Config{Dir: t.TempDir(), QuotaBytes: quota})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	st := store.New(cli, "", store.WithQuotaBytes(srv.QuotaBytes()))
	ctx := testCtx(t)

	doc := []byte(`{"name":"contoso","v":1}`)
	if _, _, err := st.PutTopology(ctx, "contoso", doc, "admin/alice", t0, nil, nil); err != nil {
		t.Fatal(err)
	}
	// Rewriting one key fills the database with its old revisions, as
	// rewritten host reports would.
	big := strings.Repeat("r", 200<<10)
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("no NOSPACE alarm after 100 writes of 200 KiB over a 1 MiB quota")
		}
		if _, err := cli.Put(ctx, st.Key("hosts/a.contoso.com/report"), big); err != nil {
			if !errors.Is(err, rpctypes.ErrNoSpace) {
				t.Fatal(err)
			}
			break
		}
	}
	if on, err := st.SpaceAlarm(ctx); err != nil || !on {
		t.Fatalf("SpaceAlarm = %v, %v; want true", on, err)
	}

	_, _, err = st.PutTopology(ctx, "contoso", []byte(`{"name":"contoso","v":2}`), "admin/alice", t0, nil, nil)
	var nse *store.NoSpaceError
	if !errors.As(err, &nse) || !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("PutTopology over the quota: got %v, want a NoSpaceError", err)
	}
	for _, want := range []string{"etcd space quota of 1048576 bytes exceeded", "s2s-controller store defrag"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	cur, err := st.CurrentTopology(ctx)
	if err != nil || string(cur.Document) != string(doc) {
		t.Fatalf("read under the alarm: %v, %v", cur, err)
	}

	res, err := st.Reclaim(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.DisarmedAlarms != 1 || len(res.Members) != 1 || res.Members[0].AfterBytes >= res.Members[0].BeforeBytes || res.CompactedRevision == 0 {
		t.Fatalf("Reclaim = %+v", res)
	}
	if on, err := st.SpaceAlarm(ctx); err != nil || on {
		t.Fatalf("SpaceAlarm after Reclaim = %v, %v; want false", on, err)
	}
	if _, changed, err := st.PutTopology(ctx, "contoso", []byte(`{"name":"contoso","v":2}`), "admin/alice", t0, nil, nil); err != nil || !changed {
		t.Fatalf("PutTopology after Reclaim: %v, %v", changed, err)
	}
	// Reclaim again is harmless.
	if _, err := st.Reclaim(ctx); err != nil {
		t.Fatal(err)
	}
}
