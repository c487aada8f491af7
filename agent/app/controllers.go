package app

import (
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// controllerAddrs splits --controller into its HOST:PORT addresses: one,
// or several replicas separated by commas.
func controllerAddrs(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("--controller %q: address %q is not HOST:PORT: %w", s, a, err)
		}
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--controller is required, e.g. controller.contoso.com:7443")
	}
	return out, nil
}

// replicaTarget makes the gRPC target and options for several controller
// replicas: a fixed address list that pick_first walks in order, so the
// agent stays with the first replica that answers and, when it dies, moves
// to the next one (gRPC's reconnect backoff has jitter). Each address
// keeps its own TLS server name, so every replica's certificate is checked
// against the name the agent was given for it.
func replicaTarget(addrs []string) (string, []grpc.DialOption) {
	r := manual.NewBuilderWithScheme("s2s-controllers")
	state := resolver.State{}
	for _, a := range addrs {
		host, _, _ := net.SplitHostPort(a)
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a, ServerName: host})
	}
	r.InitialState(state)
	return r.Scheme() + ":///replicas", []grpc.DialOption{grpc.WithResolvers(r)}
}
