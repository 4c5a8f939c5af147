package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/outboxseam"
	"github.com/aftercommit/aftercommit/outbox/internal/wake"
)

// MaxPayloadBytesDefault is the default limit on the JSON size of one job's
// args: 128 KiB.
const MaxPayloadBytesDefault = 128 << 10

// CopyMinJobsDefault is the default of Config.CopyMinJobs: from 500 jobs,
// COPY's speed outweighs its extra round trip.
const CopyMinJobsDefault = 500

// Config tunes an Outbox. A nil *Config takes every default.
type Config struct {
	// MaxPayloadBytes is the largest JSON encoding of one job's args that
	// Enqueue accepts. Args are meant to be a few IDs; larger data belongs
	// in a table.
	//
	// Defaults to MaxPayloadBytesDefault (128 KiB).
	MaxPayloadBytes int

	// Queues, when not empty, lists the only queues jobs may be enqueued
	// to; any other queue is refused with ErrUnknownQueue at Enqueue.
	// (jobs.NewOutbox also refuses the queues its registry lacks.)
	//
	// Defaults to nil: any well-formed queue name. Nil and empty are the
	// same.
	Queues []string

	// Topics, when not empty, lists the only topics events may be published
	// to; any other is refused with ErrUnknownTopic. (jobs.NewOutbox also
	// refuses the topics its registry lacks.)
	//
	// Defaults to nil: any well-formed topic. Nil and empty are the same.
	Topics []string

	// OnFlush, when set, is called after every successful InTx commit and
	// Batch.Flush that wrote jobs, with what it wrote (metrics hook it here). It must be fast
	// and must not block.
	//
	// Defaults to nil.
	OnFlush func(ctx context.Context, res FlushResult)

	// CopyMinJobs is the size from which a flush of jobs none of which is
	// unique (no River unique options, no de-duplication key from
	// DedupeKey, i.e. no queue lock) is written with River's
	// InsertManyFastTx (COPY) instead of a multi-row INSERT: about twice as
	// fast for large batches, for one more round trip (the COMMIT is not
	// pipelined with a COPY). Negative: never.
	//
	// Defaults to CopyMinJobsDefault.
	CopyMinJobs int

	// DirectInsert writes jobs into River's job table (river_job) with
	// River's own insert, in the transaction, instead of into the outbox
	// table. Pick it only where the caller needs River's job row at
	// COMMIT: River's unique options checked inside the transaction
	// (FlushResult.UniqueSkipped), or the job visible to River's API before
	// any relay ran. It costs the transaction River's full row and its
	// seven indexes (BENCHMARKS.md, tx_one_job), and a queue-locked job
	// makes writers of one key wait for each other.
	//
	// Defaults to false: jobs go to outbox_jobs, and a relay
	// (package outbox/relay) moves the committed ones into river_job,
	// applying the kind's defaults, queue locks and River's uniqueness
	// there.
	DirectInsert bool

	// RelayNotifyInterval is the least time between two notifications
	// this Outbox sends the relays with a COMMIT that wrote outbox rows
	// (pg_notify on "<schema>.aftercommit_outbox"). Transactions in between
	// send none: the relays poll the table adaptively. Negative: never
	// notify.
	//
	// Defaults to RelayNotifyIntervalDefault (10 ms).
	RelayNotifyInterval time.Duration

	// DisablePipelinedCommit makes InTx insert jobs and then COMMIT in two
	// round trips (River's InsertManyTx, then Commit) instead of sending the
	// insert and the COMMIT together. Useful to compare the two.
	//
	// Defaults to false.
	DisablePipelinedCommit bool

	// Logger receives the outbox's rare warnings. Defaults to
	// slog.Default().
	Logger *slog.Logger

	// registry is set by jobs.NewOutbox through package outboxseam.
	registry *outboxseam.Registry
}

func init() {
	outboxseam.Attach = func(cfg any, reg *outboxseam.Registry) {
		c, ok := cfg.(*Config)
		if !ok {
			panic(fmt.Sprintf("outboxseam.Attach: want *outbox.Config, got %T", cfg))
		}
		c.registry = reg
	}
}

// WithDefaults returns a copy of c (which may be nil) with defaults filled in.
func (c *Config) WithDefaults() Config {
	var out Config
	if c != nil {
		out = *c
	}
	if out.MaxPayloadBytes == 0 {
		out.MaxPayloadBytes = MaxPayloadBytesDefault
	}
	if out.RelayNotifyInterval == 0 {
		out.RelayNotifyInterval = RelayNotifyIntervalDefault
	}
	if out.CopyMinJobs == 0 {
		out.CopyMinJobs = CopyMinJobsDefault
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	return out
}

func (c *Config) validate() error {
	if c.MaxPayloadBytes < 0 {
		return fmt.Errorf("outbox: Config.MaxPayloadBytes must not be negative, got %d", c.MaxPayloadBytes)
	}
	for _, q := range c.Queues {
		if !ValidQueueName(q) {
			return fmt.Errorf("%w: Config.Queues holds %q", ErrInvalidQueue, q)
		}
	}
	return nil
}

// Outbox runs business transactions that enqueue River jobs. It is safe for
// concurrent use; build one per process.
type Outbox struct {
	pool   *pgxpool.Pool
	client *river.Client[pgx.Tx]
	cfg    Config
	// The allowed queues and topics: each list that is not nil must hold
	// a name (the Config's and the registry's).
	queues, regQueues map[string]struct{}
	topics, regTopics map[string]struct{}

	// From the registry (package outboxseam); nil without one.
	kindDefaults func(kind string) (queue string, priority int, ok bool)
	dedupeKey    func(args river.JobArgs) (key string, ok bool)
	sequenced    func(args river.JobArgs) bool
	subscribers  func(topic string) []outboxseam.Subscriber

	pipelined atomic.Int64
	fallbacks atomic.Int64
	copied    atomic.Int64

	lastNotify atomic.Int64 // UnixNano of the last relay notification
	wakeKey    string       // this process's relays of the same schema (package wake)
}

// New returns an Outbox that runs transactions on pool and inserts jobs with
// client. The client may be insert-only (no Workers, no Queues): it is used
// for River's insert logic, not to work jobs. cfg may be nil.
func New(pool *pgxpool.Pool, client *river.Client[pgx.Tx], cfg *Config) (*Outbox, error) {
	if pool == nil {
		return nil, ErrNilPool
	}
	if client == nil {
		return nil, ErrNilClient
	}
	c := cfg.WithDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	o := &Outbox{pool: pool, client: client, cfg: c, wakeKey: wake.Key(pool)}
	for _, t := range c.Topics {
		if !validTopic(t) {
			return nil, fmt.Errorf("%w: Config.Topics holds %q", ErrInvalidEvent, t)
		}
	}
	o.queues, o.topics = nameSet(c.Queues), nameSet(c.Topics)
	if r := c.registry; r != nil {
		// A registry's empty list allows nothing; nil (tests) allows all.
		o.regQueues, o.regTopics = nameSet(r.Queues), nameSet(r.Topics)
		if o.regQueues == nil && r.Queues != nil {
			o.regQueues = map[string]struct{}{}
		}
		if o.regTopics == nil && r.Topics != nil {
			o.regTopics = map[string]struct{}{}
		}
		o.kindDefaults, o.dedupeKey, o.subscribers = r.KindDefaults, r.DedupeKey, r.Subscribers
		o.sequenced = r.Sequenced
	}
	return o, nil
}

// nameSet is names as a set; nil when names is empty.
func nameSet(names []string) map[string]struct{} {
	if len(names) == 0 {
		return nil
	}
	set := make(map[string]struct{}, len(names))
	for _, n := range names {
		set[n] = struct{}{}
	}
	return set
}

// allowed reports whether name is in every set that is not nil.
func allowed(name string, sets ...map[string]struct{}) bool {
	for _, set := range sets {
		if set == nil {
			continue
		}
		if _, ok := set[name]; !ok {
			return false
		}
	}
	return true
}

// Stats counts how InTx committed transactions that held jobs.
type Stats struct {
	// Pipelined is the number of commits whose job insert and COMMIT went
	// to the server in one round trip.
	Pipelined int64
	// Fallbacks is the number of commits that used the two-round-trip path
	// because River's insert could not be pipelined (a hook or middleware
	// of the client ran SQL of its own) or pipelining is disabled.
	Fallbacks int64
	// Copied is the number of flushes written with COPY (CopyMinJobs).
	Copied int64
}

// Stats returns counters since New.
func (o *Outbox) Stats() Stats {
	return Stats{Pipelined: o.pipelined.Load(), Fallbacks: o.fallbacks.Load(), Copied: o.copied.Load()}
}

// InTxOpts tune one InTx. A nil *InTxOpts takes every default.
type InTxOpts struct {
	// TxOptions are the transaction's options, as pgx's BeginTx takes them:
	// an isolation level, a read-only mode (which refuses the job insert),
	// or a BeginQuery. A BeginQuery without parameters may hold several
	// statements, so transaction-local settings cost no round trip of their
	// own:
	//
	//	pgx.TxOptions{BeginQuery: "BEGIN; SET LOCAL lock_timeout = '2s'"}
	//
	// Defaults to the zero pgx.TxOptions: the server's defaults.
	TxOptions pgx.TxOptions
}

// FlushResult describes the jobs one transaction (or one Batch.Flush) wrote.
type FlushResult struct {
	// Enqueued counts the Enqueue (or Add) calls that were accepted.
	Enqueued int
	// Duplicates counts the enqueues dropped inside the transaction because
	// a job of the same kind and key was already buffered.
	Duplicates int
	// Events counts the events written.
	Events int
	// Inserted counts the new job rows.
	Inserted int
	// UniqueSkipped counts the jobs that matched an existing job (River
	// unique jobs, or a queue lock) and so added no row.
	UniqueSkipped int
	// RoundTrips is the number of round trips spent writing the events and
	// jobs (and committing, for InTx): 1 when everything went in one batch,
	// more on the fallback path, 0 when there was nothing to write.
	RoundTrips int
	// JobBatches is the number of job batches created, added to or sealed.
	JobBatches int
}

// InTx runs fn in a new transaction and commits it, with every job fn
// enqueued, when fn returns nil. It returns what the commit wrote (zero when
// err is not nil). opts may be nil.
//
// Jobs enqueued with tx.Enqueue are buffered and de-duplicated; nothing is
// written until fn returns. Then all of them are inserted with one statement
// sent in the same round trip as the COMMIT. If fn returns an error, if an
// Enqueue failed, or if fn panics, the transaction is rolled back and no job
// exists; a panic is raised again after the rollback. An Enqueue failure that
// fn ignored is returned wrapped in ErrTxAborted.
//
// An error matching ErrCommitInDoubt means the COMMIT was sent but its answer
// was lost (the deadline expired, the connection broke): the transaction may
// have committed. Check the source of truth before retrying. Any other error
// means nothing was committed.
//
// tx must not be used after InTx returns; its methods then return
// pgx.ErrTxClosed.
func (o *Outbox) InTx(ctx context.Context, opts *InTxOpts, fn func(ctx context.Context, tx *Tx) error) (res FlushResult, err error) {
	var txOpts pgx.TxOptions
	if opts != nil {
		txOpts = opts.TxOptions
	}
	defer func() {
		if err == nil && (res.Enqueued > 0 || res.Events > 0) && o.cfg.OnFlush != nil {
			o.cfg.OnFlush(ctx, res)
		}
	}()
	conn, err := o.pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("outbox: acquiring a connection: %w", err)
	}
	// A connection left inside a transaction (a failed rollback) is not
	// idle, and the pool destroys it on release instead of reusing it.
	defer conn.Release()

	inner, err := conn.BeginTx(ctx, txOpts)
	if err != nil {
		return res, fmt.Errorf("outbox: beginning a transaction: %w", err)
	}
	tx := &Tx{inner: inner, batch: o.NewBatch()}

	defer func() {
		if p := recover(); p != nil {
			tx.close()
			_ = inner.Rollback(context.WithoutCancel(ctx))
			panic(p)
		}
	}()

	if err := fn(ctx, tx); err != nil {
		tx.close()
		if rbErr := inner.Rollback(context.WithoutCancel(ctx)); rbErr != nil && !errors.Is(rbErr, pgx.ErrTxClosed) {
			return res, errors.Join(err, fmt.Errorf("outbox: rolling back: %w", rbErr))
		}
		return res, err
	}
	tx.close()

	jobs, events, jobBatches, dups, err := tx.batch.take()
	if err != nil {
		_ = inner.Rollback(context.WithoutCancel(ctx))
		return res, fmt.Errorf("%w: %w", ErrTxAborted, err)
	}
	if len(jobs) == 0 && len(events) == 0 && len(jobBatches) == 0 {
		if err := inner.Commit(ctx); err != nil {
			return res, commitError(fmt.Errorf("outbox: committing: %w", err), true)
		}
		return res, nil
	}
	res, err = o.write(ctx, inner, jobs, events, jobBatches, true)
	if err != nil {
		// A COMMIT that went out ended the transaction on the server (the
		// connection is idle); anything else is rolled back here, or the
		// pool destroys a connection left in a transaction.
		if inner.Conn().PgConn().TxStatus() != 'I' {
			_ = inner.Rollback(context.WithoutCancel(ctx))
		}
		return FlushResult{}, err
	}
	res.Enqueued = len(jobs) + dups
	res.Duplicates = dups
	if len(jobs) > 0 && !o.cfg.DirectInsert {
		// The relays of this process look now, at no cost to Postgres.
		wake.Notify(o.wakeKey)
	}
	return res, nil
}

// JoinTx runs fn in the caller's transaction tx, for code written once for
// both InTx and a transaction the caller owns (the domains' …Tx methods).
// When tx is a *Tx of this Outbox (fn runs inside InTx) it is handed to fn
// as it is, and fn's jobs and events are written with that InTx's commit
// (JoinTx's result is then zero). Any other pgx.Tx is wrapped in a *Tx whose
// jobs and events are written into tx in one round trip when fn returns
// nil, de-duplicated as in InTx; the caller commits or rolls back tx.
//
// When fn returns an error nothing is written, and tx is left to the caller
// to roll back (a failed statement has aborted it anyway). A nil tx makes
// JoinTx InTx with default options: a transaction of its own, committed.
func (o *Outbox) JoinTx(ctx context.Context, tx pgx.Tx, fn func(ctx context.Context, tx *Tx) error) (FlushResult, error) {
	if tx == nil {
		return o.InTx(ctx, nil, fn)
	}
	if own, ok := tx.(*Tx); ok && own.batch.ob == o {
		if own.isClosed() {
			return FlushResult{}, pgx.ErrTxClosed
		}
		return FlushResult{}, fn(ctx, own)
	}
	joined := &Tx{inner: tx, batch: o.NewBatch()}
	err := fn(ctx, joined)
	joined.close()
	if err != nil {
		return FlushResult{}, err
	}
	return joined.batch.Flush(ctx, tx)
}

// Tx is the transaction InTx hands to its function. It implements pgx.Tx for
// the caller's own SQL (so it can be passed to sqlc queries, River's InsertTx
// or anything else that takes a pgx.Tx) and buffers jobs with Enqueue.
//
// Commit and Rollback are refused with ErrManagedTx: InTx ends the
// transaction. Savepoints (Begin) work as in pgx, but buffered jobs are not
// tied to them: a job enqueued inside a savepoint that is rolled back is still
// written.
type Tx struct {
	inner pgx.Tx
	batch *Batch

	mu     sync.Mutex
	closed bool
}

var _ pgx.Tx = (*Tx)(nil)

// Enqueue buffers a job to be inserted just before COMMIT. A job of the same
// kind and de-duplication key as one already buffered is dropped (the first
// one's options win). It returns the validation errors of Batch.Add; after an
// error, InTx rolls back even if the function returns nil.
func (tx *Tx) Enqueue(args river.JobArgs, opts *river.InsertOpts) error {
	if tx.isClosed() {
		return pgx.ErrTxClosed
	}
	return tx.batch.Add(args, opts)
}

// NewJobBatch starts a job batch in the transaction: members enqueued with
// the returned JobBatch's Enqueue, and callbacks (opts) enqueued once every
// member has finished — exactly once, in the transaction that finishes the
// last member. The batch is written with the transaction's jobs, in the
// same round trip, and a rolled-back transaction leaves neither the batch
// nor its members. Without opts.Open the batch is sealed at commit.
func (tx *Tx) NewJobBatch(opts *JobBatchOpts) (*JobBatch, error) {
	return tx.batch.NewJobBatch(opts)
}

// EnqueueInJobBatch buffers args as a member of the open job batch id,
// created by an earlier transaction. The flush fails with
// ErrJobBatchSealed when the batch was sealed, ErrJobBatchUnknown when it
// does not exist, and then nothing of the transaction is written.
func (tx *Tx) EnqueueInJobBatch(id string, args river.JobArgs, opts *river.InsertOpts) error {
	return tx.batch.EnqueueInJobBatch(id, args, opts)
}

// SealJobBatch seals the job batch id when the transaction commits: no
// member can be added after, and the callback runs once every member
// finished (at once when they all have). Sealing a sealed batch does
// nothing.
func (tx *Tx) SealJobBatch(id string) error {
	return tx.batch.SealJobBatch(id)
}

// EnqueueRef buffers args as Enqueue does and returns the job's reference,
// which jobs enqueued with EnqueueAfter, in this transaction or a later
// one, name to wait for it.
func (tx *Tx) EnqueueRef(args river.JobArgs, opts *river.InsertOpts) (JobRef, error) {
	return tx.batch.EnqueueRef(args, opts)
}

// EnqueueAfter buffers args as a job that starts only once the jobs of
// after completed — or is cancelled, with the reason, when one of them was
// discarded or cancelled, unless after.RunOnFailure — and returns its own
// reference, so that other jobs can wait for it in turn.
func (tx *Tx) EnqueueAfter(after After, args river.JobArgs, opts *river.InsertOpts) (JobRef, error) {
	return tx.batch.EnqueueAfter(after, args, opts)
}

// Pending is the number of distinct jobs buffered so far.
func (tx *Tx) Pending() int { return tx.batch.Len() }

// Duplicates is the number of Enqueue calls dropped as duplicates so far.
func (tx *Tx) Duplicates() int { return tx.batch.Duplicates() }

func (tx *Tx) close() {
	tx.mu.Lock()
	tx.closed = true
	tx.mu.Unlock()
}

func (tx *Tx) isClosed() bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.closed
}

// Begin starts a savepoint (a pseudo nested transaction).
func (tx *Tx) Begin(ctx context.Context) (pgx.Tx, error) {
	if tx.isClosed() {
		return nil, pgx.ErrTxClosed
	}
	return tx.inner.Begin(ctx)
}

// Commit is refused with ErrManagedTx; return nil from the function instead.
func (tx *Tx) Commit(context.Context) error { return ErrManagedTx }

// Rollback is refused with ErrManagedTx; return an error from the function
// instead.
func (tx *Tx) Rollback(context.Context) error { return ErrManagedTx }

// CopyFrom runs COPY FROM in the transaction.
func (tx *Tx) CopyFrom(ctx context.Context, tableName pgx.Identifier, columnNames []string, rowSrc pgx.CopyFromSource) (int64, error) {
	if tx.isClosed() {
		return 0, pgx.ErrTxClosed
	}
	return tx.inner.CopyFrom(ctx, tableName, columnNames, rowSrc)
}

// SendBatch sends a pgx batch in the transaction.
func (tx *Tx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if tx.isClosed() {
		return pgx.FailedBatchResults(b, pgx.ErrTxClosed)
	}
	return tx.inner.SendBatch(ctx, b)
}

// LargeObjects returns the large object API of the transaction.
func (tx *Tx) LargeObjects() pgx.LargeObjects { return tx.inner.LargeObjects() }

// Prepare creates a prepared statement on the transaction's connection.
func (tx *Tx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if tx.isClosed() {
		return nil, pgx.ErrTxClosed
	}
	return tx.inner.Prepare(ctx, name, sql)
}

// Exec runs sql in the transaction.
func (tx *Tx) Exec(ctx context.Context, sql string, arguments ...any) (pgconn.CommandTag, error) {
	if tx.isClosed() {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	return tx.inner.Exec(ctx, sql, arguments...)
}

// Query runs sql in the transaction.
func (tx *Tx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if tx.isClosed() {
		return nil, pgx.ErrTxClosed
	}
	return tx.inner.Query(ctx, sql, args...)
}

// QueryRow runs sql in the transaction.
func (tx *Tx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if tx.isClosed() {
		return errRow{err: pgx.ErrTxClosed}
	}
	return tx.inner.QueryRow(ctx, sql, args...)
}

// Conn returns the transaction's connection.
func (tx *Tx) Conn() *pgx.Conn { return tx.inner.Conn() }

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
