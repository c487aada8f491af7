package cmd

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/s2strust/s2strust/controller/app"
	"github.com/s2strust/s2strust/controller/ui"
)

// newUI is `s2s-controller ui`: the web dashboard's login.
func newUI(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "ui", Short: "The web dashboard (serve --ui-listen ADDR)"}
	var ttl time.Duration
	token := &cobra.Command{
		Use:   "token",
		Short: "Print a dashboard URL with a short-lived, one-time login token (signed with <data-dir>/ui-token.key)",
		Long: "Print the dashboard's URL with a login token in its fragment. Opening it once exchanges the token\n" +
			"for a session cookie (HttpOnly, SameSite=Strict, 12h); the token then no longer works. An admin\n" +
			"client certificate from the controller's CA logs in without a token.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dash, err := app.DashboardURL(g.client.DataDir)
			if err != nil {
				return err
			}
			u, err := app.NewLoginURL(g.client.DataDir, dash, ttl)
			if err != nil {
				return err
			}
			fmt.Fprintln(g.out, u)
			return nil
		},
	}
	token.Flags().DurationVar(&ttl, "ttl", 10*time.Minute, fmt.Sprintf("how long the token may be used to log in (at most %s)", ui.MaxLoginTTL))
	c.AddCommand(token)
	return c
}
