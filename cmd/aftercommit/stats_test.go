package main

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// setupStats inserts jobs whose durations are exact and whose windows are
// relative to now():
//
//   - test.alpha: 4 jobs completed 5 minutes ago, run times 10–40 ms, queue
//     latencies 1–4 ms;
//   - test.beta: 1 job completed 2 hours ago (run 100 ms, latency 50 ms) and
//     1 discarded 5 minutes ago whose only error dates from 2026-01-01;
//   - 2 available jobs in q2, due since 2026-01-01;
//   - 1 test.slow job running for 10 minutes;
//   - 2 outbox rows waiting, written at 2026-01-01 00:00:00 and 00:00:30;
//   - 2 dead outbox rows, dead at 2026-01-01 00:01:00 (id 41, a reason on
//     two lines) and 00:02:00 (id 42, queue q9).
func setupStats(ctx context.Context, t *testing.T) []string {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	_, err := s.Pool.Exec(ctx, `
WITH t AS (SELECT now() - interval '5 minutes' AS fin)
INSERT INTO river_job (args, kind, queue, state, attempt, max_attempts, scheduled_at, attempted_at, finalized_at, errors)
SELECT '{}'::jsonb, 'test.alpha', 'q1', 'completed'::river_job_state, 1, 25,
       fin - (i * 10 + i) * interval '1 millisecond', fin - i * 10 * interval '1 millisecond', fin, NULL::jsonb[]
  FROM t, generate_series(1, 4) AS i
UNION ALL
SELECT '{}', 'test.beta', 'q1', 'completed', 1, 25,
       now() - interval '2 hours' - interval '150 milliseconds', now() - interval '2 hours' - interval '100 milliseconds',
       now() - interval '2 hours', NULL
UNION ALL
SELECT '{}', 'test.beta', 'q1', 'discarded', 1, 1, fin - interval '1 second', fin - interval '1 second', fin,
       ARRAY['{"at": "2026-01-01T00:00:00Z", "attempt": 1, "error": "invalid input", "trace": ""}']::jsonb[]
  FROM t
UNION ALL
SELECT '{}', 'test.gamma', 'q2', 'available', 0, 25, '2026-01-01T00:00:00Z'::timestamptz, NULL, NULL, NULL
  FROM generate_series(1, 2)
UNION ALL
SELECT '{}', 'test.slow', 'q1', 'running', 1, 25, now() - interval '10 minutes', now() - interval '10 minutes', NULL, NULL`)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `
INSERT INTO outbox_jobs (kind, args, created_at)
VALUES ('test.gamma', '{"id": 1}', '2026-01-01T00:00:30Z'), ('test.gamma', '{"id": 2}', '2026-01-01T00:00:00Z')`)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `
INSERT INTO outbox_dead_jobs (id, kind, args, queue, tx_id, created_at, dead_at, reason)
VALUES (41, 'test.nope', '{}', NULL, pg_current_xact_id(), '2026-01-01T00:00:00Z', '2026-01-01T00:01:00Z', E'unknown kind "test.nope":\nnot registered'),
       (42, 'test.gamma', '{"id": "x"}', 'q9', pg_current_xact_id(), '2026-01-01T00:00:00Z', '2026-01-01T00:02:00Z', 'args do not decode')`)
	require.NoError(t, err)
	return []string{"--database-url", s.URL, "--schema", s.Name}
}

// ages matches the age stats prints after the oldest outbox row's time.
var ages = regexp.MustCompile(`\(\w+ ago\)`)

// timestamps matches formatTime's output of a time of today.
var timestamps = regexp.MustCompile(time.Now().UTC().Format("2006-01-02") + ` \d\d:\d\d:\d\d|` +
	time.Now().UTC().Add(-3*time.Hour).Format("2006-01-02") + ` \d\d:\d\d:\d\d`)

func TestStats(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}

	t.Run("Tables", func(t *testing.T) {
		t.Parallel()
		flags := setupStats(ctx, t)
		// A timeout above 10 minutes: the running job is not stuck, and the
		// table does not depend on the clock.
		res := runCLI(ctx, t, environ, append([]string{"stats", "--job-timeout", "1h"}, flags...)...)
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Empty(t, res.stderr)
		// Timestamps relative to now() are masked; the JSON test checks them.
		requireGolden(t, "stats.golden", ages.ReplaceAllString(timestamps.ReplaceAllString(res.stdout, "<time>"), "(<age> ago)"))
	})

	t.Run("JSON", func(t *testing.T) {
		t.Parallel()
		flags := setupStats(ctx, t)
		res := runCLI(ctx, t, environ, append([]string{"stats", "--json"}, flags...)...)
		require.Equal(t, exitOK, res.code, res.stderr)
		var got statsView
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))

		require.Len(t, got.Kinds, 4) // alpha hour, alpha day, beta hour, beta day
		alphaHour := got.Kinds[0]
		require.Equal(t, "test.alpha", alphaHour.Kind)
		require.Equal(t, "hour", alphaHour.Period)
		require.Equal(t, int64(4), alphaHour.Completed)
		require.InDelta(t, 20.0, alphaHour.RunTimeP50Ms, 1e-9)
		require.InDelta(t, 40.0, alphaHour.RunTimeP99Ms, 1e-9)
		require.InDelta(t, 2.0, alphaHour.QueueLatencyP50Ms, 1e-9)
		require.InDelta(t, 4.0, alphaHour.QueueLatencyP95Ms, 1e-9)
		betaDay := got.Kinds[3]
		require.Equal(t, "test.beta", betaDay.Kind)
		require.Equal(t, "day", betaDay.Period)
		require.Equal(t, int64(1), betaDay.Completed)
		require.Equal(t, int64(1), betaDay.Discarded)
		require.InDelta(t, 100.0, betaDay.RunTimeP50Ms, 1e-9)
		require.InDelta(t, 50.0, betaDay.QueueLatencyP99Ms, 1e-9)

		require.Len(t, got.Stuck, 1, "running for 10 minutes, the default timeout is 1 minute")
		require.Equal(t, "test.slow", got.Stuck[0].Kind)
		require.GreaterOrEqual(t, got.Stuck[0].RunningForMs, float64(10*time.Minute/time.Millisecond))
		require.InDelta(t, 60_000.0, got.Stuck[0].TimeoutMs, 1e-9)
		require.Equal(t, []failingView{{Kind: "test.beta", JobID: got.Failing[0].JobID, State: "discarded", Attempt: 1, MaxAttempts: 1,
			ErrorAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Error: "invalid input"}}, got.Failing)

		oldest := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		lastDead := time.Date(2026, 1, 1, 0, 2, 0, 0, time.UTC)
		require.Len(t, got.Outbox.LatestDead, 2)
		// Args as JSON (the output is indented), then out of the comparison.
		require.JSONEq(t, `{"id": "x"}`, string(got.Outbox.LatestDead[0].Args))
		require.JSONEq(t, `{}`, string(got.Outbox.LatestDead[1].Args))
		got.Outbox.LatestDead[0].Args, got.Outbox.LatestDead[1].Args = nil, nil
		require.Equal(t, outboxStatsView{
			Depth: 2, OldestCreatedAt: &oldest, OldestAgeMs: msf(got.At.Sub(oldest)), Dead: 2, LastDeadAt: &lastDead,
			LatestDead: []outboxDeadView{
				{ID: 42, Kind: "test.gamma", Queue: "q9", CreatedAt: oldest, DeadAt: lastDead, Reason: "args do not decode"},
				{ID: 41, Kind: "test.nope", CreatedAt: oldest, DeadAt: oldest.Add(time.Minute),
					Reason: "unknown kind \"test.nope\":\nnot registered"},
			},
		}, got.Outbox)
	})

	t.Run("EmptyOutbox", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		flags := []string{"--database-url", s.URL, "--schema", s.Name}
		res := runCLI(ctx, t, environ, append([]string{"stats"}, flags...)...)
		require.Equal(t, exitOK, res.code, res.stderr)
		require.True(t, strings.HasSuffix(res.stdout, `
Outbox (jobs enqueued, not yet relayed into River's job table)
  waiting  0
  oldest   -
  dead     0

`), res.stdout)
		res = runCLI(ctx, t, environ, append([]string{"stats", "--json"}, flags...)...)
		require.Equal(t, exitOK, res.code, res.stderr)
		var got statsView
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Equal(t, outboxStatsView{LatestDead: []outboxDeadView{}}, got.Outbox)
		require.Contains(t, res.stdout, `"oldest_created_at": null`)
	})

	t.Run("BadUsage", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"stats", "now"}, "aftercommit stats: stats takes no arguments, got now\n"},
			{[]string{"stats", "--interval", "10ms"}, "aftercommit stats: --interval must be at least 100ms, got 10ms\n"},
			{[]string{"stats", "--job-timeout", "-1s"}, "aftercommit stats: --job-timeout must not be negative, got -1s\n"},
		} {
			res := runCLI(ctx, t, environ, tc.args...)
			require.Equal(t, exitUsage, res.code, "%v", tc.args)
			require.Equal(t, tc.want+"Run 'aftercommit stats --help' for usage.\n", res.stderr)
		}
	})

	t.Run("WatchStopsOnInterrupt", func(t *testing.T) {
		t.Parallel()
		flags := setupStats(ctx, t)
		// The interrupt comes as soon as the third print is out (the
		// deadline is a backstop for a watch that stopped printing).
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		stdout := &interruptAfter{marker: "Jobs by kind, last hour", n: 3, interrupt: cancel}
		var stderr strings.Builder
		code := run(wctx, append([]string{"stats", "--watch", "--interval", "200ms", "--job-timeout", "1h"}, flags...),
			func(k string) string { return environ[k] }, stdout, &stderr)
		require.Equal(t, exitOK, code, stderr.String())
		require.True(t, stdout.interrupted(), "the watch stopped before its third print")
		require.GreaterOrEqual(t, strings.Count(stdout.String(), "Jobs by kind, last hour"), 3, "printed again every interval")
	})
}

// interruptAfter collects what it is written and calls interrupt once marker
// has been written n times.
type interruptAfter struct {
	marker    string
	n         int
	interrupt func()

	mu   sync.Mutex
	buf  strings.Builder
	done bool
}

func (w *interruptAfter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.done && strings.Count(w.buf.String(), w.marker) >= w.n {
		w.done = true
		w.interrupt()
	}
	return len(p), nil
}

func (w *interruptAfter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func (w *interruptAfter) interrupted() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.done
}
