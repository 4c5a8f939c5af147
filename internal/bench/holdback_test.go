//go:build long

package bench_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/bench"
	"github.com/aftercommit/aftercommit/internal/pgserver"
)

// TestHoldback runs the holdback mode briefly on a private server with
// autovacuum on, both stacks: a snapshot held 3 s beside 100 jobs/s per
// side, sampled every second. It checks the run's shape, not its figures
// (the machine is shared with the other tests): a sample per interval on
// both sides, the hold marked on the held side alone, the holder named by
// db_vacuum_holdback on the held side within the hold's first interval and
// never on the clear side, every job done.
func TestHoldback(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, err := pgserver.Start(ctx, "")
	require.NoError(t, err)
	t.Cleanup(srv.Stop)

	const (
		hold     = 3 * time.Second
		interval = time.Second
	)
	var progress bytes.Buffer
	report, err := bench.Holdback(ctx, bench.HoldbackConfig{
		DatabaseURL: srv.URL(""), Hold: hold, Interval: interval, Rate: 100, Progress: &progress,
	})
	require.NoError(t, err)
	var printed bytes.Buffer
	report.Print(&printed)
	t.Log("\n" + printed.String())

	require.Equal(t, "on", report.Autovacuum)
	require.Len(t, report.Stacks, 2)
	for i, st := range report.Stacks {
		require.Equal(t, []string{bench.HoldbackBare, bench.HoldbackFull}[i], st.Stack)
		require.Equal(t, 2*interval, st.HoldFrom)
		require.Equal(t, 2*interval+hold, st.HoldTo)
		// Two intervals before the hold, three in it, two after: the last
		// tick may come too late to be taken.
		require.GreaterOrEqual(t, len(st.Held.Samples), 6, st.Stack)
		require.Len(t, st.Clear.Samples, len(st.Held.Samples), st.Stack)
		var held, named int
		for j, s := range st.Held.Samples {
			if s.Held {
				held++
				require.Greater(t, s.At, st.HoldFrom, "%s: sample %d is marked held before the hold", st.Stack, j)
			}
			if s.Holder == bench.HoldbackApplicationName {
				named++
				require.Greater(t, s.At, st.HoldFrom, st.Stack)
				require.LessOrEqual(t, s.At, st.HoldTo+interval, st.Stack)
				require.Positive(t, s.HeldFor, st.Stack)
			}
		}
		require.GreaterOrEqual(t, held, 2, st.Stack)
		require.GreaterOrEqual(t, named, 2, "%s: the holder is named while it holds", st.Stack)
		require.GreaterOrEqual(t, st.NamedAfter, time.Duration(0), st.Stack)
		require.LessOrEqual(t, st.NamedAfter, interval+interval/2, "%s: named within the hold's first interval", st.Stack)
		for _, s := range st.Clear.Samples {
			require.False(t, s.Held, st.Stack)
			require.Empty(t, s.Holder, "%s: the clear side's vacuum is not held back", st.Stack)
		}
		// Every job committed was done, but the last interval's backlog.
		for _, side := range []bench.HoldbackSide{st.Held, st.Clear} {
			var (
				enqueued, done float64
				prev           time.Duration
			)
			for _, s := range side.Samples {
				d := (s.At - prev).Seconds() // the interval the rates are over
				enqueued += s.Enqueued * d
				done += s.Done * d
				prev = s.At
				require.Contains(t, s.Dead, "river_job")
			}
			last := side.Samples[len(side.Samples)-1]
			require.InDelta(t, enqueued-float64(last.Backlog), done, 0.05*enqueued, "%s %s", st.Stack, side.Name)
			require.Positive(t, last.RiverJobBytes)
		}
		require.Positive(t, st.ThroughputRatio)
		require.Positive(t, st.P99Ratio)
	}
	// The full stack's tables churn: its outbox rows and its locks are
	// deleted as the jobs move and run.
	full := report.Stacks[1].Held.Samples
	require.Positive(t, full[len(full)-1].Dead["outbox_jobs"]+full[len(full)-1].Dead["job_locks"])
	require.Contains(t, progress.String(), bench.HoldbackApplicationName)

	path := filepath.Join(t.TempDir(), "holdback.png")
	require.NoError(t, bench.WriteHoldbackChart(path, report))
	requirePNG(t, path, 960, 1260)

	require.ErrorIs(t, bench.WriteHoldbackChart(path, &bench.HoldbackReport{}), bench.ErrNoHoldbackResults)
}
