package cmd

import (
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/s2strust/s2strust/controller/bench"
)

func newBench(g *globals) *cobra.Command {
	var cfg bench.Config
	var dir string
	c := &cobra.Command{
		Use:   "bench",
		Short: "Measure the scale targets: N simulated agents over real mTLS gRPC, beside a bare gRPC fan-out of the same payload",
		Long: `Measure the scale targets: N simulated agents (each its own mTLS connection and host
certificate, run by child processes of this binary) against a controller in this process on
embedded etcd, beside a bare gRPC fan-out of the same payload to the same agents. Each
measurement is taken --runs times; the table shows the median and the spread.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				d, err := os.MkdirTemp("", "s2strust-bench-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(d)
				dir = d
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.Dir, cfg.Out, cfg.ChildArgv = dir, g.out, []string{exe, "bench-agents"}
			if cfg.AgentBinary == "" {
				cfg.AgentBinary = findAgentBinary(exe)
			}
			if g.verbose {
				cfg.Logger = g.logger()
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			_, err = bench.Run(ctx, cfg)
			return err
		},
	}
	c.Flags().IntVar(&cfg.Agents, "agents", 1000, "number of simulated agents (each its own TLS connection and certificate)")
	c.Flags().IntVar(&cfg.Deployments, "deployments", 0, "deployments the hosts are spread over (default agents/100)")
	c.Flags().IntVar(&cfg.Runs, "runs", 3, "times each measurement is taken")
	c.Flags().DurationVar(&cfg.Timeout, "timeout", 0, "bound on every wait (default 1m plus 20ms per agent)")
	c.Flags().Float64Var(&cfg.ConnectRate, "connect-rate", 0, "agents a second that open their first connection (default 1000; negative: all at once)")
	c.Flags().StringVar(&cfg.AgentBinary, "agent-binary", "", "s2s-agent binary to run as one more host, to measure a real agent's memory (default: s2s-agent beside this binary, else on PATH)")
	c.Flags().StringVar(&cfg.CPUProfile, "cpuprofile", "", "write the controller's CPU profile of the commits to this file")
	c.Flags().StringVar(&cfg.MemProfile, "memprofile", "", "write the controller's heap profile with every stream open and idle to this file")
	c.Flags().StringVar(&dir, "dir", "", "data directory (default: a temporary one, removed at exit)")
	return c
}

// newBenchAgents is the hidden subcommand bench starts its agents' child
// processes with: it reads commands on standard input and writes events
// on standard output until its input ends.
func newBenchAgents() *cobra.Command {
	return &cobra.Command{
		Use:    "bench-agents",
		Short:  "Run simulated agents for bench (started by bench itself)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return bench.ChildMain(os.Stdin, os.Stdout)
		},
	}
}

// findAgentBinary returns the s2s-agent beside the controller binary exe,
// else the one on PATH, else "".
func findAgentBinary(exe string) string {
	if p := filepath.Join(filepath.Dir(exe), "s2s-agent"); isExecutable(p) {
		return p
	}
	if p, err := exec.LookPath("s2s-agent"); err == nil {
		return p
	}
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
