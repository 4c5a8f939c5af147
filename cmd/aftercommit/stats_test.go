package main

import (
	"context"
	"encoding/json"
	"io"
	"regexp"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbroles/dbrolestest"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs/jobstats"
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

// setupFlowStats inserts flow-control rows, with fixed times but where a
// view counts from now():
//
//   - job_locks: billing/acct-1 with two live leases taken at 2026-01-01
//     00:00:00 and 00:01:00 and an expired one; billing/acct-2 with an
//     expired lease only;
//   - job_rate_limits: email/smtp, 2 starts per minute, started 20 s and
//     10 s ago, its refused jobs booked 45.5 s ahead; email/bulk, 10 per
//     hour, no start logged;
//   - sequences, their jobs in queue seq: orders/order-7 (head 101
//     retryable after 3 errors, 102 and 103 waiting: held and stuck);
//     orders/order-9 (107 and 108 waiting, none released: stuck); the fair
//     share stripes tenants/acme#0 (head 104 running, 105 waiting) and
//     tenants/acme#1 (head 106 available). Released at 2026-01-01 00:10:00.
func setupFlowStats(ctx context.Context, t *testing.T) []string {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	_, err := s.Pool.Exec(ctx, `
INSERT INTO job_locks (namespace, lock_key, slot, holder_job_id, acquired_at, expires_at)
VALUES ('billing', 'acct-1', 0, 1, '2026-01-01T00:01:00Z', '2100-01-01T00:00:00Z'),
       ('billing', 'acct-1', 1, 2, '2026-01-01T00:00:00Z', '2100-01-01T00:00:00Z'),
       ('billing', 'acct-1', 2, 3, '2026-01-01T00:00:00Z', '2026-01-01T00:05:00Z'),
       ('billing', 'acct-2', 0, 4, '2026-01-01T00:00:00Z', '2026-01-01T00:05:00Z')`)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `
INSERT INTO job_rate_limits (namespace, rate_key, max_starts, period, starts, next_slot, admitted, delayed, updated_at)
VALUES ('email', 'smtp', 2, interval '1 minute', ARRAY[now() - interval '20 s', now() - interval '10 s'],
        now() + interval '45.5 s', 120, 30, now()),
       ('email', 'bulk', 10, interval '1 hour', '{}', '-infinity', 5, 0, '2026-01-01T00:00:00Z')`)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `
INSERT INTO river_job (id, args, kind, queue, state, attempt, max_attempts, scheduled_at, attempted_at, errors)
SELECT j.id, '{}', 'test.seq', 'seq', j.state::river_job_state, j.attempt, 25, '2026-01-01T00:00:00Z',
       CASE WHEN j.attempt > 0 THEN now() - interval '1 minute' END,
       CASE WHEN j.id = 101 THEN ARRAY[
           '{"at": "2026-01-01T00:01:00Z", "attempt": 1, "error": "smtp: 421 try later", "trace": ""}',
           '{"at": "2026-01-01T00:02:00Z", "attempt": 2, "error": "smtp: 421 try later", "trace": ""}',
           '{"at": "2026-01-01T00:03:00Z", "attempt": 3, "error": "smtp: 550 mailbox\nunavailable", "trace": ""}']::jsonb[] END
  FROM (VALUES (101, 'retryable', 3), (102, 'pending', 0), (103, 'pending', 0), (104, 'running', 1), (105, 'pending', 0),
               (106, 'available', 0), (107, 'pending', 0), (108, 'pending', 0)) AS j (id, state, attempt)`)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `
INSERT INTO job_sequences (namespace, seq_key, width, next_pos, release_pos, released, released_at)
VALUES ('orders', 'order-7', 1, 3, 1, 1, '2026-01-01T00:10:00Z'),
       ('orders', 'order-9', 1, 2, 0, 0, NULL),
       ('tenants', 'acme#0', 1, 2, 1, 1, '2026-01-01T00:10:00Z'),
       ('tenants', 'acme#1', 1, 1, 1, 1, '2026-01-01T00:10:00Z');
INSERT INTO job_sequence_members (namespace, seq_key, pos, job_id)
VALUES ('orders', 'order-7', 0, 101), ('orders', 'order-7', 1, 102), ('orders', 'order-7', 2, 103),
       ('orders', 'order-9', 0, 107), ('orders', 'order-9', 1, 108),
       ('tenants', 'acme#0', 0, 104), ('tenants', 'acme#0', 1, 105),
       ('tenants', 'acme#1', 0, 106)`)
	require.NoError(t, err)
	return []string{"--database-url", s.URL, "--schema", s.Name}
}

// realign aligns the columns of the tables of out again, as printTable
// does, once parts of their cells are masked: cells are separated by two
// spaces or more.
func realign(t *testing.T, out string) string {
	t.Helper()
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	cells := regexp.MustCompile(`(\S) {2,}`)
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "  ") {
			line = "  " + cells.ReplaceAllString(strings.TrimPrefix(line, "  "), "$1\t")
		}
		_, err := io.WriteString(tw, line)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Flush())
	return b.String()
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

	t.Run("FlowControl", func(t *testing.T) {
		t.Parallel()
		flags := setupFlowStats(ctx, t)
		res := runCLI(ctx, t, environ, append([]string{"stats", "--job-timeout", "1h"}, flags...)...)
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Empty(t, res.stderr)
		// The booking, 45.5 s ahead when inserted, is 45 s for the second
		// after; a slower run may see less. The columns are aligned again
		// once masked: an age's width changes with the clock.
		out := ages.ReplaceAllString(timestamps.ReplaceAllString(res.stdout, "<time>"), "(<age> ago)")
		out = regexp.MustCompile(`  4[0-5]s  `).ReplaceAllString(out, "  ~45s  ")
		requireGolden(t, "stats_flow.golden", realign(t, out))

		res = runCLI(ctx, t, environ, append([]string{"stats", "--json"}, flags...)...)
		require.Equal(t, exitOK, res.code, res.stderr)
		var got statsView
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))

		t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		require.Equal(t, lockStatsView{Keys: 2, Held: 1, Holders: 2, Expired: 2, Top: []lockKeyView{
			{Namespace: "billing", Key: "acct-1", Holders: 2, Expired: 1, OldestAcquiredAt: &t0, HeldForMs: msf(got.At.Sub(t0))},
			{Namespace: "billing", Key: "acct-2", Expired: 1},
		}}, got.Locks)

		require.Len(t, got.RateLimits.Top, 2)
		smtp := got.RateLimits.Top[0]
		require.NotNil(t, smtp.LastStart)
		require.InDelta(t, 45_500, smtp.BookedAheadMs, 1000, "booked 45.5 s ahead when inserted")
		require.WithinDuration(t, got.At.Add(-10*time.Second), *smtp.LastStart, time.Second)
		require.WithinDuration(t, got.At, smtp.UpdatedAt, time.Second)
		smtp.LastStart, smtp.BookedAheadMs, smtp.UpdatedAt = nil, 0, time.Time{}
		got.RateLimits.Top[0] = smtp
		require.Equal(t, rateLimitStatsView{Keys: 2, Throttled: 1, Top: []rateLimitView{
			{Namespace: "email", Key: "smtp", MaxStarts: 2, PeriodMs: 60_000, StartsInPeriod: 2, Admitted: 120, Delayed: 30},
			{Namespace: "email", Key: "bulk", MaxStarts: 10, PeriodMs: 3_600_000, Admitted: 5, UpdatedAt: t0},
		}}, got.RateLimits)

		released := t0.Add(10 * time.Minute)
		age := msf(got.At.Sub(released))
		head := func(id int64) *int64 { return &id }
		require.Equal(t, sequenceStatsView{Sequences: 4, Waiting: 5, Running: 3, Held: 1, Stuck: 2, Top: []sequenceView{
			// Stuck first; as many waiting: by key.
			{Namespace: "orders", Key: "order-7", Width: 1, Waiting: 2, Running: 1, HeadJobID: head(101), HeadKind: "test.seq",
				HeadState: "retryable", HeadAttempt: 3, HeadErrors: 3, HeadLastError: "smtp: 550 mailbox\nunavailable",
				ReleasedAt: &released, ReleasedAgeMs: age, Held: true, Stuck: true},
			{Namespace: "orders", Key: "order-9", Width: 1, Waiting: 2, Stuck: true},
			{Namespace: "tenants", Key: "acme#0", Width: 1, Waiting: 1, Running: 1, HeadJobID: head(104), HeadKind: "test.seq",
				HeadState: "running", HeadAttempt: 1, ReleasedAt: &released, ReleasedAgeMs: age},
			{Namespace: "tenants", Key: "acme#1", Width: 1, Running: 1, HeadJobID: head(106), HeadKind: "test.seq",
				HeadState: "available", ReleasedAt: &released, ReleasedAgeMs: age},
		}}, got.Sequences)
		require.Contains(t, res.stdout, `"head_job_id": null`)
	})

	t.Run("AppRoleSeesNoLocks", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		app, _ := dbrolestest.Roles(ctx, t, s)
		flags := []string{"--database-url", app.URL, "--schema", s.Name}
		res := runCLI(ctx, t, environ, append([]string{"stats"}, flags...)...)
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Contains(t, res.stdout, `
Worker locks
  (this role may not read job_locks: the worker role may)

Rate limits
  (none)
`)
		res = runCLI(ctx, t, environ, append([]string{"stats", "--json"}, flags...)...)
		require.Equal(t, exitOK, res.code, res.stderr)
		var got statsView
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Equal(t, lockStatsView{Denied: true, Top: []lockKeyView{}}, got.Locks)
	})

	t.Run("EventRelays", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		flags := []string{"--database-url", s.URL, "--schema", s.Name}
		res := runCLI(ctx, t, environ, append([]string{"stats"}, flags...)...)
		require.Equal(t, exitOK, res.code, res.stderr)
		require.NotContains(t, res.stdout, "Events relays", "no relay ever ran: no section")
		_, err := s.Pool.Exec(ctx, `INSERT INTO outbox_events (topic, payload, created_at) VALUES ('t.a', '{}', now() - interval '90 s'), ('t.a', '{}', now())`)
		require.NoError(t, err)
		_, err = s.Pool.Exec(ctx, `INSERT INTO outbox_event_relays (stream, last_id, last_seq, owner, lease_until)
			VALUES ('AFTERCOMMIT_EVENTS', 0, 0, 'host:1:x', now() + interval '1 min')`)
		require.NoError(t, err)
		res = runCLI(ctx, t, environ, append([]string{"stats"}, flags...)...)
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Regexp(t, `(?m)^Events relays \(outbox_events to NATS JetStream; SELECT \* FROM outbox_event_relay_lag\)
  STREAM +ACTIVE RELAY +LAST EVENT +STREAM SEQ +PENDING +OLDEST PENDING +LAST ACK
  AFTERCOMMIT_EVENTS +host:1:x +0 +0 +2 +1m3\ds +never
`, res.stdout)
		res = runCLI(ctx, t, environ, append([]string{"stats", "--json"}, flags...)...)
		require.Equal(t, exitOK, res.code, res.stderr)
		var got statsView
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Len(t, got.EventRelays, 1)
		er := got.EventRelays[0]
		require.Equal(t, "AFTERCOMMIT_EVENTS", er.Stream)
		require.True(t, er.Active)
		require.Equal(t, int64(2), er.Pending)
		require.Nil(t, er.AckedAt)
		require.InDelta(t, 90_000, er.OldestPendingAgeMs, 10_000)
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
		require.Equal(t, lockStatsView{Top: []lockKeyView{}}, got.Locks)
		require.Equal(t, rateLimitStatsView{Top: []rateLimitView{}}, got.RateLimits)
		require.Equal(t, sequenceStatsView{Top: []sequenceView{}}, got.Sequences)
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

// TestPrintFlowControl: the titles say when a section lists fewer keys
// than it counts, and how periods and waits are written.
func TestPrintFlowControl(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 1, 1, 0, 0, 0, time.UTC)
	var out strings.Builder
	printLocks(&out, &jobstats.LockStats{Keys: 35, Held: 30, Holders: 40, Expired: 2, Top: []jobstats.LockKey{
		{Namespace: "ns", Key: "k", Holders: 3, OldestAcquiredAt: at.Add(-90 * time.Second), HeldFor: 90 * time.Second},
	}})
	printRateLimits(&out, &jobstats.RateLimitStats{Keys: 21, Throttled: 3, Top: []jobstats.RateLimit{
		{Namespace: "ns", Key: "a", MaxStarts: 5, Period: 90 * time.Minute, StartsInPeriod: 5, LastStart: at, BookedAhead: 1234567 * time.Microsecond, Delayed: 1},
		{Namespace: "ns", Key: "b", MaxStarts: 1, Period: 500 * time.Millisecond, BookedAhead: 61400 * time.Millisecond},
		{Namespace: "ns", Key: "c", MaxStarts: 100, Period: 24 * time.Hour},
	}})
	printSequences(&out, &jobstats.SequenceStats{Sequences: 50, Waiting: 70, Running: 40, Held: 1, Top: []jobstats.SequenceStatus{
		{Namespace: "ns", Key: "t#3", Width: 1, Waiting: 9, Running: 1, HeadJobID: 7, HeadKind: "k", HeadState: "retryable",
			HeadAttempt: 1, HeadErrors: 1, HeadLastError: strings.Repeat("x", 70), ReleasedAt: at, ReleasedAge: time.Hour, Held: true},
	}})
	require.Equal(t, `Worker locks (the 1 of 35 keys with the most holders: 40 leases live, 2 expired)
  NAMESPACE  KEY  HOLDERS  EXPIRED  OLDEST LIVE LEASE
  ns         k    3        0        2026-01-01 00:58:30 (1m30s ago)

Rate limits (the 3 of 21 keys booked furthest ahead, then the busiest: 3 with jobs booked ahead)
  NAMESPACE  KEY  LIMIT        IN PERIOD  LAST START           BOOKED AHEAD  ADMITTED  DELAYED
  ns         a    5 per 1h30m  5          2026-01-01 01:00:00  1.235s        0         1
  ns         b    1 per 500ms  0          -                    1m1s          0         0
  ns         c    100 per 24h  0          -                    -             0         0

Sequences (the 1 of 50 with unfinished jobs: every stuck one, then the most waiting; 70 jobs waiting, 40 running; 1 held, 0 stuck)
  NAMESPACE  KEY  WIDTH  WAITING  RUNNING  STATUS  HEAD JOB  KIND  STATE      ERRORS  LAST RELEASE                      LAST ERROR
  ns         t#3  1      9        1        held    7         k     retryable  1       2026-01-01 01:00:00 (1h0m0s ago)  `+strings.Repeat("x", 59)+`…

`, out.String())
}

// The vacuum section appears only when a snapshot has held back vacuum over
// the threshold, naming it, with the job tables' dead tuples.
func TestPrintVacuum(t *testing.T) {
	t.Parallel()
	var none strings.Builder
	printVacuum(&none, &jobstats.VacuumStats{Tables: []jobstats.TableHealth{{Table: "river_job", Live: 10, Dead: 2}}})
	require.Empty(t, none.String(), "nothing held back: no section")

	var out strings.Builder
	printVacuum(&out, &jobstats.VacuumStats{
		Holders: []jobstats.VacuumHolder{{Holder: "session", PID: 4242, User: "app", Application: "report", State: "idle in transaction",
			XminAge: 51234, HeldFor: 10*time.Minute + 300*time.Millisecond, Query: "SELECT sum(amount)\n  FROM donations"},
			{Holder: "replication slot", Application: "standby_b", State: "inactive", XminAge: 900}},
		Tables: []jobstats.TableHealth{{Table: "river_job", Live: 1000, Dead: 250000, LastAutovacuum: time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)},
			{Table: "job_locks", Live: 3, Dead: 0}},
	})
	require.Equal(t, `Vacuum held back (snapshots open over 1m0s, oldest first; end them or shorten them: SELECT * FROM db_vacuum_holdback)
  HOLDER            PID   USER  APPLICATION  STATE                XMIN AGE  HELD FOR  QUERY
  session           4242  app   report       idle in transaction  51234     10m0s     SELECT sum(amount) FROM donations
  replication slot  -           standby_b    inactive             900       -         

Dead tuples of the job tables
  TABLE      LIVE  DEAD    LAST AUTOVACUUM
  river_job  1000  250000  2026-12-07 09:00:00
  job_locks  3     0       never

`, out.String())
}
