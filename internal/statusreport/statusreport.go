// Package statusreport holds what agent and controller agree on about
// status reports: when two reports say the same thing. The agent sends a
// report only when it changed, and the controller writes one only when it
// changed; both ignore the clock, which only dates the report.
package statusreport

import (
	"google.golang.org/protobuf/proto"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Same reports whether a and b are equal but for their clocks. Neither
// argument is modified.
func Same(a, b *pb.StatusReport) bool {
	a2 := proto.Clone(a).(*pb.StatusReport)
	b2 := proto.Clone(b).(*pb.StatusReport)
	a2.Clock, b2.Clock = nil, nil
	return proto.Equal(a2, b2)
}
