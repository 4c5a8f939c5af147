//go:build long

package bench_test

import (
	"bytes"
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/bench"
	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// TestRunEveryScenario runs every scenario once at a tiny scale: this
// proves the scenarios work; the figures come from the full run
// (BENCHMARKS.md).
func TestRunEveryScenario(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var progress bytes.Buffer
	report, err := bench.Run(ctx, bench.Config{
		DatabaseURL: dbtest.ServerURL(t), Rounds: 1, Duration: 400 * time.Millisecond, Scale: 0.002, Out: &progress,
	})
	require.NoError(t, err)

	sides := map[string][]string{}
	for _, r := range report.Results {
		// A baseline's maximum outbox depth is 0 by design, a 400 ms side
		// may not have completed a job yet, nor seen a vacuum; tenant B
		// alone has no tenant A.
		if !strings.Contains(r.Metric, "achieved") && !strings.HasPrefix(r.Metric, "max ") && r.Metric != "completed/s" && r.Metric != "vacuums" &&
			r.Metric != "A jobs/s" {
			require.Positive(t, r.Median, "%s/%s %s", r.Scenario, r.Side, r.Metric)
		}
		require.Len(t, r.Values, 1)
		require.Equal(t, r.Median, r.Min)
		require.Equal(t, r.Median, r.Max)
		if r.Baseline && r.Median != 0 { // a 0 baseline (max outbox depth) has no ratio
			require.InDelta(t, 1.0, r.Ratio, 1e-9)
		}
		if !slices.Contains(sides[r.Scenario], r.Side) {
			sides[r.Scenario] = append(sides[r.Scenario], r.Side)
		}
	}
	require.Equal(t, map[string][]string{
		"tx_one_job":        {"plain", "outbox_job", "outbox_direct", "river_insert_tx", "pgbench_plain", "pgbench_outbox"},
		"tx_floor":          {"pgbench_plain", "pgbench_job"},
		"claims_floor":      {"pgbench_single_row", "pgbench_buckets_32", "pgbench_buckets_32_outbox"},
		"donations":         {"plain_insert", "donate", "donate_flagged"},
		"donate_hot":        {"direct", "outbox", "row_only"},
		"claims":            {"single_row", "buckets_8", "buckets_32"},
		"car_users":         {"naive", "bulk", "bulk_job"},
		"processes":         {"workers_1", "workers_2", "workers_4"},
		"growth":            {"waiting_10k", "waiting_100k", "waiting_1m", "scheduled_1m", "finished_1m"},
		"fairness":          {"b_alone", "fair_share", "no_fair_share"},
		"batch_latency":     {"job_alone", "batch_callback"},
		"pgbouncer_latency": {"direct", "poll_only", "poll_only_50ms", "split_listener"},
		"tx_bulk":           {"rows_only", "rows_and_jobs"},
		"bulk_insert":       {"river_insert_many_fast", "outbox_batch", "river_insert_many"},
		"worker_throughput": {"bare_river", "full_stack", "worker_lock", "semaphore", "rate_limit", "rate_limit_warm", "rate_limit_hot", "batch_member", "sequence"},
		"latency":           {"river_defaults", "shipped", "outbox_relay"},
		"relay_throughput":  {"insert_many_fast_1000", "relay_1000", "relay_1000_1_mover", "take_copy_floor_1000", "relay_1000_no_copy", "relay_1000_2_relays", "insert_many_fast_5000", "relay_5000"},
		"relay_notify":      {"notify_10ms", "notify_never", "notify_every_tx"},
		"relay_latency":     {"defaults", "notify_1ms", "poll_max_5ms", "notify_1ms_cooldown_1ms"},
		"sustained":         {"direct", "outbox_relay"},
		"hot_key":           {"no_job", "outbox", "outbox_write_only", "direct"},
		"outbox_size":       {"outbox_relay"},
	}, sides)
	require.Equal(t, []string{"tx_one_job", "tx_floor", "tx_bulk", "bulk_insert", "worker_throughput", "latency", "donations", "donate_hot", "claims", "claims_floor", "car_users", "processes", "growth", "batch_latency", "fairness", "pgbouncer_latency", "relay_throughput", "relay_notify", "relay_latency", "sustained", "hot_key", "outbox_size"}, bench.Names())

	var goals int
	for _, r := range report.Results {
		if r.GoalOK != nil {
			goals++
			require.NotEmpty(t, r.Goal)
		}
	}
	require.Equal(t, 27, goals, "every goal is judged")

	var table bytes.Buffer
	report.Print(&table)
	require.Contains(t, table.String(), "worker_throughput — jobs/s")
	require.Contains(t, table.String(), "baseline")
	require.Contains(t, progress.String(), "tx_one_job/plain round 1: tx/s @1 ")

	// The run's scratch schemas are gone (they end with the run's ID;
	// other runs of this process may be going on beside it).
	require.Regexp(t, `^`+strconv.Itoa(os.Getpid())+`_[0-9]+$`, report.RunID)
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 1})
	var left int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE starts_with(nspname, $1) AND right(nspname, length($2) + 1) = '_' || $2`,
		bench.SchemaPrefix, report.RunID).Scan(&left))
	require.Zero(t, left)
}
