package syncer

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/s2strust/s2strust/agent/driver/drivertest"
	"github.com/s2strust/s2strust/agent/driver/sim"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// TestRemovedStoreFileIsRepaired removes the product's store behind the
// agent's back (the sim's Exchange organization): the next drift check
// re-applies it with auto-correct and reports it as drift without.
func TestRemovedStoreFileIsRepaired(t *testing.T) {
	for _, autoCorrect := range []bool{true, false} {
		shared, stateDir := t.TempDir(), t.TempDir()
		drv, err := sim.New(sim.Config{Host: "ex01.contoso.com", StateDir: filepath.Join(stateDir, "sim"), SharedDir: shared,
			Products: []*pb.DetectedProduct{{Product: pb.Product_PRODUCT_EXCHANGE, Version: "2019"}}})
		if err != nil {
			t.Fatal(err)
		}
		cfg := drivertest.ExchangeConfig("ex01.contoso.com", true)
		a, err := New(Config{Host: cfg.GetHost(), Conn: &downConn{}, Driver: drv, StateDir: stateDir, AutoCorrect: autoCorrect, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		d := &pb.Desired{Version: 1, Hash: "h1", Config: cfg, Nonce: "n1"}
		if o, errs := a.process(ctx, d, true); o != done {
			t.Fatalf("apply = %v, %v; want applied", o, errs)
		}
		a.checkDrift(ctx)
		if drift := a.last.GetDrift(); len(drift) != 0 {
			t.Fatalf("drift right after apply: %v", drift)
		}
		store := filepath.Join(shared, "exchange", "store.json")
		if err := os.Remove(store); err != nil {
			t.Fatalf("remove the organization's store: %v", err)
		}
		a.checkDrift(ctx)
		drift := a.last.GetDrift()
		if len(drift) == 0 {
			t.Fatalf("auto-correct %v: a removed store shows no drift", autoCorrect)
		}
		_, statErr := os.Stat(store)
		for _, dr := range drift {
			if dr.GetCorrected() != autoCorrect {
				t.Errorf("auto-correct %v: drift %v corrected = %v", autoCorrect, dr, dr.GetCorrected())
			}
		}
		if autoCorrect && statErr != nil {
			t.Errorf("auto-correct: the store was not written again: %v", statErr)
		}
		if !autoCorrect && statErr == nil {
			t.Errorf("monitor only: the store was written again")
		}
		if autoCorrect {
			a.checkDrift(ctx)
			if drift := a.last.GetDrift(); len(drift) != 0 {
				t.Errorf("after the repair a drift check still finds %v", drift)
			}
		}
	}
}

// A kill mid-write leaves a temporary copy of the state file: the next
// start removes it and loads the last good state.
func TestStartCleansTempFiles(t *testing.T) {
	dir := t.TempDir()
	cfg := drivertest.ExchangeConfig("ex01.contoso.com", true)
	if _, err := saveState(dir, 3, "h3", cfg); err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(dir, "."+stateFile+".tmp-*")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"version": 4, "hash": "half`)
	f.Close()
	a, err := New(Config{Host: cfg.GetHost(), Conn: &downConn{}, Driver: &fakeDriver{}, StateDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if v, h := a.Applied(); v != 3 || h != "h3" {
		t.Errorf("applied = %d %s; want the last good state 3 h3", v, h)
	}
	if _, err := os.Stat(f.Name()); !os.IsNotExist(err) {
		t.Errorf("the temporary file %s is still there after start: %v", f.Name(), err)
	}
}

// A NACK whose errors differ only by the temporary file they name is the
// same NACK: it is not sent again.
func TestSameErrorsIgnoresTempFileNames(t *testing.T) {
	e := func(msg string) []*pb.ItemError { return []*pb.ItemError{{Item: "agent-state", Message: msg}} }
	a := e("write /var/lib/s2s/.agent-state.json.tmp-123: read-only file system")
	b := e("write /var/lib/s2s/.agent-state.json.tmp-98765: read-only file system")
	if !sameErrors(a, b) {
		t.Errorf("errors differing by a temp file name count as different")
	}
	if sameErrors(a, e("write /var/lib/s2s/.agent-state.json.tmp-123: no space left on device")) {
		t.Errorf("different errors count as the same")
	}
	if sameErrors(a, []*pb.ItemError{{Item: "verify", Message: a[0].GetMessage()}}) {
		t.Errorf("errors of different items count as the same")
	}
}
