package cmd

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/s2strust/s2strust/controller/pagetoken"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// The commands read whole lists: these walk every page of one List RPC
// (pagetoken.All) and return one response as if it had come in one page.

// listHosts returns every host req selects (its page_token ignored), with
// their reports for HOST_VIEW_FULL; stale is the stalest page's mark.
func listHosts(ctx context.Context, fleet pb.FleetServiceClient, req *pb.ListHostsRequest) (*pb.ListHostsResponse, error) {
	out := &pb.ListHostsResponse{}
	err := pagetoken.All(ctx, func(ctx context.Context, token string) (string, error) {
		r := &pb.ListHostsRequest{Deployment: req.GetDeployment(), PageSize: req.GetPageSize(), View: req.GetView(), PageToken: token}
		resp, err := fleet.ListHosts(ctx, r)
		if err != nil {
			return "", err
		}
		out.Hosts = append(out.Hosts, resp.GetHosts()...)
		for h, s := range resp.GetStatuses() {
			if out.Statuses == nil {
				out.Statuses = map[string]*pb.StatusReport{}
			}
			out.Statuses[h] = s
		}
		out.Stale = stalest(out.Stale, resp.GetStale())
		return resp.GetNextPageToken(), nil
	})
	return out, err
}

// trustReport returns every edge of the trust report, with the realms
// of its first page.
func trustReport(ctx context.Context, fleet pb.FleetServiceClient) (*pb.GetTrustReportResponse, error) {
	out := &pb.GetTrustReportResponse{}
	err := pagetoken.All(ctx, func(ctx context.Context, token string) (string, error) {
		resp, err := fleet.GetTrustReport(ctx, &pb.GetTrustReportRequest{PageToken: token})
		if err != nil {
			return "", err
		}
		out.Edges = append(out.Edges, resp.GetEdges()...)
		out.Realms = append(out.Realms, resp.GetRealms()...)
		out.Stale = stalest(out.Stale, resp.GetStale())
		return resp.GetNextPageToken(), nil
	})
	return out, err
}

// listSecrets returns every stored secret; stale is the stalest page's mark.
func listSecrets(ctx context.Context, c pb.SecretServiceClient) (*pb.ListSecretsResponse, error) {
	out := &pb.ListSecretsResponse{}
	err := pagetoken.All(ctx, func(ctx context.Context, token string) (string, error) {
		resp, err := c.ListSecrets(ctx, &pb.ListSecretsRequest{PageToken: token})
		if err != nil {
			return "", err
		}
		out.Secrets = append(out.Secrets, resp.GetSecrets()...)
		out.Stale = stalest(out.Stale, resp.GetStale())
		return resp.GetNextPageToken(), nil
	})
	return out, err
}

// listHostIdentities returns every host identity.
func listHostIdentities(ctx context.Context, c pb.HostIdentityServiceClient) (*pb.ListHostIdentitiesResponse, error) {
	out := &pb.ListHostIdentitiesResponse{}
	err := pagetoken.All(ctx, func(ctx context.Context, token string) (string, error) {
		resp, err := c.ListHostIdentities(ctx, &pb.ListHostIdentitiesRequest{PageToken: token})
		if err != nil {
			return "", err
		}
		out.Hosts = append(out.Hosts, resp.GetHosts()...)
		out.Stale = stalest(out.Stale, resp.GetStale())
		return resp.GetNextPageToken(), nil
	})
	return out, err
}

// listPageSize is the page size `get revisions` and `rollout history`
// ask for (0: the controller's default); tests make it small to cross
// pages.
var listPageSize int32

// listNewest reads the pages of a newest-first list until it has limit
// items (0: every one); page asks for one page of size (0: the
// controller's default), at most maxPage when a limit is near. stale is
// the stalest page's mark.
func listNewest[T any](ctx context.Context, limit int, maxPage int, page func(ctx context.Context, size int32, token string) ([]T, string, *pb.Staleness, error)) (out []T, stale *pb.Staleness, err error) {
	err = pagetoken.All(ctx, func(ctx context.Context, token string) (string, error) {
		size := listPageSize
		if left := limit - len(out); limit > 0 && (size == 0 || int(size) > left) {
			size = int32(min(left, maxPage))
		}
		items, next, st, err := page(ctx, size, token)
		if err != nil {
			return "", err
		}
		out, stale = append(out, items...), stalest(stale, st)
		if limit > 0 && len(out) >= limit {
			out = out[:limit]
			return "", nil
		}
		return next, nil
	})
	return out, stale, err
}

// listRevisions returns the newest limit revisions (0: every one),
// reading as many pages as that takes.
func listRevisions(ctx context.Context, c pb.TopologyServiceClient, limit int) (*pb.ListTopologyRevisionsResponse, error) {
	revs, stale, err := listNewest(ctx, limit, 1000, func(ctx context.Context, size int32, token string) ([]*pb.TopologyRevision, string, *pb.Staleness, error) {
		resp, err := c.ListTopologyRevisions(ctx, &pb.ListTopologyRevisionsRequest{PageSize: size, PageToken: token})
		return resp.GetRevisions(), resp.GetNextPageToken(), resp.GetStale(), err
	})
	return &pb.ListTopologyRevisionsResponse{Revisions: revs, Stale: stale}, err
}

// listRollouts returns the newest limit rollouts (0: every one), reading
// as many pages as that takes.
func listRollouts(ctx context.Context, c pb.RolloutServiceClient, limit int) (*pb.ListRolloutsResponse, error) {
	ros, stale, err := listNewest(ctx, limit, 100, func(ctx context.Context, size int32, token string) ([]*pb.Rollout, string, *pb.Staleness, error) {
		resp, err := c.ListRollouts(ctx, &pb.ListRolloutsRequest{PageSize: size, PageToken: token})
		return resp.GetRollouts(), resp.GetNextPageToken(), resp.GetStale(), err
	})
	return &pb.ListRolloutsResponse{Rollouts: ros, Stale: stale}, err
}

// listRotations returns the newest limit rotations (0: every one),
// reading as many pages as that takes.
func listRotations(ctx context.Context, c pb.RotationServiceClient, limit int) (*pb.ListRotationsResponse, error) {
	rots, stale, err := listNewest(ctx, limit, 100, func(ctx context.Context, size int32, token string) ([]*pb.Rotation, string, *pb.Staleness, error) {
		resp, err := c.ListRotations(ctx, &pb.ListRotationsRequest{PageSize: size, PageToken: token})
		return resp.GetRotations(), resp.GetNextPageToken(), resp.GetStale(), err
	})
	return &pb.ListRotationsResponse{Rotations: rots, Stale: stale}, err
}

// stalest is the older of two stale marks (nil: fresh).
func stalest(a, b *pb.Staleness) *pb.Staleness {
	if a == nil || (b != nil && b.GetAgeMs() > a.GetAgeMs()) {
		return b
	}
	return a
}

// warnStaleChange is warnStale for a stream: it warns when the answers
// turn stale (was is whether they were) and says when they are current
// again, and returns whether they are stale now.
func warnStaleChange(w io.Writer, was bool, st *pb.Staleness) bool {
	switch {
	case st != nil && !was:
		warnStale(w, st)
	case st == nil && was:
		fmt.Fprintf(w, "%s etcd answers again: the view is current\n", time.Now().Format(time.TimeOnly))
	}
	return st != nil
}

// warnStale says, when an answer came from the controller's last view
// because etcd did not answer, how old that view is and why.
func warnStale(w io.Writer, st *pb.Staleness) {
	if st == nil {
		return
	}
	age := (time.Duration(st.GetAgeMs()) * time.Millisecond).Round(time.Second)
	fmt.Fprintf(w, "WARNING: STALE: etcd did not answer (%s); this is the controller's last view, as of %s (%s old)\n",
		safe(st.GetReason()), st.GetAsOf().AsTime().Local().Format(time.DateTime), age)
}
