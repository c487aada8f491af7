package ui

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Rollouts is the part of the RolloutService the dashboard reads; the
// controller's *server.RolloutService is one.
type Rollouts interface {
	ListRollouts(context.Context, *pb.ListRolloutsRequest) (*pb.ListRolloutsResponse, error)
}

// shownRollouts is how many of the newest rollouts the page shows.
const shownRollouts = 5

type rolloutRow struct {
	Name string `json:"name"`
	// The revisions' sequence numbers (1, 2, 3 …, as the CLI and `get
	// revisions` name them; 0 when unknown) and their etcd versions.
	FromSequence uint64     `json:"fromSequence"`
	ToSequence   uint64     `json:"toSequence"`
	FromRevision uint64     `json:"fromRevision"`
	ToRevision   uint64     `json:"toRevision"`
	State        string     `json:"state"`
	Reason       string     `json:"reason"`
	CurrentWave  uint32     `json:"currentWave"`
	CreatedBy    string     `json:"createdBy"`
	UndoOf       string     `json:"undoOf"`
	CreateTime   *time.Time `json:"createTime,omitempty"`
	UpdateTime   *time.Time `json:"updateTime,omitempty"`
	Waves        []waveRow  `json:"waves"`
}

type waveRow struct {
	Title    string   `json:"title"`
	Waiting  int      `json:"waiting"`
	Updating int      `json:"updating"`
	Passed   int      `json:"passed"`
	Failed   int      `json:"failed"`
	Causes   []string `json:"causes"`
}

// listRollouts reads the newest rollouts with their per-wave progress.
func listRollouts(ctx context.Context, rs Rollouts) ([]rolloutRow, error) {
	rows := []rolloutRow{}
	if rs == nil {
		return rows, nil
	}
	resp, err := rs.ListRollouts(ctx, &pb.ListRolloutsRequest{PageSize: shownRollouts})
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	for _, r := range resp.GetRollouts() {
		row := rolloutRow{
			Name: r.GetName(), FromSequence: r.GetFromSequence(), ToSequence: r.GetToSequence(), FromRevision: r.GetFromRevision(), ToRevision: r.GetToRevision(),
			State: strings.ToLower(strings.TrimPrefix(r.GetState().String(), "ROLLOUT_STATE_")), Reason: r.GetReason(),
			CurrentWave: r.GetCurrentWave(), CreatedBy: r.GetCreatedBy(), UndoOf: r.GetUndoOf(),
			CreateTime: timeOf(r.GetCreateTime()), UpdateTime: timeOf(r.GetUpdateTime()), Waves: []waveRow{},
		}
		for _, w := range r.GetWaves() {
			wr := waveRow{Title: w.GetTitle(), Causes: []string{}}
			for _, h := range w.GetHosts() {
				switch h.GetState() {
				case pb.RolloutHostState_ROLLOUT_HOST_STATE_PASSED:
					wr.Passed++
				case pb.RolloutHostState_ROLLOUT_HOST_STATE_FAILED:
					wr.Failed++
					wr.Causes = append(wr.Causes, fmt.Sprintf("%s (revision %s → %s, versions %s → %s): %s", h.GetHost(),
						seqText(h.GetFromSequence(), h.GetFromRevision()), seqText(h.GetTargetSequence(), h.GetTargetRevision()),
						versionText(h.GetFromRevision()), versionText(h.GetTargetRevision()), h.GetCause()))
				case pb.RolloutHostState_ROLLOUT_HOST_STATE_UPDATING:
					wr.Updating++
				default:
					wr.Waiting++
				}
			}
			row.Waves = append(row.Waves, wr)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// seqText names a revision by its sequence number, as the CLI does; by
// its etcd version ("v12") when the sequence is unknown, "-" when there is
// none.
func seqText(seq, rev uint64) string {
	switch {
	case seq > 0:
		return strconv.FormatUint(seq, 10)
	case rev > 0:
		return "v" + strconv.FormatUint(rev, 10)
	}
	return "-"
}

// versionText is an etcd version, "-" before it is known.
func versionText(rev uint64) string {
	if rev == 0 {
		return "-"
	}
	return strconv.FormatUint(rev, 10)
}
