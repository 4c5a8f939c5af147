package donations_test

import (
	"context"
	"log/slog"
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

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/jobs"
)

// fastRetryPolicy retries a failed job 10 ms later (River's default waits
// attempt⁴ seconds).
type fastRetryPolicy struct{}

func (fastRetryPolicy) NextRetry(*rivertype.JobRow) time.Time {
	return time.Now().Add(10 * time.Millisecond)
}

// counterBundle is a schema with the donations domain registered, a River
// client and the service.
type counterBundle struct {
	schema *dbtest.Schema
	client *river.Client[pgx.Tx]
	svc    *donations.Service
	inject *jobstest.FailureInjector
}

type counterOpts struct {
	// maxConns caps the schema's pool. Defaults to 10.
	maxConns int32
	// insertOnly makes a client that works nothing.
	insertOnly bool
	// fail, when set, picks the jobs that fail after their write.
	fail func(job *rivertype.JobRow) bool
	// reconcile, when set, registers the reconciler with it.
	reconcile *donations.ReconcileConfig
}

// newCounterClient builds a client for reg on pool with the tests' River
// settings; it is started unless opts.insertOnly.
func newCounterClient(ctx context.Context, t *testing.T, pool *pgxpool.Pool, reg *jobs.Registry, schema string, opts counterOpts, inject *jobstest.FailureInjector) *river.Client[pgx.Tx] {
	t.Helper()
	queues := []string{jobs.AllQueues}
	if opts.insertOnly {
		queues = nil
	}
	client, err := jobs.NewClient(pool, reg, &jobs.ClientConfig{
		Queues: queues,
		Schema: schema,
		Logger: slog.New(slog.DiscardHandler),
		River: &river.Config{
			// River's default cooldown, so fold jobs coalesce as they
			// would in production; a shorter poll, so tests end sooner.
			FetchCooldown:     100 * time.Millisecond,
			FetchPollInterval: 200 * time.Millisecond,
			RetryPolicy:       fastRetryPolicy{},
			Middleware:        []rivertype.Middleware{inject},
		},
	})
	require.NoError(t, err)
	if !opts.insertOnly {
		require.NoError(t, client.Start(ctx))
		t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
	}
	return client
}

func setupCounterTest(ctx context.Context, t *testing.T, opts counterOpts) *counterBundle {
	t.Helper()
	if opts.maxConns == 0 {
		opts.maxConns = 10
	}
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: opts.maxConns})
	reg := jobs.NewRegistry()
	donations.Register(reg, s.Pool)
	if opts.reconcile != nil {
		donations.RegisterReconciler(reg, s.Pool, opts.reconcile)
	}
	inject := jobstest.NewFailureInjector(ctx, t, s, opts.fail)
	client := newCounterClient(ctx, t, s.Pool, reg, s.Name, opts, inject)
	ob, err := jobs.NewOutbox(s.Pool, client, reg, directInsert)
	require.NoError(t, err)
	return &counterBundle{schema: s, client: client, svc: donations.NewService(s.Pool, ob), inject: inject}
}

// startSecondWorker starts another worker process on the same schema: its
// own pool, registry and client.
func (b *counterBundle) startSecondWorker(ctx context.Context, t *testing.T, maxConns int32) *river.Client[pgx.Tx] {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(b.schema.URL)
	require.NoError(t, err)
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	reg := jobs.NewRegistry()
	donations.Register(reg, pool)
	return newCounterClient(ctx, t, pool, reg, b.schema.Name, counterOpts{}, b.inject)
}

// waitQueuesDrained waits until no job is left to run and no delta is left
// to fold. A delta that no job would fold makes it time out.
func (b *counterBundle) waitQueuesDrained(ctx context.Context, t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool {
		var n int64
		err := b.schema.Pool.QueryRow(ctx, `
			SELECT (SELECT count(*) FROM river_job WHERE state NOT IN ('completed', 'discarded', 'cancelled'))
			     + (SELECT count(*) FROM email_counter_deltas)
			     + (SELECT count(*) FROM fundraiser_counter_deltas) + (SELECT count(*) FROM user_counter_deltas)`).Scan(&n)
		return err == nil && n == 0
	}, 2*time.Minute, 20*time.Millisecond, "jobs or deltas still pending")
	var lost int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx,
		`SELECT count(*) FROM river_job WHERE state IN ('discarded', 'cancelled')`).Scan(&lost))
	require.Zero(t, lost, "discarded or cancelled jobs")
}

func (b *counterBundle) count(ctx context.Context, t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx, sql, args...).Scan(&n))
	return n
}

// seedTrackedEmails creates a user, a fundraiser and n emails, and returns
// the emails' IDs.
func seedTrackedEmails(ctx context.Context, t testing.TB, pool *pgxpool.Pool, n int) []int64 {
	t.Helper()
	var userID, fundraiserID int64
	require.NoError(t, pool.QueryRow(ctx,
		`INSERT INTO users (name, email) VALUES ('Reader', 'reader@example.com') RETURNING id`).Scan(&userID))
	require.NoError(t, pool.QueryRow(ctx,
		`INSERT INTO fundraisers (name) VALUES ('Trees') RETURNING id`).Scan(&fundraiserID))
	rows, err := pool.Query(ctx, `
		INSERT INTO emails (user_id, fundraiser_id) SELECT $1, $2 FROM generate_series(1, $3) RETURNING id`,
		userID, fundraiserID, n)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Len(t, ids, n)
	return ids
}

// trackEvent is one planned TrackOpen or TrackClick.
type trackEvent struct {
	emailID int64
	click   bool
}

// emailCounts is an email's opens and clicks.
type emailCounts struct{ Opens, Clicks int64 }

// planEvents returns opens events then clicks events spread at random over
// emails, shuffled, and the counts each email must end with.
func planEvents(seed uint64, emails []int64, opens, clicks int) ([]trackEvent, map[int64]emailCounts) {
	rng := rand.New(rand.NewPCG(seed, seed))
	want := make(map[int64]emailCounts, len(emails))
	for _, id := range emails {
		want[id] = emailCounts{}
	}
	events := make([]trackEvent, 0, opens+clicks)
	for i := range opens + clicks {
		ev := trackEvent{emailID: emails[rng.IntN(len(emails))], click: i >= opens}
		c := want[ev.emailID]
		if ev.click {
			c.Clicks++
		} else {
			c.Opens++
		}
		want[ev.emailID] = c
		events = append(events, ev)
	}
	rng.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
	return events, want
}

// trackAll sends events from the given number of goroutines, each taking
// the next event, and returns the first error.
func trackAll(ctx context.Context, svc *donations.Service, events []trackEvent, goroutines int) error {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		firstErr error
		errOnce  sync.Once
	)
	for range goroutines {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(len(events)) {
					return
				}
				ev := events[i]
				var err error
				if ev.click {
					err = svc.TrackClick(ctx, ev.emailID)
				} else {
					err = svc.TrackOpen(ctx, ev.emailID)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// countsOf reads the counters of every email.
func (b *counterBundle) countsOf(ctx context.Context, t *testing.T) map[int64]emailCounts {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx, `SELECT id, opens, clicks FROM emails`)
	require.NoError(t, err)
	got := map[int64]emailCounts{}
	var id int64
	var c emailCounts
	_, err = pgx.ForEachRow(rows, []any{&id, &c.Opens, &c.Clicks}, func() error {
		got[id] = c
		return nil
	})
	require.NoError(t, err)
	return got
}

// foldedByOutputs sums what the completed fold jobs recorded as folded.
func (b *counterBundle) foldedByOutputs(ctx context.Context, t *testing.T) emailCounts {
	t.Helper()
	var c emailCounts
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `
		SELECT coalesce(sum((metadata->'output'->>'opens')::bigint), 0),
		       coalesce(sum((metadata->'output'->>'clicks')::bigint), 0)
		  FROM river_job WHERE kind = $1 AND state = 'completed'`, donations.FoldEmailCountersKind).Scan(&c.Opens, &c.Clicks))
	return c
}

func totals(m map[int64]emailCounts) emailCounts {
	var c emailCounts
	for _, v := range m {
		c.Opens += v.Opens
		c.Clicks += v.Clicks
	}
	return c
}

// trackOpensFromSixteenGoroutines sends opens and clicks over 50 emails
// from 16 goroutines, waits for the folds, and checks that every email
// counts each of its events exactly once and that fold jobs coalesced
// events. The quick run sends 2,200 events; TestTrackOpenLoad (build tag
// long) sends 22,000.
func trackOpensFromSixteenGoroutines(ctx context.Context, t *testing.T, opens, clicks int) {
	t.Helper()
	b := setupCounterTest(ctx, t, counterOpts{})
	emails := seedTrackedEmails(ctx, t, b.schema.Pool, 50)
	events, want := planEvents(1, emails, opens, clicks)

	start := time.Now()
	require.NoError(t, trackAll(ctx, b.svc, events, 16))
	accepted := time.Since(start)
	b.waitQueuesDrained(ctx, t)

	require.Equal(t, want, b.countsOf(ctx, t), "every email counts each of its events once")
	require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM email_counter_deltas`))
	require.Equal(t, totals(want), b.foldedByOutputs(ctx, t), "the folds' outputs add up to the events")
	folds := b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, donations.FoldEmailCountersKind)
	t.Logf("%d events (%d opens, %d clicks) over %d emails in %v (%.0f events/s): %d fold jobs, %.1f events per fold job",
		len(events), opens, clicks, len(emails), accepted.Round(time.Millisecond),
		float64(len(events))/accepted.Seconds(), folds, float64(len(events))/float64(folds))
	require.Less(t, folds, int64(len(events)/4), "fold jobs coalesce events")
}

func TestTrackOpen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("EightHundredOpensFromSixteenGoroutinesFoldExactly", func(t *testing.T) {
		t.Parallel()
		trackOpensFromSixteenGoroutines(ctx, t, 800, 80)
	})

	t.Run("BatchesFoldExactly", func(t *testing.T) {
		t.Parallel()
		b := setupCounterTest(ctx, t, counterOpts{})
		emails := seedTrackedEmails(ctx, t, b.schema.Pool, 20)
		events, want := planEvents(2, emails, 3_000, 1_000)

		var opens, clicks []int64
		for i, ev := range events {
			if ev.click {
				clicks = append(clicks, ev.emailID)
			} else {
				opens = append(opens, ev.emailID)
			}
			if len(opens)+len(clicks) == 100 || i == len(events)-1 {
				require.NoError(t, b.svc.TrackBatch(ctx, opens, clicks))
				opens, clicks = nil, nil
			}
		}
		require.NoError(t, b.svc.TrackOpens(ctx, nil), "an empty batch is a no-op")
		b.waitQueuesDrained(ctx, t)

		require.Equal(t, want, b.countsOf(ctx, t))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM email_counter_deltas`))
	})

	t.Run("WhileAFoldWaitsMoreEventsAddNoJob", func(t *testing.T) {
		t.Parallel()
		b := setupCounterTest(ctx, t, counterOpts{insertOnly: true})
		emails := seedTrackedEmails(ctx, t, b.schema.Pool, 2)

		for range 100 {
			require.NoError(t, b.svc.TrackOpen(ctx, emails[0]))
		}
		require.NoError(t, b.svc.TrackClick(ctx, emails[0]))
		require.NoError(t, b.svc.TrackOpens(ctx, []int64{emails[0], emails[1], emails[1]}))

		require.Equal(t, int64(103), b.count(ctx, t, `SELECT count(*) FROM email_counter_deltas`),
			"one delta per single event, one per email of a batch")
		rows, err := b.schema.Pool.Query(ctx, `
			SELECT (args->>'email_id')::bigint FROM river_job WHERE kind = $1 AND state = 'available' ORDER BY 1`,
			donations.FoldEmailCountersKind)
		require.NoError(t, err)
		waiting, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		require.NoError(t, err)
		require.Equal(t, emails, waiting, "one waiting fold per email")
	})

	t.Run("UnknownEmailWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setupCounterTest(ctx, t, counterOpts{insertOnly: true})
		emails := seedTrackedEmails(ctx, t, b.schema.Pool, 1)
		const unknown = 987_654_321

		err := b.svc.TrackOpen(ctx, unknown)
		require.ErrorIs(t, err, donations.ErrUnknownEmail)
		require.ErrorContains(t, err, "987654321")
		require.ErrorIs(t, b.svc.TrackClick(ctx, unknown), donations.ErrUnknownEmail)
		err = b.svc.TrackOpens(ctx, []int64{emails[0], unknown, emails[0]})
		require.ErrorIs(t, err, donations.ErrUnknownEmail)
		require.ErrorContains(t, err, "987654321")
		require.ErrorIs(t, b.svc.TrackClicks(ctx, []int64{unknown}), donations.ErrUnknownEmail)

		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM email_counter_deltas`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Zero(t, b.count(ctx, t, `SELECT opens + clicks FROM emails WHERE id = $1`, emails[0]))
	})
}

// twoWorkerProcessesRace sends opens and clicks over 10 emails from 8
// goroutines while two worker processes (two pools, registries and
// clients) fold them, and checks that every email counts each event once.
// The quick run sends 1,500 events; TestTrackOpenLoad (build tag long)
// 6,000.
func twoWorkerProcessesRace(ctx context.Context, t *testing.T, opens, clicks int) {
	t.Helper()
	b := setupCounterTest(ctx, t, counterOpts{maxConns: 8})
	second := b.startSecondWorker(ctx, t, 6)
	emails := seedTrackedEmails(ctx, t, b.schema.Pool, 10)
	events, want := planEvents(4, emails, opens, clicks)

	require.NoError(t, trackAll(ctx, b.svc, events, 8))
	b.waitQueuesDrained(ctx, t)

	require.Equal(t, want, b.countsOf(ctx, t))
	require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM email_counter_deltas`))
	require.Equal(t, totals(want), b.foldedByOutputs(ctx, t))
	byFirst := b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1 AND attempted_by[1] = $2`,
		donations.FoldEmailCountersKind, b.client.ID())
	bySecond := b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1 AND attempted_by[1] = $2`,
		donations.FoldEmailCountersKind, second.ID())
	t.Logf("fold jobs worked: %d by the first process, %d by the second", byFirst, bySecond)
}

func TestFoldEmailCounters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("FirstAttemptRollsBackAfterItsWriteAndTheRetryCountsOnce", func(t *testing.T) {
		t.Parallel()
		b := setupCounterTest(ctx, t, counterOpts{fail: func(job *rivertype.JobRow) bool {
			return job.Kind == donations.FoldEmailCountersKind && job.Attempt == 1
		}})
		emails := seedTrackedEmails(ctx, t, b.schema.Pool, 5)
		events, want := planEvents(3, emails, 800, 200)

		require.NoError(t, trackAll(ctx, b.svc, events, 8))
		b.waitQueuesDrained(ctx, t)

		require.Equal(t, want, b.countsOf(ctx, t), "no event lost, none counted twice")
		require.Equal(t, totals(want), b.foldedByOutputs(ctx, t))
		folds := b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, donations.FoldEmailCountersKind)
		require.Positive(t, folds)
		require.Equal(t, folds, b.inject.Injected.Load(), "every fold's first attempt failed")
		require.Equal(t, folds, b.count(ctx, t, `
			SELECT count(*) FROM river_job
			 WHERE kind = $1 AND attempt = 2 AND cardinality(errors) = 1 AND errors[1]->>'error' LIKE '%injected%'`,
			donations.FoldEmailCountersKind), "each fold completed on its second attempt, after one injected error")
	})

	t.Run("TwoWorkerProcessesRaceOnTheSameEmails", func(t *testing.T) {
		t.Parallel()
		twoWorkerProcessesRace(ctx, t, 600, 120)
	})

	t.Run("TwoFoldsOfOneEmailNeitherLoseNorDoubleCount", func(t *testing.T) {
		t.Parallel()
		b := setupCounterTest(ctx, t, counterOpts{insertOnly: true, maxConns: 4})
		pool := b.schema.Pool
		emailID := seedTrackedEmails(ctx, t, pool, 1)[0]
		addDeltas := func(n int) {
			_, err := pool.Exec(ctx, `INSERT INTO email_counter_deltas (email_id, opens) SELECT $1, 1 FROM generate_series(1, $2)`, emailID, n)
			require.NoError(t, err)
		}
		type folded struct{ deltas, opens, clicks int64 }
		fold := func(tx pgx.Tx) (folded, error) {
			var f folded
			err := tx.QueryRow(ctx, donations.FoldEmailCountersSQL, emailID).Scan(&f.deltas, &f.opens, &f.clicks)
			return f, err
		}

		addDeltas(3)
		tx1, err := pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx1.Rollback(ctx) }()
		f1, err := fold(tx1)
		require.NoError(t, err)
		require.Equal(t, folded{3, 3, 0}, f1)
		addDeltas(2) // committed after the first fold's snapshot

		conn2, err := pool.Acquire(ctx)
		require.NoError(t, err)
		defer conn2.Release()
		var pid2 int32
		require.NoError(t, conn2.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid2))
		type result struct {
			f   folded
			err error
		}
		done := make(chan result, 1)
		go func() {
			var f folded
			err := pgx.BeginFunc(ctx, conn2, func(tx pgx.Tx) error {
				var err error
				f, err = fold(tx)
				return err
			})
			done <- result{f, err}
		}()
		require.Eventually(t, func() bool {
			var waiting bool
			err := pool.QueryRow(ctx, `SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1`, pid2).Scan(&waiting)
			return err == nil && waiting
		}, 10*time.Second, 5*time.Millisecond, "the second fold waits for the first's row locks")

		require.NoError(t, tx1.Commit(ctx))
		r := <-done
		require.NoError(t, r.err)
		require.Equal(t, folded{2, 2, 0}, r.f, "the second fold skips the deltas the first deleted and takes the new ones")
		require.Equal(t, int64(5), b.count(ctx, t, `SELECT opens FROM emails WHERE id = $1`, emailID))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM email_counter_deltas`))
	})

	t.Run("RefoldPendingEnqueuesAFoldPerEmailWithDeltas", func(t *testing.T) {
		t.Parallel()
		b := setupCounterTest(ctx, t, counterOpts{insertOnly: true, maxConns: 4})
		emails := seedTrackedEmails(ctx, t, b.schema.Pool, 3)
		_, err := b.schema.Pool.Exec(ctx, `INSERT INTO email_counter_deltas (email_id, opens) VALUES ($1, 1), ($1, 1), ($2, 1)`, emails[0], emails[2])
		require.NoError(t, err)

		n, err := b.svc.RefoldPending(ctx)
		require.NoError(t, err)
		require.Equal(t, 2, n)
		rows, err := b.schema.Pool.Query(ctx, `SELECT (args->>'email_id')::bigint FROM river_job WHERE kind = $1 ORDER BY 1`, donations.FoldEmailCountersKind)
		require.NoError(t, err)
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		require.NoError(t, err)
		require.Equal(t, []int64{emails[0], emails[2]}, ids)
	})
}
