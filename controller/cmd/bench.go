package cmd

import (
	"os"
	"os/signal"
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
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				d, err := os.MkdirTemp("", "s2strust-bench-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(d)
				dir = d
			}
			cfg.Dir, cfg.Out = dir, g.out
			if g.verbose {
				cfg.Logger = g.logger()
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			_, err := bench.Run(ctx, cfg)
			return err
		},
	}
	c.Flags().IntVar(&cfg.Agents, "agents", 1000, "number of simulated agents (each its own TLS connection and certificate)")
	c.Flags().IntVar(&cfg.Deployments, "deployments", 0, "deployments the hosts are spread over (default agents/100)")
	c.Flags().StringVar(&dir, "dir", "", "data directory (default: a temporary one, removed at exit)")
	return c
}
