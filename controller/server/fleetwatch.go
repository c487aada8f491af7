package server

import (
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// watchChunk is the most hosts one WatchHosts message carries.
const watchChunk = 500

// WatchHosts implements the RPC; see the proto for its contract. It
// recomputes the hosts from the hub and its last view at every change of
// either (and every WatchInterval, for what only this replica knows: a
// push sent, a pending push), at most ten times per WatchInterval, and
// sends what differs from what it sent.
func (s *FleetService) WatchHosts(req *pb.WatchHostsRequest, stream pb.FleetService_WatchHostsServer) error {
	ctx := stream.Context()
	v := s.hub.view
	if err := s.hub.untilLoaded(ctx); err != nil {
		return err
	}
	interval := s.WatchInterval
	if interval <= 0 {
		interval = time.Second
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	sent := map[string]*pb.Host{}
	first, wasStale := true, false
	for {
		changed := v.wait() // before reading, so no change is missed
		computed := time.Now()
		now := s.hub.cfg.Now()
		snap := s.hub.snapshot()
		hosts := sortedHosts(snap, req.GetDeployment())
		states := v.statesOf(hosts)
		stale := v.lostMark(now)
		seq := s.sequencer(ctx, snap, stale != nil)
		var out []*pb.Host
		in := make(map[string]bool, len(hosts))
		for _, host := range hosts {
			in[host] = true
			h := hostView(snap, host, states[host], seq, now)
			if prev := sent[host]; prev != nil && sameButAge(prev, h) {
				continue
			}
			sent[host] = h
			out = append(out, h)
		}
		var removed []string
		for host := range sent {
			if !in[host] {
				removed = append(removed, HostName(host))
				delete(sent, host)
			}
		}
		slices.Sort(removed)
		if first || len(out) > 0 || len(removed) > 0 || (stale != nil) != wasStale {
			if err := sendHosts(stream, out, removed, first, stale); err != nil {
				return err
			}
		}
		first, wasStale = false, stale != nil
		if err := v.until(ctx, changed, tick.C); err != nil {
			return err
		}
		// Changes come in bursts (a commit's ACKs): one recomputation
		// takes them all in.
		if gap := interval/10 - time.Since(computed); gap > 0 {
			t := time.NewTimer(gap)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}
}

// sendHosts sends hosts in messages of at most watchChunk, removed with
// the first, initial_complete on the last when initial.
func sendHosts(stream pb.FleetService_WatchHostsServer, hosts []*pb.Host, removed []string, initial bool, stale *pb.Staleness) error {
	for {
		n := min(len(hosts), watchChunk)
		m := &pb.WatchHostsResponse{Hosts: hosts[:n], Removed: removed, Stale: stale}
		hosts, removed = hosts[n:], nil
		m.InitialComplete = initial && len(hosts) == 0
		if err := stream.Send(m); err != nil {
			return err
		}
		if len(hosts) == 0 {
			return nil
		}
	}
}

// sameButAge reports whether two views of a host differ at most in the
// age of a pending push, which changes every moment.
func sameButAge(a, b *pb.Host) bool {
	ams, bms := a.PendingMs, b.PendingMs
	a.PendingMs, b.PendingMs = 0, 0
	same := proto.Equal(a, b)
	a.PendingMs, b.PendingMs = ams, bms
	return same
}
