package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// lockedArgs is a job whose lock is described by its args, so each test says
// what it needs.
type lockedArgs struct {
	Key       string `json:"key"`
	Namespace string `json:"namespace,omitempty"`
	Permits   int    `json:"permits,omitempty"`
	LeaseMS   int    `json:"lease_ms,omitempty"`
	// LockErr makes LockFor fail with this message.
	LockErr string `json:"lock_err,omitempty"`
	// SleepMS is how long the body runs.
	SleepMS int `json:"sleep_ms,omitempty"`
	// Seq tells apart jobs that are otherwise equal (the outbox writes equal
	// args once).
	Seq int `json:"seq,omitempty"`
	// Mode is "" (sleep SleepMS), "rendezvous" (wait until two bodies run at
	// once), "gate" (run until the probe's gate closes) or "until_lost" (run
	// until the context is cancelled, on the first attempt only) or "panic".
	Mode string `json:"mode,omitempty"`
}

func (lockedArgs) Kind() string { return "test.locked" }

// lockedOtherArgs is a second kind with the same lock description.
type lockedOtherArgs struct{ lockedArgs }

func (lockedOtherArgs) Kind() string { return "test.locked_other" }

// lockProbe is shared by the job bodies of one test, across clients.
type lockProbe struct {
	limit      int64 // the most bodies that may run at once
	running    atomic.Int64
	max        atomic.Int64
	violations atomic.Int64
	ran        atomic.Int64
	arrived    atomic.Int64 // rendezvous bodies that started
	overlapped atomic.Bool  // a rendezvous body saw another one arrive while it ran
	gate       chan struct{}

	mu        sync.Mutex
	startedAt map[int64]time.Time // by job id
	lockRows  map[int64]int       // job_locks rows seen by the body, by job id
	causes    []error             // context causes seen by until_lost bodies
}

func newLockProbe(limit int64) *lockProbe {
	return &lockProbe{
		limit:     limit,
		gate:      make(chan struct{}),
		startedAt: make(map[int64]time.Time),
		lockRows:  make(map[int64]int),
	}
}

func (p *lockProbe) body(ctx context.Context, pool *pgxpool.Pool, row *rivertype.JobRow, args lockedArgs) error {
	started := time.Now()
	n := p.running.Add(1)
	defer p.running.Add(-1)
	if n > p.limit {
		p.violations.Add(1)
	}
	storeMax(&p.max, n)
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM job_locks`).Scan(&rows); err != nil {
		return err
	}
	p.mu.Lock()
	p.startedAt[row.ID] = started
	p.lockRows[row.ID] = rows
	p.mu.Unlock()
	defer p.ran.Add(1)

	switch args.Mode {
	case "rendezvous":
		p.arrived.Add(1)
		ticker := time.NewTicker(5 * time.Millisecond)
		defer ticker.Stop()
		deadline := time.NewTimer(10 * time.Second)
		defer deadline.Stop()
		for p.arrived.Load() < 2 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-deadline.C:
				return errors.New("no other body ran at the same time")
			case <-ticker.C:
			}
		}
		p.overlapped.Store(true)
		return nil
	case "gate":
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.gate:
			return nil
		}
	case "panic":
		panic("body panicked")
	case "until_lost":
		if row.Attempt > 1 {
			return nil
		}
		<-ctx.Done()
		p.mu.Lock()
		p.causes = append(p.causes, context.Cause(ctx))
		p.mu.Unlock()
		return ctx.Err()
	}
	timer := time.NewTimer(time.Duration(args.SleepMS) * time.Millisecond)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

func lockFromArgs(args lockedArgs) (jobs.Lock, error) {
	if args.LockErr != "" {
		return jobs.Lock{}, errors.New(args.LockErr)
	}
	return jobs.Lock{
		Namespace: args.Namespace,
		Key:       args.Key,
		Permits:   args.Permits,
		Lease:     time.Duration(args.LeaseMS) * time.Millisecond,
	}, nil
}

type lockedWorker struct {
	river.WorkerDefaults[lockedArgs]
	probe *lockProbe
	pool  *pgxpool.Pool
}

func (w *lockedWorker) LockFor(_ context.Context, job *river.Job[lockedArgs]) (jobs.Lock, error) {
	return lockFromArgs(job.Args)
}

func (w *lockedWorker) Work(ctx context.Context, job *river.Job[lockedArgs]) error {
	return w.probe.body(ctx, w.pool, job.JobRow, job.Args)
}

type lockedOtherWorker struct {
	river.WorkerDefaults[lockedOtherArgs]
	probe *lockProbe
	pool  *pgxpool.Pool
}

func (w *lockedOtherWorker) LockFor(_ context.Context, job *river.Job[lockedOtherArgs]) (jobs.Lock, error) {
	return lockFromArgs(job.Args.lockedArgs)
}

func (w *lockedOtherWorker) Work(ctx context.Context, job *river.Job[lockedOtherArgs]) error {
	return w.probe.body(ctx, w.pool, job.JobRow, job.Args.lockedArgs)
}

// lockSnoozeBase is the snooze of the tests' middleware: short, so that
// waiting jobs come back quickly.
const lockSnoozeBase = 50 * time.Millisecond

type lockProcess struct {
	client *river.Client[pgx.Tx]
	mw     *jobs.LockMiddleware
}

type lockBundle struct {
	schema *dbtest.Schema
	probe  *lockProbe
	procs  []*lockProcess
	ob     *outbox.Outbox
}

// setupLock starts two River clients — two worker processes, each with its
// own pool and lock middleware — on one schema. Both work test.locked and
// test.locked_other; the bodies of all jobs share probe, which allows limit
// bodies at once.
func setupLock(ctx context.Context, t *testing.T, limit int64, tune ...func(*jobs.LockConfig)) *lockBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: lockTestConns})
	b := &lockBundle{schema: s, probe: newLockProbe(limit)}
	for i := range 2 {
		pool := s.Pool
		if i > 0 {
			pool = secondPool(ctx, t, s)
		}
		workers := river.NewWorkers()
		locked := &lockedWorker{probe: b.probe, pool: pool}
		other := &lockedOtherWorker{probe: b.probe, pool: pool}
		river.AddWorker(workers, locked)
		river.AddWorker(workers, other)
		lockFuncs := map[string]jobs.LockFunc{}
		for kind, w := range map[string]any{lockedArgs{}.Kind(): locked, lockedOtherArgs{}.Kind(): other} {
			var f jobs.LockFunc
			var ok bool
			switch w := w.(type) {
			case *lockedWorker:
				f, ok = jobs.LockFuncFor[lockedArgs](w)
			case *lockedOtherWorker:
				f, ok = jobs.LockFuncFor[lockedOtherArgs](w)
			}
			require.True(t, ok)
			lockFuncs[kind] = f
		}
		cfg := &jobs.LockConfig{SnoozeBase: lockSnoozeBase}
		for _, f := range tune {
			f(cfg)
		}
		mw, err := jobs.NewLockMiddleware(pool, func(kind string) (jobs.LockFunc, bool) {
			f, ok := lockFuncs[kind]
			return f, ok
		}, cfg)
		require.NoError(t, err)

		// NewClient's driver: releases in the background, semaphore slots
		// kept, all given back by Stop.
		client, err := river.NewClient(jobs.LockClientDriver(pool, mw), &river.Config{
			Schema:            s.Name,
			Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 10}},
			Workers:           workers,
			Middleware:        []rivertype.Middleware{mw},
			FetchCooldown:     20 * time.Millisecond,
			FetchPollInterval: 40 * time.Millisecond,
			Logger:            discardLogger(),
		})
		require.NoError(t, err)
		require.NoError(t, client.Start(ctx))
		t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
		b.procs = append(b.procs, &lockProcess{client: client, mw: mw})
	}
	// Runs before the clients stop, so that no body keeps Stop waiting.
	t.Cleanup(func() {
		select {
		case <-b.probe.gate:
		default:
			close(b.probe.gate)
		}
	})

	ob, err := outbox.New(s.Pool, b.procs[0].client, directInsert)
	require.NoError(t, err)
	b.ob = ob
	return b
}

// lockTestConns caps each pool of these tests: the server's connections are
// shared with every other test binary running at the same time.
const lockTestConns = 5

// secondPool opens another pool on s, as a second worker process would.
func secondPool(ctx context.Context, t *testing.T, s *dbtest.Schema) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(s.URL)
	require.NoError(t, err)
	cfg.MaxConns = lockTestConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// enqueue commits all args in one transaction.
func (b *lockBundle) enqueue(ctx context.Context, t *testing.T, args ...river.JobArgs) {
	t.Helper()
	_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		for _, a := range args {
			if err := tx.Enqueue(a, nil); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
}

// waitUntil polls cond every 10 ms until it holds, failing t after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	ticker := time.NewTicker(10 * time.Millisecond)
	defer ticker.Stop()
	for {
		ok, err := cond()
		require.NoError(t, err)
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		<-ticker.C
	}
}

// jobSummary describes every job of the schema.
type jobSummary struct {
	Total, Completed            int
	MinAttempt, MaxAttempt      int
	Errors, Snoozes, SnoozedJob int
}

func (b *lockBundle) summary(ctx context.Context, t *testing.T) jobSummary {
	t.Helper()
	var s jobSummary
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `
		SELECT count(*),
		       count(*) FILTER (WHERE state = 'completed'),
		       coalesce(min(attempt), 0), coalesce(max(attempt), 0),
		       coalesce(sum(coalesce(array_length(errors, 1), 0)), 0),
		       coalesce(sum(coalesce((metadata->>'snoozes')::int, 0)), 0),
		       count(*) FILTER (WHERE metadata ? 'snoozes')
		  FROM river_job`).Scan(&s.Total, &s.Completed, &s.MinAttempt, &s.MaxAttempt, &s.Errors, &s.Snoozes, &s.SnoozedJob))
	return s
}

func (b *lockBundle) waitCompleted(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	waitUntil(t, 61*time.Second, fmt.Sprintf("%d jobs completed", n), func() (bool, error) {
		var done int
		err := b.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'completed'`).Scan(&done)
		if err == nil && done != n && time.Now().After(deadline) {
			var states string
			_ = b.schema.Pool.QueryRow(ctx, `SELECT string_agg(concat_ws(' ', id, state, attempt, args, metadata, errors), E'\n') FROM river_job`).Scan(&states)
			return false, fmt.Errorf("%d of %d jobs completed:\n%s", done, n, states)
		}
		return done == n, err
	})
}

// failedJob is the first error of a job.
type failedJob struct {
	State   string
	Attempt int
	Error   string
}

// waitFailed returns the first job that recorded an error, whichever client
// ran it.
func (b *lockBundle) waitFailed(ctx context.Context, t *testing.T) failedJob {
	t.Helper()
	var f failedJob
	waitUntil(t, 15*time.Second, "a failed job", func() (bool, error) {
		err := b.schema.Pool.QueryRow(ctx, `
			SELECT state::text, attempt, errors[1]->>'error' FROM river_job
			 WHERE array_length(errors, 1) >= 1 ORDER BY id LIMIT 1`).Scan(&f.State, &f.Attempt, &f.Error)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	})
	return f
}

func (b *lockBundle) lockRows(ctx context.Context, t *testing.T) int {
	t.Helper()
	var n int
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM job_locks`).Scan(&n))
	return n
}

// waitReleased waits until job_locks is empty: a lock is released in the
// background after its job completed, and a semaphore slot is kept idle
// for LockConfig.KeepIdle first.
func (b *lockBundle) waitReleased(ctx context.Context, t *testing.T) {
	t.Helper()
	waitUntil(t, 10*time.Second, "every lock released", func() (bool, error) {
		return b.lockRows(ctx, t) == 0, nil
	})
}

func (b *lockBundle) snoozed() int64 {
	var n int64
	for _, p := range b.procs {
		n += p.mw.Snoozed()
	}
	return n
}

func (b *lockBundle) reused() int64 {
	var n int64
	for _, p := range b.procs {
		n += p.mw.Reused()
	}
	return n
}

func (b *lockBundle) acquired() int64 {
	var n int64
	for _, p := range b.procs {
		n += p.mw.Acquired()
	}
	return n
}

func TestLockMiddleware(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// requireRace runs n jobs of one key with the given permits on two
	// clients and checks that no more than permits ran at once, that every
	// job ran once, and that waiting did not use up attempts.
	requireRace := func(t *testing.T, permits, n int, sleepMS func() int) *lockBundle {
		t.Helper()
		b := setupLock(ctx, t, int64(permits))
		args := make([]river.JobArgs, n)
		for i := range args {
			args[i] = lockedArgs{Key: "payer-1", Permits: permits, SleepMS: sleepMS(), Seq: i}
		}
		b.enqueue(ctx, t, args...)
		b.waitCompleted(ctx, t, n)

		require.Zero(t, b.probe.violations.Load(), "more than %d bodies ran at once", permits)
		require.Equal(t, int64(n), b.probe.ran.Load())
		require.Equal(t, int64(n), b.acquired())
		for i, p := range b.procs {
			require.Positive(t, p.mw.Acquired(), "client %d never held the lock", i)
		}
		s := b.summary(ctx, t)
		require.Equal(t, n, s.Total)
		require.Equal(t, n, s.Completed)
		// River sets a snoozed job's attempt back to what it was before the
		// fetch that incremented it, and counts the snooze in its metadata:
		// every job completes at attempt 1 however often it waited.
		require.Equal(t, 1, s.MinAttempt)
		require.Equal(t, 1, s.MaxAttempt)
		require.Zero(t, s.Errors)
		require.Positive(t, s.Snoozes, "no job ever waited, the test proves nothing")
		require.Equal(t, b.snoozed(), int64(s.Snoozes), "every snooze of the middleware is recorded on its job")
		b.waitReleased(ctx, t)
		return b
	}

	t.Run("MutexAcrossTwoClients", func(t *testing.T) {
		t.Parallel()
		b := requireRace(t, 1, 40, func() int { return 20 + rand.IntN(31) })
		require.Equal(t, int64(1), b.probe.max.Load())
		require.Zero(t, b.reused(), "a mutex is never kept for the next job")
	})

	// A semaphore slot whose job returned is kept by its process for its
	// next job of the key, which starts without a statement; the permits
	// still hold across both processes at every start.
	t.Run("SemaphoreSlotsKeptForTheNextJob", func(t *testing.T) {
		t.Parallel()
		const permits, n = 4, 120
		b := setupLock(ctx, t, permits, func(c *jobs.LockConfig) { c.KeepIdle = 200 * time.Millisecond })
		args := make([]river.JobArgs, n)
		for i := range args {
			args[i] = lockedArgs{Key: "exports", Permits: permits, SleepMS: 2 + rand.IntN(4), Seq: i}
		}
		b.enqueue(ctx, t, args...)
		b.waitCompleted(ctx, t, n)
		require.Zero(t, b.probe.violations.Load(), "more than %d bodies ran at once", permits)
		require.Equal(t, int64(n), b.probe.ran.Load())
		require.Equal(t, int64(n), b.acquired(), "every start held a slot, taken or kept")
		require.Positive(t, b.reused(), "no job started on a kept slot")
		t.Logf("%d of %d starts on a kept slot, %d snoozes", b.reused(), n, b.snoozed())
		// Idle slots go back by themselves after KeepIdle.
		b.waitReleased(ctx, t)
	})

	// Stop gives back the slots its process keeps, before it returns.
	t.Run("StopReleasesKeptSlots", func(t *testing.T) {
		t.Parallel()
		b := setupLock(ctx, t, 2, func(c *jobs.LockConfig) { c.KeepIdle = time.Hour })
		b.enqueue(ctx, t, lockedArgs{Key: "exports", Permits: 2, Mode: "rendezvous", Seq: 1}, lockedArgs{Key: "exports", Permits: 2, Mode: "rendezvous", Seq: 2})
		b.waitCompleted(ctx, t, 2)
		require.Equal(t, 2, b.lockRows(ctx, t), "both slots kept after their jobs")
		for _, p := range b.procs {
			require.NoError(t, p.client.Stop(ctx))
		}
		require.Zero(t, b.lockRows(ctx, t), "kept slots released before Stop returned")
	})

	t.Run("SemaphoreOfThreePermits", func(t *testing.T) {
		t.Parallel()
		b := requireRace(t, 3, 40, func() int { return 80 + rand.IntN(41) })
		require.Equal(t, int64(3), b.probe.max.Load(), "the semaphore never had all three permits in use")
	})

	t.Run("DifferentKeysRunConcurrently", func(t *testing.T) {
		t.Parallel()
		b := setupLock(ctx, t, 2)
		b.enqueue(ctx, t, lockedArgs{Key: "payer-a", Mode: "rendezvous"}, lockedArgs{Key: "payer-b", Mode: "rendezvous"})
		b.waitCompleted(ctx, t, 2)
		require.True(t, b.probe.overlapped.Load())
		require.Equal(t, int64(2), b.acquired())
		b.waitReleased(ctx, t)
	})

	t.Run("CrashedHolderBlocksUntilItsLeaseEnds", func(t *testing.T) {
		t.Parallel()
		b := setupLock(ctx, t, 1)
		// A lease left behind by a process that died holding it.
		var expiresAt time.Time
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `
			INSERT INTO job_locks (namespace, lock_key, slot, holder_job_id, holder_client, expires_at)
			VALUES ('test.locked', 'payer-dead', 0, -1, 'dead-process', now() + interval '2 seconds')
			RETURNING expires_at`).Scan(&expiresAt))
		b.enqueue(ctx, t, lockedArgs{Key: "payer-dead"})
		b.waitCompleted(ctx, t, 1)

		require.Len(t, b.probe.startedAt, 1)
		for _, started := range b.probe.startedAt {
			require.True(t, started.After(expiresAt), "ran at %s, before the dead lease ended at %s", started, expiresAt)
			// At most one snooze (with jitter) plus fetching after the lease ends.
			require.WithinDuration(t, expiresAt, started, lockSnoozeBase*3/2+time.Second)
		}
		s := b.summary(ctx, t)
		require.Equal(t, 1, s.MaxAttempt)
		require.Positive(t, s.Snoozes)
		b.waitReleased(ctx, t)
	})

	t.Run("SharedNamespaceExcludesTwoKinds", func(t *testing.T) {
		t.Parallel()
		b := setupLock(ctx, t, 1)
		var args []river.JobArgs
		for i := range 10 {
			a := lockedArgs{Namespace: "payments", Key: "payer-1", SleepMS: 20 + rand.IntN(21), Seq: i}
			args = append(args, a, lockedOtherArgs{a})
		}
		b.enqueue(ctx, t, args...)
		b.waitCompleted(ctx, t, 20)
		require.Zero(t, b.probe.violations.Load())
		require.Equal(t, int64(1), b.probe.max.Load())
		require.Positive(t, b.snoozed())
		b.waitReleased(ctx, t)
	})

	t.Run("NamespaceDefaultsToTheKind", func(t *testing.T) {
		t.Parallel()
		b := setupLock(ctx, t, 2)
		a := lockedArgs{Key: "payer-1", Mode: "rendezvous"}
		b.enqueue(ctx, t, a, lockedOtherArgs{a})
		b.waitCompleted(ctx, t, 2)
		require.True(t, b.probe.overlapped.Load(), "two kinds with the same key blocked each other")
	})

	t.Run("LockForErrorFailsTheAttempt", func(t *testing.T) {
		t.Parallel()
		b := setupLock(ctx, t, 1)
		b.enqueue(ctx, t, lockedArgs{Key: "payer-1", LockErr: "payer lookup failed"})
		f := b.waitFailed(ctx, t)
		// A retry sooner than River's scheduler interval is made available
		// at once, with scheduled_at in the future.
		require.Contains(t, []string{"retryable", "available"}, f.State)
		require.Equal(t, 1, f.Attempt)
		require.Contains(t, f.Error, "jobs: computing the lock of test.locked job")
		require.Contains(t, f.Error, "payer lookup failed")
		require.Zero(t, b.probe.ran.Load())
		b.waitReleased(ctx, t)
	})

	t.Run("EmptyKeyTakesNoLock", func(t *testing.T) {
		t.Parallel()
		b := setupLock(ctx, t, 1)
		b.enqueue(ctx, t, lockedArgs{Key: ""})
		b.waitCompleted(ctx, t, 1)
		require.Equal(t, int64(1), b.probe.ran.Load())
		for _, rows := range b.probe.lockRows {
			require.Zero(t, rows, "a job_locks row existed while the job ran")
		}
		require.Zero(t, b.acquired())
		require.Zero(t, b.snoozed())
	})

	t.Run("PanickingJobReleasesItsLock", func(t *testing.T) {
		t.Parallel()
		b := setupLock(ctx, t, 1)
		b.enqueue(ctx, t, lockedArgs{Key: "payer-1", Mode: "panic"})
		f := b.waitFailed(ctx, t)
		require.Equal(t, 1, f.Attempt)
		require.Equal(t, "body panicked", f.Error)
		require.Equal(t, int64(1), b.acquired())
		// The renewal goroutine ended (goleak checks it when the binary
		// exits) and the slot was freed.
		b.waitReleased(ctx, t)
	})

	t.Run("LeaseIsRenewedWhileTheJobRuns", func(t *testing.T) {
		t.Parallel()
		b := setupLock(ctx, t, 1)
		// A lease of 1 s is renewed every 333 ms: only a stall of more
		// than 667 ms lets it lapse. With 300 ms, a loaded CI run under
		// -race once stalled the renewals past the lease (holder 2).
		const lease = time.Second
		b.enqueue(ctx, t, lockedArgs{Key: "payer-1", LeaseMS: int(lease / time.Millisecond), Mode: "gate"})
		waitUntil(t, 15*time.Second, "the first job running", func() (bool, error) { return b.probe.running.Load() == 1, nil })
		b.enqueue(ctx, t, lockedArgs{Key: "payer-1", LeaseMS: int(lease / time.Millisecond), Seq: 1})

		// For four leases, the row stays the first job's and never expires,
		// and the second job keeps waiting.
		var holder int64
		var firstExpiry time.Time
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT holder_job_id, expires_at FROM job_locks`).Scan(&holder, &firstExpiry))
		until := time.Now().Add(4 * lease)
		var lastExpiry time.Time
		waitUntil(t, 10*time.Second, "four leases", func() (bool, error) {
			var h int64
			var live bool
			err := b.schema.Pool.QueryRow(ctx, `SELECT holder_job_id, expires_at, expires_at > now() FROM job_locks`).Scan(&h, &lastExpiry, &live)
			if err != nil {
				return false, err
			}
			if h != holder || !live {
				return false, fmt.Errorf("lease of job %d lapsed while it ran (holder %d, live %v)", holder, h, live)
			}
			return time.Now().After(until), nil
		})
		require.True(t, lastExpiry.After(firstExpiry.Add(2*lease)), "expires_at was not pushed forward: %s then %s", firstExpiry, lastExpiry)
		require.Equal(t, int64(1), b.probe.running.Load())
		require.Positive(t, b.snoozed(), "the second job did not wait")

		close(b.probe.gate)
		b.waitCompleted(ctx, t, 2)
		require.Zero(t, b.probe.violations.Load())
		b.waitReleased(ctx, t)
		for _, p := range b.procs {
			require.Zero(t, p.mw.Lost())
		}
	})

	t.Run("LostLeaseCancelsTheJob", func(t *testing.T) {
		t.Parallel()
		b := setupLock(ctx, t, 1)
		b.enqueue(ctx, t, lockedArgs{Key: "payer-1", LeaseMS: 300, Mode: "until_lost"})
		waitUntil(t, 15*time.Second, "the job running", func() (bool, error) { return b.probe.running.Load() == 1, nil })
		// Someone else takes the slot over (an operator, or a process that
		// saw the lease expire while this one could not reach the database).
		_, err := b.schema.Pool.Exec(ctx, `UPDATE job_locks SET holder_job_id = -7, expires_at = now() + interval '1 hour'`)
		require.NoError(t, err)

		f := b.waitFailed(ctx, t)
		require.Contains(t, []string{"retryable", "available", "running"}, f.State)
		require.Equal(t, "jobs: lock lease lost: context canceled", f.Error)
		b.probe.mu.Lock()
		require.Len(t, b.probe.causes, 1)
		require.ErrorIs(t, b.probe.causes[0], jobs.ErrLockLost)
		b.probe.mu.Unlock()
		var lost int64
		for _, p := range b.procs {
			lost += p.mw.Lost()
		}
		require.Equal(t, int64(1), lost)
		// The usurper's row is not the job's to delete (and its retry waits
		// for it).
		var holder int64
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT holder_job_id FROM job_locks`).Scan(&holder))
		require.Equal(t, int64(-7), holder)
	})
}

// TestLockMiddlewareAcquireIsRaceSafe calls the middleware directly from
// many goroutines at once, half through each of two pools, for one key:
// exactly min(permits, n) get in, however the statements interleave. Rounds
// with n == permits check that a job that lost the race for a slot tries
// another one instead of snoozing while a permit is free.
func TestLockMiddlewareAcquireIsRaceSafe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for _, permits := range []int{1, 3, 7} {
		t.Run(fmt.Sprintf("Permits%d", permits), func(t *testing.T) {
			t.Parallel()
			s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: lockTestConns})
			other := secondPool(ctx, t, s)

			for round := range 6 {
				key := fmt.Sprintf("key-%d", round)
				n := 30
				if round%2 == 1 {
					n = permits
				}
				lookup := func(string) (jobs.LockFunc, bool) {
					return func(context.Context, *rivertype.JobRow) (jobs.Lock, error) {
						return jobs.Lock{Key: key, Permits: permits}, nil
					}, true
				}
				var mws []*jobs.LockMiddleware
				for _, pool := range []*pgxpool.Pool{s.Pool, other} {
					mw, err := jobs.NewLockMiddleware(pool, lookup, nil)
					require.NoError(t, err)
					mws = append(mws, mw)
				}

				var holders, snoozed, inside, maxInside atomic.Int64
				errs := make(chan error, n)
				start := make(chan struct{})
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() {
						<-start
						job := &rivertype.JobRow{ID: int64(round*n + i + 1), Kind: "test.direct", AttemptedBy: []string{"client"}}
						err := mws[i%2].Work(ctx, job, func(context.Context) error {
							holders.Add(1)
							now := inside.Add(1)
							defer inside.Add(-1)
							storeMax(&maxInside, now)
							// Hold the slot until every goroutine got in or
							// was turned away.
							ticker := time.NewTicker(time.Millisecond)
							defer ticker.Stop()
							deadline := time.Now().Add(10 * time.Second)
							for holders.Load()+snoozed.Load() < int64(n) && time.Now().Before(deadline) {
								<-ticker.C
							}
							return nil
						})
						var snooze *river.JobSnoozeError
						switch {
						case errors.As(err, &snooze):
							snoozed.Add(1)
						case err != nil:
							errs <- err
						}
					})
				}
				close(start)
				wg.Wait()
				close(errs)
				for err := range errs {
					require.NoError(t, err)
				}
				want := int64(min(permits, n))
				require.Equal(t, want, holders.Load(), "round %d", round)
				require.Equal(t, want, maxInside.Load(), "round %d", round)
				require.Equal(t, int64(n)-want, snoozed.Load(), "round %d", round)
				require.Equal(t, want, mws[0].Acquired()+mws[1].Acquired())
				require.Equal(t, int64(n)-want, mws[0].Snoozed()+mws[1].Snoozed())
				var rows int
				require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM job_locks`).Scan(&rows))
				require.Zero(t, rows)
			}
		})
	}
}

func TestNewLockMiddlewareValidates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	lookup := func(string) (jobs.LockFunc, bool) { return nil, false }

	_, err := jobs.NewLockMiddleware(nil, lookup, nil)
	require.EqualError(t, err, "jobs: the worker lock needs a pool")
	_, err = jobs.NewLockMiddleware(s.Pool, nil, nil)
	require.EqualError(t, err, "jobs: the worker lock needs a lookup function")
	_, err = jobs.NewLockMiddleware(s.Pool, lookup, &jobs.LockConfig{Lease: time.Millisecond})
	require.EqualError(t, err, "jobs: LockConfig.Lease 1ms is under the minimum 100ms")

	mw, err := jobs.NewLockMiddleware(s.Pool, func(string) (jobs.LockFunc, bool) {
		return func(context.Context, *rivertype.JobRow) (jobs.Lock, error) {
			return jobs.Lock{Key: "k", Permits: jobs.LockPermitsMax + 1}, nil
		}, true
	}, nil)
	require.NoError(t, err)
	err = mw.Work(ctx, &rivertype.JobRow{ID: 1, Kind: "test.direct"}, func(context.Context) error { return nil })
	require.ErrorIs(t, err, jobs.ErrLockInvalid)
	require.EqualError(t, err, "jobs: invalid lock for test.direct job 1: permits 1001 is not between 1 and 1000")
}

func TestLockFuncFor(t *testing.T) {
	t.Parallel()

	t.Run("NotALocker", func(t *testing.T) {
		t.Parallel()
		f, ok := jobs.LockFuncFor[jobs.PingArgs](&jobs.PingWorker{})
		require.False(t, ok)
		require.Nil(t, f)
	})

	t.Run("DecodesArgsAndDefaultsLeaseToTimeout", func(t *testing.T) {
		t.Parallel()
		f, ok := jobs.LockFuncFor[lockedArgs](&timedLockedWorker{})
		require.True(t, ok)
		lock, err := f(context.Background(), &rivertype.JobRow{ID: 1, Kind: "test.locked", EncodedArgs: []byte(`{"key":"payer-9","permits":2}`)})
		require.NoError(t, err)
		require.Equal(t, jobs.Lock{Key: "payer-9", Permits: 2, Lease: 3 * time.Second}, lock)

		_, err = f(context.Background(), &rivertype.JobRow{ID: 2, Kind: "test.locked", EncodedArgs: []byte(`{"key":`)})
		require.ErrorContains(t, err, "jobs: decoding args of test.locked job 2")
	})
}

type timedLockedWorker struct{ lockedWorker }

func (*timedLockedWorker) Timeout(*river.Job[lockedArgs]) time.Duration { return 3 * time.Second }

// storeMax raises v to n if n is larger, against concurrent storeMax calls.
func storeMax(v *atomic.Int64, n int64) {
	for {
		m := v.Load()
		if n <= m || v.CompareAndSwap(m, n) {
			return
		}
	}
}
