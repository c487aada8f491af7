package service

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestSpec(t *testing.T) {
	ok := Spec{Exe: `C:\Program Files\s2strust\s2s-agent.exe`, Config: `C:\ProgramData\s2strust\agent.yaml`, Account: `CONTOSO\s2s-agent$`}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ok.Args(), " "); got != `run --config C:\ProgramData\s2strust\agent.yaml` {
		t.Errorf("service arguments %q", got)
	}
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Exe: "a.exe"}, "--config is required"},
		{Spec{Exe: "a.exe", Config: "agent.yaml", Account: "svc-s2s"}, `--account "svc-s2s"`},
		{Spec{Exe: "a.exe", Config: "agent.yaml", Account: `CONTOSO\s2s$`, Password: "x"}, "takes no password"},
	} {
		if err := tc.spec.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.spec, err, tc.want)
		}
	}
	if len(RecoveryActions) == 0 || RecoveryReset <= 0 {
		t.Error("no recovery actions")
	}
}

type fakeEvents struct{ info, warn, err []string }

func (f *fakeEvents) Info(_ uint32, m string) error    { f.info = append(f.info, m); return nil }
func (f *fakeEvents) Warning(_ uint32, m string) error { f.warn = append(f.warn, m); return nil }
func (f *fakeEvents) Error(_ uint32, m string) error   { f.err = append(f.err, m); return nil }

func TestEventHandler(t *testing.T) {
	var text bytes.Buffer
	ev := &fakeEvents{}
	log := slog.New(NewEventHandler(slog.NewTextHandler(&text, nil), ev)).With("host", "fe01.contoso.com")
	log.Info("agent starting")
	log.Warn("drift found", "item", "partner/microsoft.exchange")
	log.Error("apply failed", "item", "oauth-configuration")
	if len(ev.info) != 0 || len(ev.warn) != 1 || len(ev.err) != 1 {
		t.Fatalf("event log got info %v warn %v error %v; want only the warning and the error", ev.info, ev.warn, ev.err)
	}
	if !strings.Contains(ev.warn[0], "drift found") || !strings.Contains(ev.warn[0], "host=fe01.contoso.com") || !strings.Contains(ev.warn[0], "item=partner/microsoft.exchange") {
		t.Errorf("warning entry %q", ev.warn[0])
	}
	if !strings.Contains(text.String(), "agent starting") || !strings.Contains(text.String(), "apply failed") {
		t.Errorf("records did not reach the next handler: %s", text.String())
	}
}

func TestReadPassword(t *testing.T) {
	if pw, err := readPassword(strings.NewReader("s3cret\r\n")); err != nil || pw != "s3cret" {
		t.Fatalf("readPassword = %q, %v", pw, err)
	}
	if _, err := readPassword(strings.NewReader("")); err == nil {
		t.Fatal("empty standard input accepted")
	}
}
