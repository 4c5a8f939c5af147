package bench_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/bench"
	"github.com/aftercommit/aftercommit/internal/dbtest"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  bench.Config
		want string
	}{
		{bench.Config{Rounds: -1}, "bench: invalid config: --rounds must be in 1…100, got -1"},
		{bench.Config{Rounds: 101}, "bench: invalid config: --rounds must be in 1…100, got 101"},
		{bench.Config{Duration: time.Millisecond}, "bench: invalid config: --duration must be at least 10ms, got 1ms"},
		{bench.Config{Scale: -1}, "bench: invalid config: --scale must be in (0, 100], got -1"},
		{bench.Config{Scenarios: []string{"nope"}}, `bench: invalid config: unknown scenario "nope": want one of tx_one_job, tx_floor, tx_bulk, bulk_insert, worker_throughput, latency, donations, donate_hot, claims, claims_floor, car_users, processes, growth, batch_latency, fairness, pgbouncer_latency, relay_throughput, relay_notify, relay_latency, sustained, hot_key, outbox_size`},
	} {
		err := bench.Validate(tc.cfg)
		require.ErrorIs(t, err, bench.ErrInvalidConfig)
		require.EqualError(t, err, tc.want)
	}
	require.NoError(t, bench.Validate(bench.Config{}))
}

// TestConcurrentRunsKeepTheirOwnSchemas: two runs of the same scenario at
// once in one process (as parallel tests do) each work in a scratch schema
// of their own, and each drops only its own. Before run IDs, the second run
// dropped the first's schema as it started, and a run counting "its"
// leftover schemas counted the other's.
func TestConcurrentRunsKeepTheirOwnSchemas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg := bench.Config{
		DatabaseURL: dbtest.ServerURL(t), Rounds: 2, Duration: 300 * time.Millisecond, Scale: 0.01,
		Scenarios: []string{"tx_bulk"},
	}
	reports := make([]*bench.Report, 2)
	errs := make([]error, 2)
	done := make(chan int)
	for i := range reports {
		go func() {
			reports[i], errs[i] = bench.Run(ctx, cfg)
			done <- i
		}()
	}
	<-done
	<-done
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	require.NotEqual(t, reports[0].RunID, reports[1].RunID)

	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 1})
	for _, r := range reports {
		var left int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname = $1`,
			bench.SchemaPrefix+"tx_bulk_"+r.RunID).Scan(&left))
		require.Zero(t, left)
	}
}

func TestValidateHoldback(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  bench.HoldbackConfig
		want string
	}{
		{"Defaults", bench.HoldbackConfig{}, ""},
		{"ShortInterval", bench.HoldbackConfig{Interval: time.Millisecond}, "the interval must be at least 100ms, got 1ms"},
		{"HoldBelowInterval", bench.HoldbackConfig{Hold: time.Second, Interval: 2 * time.Second}, "the hold (1s) must be at least one interval (2s)"},
		{"Rate", bench.HoldbackConfig{Rate: 30_000}, "the rate must be in 1…20000 jobs/s, got 30000"},
		{"Stack", bench.HoldbackConfig{Stacks: []string{"bare", "huge"}}, `unknown stack "huge" (want bare or full)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := bench.ValidateHoldback(tc.cfg)
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, bench.ErrInvalidConfig)
			require.EqualError(t, err, "bench: invalid config: "+tc.want)
		})
	}
}
