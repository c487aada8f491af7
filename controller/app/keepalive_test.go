package app

import (
	"testing"
	"time"

	agentapp "github.com/s2strust/s2strust/agent/app"
)

// TestKeepaliveDetectsADeadPeerInSeconds checks the keepalive settings of
// both ends: each notices a blackholed connection (ping interval plus
// ping timeout) in under 30 s, and the agent's pings are within what the
// controller permits, or it would be sent GOAWAY (too_many_pings).
func TestKeepaliveDetectsADeadPeerInSeconds(t *testing.T) {
	const bound = 30 * time.Second
	srv, pol, cli := KeepaliveServerParameters(), KeepaliveEnforcementPolicy(), agentapp.KeepaliveClientParameters()
	if d := srv.Time + srv.Timeout; srv.Time <= 0 || srv.Timeout <= 0 || d >= bound {
		t.Errorf("controller notices a dead agent after %s (ping every %s, timeout %s); want under %s", d, srv.Time, srv.Timeout, bound)
	}
	// gRPC raises a client's ping interval below 10 s to 10 s.
	cliTime := max(cli.Time, 10*time.Second)
	if d := cliTime + cli.Timeout; cli.Timeout <= 0 || d >= bound {
		t.Errorf("agent notices a dead controller after %s (ping every %s, timeout %s); want under %s", d, cliTime, cli.Timeout, bound)
	}
	if cliTime < pol.MinTime {
		t.Errorf("the agent pings every %s, more often than the controller permits (%s)", cliTime, pol.MinTime)
	}
	if !pol.PermitWithoutStream || !cli.PermitWithoutStream {
		t.Errorf("pings between streams: controller permits %v, agent sends %v; want both", pol.PermitWithoutStream, cli.PermitWithoutStream)
	}
}
