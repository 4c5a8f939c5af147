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

	"github.com/jackc/pgx/v5"
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
	// LockKeepIdleDefault is how long a process keeps an idle semaphore
	// slot for its next job of the key (LockConfig.KeepIdle).
	LockKeepIdleDefault = 20 * time.Millisecond
	// LockKeepMax is the longest a process keeps reusing a semaphore slot
	// it took, and never more than a third of the slot's lease.
	LockKeepMax = time.Second
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
	// KeepIdle is how long a process keeps a semaphore's slot (a Lock of
	// more than one permit) after its job returned, for its next job of the
	// same key, which then starts without a statement. A slot is kept at
	// most LockKeepMax after it was taken, then goes back to the database,
	// so that other processes get their turn. A mutex (one permit) is never
	// kept: another process's job of its key would snooze for it. Negative
	// keeps nothing. Defaults to LockKeepIdleDefault. It takes effect in a
	// client built by NewClient, whose Stop releases the kept slots.
	KeepIdle time.Duration
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
	if out.KeepIdle == 0 {
		out.KeepIdle = LockKeepIdleDefault
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
// outcome: in the background, in the process's next lock statement, so the
// job's worker is free at once; the client's Stop returns only after every
// release was answered (see hookedDriver). A process that dies holding a
// slot blocks it until its lease runs out, at most Lease. All times are the
// database's clock.
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
	batch  groupCommit[*lockRequest]
	// onDelay counts a snooze (Metrics.ObserveFlowDelay); nil: not counted.
	onDelay func(kind, control string)

	acquired atomic.Int64
	snoozed  atomic.Int64
	lost     atomic.Int64

	// While the client works jobs (workHooks), a job returns without
	// waiting for its release: the release goes in the next batch, and the
	// client's stop waits until every one was answered. Elsewhere (a
	// middleware without a client's hooks, a job still running after its
	// client stopped) a job waits for its own release.
	//
	// While the client works jobs, a semaphore slot whose job returned is
	// kept for the process's next job of the key (LockConfig.KeepIdle);
	// sweep releases the ones left idle, the stop hook all of them.
	releases struct {
		mu       sync.Mutex
		async    bool
		inFlight int
		drained  sync.Cond
		ctx      context.Context // the client's, for the sweep's releases
		kept     map[keptKey][]*heldLock
		nKept    int
		sweeping *time.Timer
	}
	reused atomic.Int64
}

// keptKey is what a kept slot may be reused for: the same key, with the
// same lease.
type keptKey struct {
	namespace, key string
	lease          time.Duration
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
	m := &lockMiddleware{pool: pool, lookup: lookup, cfg: c}
	m.batch = groupCommit[*lockRequest]{max: lockBatchMax, send: m.sendBatch}
	m.releases.drained.L = &m.releases.mu
	return m, nil
}

// hooks returns the client hooks that turn background releases on while
// the client works and, when it stops, wait for the last of them.
func (m *lockMiddleware) hooks() workHooks {
	return workHooks{
		start: func(ctx context.Context) {
			m.releases.mu.Lock()
			m.releases.async = true
			m.releases.ctx = context.WithoutCancel(ctx)
			m.releases.mu.Unlock()
		},
		stop: func(ctx context.Context) {
			m.releases.mu.Lock()
			kept := m.takeKeptLocked(func(*heldLock) bool { return true })
			m.releases.mu.Unlock()
			for _, held := range kept {
				m.release(ctx, held) // in the background: counted in inFlight
			}
			m.releases.mu.Lock()
			defer m.releases.mu.Unlock()
			m.releases.async = false
			for m.releases.inFlight > 0 {
				m.releases.drained.Wait() // each is answered within ReleaseTimeout
			}
		},
	}
}

// Reused is the number of jobs that started on a slot kept by an earlier
// job of the process (LockConfig.KeepIdle), without a statement.
func (m *lockMiddleware) Reused() int64 { return m.reused.Load() }

// keepable reports whether a slot of lock may be kept after its job.
func (m *lockMiddleware) keepable(lock Lock) bool {
	return lock.Permits > 1 && m.cfg.KeepIdle > 0
}

// reuse returns a kept slot of lock, or nil. A slot is reused only while it
// is younger than LockKeepMax and a third of its lease: its expires_at is
// then at least two thirds of a lease ahead, and the new job's first
// renewal comes a third of a lease after it starts.
func (m *lockMiddleware) reuse(ctx context.Context, lock Lock) *heldLock {
	if !m.keepable(lock) {
		return nil
	}
	k := keptKey{lock.Namespace, lock.Key, lock.Lease}
	var (
		found *heldLock
		stale []*heldLock
	)
	m.releases.mu.Lock()
	slots := m.releases.kept[k]
	for len(slots) > 0 && found == nil {
		held := slots[len(slots)-1]
		slots[len(slots)-1] = nil
		slots = slots[:len(slots)-1]
		m.releases.nKept--
		if m.reusable(held) && held.slot < lock.Permits {
			found = held
		} else {
			stale = append(stale, held)
		}
	}
	if len(slots) == 0 {
		delete(m.releases.kept, k)
	} else {
		m.releases.kept[k] = slots
	}
	m.releases.mu.Unlock()
	for _, held := range stale {
		m.release(context.WithoutCancel(ctx), held)
	}
	return found
}

// reusable reports whether held is young enough to serve another job.
func (m *lockMiddleware) reusable(held *heldLock) bool {
	return time.Since(held.taken) < min(LockKeepMax, held.lease/3)
}

// keep puts held in the process's kept slots and reports true, or reports
// false when it must be released: the client is not working jobs, the slot
// is a mutex's, or it is too old to be reused.
func (m *lockMiddleware) keep(held *heldLock, lock Lock) bool {
	if !m.keepable(lock) || !m.reusable(held) {
		return false
	}
	m.releases.mu.Lock()
	defer m.releases.mu.Unlock()
	if !m.releases.async {
		return false
	}
	if m.releases.kept == nil {
		m.releases.kept = make(map[keptKey][]*heldLock)
	}
	held.idle = time.Now()
	k := keptKey{held.namespace, held.key, held.lease}
	m.releases.kept[k] = append(m.releases.kept[k], held)
	m.releases.nKept++
	if m.releases.sweeping == nil {
		m.releases.sweeping = time.AfterFunc(m.cfg.KeepIdle, m.sweep)
	}
	return true
}

// sweep releases the kept slots idle for KeepIdle, and comes back while
// some are left.
func (m *lockMiddleware) sweep() {
	m.releases.mu.Lock()
	ctx := m.releases.ctx
	idle := m.takeKeptLocked(func(h *heldLock) bool { return time.Since(h.idle) >= m.cfg.KeepIdle })
	m.releases.sweeping = nil
	if m.releases.nKept > 0 {
		m.releases.sweeping = time.AfterFunc(m.cfg.KeepIdle, m.sweep)
	}
	m.releases.mu.Unlock()
	for _, held := range idle {
		m.release(ctx, held)
	}
}

// takeKeptLocked removes and returns the kept slots that match; the caller
// holds releases.mu and releases them.
func (m *lockMiddleware) takeKeptLocked(match func(*heldLock) bool) []*heldLock {
	var out []*heldLock
	for k, slots := range m.releases.kept {
		left := slots[:0]
		for _, h := range slots {
			if match(h) {
				out = append(out, h)
			} else {
				left = append(left, h)
			}
		}
		clear(slots[len(left):])
		if len(left) == 0 {
			delete(m.releases.kept, k)
		} else {
			m.releases.kept[k] = left
		}
	}
	m.releases.nKept -= len(out)
	if m.releases.nKept == 0 && m.releases.sweeping != nil {
		m.releases.sweeping.Stop()
		m.releases.sweeping = nil
	}
	return out
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
	jobID     int64 // the job that took it: holder_job_id
	lease     time.Duration
	taken     time.Time // when the statement that took it was sent
	idle      time.Time // kept since (LockConfig.KeepIdle)
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

	held := m.reuse(ctx, lock)
	if held != nil {
		m.reused.Add(1)
	} else if held, err = m.acquire(ctx, job, lock); err != nil {
		return err
	}
	if held == nil {
		m.snoozed.Add(1)
		if m.onDelay != nil {
			m.onDelay(job.Kind, FlowControlWorkerLock)
		}
		return river.JobSnooze(m.snooze())
	}
	m.acquired.Add(1)

	jobCtx, cancelJob := context.WithCancelCause(ctx)
	defer cancelJob(nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var lost atomic.Bool // a lost slot is never kept
	wg.Go(func() {
		if !m.renew(ctx, held, stop, cancelJob) {
			lost.Store(true)
		}
	})
	// finish stops the renewals and releases the lock, also when the job
	// panics (River recovers the panic further up).
	var once sync.Once
	finish := func() {
		once.Do(func() {
			close(stop)
			wg.Wait()
			if !lost.Load() && m.keep(held, lock) {
				return
			}
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

// acquire takes a slot of lock for job, or returns nil when all are held
// (job_lock_batch, which tries again while it lost a race for a slot that
// looked free, at most Permits times).
func (m *lockMiddleware) acquire(ctx context.Context, job *rivertype.JobRow, lock Lock) (*heldLock, error) {
	holderClient := ""
	if n := len(job.AttemptedBy); n > 0 {
		holderClient = job.AttemptedBy[n-1]
	}
	r := &lockRequest{namespace: lock.Namespace, key: lock.Key, permits: int32(lock.Permits), jobID: job.ID, //nolint:gosec // Permits ≤ LockPermitsMax
		client: holderClient, lease: lock.Lease, done: make(chan struct{})}
	sent := time.Now()
	m.batch.add(ctx, r)
	select {
	case <-r.done:
	case <-ctx.Done():
		// The slot may still be taken; its lease runs out, or the job's
		// retry finds its own row (holder_job_id) expired by then.
		return nil, fmt.Errorf("jobs: taking lock %s/%s for %s job %d: %w", lock.Namespace, lock.Key, job.Kind, job.ID, context.Cause(ctx))
	}
	if r.err != nil {
		return nil, fmt.Errorf("jobs: taking lock %s/%s for %s job %d: %w", lock.Namespace, lock.Key, job.Kind, job.ID, r.err)
	}
	if r.slot < 0 {
		return nil, nil
	}
	return &heldLock{namespace: lock.Namespace, key: lock.Key, slot: r.slot, jobID: job.ID, lease: lock.Lease, taken: sent}, nil
}

// lockBatchMax is the most releases and acquisitions one statement takes.
const lockBatchMax = 1000

// lockRequest is one acquisition or release for job_lock_batch.
type lockRequest struct {
	namespace, key string
	permits        int32
	jobID          int64
	client         string
	lease          time.Duration
	release        bool
	slot           int // the slot to release; the slot taken, -1 for none

	err  error
	done chan struct{}
	// after, when set, is called once the request was answered.
	after func()
}

// sendBatch runs job_lock_batch for batch and answers every request.
func (m *lockMiddleware) sendBatch(ctx context.Context, batch []*lockRequest) {
	n := len(batch)
	var (
		nss, keys, clients = make([]string, n), make([]string, n), make([]string, n)
		permits, slots     = make([]int32, n), make([]int32, n)
		jobIDs, leases     = make([]int64, n), make([]int64, n)
		releases           = make([]bool, n)
	)
	for i, r := range batch {
		nss[i], keys[i], clients[i] = r.namespace, r.key, r.client
		permits[i], slots[i] = r.permits, int32(r.slot) //nolint:gosec // a slot < LockPermitsMax
		jobIDs[i], leases[i], releases[i] = r.jobID, r.lease.Microseconds(), r.release
		if !r.release {
			r.slot = -1
		}
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ReleaseTimeout)
	defer cancel()
	err := func() error {
		rows, err := m.pool.Query(ctx, lockBatchSQL, nss, keys, permits, jobIDs, clients, leases, releases, slots)
		if err != nil {
			return err
		}
		var (
			ord      int32
			slot     *int32
			sawFree  bool
			answered int
		)
		_, err = pgx.ForEachRow(rows, []any{&ord, &slot, &sawFree}, func() error {
			if ord < 1 || int(ord) > n || batch[ord-1].release {
				return fmt.Errorf("job_lock_batch returned ord %d for a batch of %d", ord, n)
			}
			if slot != nil {
				batch[ord-1].slot = int(*slot)
			}
			answered++
			return nil
		})
		if want := n - countReleases(batch); err == nil && answered != want {
			err = fmt.Errorf("job_lock_batch answered %d of %d acquisitions", answered, want)
		}
		return err
	}()
	for _, r := range batch {
		r.err = err
		close(r.done)
		if r.after != nil {
			r.after()
		}
	}
}

func countReleases(batch []*lockRequest) int {
	n := 0
	for _, r := range batch {
		if r.release {
			n++
		}
	}
	return n
}

// lockBatchSQL releases and takes slots; see job_lock_batch.
const lockBatchSQL = `SELECT ord, slot, saw_free FROM job_lock_batch($1::text[], $2::text[], $3::int[], $4::bigint[], $5::text[], $6::bigint[], $7::boolean[], $8::int[])`

// renew extends the lease every lease/3 until stop is closed, and reports
// true. When the lease runs out before a renewal succeeded, or the row is
// no longer held's, it cancels the job with ErrLockLost and reports false.
func (m *lockMiddleware) renew(ctx context.Context, held *heldLock, stop <-chan struct{}, cancelJob context.CancelCauseFunc) bool {
	every := held.lease / 3
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	// The local, monotonic, deadline is conservative: it starts when the
	// statement that set expires_at was sent (a slot reused is at most a
	// third of a lease old, and renewed a third of a lease from now).
	expires := held.taken.Add(held.lease)
	base := context.WithoutCancel(ctx)
	for {
		select {
		case <-stop:
			return true
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
			return false
		case time.Now().After(expires):
			m.lose(ctx, held, cancelJob, "jobs: lock lease ran out before it could be renewed", "err", err)
			return false
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

// release deletes held's row if it is still this job's, in the next batch.
// While the client works jobs it returns at once and the client's stop
// waits for the answer; otherwise it waits for it. It does not use the
// job's context, which may be cancelled by then.
func (m *lockMiddleware) release(ctx context.Context, held *heldLock) {
	r := &lockRequest{namespace: held.namespace, key: held.key, jobID: held.jobID, release: true, slot: held.slot, done: make(chan struct{})}
	logger := m.logger(ctx)
	warn := func() {
		if r.err != nil {
			logger.WarnContext(ctx, "jobs: releasing a lock failed; it expires with its lease",
				"namespace", held.namespace, "lock_key", held.key, "slot", held.slot, "job_id", held.jobID,
				"lease", held.lease, "err", r.err)
		}
	}
	m.releases.mu.Lock()
	async := m.releases.async
	if async {
		m.releases.inFlight++
		r.after = func() {
			warn()
			m.releases.mu.Lock()
			m.releases.inFlight--
			if m.releases.inFlight == 0 {
				m.releases.drained.Broadcast()
			}
			m.releases.mu.Unlock()
		}
	}
	m.releases.mu.Unlock()
	m.batch.add(ctx, r)
	if !async {
		<-r.done // sendBatch answers within ReleaseTimeout
		warn()
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

// lockRenewSQL extends the lease of ($1, $2, slot $3) by $5 microseconds from
// now, if job $4 still holds it. It affects no row once the slot was taken
// over or deleted.
const lockRenewSQL = `
UPDATE job_locks SET expires_at = now() + $5::bigint * interval '1 microsecond'
 WHERE namespace = $1 AND lock_key = $2 AND slot = $3 AND holder_job_id = $4`
