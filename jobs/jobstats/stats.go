// Package jobstats reads what the jobs did and what waits: the job views of
// the project's migrations (job_kind_stats, queue_depth, stuck_jobs,
// failing_jobs) and the outbox (outbox_depth, outbox_dead_jobs), in one
// transaction, so that they describe one moment. Collect is what the
// `aftercommit stats` command prints.
package jobstats

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river/rivertype"
)

// DB is what Collect needs of a database: *pgxpool.Pool and *pgx.Conn
// satisfy it. Collect reads in a transaction of its own so that every view
// sees the same snapshot and the same now().
type DB interface {
	BeginTx(ctx context.Context, txOptions pgx.TxOptions) (pgx.Tx, error)
}

// Period names a window of job_kind_stats, which ends at the time the
// report was taken.
type Period string

// The periods of job_kind_stats.
const (
	// PeriodHour is the last hour.
	PeriodHour Period = "hour"
	// PeriodDay is the last 24 hours.
	PeriodDay Period = "day"
)

// JobTimeoutDefault is the running time after which stuck_jobs lists a
// job when neither Opts.JobTimeout nor the aftercommit.job_timeout
// setting says otherwise: River's default JobTimeout.
const JobTimeoutDefault = time.Minute

// OutboxDeadRowsDefault is how many of the latest dead outbox rows
// Collect reads when Opts.OutboxDeadRows is 0.
const OutboxDeadRowsDefault = 5

// Opts are optional settings of Collect. A nil *Opts takes every
// default.
type Opts struct {
	// JobTimeout is the running time after which a job counts as stuck. Set
	// it to the client's JobTimeout when that is not River's default. It is
	// applied as the aftercommit.job_timeout setting of Collect's transaction,
	// which is what the stuck_jobs view reads.
	//
	// Defaults to the setting of the connection (e.g. ALTER DATABASE … SET
	// aftercommit.job_timeout = '5 min'), else JobTimeoutDefault.
	JobTimeout time.Duration

	// OutboxDeadRows is how many of the latest rows of outbox_dead_jobs
	// Report.Outbox.LatestDead holds.
	//
	// Defaults to OutboxDeadRowsDefault (5). Negative: none.
	OutboxDeadRows int
}

// Report holds the four job views read in one transaction: the same
// rows, in the same order, as SELECT * FROM each view; and, in the same
// transaction, the outbox: the outbox_depth view and the latest dead rows.
type Report struct {
	// At is the database's now() when the report was taken: the end of
	// every period and the reference of StuckJob.RunningFor.
	At time.Time
	// Kinds are the rows of job_kind_stats: per kind, the last hour then
	// the last 24 hours, each only when the kind did something in it.
	Kinds []KindStats
	// Queues are the rows of queue_depth, by queue then state.
	Queues []QueueDepth
	// Stuck are the rows of stuck_jobs, longest running first.
	Stuck []StuckJob
	// Failing are the rows of failing_jobs, by kind.
	Failing []FailingJob
	// Outbox is what waits in the outbox and what died there.
	Outbox OutboxStats
}

// OutboxStats is the outbox_depth view (one row) and the latest rows of
// outbox_dead_jobs: the rows written by business transactions and not yet
// relayed into River's job table, and the rows the relay refused.
type OutboxStats struct {
	// Depth counts the committed rows of outbox_jobs: jobs enqueued and not
	// yet relayed. A relay keeps it near 0; it grows while none runs.
	Depth int64
	// OldestCreatedAt is the created_at (its transaction's start) of the
	// oldest of them; zero when Depth is 0.
	OldestCreatedAt time.Time
	// OldestAge is Report.At − OldestCreatedAt: how long the oldest
	// row has waited; 0 when Depth is 0.
	OldestAge time.Duration
	// Dead counts the rows of outbox_dead_jobs.
	Dead int64
	// LastDeadAt is when the latest dead row died; zero when Dead is 0.
	LastDeadAt time.Time
	// LatestDead are the latest dead rows, newest first, at most
	// Opts.OutboxDeadRows.
	LatestDead []OutboxDeadRow
}

// OutboxDeadRow is a row of outbox_dead_jobs: an outbox row the relay
// refused, with the reason.
type OutboxDeadRow struct {
	// ID is the outbox_jobs id the row had.
	ID int64
	// Kind is the row's kind.
	Kind string
	// Queue is the queue the row asked for; "" when it left it to the
	// kind's default.
	Queue string
	// Args are the row's args, as written.
	Args []byte
	// CreatedAt is when the row was written (its transaction's start).
	CreatedAt time.Time
	// DeadAt is when the relay refused it.
	DeadAt time.Time
	// Reason is why.
	Reason string
}

// Kind returns the stats of kind in period, and false when the kind has no
// row for it (nothing finalized and no failed attempt in the window).
func (r *Report) Kind(kind string, period Period) (KindStats, bool) {
	for _, k := range r.Kinds {
		if k.Kind == kind && k.Period == period {
			return k, true
		}
	}
	return KindStats{}, false
}

// KindStats is a row of job_kind_stats: what one kind did in one period.
type KindStats struct {
	// Kind is the job kind.
	Kind string
	// Period is the window: the last hour or the last 24 hours.
	Period Period
	// Since is where the window starts: Report.At minus the period.
	Since time.Time

	// Completed counts the jobs completed (finalized_at) in the window.
	Completed int64
	// Failed counts the failed attempts in the window: errors recorded
	// (their "at") in it, as River's job_failed event counts them. A job
	// retried twice counts twice, and the last error of a discarded job
	// counts here and in Discarded.
	Failed int64
	// Discarded counts the jobs discarded (finalized_at) in the window.
	Discarded int64
	// Cancelled counts the jobs cancelled (finalized_at) in the window.
	Cancelled int64

	// RunTimeP50, RunTimeP95 and RunTimeP99 are percentiles of
	// finalized_at − attempted_at over the jobs completed in the window,
	// computed with percentile_disc (each is a run time that occurred).
	// Zero when Completed is zero.
	RunTimeP50, RunTimeP95, RunTimeP99 time.Duration
	// QueueLatencyP50, QueueLatencyP95 and QueueLatencyP99 are the same
	// percentiles of attempted_at − scheduled_at: how long the successful
	// attempt waited after it was due. Zero when Completed is zero.
	QueueLatencyP50, QueueLatencyP95, QueueLatencyP99 time.Duration
}

// QueueDepth is a row of queue_depth: the jobs of one queue in one state.
type QueueDepth struct {
	// Queue is the River queue.
	Queue string
	// State is the jobs' state.
	State rivertype.JobState
	// Jobs is how many there are.
	Jobs int64
	// OldestScheduledAt is the earliest scheduled_at among them; for
	// available jobs, since when the head of the queue has been due.
	OldestScheduledAt time.Time
}

// StuckJob is a row of stuck_jobs: a job still running longer after its
// attempt started than the job timeout.
type StuckJob struct {
	// ID is the job's id.
	ID int64
	// Kind is the job's kind.
	Kind string
	// Queue is the job's queue.
	Queue string
	// Attempt is the number of the running attempt.
	Attempt int
	// MaxAttempts is the job's maximum number of attempts.
	MaxAttempts int
	// AttemptedAt is when the running attempt started.
	AttemptedAt time.Time
	// AttemptedBy is the client running it ("" when River recorded none).
	AttemptedBy string
	// RunningFor is Report.At − AttemptedAt.
	RunningFor time.Duration
	// Timeout is the threshold the job exceeded (see Opts.JobTimeout).
	Timeout time.Duration
}

// FailingJob is a row of failing_jobs: the most recent error of one kind,
// and the job that recorded it.
type FailingJob struct {
	// Kind is the job kind.
	Kind string
	// JobID is the job whose error this is.
	JobID int64
	// State is that job's state now (retryable, discarded, or completed
	// after a later attempt succeeded, …).
	State rivertype.JobState
	// Attempt is the attempt that failed.
	Attempt int
	// MaxAttempts is the job's maximum number of attempts.
	MaxAttempts int
	// ErrorAt is when the attempt failed.
	ErrorAt time.Time
	// Error is the error's message.
	Error string
	// Trace is the stack trace River recorded for a panic, else "".
	Trace string
}

// Collect reads the job views of migration 0015 — job_kind_stats,
// queue_depth, stuck_jobs, failing_jobs — and the outbox of migration 0020
// (the outbox_depth view, the latest rows of outbox_dead_jobs) in one
// read-only, repeatable-read transaction of db, so that they describe one
// moment. The views are found
// through the connection's search_path, like every table of the project.
func Collect(ctx context.Context, db DB, opts *Opts) (*Report, error) {
	if db == nil {
		return nil, errors.New("jobstats: Collect needs a database")
	}
	if opts == nil {
		opts = &Opts{}
	}
	if opts.JobTimeout < 0 {
		return nil, fmt.Errorf("jobstats: Opts.JobTimeout %s is negative", opts.JobTimeout)
	}
	deadRows := opts.OutboxDeadRows
	if deadRows == 0 {
		deadRows = OutboxDeadRowsDefault
	}
	deadRows = max(deadRows, 0)

	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("jobstats: reading job stats: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	report := &Report{}
	batch := &pgx.Batch{}
	if opts.JobTimeout > 0 {
		batch.Queue(statsSetJobTimeoutSQL, opts.JobTimeout.Microseconds())
	}
	batch.Queue(statsNowSQL).QueryRow(func(row pgx.Row) error {
		return row.Scan(&report.At)
	})
	batch.Queue(statsKindsSQL).Query(func(rows pgx.Rows) (err error) {
		report.Kinds, err = pgx.CollectRows(rows, scanKindStats)
		return err
	})
	batch.Queue(statsQueuesSQL).Query(func(rows pgx.Rows) (err error) {
		report.Queues, err = pgx.CollectRows(rows, scanQueueDepth)
		return err
	})
	batch.Queue(statsStuckSQL).Query(func(rows pgx.Rows) (err error) {
		report.Stuck, err = pgx.CollectRows(rows, scanStuckJob)
		return err
	})
	batch.Queue(statsFailingSQL).Query(func(rows pgx.Rows) (err error) {
		report.Failing, err = pgx.CollectRows(rows, scanFailingJob)
		return err
	})
	batch.Queue(statsOutboxSQL).QueryRow(func(row pgx.Row) error {
		return scanOutboxStats(row, &report.Outbox)
	})
	batch.Queue(statsOutboxDeadSQL, deadRows).Query(func(rows pgx.Rows) (err error) {
		report.Outbox.LatestDead, err = pgx.CollectRows(rows, scanOutboxDeadRow)
		return err
	})
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return nil, fmt.Errorf("jobstats: reading job stats: %w", err)
	}
	return report, nil
}

func scanKindStats(row pgx.CollectableRow) (KindStats, error) {
	var k KindStats
	var pct [6]*time.Duration
	err := row.Scan(&k.Kind, &k.Period, &k.Since, &k.Completed, &k.Failed, &k.Discarded, &k.Cancelled,
		&pct[0], &pct[1], &pct[2], &pct[3], &pct[4], &pct[5])
	k.RunTimeP50, k.RunTimeP95, k.RunTimeP99 = deref(pct[0]), deref(pct[1]), deref(pct[2])
	k.QueueLatencyP50, k.QueueLatencyP95, k.QueueLatencyP99 = deref(pct[3]), deref(pct[4]), deref(pct[5])
	return k, err
}

func scanQueueDepth(row pgx.CollectableRow) (QueueDepth, error) {
	var q QueueDepth
	err := row.Scan(&q.Queue, &q.State, &q.Jobs, &q.OldestScheduledAt)
	return q, err
}

func scanStuckJob(row pgx.CollectableRow) (StuckJob, error) {
	var s StuckJob
	var attemptedBy *string
	err := row.Scan(&s.ID, &s.Kind, &s.Queue, &s.Attempt, &s.MaxAttempts, &s.AttemptedAt,
		&attemptedBy, &s.RunningFor, &s.Timeout)
	s.AttemptedBy = deref(attemptedBy)
	return s, err
}

func scanFailingJob(row pgx.CollectableRow) (FailingJob, error) {
	var f FailingJob
	var attempt *int
	var errorAt *time.Time
	var msg, trace *string
	err := row.Scan(&f.Kind, &f.JobID, &f.State, &attempt, &f.MaxAttempts, &errorAt, &msg, &trace)
	f.Attempt, f.ErrorAt, f.Error, f.Trace = deref(attempt), deref(errorAt), deref(msg), deref(trace)
	return f, err
}

func scanOutboxStats(row pgx.Row, o *OutboxStats) error {
	var oldest, lastDead *time.Time
	err := row.Scan(&o.Depth, &oldest, &o.OldestAge, &o.Dead, &lastDead)
	o.OldestCreatedAt, o.LastDeadAt = deref(oldest), deref(lastDead)
	return err
}

func scanOutboxDeadRow(row pgx.CollectableRow) (OutboxDeadRow, error) {
	var d OutboxDeadRow
	var queue *string
	err := row.Scan(&d.ID, &d.Kind, &queue, &d.Args, &d.CreatedAt, &d.DeadAt, &d.Reason)
	d.Queue = deref(queue)
	return d, err
}

// deref returns *p, or the zero value for a NULL (nil) column.
func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

// statsSetJobTimeoutSQL sets the stuck_jobs threshold to $1 microseconds
// for the rest of the transaction.
const statsSetJobTimeoutSQL = `
SELECT set_config('aftercommit.job_timeout', ($1::bigint * interval '1 microsecond')::text, true)`

// statsNowSQL is the transaction's now(), which every view uses.
const statsNowSQL = `SELECT now()`

// The views of migration 0015, each in the order of its definition (an
// ORDER BY in a view does not bind the queries that read it). Qualified
// names in ORDER BY sort by the view's column (the state enum's order), not
// by the text of the select list.

const statsKindsSQL = `
SELECT kind, period, since, completed, failed, discarded, cancelled,
       run_time_p50, run_time_p95, run_time_p99,
       queue_latency_p50, queue_latency_p95, queue_latency_p99
  FROM job_kind_stats
 ORDER BY job_kind_stats.kind, job_kind_stats.since DESC`

const statsQueuesSQL = `
SELECT queue, state::text AS state, jobs, oldest_scheduled_at
  FROM queue_depth
 ORDER BY queue_depth.queue, queue_depth.state`

const statsStuckSQL = `
SELECT id, kind, queue, attempt, max_attempts, attempted_at, attempted_by, running_for, timeout
  FROM stuck_jobs
 ORDER BY stuck_jobs.attempted_at, stuck_jobs.id`

const statsFailingSQL = `
SELECT kind, job_id, state::text AS state, attempt, max_attempts, error_at, error, trace
  FROM failing_jobs
 ORDER BY failing_jobs.kind`

// statsOutboxSQL reads the outbox_depth view of migration 0020: one row.
const statsOutboxSQL = `
SELECT depth, oldest_created_at, oldest_age, dead, last_dead_at FROM outbox_depth`

// statsOutboxDeadSQL reads the latest $1 dead outbox rows, newest first
// (outbox_dead_jobs_dead_at_idx).
const statsOutboxDeadSQL = `
SELECT id, kind, queue, args, created_at, dead_at, reason
  FROM outbox_dead_jobs
 ORDER BY dead_at DESC, id DESC
 LIMIT $1`
