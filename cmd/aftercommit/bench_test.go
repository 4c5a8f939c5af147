package main

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/bench"
	"github.com/aftercommit/aftercommit/internal/dbtest"
)

func TestBench(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}

	t.Run("OneScenarioAsJSON", func(t *testing.T) {
		t.Parallel()
		res := runCLI(ctx, t, environ, "bench", "--scenario", "tx_bulk", "--rounds", "2", "--duration", "100ms", "--json",
			"--database-url", dbtest.ServerURL(t)) //nolint:contextcheck // dbtest sets up the test server once per process (sync.Once) on its own context; no one test's ctx may bound that
		require.Equal(t, exitOK, res.code, res.stderr)
		var report bench.Report
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &report))
		require.Equal(t, 2, report.Rounds)
		require.Len(t, report.Results, 2)
		require.Equal(t, "rows_only", report.Results[0].Side)
		require.True(t, report.Results[0].Baseline)
		require.Equal(t, "rows_and_jobs", report.Results[1].Side)
		require.Len(t, report.Results[1].Values, 2)
		require.Positive(t, report.Results[1].Median)
		require.NotNil(t, report.Results[1].GoalOK)
	})

	t.Run("Help", func(t *testing.T) {
		t.Parallel()
		res := runCLI(ctx, t, environ, "bench", "--help")
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Empty(t, res.stderr)
		requireGolden(t, "bench_help.golden", res.stdout)
	})

	t.Run("SoakAsJSON", func(t *testing.T) {
		t.Parallel()
		res := runCLI(ctx, t, environ, "bench", "--soak", "1500ms", "--interval", "500ms", "--scale", "0.01", "--json",
			"--database-url", dbtest.ServerURL(t)) //nolint:contextcheck // dbtest sets up the test server once per process (sync.Once) on its own context; no one test's ctx may bound that
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Empty(t, res.stderr, "--json without -v prints no samples on stderr")
		var report bench.SoakReport
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &report))
		require.True(t, report.OK, "%v", report.Failures)
		require.Equal(t, "1.5s", report.Duration)
		require.InDelta(t, 0.01, report.Scale, 1e-9)
		require.Len(t, report.Samples, 3)
		require.Len(t, report.Invariants, 19)
		require.True(t, report.Totals.Drained)
		require.Positive(t, report.Totals.Completed)
		require.Contains(t, res.stdout, `"jobs_per_s"`)
	})

	t.Run("BadUsage", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"bench", "now"}, "aftercommit bench: bench takes no arguments, got now\n"},
			{[]string{"bench", "--rounds", "0"}, "aftercommit bench: --rounds must be in 1…100, got 0\n"},
			{[]string{"bench", "--duration", "1ms"}, "aftercommit bench: --duration must be at least 10ms, got 1ms\n"},
			{[]string{"bench", "--scale", "0"}, "aftercommit bench: --scale must be in (0, 100], got 0\n"},
			{[]string{"bench", "--scenario", "tx_bulk", "--chart", "growth.png"},
				"aftercommit bench: --chart draws the growth scenario, which --scenario tx_bulk leaves out\n"},
			{[]string{"bench", "--soak", "30m", "--scenario", "tx_bulk"},
				"aftercommit bench: --soak runs the demo workload, not the scenarios: drop --scenario\n"},
			{[]string{"bench", "--soak", "30m", "--rounds", "2"},
				"aftercommit bench: --soak runs the demo workload, not the scenarios: drop --rounds\n"},
			{[]string{"bench", "--interval", "5s"}, "aftercommit bench: --interval goes with --soak or --holdback\n"},
			{[]string{"bench", "--soak", "1m", "--holdback", "1m"}, "aftercommit bench: --soak and --holdback are two modes: pick one\n"},
			{[]string{"bench", "--rate", "100"}, "aftercommit bench: --rate goes with --holdback\n"},
			{[]string{"bench", "--soak", "1m", "--private-server"}, "aftercommit bench: --private-server goes with --holdback\n"},
			{[]string{"bench", "--holdback", "1m", "--scenario", "latency"},
				"aftercommit bench: --holdback runs its own load, not the scenarios: drop --scenario\n"},
			{[]string{"bench", "--holdback", "1m", "--private-server", "--database-url", "postgres://x@127.0.0.1/x"},
				"aftercommit bench: --private-server runs on a server of its own: drop --database-url\n"},
			{[]string{"bench", "--holdback", "0s"}, "aftercommit bench: --holdback must be at least the interval, got 0s\n"},
			{[]string{"bench", "--holdback", "10s"}, "aftercommit bench: the hold (10s) must be at least one interval (30s)\n"},
			{[]string{"bench", "--holdback", "1m", "--rate", "0"}, "aftercommit bench: --rate must be in 1…20000, got 0\n"},
			{[]string{"bench", "--holdback", "1m", "--stacks", "bare,tiny"}, `aftercommit bench: unknown stack "tiny" (want bare or full)` + "\n"},
			{[]string{"bench", "--soak", "0s"}, "aftercommit bench: --soak must be at least 1s, got 0s\n"},
			{[]string{"bench", "--soak", "500ms"}, "aftercommit bench: --soak must be at least 1s, got 500ms\n"},
			{[]string{"bench", "--soak", "10s", "--interval", "20s"},
				"aftercommit bench: --interval must be in 100ms…the --soak duration, got 20s\n"},
			{[]string{"bench", "--soak", "10s", "--scale", "0"}, "aftercommit bench: --scale must be in (0, 100], got 0\n"},
			{[]string{"bench", "--scenario", "warp"}, `aftercommit bench: unknown scenario "warp": want one of tx_one_job, tx_floor, tx_bulk, bulk_insert, worker_throughput, latency, donations, donate_hot, claims, claims_floor, car_users, processes, growth, batch_latency, fairness, pgbouncer_latency, relay_throughput, relay_notify, relay_latency, sustained, hot_key, outbox_size` + "\n"},
		} {
			res := runCLI(ctx, t, environ, tc.args...)
			require.Equal(t, exitUsage, res.code, "%v", tc.args)
			require.Empty(t, res.stdout)
			require.Equal(t, tc.want+"Run 'aftercommit bench --help' for usage.\n", res.stderr, "%v", tc.args)
		}
	})
}
