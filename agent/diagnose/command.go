package diagnose

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/s2strust/s2strust/internal/metadata"
	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Exit codes of Main.
const (
	// ExitOK: the check passed.
	ExitOK = 0
	// ExitFailed: the check ran and found a fault.
	ExitFailed = 1
	// ExitUsage: the command line is wrong; nothing was checked.
	ExitUsage = 2
)

// Main runs "s2s-agent diagnose ARGS…" (args are what follows "diagnose"):
// the report goes to stdout, the products' error and its cause to stderr.
// It returns the process's exit code: ExitOK, ExitFailed or ExitUsage.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	stdout, stderr = escaper{stdout}, escaper{stderr}
	var failed error
	root := &cobra.Command{
		Use:           "diagnose",
		Short:         "Check, from this host's vantage point, what the products' cmdlets would see",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(metadataCommand(&failed))
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	switch {
	case err == nil && failed == nil:
		return ExitOK
	case err == nil:
		var me *MetadataError
		if errors.As(failed, &me) {
			fmt.Fprintln(stderr, SeedMessage(me.Parameter))
			fmt.Fprintln(stderr, "cause:", me.Cause)
		} else {
			fmt.Fprintln(stderr, failed)
		}
		return ExitFailed
	}
	fmt.Fprintf(stderr, "s2s-agent diagnose: %v\n", err)
	fmt.Fprintln(stderr, "run 's2s-agent diagnose --help' for usage")
	return ExitUsage
}

// metadataCommand is "diagnose metadata URL"; a fault found is stored in
// *failed, so that a usage error (returned) and a fault are told apart.
func metadataCommand(failed *error) *cobra.Command {
	var product, partner, ca string
	var resolve []string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "metadata URL",
		Short: "Download and check a partner's auth metadata document as this host's product would",
		Long: `Download the auth metadata document at URL from this host, as New-CsPartnerApplication,
Configure-EnterprisePartnerApplication.ps1 or New-SPTrustedSecurityTokenIssuer would, and show
DNS, TLS (the chain presented, whether it names the host, whether it is trusted), HTTP and the
document (serviceName, realm, issuer, each key's thumbprint and expiry). Exits 0 when the
document is valid, 1 with the products' error and the precise cause when it is not.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o := MetadataOptions{URL: args[0], Timeout: timeout}
			var err error
			if o.Product, err = productFlag("--product", product); err != nil {
				return err
			}
			if o.Partner, err = productFlag("--partner", partner); err != nil {
				return err
			}
			if o.Resolve, err = metadata.ParseResolve(resolve); err != nil {
				return fmt.Errorf("--resolve: %w", err)
			}
			if ca != "" {
				b, err := os.ReadFile(ca)
				if err != nil {
					return fmt.Errorf("--ca: %w", err)
				}
				pool := x509.NewCertPool()
				if !pool.AppendCertsFromPEM(b) {
					return fmt.Errorf("--ca %s: no PEM certificate in it", ca)
				}
				o.Roots, o.RootsName = pool, "--ca "+ca
			}
			*failed = Metadata(cmd.Context(), cmd.OutOrStdout(), o)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&product, "product", "", "this host's product, whose cmdlet takes the URL: lync (-MetadataUrl, the default), exchange (-AuthMetadataUrl) or sharepoint (-MetadataEndPoint)")
	f.StringVar(&partner, "partner", "", "the product that serves the document: lync, exchange or sharepoint (default: the one whose metadata path URL has)")
	f.StringVar(&ca, "ca", "", "PEM file of CAs to verify the server against (default: the system trust store)")
	f.StringSliceVar(&resolve, "resolve", nil, "resolve HOST to ADDR instead of asking DNS, as curl's --resolve: HOST=IP:PORT or HOST:PORT=IP:PORT; repeatable")
	f.DurationVar(&timeout, "timeout", metadata.DefaultTimeout, "how long the download may take")
	return cmd
}

// productFlag parses a product flag; "" is PRODUCT_UNSPECIFIED.
func productFlag(flag, v string) (pb.Product, error) {
	if v == "" {
		return pb.Product_PRODUCT_UNSPECIFIED, nil
	}
	p, ok := products.Parse(v)
	if !ok {
		return p, fmt.Errorf("%s %q: want lync, exchange or sharepoint", flag, v)
	}
	return p, nil
}
