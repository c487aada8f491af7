package etcdembed

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

func TestStartPutGetRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	for i, want := range []string{"", "v1"} {
		srv, err := Start(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cli.Get(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if len(resp.Kvs) == 1 {
			got = string(resp.Kvs[0].Value)
		}
		if got != want {
			t.Fatalf("start %d: got %q, want %q", i, got, want)
		}
		if _, err := cli.Put(ctx, "k", "v1"); err != nil {
			t.Fatal(err)
		}
		cli.Close()
		srv.Close()
	}
}

// tcpListeners returns the local addresses of the TCP sockets in LISTEN
// state that this process holds open, by socket inode.
func tcpListeners(t *testing.T) map[string]string {
	t.Helper()
	listening := map[string]string{} // inode -> local address
	for _, f := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("read %s: %v", f, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Scan() // header
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 {
				continue
			}
			if fs[3] == "0A" { // TCP_LISTEN
				listening[fs[9]] = fs[1]
			}
		}
	}
	own := map[string]string{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil {
			continue
		}
		var inode string
		if _, err := fmt.Sscanf(target, "socket:[%s", &inode); err != nil {
			continue
		}
		inode = strings.TrimSuffix(inode, "]")
		if addr, ok := listening[inode]; ok {
			own[inode] = addr
		}
	}
	return own
}

// The store is closed to everyone but the controller: the embedded etcd
// opens no TCP listening socket at all (so a forged raft message or a
// client of another user has nowhere to go), and its unix sockets sit in
// a directory only the owner may enter.
func TestNoTCPListenerOnlyPrivateUnixSockets(t *testing.T) {
	// A listener of our own proves the scan sees TCP listeners of this process.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	before := tcpListeners(t)
	if len(before) == 0 {
		t.Fatal("the scan of /proc/self does not see this test's own TCP listener")
	}

	dir := filepath.Join(t.TempDir(), "etcd")
	srv, err := Start(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(context.Background(), "k", "v"); err != nil {
		t.Fatal(err)
	}

	after := tcpListeners(t)
	for inode, addr := range after {
		if _, ok := before[inode]; !ok {
			t.Errorf("embedded etcd opened a TCP listener: %s (inode %s)", addr, inode)
		}
	}
	// etcd's well-known ports must not answer either.
	for _, port := range []string{"2379", "2380"} {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second); err == nil {
			c.Close()
			t.Errorf("something listens on etcd's default port %s", port)
		}
	}
	sockDir := SocketDir(dir)
	for _, u := range srv.ListenURLs() {
		if u.Scheme != "unix" {
			t.Errorf("listen URL %s is not a unix socket", u.String())
			continue
		}
		if filepath.Dir(u.Host) != sockDir {
			t.Errorf("socket %s is outside %s", u.Host, sockDir)
		}
		fi, err := os.Stat(u.Host)
		if err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Errorf("socket %s: %v (mode %v)", u.Host, err, fi)
		}
	}
	if n := len(srv.ListenURLs()); n < 2 {
		t.Errorf("got %d listen URLs, want the client and the peer socket", n)
	}
	for _, d := range []string{dir, sockDir} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o700 {
			t.Errorf("%s has mode %o, want 700", d, perm)
		}
	}
}

// An existing data directory open to others is tightened to 0700.
func TestStartTightensDirectoryMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etcd")
	if err := os.MkdirAll(SocketDir(dir), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := Start(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, d := range []string{dir, SocketDir(dir)} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o700 {
			t.Errorf("%s has mode %o, want 700", d, perm)
		}
	}
}

// A data directory that cannot be created (here: below a regular file,
// which fails for root too) is refused with a message naming it.
func TestStartUnwritableDirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "etcd")
	_, err := Start(context.Background(), dir)
	if err == nil {
		t.Fatal("start below a regular file succeeded")
	}
	if !strings.Contains(err.Error(), "create etcd data directory "+dir) || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("error %q does not name the directory and the cause", err)
	}
}

// recorder is a slog handler keeping every record.
type recorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r } // attrs not needed here
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) find(level slog.Level, substr string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.recs {
		if rec.Level >= level && strings.Contains(rec.Message, substr) {
			return true
		}
	}
	return false
}

// etcd's own errors reach the controller's log: here its data directory
// is a regular file, which etcd itself finds when it bootstraps.
func TestEtcdErrorsLogged(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "member-data"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	_, err := StartConfig(context.Background(), Config{Dir: dir, Logger: slog.New(rec)})
	if err == nil || !strings.Contains(err.Error(), "cannot access data directory") {
		t.Fatalf("start on a broken data directory: got %v", err)
	}
	if !rec.find(slog.LevelError, "bootstrap failed") {
		t.Fatalf("etcd's bootstrap error did not reach the log: %d records", len(rec.recs))
	}
	// Fixed start-up advice that does not apply here is no warning.
	if rec.find(slog.LevelWarn, "single port") {
		t.Error("etcd's single-port advice logged as a warning")
	}
}

// Over a tiny quota etcd raises the NOSPACE alarm: writes fail with
// ErrNoSpace and reads still work.
func TestQuotaAlarm(t *testing.T) {
	srv, err := StartConfig(context.Background(), Config{Dir: t.TempDir(), QuotaBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if srv.QuotaBytes() != 1<<20 {
		t.Fatalf("quota %d", srv.QuotaBytes())
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	big := strings.Repeat("x", 256<<10)
	var perr error
	for i := 0; i < 100 && perr == nil; i++ {
		_, perr = cli.Put(ctx, "big", big)
	}
	if !errors.Is(perr, rpctypes.ErrNoSpace) {
		t.Fatalf("writes over the quota: got %v, want %v", perr, rpctypes.ErrNoSpace)
	}
	if _, err := cli.Get(ctx, "big"); err != nil {
		t.Fatalf("read under the NOSPACE alarm: %v", err)
	}
}

// Auto-compaction runs: history older than the retention goes away, so
// rewritten keys do not fill the database.
func TestAutoCompaction(t *testing.T) {
	srv, err := StartConfig(context.Background(), Config{Dir: t.TempDir(), CompactionRetention: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	first, err := cli.Put(ctx, "k", "v1")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		// Keep writing so the compactor has newer revisions to keep.
		if _, err := cli.Put(ctx, "k", "v2"); err != nil {
			t.Fatal(err)
		}
		_, err := cli.Get(ctx, "k", clientv3.WithRev(first.Header.Revision))
		if errors.Is(err, rpctypes.ErrCompacted) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("revision of the first write not compacted within 30s with a retention of 1s")
		}
		<-tick.C
	}
}

// Paths with the separators of etcd's flag syntax (a comma, an equals
// sign) work: nothing of the path goes through etcd's text forms.
func TestStartPathWithSeparators(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a,b=c d")
	srv, err := Start(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ClientEndpoint(dir)}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(context.Background(), "k", "v"); err != nil {
		t.Fatal(err)
	}
}

// A data directory made by an older release, whose raft peer listened on
// loopback TCP, keeps its data and comes back on unix sockets only.
func TestStartMigratesTCPPeerDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etcd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "s2strust"
	cfg.Dir = filepath.Join(dir, "member-data")
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	oldSock := filepath.Join(dir, "etcd.sock")
	client := url.URL{Scheme: "unix", Host: oldSock}
	peer, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	old, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	<-old.Server.ReadyNotify()
	oc, err := clientv3.New(clientv3.Config{Endpoints: []string{"unix://" + oldSock}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oc.Put(context.Background(), "k", "kept"); err != nil {
		t.Fatal(err)
	}
	oc.Close()
	old.Close()

	before := tcpListeners(t)
	srv, err := Start(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for inode, addr := range tcpListeners(t) {
		if _, ok := before[inode]; !ok {
			t.Errorf("the migrated etcd opened a TCP listener: %s", addr)
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(context.Background(), "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "kept" {
		t.Fatalf("data after migration: %v, %v", resp, err)
	}
	if _, err := cli.Put(context.Background(), "k", "new"); err != nil {
		t.Fatalf("write after migration: %v", err)
	}
	if _, err := os.Stat(oldSock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old socket %s left behind (stat: %v)", oldSock, err)
	}
}
