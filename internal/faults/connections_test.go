//go:build long

package faults_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
)

// TestConnectionsCutUnderLoad runs a real cmd/worker process through 400
// ping jobs that each mark a row, and kills every one of its database
// connections (pg_terminate_backend) three times while it works. The
// worker reconnects by itself — no restart — and the backlog drains: every
// job completes and every row is marked exactly once (a job whose commit
// was cut is retried; its effect and its completion commit together).
func TestConnectionsCutUnderLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
	const n = 400
	rows, err := s.Pool.Query(ctx, `INSERT INTO pings (note) SELECT 'cut' FROM generate_series(1, $1) RETURNING id`, n)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	inserter, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	require.NoError(t, err)
	params := make([]river.InsertManyParams, n)
	for i, id := range ids {
		params[i] = river.InsertManyParams{Args: jobs.PingArgs{PingID: id, SleepMS: 20}}
	}
	_, err = inserter.InsertMany(ctx, params)
	require.NoError(t, err)

	// Cutting starts once the worker has started: a cut during its start is
	// TestStartClientRetriesWhileTheDatabaseIsAway's business (cmd/worker).
	w := startWorker(t, s, "cut", nil, "--queues", "default", "--max-workers", "20")
	w.clientID(t)
	appName := "aftercommit-faults-cut"

	count := func(sql string) int {
		var v int
		require.NoError(t, s.Pool.QueryRow(ctx, sql, jobs.PingKind).Scan(&v))
		return v
	}
	cuts := 0
	for deadline := time.Now().Add(60 * time.Second); cuts < 3; {
		require.True(t, time.Now().Before(deadline), "three cuts within 60 s")
		time.Sleep(300 * time.Millisecond)
		var killed int
		require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
  FROM pg_stat_activity WHERE application_name = left($1, 63)`, appName).Scan(&killed))
		if killed > 0 {
			cuts++
			t.Logf("cut %d: terminated %d connections; %d jobs completed so far", cuts, killed,
				count(`SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'completed'`))
		}
		require.True(t, w.running(), "the worker exited; log:\n%s", w.log)
	}

	start := time.Now()
	require.Eventually(t, func() bool {
		return count(`SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'completed'`) == n
	}, 90*time.Second, 50*time.Millisecond, "every job completed; worker log:\n%s", w.log)
	t.Logf("after the last cut the backlog drained in %s", time.Since(start).Round(10*time.Millisecond))

	var marked, twice, total int
	require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE ping_count = 1), count(*) FILTER (WHERE ping_count > 1), count(*) FROM pings`).
		Scan(&marked, &twice, &total))
	require.Equal(t, n, total)
	require.Equal(t, n, marked, "every row marked once")
	require.Zero(t, twice, "no row marked twice")

	// Still the same process: it reconnected on its own; it stops cleanly.
	require.NoError(t, w.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, w.wait(t), "log:\n%s", w.log)
}
