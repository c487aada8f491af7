package cmd

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/internal/pki"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// reportAs opens a Sync stream to the controller of dataDir as host, with
// an agent identity from its development CA, says hello and sends rep, as
// an agent would, its Hello naming the products detected. The stream stays
// open until the test ends.
func reportAs(t *testing.T, dataDir, host string, rep *pb.StatusReport, detected ...*pb.DetectedProduct) {
	t.Helper()
	conn := agentConn(t, dataDir, host)
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
	t.Cleanup(func() {
		cancel()
		<-done
	})
	for _, m := range []*pb.SyncRequest{
		{Message: &pb.SyncRequest_Hello{Hello: &pb.Hello{Host: host, AgentVersion: "test", Driver: "none", Products: detected}}},
		{Message: &pb.SyncRequest_Status{Status: rep}},
	} {
		if err := stream.Send(m); err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("send as %s: %v", host, err)
		}
	}
}

// agentConn is a connection to the controller of dataDir with an agent
// identity for host from its development CA; closed when the test ends.
func agentConn(t *testing.T, dataDir, host string) *grpc.ClientConn {
	t.Helper()
	files := pki.Files{Dir: app.PKIDir(dataDir)}
	caPEM, caKey := mustRead(t, files.CACert()), mustRead(t, files.CAKey())
	ca, err := pki.LoadCA(caPEM, caKey)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueHost(host, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := pki.ClientTLSConfig(certPEM, keyPEM, caPEM, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addr, err := os.ReadFile(app.AddrFile(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(strings.TrimSpace(string(addr)), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestDriftAndRealmsInStatus checks what an operator sees of drift and
// realms: the DRIFT column of get hosts, status naming the drifting host
// and exiting non-zero, status --trust listing the drift under its table
// and each deployment's realms as the products have them.
func TestDriftAndRealmsInStatus(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	iss := newIssuer(t, "pfx-Passw0rd", "contoso.com", "fabrikam.com")
	mustRun(t, dir, "secret", "put", "oauth-2026", "--pfx", iss.pfxFile, "--password-file", iss.pwFile)
	mustRun(t, dir, "apply", "-f", contosoFile(t))

	reportAs(t, dir, "fe01.contoso.com", &pb.StatusReport{
		Primary: true,
		Oauth:   &pb.OAuthConfiguration{ServiceName: products.LyncID, Realm: "contoso.com"},
		Metadata: []*pb.MetadataCheck{{Deployment: "pool01", Url: "https://pool01.contoso.com/metadata/json/1", Ok: true,
			Realm: "contoso.com", Issuer: products.LyncID + "@contoso.com"}},
		Items: []*pb.ItemStatus{{Item: "partner/microsoft.exchange", State: pb.ItemState_ITEM_STATE_DRIFTED, Message: "ApplicationTrustLevel is Application"}},
		Drift: []*pb.Drift{{Item: "partner/microsoft.exchange", Expected: "as applied", Actual: "ApplicationTrustLevel is Application"}},
	})
	reportAs(t, dir, "ex01.contoso.com", &pb.StatusReport{
		Primary: true,
		Oauth:   &pb.OAuthConfiguration{ServiceName: products.ExchangeID},
		Metadata: []*pb.MetadataCheck{{Deployment: "exchange", Url: "https://autodiscover.contoso.com/autodiscover/metadata/json/1", Ok: true,
			Realm: "*", Issuer: products.ExchangeID + "@*"}},
		Drift: []*pb.Drift{{Item: "partner/microsoft.lync", Expected: "as applied", Actual: "missing", Corrected: true}},
	})

	wantDrift := map[string]string{"fe01.contoso.com": "1", "ex01.contoso.com": "0 (1 corrected)"}
	waitFor(t, "the DRIFT column of get hosts", func() (bool, string) {
		out, err := run(t, dir, "get", "hosts")
		if err != nil {
			return false, err.Error()
		}
		rows := tableRows(t, out)
		if len(rows) != 5 {
			return false, out
		}
		for _, r := range rows {
			want := wantDrift[r["HOST"]]
			if want == "" {
				want = "-"
			}
			if r["DRIFT"] != want {
				return false, out
			}
		}
		return true, out
	})

	// The drift rides on the host state; the reports themselves are stored
	// apart (and rate-limited): wait until status shows both.
	lyncRealm := "Realm: contoso.com; own metadata: realm contoso.com, issuer " + products.LyncID + "@contoso.com\n"
	exRealm := "Realm: (blank: tokens for any accepted domain); own metadata: realm *, issuer " + products.ExchangeID + "@*\n"
	waitFor(t, "both reports in status", func() (bool, string) {
		out, _ := run(t, dir, "status")
		return strings.Contains(out, lyncRealm) && strings.Contains(out, exRealm), out
	})
	out, err := mustFail(t, dir, "status")
	// Drift outranks the three hosts with no agent.
	if ExitCode(err) != exitDrift || err.Error() != "drift on fe01.contoso.com (partner/microsoft.exchange); disconnected: ex02.contoso.com, fe02.contoso.com, sp01.contoso.com" {
		t.Errorf("status: exit %d, error %q; want %d naming fe01 and its drifted item only, then the hosts disconnected", ExitCode(err), err, exitDrift)
	}
	wantContains(t, "status", out, "5 hosts: 0 converged, 1 pending, 0 NACK, 1 drift, 3 disconnected\n")
	wantContains(t, "status", out,
		"DRIFT partner/microsoft.exchange: ApplicationTrustLevel is Application\n",
		"Realm: contoso.com; own metadata: realm contoso.com, issuer "+products.LyncID+"@contoso.com\n",
		"Realm: (blank: tokens for any accepted domain); own metadata: realm *, issuer "+products.ExchangeID+"@*\n")

	out, err = mustFail(t, dir, "status", "--trust")
	if ExitCode(err) != exitTrust {
		t.Errorf("status --trust: exit %d (%v), want %d: the hosts that did not report fail their edges", ExitCode(err), err, exitTrust)
	}
	wantContains(t, "status --trust", out,
		"  DRIFT on fe01.contoso.com (pool01): partner/microsoft.exchange: ApplicationTrustLevel is Application\n",
		"  DRIFT on ex01.contoso.com (exchange): partner/microsoft.lync: missing (corrected)\n")
	_, realmsTable, found := strings.Cut(out, "\nDEPLOYMENT ")
	if !found {
		t.Fatalf("status --trust prints no realms table:\n%s", out)
	}
	rows := tableRows(t, "DEPLOYMENT "+realmsTable)
	want := map[string][3]string{
		"exchange":   {"ex01.contoso.com", "-", "*"},
		"pool01":     {"fe01.contoso.com", "contoso.com", "contoso.com"},
		"sharepoint": {"-", "-", "-"},
	}
	if len(rows) != len(want) {
		t.Fatalf("realms table has %d rows, want %d:\n%s", len(rows), len(want), out)
	}
	for _, r := range rows {
		w := want[r["DEPLOYMENT"]]
		if got := [3]string{r["REPORTED BY"], r["CONFIGURED REALM"], r["METADATA REALM"]}; got != w {
			t.Errorf("realms row %v, want reported by %s, configured %s, metadata %s", r, w[0], w[1], w[2])
		}
	}
}
