package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/s2strust/s2strust/internal/pki"
)

// realAgent is one s2s-agent process with its sim driver, syncing as
// realHost: the agent whose memory the SPEC bounds, measured in a process
// of its own.
type realAgent struct {
	cmd  *exec.Cmd
	done chan error
}

// startRealAgent starts binary (s2s-agent) as realHost against the
// controller at addr, with a host certificate from the controller's CA;
// its files and log go to dir.
func startRealAgent(binary, dir, addr string, caCert, caKey []byte) (*realAgent, error) {
	ca, err := pki.LoadCA(caCert, caKey)
	if err != nil {
		return nil, fmt.Errorf("bench: real agent: load the controller's CA: %w", err)
	}
	certPEM, keyPEM, err := ca.IssueHost(realHost, time.Now(), 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("bench: real agent: issue its certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	files := map[string][]byte{"ca.crt": caCert, "host.crt": certPEM, "host.key": keyPEM}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, fmt.Errorf("bench: real agent: %w", err)
		}
	}
	logFile, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return nil, fmt.Errorf("bench: real agent: %w", err)
	}
	cmd := exec.Command(binary, "run", "--controller", addr, "--host", realHost,
		"--ca", filepath.Join(dir, "ca.crt"), "--cert", filepath.Join(dir, "host.crt"), "--key", filepath.Join(dir, "host.key"),
		"--driver", "sim", "--state-dir", filepath.Join(dir, "state"), "--sim-product", "exchange:2019")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("bench: start the real agent %s: %w", binary, err)
	}
	r := &realAgent{cmd: cmd, done: make(chan error, 1)}
	go func() {
		r.done <- cmd.Wait()
		logFile.Close()
	}()
	return r, nil
}

// peakRSS is the agent process's peak resident memory so far (VmHWM).
func (r *realAgent) peakRSS() (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(r.cmd.Process.Pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("bench: real agent's memory: %w", err)
	}
	return statusField(string(b), "VmHWM:")
}

// stop ends the agent: SIGTERM, then SIGKILL after ten seconds.
func (r *realAgent) stop() error {
	if r == nil {
		return nil
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case err := <-r.done:
		var exit *exec.ExitError
		if errors.As(err, &exit) && !exit.Exited() {
			return nil // ended by the signal
		}
		return err
	case <-t.C:
		_ = r.cmd.Process.Kill()
		<-r.done
		return errors.New("bench: the real agent did not stop within 10s of SIGTERM")
	}
}
