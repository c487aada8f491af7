package main

import (
	"testing"

	"github.com/s2strust/s2strust/agent/config"
)

// TestWindowsAgentYAML keeps the MSI's agent.yaml in step with the run
// command's flags: every key it sets is a flag, and every value parses.
func TestWindowsAgentYAML(t *testing.T) {
	run, _, err := newRoot().Find([]string{"run"})
	if err != nil {
		t.Fatal(err)
	}
	if err := config.ApplyFile(run.Flags(), "../deploy/windows/agent.yaml"); err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]string{"driver": "powershell", "state-dir": `C:\ProgramData\s2strust\state`, "drift-interval": "5m0s"} {
		if got := run.Flags().Lookup(flag).Value.String(); got != want {
			t.Errorf("--%s from agent.yaml = %q, want %q", flag, got, want)
		}
	}
}
