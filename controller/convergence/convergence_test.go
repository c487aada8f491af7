package convergence

import (
	"testing"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func TestConverged(t *testing.T) {
	ack := func(v uint64, hash string) *pb.LastResult {
		return &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_ACK, Version: v, Hash: hash}
	}
	nack := func(v uint64, hash string) *pb.LastResult {
		return &pb.LastResult{Kind: pb.ResultKind_RESULT_KIND_NACK, Version: v, Hash: hash}
	}
	for _, tc := range []struct {
		name string
		h    *pb.Host
		rev  uint64
		want bool
	}{
		{"acked", &pb.Host{DesiredVersion: 5, DesiredHash: "a", AppliedVersion: 5, AppliedHash: "a", LastResult: ack(5, "a")}, 5, true},
		{"applied, ACK lost (hello reported it)", &pb.Host{DesiredVersion: 5, DesiredHash: "a", AppliedVersion: 5, AppliedHash: "a", LastResult: ack(4, "z")}, 5, true},
		{"later revision applied", &pb.Host{DesiredVersion: 6, DesiredHash: "b", AppliedVersion: 6, AppliedHash: "b", LastResult: ack(6, "b")}, 5, false},
		{"outside the wave: older target", &pb.Host{DesiredVersion: 4, DesiredHash: "z", AppliedVersion: 4, AppliedHash: "z"}, 5, false},
		{"not applied yet", &pb.Host{DesiredVersion: 5, DesiredHash: "a", AppliedVersion: 4, AppliedHash: "z"}, 5, false},
		{"same revision, other hash (a secret changed)", &pb.Host{DesiredVersion: 5, DesiredHash: "b", AppliedVersion: 5, AppliedHash: "a"}, 5, false},
		{"nacked", &pb.Host{DesiredVersion: 5, DesiredHash: "a", AppliedVersion: 4, AppliedHash: "z", LastResult: nack(5, "a")}, 5, false},
		{"no hash", &pb.Host{DesiredVersion: 5, AppliedVersion: 5}, 5, false},
		{"revision 0", &pb.Host{}, 0, false},
	} {
		if got := Converged(tc.h, tc.rev); got != tc.want {
			t.Errorf("%s: Converged = %v, want %v (why: %q)", tc.name, got, tc.want, Why(tc.h, tc.rev))
		}
		if why := Why(tc.h, tc.rev); (why == "") != tc.want {
			t.Errorf("%s: Why = %q", tc.name, why)
		}
	}
}
