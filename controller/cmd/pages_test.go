package cmd

import (
	"context"
	"fmt"
	"slices"
	"testing"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// listNewest reads every page, or stops at the limit, asking for no more
// than the limit leaves; the stalest page's mark is the listing's.
func TestListNewestReadsPagesUpToTheLimit(t *testing.T) {
	items := []int{9, 8, 7, 6, 5}
	page := func(sizes *[]int32) func(context.Context, int32, string) ([]int, string, *pb.Staleness, error) {
		return func(_ context.Context, size int32, token string) ([]int, string, *pb.Staleness, error) {
			*sizes = append(*sizes, size)
			from := 0
			if token != "" {
				if _, err := fmt.Sscan(token, &from); err != nil {
					return nil, "", nil, err
				}
			}
			// Pages from the third item on come from the controller's
			// last view, older with each.
			var stale *pb.Staleness
			if from >= 2 {
				stale = &pb.Staleness{AgeMs: int64(from), Reason: fmt.Sprint("from ", from)}
			}
			n := int(size)
			if n == 0 {
				n = 2 // the controller's default in this fake
			}
			to := min(from+n, len(items))
			next := ""
			if to < len(items) {
				next = fmt.Sprint(to)
			}
			return items[from:to], next, stale, nil
		}
	}
	for _, tc := range []struct {
		limit     int
		want      []int
		wantSizes []int32
		wantStale string
	}{
		{0, items, []int32{0, 0, 0}, "from 4"},
		{3, []int{9, 8, 7}, []int32{3}, ""},
		{7, items, []int32{7}, ""},
	} {
		var sizes []int32
		got, stale, err := listNewest(context.Background(), tc.limit, 100, page(&sizes))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, tc.want) || !slices.Equal(sizes, tc.wantSizes) || stale.GetReason() != tc.wantStale {
			t.Errorf("limit %d: %v asking sizes %v, stale %v; want %v asking %v, stale %q", tc.limit, got, sizes, stale, tc.want, tc.wantSizes, tc.wantStale)
		}
	}
	// Pages of one, as the tests' listPageSize: every item, one call each.
	listPageSize = 1
	defer func() { listPageSize = 0 }()
	var sizes []int32
	got, _, err := listNewest(context.Background(), 0, 100, page(&sizes))
	if err != nil || !slices.Equal(got, items) || len(sizes) != len(items) {
		t.Errorf("pages of one: %v in %d calls (%v), want %v in %d", got, len(sizes), err, items, len(items))
	}
}
