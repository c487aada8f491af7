package statusreport

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func TestSame(t *testing.T) {
	base := func() *pb.StatusReport {
		return &pb.StatusReport{
			AppliedVersion: 7,
			AppliedHash:    "h7",
			Clock:          timestamppb.New(t0),
			Items:          []*pb.ItemStatus{{Item: "oauth", State: pb.ItemState_ITEM_STATE_OK}},
		}
	}
	tests := []struct {
		name   string
		change func(*pb.StatusReport)
		want   bool
	}{
		{name: "identical", change: func(*pb.StatusReport) {}, want: true},
		{name: "clock only", change: func(r *pb.StatusReport) { r.Clock = timestamppb.New(t0.Add(time.Hour)) }, want: true},
		{name: "no clock", change: func(r *pb.StatusReport) { r.Clock = nil }, want: true},
		{name: "applied version", change: func(r *pb.StatusReport) { r.AppliedVersion = 8 }},
		{name: "item state", change: func(r *pb.StatusReport) { r.Items[0].State = pb.ItemState_ITEM_STATE_FAILED }},
		{name: "drift", change: func(r *pb.StatusReport) { r.Drift = []*pb.Drift{{Item: "oauth"}} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base(), base()
			tc.change(b)
			if got := Same(a, b); got != tc.want {
				t.Errorf("Same = %v; want %v", got, tc.want)
			}
			if a.GetClock() == nil {
				t.Error("Same cleared the clock of its argument")
			}
		})
	}
}
