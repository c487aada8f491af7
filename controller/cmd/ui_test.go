package cmd

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/ui"
)

// TestUIToken prints a login URL for the dashboard a controller announced
// in its data dir, with a token that controller's key accepts, and says
// what to do when there is no dashboard.
func TestUIToken(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		root := NewRoot(&out)
		root.SetArgs(append([]string{"ui", "token", "--data-dir", dir}, args...))
		err := root.Execute()
		return out.String(), err
	}
	if _, err := run(); err == nil || !strings.Contains(err.Error(), "--ui-listen") {
		t.Fatalf("ui token with no dashboard running: %v, want an error saying to start serve --ui-listen", err)
	}
	// What serve --ui-listen leaves in the data dir.
	key, err := app.LoadUIKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(app.UIAddrFile(dir), []byte("https://127.0.0.1:7444/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run("--ttl", "5m")
	if err != nil {
		t.Fatalf("ui token: %v", err)
	}
	u := strings.TrimSpace(out)
	token, ok := strings.CutPrefix(u, "https://127.0.0.1:7444/#login=")
	if !ok {
		t.Fatalf("ui token printed %q, want the dashboard URL with #login=TOKEN", out)
	}
	s, err := ui.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.Check(token, ui.PurposeLogin, time.Now())
	if err != nil {
		t.Fatalf("the printed token: %v", err)
	}
	if left := time.Until(tok.Expires); left > 5*time.Minute || left < 4*time.Minute {
		t.Errorf("the token expires in %s, want --ttl 5m", left)
	}
	if _, err := run("--ttl", "48h"); err == nil || !strings.Contains(err.Error(), "48h0m0s") {
		t.Errorf("ui token --ttl 48h: %v, want refused naming the lifetime", err)
	}
}
