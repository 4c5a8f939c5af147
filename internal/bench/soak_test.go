//go:build long

package bench_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/bench"
	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// TestSoak60s is the CI soak: 60 s of the demo workload at a small scale
// (10 s with -short), with at most 9 connections (8 in the soak's pool, 1
// for its schema), then the drain and the demo's invariants over every
// round. The stable-load verdict is logged, not asserted: the machine is
// shared with the other tests.
func TestSoak60s(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	duration, interval := 60*time.Second, 5*time.Second
	if testing.Short() {
		duration, interval = 10*time.Second, time.Second
	}
	var progress bytes.Buffer
	report, err := bench.Soak(ctx, bench.SoakConfig{
		DatabaseURL: dbtest.ServerURL(t), Duration: duration, Interval: interval, Scale: 0.02,
		Concurrency: 3, MaxConns: 8, MaxWorkers: 4, DrainTimeout: time.Minute, VacuumEvery: duration / 4, Out: &progress,
	})
	require.NoError(t, err)
	var printed bytes.Buffer
	report.Print(&printed)
	t.Log("\n" + printed.String())

	tot := report.Totals
	require.True(t, report.OK, "failures: %v", report.Failures)
	require.Empty(t, report.Failures)
	// No job lost: every job completed, or is a timer due later.
	require.True(t, tot.Drained, "the backlog drains to 0 within the drain timeout")
	require.Less(t, tot.DrainSeconds, time.Minute.Seconds())
	require.Zero(t, tot.Lost, "jobs still to run after the drain")
	require.Zero(t, tot.Discarded)
	require.Zero(t, tot.Cancelled)
	require.Positive(t, tot.Completed)
	require.Equal(t, tot.Jobs, tot.Completed+tot.Timers, "every job completed or is a timer due later")
	// No unexpected error, on either side.
	require.Zero(t, tot.UnexpectedErrors, "%v", tot.Errors)
	require.Zero(t, tot.AppErrors, "%v", tot.Errors)
	// The demo's invariants, over every round played to its end.
	require.Len(t, report.Invariants, 19)
	for _, inv := range report.Invariants {
		require.True(t, inv.OK, "%s: %s", inv.Name, inv.Got)
	}
	require.Positive(t, tot.RoundsChecked)
	require.Equal(t, tot.Rounds, tot.RoundsChecked, "every round played was checked")
	// A sample per interval, and no stall: jobs completed in every one.
	require.GreaterOrEqual(t, len(report.Samples), int(duration/interval)-1)
	for _, s := range report.Samples {
		require.Positive(t, s.JobsPerSec, "a stall at %.0fs", s.Elapsed)
		require.Positive(t, s.RiverJobBytes)
	}
	require.Contains(t, progress.String(), "JOBS/S")
	// The verdict is computed (its figures are ratios).
	require.Positive(t, report.Verdict.JobsRatio)
	require.Positive(t, report.Verdict.P99Ratio)
	require.NotEmpty(t, report.Verdict.Text)
	// A server without autovacuum (this CI's) gets the soak's VACUUM in
	// its place; one with it gets none.
	require.Contains(t, []string{"on", "off"}, report.Autovacuum)
	if report.Autovacuum == "off" {
		require.GreaterOrEqual(t, report.Vacuums, 1)
	} else {
		require.Zero(t, report.Vacuums)
	}
}
