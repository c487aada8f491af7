package bench

import (
	"bytes"
	"fmt"

	"github.com/s2strust/s2strust/internal/topology"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// fleetLayout is the benchmark's topology: agents hosts spread evenly over
// exchange deployments, each naming the token-issuer secret issuerSecret,
// so every push carries its key material.
type fleetLayout struct {
	hosts       []string
	deployments [][]string // hosts of each deployment, in order
	// real is the host a real agent (s2s-agent) runs as, in a deployment
	// of its own; empty when none runs.
	real string
}

// realHost is the host the real agent runs as.
const realHost = "agent.real.bench.example"

func newLayout(agents, deployments int) fleetLayout {
	l := fleetLayout{hosts: make([]string, agents), deployments: make([][]string, deployments)}
	for i := range agents {
		d := i * deployments / agents
		h := fmt.Sprintf("h%05d.ex%04d.bench.example", i, d)
		l.hosts[i] = h
		l.deployments[d] = append(l.deployments[d], h)
	}
	return l
}

// document is the topology YAML with the given realm and all deployments:
// changing the realm changes every host's configuration (an Exchange
// host's through its autodiscover name, which is under the realm).
func (l fleetLayout) document(realm string) []byte { return l.documentOf(realm, len(l.deployments)) }

// documentOf is the topology with the first n deployments only.
func (l fleetLayout) documentOf(realm string, n int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "apiVersion: %s\nkind: %s\nname: bench\nsipDomains: {default: bench.example}\nrealm: %s\ndeployments:\n",
		topology.APIVersion, topology.Kind, realm)
	for d, hosts := range l.deployments[:n] {
		fmt.Fprintf(&b, "  - name: ex%04d\n    product: exchange\n    version: \"2019\"\n    autodiscoverFqdn: autodiscover.ex%04d.%s\n    tokenIssuer: {secret: %s}\n    hosts:\n", d, d, realm, issuerSecret)
		for _, h := range hosts {
			fmt.Fprintf(&b, "      - %s\n", h)
		}
	}
	if l.real != "" {
		fmt.Fprintf(&b, "  - name: real\n    product: exchange\n    version: \"2019\"\n    autodiscoverFqdn: autodiscover.real.%s\n    tokenIssuer: {secret: %s}\n    hosts: [%s]\n", realm, issuerSecret, l.real)
	}
	b.WriteString("trusts: []\n")
	return b.Bytes()
}

// index maps each host to its agent number.
func (l fleetLayout) index() map[string]int {
	out := make(map[string]int, len(l.hosts))
	for i, h := range l.hosts {
		out[h] = i
	}
	return out
}

// compiled compiles the document for realm as the controller would, with
// the issuer's key material, so the floor pushes each host a Desired of
// the same size.
func (l fleetLayout) compiled(realm string, issuer *pb.SecretMaterial) (map[string]*pb.Desired, error) {
	t, err := topology.Load("bench.yaml", l.document(realm))
	if err != nil {
		return nil, fmt.Errorf("load the benchmark topology: %w", err)
	}
	cfgs, err := topology.Compile(t)
	if err != nil {
		return nil, fmt.Errorf("compile the benchmark topology: %w", err)
	}
	out := make(map[string]*pb.Desired, len(cfgs))
	for _, cfg := range cfgs {
		if cfg.GetHost() == l.real {
			continue // the floor has no real agent
		}
		if ti := cfg.GetTokenIssuer(); ti != nil {
			ti.SecretThumbprint = issuer.GetThumbprint()
		}
		out[cfg.GetHost()] = &pb.Desired{Config: cfg, Hash: topology.Hash(cfg), Secrets: []*pb.SecretMaterial{issuer}}
	}
	return out, nil
}

// want is the number of hosts with an agent: the simulated ones and the
// real one.
func (l fleetLayout) want() int {
	if l.real != "" {
		return len(l.hosts) + 1
	}
	return len(l.hosts)
}
