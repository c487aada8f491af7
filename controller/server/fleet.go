package server

import (
	"context"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// FleetService implements pb.FleetServiceServer.
type FleetService struct {
	pb.UnimplementedFleetServiceServer
	hub *Hub
}

// NewFleetService returns the fleet view.
func NewFleetService(hub *Hub) *FleetService { return &FleetService{hub: hub} }

// ListHosts implements the RPC; see the proto for its contract.
func (s *FleetService) ListHosts(ctx context.Context, req *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	snap := s.hub.snapshot()
	states, err := s.hub.cfg.Store.HostStates(ctx)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListHostsResponse{}
	if snap.topo == nil {
		return resp, nil
	}
	for _, host := range snap.topo.order {
		h := hostView(snap, host, states[host])
		if d := req.GetDeployment(); d != "" && h.GetDeployment() != d {
			continue
		}
		resp.Hosts = append(resp.Hosts, h)
	}
	sort.Slice(resp.Hosts, func(i, j int) bool { return resp.Hosts[i].GetHost() < resp.Hosts[j].GetHost() })
	return resp, nil
}

// GetHost implements the RPC; see the proto for its contract.
func (s *FleetService) GetHost(ctx context.Context, req *pb.GetHostRequest) (*pb.GetHostResponse, error) {
	snap := s.hub.snapshot()
	host := req.GetHost()
	if snap.topo == nil || snap.topo.hosts[host] == nil {
		return nil, status.Errorf(codes.NotFound, "host %q is not in the current topology", host)
	}
	st := &pb.Host{}
	if _, err := s.hub.cfg.Store.GetProto(ctx, store.HostStateKey(host), st); err != nil {
		return nil, err
	}
	rep := &pb.StatusReport{}
	found, err := s.hub.cfg.Store.GetProto(ctx, store.HostReportKey(host), rep)
	if err != nil {
		return nil, err
	}
	if !found {
		rep = nil
	}
	return &pb.GetHostResponse{Host: hostView(snap, host, st), Status: rep}, nil
}

// hostView merges the compiled topology, the live hub state and what the
// host last reported.
func hostView(snap snapshot, host string, st *pb.Host) *pb.Host {
	cfg := snap.topo.hosts[host]
	h := &pb.Host{
		Host:           host,
		Deployment:     cfg.GetDeployment(),
		Product:        cfg.GetProduct(),
		ProductVersion: cfg.GetProductVersion(),
		Connected:      snap.connected[host] || snap.present[host],
		Primary:        snap.primaries[cfg.GetDeployment()] == host,
	}
	if d := snap.desired[host]; d != nil {
		h.DesiredVersion, h.DesiredHash = d.version, d.hash
	}
	if st != nil {
		h.AppliedVersion, h.AppliedHash = st.GetAppliedVersion(), st.GetAppliedHash()
		h.LastResult = st.GetLastResult()
		h.AgentVersion, h.Driver = st.GetAgentVersion(), st.GetDriver()
		h.Drift = st.GetDrift()
		h.DetectedProducts = st.GetDetectedProducts()
	}
	return h
}
