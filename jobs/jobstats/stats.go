// Package jobstats reads what the jobs did and what waits: the job views of
// the project's migrations (job_kind_stats, queue_depth, stuck_jobs,
// failing_jobs), the outbox (outbox_depth, outbox_dead_jobs) and flow
// control (the worker locks' job_locks, job_rate_limit_status,
// job_sequence_status), in one transaction, so that they describe one
// moment. Collect is what the `aftercommit stats` command prints.
package jobstats

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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

// FlowRowsDefault is how many keys each flow-control section of a Report
// lists (Locks.Top, RateLimits.Top, Sequences.Top) when Opts.FlowRows is 0.
const FlowRowsDefault = 20

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

	// FlowRows is how many keys each flow-control section lists:
	// Report.Locks.Top (the keys with the most holders),
	// Report.RateLimits.Top (the keys booked furthest ahead, then the
	// busiest) and Report.Sequences.Top (the sequences with the most jobs
	// waiting, plus every stuck one whatever FlowRows). The totals of each
	// section count every key.
	//
	// Defaults to FlowRowsDefault (20). Negative: none but the stuck
	// sequences.
	FlowRows int

	// HoldbackMin is how long a snapshot must have been open for
	// Report.Vacuum to list it (db_vacuum_holdback).
	//
	// Defaults to HoldbackMinDefault (1 minute).
	HoldbackMin time.Duration
}

// HoldbackMinDefault is Opts.HoldbackMin's default: a transaction open for
// a minute is long for an application, and a minute of dead tuples is
// already felt by River's fetch under load.
const HoldbackMinDefault = time.Minute

// VacuumStats says what holds back vacuum and what it costs: the sessions,
// prepared transactions and replication slots whose snapshot has been open
// longer than Opts.HoldbackMin, oldest first, and the dead tuples of River's
// and aftercommit's tables, most first. Another role's session shows only
// to a role with pg_read_all_stats (or pg_monitor).
type VacuumStats struct {
	// Holders are the rows of db_vacuum_holdback open longer than
	// HoldbackMin, oldest snapshot first, at most FlowRows.
	Holders []VacuumHolder
	// Tables are the rows of db_table_health, most dead tuples first.
	Tables []TableHealth
}

// VacuumHolder is a row of db_vacuum_holdback.
type VacuumHolder struct {
	// Holder is "session", "prepared transaction" or "replication slot".
	Holder string
	// PID is the session's backend, 0 for the others.
	PID int32
	// User, Application and State are the session's (a prepared
	// transaction's Application is its gid, a slot's its name).
	User, Application, State string
	// XminAge is how many transactions old its snapshot is.
	XminAge int64
	// HeldFor is how long its transaction has been open (0: unknown).
	HeldFor time.Duration
	// Query is the start of its last statement.
	Query string
}

// TableHealth is a row of db_table_health.
type TableHealth struct {
	Table          string
	Live, Dead     int64
	LastAutovacuum time.Time // zero: never
}

// Report holds the four job views read in one transaction: the same
// rows, in the same order, as SELECT * FROM each view; and, in the same
// transaction, the outbox (the outbox_depth view and the latest dead rows)
// and flow control (worker locks, rate limits, sequences: totals and the
// top keys).
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
	// Locks are the leases of the worker locks and semaphores (job_locks).
	Locks LockStats
	// RateLimits are the rate-limited keys (job_rate_limit_status).
	RateLimits RateLimitStats
	// Sequences are the sequences and fair shares with unfinished jobs
	// (job_sequence_status).
	Sequences SequenceStats
	// Vacuum is what holds back vacuum (db_vacuum_holdback) and the dead
	// tuples of the job tables (db_table_health).
	Vacuum VacuumStats
	// EventRelays are the relays of outbox_events to a broker
	// (outbox_event_relay_lag: cmd/worker --nats-url), by stream; empty
	// when none ever ran.
	EventRelays []EventRelay
}

// EventRelay is one stream's relay of outbox_events (outbox/natsrelay), a
// row of outbox_event_relay_lag.
type EventRelay struct {
	// Stream is the broker's stream.
	Stream string
	// Owner names the relay process holding the lease ("" when none has).
	Owner string
	// Active: the lease is live.
	Active bool
	// LastID is the cursor: every event up to it is in the stream.
	LastID int64
	// LastSeq is the stream's sequence of the last event published.
	LastSeq int64
	// AckedAt is when the cursor last moved; zero before it ever did.
	AckedAt time.Time
	// Pending counts the committed events after the cursor (of the
	// stream's topics): not yet acknowledged by the broker.
	Pending int64
	// OldestPendingAt is the created_at of the oldest of them; zero when
	// Pending is 0.
	OldestPendingAt time.Time
	// OldestPendingAge is Report.At − OldestPendingAt; 0 when Pending is 0.
	OldestPendingAge time.Duration
}

// LockStats sums up job_locks, the leases of the worker locks and
// semaphores (jobs.LockMiddleware): a row per held slot of a key. A lease
// whose expires_at has passed is expired: its holder's process died (or
// stopped renewing) and the next job that asks takes the slot over.
type LockStats struct {
	// Denied says the connection's role may not read job_locks (the app
	// role of `aftercommit grant-roles` is not granted it; the worker role
	// is): the other fields are zero, and the rest of the Report was read.
	Denied bool
	// Keys counts the keys with at least one lease, live or expired.
	Keys int64
	// Held counts the keys with at least one live lease.
	Held int64
	// Holders counts the live leases of every key.
	Holders int64
	// Expired counts the expired leases of every key.
	Expired int64
	// Top are the keys with the most holders (then the most expired
	// leases, then by namespace and key), at most Opts.FlowRows.
	Top []LockKey
}

// LockKey is the leases of one worker lock or semaphore key.
type LockKey struct {
	// Namespace is the lock's namespace (the kind's, unless the worker
	// named one).
	Namespace string
	// Key is the lock key.
	Key string
	// Holders counts the live leases: the jobs running under the key.
	Holders int64
	// Expired counts the expired leases: slots whose holder died, which
	// the next job to ask takes over.
	Expired int64
	// OldestAcquiredAt is when the oldest live lease was taken; zero when
	// Holders is 0.
	OldestAcquiredAt time.Time
	// HeldFor is Report.At − OldestAcquiredAt; 0 when Holders is 0.
	HeldFor time.Duration
}

// RateLimitStats sums up job_rate_limit_status: the keys of the rate
// limits (jobs.RateLimiter), at most MaxStarts starts in any window of
// Period.
type RateLimitStats struct {
	// Keys counts the rate-limited keys (every key that ever decided a
	// start).
	Keys int64
	// Throttled counts the keys whose refused jobs are booked ahead now
	// (BookedAhead > 0): their jobs wait for the limit.
	Throttled int64
	// Top are the keys booked furthest ahead, then those with the most
	// starts in their period, then the most delayed, then by namespace and
	// key: at most Opts.FlowRows.
	Top []RateLimit
}

// RateLimit is a row of job_rate_limit_status: one rate-limited key.
type RateLimit struct {
	// Namespace is the limit's namespace.
	Namespace string
	// Key is the rate-limited key.
	Key string
	// MaxStarts is the limit: at most MaxStarts starts in any Period.
	MaxStarts int
	// Period is the window of the limit.
	Period time.Duration
	// StartsInPeriod counts the starts admitted in the last Period.
	StartsInPeriod int64
	// LastStart is the latest admitted start still in the key's log; zero
	// when none is.
	LastStart time.Time
	// BookedAhead is how far ahead of Report.At the jobs refused so far
	// are booked: the last one waits about that long. 0 when none waits.
	BookedAhead time.Duration
	// Admitted counts the starts admitted since the key first ran.
	Admitted int64
	// Delayed counts the starts refused (put off) since the key first ran.
	Delayed int64
	// UpdatedAt is the key's latest decision.
	UpdatedAt time.Time
}

// SequenceStats sums up job_sequence_status: the sequences (jobs.Sequence)
// and fair shares (jobs.FairShare) with unfinished jobs.
//
// A fair share is several sequences, its stripes "key#0" …
// "key#<InFlight-1>", and each stripe is counted and listed on its own:
// the database does not tell a stripe from a sequence whose key ends in
// "#<n>".
type SequenceStats struct {
	// Sequences counts the sequences with unfinished jobs.
	Sequences int64
	// Waiting counts their pending jobs: those waiting for their turn.
	Waiting int64
	// Running counts their released jobs (available, running or retrying).
	Running int64
	// Held counts the sequences whose head failed and waits for its retry.
	Held int64
	// Stuck counts the stuck sequences: the head failed 3 times or more,
	// or jobs wait while none runs.
	Stuck int64
	// Top are the stuck sequences, then the sequences with the most jobs
	// waiting (then by namespace and key): every stuck sequence, and at
	// most Opts.FlowRows of the others.
	Top []SequenceStatus
}

// SequenceStatus is a row of job_sequence_status: one sequence (or one
// stripe of a fair share) with unfinished jobs.
type SequenceStatus struct {
	// Namespace is the sequence's namespace.
	Namespace string
	// Key is the sequence's key.
	Key string
	// Width is how many of its jobs may be released at once: 1 for the
	// sequences and fair-share stripes of package jobs.
	Width int
	// Waiting counts its pending jobs.
	Waiting int64
	// Running counts its released jobs (at most Width).
	Running int
	// HeadJobID is the oldest released job that is not detached: the one
	// that runs, in a sequence of width 1. 0 when there is none; the
	// other head fields are then zero too.
	HeadJobID int64
	// HeadKind is the head job's kind.
	HeadKind string
	// HeadState is the head job's state.
	HeadState rivertype.JobState
	// HeadAttempt is the head job's attempt.
	HeadAttempt int
	// HeadErrors counts the head job's errors.
	HeadErrors int
	// HeadLastError is the message of the head job's latest error; "" when
	// it has none.
	HeadLastError string
	// ReleasedAt is the sequence's latest release; zero when none.
	ReleasedAt time.Time
	// ReleasedAge is Report.At − ReleasedAt; 0 when ReleasedAt is zero.
	ReleasedAge time.Duration
	// Held says the head failed and waits for its retry (a sequence of
	// width 1 waits with it).
	Held bool
	// Stuck says the head failed 3 times or more, or jobs wait while none
	// runs.
	Stuck bool
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
// queue_depth, stuck_jobs, failing_jobs —, the outbox of migration 0020
// (the outbox_depth view, the latest rows of outbox_dead_jobs) and flow
// control (job_locks of migration 0010, job_rate_limit_status of 0021,
// job_sequence_status of 0022) in one read-only, repeatable-read
// transaction of db, in one round trip, so that they describe one moment.
// The views are found through the connection's search_path, like every
// table of the project. A role that may not read job_locks (the app role)
// gets the rest, with Report.Locks.Denied.
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
	flowRows := opts.FlowRows
	if flowRows == 0 {
		flowRows = FlowRowsDefault
	}
	flowRows = max(flowRows, 0)

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
	batch.Queue(statsEventRelaysSQL).Query(func(rows pgx.Rows) (err error) {
		report.EventRelays, err = pgx.CollectRows(rows, scanEventRelay)
		return err
	})
	batch.Queue(statsRateLimitsSQL, flowRows).Query(func(rows pgx.Rows) error {
		return scanRateLimits(rows, &report.RateLimits)
	})
	batch.Queue(statsSequencesSQL, flowRows).Query(func(rows pgx.Rows) error {
		return scanSequences(rows, &report.Sequences)
	})
	holdbackMin := opts.HoldbackMin
	if holdbackMin == 0 {
		holdbackMin = HoldbackMinDefault
	}
	batch.Queue(statsHoldbackSQL, holdbackMin.Microseconds(), flowRows).Query(func(rows pgx.Rows) (err error) {
		report.Vacuum.Holders, err = pgx.CollectRows(rows, scanVacuumHolder)
		return err
	})
	batch.Queue(statsTableHealthSQL).Query(func(rows pgx.Rows) (err error) {
		report.Vacuum.Tables, err = pgx.CollectRows(rows, scanTableHealth)
		return err
	})
	// Last: a role that may not read job_locks fails here only, once every
	// other result is in.
	locksDenied := false
	batch.Queue(statsLocksSQL, flowRows).Query(func(rows pgx.Rows) error {
		err := scanLocks(rows, &report.Locks)
		var pgErr *pgconn.PgError
		locksDenied = errors.As(err, &pgErr) && pgErr.Code == insufficientPrivilege
		return err
	})
	if err := tx.SendBatch(ctx, batch).Close(); err != nil && !locksDenied {
		return nil, fmt.Errorf("jobstats: reading job stats: %w", err)
	}
	if locksDenied {
		report.Locks = LockStats{Denied: true}
	}
	return report, nil
}

// insufficientPrivilege is the SQLSTATE of a relation the role may not
// read.
const insufficientPrivilege = "42501"

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

// The flow-control queries return the section's totals in every row, and
// its top keys in the other columns: one row of totals and NULLs when no
// key is listed.

func scanLocks(rows pgx.Rows, l *LockStats) error {
	l.Top = []LockKey{}
	for rows.Next() {
		var ns, key *string
		var holders, expired *int64
		var oldest *time.Time
		var heldFor *time.Duration
		if err := rows.Scan(&l.Keys, &l.Held, &l.Holders, &l.Expired, &ns, &key, &holders, &expired, &oldest, &heldFor); err != nil {
			return err
		}
		if ns != nil {
			l.Top = append(l.Top, LockKey{Namespace: *ns, Key: deref(key), Holders: deref(holders), Expired: deref(expired),
				OldestAcquiredAt: deref(oldest), HeldFor: deref(heldFor)})
		}
	}
	return rows.Err()
}

func scanRateLimits(rows pgx.Rows, r *RateLimitStats) error {
	r.Top = []RateLimit{}
	for rows.Next() {
		var ns, key *string
		var maxStarts *int
		var period, booked *time.Duration
		var starts, admitted, delayed *int64
		var lastStart, updatedAt *time.Time
		if err := rows.Scan(&r.Keys, &r.Throttled, &ns, &key, &maxStarts, &period, &starts, &lastStart, &booked,
			&admitted, &delayed, &updatedAt); err != nil {
			return err
		}
		if ns != nil {
			r.Top = append(r.Top, RateLimit{Namespace: *ns, Key: deref(key), MaxStarts: deref(maxStarts), Period: deref(period),
				StartsInPeriod: deref(starts), LastStart: deref(lastStart), BookedAhead: deref(booked),
				Admitted: deref(admitted), Delayed: deref(delayed), UpdatedAt: deref(updatedAt)})
		}
	}
	return rows.Err()
}

func scanSequences(rows pgx.Rows, s *SequenceStats) error {
	s.Top = []SequenceStatus{}
	for rows.Next() {
		var ns, key, headKind, headState, lastError *string
		var width, running, headAttempt, headErrors *int
		var waiting, headJobID *int64
		var releasedAt *time.Time
		var releasedAge *time.Duration
		var held, stuck *bool
		if err := rows.Scan(&s.Sequences, &s.Waiting, &s.Running, &s.Held, &s.Stuck,
			&ns, &key, &width, &waiting, &running, &headJobID, &headKind, &headState, &headAttempt, &headErrors, &lastError,
			&releasedAt, &releasedAge, &held, &stuck); err != nil {
			return err
		}
		if ns != nil {
			s.Top = append(s.Top, SequenceStatus{Namespace: *ns, Key: deref(key), Width: deref(width), Waiting: deref(waiting),
				Running: deref(running), HeadJobID: deref(headJobID), HeadKind: deref(headKind),
				HeadState: rivertype.JobState(deref(headState)), HeadAttempt: deref(headAttempt), HeadErrors: deref(headErrors),
				HeadLastError: deref(lastError), ReleasedAt: deref(releasedAt), ReleasedAge: deref(releasedAge),
				Held: deref(held), Stuck: deref(stuck)})
		}
	}
	return rows.Err()
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
// statsEventRelaysSQL reads outbox_event_relay_lag.
const statsEventRelaysSQL = `
SELECT stream, coalesce(owner, ''), coalesce(active, false), last_id, last_seq, acked_at,
       pending, oldest_pending_at, coalesce(now() - oldest_pending_at, interval '0')
  FROM outbox_event_relay_lag
 ORDER BY stream`

func scanEventRelay(row pgx.CollectableRow) (EventRelay, error) {
	var r EventRelay
	var acked, oldest *time.Time
	if err := row.Scan(&r.Stream, &r.Owner, &r.Active, &r.LastID, &r.LastSeq, &acked, &r.Pending, &oldest, &r.OldestPendingAge); err != nil {
		return r, err
	}
	if acked != nil {
		r.AckedAt = *acked
	}
	if oldest != nil {
		r.OldestPendingAt = *oldest
	}
	return r, nil
}

const statsOutboxSQL = `
SELECT depth, oldest_created_at, oldest_age, dead, last_dead_at FROM outbox_depth`

// statsOutboxDeadSQL reads the latest $1 dead outbox rows, newest first
// (outbox_dead_jobs_dead_at_idx).
const statsOutboxDeadSQL = `
SELECT id, kind, queue, args, created_at, dead_at, reason
  FROM outbox_dead_jobs
 ORDER BY dead_at DESC, id DESC
 LIMIT $1`

// statsLocksSQL sums up job_locks (migration 0010) per key: the totals,
// then the $1 keys with the most live leases. A lease is expired once its
// expires_at has passed (the lock's own test: expires_at < now()).
const statsLocksSQL = `
WITH k AS (
    SELECT l.namespace, l.lock_key,
           count(*) FILTER (WHERE l.expires_at >= now()) AS holders,
           count(*) FILTER (WHERE l.expires_at < now()) AS expired,
           min(l.acquired_at) FILTER (WHERE l.expires_at >= now()) AS oldest_acquired_at
      FROM job_locks l
     GROUP BY l.namespace, l.lock_key),
t AS (
    SELECT count(*) AS keys, count(*) FILTER (WHERE k.holders > 0) AS held,
           coalesce(sum(k.holders), 0)::bigint AS holders, coalesce(sum(k.expired), 0)::bigint AS expired
      FROM k)
SELECT t.keys, t.held, t.holders, t.expired,
       r.namespace, r.lock_key, r.holders, r.expired, r.oldest_acquired_at, now() - r.oldest_acquired_at AS held_for
  FROM t
  LEFT JOIN LATERAL (SELECT k.* FROM k ORDER BY k.holders DESC, k.expired DESC, k.namespace, k.lock_key LIMIT $1) AS r ON true
 ORDER BY r.holders DESC, r.expired DESC, r.namespace, r.lock_key`

// statsRateLimitsSQL sums up job_rate_limit_status (migration 0021): the
// totals, then the $1 keys booked furthest ahead, then the busiest.
const statsRateLimitsSQL = `
WITH s AS (SELECT * FROM job_rate_limit_status),
t AS (SELECT count(*) AS keys, count(*) FILTER (WHERE s.booked_ahead > interval '0') AS throttled FROM s)
SELECT t.keys, t.throttled,
       r.namespace, r.rate_key, r.max_starts, r.period, r.starts_in_period, r.last_start, r.booked_ahead,
       r.admitted, r.delayed, r.updated_at
  FROM t
  LEFT JOIN LATERAL (SELECT s.* FROM s
                      ORDER BY s.booked_ahead DESC, s.starts_in_period DESC, s.delayed DESC, s.namespace, s.rate_key
                      LIMIT $1) AS r ON true
 ORDER BY r.booked_ahead DESC, r.starts_in_period DESC, r.delayed DESC, r.namespace, r.rate_key`

// statsSequencesSQL sums up job_sequence_status (migration 0022), read
// once: the totals, then every stuck sequence and the $1 sequences with
// the most jobs waiting.
const statsSequencesSQL = `
WITH s AS (SELECT * FROM job_sequence_status),
t AS (
    SELECT count(*) AS sequences, coalesce(sum(s.waiting), 0)::bigint AS waiting, coalesce(sum(s.running), 0)::bigint AS running,
           count(*) FILTER (WHERE s.held) AS held, count(*) FILTER (WHERE s.stuck) AS stuck
      FROM s),
ranked AS (
    SELECT s.*, row_number() OVER (ORDER BY s.waiting DESC, s.namespace, s.seq_key) AS rn FROM s)
SELECT t.sequences, t.waiting, t.running, t.held, t.stuck,
       r.namespace, r.seq_key, r.width, r.waiting, r.running,
       r.head_job_id, r.head_kind, r.head_state::text, r.head_attempt::integer, r.head_errors, r.head_last_error,
       r.released_at, r.released_age, r.held, r.stuck
  FROM t
  LEFT JOIN LATERAL (SELECT ranked.* FROM ranked WHERE ranked.rn <= $1 OR ranked.stuck) AS r ON true
 ORDER BY r.stuck DESC, r.rn`

// statsHoldbackSQL lists the snapshots open longer than $1 microseconds,
// oldest first, at most $2.
const statsHoldbackSQL = `
SELECT holder, coalesce(pid, 0), coalesce(usename, ''), coalesce(application_name, ''), coalesce(state, ''),
       coalesce(xmin_age, 0), coalesce(held_for, '0'), coalesce(query, '')
  FROM db_vacuum_holdback
 WHERE held_for >= $1 * interval '1 microsecond' OR (held_for IS NULL AND xmin_age IS NOT NULL)
 ORDER BY xmin_age DESC NULLS LAST
 LIMIT greatest($2, 0)`

// statsTableHealthSQL reads the job tables' dead tuples, most first.
const statsTableHealthSQL = `
SELECT table_name, live_tuples, dead_tuples, last_autovacuum FROM db_table_health ORDER BY dead_tuples DESC, table_name`

func scanVacuumHolder(row pgx.CollectableRow) (VacuumHolder, error) {
	var h VacuumHolder
	err := row.Scan(&h.Holder, &h.PID, &h.User, &h.Application, &h.State, &h.XminAge, &h.HeldFor, &h.Query)
	return h, err
}

func scanTableHealth(row pgx.CollectableRow) (TableHealth, error) {
	var th TableHealth
	var last *time.Time
	err := row.Scan(&th.Table, &th.Live, &th.Dead, &last)
	if last != nil {
		th.LastAutovacuum = *last
	}
	return th, err
}
