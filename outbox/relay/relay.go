// Package relay moves committed rows of the outbox table (outbox_jobs) into
// River's job table, exactly once.
//
// A business transaction writes its jobs as lean outbox rows (package
// outbox, the SQL function aftercommit_enqueue, or a plain INSERT from any
// language). A Relay takes committed rows oldest first with FOR UPDATE SKIP
// LOCKED, turns each into River insert parameters — the kind's registered
// defaults, the queue lock, the payload limit and a strict decode of the
// args applied — inserts them through River's own insert path and deletes
// them, all in ONE transaction per batch. A relay killed mid-batch leaves
// every row in place; several relays share the rows without waiting for
// each other or for River's leader. A row the relay cannot accept moves to
// outbox_dead_jobs with the reason, and the rows behind it flow on.
//
// cmd/worker runs one in every process; jobs.NewRelay builds one from a
// registry for an in-process client.
package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/internal/outboxrow"
	"github.com/aftercommit/aftercommit/outbox/internal/wake"
)

// Defaults of Config.
const (
	// BatchSizeDefault is the most rows one relay transaction moves.
	BatchSizeDefault = 1000
	// CopyMinJobsDefault is the batch size from which the jobs that no
	// uniqueness concerns are written with River's COPY insert.
	CopyMinJobsDefault = 200
	// MoversDefault is the most batches a relay moves at once.
	MoversDefault = 2
	// PollMinDefault is the wait before the next look at the table after a
	// batch that moved rows but did not fill up.
	PollMinDefault = time.Millisecond
	// ScanLagDefault is how far behind its last takes the relay's loop
	// starts looking for rows (Config.ScanLag).
	ScanLagDefault = time.Second
	// FullScanIntervalDefault is how often the relay's loop looks from the
	// table's head (Config.FullScanInterval).
	FullScanIntervalDefault = time.Second
	// PollMaxDefault is the longest wait between two looks at the table
	// while it stays empty and no notification comes.
	PollMaxDefault = 100 * time.Millisecond
)

// Config tunes a Relay. A nil *Config takes every default: every kind is
// accepted and its args inserted as written.
type Config struct {
	// Decode turns a row's kind and args into the args River inserts (the
	// row's JSON is inserted as written; the decoded value gives River the
	// type's InsertOpts and LockKey its key). An error makes the row dead
	// with the error as its reason. jobs.NewRelay sets it to the registry's
	// strict decode (jobs.Registry.DecodeArgs).
	//
	// Defaults to nil: any kind, args not checked.
	Decode func(kind string, args []byte) (river.JobArgs, error)

	// KindDefaults gives the queue and priority of a kind, used when the
	// row leaves them NULL (as outbox.Config.KindDefaults).
	//
	// Defaults to nil.
	KindDefaults func(kind string) (queue string, priority int, ok bool)

	// Queues, when not empty, lists the only queues a job may go to; a row
	// for another queue is dead.
	//
	// Defaults to empty: any well-formed queue.
	Queues []string

	// LockKey returns the queue-lock key of decoded args (ok false: no
	// lock). Rows of one kind and key in a batch become one job, and the
	// rows with a key are inserted through River's unique insert in key
	// order (so two relays never deadlock), where the client's queue-lock
	// middleware matches a waiting job. jobs.NewRelay sets it.
	//
	// Defaults to nil: no queue locks.
	LockKey func(args river.JobArgs) (key string, ok bool)

	// Sequence returns the sequence of decoded args (ok false: none). The
	// rows of a sequence are inserted in the order their transactions
	// committed, each but the head as a River 'pending' job that the
	// sequence's trigger makes available when the one before it finishes
	// (migrations/0022_job_sequences.up.sql). A sequenced row that is
	// unique or asks to be pending is dead. jobs.NewRelay sets it from
	// the workers that are jobs.Sequencer.
	//
	// Defaults to nil: no sequences.
	Sequence func(args river.JobArgs) (seq Sequence, ok bool)

	// MaxPayloadBytes is the largest args a row may hold; a larger one is
	// dead. Defaults to outbox.MaxPayloadBytesDefault (128 KiB).
	MaxPayloadBytes int

	// BatchSize is the most rows moved per transaction. Defaults to
	// BatchSizeDefault.
	BatchSize int

	// CopyMinJobs: from this many jobs without uniqueness in a batch, they
	// are inserted with River's InsertManyFastTx (COPY). Negative: never.
	// Defaults to CopyMinJobsDefault.
	CopyMinJobs int

	// Movers is the most batches the relay moves at once. While batches
	// come back full (a backlog), the relay adds a mover, up to Movers;
	// each moves its own batch in its own transaction on its own
	// connection of the pool, so one batch's take overlaps another's
	// insert, and ends at the first batch that is not full. Movers never
	// wait for each other's rows (SKIP LOCKED). Rows of one batch reach
	// river_job oldest first; with more than one mover, movers taking at
	// once may interleave their rows, and two batches may commit out of
	// their rows' order.
	//
	// Defaults to MoversDefault. 1: one batch at a time.
	Movers int

	// PollMin and PollMax bound the adaptive poll: after a batch that moved
	// rows the relay looks again after PollMin; each empty look doubles the
	// wait up to PollMax. A notification from a writer (outbox.Config's
	// RelayNotifyInterval) ends a wait at once. Defaults to PollMinDefault
	// and PollMaxDefault.
	PollMin, PollMax time.Duration

	// DisableListen makes the relay rely on its poll alone, holding no
	// connection of its own for LISTEN (a relay behind a pooler in
	// transaction mode).
	//
	// Defaults to false: one connection, outside the pool, listens.
	DisableListen bool

	// ListenConnConfig, when set, is what the LISTEN connection is opened
	// with: a direct connection to Postgres when the pool goes through a
	// pooler in transaction mode (PgBouncer), which cannot hold a LISTEN.
	//
	// Defaults to nil: the pool's connection settings.
	ListenConnConfig *pgx.ConnConfig

	// ScanLag: the relay's loop looks for rows above the highest id that a
	// take begun at least ScanLag ago moved, not from the table's head.
	// The head holds the index entries of the rows moved already, which
	// only vacuum removes; while a long transaction holds vacuum back (a
	// REPEATABLE READ report, an idle session in a transaction) they pile
	// up, at the rate of the outbox, and a take from the head walks every
	// one of them. A row whose transaction commits more than about ScanLag
	// after its INSERT can fall below the floor: the loop's full scan, every
	// FullScanInterval, moves it. MoveBatch and Drain always scan from the
	// head.
	//
	// Defaults to ScanLagDefault. Negative: every take scans from the head.
	ScanLag time.Duration

	// FullScanInterval is how often the loop's take scans from the head:
	// the longest extra wait of a row whose transaction ran longer than
	// ScanLag after its INSERT. Defaults to FullScanIntervalDefault.
	FullScanInterval time.Duration

	// Schema qualifies the outbox tables and River's (the River client's
	// Schema must match). Defaults to "": the search_path.
	Schema string

	// OnMove, when set, is called after every batch that moved rows, with
	// what it did (metrics hook it here). It must be fast, and safe for
	// concurrent use: movers call it at once.
	OnMove func(ctx context.Context, res MoveResult)

	// Logger receives errors and dead rows. Defaults to slog.Default().
	Logger *slog.Logger
}

func (c *Config) withDefaults() Config {
	var out Config
	if c != nil {
		out = *c
	}
	if out.MaxPayloadBytes == 0 {
		out.MaxPayloadBytes = outbox.MaxPayloadBytesDefault
	}
	if out.BatchSize == 0 {
		out.BatchSize = BatchSizeDefault
	}
	if out.CopyMinJobs == 0 {
		out.CopyMinJobs = CopyMinJobsDefault
	}
	if out.Movers == 0 {
		out.Movers = MoversDefault
	}
	if out.PollMin == 0 {
		out.PollMin = PollMinDefault
	}
	if out.PollMax == 0 {
		out.PollMax = PollMaxDefault
	}
	if out.ScanLag == 0 {
		out.ScanLag = ScanLagDefault
	}
	if out.FullScanInterval == 0 {
		out.FullScanInterval = FullScanIntervalDefault
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	return out
}

// Errors of New.
var (
	// ErrConfig is matched by every configuration error of New.
	ErrConfig = errors.New("relay: invalid configuration")
)

// MoveResult is what one batch (or a Drain) did.
type MoveResult struct {
	// Rows is the number of outbox rows taken (and deleted).
	Rows int
	// Inserted counts the new river_job rows.
	Inserted int
	// UniqueSkipped counts the rows that matched a job already waiting
	// (a queue lock, or River's unique options) and so added no job.
	UniqueSkipped int
	// Coalesced counts the rows dropped because a row of the same kind
	// and queue-lock key came before them in the batch.
	Coalesced int
	// Dead counts the rows moved to outbox_dead_jobs.
	Dead int
	// OldestCreatedAt is the created_at (its transaction's start) of the
	// oldest row taken; zero when Rows is 0.
	OldestCreatedAt time.Time
}

func (r *MoveResult) add(o MoveResult) {
	r.Rows += o.Rows
	r.Inserted += o.Inserted
	r.UniqueSkipped += o.UniqueSkipped
	r.Coalesced += o.Coalesced
	r.Dead += o.Dead
	if !o.OldestCreatedAt.IsZero() && (r.OldestCreatedAt.IsZero() || o.OldestCreatedAt.Before(r.OldestCreatedAt)) {
		r.OldestCreatedAt = o.OldestCreatedAt
	}
}

// Stats are a relay's counters since New.
type Stats struct {
	Batches, Rows, Inserted, UniqueSkipped, Coalesced, Dead, Errors int64
}

// Relay moves committed outbox rows into River. It is safe for concurrent
// use; MoveBatch and Drain may be called while it runs.
type Relay struct {
	pool   *pgxpool.Pool
	client *river.Client[pgx.Tx]
	cfg    Config
	queues map[string]struct{}
	sql    statements
	seqSQL seqStatements

	wake chan struct{}

	mu      sync.Mutex
	cancel  context.CancelFunc // hard stop of the running loop
	stopped chan struct{}      // closed when Stop asks the loop to end
	done    chan struct{}      // closed when the loop and listener ended

	batches, rows, inserted, skipped, coalesced, dead, errs atomic.Int64

	movers atomic.Int32 // movers running beside the loop

	floor scanFloor // where the loop's takes start
}

// New returns a relay that moves rows with pool and inserts jobs with
// client (insert-only is enough; jobs.NewClient's carries the queue-lock
// middleware LockKey relies on). cfg may be nil.
func New(pool *pgxpool.Pool, client *river.Client[pgx.Tx], cfg *Config) (*Relay, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrConfig)
	}
	if client == nil {
		return nil, fmt.Errorf("%w: nil River client", ErrConfig)
	}
	c := cfg.withDefaults()
	switch {
	case c.MaxPayloadBytes < 0:
		return nil, fmt.Errorf("%w: MaxPayloadBytes must not be negative, got %d", ErrConfig, c.MaxPayloadBytes)
	case c.BatchSize < 1 || c.BatchSize > 100_000:
		return nil, fmt.Errorf("%w: BatchSize must be 1 to 100000, got %d", ErrConfig, c.BatchSize)
	case c.Movers < 1 || c.Movers > 64:
		return nil, fmt.Errorf("%w: Movers must be 1 to 64, got %d", ErrConfig, c.Movers)
	case c.PollMin < 0 || c.PollMax < c.PollMin:
		return nil, fmt.Errorf("%w: need 0 <= PollMin <= PollMax, got %s and %s", ErrConfig, c.PollMin, c.PollMax)
	case c.FullScanInterval < 0:
		return nil, fmt.Errorf("%w: FullScanInterval must not be negative, got %s", ErrConfig, c.FullScanInterval)
	}
	r := &Relay{pool: pool, client: client, cfg: c, sql: newStatements(c.Schema), seqSQL: newSeqStatements(c.Schema), wake: make(chan struct{}, 1)}
	if len(c.Queues) > 0 {
		r.queues = make(map[string]struct{}, len(c.Queues))
		for _, q := range c.Queues {
			if !outboxrow.ValidQueueName(q) {
				return nil, fmt.Errorf("%w: Queues holds %q", ErrConfig, q)
			}
			r.queues[q] = struct{}{}
		}
	}
	return r, nil
}

// Stats returns the relay's counters.
func (r *Relay) Stats() Stats {
	return Stats{
		Batches: r.batches.Load(), Rows: r.rows.Load(), Inserted: r.inserted.Load(),
		UniqueSkipped: r.skipped.Load(), Coalesced: r.coalesced.Load(), Dead: r.dead.Load(), Errors: r.errs.Load(),
	}
}

// ErrRunning is returned by Start when the relay already runs.
var ErrRunning = errors.New("relay: already running")

// Start runs the relay in the background until Stop (or until ctx is
// cancelled): it moves rows as they commit, woken by writers'
// notifications and its adaptive poll. Errors are logged and retried with
// a backoff; they never stop it.
func (r *Relay) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancel != nil {
		return ErrRunning
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	r.stopped = make(chan struct{})
	r.done = make(chan struct{})
	stopped, done := r.stopped, r.done
	go func() {
		// ctx ending is a hard stop, as Stop's own context running out.
		select {
		case <-ctx.Done():
			cancel()
		case <-done:
		}
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.loop(runCtx, stopped, &wg) }()
	// Writers of this process wake the relay at once after a commit
	// (package wake): by the pool's search path, and by Config.Schema.
	keys := []string{wake.Key(r.pool)}
	if r.cfg.Schema != "" {
		if k := wake.KeyFor(r.pool, r.cfg.Schema); k != keys[0] {
			keys = append(keys, k)
		}
	}
	for _, key := range keys {
		ch, unsubscribe := wake.Subscribe(key)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer unsubscribe()
			for {
				select {
				case <-ch:
					r.Wake()
				case <-stopped:
					return
				case <-runCtx.Done():
					return
				}
			}
		}()
	}
	if !r.cfg.DisableListen {
		wg.Add(1)
		go func() { defer wg.Done(); r.listen(runCtx, stopped) }()
	}
	go func() {
		wg.Wait()
		close(done)
		// Ended by Start's context rather than by Stop: the relay no
		// longer runs, and may be started again.
		r.mu.Lock()
		if r.done == done {
			cancel()
			r.cancel, r.stopped, r.done = nil, nil, nil
		}
		r.mu.Unlock()
	}()
	return nil
}

// Stop asks the relay to finish the batch under way and end, and waits
// until it has, or until ctx is done: then the batch is cut short (its
// transaction rolls back; its rows stay for the next relay) and ctx's error
// is returned. Stopping a relay that does not run is a no-op.
func (r *Relay) Stop(ctx context.Context) error {
	r.mu.Lock()
	cancel, stopped, done := r.cancel, r.stopped, r.done
	if cancel != nil {
		select {
		case <-stopped:
		default:
			close(stopped)
		}
	}
	r.mu.Unlock()
	if cancel == nil {
		return nil
	}
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		cancel()
		<-done
		err = ctx.Err()
	}
	cancel()
	r.mu.Lock()
	if r.done == done {
		r.cancel, r.stopped, r.done = nil, nil, nil
	}
	r.mu.Unlock()
	return err
}

// Wake makes a running relay look at the table now (an in-process writer
// may call it after a commit).
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *Relay) loop(ctx context.Context, stopped <-chan struct{}, wg *sync.WaitGroup) {
	wait := r.cfg.PollMin
	errWait := time.Duration(0)
	for {
		res, err := r.moveNext(ctx)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			errWait = min(max(2*errWait, 50*time.Millisecond), 5*time.Second)
			r.cfg.Logger.ErrorContext(ctx, "relay: moving outbox rows failed; retrying",
				slog.String("err", err.Error()), slog.Duration("retry_in", errWait))
			wait = errWait
		case res.Rows >= r.cfg.BatchSize:
			errWait = 0
			wait = 0 // more rows are likely waiting
			r.addMovers(ctx, stopped, wg)
		case res.Rows > 0:
			errWait = 0
			wait = r.cfg.PollMin
		default:
			errWait = 0
			wait = min(max(2*wait, r.cfg.PollMin), r.cfg.PollMax)
		}
		if wait == 0 {
			select {
			case <-stopped:
				return
			default:
				continue
			}
		}
		timer := time.NewTimer(wait)
		select {
		case <-stopped:
			timer.Stop()
			return
		case <-ctx.Done():
			timer.Stop()
			return
		case <-r.wake:
			timer.Stop()
			wait = r.cfg.PollMin // a writer just committed
		case <-timer.C:
		}
	}
}

// addMovers starts movers beside the loop until Config.Movers move. Each
// moves batches until one is not full, an error (the loop logs and
// retries what it meets too) or a stop.
func (r *Relay) addMovers(ctx context.Context, stopped <-chan struct{}, wg *sync.WaitGroup) {
	for {
		if n := r.movers.Add(1); int(n) >= r.cfg.Movers {
			r.movers.Add(-1)
			return
		}
		wg.Go(func() {
			defer r.movers.Add(-1)
			for {
				select {
				case <-stopped:
					return
				default:
				}
				res, err := r.moveNext(ctx)
				if err != nil || res.Rows < r.cfg.BatchSize {
					return
				}
			}
		})
	}
}

// listen holds a connection of its own (outside the pool, so a small pool
// never waits for it) listening on the writers' channel, and wakes the loop
// on each notification. It reconnects after an error.
func (r *Relay) listen(ctx context.Context, stopped <-chan struct{}) {
	// Stop ends the wait for a notification at once: the loop finishes its
	// batch, the listener has none.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	backoff := 100 * time.Millisecond
	for {
		err := r.listenOnce(ctx)
		select {
		case <-stopped:
			return
		case <-ctx.Done():
			return
		default:
		}
		r.cfg.Logger.WarnContext(ctx, "relay: listening for outbox notifications failed; polling meanwhile",
			slog.String("err", fmt.Sprint(err)), slog.Duration("retry_in", backoff))
		select {
		case <-stopped:
			return
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (r *Relay) listenOnce(ctx context.Context) error {
	connCfg := r.cfg.ListenConnConfig
	if connCfg == nil {
		connCfg = r.pool.Config().ConnConfig
	}
	conn, err := pgx.ConnectConfig(ctx, connCfg.Copy())
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	schema := r.cfg.Schema
	if schema == "" {
		if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
			return err
		}
	}
	channel := schema + "." + outboxrow.Channel
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return err
	}
	r.Wake() // rows may have committed before the LISTEN
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		r.Wake()
	}
}

// Drain moves batches until none is left that this relay can take (rows
// locked by another relay's batch are not waited for), and returns the
// sum. After a full batch it moves with Config.Movers at once. Tests and
// tools call it to move what has committed, now.
func (r *Relay) Drain(ctx context.Context) (MoveResult, error) {
	var (
		mu     sync.Mutex
		total  MoveResult
		failed error
	)
	// drain moves batches until there is none, or a mover failed.
	drain := func() {
		for {
			res, err := r.MoveBatch(ctx)
			mu.Lock()
			total.add(res)
			failed = cmp.Or(failed, err)
			stop := failed != nil
			mu.Unlock()
			if stop || res.Rows == 0 {
				return
			}
		}
	}
	first, err := r.MoveBatch(ctx)
	total.add(first)
	if err != nil || first.Rows < r.cfg.BatchSize {
		if err == nil && first.Rows > 0 {
			drain()
		}
		return total, cmp.Or(err, failed)
	}
	var wg sync.WaitGroup
	for range r.cfg.Movers - 1 {
		wg.Go(drain)
	}
	drain()
	wg.Wait()
	return total, failed
}
