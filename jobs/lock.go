package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverlog"
	"github.com/riverqueue/river/rivertype"
)

const (
	// LockLeaseDefault is the lease of a Lock that sets none, for a worker
	// without a Timeout of its own: River's default job timeout.
	LockLeaseDefault = river.JobTimeoutDefault
	// LockLeaseMin is the shortest lease a Lock or LockConfig may ask for.
	LockLeaseMin = 100 * time.Millisecond //nolint:revive // time-naming: Min is minimum, not minutes; an exported name, kept
	// LockSnoozeBaseDefault is how long a job that finds its lock taken
	// snoozes, before jitter.
	LockSnoozeBaseDefault = time.Second
	// LockReleaseTimeoutDefault bounds the statement that releases a lock.
	LockReleaseTimeoutDefault = 5 * time.Second
	// LockPermitsMax is the largest number of permits a key may have.
	LockPermitsMax = 1000
)

// ErrLockLost is the cause with which a job's context is cancelled when its
// lease could not be renewed in time (the database was unreachable for a
// whole lease, or an operator deleted the row) and another job may now hold
// its slot. A job that returns an error after losing its lock has it wrapped
// in ErrLockLost.
var ErrLockLost = errors.New("jobs: lock lease lost")

// ErrLockInvalid is wrapped by the error a job fails with when its worker's
// LockFor returns a Lock with out-of-range fields.
var ErrLockInvalid = errors.New("jobs: invalid lock")

// Lock describes what a job must hold while it runs: one of Permits slots of
// Key in Namespace. With one permit it is a mutex (a worker lock: no two jobs
// of the same payer at once); with N it is a semaphore of N holders (a
// global concurrency limit, across every process on every machine).
type Lock struct {
	// Namespace separates keys. Defaults to the job's kind, so two kinds
	// never block each other unless they name the same namespace, which lets
	// them exclude each other.
	Namespace string
	// Key is computed from the source of truth (e.g. the payer id of an
	// invoice, not necessarily an arg). "" means the job needs no lock and
	// runs straight away.
	Key string
	// Permits is how many jobs may hold Key at once. Defaults to 1 (a mutex).
	// At most LockPermitsMax. All jobs of a key should agree on it: while
	// they disagree (a deploy changing it) the largest value wins.
	Permits int
	// Lease is how long the lock outlives its holder's process if that
	// process dies; while the job runs the lease is renewed every Lease/3.
	// Defaults to the worker's Timeout when it has one, else to
	// LockConfig.Lease. At least LockLeaseMin.
	Lease time.Duration
}

// Locker is implemented by a worker whose jobs need a lock. LockFor is called
// before each attempt, outside any transaction, and may read the database.
// A job whose lock is held by other jobs snoozes (river.JobSnooze, which does
// not use up an attempt) and asks again when it wakes up.
type Locker[T river.JobArgs] interface {
	LockFor(ctx context.Context, job *river.Job[T]) (Lock, error)
}

// lockFunc is the untyped form of Locker that lockMiddleware calls.
type lockFunc func(ctx context.Context, job *rivertype.JobRow) (Lock, error)

// lockFuncFor returns w's lockFunc, which decodes the row's args into T and
// calls w.LockFor, and true when w implements Locker[T]. A Lock without a
// Lease gets w.Timeout(job) when that is positive.
func lockFuncFor[T river.JobArgs](w river.Worker[T]) (lockFunc, bool) {
	locker, ok := w.(Locker[T])
	if !ok {
		return nil, false
	}
	return func(ctx context.Context, row *rivertype.JobRow) (Lock, error) {
		var args T
		if err := json.Unmarshal(row.EncodedArgs, &args); err != nil {
			return Lock{}, fmt.Errorf("jobs: decoding args of %s job %d: %w", row.Kind, row.ID, err)
		}
		job := &river.Job[T]{JobRow: row, Args: args}
		lock, err := locker.LockFor(ctx, job)
		if err != nil {
			return Lock{}, err
		}
		if lock.Lease == 0 {
			if timeout := w.Timeout(job); timeout > 0 {
				lock.Lease = timeout
			}
		}
		return lock, nil
	}, true
}

// LockConfig tunes the worker lock NewClient installs
// (ClientConfig.Lock). A nil *LockConfig takes the defaults.
type LockConfig struct {
	// Lease is the lease of a Lock that sets none and whose worker has no
	// Timeout. Set it to the client's JobTimeout when that is not River's
	// default. Defaults to LockLeaseDefault.
	Lease time.Duration
	// SnoozeBase is how long a job that finds its lock taken snoozes; up to
	// half as much again is added at random so that waiting jobs do not all
	// wake at once. Defaults to LockSnoozeBaseDefault.
	SnoozeBase time.Duration
	// ReleaseTimeout bounds the statement that releases a lock after the job
	// returned; when it fails the lease runs out by itself. Defaults to
	// LockReleaseTimeoutDefault.
	ReleaseTimeout time.Duration
	// Logger receives warnings (a lease lost, a release failed) when the job
	// has no riverlog logger in its context. Defaults to discarding them.
	Logger *slog.Logger
}

// WithDefaults returns a copy of c with every zero field set to its default.
// It accepts a nil receiver.
func (c *LockConfig) WithDefaults() LockConfig {
	var out LockConfig
	if c != nil {
		out = *c
	}
	if out.Lease == 0 {
		out.Lease = LockLeaseDefault
	}
	if out.SnoozeBase == 0 {
		out.SnoozeBase = LockSnoozeBaseDefault
	}
	if out.ReleaseTimeout == 0 {
		out.ReleaseTimeout = LockReleaseTimeoutDefault
	}
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}
	return out
}

func (c *LockConfig) validate() error {
	switch {
	case c.Lease < LockLeaseMin:
		return fmt.Errorf("jobs: LockConfig.Lease %s is under the minimum %s", c.Lease, LockLeaseMin)
	case c.SnoozeBase < 0:
		return fmt.Errorf("jobs: LockConfig.SnoozeBase %s is negative", c.SnoozeBase)
	case c.ReleaseTimeout < 0:
		return fmt.Errorf("jobs: LockConfig.ReleaseTimeout %s is negative", c.ReleaseTimeout)
	}
	return nil
}

// lockMiddleware runs each job whose worker asks for a Lock only while it
// holds that lock: the worker lock and the global semaphore. It is River
// worker middleware (river.Config.Middleware).
//
// Before a job runs, the middleware calls the kind's lockFunc. When the Lock
// has a Key, it takes a free (or expired) slot of the key in one statement;
// when every slot is held it returns river.JobSnooze(SnoozeBase + jitter),
// which puts the job back without using up an attempt (River stores the
// attempt it had before and counts the snoozes in the job's metadata,
// "snoozes"). Once it holds a slot it renews the lease every Lease/3 while
// the job runs, and deletes the row when the job returns, whatever the
// outcome. A process that dies holding a slot blocks it until its lease
// runs out, at most Lease. All times are the database's clock.
//
// Leases live in the job_locks table. Who holds what:
//
//	SELECT l.namespace, l.lock_key, l.slot, l.holder_job_id, j.kind, j.state,
//	       l.holder_client, l.acquired_at, l.expires_at, l.expires_at < now() AS expired
//	  FROM job_locks l LEFT JOIN river_job j ON j.id = l.holder_job_id
//	 ORDER BY l.namespace, l.lock_key, l.slot;
//
// A job that waited carries River's count of its snoozes (for a lock or any
// other reason); the waiting ones:
//
//	SELECT id, kind, state, scheduled_at, metadata->>'snoozes' AS snoozes
//	  FROM river_job WHERE state IN ('available', 'scheduled') AND metadata ? 'snoozes';
type lockMiddleware struct {
	river.MiddlewareDefaults

	pool   *pgxpool.Pool
	lookup func(kind string) (lockFunc, bool)
	cfg    LockConfig

	acquired atomic.Int64
	snoozed  atomic.Int64
	lost     atomic.Int64
}

var _ rivertype.WorkerMiddleware = (*lockMiddleware)(nil)

// newLockMiddleware returns a middleware that takes, for each job, the Lock
// that lookup(kind)'s lockFunc asks for, in the job_locks table of pool.
// Kinds that lookup does not know run without a lock.
func newLockMiddleware(pool *pgxpool.Pool, lookup func(kind string) (lockFunc, bool), cfg *LockConfig) (*lockMiddleware, error) {
	if pool == nil {
		return nil, errors.New("jobs: the worker lock needs a pool")
	}
	if lookup == nil {
		return nil, errors.New("jobs: the worker lock needs a lookup function")
	}
	c := cfg.WithDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &lockMiddleware{pool: pool, lookup: lookup, cfg: c}, nil
}

// Acquired is the number of locks taken since start.
func (m *lockMiddleware) Acquired() int64 { return m.acquired.Load() }

// Snoozed is the number of times a job was snoozed because its lock was held.
func (m *lockMiddleware) Snoozed() int64 { return m.snoozed.Load() }

// Lost is the number of leases lost while their job ran (see ErrLockLost).
func (m *lockMiddleware) Lost() int64 { return m.lost.Load() }

// heldLock is one slot a job holds.
type heldLock struct {
	namespace string
	key       string
	slot      int
	jobID     int64
	lease     time.Duration
}

// Work implements rivertype.WorkerMiddleware.
func (m *lockMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	lockFor, ok := m.lookup(job.Kind)
	if !ok {
		return doInner(ctx)
	}
	lock, err := lockFor(ctx, job)
	if err != nil {
		return fmt.Errorf("jobs: computing the lock of %s job %d: %w", job.Kind, job.ID, err)
	}
	if lock.Key == "" {
		return doInner(ctx)
	}
	lock, err = m.complete(job, lock)
	if err != nil {
		return err
	}

	held, err := m.acquire(ctx, job, lock)
	if err != nil {
		return err
	}
	if held == nil {
		m.snoozed.Add(1)
		return river.JobSnooze(m.snooze())
	}
	m.acquired.Add(1)

	jobCtx, cancelJob := context.WithCancelCause(ctx)
	defer cancelJob(nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { m.renew(ctx, held, stop, cancelJob) })
	// finish stops the renewals and releases the lock, also when the job
	// panics (River recovers the panic further up).
	var once sync.Once
	finish := func() {
		once.Do(func() {
			close(stop)
			wg.Wait()
			m.release(ctx, held)
		})
	}
	defer finish()

	err = doInner(jobCtx)
	finish()
	if err != nil && errors.Is(context.Cause(jobCtx), ErrLockLost) && !errors.Is(err, ErrLockLost) {
		err = fmt.Errorf("%w: %w", ErrLockLost, err)
	}
	return err
}

// complete fills in the defaults of lock and checks its fields.
func (m *lockMiddleware) complete(job *rivertype.JobRow, lock Lock) (Lock, error) {
	if lock.Namespace == "" {
		lock.Namespace = job.Kind
	}
	if lock.Permits == 0 {
		lock.Permits = 1
	}
	if lock.Lease == 0 {
		lock.Lease = m.cfg.Lease
	}
	switch {
	case lock.Permits < 0 || lock.Permits > LockPermitsMax:
		return lock, fmt.Errorf("%w for %s job %d: permits %d is not between 1 and %d", ErrLockInvalid, job.Kind, job.ID, lock.Permits, LockPermitsMax)
	case lock.Lease < LockLeaseMin:
		return lock, fmt.Errorf("%w for %s job %d: lease %s is under the minimum %s", ErrLockInvalid, job.Kind, job.ID, lock.Lease, LockLeaseMin)
	}
	return lock, nil
}

// snooze returns SnoozeBase plus up to half of it at random.
func (m *lockMiddleware) snooze() time.Duration {
	base := m.cfg.SnoozeBase
	if base <= 1 {
		return base
	}
	return base + rand.N(base/2+1) //nolint:gosec // jitter, not a secret
}

// acquire takes a slot of lock for job, or returns nil when all are held. It
// tries again while it lost a race for a slot that looked free, at most
// Permits times: each lost race means another job took a different slot.
func (m *lockMiddleware) acquire(ctx context.Context, job *rivertype.JobRow, lock Lock) (*heldLock, error) {
	holderClient := ""
	if n := len(job.AttemptedBy); n > 0 {
		holderClient = job.AttemptedBy[n-1]
	}
	for range lock.Permits {
		var slot *int32
		var sawFree bool
		err := m.pool.QueryRow(ctx, lockAcquireSQL,
			lock.Namespace, lock.Key, lock.Permits, job.ID, holderClient, lock.Lease.Microseconds(),
		).Scan(&slot, &sawFree)
		if err != nil {
			return nil, fmt.Errorf("jobs: taking lock %s/%s for %s job %d: %w", lock.Namespace, lock.Key, job.Kind, job.ID, err)
		}
		if slot != nil {
			return &heldLock{namespace: lock.Namespace, key: lock.Key, slot: int(*slot), jobID: job.ID, lease: lock.Lease}, nil
		}
		if !sawFree {
			return nil, nil
		}
	}
	return nil, nil
}

// renew extends the lease every lease/3 until stop is closed. When the
// lease runs out before a renewal succeeded, or the row is no longer this
// job's, it cancels the job with ErrLockLost and stops.
func (m *lockMiddleware) renew(ctx context.Context, held *heldLock, stop <-chan struct{}, cancelJob context.CancelCauseFunc) {
	every := held.lease / 3
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	// The local, monotonic, deadline is conservative: it starts when the
	// statement that set expires_at was sent.
	expires := time.Now().Add(held.lease)
	base := context.WithoutCancel(ctx)
	for {
		select {
		case <-stop:
			return
		case <-ticker.C:
		}
		sent := time.Now()
		renewCtx, cancel := context.WithTimeout(base, every)
		tag, err := m.pool.Exec(renewCtx, lockRenewSQL, held.namespace, held.key, held.slot, held.jobID, held.lease.Microseconds())
		cancel()
		switch {
		case err == nil && tag.RowsAffected() == 1:
			expires = sent.Add(held.lease)
			continue
		case err == nil:
			m.lose(ctx, held, cancelJob, "jobs: lock row is gone or taken over")
			return
		case time.Now().After(expires):
			m.lose(ctx, held, cancelJob, "jobs: lock lease ran out before it could be renewed", "err", err)
			return
		default:
			m.logger(ctx).WarnContext(ctx, "jobs: renewing a lock lease failed; retrying",
				"namespace", held.namespace, "lock_key", held.key, "slot", held.slot, "job_id", held.jobID, "err", err)
		}
	}
}

func (m *lockMiddleware) lose(ctx context.Context, held *heldLock, cancelJob context.CancelCauseFunc, msg string, attrs ...any) {
	m.lost.Add(1)
	attrs = append(attrs, "namespace", held.namespace, "lock_key", held.key, "slot", held.slot, "job_id", held.jobID)
	m.logger(ctx).WarnContext(ctx, msg, attrs...)
	cancelJob(fmt.Errorf("%w: %s/%s slot %d", ErrLockLost, held.namespace, held.key, held.slot))
}

// release deletes held's row if it is still this job's. It does not use the
// job's context, which may be cancelled by then.
func (m *lockMiddleware) release(ctx context.Context, held *heldLock) {
	releaseCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.ReleaseTimeout)
	defer cancel()
	if _, err := m.pool.Exec(releaseCtx, lockReleaseSQL, held.namespace, held.key, held.slot, held.jobID); err != nil {
		m.logger(ctx).WarnContext(ctx, "jobs: releasing a lock failed; it expires with its lease",
			"namespace", held.namespace, "lock_key", held.key, "slot", held.slot, "job_id", held.jobID,
			"lease", held.lease, "err", err)
	}
}

// logger is the job's riverlog logger when there is one, so warnings show up
// with the job in River UI, else the configured one.
func (m *lockMiddleware) logger(ctx context.Context) *slog.Logger {
	if l, ok := riverlog.LoggerSafely(ctx); ok {
		return l
	}
	return m.cfg.Logger
}

// lockAcquireSQL takes one slot of ($1 namespace, $2 key) among $3 permits
// for job $4 of client $5, for a lease of $6 microseconds. It returns the
// slot taken (NULL when none) and whether a slot looked free.
//
// candidate picks, in the statement's snapshot, one slot at random among
// those with no row or an expired one. The INSERT … ON CONFLICT then decides
// under the primary key's lock, against the newest committed row: a free slot
// is inserted by exactly one of several racing statements (the others wait
// for it, see the conflict, and their DO UPDATE … WHERE finds the new lease
// unexpired, so they update nothing); an expired slot is taken over by the
// first to lock its row, and the others re-check expires_at on the row it
// wrote. A statement that updates nothing returns no slot; when it had seen a
// free one, it lost a race and the caller tries again with a new snapshot.
// Slots exist only in 0..permits-1 and the key (namespace, lock_key, slot) is
// unique, so a key never has more holders than permits.
const lockAcquireSQL = `
WITH candidate AS (
    SELECT s.slot
      FROM generate_series(0, $3::int - 1) AS s(slot)
      LEFT JOIN job_locks cur
             ON cur.namespace = $1 AND cur.lock_key = $2 AND cur.slot = s.slot
     WHERE cur.slot IS NULL OR cur.expires_at < now()
     ORDER BY random()
     LIMIT 1
), taken AS (
    INSERT INTO job_locks AS held (namespace, lock_key, slot, holder_job_id, holder_client, acquired_at, expires_at)
    SELECT $1, $2, candidate.slot, $4, $5, now(), now() + $6::bigint * interval '1 microsecond'
      FROM candidate
    ON CONFLICT (namespace, lock_key, slot) DO UPDATE
       SET holder_job_id = excluded.holder_job_id,
           holder_client = excluded.holder_client,
           acquired_at   = excluded.acquired_at,
           expires_at    = excluded.expires_at
     WHERE held.expires_at < now()
    RETURNING held.slot
)
SELECT (SELECT slot FROM taken), EXISTS (SELECT 1 FROM candidate)`

// lockRenewSQL extends the lease of ($1, $2, slot $3) by $5 microseconds from
// now, if job $4 still holds it. It affects no row once the slot was taken
// over or deleted.
const lockRenewSQL = `
UPDATE job_locks SET expires_at = now() + $5::bigint * interval '1 microsecond'
 WHERE namespace = $1 AND lock_key = $2 AND slot = $3 AND holder_job_id = $4`

// lockReleaseSQL frees ($1, $2, slot $3) if job $4 still holds it.
const lockReleaseSQL = `
DELETE FROM job_locks
 WHERE namespace = $1 AND lock_key = $2 AND slot = $3 AND holder_job_id = $4`
