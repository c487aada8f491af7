// Command s2s-controller runs the s2strust controller (serve), the admin
// commands that talk to a running controller, and a self-contained demo.
package main

import (
	"fmt"
	"os"

	"github.com/s2strust/s2strust/controller/cmd"
	"github.com/s2strust/s2strust/internal/termsafe"
)

func main() {
	if err := cmd.NewRoot(os.Stdout).Execute(); err != nil {
		// An error may quote an agent, a metadata server or a file.
		fmt.Fprintln(os.Stderr, "s2s-controller:", termsafe.Text(err.Error()))
		os.Exit(cmd.ExitCode(err))
	}
}
