//go:build long

package bench

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// TestGrowthScenario runs the growth scenario alone at a tiny scale. It is
// not parallel: its scratch schema is named after the scenario and the
// process, like the one TestRunEveryScenario's run of every scenario makes
// for growth, and that test checks that no scratch schema of this process
// is left when it ends; parallel tests start only after this one is done.
func TestGrowthScenario(t *testing.T) {
	ctx := context.Background()
	cfg := withDefaults(Config{DatabaseURL: dbtest.ServerURL(t), Rounds: 1, Duration: 300 * time.Millisecond, Scale: 0.002, Out: io.Discard})
	s := growthScenario(cfg)
	require.Equal(t, GrowthScenario, s.Name)

	results, _, err := runScenario(ctx, cfg, newRunID(), s)
	require.NoError(t, err)

	got := map[string]map[string]Result{}
	for _, r := range results {
		if got[r.Side] == nil {
			got[r.Side] = map[string]Result{}
		}
		got[r.Side][r.Metric] = r
		require.Positive(t, r.Median, "%s %s", r.Side, r.Metric)
	}
	require.Len(t, got, len(growthBacklogs))
	for _, b := range growthBacklogs {
		require.Len(t, got[b.side], len(s.Metrics), "%s reports every metric", b.side)
	}
	require.True(t, got["waiting_10k"]["jobs/s"].Baseline)

	// The table's size follows the backlog's.
	size := func(side string) float64 { return got[side][growthSize].Median }
	require.Less(t, size("waiting_10k"), size("waiting_100k"))
	require.Less(t, size("waiting_100k"), size("waiting_1m"))
	require.Less(t, size("waiting_10k"), size("finished_1m"))
	require.Less(t, size("waiting_10k"), size("scheduled_1m"))

	p99 := got["waiting_1m"][growthP99]
	require.NotNil(t, p99.GoalOK, "the goal is judged")
	require.Equal(t, "p99 at 1 M waiting ≤ 2× at 10 k", p99.Goal)
}
