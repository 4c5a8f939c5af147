package jobstats_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs/jobstats"
)

const ms = time.Millisecond

// statsJob is a river_job row with every timestamp chosen by the test.
type statsJob struct {
	kind, queue string
	state       rivertype.JobState
	attempt     int
	maxAttempts int // 0: 25
	scheduledAt time.Time
	attemptedAt time.Time // zero: NULL
	finalizedAt time.Time // zero: NULL
	attemptedBy []string
	errors      []rivertype.AttemptError // nil: NULL; empty: '{}'
}

const statsInsertSQL = `
INSERT INTO river_job (kind, queue, state, attempt, max_attempts, scheduled_at, attempted_at, finalized_at,
                       attempted_by, errors, args)
VALUES ($1, $2, $3::text::river_job_state, $4, $5, $6, $7, $8, $9, $10::text[]::jsonb[], '{}')
RETURNING id`

// insertStatsJobs inserts jobs in order, in one round trip, and returns
// their ids.
func insertStatsJobs(ctx context.Context, t *testing.T, pool *pgxpool.Pool, js ...statsJob) []int64 {
	t.Helper()
	nullTime := func(at time.Time) *time.Time {
		if at.IsZero() {
			return nil
		}
		return &at
	}
	ids := make([]int64, len(js))
	batch := &pgx.Batch{}
	for i, j := range js {
		var errs []string
		if j.errors != nil {
			errs = []string{}
			for _, e := range j.errors {
				b, err := json.Marshal(e)
				require.NoError(t, err)
				errs = append(errs, string(b))
			}
		}
		maxAttempts := j.maxAttempts
		if maxAttempts == 0 {
			maxAttempts = 25
		}
		batch.Queue(statsInsertSQL, j.kind, j.queue, string(j.state), j.attempt, maxAttempts,
			j.scheduledAt, nullTime(j.attemptedAt), nullTime(j.finalizedAt), j.attemptedBy, errs,
		).QueryRow(func(row pgx.Row) error { return row.Scan(&ids[i]) })
	}
	require.NoError(t, pool.SendBatch(ctx, batch).Close())
	return ids
}

// statsFixture is a schema holding jobs of five kinds whose every timestamp
// is relative to base, the database's now() before they were inserted:
//
//   - stats.a: 100 jobs completed half an hour ago with run times 1..100 ms
//     and queue latencies 10..1000 ms, inserted in random order; 10 completed
//     two hours ago (day only) with run times 200..1100 ms and latencies
//     2..11 s; one discarded a quarter of an hour ago after a 5 s attempt
//     (no percentile may see it); one completed 30 hours ago (no window).
//   - stats.b: a retryable job with errors 50 and 10 minutes ago; a
//     discarded job (inserted later) with errors 3 h, 2.5 h and 20 minutes
//     ago; a job completed 30 hours ago after an error just before.
//   - stats.c: a job cancelled 40 minutes ago before it ever ran.
//   - stats.d: running jobs started 5 minutes, 10 seconds and 3 minutes ago;
//     the first one failed an attempt 6 minutes ago.
//   - stats.e: 4 available jobs (one with an empty errors array), 2
//     scheduled in the future.
type statsFixture struct {
	schema *dbtest.Schema
	base   time.Time

	aDiscarded, bRetryable, dRunning5m, dRunning3m int64

	// the times queue_depth reports
	aAncientSched, aDiscardedSched, cSched, bAncientSched, bDiscardedSched, bRetryableSched time.Time
}

func setupStatsFixture(ctx context.Context, t *testing.T) *statsFixture {
	t.Helper()
	f := &statsFixture{schema: dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})}
	require.NoError(t, f.schema.Pool.QueryRow(ctx, `SELECT now()`).Scan(&f.base))
	f.base = f.base.UTC()
	base := f.base
	ago := func(d time.Duration) time.Time { return base.Add(-d) }

	var a []statsJob
	for _, i := range rand.Perm(100) {
		n := time.Duration(i + 1)
		sched := ago(30 * time.Minute)
		att := sched.Add(10 * n * ms)
		a = append(a, statsJob{
			kind: "stats.a", queue: "stats_a", state: rivertype.JobStateCompleted, attempt: 1,
			scheduledAt: sched, attemptedAt: att, finalizedAt: att.Add(n * ms),
		})
	}
	for k := time.Duration(1); k <= 10; k++ {
		sched := ago(2 * time.Hour)
		att := sched.Add((1 + k) * time.Second)
		a = append(a, statsJob{
			kind: "stats.a", queue: "stats_a", state: rivertype.JobStateCompleted, attempt: 1,
			scheduledAt: sched, attemptedAt: att, finalizedAt: att.Add((100 + 100*k) * ms),
		})
	}
	f.aAncientSched = ago(30*time.Hour + 2*time.Second)
	f.aDiscardedSched = ago(15*time.Minute + 65*time.Second)
	a = append(a,
		statsJob{
			kind: "stats.a", queue: "stats_a", state: rivertype.JobStateCompleted, attempt: 1,
			scheduledAt: f.aAncientSched, attemptedAt: ago(30*time.Hour + time.Second), finalizedAt: ago(30 * time.Hour),
		},
		statsJob{
			kind: "stats.a", queue: "stats_a", state: rivertype.JobStateDiscarded, attempt: 1, maxAttempts: 1,
			scheduledAt: f.aDiscardedSched, attemptedAt: ago(15*time.Minute + 5*time.Second), finalizedAt: ago(15 * time.Minute),
			errors: []rivertype.AttemptError{{At: ago(15 * time.Minute), Attempt: 1, Error: "a: panic: boom", Trace: "goroutine 7 [running]:\nstats.a()"}},
		},
	)
	ids := insertStatsJobs(ctx, t, f.schema.Pool, a...)
	f.aDiscarded = ids[len(ids)-1]

	f.bRetryableSched = base.Add(time.Minute)
	f.bDiscardedSched = ago(20*time.Minute + 31*time.Second)
	f.bAncientSched = ago(30*time.Hour + 70*time.Second)
	f.cSched = ago(41 * time.Minute)
	ids = insertStatsJobs(ctx, t, f.schema.Pool,
		statsJob{
			kind: "stats.b", queue: "stats_b", state: rivertype.JobStateRetryable, attempt: 2, maxAttempts: 5,
			scheduledAt: f.bRetryableSched, attemptedAt: ago(10*time.Minute + 3*time.Second), attemptedBy: []string{"host-a", "host-b"},
			errors: []rivertype.AttemptError{
				{At: ago(50 * time.Minute), Attempt: 1, Error: "b: first"},
				{At: ago(10 * time.Minute), Attempt: 2, Error: "b: second"},
			},
		},
		statsJob{
			kind: "stats.b", queue: "stats_b", state: rivertype.JobStateDiscarded, attempt: 3, maxAttempts: 3,
			scheduledAt: f.bDiscardedSched, attemptedAt: ago(20*time.Minute + time.Second), finalizedAt: ago(20 * time.Minute),
			errors: []rivertype.AttemptError{
				{At: ago(3 * time.Hour), Attempt: 1, Error: "b: old 1"},
				{At: ago(150 * time.Minute), Attempt: 2, Error: "b: old 2"},
				{At: ago(20 * time.Minute), Attempt: 3, Error: "b: last"},
			},
		},
		statsJob{
			kind: "stats.b", queue: "stats_b", state: rivertype.JobStateCompleted, attempt: 2,
			scheduledAt: f.bAncientSched, attemptedAt: ago(30*time.Hour + 60*time.Second), finalizedAt: ago(30 * time.Hour),
			errors: []rivertype.AttemptError{{At: ago(30*time.Hour + 90*time.Second), Attempt: 1, Error: "b: ancient"}},
		},
		statsJob{
			kind: "stats.c", queue: "stats_a", state: rivertype.JobStateCancelled,
			scheduledAt: f.cSched, finalizedAt: ago(40 * time.Minute),
		},
		statsJob{
			kind: "stats.d", queue: "stats_b", state: rivertype.JobStateRunning, attempt: 2,
			scheduledAt: ago(5*time.Minute + time.Second), attemptedAt: ago(5 * time.Minute), attemptedBy: []string{"host-1", "host-2"},
			errors: []rivertype.AttemptError{{At: ago(6 * time.Minute), Attempt: 1, Error: "d: timeout"}},
		},
		statsJob{
			kind: "stats.d", queue: "stats_b", state: rivertype.JobStateRunning, attempt: 1,
			scheduledAt: ago(11 * time.Second), attemptedAt: ago(10 * time.Second), attemptedBy: []string{"host-1"},
		},
		statsJob{
			kind: "stats.d", queue: "stats_b", state: rivertype.JobStateRunning, attempt: 1,
			scheduledAt: ago(3*time.Minute + time.Second), attemptedAt: ago(3 * time.Minute),
		},
		statsJob{kind: "stats.e", queue: "stats_c", state: rivertype.JobStateAvailable, scheduledAt: ago(time.Minute)},
		statsJob{kind: "stats.e", queue: "stats_c", state: rivertype.JobStateAvailable, scheduledAt: ago(2 * time.Minute)},
		statsJob{kind: "stats.e", queue: "stats_c", state: rivertype.JobStateAvailable, scheduledAt: ago(30 * time.Second)},
		statsJob{kind: "stats.e", queue: "stats_c", state: rivertype.JobStateAvailable, scheduledAt: ago(10 * time.Second), errors: []rivertype.AttemptError{}},
		statsJob{kind: "stats.e", queue: "stats_c", state: rivertype.JobStateScheduled, scheduledAt: base.Add(2 * time.Hour)},
		statsJob{kind: "stats.e", queue: "stats_c", state: rivertype.JobStateScheduled, scheduledAt: base.Add(time.Hour)},
	)
	f.bRetryable, f.dRunning5m, f.dRunning3m = ids[0], ids[4], ids[6]
	return f
}

// requireKinds checks r.Kinds against the fixture, row by row.
func (f *statsFixture) requireKinds(t *testing.T, r *jobstats.Report) {
	t.Helper()
	hour, day := r.At.UTC().Add(-time.Hour), r.At.UTC().Add(-24*time.Hour)
	require.Equal(t, []jobstats.KindStats{
		{
			Kind: "stats.a", Period: jobstats.PeriodHour, Since: hour,
			Completed: 100, Failed: 1, Discarded: 1,
			// percentile_disc of 1..100 ms: the 50th, 95th and 99th values
			// (percentile_cont would give 50.5, 95.05 and 99.01 ms; counting
			// the discarded job's 5 s would make p99 the 100th value).
			RunTimeP50: 50 * ms, RunTimeP95: 95 * ms, RunTimeP99: 99 * ms,
			QueueLatencyP50: 500 * ms, QueueLatencyP95: 950 * ms, QueueLatencyP99: 990 * ms,
		},
		{
			Kind: "stats.a", Period: jobstats.PeriodDay, Since: day,
			Completed: 110, Failed: 1, Discarded: 1,
			// 110 values, 1..100 ms then 200..1100 ms: the 55th, the 105th
			// (the 5th of the older ones) and the 109th (the 9th).
			RunTimeP50: 55 * ms, RunTimeP95: 600 * ms, RunTimeP99: 1000 * ms,
			QueueLatencyP50: 550 * ms, QueueLatencyP95: 6 * time.Second, QueueLatencyP99: 10 * time.Second,
		},
		// Errors 50, 10 and 20 minutes ago; 3 h and 2.5 h ago in the day
		// only; the one 30 hours ago in neither.
		{Kind: "stats.b", Period: jobstats.PeriodHour, Since: hour, Failed: 3, Discarded: 1},
		{Kind: "stats.b", Period: jobstats.PeriodDay, Since: day, Failed: 5, Discarded: 1},
		{Kind: "stats.c", Period: jobstats.PeriodHour, Since: hour, Cancelled: 1},
		{Kind: "stats.c", Period: jobstats.PeriodDay, Since: day, Cancelled: 1},
		// A running job's earlier failed attempt.
		{Kind: "stats.d", Period: jobstats.PeriodHour, Since: hour, Failed: 1},
		{Kind: "stats.d", Period: jobstats.PeriodDay, Since: day, Failed: 1},
	}, normalizeKinds(r.Kinds))
	_, ok := r.Kind("stats.e", jobstats.PeriodDay)
	require.False(t, ok, "a kind that finalized nothing and failed nothing has no row")
}

// requireQueues checks r.Queues against the fixture.
func (f *statsFixture) requireQueues(t *testing.T, r *jobstats.Report) {
	t.Helper()
	ago := func(d time.Duration) time.Time { return f.base.Add(-d) }
	require.Equal(t, []jobstats.QueueDepth{
		{Queue: "stats_a", State: rivertype.JobStateCancelled, Jobs: 1, OldestScheduledAt: f.cSched},
		{Queue: "stats_a", State: rivertype.JobStateCompleted, Jobs: 111, OldestScheduledAt: f.aAncientSched},
		{Queue: "stats_a", State: rivertype.JobStateDiscarded, Jobs: 1, OldestScheduledAt: f.aDiscardedSched},
		{Queue: "stats_b", State: rivertype.JobStateCompleted, Jobs: 1, OldestScheduledAt: f.bAncientSched},
		{Queue: "stats_b", State: rivertype.JobStateDiscarded, Jobs: 1, OldestScheduledAt: f.bDiscardedSched},
		{Queue: "stats_b", State: rivertype.JobStateRetryable, Jobs: 1, OldestScheduledAt: f.bRetryableSched},
		{Queue: "stats_b", State: rivertype.JobStateRunning, Jobs: 3, OldestScheduledAt: ago(5*time.Minute + time.Second)},
		{Queue: "stats_c", State: rivertype.JobStateAvailable, Jobs: 4, OldestScheduledAt: ago(2 * time.Minute)},
		{Queue: "stats_c", State: rivertype.JobStateScheduled, Jobs: 2, OldestScheduledAt: f.base.Add(time.Hour)},
	}, normalizeQueues(r.Queues))
}

// requireStuck checks r.Stuck for a job timeout of timeout: 1 minute
// catches the jobs running for 5 and 3 minutes, 4 minutes only the first.
func (f *statsFixture) requireStuck(t *testing.T, r *jobstats.Report, timeout time.Duration) {
	t.Helper()
	at5m, at3m := f.base.Add(-5*time.Minute), f.base.Add(-3*time.Minute)
	want := []jobstats.StuckJob{{
		ID: f.dRunning5m, Kind: "stats.d", Queue: "stats_b", Attempt: 2, MaxAttempts: 25,
		AttemptedAt: at5m, AttemptedBy: "host-2", RunningFor: r.At.Sub(at5m), Timeout: timeout,
	}}
	if timeout < 3*time.Minute {
		want = append(want, jobstats.StuckJob{
			ID: f.dRunning3m, Kind: "stats.d", Queue: "stats_b", Attempt: 1, MaxAttempts: 25,
			AttemptedAt: at3m, RunningFor: r.At.Sub(at3m), Timeout: timeout,
		})
	}
	require.Equal(t, want, normalizeStuck(r.Stuck))
}

// requireFailing checks r.Failing against the fixture.
func (f *statsFixture) requireFailing(t *testing.T, r *jobstats.Report) {
	t.Helper()
	ago := func(d time.Duration) time.Time { return f.base.Add(-d) }
	require.Equal(t, []jobstats.FailingJob{
		{
			Kind: "stats.a", JobID: f.aDiscarded, State: rivertype.JobStateDiscarded, Attempt: 1, MaxAttempts: 1,
			ErrorAt: ago(15 * time.Minute), Error: "a: panic: boom", Trace: "goroutine 7 [running]:\nstats.a()",
		},
		// The retryable job's error of 10 minutes ago beats the discarded
		// job's of 20 minutes ago, although that job's id is higher.
		{
			Kind: "stats.b", JobID: f.bRetryable, State: rivertype.JobStateRetryable, Attempt: 2, MaxAttempts: 5,
			ErrorAt: ago(10 * time.Minute), Error: "b: second",
		},
		{
			Kind: "stats.d", JobID: f.dRunning5m, State: rivertype.JobStateRunning, Attempt: 1, MaxAttempts: 25,
			ErrorAt: ago(6 * time.Minute), Error: "d: timeout",
		},
	}, normalizeFailing(r.Failing))
}

func (f *statsFixture) requireReport(t *testing.T, r *jobstats.Report, timeout time.Duration) {
	t.Helper()
	require.WithinDuration(t, time.Now(), r.At, time.Minute)
	require.False(t, r.At.Before(f.base))
	f.requireKinds(t, r)
	f.requireQueues(t, r)
	f.requireStuck(t, r, timeout)
	f.requireFailing(t, r)
}

// The normalize functions put every time in UTC, so that require.Equal
// compares instants whatever the location pgx decoded them in.

func normalizeKinds(ks []jobstats.KindStats) []jobstats.KindStats {
	for i := range ks {
		ks[i].Since = ks[i].Since.UTC()
	}
	return ks
}

func normalizeQueues(qs []jobstats.QueueDepth) []jobstats.QueueDepth {
	for i := range qs {
		qs[i].OldestScheduledAt = qs[i].OldestScheduledAt.UTC()
	}
	return qs
}

func normalizeStuck(ss []jobstats.StuckJob) []jobstats.StuckJob {
	for i := range ss {
		ss[i].AttemptedAt = ss[i].AttemptedAt.UTC()
	}
	return ss
}

func normalizeFailing(fs []jobstats.FailingJob) []jobstats.FailingJob {
	for i := range fs {
		fs[i].ErrorAt = fs[i].ErrorAt.UTC()
	}
	return fs
}

// readViews reads the four views with SELECT * in one transaction, with
// aftercommit.job_timeout set to jobTimeout unless it is "", and converts
// the generic rows into a report. It shares no code with jobstats.Collect.
func readViews(ctx context.Context, t *testing.T, pool *pgxpool.Pool, jobTimeout string) *jobstats.Report {
	t.Helper()
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	require.NoError(t, err)
	defer func() { require.NoError(t, tx.Rollback(ctx)) }()
	if jobTimeout != "" {
		_, err := tx.Exec(ctx, `SET LOCAL aftercommit.job_timeout = '`+jobTimeout+`'`)
		require.NoError(t, err)
	}
	r := &jobstats.Report{}
	require.NoError(t, tx.QueryRow(ctx, `SELECT now()`).Scan(&r.At))

	for _, m := range selectAll(ctx, t, tx, "job_kind_stats") {
		require.Len(t, m, 13)
		r.Kinds = append(r.Kinds, jobstats.KindStats{
			Kind: col[string](t, m, "kind"), Period: jobstats.Period(col[string](t, m, "period")), Since: col[time.Time](t, m, "since"),
			Completed: col[int64](t, m, "completed"), Failed: col[int64](t, m, "failed"),
			Discarded: col[int64](t, m, "discarded"), Cancelled: col[int64](t, m, "cancelled"),
			RunTimeP50: viewDuration(t, m["run_time_p50"]), RunTimeP95: viewDuration(t, m["run_time_p95"]),
			RunTimeP99: viewDuration(t, m["run_time_p99"]), QueueLatencyP50: viewDuration(t, m["queue_latency_p50"]),
			QueueLatencyP95: viewDuration(t, m["queue_latency_p95"]), QueueLatencyP99: viewDuration(t, m["queue_latency_p99"]),
		})
	}
	for _, m := range selectAll(ctx, t, tx, "queue_depth") {
		require.Len(t, m, 4)
		r.Queues = append(r.Queues, jobstats.QueueDepth{
			Queue: col[string](t, m, "queue"), State: rivertype.JobState(viewText(t, m["state"])),
			Jobs: col[int64](t, m, "jobs"), OldestScheduledAt: col[time.Time](t, m, "oldest_scheduled_at"),
		})
	}
	for _, m := range selectAll(ctx, t, tx, "stuck_jobs") {
		require.Len(t, m, 9)
		r.Stuck = append(r.Stuck, jobstats.StuckJob{
			ID: col[int64](t, m, "id"), Kind: col[string](t, m, "kind"), Queue: col[string](t, m, "queue"),
			Attempt: int(col[int16](t, m, "attempt")), MaxAttempts: int(col[int16](t, m, "max_attempts")),
			AttemptedAt: col[time.Time](t, m, "attempted_at"), AttemptedBy: viewText(t, m["attempted_by"]),
			RunningFor: viewDuration(t, m["running_for"]), Timeout: viewDuration(t, m["timeout"]),
		})
	}
	for _, m := range selectAll(ctx, t, tx, "failing_jobs") {
		require.Len(t, m, 8)
		r.Failing = append(r.Failing, jobstats.FailingJob{
			Kind: col[string](t, m, "kind"), JobID: col[int64](t, m, "job_id"), State: rivertype.JobState(viewText(t, m["state"])),
			Attempt: int(col[int32](t, m, "attempt")), MaxAttempts: int(col[int16](t, m, "max_attempts")),
			ErrorAt: col[time.Time](t, m, "error_at"), Error: viewText(t, m["error"]), Trace: viewText(t, m["trace"]),
		})
	}
	return r
}

func selectAll(ctx context.Context, t *testing.T, tx pgx.Tx, view string) []map[string]any {
	t.Helper()
	rows, err := tx.Query(ctx, `SELECT * FROM `+view)
	require.NoError(t, err)
	rowMaps, err := pgx.CollectRows(rows, pgx.RowToMap)
	require.NoError(t, err)
	return rowMaps
}

// viewDuration converts an interval column (months and days as 30 and 1
// days, as pgx does) and NULL to 0.
func viewDuration(t *testing.T, v any) time.Duration {
	t.Helper()
	if v == nil {
		return 0
	}
	iv, ok := v.(pgtype.Interval)
	require.True(t, ok, "not an interval: %T", v)
	return time.Duration(iv.Months)*30*24*time.Hour + time.Duration(iv.Days)*24*time.Hour + time.Duration(iv.Microseconds)*time.Microsecond
}

// viewText converts a text or enum column, and NULL to "".
// col is the column key of row m, of type T; the test fails, rather than
// panics, when the view returns another type.
func col[T any](t *testing.T, m map[string]any, key string) T {
	t.Helper()
	v, ok := m[key].(T)
	require.Truef(t, ok, "column %s: %T, want %T", key, m[key], v)
	return v
}

func viewText(t *testing.T, v any) string {
	t.Helper()
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case []byte:
		return string(v)
	}
	require.Failf(t, "not text", "%T", v)
	return ""
}

func TestCollect(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ViewsReturnExactValues", func(t *testing.T) {
		t.Parallel()
		f := setupStatsFixture(ctx, t)
		f.requireReport(t, readViews(ctx, t, f.schema.Pool, ""), time.Minute)
	})

	t.Run("StatsReturnsWhatTheViewsReturn", func(t *testing.T) {
		t.Parallel()
		f := setupStatsFixture(ctx, t)
		r, err := jobstats.Collect(ctx, f.schema.Pool, nil)
		require.NoError(t, err)
		f.requireReport(t, r, jobstats.JobTimeoutDefault)

		k, ok := r.Kind("stats.a", jobstats.PeriodHour)
		require.True(t, ok)
		require.Equal(t, 99*ms, k.RunTimeP99)
	})

	t.Run("JobTimeoutSetting", func(t *testing.T) {
		t.Parallel()
		f := setupStatsFixture(ctx, t)

		f.requireStuck(t, readViews(ctx, t, f.schema.Pool, "4 min"), 4*time.Minute)
		require.Empty(t, readViews(ctx, t, f.schema.Pool, "10 min").Stuck)

		r, err := jobstats.Collect(ctx, f.schema.Pool, &jobstats.Opts{JobTimeout: 4 * time.Minute})
		require.NoError(t, err)
		f.requireStuck(t, r, 4*time.Minute)
		r, err = jobstats.Collect(ctx, f.schema.Pool, &jobstats.Opts{JobTimeout: 90 * time.Second})
		require.NoError(t, err)
		f.requireStuck(t, r, 90*time.Second)

		// The setting lasts for Collect's transaction only; a connection's own
		// setting applies when Opts has none.
		r, err = jobstats.Collect(ctx, f.schema.Pool, nil)
		require.NoError(t, err)
		f.requireStuck(t, r, time.Minute)
		conn, err := pgx.Connect(ctx, f.schema.URL+"&aftercommit.job_timeout=4min")
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, conn.Close(context.WithoutCancel(ctx))) })
		r, err = jobstats.Collect(ctx, conn, nil)
		require.NoError(t, err)
		f.requireStuck(t, r, 4*time.Minute)
	})

	t.Run("PercentilesOfSmallSamples", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
		var base time.Time
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT now()`).Scan(&base))
		completed := func(kind string, run time.Duration) statsJob {
			att := base.Add(-time.Minute)
			return statsJob{
				kind: kind, queue: "small", state: rivertype.JobStateCompleted, attempt: 1,
				scheduledAt: att.Add(-2 * run), attemptedAt: att, finalizedAt: att.Add(run),
			}
		}
		// Run times 40, 10, 30, 20 ms: percentile_cont's median would be 25 ms.
		insertStatsJobs(ctx, t, s.Pool,
			completed("small.four", 40*ms), completed("small.four", 10*ms),
			completed("small.four", 30*ms), completed("small.four", 20*ms),
			completed("small.one", 1500*time.Microsecond),
		)
		r, err := jobstats.Collect(ctx, s.Pool, nil)
		require.NoError(t, err)
		require.Len(t, r.Kinds, 4)

		k, ok := r.Kind("small.four", jobstats.PeriodHour)
		require.True(t, ok)
		require.Equal(t, int64(4), k.Completed)
		require.Equal(t, [6]time.Duration{20 * ms, 40 * ms, 40 * ms, 40 * ms, 80 * ms, 80 * ms},
			[6]time.Duration{k.RunTimeP50, k.RunTimeP95, k.RunTimeP99, k.QueueLatencyP50, k.QueueLatencyP95, k.QueueLatencyP99})

		k, ok = r.Kind("small.one", jobstats.PeriodDay)
		require.True(t, ok)
		require.Equal(t, [6]time.Duration{1500 * time.Microsecond, 1500 * time.Microsecond, 1500 * time.Microsecond, 3 * ms, 3 * ms, 3 * ms},
			[6]time.Duration{k.RunTimeP50, k.RunTimeP95, k.RunTimeP99, k.QueueLatencyP50, k.QueueLatencyP95, k.QueueLatencyP99})
	})

	t.Run("RunTimesOverADay", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
		var base time.Time
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT now()`).Scan(&base))
		// finalized_at - attempted_at of 25 hours is '1 day 01:00:00'.
		insertStatsJobs(ctx, t, s.Pool, statsJob{
			kind: "long", queue: "long", state: rivertype.JobStateCompleted, attempt: 1,
			scheduledAt: base.Add(-27 * time.Hour), attemptedAt: base.Add(-26 * time.Hour), finalizedAt: base.Add(-time.Hour / 2),
		})
		r, err := jobstats.Collect(ctx, s.Pool, nil)
		require.NoError(t, err)
		k, ok := r.Kind("long", jobstats.PeriodHour)
		require.True(t, ok)
		require.Equal(t, 25*time.Hour+30*time.Minute, k.RunTimeP50)
		require.Equal(t, time.Hour, k.QueueLatencyP99)
	})

	t.Run("EmptySchema", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
		r, err := jobstats.Collect(ctx, s.Pool, nil)
		require.NoError(t, err)
		require.WithinDuration(t, time.Now(), r.At, time.Minute)
		require.Empty(t, r.Kinds)
		require.Empty(t, r.Queues)
		require.Empty(t, r.Stuck)
		require.Empty(t, r.Failing)
		require.Equal(t, jobstats.OutboxStats{LatestDead: []jobstats.OutboxDeadRow{}}, r.Outbox, "an empty outbox: zeros")
	})

	t.Run("EventRelays", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
		var base time.Time
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT date_trunc('second', now())`).Scan(&base))
		base = base.UTC()
		// Five events, two of another topic; stream A has sent up to the
		// second (its relay holds the lease), B carries topic t.b only
		// and never sent one (its lease expired).
		_, err := s.Pool.Exec(ctx, `
			INSERT INTO outbox_events (topic, payload, created_at)
			SELECT CASE WHEN g IN (2, 4) THEN 't.b' ELSE 't.a' END, '{}', $1::timestamptz - make_interval(secs => 60 - g)
			  FROM generate_series(1, 5) AS g`, base)
		require.NoError(t, err)
		_, err = s.Pool.Exec(ctx, `
			INSERT INTO outbox_event_relays (stream, topics, last_id, last_seq, owner, lease_until, acked_at)
			VALUES ('A', NULL, 2, 2, 'host:1:x', now() + interval '1 min', $1::timestamptz),
			       ('B', '{t.b}', 0, 0, 'host:2:y', now() - interval '1 min', NULL)`, base)
		require.NoError(t, err)
		r, err := jobstats.Collect(ctx, s.Pool, nil)
		require.NoError(t, err)
		require.Len(t, r.EventRelays, 2)
		a, b := r.EventRelays[0], r.EventRelays[1]
		require.Equal(t, jobstats.EventRelay{Stream: "A", Owner: "host:1:x", Active: true, LastID: 2, LastSeq: 2, AckedAt: base,
			Pending: 3, OldestPendingAt: base.Add(-57 * time.Second), OldestPendingAge: r.At.Sub(base.Add(-57 * time.Second))},
			utcRelay(a))
		require.Equal(t, jobstats.EventRelay{Stream: "B", Owner: "host:2:y", Active: false, Pending: 2,
			OldestPendingAt: base.Add(-58 * time.Second), OldestPendingAge: r.At.Sub(base.Add(-58 * time.Second))}, utcRelay(b))
	})

	t.Run("Outbox", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
		var base time.Time
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT date_trunc('second', now())`).Scan(&base))
		base = base.UTC()
		ago := func(d time.Duration) time.Time { return base.Add(-d) }
		// Three rows waiting, the oldest written 90 s before base; seven
		// dead rows, dead 1..7 minutes before base (id 107 the latest); a
		// row of a transaction still open, which Collect does not see.
		_, err := s.Pool.Exec(ctx, `
			INSERT INTO outbox_jobs (kind, args, queue, created_at)
			VALUES ('k.a', '{"id": 1}', NULL, $1::timestamptz - interval '30 s'),
			       ('k.a', '{"id": 2}', 'q', $1::timestamptz - interval '90 s'),
			       ('k.b', '{"id": 3}', NULL, $1::timestamptz - interval '10 s')`, base)
		require.NoError(t, err)
		_, err = s.Pool.Exec(ctx, `
			INSERT INTO outbox_dead_jobs (id, kind, args, queue, tx_id, created_at, dead_at, reason)
			SELECT 100 + i, CASE WHEN i % 2 = 0 THEN 'k.nope' ELSE 'k.a' END,
			       jsonb_build_object('id', i), CASE WHEN i = 7 THEN 'q' END, pg_current_xact_id(),
			       $1::timestamptz - interval '1 h', $1::timestamptz - (8 - i) * interval '1 min', 'reason ' || i
			  FROM generate_series(1, 7) AS i`, base)
		require.NoError(t, err)
		open, err := s.Pool.Begin(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { _ = open.Rollback(context.WithoutCancel(ctx)) })
		_, err = open.Exec(ctx, `INSERT INTO outbox_jobs (kind, args, created_at) VALUES ('k.a', '{}', now() - interval '1 day')`)
		require.NoError(t, err)

		deadRow := func(i int64, kind, queue string) jobstats.OutboxDeadRow {
			return jobstats.OutboxDeadRow{
				ID: 100 + i, Kind: kind, Queue: queue, Args: []byte(fmt.Sprintf(`{"id": %d}`, i)),
				CreatedAt: ago(time.Hour), DeadAt: ago(time.Duration(8-i) * time.Minute), Reason: fmt.Sprintf("reason %d", i),
			}
		}
		normalize := func(o jobstats.OutboxStats) jobstats.OutboxStats {
			o.OldestCreatedAt, o.LastDeadAt = o.OldestCreatedAt.UTC(), o.LastDeadAt.UTC()
			for i := range o.LatestDead {
				o.LatestDead[i].CreatedAt, o.LatestDead[i].DeadAt = o.LatestDead[i].CreatedAt.UTC(), o.LatestDead[i].DeadAt.UTC()
			}
			return o
		}

		r, err := jobstats.Collect(ctx, s.Pool, nil)
		require.NoError(t, err)
		require.Equal(t, jobstats.OutboxStats{
			Depth: 3, OldestCreatedAt: ago(90 * time.Second), OldestAge: r.At.Sub(ago(90 * time.Second)),
			Dead: 7, LastDeadAt: ago(time.Minute),
			LatestDead: []jobstats.OutboxDeadRow{
				deadRow(7, "k.a", "q"), deadRow(6, "k.nope", ""), deadRow(5, "k.a", ""), deadRow(4, "k.nope", ""), deadRow(3, "k.a", ""),
			},
		}, normalize(r.Outbox), "the default: the 5 latest dead rows")

		r, err = jobstats.Collect(ctx, s.Pool, &jobstats.Opts{OutboxDeadRows: 2})
		require.NoError(t, err)
		require.Equal(t, []jobstats.OutboxDeadRow{deadRow(7, "k.a", "q"), deadRow(6, "k.nope", "")}, normalize(r.Outbox).LatestDead)
		r, err = jobstats.Collect(ctx, s.Pool, &jobstats.Opts{OutboxDeadRows: -1})
		require.NoError(t, err)
		require.Empty(t, r.Outbox.LatestDead)
		require.Equal(t, int64(7), r.Outbox.Dead, "counted whatever the rows shown")
	})

	t.Run("Errors", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})

		_, err := jobstats.Collect(ctx, nil, nil)
		require.EqualError(t, err, "jobstats: Collect needs a database")

		_, err = jobstats.Collect(ctx, s.Pool, &jobstats.Opts{JobTimeout: -time.Second})
		require.EqualError(t, err, "jobstats: Opts.JobTimeout -1s is negative")

		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		_, err = jobstats.Collect(cancelled, s.Pool, nil)
		require.ErrorIs(t, err, context.Canceled)

		// Without the views (a database not migrated to 0015), the error
		// names the missing relation and wraps the driver's error.
		conn, err := pgx.Connect(ctx, s.URL)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, conn.Close(context.WithoutCancel(ctx))) })
		_, err = conn.Exec(ctx, `SET search_path TO pg_catalog`)
		require.NoError(t, err)
		_, err = jobstats.Collect(ctx, conn, nil)
		require.ErrorContains(t, err, "jobstats: reading job stats: ")
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		require.Equal(t, "42P01", pgErr.Code) // undefined_table
		require.Equal(t, `relation "job_kind_stats" does not exist`, pgErr.Message)
	})
}

// Collect reads pools and single connections alike.
var (
	_ jobstats.DB = (*pgxpool.Pool)(nil)
	_ jobstats.DB = (*pgx.Conn)(nil)
)

// utcRelay returns r with its times in UTC, for comparisons.
func utcRelay(r jobstats.EventRelay) jobstats.EventRelay {
	if !r.AckedAt.IsZero() {
		r.AckedAt = r.AckedAt.UTC()
	}
	if !r.OldestPendingAt.IsZero() {
		r.OldestPendingAt = r.OldestPendingAt.UTC()
	}
	return r
}
