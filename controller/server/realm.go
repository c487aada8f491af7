package server

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/s2strust/s2strust/internal/topology"
)

// unconfirmedRealm matches the violation a realm declared for Exchange or
// SharePoint without confirmRealmChange gets (internal/topology).
var unconfirmedRealm = regexp.MustCompile(`^deployments\[(\d+)\]\.realm$`)

// withCurrentRealms adds to each refused, unconfirmed realm of err the
// deployment's current realm, as its hosts last reported it: what the
// change would replace. err is returned as it is when it is not a
// topology error, and when no host has reported.
func (s *TopologyService) withCurrentRealms(ctx context.Context, doc []byte, err error) error {
	var te *topology.Error
	if !errors.As(err, &te) {
		return err
	}
	var t *topology.Topology
	for i, v := range te.Violations {
		m := unconfirmedRealm.FindStringSubmatch(v.Field)
		if m == nil || !strings.Contains(v.Description, "confirmRealmChange") {
			continue
		}
		if t == nil {
			if t, _ = topology.Parse(te.File, doc); t == nil {
				return err
			}
		}
		n, _ := strconv.Atoi(m[1])
		if n >= len(t.Deployments) {
			continue
		}
		if cur, host := s.currentRealm(ctx, t.Deployments[n].Hosts); host != "" {
			te.Violations[i].Description += fmt.Sprintf(" (its current realm, as %s reports it: %s)", host, cur)
		}
	}
	return err
}

// currentRealm is the realm the first reporting host of hosts shows in its
// product's OAuth configuration ("(blank)" for none), and that host.
func (s *TopologyService) currentRealm(ctx context.Context, hosts []string) (realm, host string) {
	reports, _, err := (&FleetService{hub: s.hub}).allReports(ctx)
	if err != nil {
		return "", ""
	}
	for _, h := range hosts {
		if r, ok := reports[strings.ToLower(h)]; ok && r.GetOauth() != nil {
			realm = r.GetOauth().GetRealm()
			if realm == "" {
				realm = "(blank)"
			}
			return realm, h
		}
	}
	return "", ""
}
