package cmd

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/s2strust/s2strust/internal/certs"
	"github.com/s2strust/s2strust/internal/termsafe"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// readPFX reads a PFX file of at most certs.MaxPFXSize bytes. A larger one
// is refused here, naming its size and the limit, rather than sent for the
// controller to refuse (or, past the message size limit, for gRPC to
// refuse with a bare RESOURCE_EXHAUSTED); it is never read whole.
func readPFX(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("read --pfx: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, certs.MaxPFXSize+1))
	if err != nil {
		return nil, fmt.Errorf("read --pfx: %w", err)
	}
	if len(data) > certs.MaxPFXSize {
		size := "more than " + strconv.Itoa(certs.MaxPFXSize)
		if fi, err := f.Stat(); err == nil {
			size = strconv.FormatInt(fi.Size(), 10)
		}
		return nil, fmt.Errorf("read --pfx %s: the file is %s bytes, over the %d-byte limit of a PFX file (a token-issuer certificate with its key and chain takes a few kilobytes)", name, size, certs.MaxPFXSize)
	}
	return data, nil
}

func newSecret(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "secret", Short: "Upload and list token-issuer certificates (PFX), stored encrypted"}
	var pfxFile, pwFile string
	var newVersion bool
	put := &cobra.Command{
		Use:   "put NAME --pfx FILE --password-file FILE [--new-version]",
		Short: "Upload a PFX under NAME; topologies refer to it as tokenIssuer: {secret: NAME}",
		Long: `Upload a PFX under NAME as its next version; topologies refer to it as tokenIssuer: {secret: NAME}.

A secret the current topology uses is never replaced in place: that would swap the token-issuer
certificate on every host at once and break every trust edge until the partners refresh their
metadata. Such a put is refused; with --new-version the PFX is stored as a new version that no
host uses until a rotation (s2s-controller rotate issuer) or rollout takes it into use. Each
topology revision records the secret versions it was applied with (get revisions, SECRETS).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pfx, err := readPFX(pfxFile)
			if err != nil {
				return err
			}
			var password string
			if pwFile != "" {
				b, err := os.ReadFile(pwFile)
				if err != nil {
					return fmt.Errorf("read --password-file: %w", err)
				}
				password = strings.TrimRight(string(b), "\r\n")
			}
			return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := pb.NewSecretServiceClient(conn).PutSecret(ctx, &pb.PutSecretRequest{Name: args[0], Pfx: pfx, Password: password, NewVersion: newVersion})
				if err != nil {
					return rpcError("put secret "+args[0], err)
				}
				verb := "stored"
				if !resp.GetChanged() {
					verb = "unchanged"
				}
				sec := resp.GetSecret()
				ci := sec.GetCertificate()
				fmt.Fprintf(g.out, "%s secret %s version %d: certificate %s (%s)\n", verb, safe(args[0]), sec.GetVersion(), safe(ci.GetThumbprint()), safe(ci.GetSubject()))
				if resp.GetChanged() && len(sec.GetUsedBy()) > 0 {
					fmt.Fprintf(g.out, "no host uses version %d yet: deployment %s keeps the version its topology revision records until a rotation or rollout uses this one\n",
						sec.GetVersion(), strings.Join(termsafe.Strings(sec.GetUsedBy()), ", "))
				}
				return nil
			})
		},
	}
	put.Flags().StringVar(&pfxFile, "pfx", "", "PKCS#12 file with the certificate and its private key (required)")
	put.Flags().BoolVar(&newVersion, "new-version", false, "store a new version of a secret in use, changing no host until a rotation or rollout uses it")
	put.Flags().StringVar(&pwFile, "password-file", "", "file holding the PFX password (not a flag value, so it stays out of shell history)")
	_ = put.MarkFlagRequired("pfx")
	list := &cobra.Command{
		Use:   "list",
		Short: "List secrets: thumbprint, subject, SANs, validity (never the key or password)",
		Args:  cobra.NoArgs,
	}
	listOut := addOutput(list, formatTable, formatJSON, formatYAML)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		return g.withController(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
			resp, err := listSecrets(ctx, pb.NewSecretServiceClient(conn))
			if err != nil {
				return rpcError("list secrets", err)
			}
			warnStale(cmd.ErrOrStderr(), resp.GetStale())
			return listOut.print(g.out, resp, func() error {
				t := newTable(g.out, "NAME", "VERSION", "THUMBPRINT", "SUBJECT~", "SANS~", "NOT BEFORE", "NOT AFTER", "USED BY~")
				for _, s := range resp.GetSecrets() {
					ci := s.GetCertificate()
					used := strings.Join(termsafe.Strings(s.GetUsedBy()), ",")
					if used == "" {
						used = "-"
					}
					t.row(s.GetName(), fmt.Sprint(s.GetVersion()), ci.GetThumbprint(), ci.GetSubject(), strings.Join(termsafe.Strings(ci.GetDnsNames()), ","),
						ci.GetNotBefore().AsTime().Format("2006-01-02"), ci.GetNotAfter().AsTime().Format("2006-01-02"), used)
				}
				return t.flush()
			})
		})
	}
	c.AddCommand(put, list)
	return c
}
