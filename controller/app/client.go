package app

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/s2strust/s2strust/internal/pki"
)

// ClientConfig says how an admin command reaches the controller.
type ClientConfig struct {
	// DataDir is the controller's data directory; its address file and
	// development admin identity are the defaults.
	DataDir string
	// Addr overrides the address file.
	Addr string
	// CA, Cert and Key override the data dir's admin identity.
	CA, Cert, Key string
	// Insecure connects without TLS.
	Insecure bool
	// Dialer, when set, makes the connections (tests resolve a name such
	// as ctl.example.test to loopback with it); the TLS server name stays
	// the address's host.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
}

// Dial connects to the controller as admin.
func Dial(c ClientConfig) (*grpc.ClientConn, error) {
	if c.DataDir == "" {
		c.DataDir = "./s2s-data"
	}
	addr := c.Addr
	if addr == "" {
		b, err := os.ReadFile(AddrFile(c.DataDir))
		if err != nil {
			return nil, fmt.Errorf("find the controller: %w (is `s2s-controller serve --data-dir %s` running? or pass --controller ADDR)", err, c.DataDir)
		}
		addr = strings.TrimSpace(string(b))
	}
	opts := []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize))}
	if c.Insecure {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		files := pki.Files{Dir: PKIDir(c.DataDir)}
		ca, cert, key := pick(c.CA, files.CACert()), pick(c.Cert, files.AdminCert()), pick(c.Key, files.AdminKey())
		tlsCfg, err := LoadClientTLS(ca, cert, key, addr)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(pki.ClientCredentials(tlsCfg)))
	}
	if c.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(c.Dialer))
	}
	target := addr
	if c.Dialer != nil {
		target = "passthrough:///" + addr // the dialer resolves; no DNS lookup first
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to controller %s: %w", addr, err)
	}
	return conn, nil
}

func pick(v, def string) string {
	if v != "" {
		return v
	}
	return def
}
