package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

type settings struct {
	host, driver, stateDir string
	drift                  time.Duration
	autoCorrect            bool
	resolve                []string
}

func flags(s *settings) *pflag.FlagSet {
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	fs.StringVar(&s.host, "host", "", "")
	fs.StringVar(&s.driver, "driver", "sim", "")
	fs.StringVar(&s.stateDir, "state-dir", "./state", "")
	fs.DurationVar(&s.drift, "drift-interval", time.Minute, "")
	fs.BoolVar(&s.autoCorrect, "auto-correct", false, "")
	fs.StringSliceVar(&s.resolve, "resolve", nil, "")
	fs.String("config", "", "")
	return fs
}

func TestPrecedence(t *testing.T) {
	var s settings
	fs := flags(&s)
	// The operator typed --driver; the file sets it too, and more.
	if err := fs.Parse([]string{"--driver", "sim", "--drift-interval", "5m"}); err != nil {
		t.Fatal(err)
	}
	file := `
host: fe01.contoso.com
driver: powershell
drift-interval: 30s
auto-correct: true
resolve: [pool01.contoso.com=127.0.0.1:8443, ex01.contoso.com=127.0.0.1:8444]
`
	if err := Apply(fs, "agent.yaml", []byte(file)); err != nil {
		t.Fatal(err)
	}
	if s.host != "fe01.contoso.com" || !s.autoCorrect || len(s.resolve) != 2 || s.resolve[1] != "ex01.contoso.com=127.0.0.1:8444" {
		t.Errorf("file values not applied: %+v", s)
	}
	if s.driver != "sim" || s.drift != 5*time.Minute {
		t.Errorf("flags given on the command line were overridden by the file: driver %q drift %s", s.driver, s.drift)
	}
	if s.stateDir != "./state" {
		t.Errorf("a default neither source set changed: %q", s.stateDir)
	}
}

func TestBadFiles(t *testing.T) {
	for _, tc := range []struct{ name, file, want string }{
		{"unknown key", "host: a.contoso.com\ndrvier: sim\n", `unknown key "drvier"`},
		{"config in file", "config: other.yaml\n", `unknown key "config"`},
		{"duplicate key", "host: a.contoso.com\nhost: b.contoso.com\n", "already defined"},
		{"nested", "host:\n  name: a\n", "key host: a mapping"},
		{"list for scalar", "host: [a, b]\n", "key host: a list"},
		{"bad duration", "drift-interval: soon\n", `key drift-interval: value "soon"`},
		{"bad bool", "auto-correct: maybe\n", `key auto-correct: value "maybe"`},
		{"empty value", "host:\n", "key host: no value"},
		{"not yaml", "host: [unclosed\n", "agent.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s settings
			fs := flags(&s)
			err := Apply(fs, "agent.yaml", []byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "agent.yaml") {
				t.Fatalf("Apply(%q) = %v, want an error naming agent.yaml and %q", tc.file, err, tc.want)
			}
		})
	}
}

func TestUnknownKeyChangesNothing(t *testing.T) {
	var s settings
	fs := flags(&s)
	if err := Apply(fs, "agent.yaml", []byte("host: fe01.contoso.com\nzzz: 1\n")); err == nil {
		t.Fatal("no error")
	}
	if s.host != "" {
		t.Errorf("host set to %q although the file was refused", s.host)
	}
}

func TestApplyFile(t *testing.T) {
	var s settings
	fs := flags(&s)
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte("host: fe01.contoso.com\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ApplyFile(fs, p); err != nil || s.host != "fe01.contoso.com" {
		t.Fatalf("ApplyFile: %v, host %q", err, s.host)
	}
	if err := ApplyFile(fs, filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("missing file: %v", err)
	}
	big := filepath.Join(t.TempDir(), "big.yaml")
	os.WriteFile(big, []byte("# "+strings.Repeat("x", MaxSize)+"\n"), 0o600)
	if err := ApplyFile(fs, big); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized file: %v", err)
	}
}

func FuzzApply(f *testing.F) {
	f.Add([]byte("host: fe01.contoso.com\nresolve: [a=b:1]\n"))
	f.Add([]byte("drift-interval: 1m\nauto-correct: true\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s settings
		_ = Apply(flags(&s), "fuzz.yaml", data)
	})
}
