//go:build long

package faults_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// TestRateLimitAcrossThreeWorkers: three cmd/worker processes share a limit
// of 10 starts per second on one key, with 800 pings of that key queued
// from SQL. No 1-second window ever holds more than 10 starts
// (river_job.attempted_at), the 60 s from the first start hold 600 ± 10 of
// them, every process started some, and waiting spent no attempt.
//
// It measures time, so it runs alone in its package (no t.Parallel): the
// kills and network faults of the other tests would take the CPU its three
// processes need to start each job within milliseconds of its slot.
func TestRateLimitAcrossThreeWorkers(t *testing.T) { //nolint:paralleltest // see above
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
	const (
		limit  = 10
		period = time.Second
		span   = 60 * time.Second
		queued = 800
	)
	for _, name := range []string{"r1", "r2", "r3"} {
		// Four connections each: the pings need one at a time, and the
		// fault suite runs beside the rest of the full suite.
		p := startWorkerConns(t, s, name, 4, nil)
		p.clientID(t)
	}
	_, err := s.Pool.Exec(ctx, `SELECT aftercommit_enqueue('aftercommit.ping',
		jsonb_build_object('ping_id', 0, 'rate_key', 'provider-1', 'rate_limit', $1::int, 'rate_period_ms', $2::int))
		FROM generate_series(1, $3::int)`, limit, period.Milliseconds(), queued)
	require.NoError(t, err)

	var first time.Time
	require.Eventually(t, func() bool {
		return s.Pool.QueryRow(ctx, `SELECT min(attempted_at) FROM river_job WHERE kind = 'aftercommit.ping' AND state = 'completed'`).Scan(&first) == nil && !first.IsZero()
	}, 30*time.Second, 20*time.Millisecond, "no ping started")
	var dbNow time.Time
	for {
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT now()`).Scan(&dbNow))
		if dbNow.After(first.Add(span + 2*time.Second)) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}

	type start struct {
		At      time.Time
		Attempt int
		Client  string
	}
	rows, err := s.Pool.Query(ctx, `SELECT attempted_at, attempt, attempted_by[array_length(attempted_by, 1)]
		FROM river_job WHERE kind = 'aftercommit.ping' AND state = 'completed' ORDER BY attempted_at`)
	require.NoError(t, err)
	starts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[start])
	require.NoError(t, err)

	inSpan := 0
	clients := map[string]int{}
	for i, st := range starts {
		require.Equal(t, 1, st.Attempt, "waiting spends no attempt")
		if st.At.Before(first.Add(span)) {
			inSpan++
		}
		clients[st.Client]++
		if i+limit < len(starts) {
			require.Greater(t, starts[i+limit].At.Sub(st.At), period,
				"%d starts within one second, from %s to %s", limit+1, st.At, starts[i+limit].At)
		}
	}
	// Gaps between starts longer than one and a half slots: a slot no job
	// used.
	var gaps []string
	for i := 1; i < len(starts); i++ {
		if d := starts[i].At.Sub(starts[i-1].At); d > 3*period/(2*limit) {
			gaps = append(gaps, fmt.Sprintf("%s after start %d (%s)", d.Round(time.Millisecond), i-1, starts[i-1].At.Sub(first).Round(time.Millisecond)))
		}
	}
	t.Logf("%d gaps of more than 1.5 slots: %v", len(gaps), gaps)
	var histogram string
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT string_agg(n || 'x' || c, ' ' ORDER BY n) FROM (SELECT coalesce((metadata->>'snoozes')::int, 0) n, count(*) c FROM river_job WHERE kind = 'aftercommit.ping' AND state = 'completed' GROUP BY 1) h`).Scan(&histogram))
	t.Logf("snoozes per completed job: %s", histogram)
	var spacing, late, lateMax float64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT extract(epoch FROM (max(scheduled_at) - min(scheduled_at)) / greatest(count(*) - 1, 1)) * 1000,
		avg(extract(epoch FROM attempted_at - scheduled_at)) * 1000, max(extract(epoch FROM attempted_at - scheduled_at)) * 1000
		FROM river_job WHERE kind = 'aftercommit.ping' AND state = 'completed' AND metadata ? 'snoozes'`).Scan(&spacing, &late, &lateMax))
	t.Logf("slots of the jobs that waited: %.1f ms apart on average; started %.1f ms after their slot on average, %.1f ms at most", spacing, late, lateMax)
	var snoozes, delayed int64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT coalesce(sum((metadata->>'snoozes')::int), 0) FROM river_job WHERE kind = 'aftercommit.ping'`).Scan(&snoozes))
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT delayed FROM job_rate_limits WHERE rate_key = 'provider-1'`).Scan(&delayed))
	t.Logf("%d starts in the %s from the first, %d completed in all; per process %v; %d snoozes in all (%.2f per job); %d refusals",
		inSpan, span, len(starts), clients, snoozes, float64(snoozes)/float64(queued), delayed)
	// 600 ± 10, and never more than the window allows: sixty disjoint
	// seconds of 10 each.
	most := limit * int(span/period)
	require.LessOrEqual(t, inSpan, most, "starts in %s", span)
	require.InDelta(t, most, inSpan, 10, "starts in %s", span)
	require.Len(t, clients, 3, "every process started pings: %v", clients)
}
