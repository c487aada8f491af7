package topology

import (
	"hash/fnv"
	"slices"
	"sort"
)

// MaxProbeTargets bounds the hosts of one trusting deployment that a host
// probes (TrustTarget.hosts). Probing every host of a large deployment from
// every host of another would make a revision, the agents' probe work and
// the trust report quadratic in the deployments' sizes; a bounded sample
// keeps each host's share constant while the hosts of the issuing
// deployment together still reach most of the receiver's hosts (nearly all
// when the two are of similar size; at most 8 per issuing host).
const MaxProbeTargets = 8

// ProbeTargets returns the hosts of a deployment (hosts, in topology order)
// that host source probes: all of them when there are at most
// MaxProbeTargets, otherwise MaxProbeTargets of them sorted by name (see
// probeRing). It is what Compile puts in TrustTarget.hosts.
func ProbeTargets(hosts []string, source string) []string {
	return newProbeRing(hosts).sample(source)
}

// probeRing places a deployment's hosts on a ring by the FNV-1a hash of
// their names; a source host probes the MaxProbeTargets hosts that follow
// its own name's hash on the ring. The sample depends only on the names, so
// it is the same on every compile; adding or removing a target host
// changes the samples of only the sources whose window it falls in (about
// MaxProbeTargets per source host per target host), and adding a source
// host changes no other host's sample. Building the ring is O(m log m) for
// m hosts, a sample O(log m).
type probeRing struct {
	all   []string // the hosts in topology order, when they fit a sample
	keys  []uint64 // ring positions, ascending
	hosts []string // hosts[i] is at keys[i]
}

func newProbeRing(hosts []string) *probeRing {
	if len(hosts) <= MaxProbeTargets {
		return &probeRing{all: hosts}
	}
	type point struct {
		key  uint64
		host string
	}
	pts := make([]point, len(hosts))
	for i, h := range hosts {
		pts[i] = point{ringKey(h), h}
	}
	sort.Slice(pts, func(a, b int) bool {
		if pts[a].key != pts[b].key {
			return pts[a].key < pts[b].key
		}
		return pts[a].host < pts[b].host
	})
	r := &probeRing{keys: make([]uint64, len(pts)), hosts: make([]string, len(pts))}
	for i, p := range pts {
		r.keys[i], r.hosts[i] = p.key, p.host
	}
	return r
}

// sample is the hosts source probes, a fresh slice.
func (r *probeRing) sample(source string) []string {
	if r.keys == nil {
		return cloneStrings(r.all)
	}
	k := ringKey(source)
	i := sort.Search(len(r.keys), func(i int) bool { return r.keys[i] >= k })
	out := make([]string, 0, MaxProbeTargets)
	for j := range MaxProbeTargets {
		out = append(out, r.hosts[(i+j)%len(r.hosts)])
	}
	slices.Sort(out)
	return out
}

// ringKey is a host's position on a probeRing. FNV-1a is fixed by its
// definition, so the sample never changes with the Go release.
func ringKey(host string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(host))
	return h.Sum64()
}
