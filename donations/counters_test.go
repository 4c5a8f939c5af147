package donations_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
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
	"github.com/aftercommit/aftercommit/jobs"
)

// seedFundraisers creates n fundraisers and returns their IDs.
func seedFundraisers(ctx context.Context, t *testing.T, pool *pgxpool.Pool, n int) []int64 {
	t.Helper()
	rows, err := pool.Query(ctx, `INSERT INTO fundraisers (name) SELECT 'Fundraiser ' || i FROM generate_series(1, $1) AS i RETURNING id`, n)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Len(t, ids, n)
	return ids
}

// donateAll records the donations from the given number of goroutines and
// returns the first error.
func donateAll(ctx context.Context, svc *donations.Service, inputs []donations.DonateInput, goroutines int) error {
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
				if i >= int64(len(inputs)) {
					return
				}
				if _, err := svc.Donate(ctx, inputs[i]); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("donation %d: %w", i, err) })
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// planDonations returns n donations spread at random over fundraisers and
// donors addresses, about one in six failed.
func planDonations(seed uint64, fundraisers []int64, donors, n int) []donations.DonateInput {
	rng := rand.New(rand.NewPCG(seed, seed))
	out := make([]donations.DonateInput, n)
	for i := range out {
		out[i] = donations.DonateInput{
			FundraiserID: fundraisers[rng.IntN(len(fundraisers))],
			DonorEmail:   fmt.Sprintf("donor%d@example.com", rng.IntN(donors)),
			AmountCents:  1 + rng.Int64N(50_000),
			Currency:     "USD",
			Succeeded:    rng.IntN(6) != 0,
		}
	}
	return out
}

// staleCounters returns the fundraisers and users whose counter caches
// differ from a GROUP BY over their succeeded donations, as readable lines.
func (b *counterBundle) staleCounters(ctx context.Context, t *testing.T) []string {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx, `
		SELECT format('fundraiser %s: cached %s / %s, actual %s / %s', f.id, f.donations_count, f.donations_total_cents, coalesce(d.n, 0), coalesce(d.total, 0))
		  FROM fundraisers f
		  LEFT JOIN (SELECT fundraiser_id, count(*) AS n, sum(amount_cents) AS total
		               FROM donations WHERE status = 'succeeded' GROUP BY fundraiser_id) d ON d.fundraiser_id = f.id
		 WHERE f.donations_count <> coalesce(d.n, 0) OR f.donations_total_cents <> coalesce(d.total, 0)
		UNION ALL
		SELECT format('user %s: cached %s, actual %s', u.id, u.donations_count, coalesce(d.n, 0))
		  FROM users u
		  LEFT JOIN (SELECT user_id, count(*) AS n FROM donations WHERE status = 'succeeded' GROUP BY user_id) d ON d.user_id = u.id
		 WHERE u.donations_count <> coalesce(d.n, 0)`)
	require.NoError(t, err)
	stale, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return stale
}

// counterKinds are the kinds of the counter-cache jobs.
var counterKinds = []string{donations.FoldFundraiserCountersKind, donations.FoldUserCountersKind,
	donations.RecountFundraiserKind, donations.RecountUserKind}

// failOneInFive fails about 20% of fold and recount attempts, chosen by a
// hash of the job and its attempt, so a job may fail several times in a row.
func failOneInFive(job *rivertype.JobRow) bool {
	if !slices.Contains(counterKinds, job.Kind) {
		return false
	}
	h := fnv.New32a()
	_, _ = fmt.Fprintf(h, "%d/%d", job.ID, job.Attempt) // a hash.Hash's Write never returns an error
	return h.Sum32()%5 == 0
}

// donateWithRetriesInjected records n donations from 8 goroutines while
// about one fold attempt in five fails after its write, waits for the
// queues to drain, and checks that every counter cache equals a GROUP BY
// over the donations and that every injected failure is a recorded error.
// The quick run records 500; TestCounterCachesLoad (build tag long) 5,000.
func donateWithRetriesInjected(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	b := setupCounterTest(ctx, t, counterOpts{fail: failOneInFive})
	fundraisers := seedFundraisers(ctx, t, b.schema.Pool, 20)
	inputs := planDonations(5, fundraisers, 300, n)

	require.NoError(t, donateAll(ctx, b.svc, inputs, 8))
	b.waitQueuesDrained(ctx, t)

	require.Empty(t, b.staleCounters(ctx, t))
	var succeeded, cached int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM donations WHERE status = 'succeeded'), (SELECT sum(donations_count) FROM fundraisers)`,
	).Scan(&succeeded, &cached))
	require.Equal(t, int64(n), b.count(ctx, t, `SELECT count(*) FROM donations`))
	require.Equal(t, succeeded, cached)
	require.Less(t, succeeded, int64(n), "some donations failed and are not counted")

	injected := b.inject.Injected.Load()
	require.Positive(t, injected)
	require.Equal(t, injected, b.count(ctx, t, `
		SELECT coalesce(sum(cardinality(errors)), 0) FROM river_job WHERE kind = ANY($1)`,
		counterKinds), "every injected failure is a recorded error")
	require.Zero(t, b.count(ctx, t, `SELECT (SELECT count(*) FROM fundraiser_counter_deltas) + (SELECT count(*) FROM user_counter_deltas)`),
		"every delta was folded")
	folds := b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, donations.FoldFundraiserCountersKind)
	userFolds := b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, donations.FoldUserCountersKind)
	t.Logf("%d donations (%d succeeded): %d fundraiser folds, %d user folds, %d injected failures",
		n, succeeded, folds, userFolds, injected)
}

func TestCounterCaches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ExactAfterTwoHundredDonationsWithRetriesInjected", func(t *testing.T) {
		t.Parallel()
		donateWithRetriesInjected(ctx, t, 200)
	})

	t.Run("SubscriptionEnqueuesCoalescedFoldsForCountedDonationsOnly", func(t *testing.T) {
		t.Parallel()
		b := setupCounterTest(ctx, t, counterOpts{insertOnly: true, maxConns: 4})
		fundraisers := seedFundraisers(ctx, t, b.schema.Pool, 2)
		kinds := func() []string {
			rows, err := b.schema.Pool.Query(ctx, `
				SELECT kind || ' ' || coalesce(args->>'fundraiser_id', args->>'user_id', '') FROM river_job
				 WHERE kind LIKE 'donations.fold_%' ORDER BY id`)
			require.NoError(t, err)
			out, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			return out
		}

		failed, err := b.svc.Donate(ctx, donations.DonateInput{
			FundraiserID: fundraisers[0], DonorEmail: "a@example.com", AmountCents: 500, Currency: "EUR",
		})
		require.NoError(t, err)
		require.Equal(t, donations.StatusFailed, failed.Status)
		require.Empty(t, kinds(), "a failed donation changes no counter")
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM fundraiser_counter_deltas`), "and writes no delta")

		var d donations.Donation
		for range 10 {
			d, err = b.svc.Donate(ctx, donations.DonateInput{
				FundraiserID: fundraisers[0], DonorEmail: "a@example.com", AmountCents: 500, Currency: "EUR", Succeeded: true,
			})
			require.NoError(t, err)
		}
		require.Equal(t, []string{
			fmt.Sprint(donations.FoldFundraiserCountersKind, " ", fundraisers[0]),
			fmt.Sprint(donations.FoldUserCountersKind, " ", d.UserID),
		}, kinds(), "ten donations while the folds wait leave one of each")
		require.Equal(t, []int64{10, 10, 5000}, []int64{
			b.count(ctx, t, `SELECT count(*) FROM fundraiser_counter_deltas WHERE fundraiser_id = $1 AND donations = 1`, fundraisers[0]),
			b.count(ctx, t, `SELECT count(*) FROM user_counter_deltas WHERE user_id = $1 AND donations = 1`, d.UserID),
			b.count(ctx, t, `SELECT sum(cents) FROM fundraiser_counter_deltas`),
		}, "one delta per succeeded donation, for the fundraiser and for the user")
	})

	t.Run("RecountRepairsDrift", func(t *testing.T) {
		t.Parallel()
		b := setupCounterTest(ctx, t, counterOpts{maxConns: 6})
		fundraisers := seedFundraisers(ctx, t, b.schema.Pool, 3)
		require.NoError(t, donateAll(ctx, b.svc, planDonations(6, fundraisers, 5, 60), 2))
		b.waitQueuesDrained(ctx, t)
		require.Empty(t, b.staleCounters(ctx, t))

		corrupt := func() {
			_, err := b.schema.Pool.Exec(ctx, `UPDATE fundraisers SET donations_count = 999, donations_total_cents = 1`)
			require.NoError(t, err)
			_, err = b.schema.Pool.Exec(ctx, `UPDATE users SET donations_count = donations_count + 7`)
			require.NoError(t, err)
			require.NotEmpty(t, b.staleCounters(ctx, t))
		}

		corrupt()
		for _, id := range fundraisers {
			require.NoError(t, b.svc.RecountFundraiser(ctx, id))
		}
		rows, err := b.schema.Pool.Query(ctx, `SELECT id FROM users`)
		require.NoError(t, err)
		users, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		require.NoError(t, err)
		for _, id := range users {
			require.NoError(t, b.svc.RecountUser(ctx, id))
		}
		b.waitQueuesDrained(ctx, t)
		require.Empty(t, b.staleCounters(ctx, t))

		corrupt()
		n, err := b.svc.RecountAllFundraisers(ctx)
		require.NoError(t, err)
		require.Equal(t, len(fundraisers), n)
		n, err = b.svc.RecountAllUsers(ctx)
		require.NoError(t, err)
		require.Equal(t, len(users), n)
		b.waitQueuesDrained(ctx, t)
		require.Empty(t, b.staleCounters(ctx, t))

		jobsBefore := b.count(ctx, t, `SELECT count(*) FROM river_job`)
		require.ErrorIs(t, b.svc.RecountFundraiser(ctx, 987_654_321), donations.ErrUnknownFundraiser)
		require.ErrorIs(t, b.svc.RecountUser(ctx, 987_654_321), donations.ErrUnknownUser)
		require.Equal(t, jobsBefore, b.count(ctx, t, `SELECT count(*) FROM river_job`), "nothing enqueued for unknown rows")
	})

	t.Run("RecountOfADeletedRowIsRecordedNotRetried", func(t *testing.T) {
		t.Parallel()
		b := setupCounterTest(ctx, t, counterOpts{insertOnly: true, maxConns: 4})
		fundraisers := seedFundraisers(ctx, t, b.schema.Pool, 1)
		require.NoError(t, b.svc.RecountFundraiser(ctx, fundraisers[0]))
		// The row disappears between the enqueue and the run.
		_, err := b.schema.Pool.Exec(ctx, `DELETE FROM fundraisers`)
		require.NoError(t, err)
		b.startSecondWorker(ctx, t, 4)
		b.waitQueuesDrained(ctx, t)

		var output string
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT metadata->>'output' FROM river_job WHERE kind = $1 AND attempt = 1`,
			donations.RecountFundraiserKind).Scan(&output))
		require.JSONEq(t, `{"result": "not_found", "donations_count": 0, "drift_count": 0}`, output)
	})
}

// brokenInvariant returns the fundraisers and users for which, in one
// snapshot, counter + pending deltas differs from their succeeded
// donations: folds and recounts keep it in every snapshot, whatever runs.
func (b *counterBundle) brokenInvariant(ctx context.Context, t *testing.T) []string {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx, `
		SELECT format('fundraiser %s: cached %s / %s, pending %s / %s, actual %s / %s', f.id, f.donations_count, f.donations_total_cents,
		              coalesce(p.n, 0), coalesce(p.cents, 0), coalesce(d.n, 0), coalesce(d.total, 0))
		  FROM fundraisers f
		  LEFT JOIN (SELECT fundraiser_id, count(*) AS n, sum(amount_cents) AS total
		               FROM donations WHERE status = 'succeeded' GROUP BY fundraiser_id) d ON d.fundraiser_id = f.id
		  LEFT JOIN (SELECT fundraiser_id, sum(donations) AS n, sum(cents) AS cents
		               FROM fundraiser_counter_deltas GROUP BY fundraiser_id) p ON p.fundraiser_id = f.id
		 WHERE f.donations_count + coalesce(p.n, 0) <> coalesce(d.n, 0)
		    OR f.donations_total_cents + coalesce(p.cents, 0) <> coalesce(d.total, 0)
		UNION ALL
		SELECT format('user %s: cached %s, pending %s, actual %s', u.id, u.donations_count, coalesce(p.n, 0), coalesce(d.n, 0))
		  FROM users u
		  LEFT JOIN (SELECT user_id, count(*) AS n FROM donations WHERE status = 'succeeded' GROUP BY user_id) d ON d.user_id = u.id
		  LEFT JOIN (SELECT user_id, sum(donations) AS n FROM user_counter_deltas GROUP BY user_id) p ON p.user_id = u.id
		 WHERE u.donations_count + coalesce(p.n, 0) <> coalesce(d.n, 0)`)
	require.NoError(t, err)
	broken, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return broken
}

// TestCounterDeltas: the triggers on donations write a delta for every
// change of a succeeded donation, from any writer (here SQL by hand); the
// folds move them into the counters, and a recount beside folds and new
// donations keeps counter + pending deltas = the donations in every
// snapshot.
func TestCounterDeltas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("EveryWriterCounts", func(t *testing.T) {
		t.Parallel()
		b := setupCounterTest(ctx, t, counterOpts{insertOnly: true, maxConns: 4})
		fundraisers := seedFundraisers(ctx, t, b.schema.Pool, 2)
		users := b.count(ctx, t, `INSERT INTO users (name, email) VALUES ('Ada', 'ada@example.com') RETURNING id`)
		exec := func(sql string, args ...any) {
			t.Helper()
			_, err := b.schema.Pool.Exec(ctx, sql, args...)
			require.NoError(t, err)
		}
		type delta struct{ Fundraiser, Donations, Cents int64 }
		deltas := func() []delta {
			t.Helper()
			rows, err := b.schema.Pool.Query(ctx, `SELECT fundraiser_id, donations, cents FROM fundraiser_counter_deltas ORDER BY id`)
			require.NoError(t, err)
			out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[delta])
			require.NoError(t, err)
			exec(`DELETE FROM fundraiser_counter_deltas`)
			return out
		}
		f0, f1 := fundraisers[0], fundraisers[1]
		var id int64
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `INSERT INTO donations (user_id, fundraiser_id, donor_email, amount_cents, currency, status)
			VALUES ($1, $2, 'ada@example.com', 2500, 'EUR', 'succeeded') RETURNING id`, users, f0).Scan(&id))
		require.Equal(t, []delta{{f0, 1, 2500}}, deltas(), "a succeeded donation")
		exec(`INSERT INTO donations (fundraiser_id, donor_email, amount_cents, currency, status) VALUES ($1, 'x@example.com', 700, 'EUR', 'failed')`, f0)
		require.Empty(t, deltas(), "a failed donation")
		exec(`UPDATE donations SET note = 'thanks' WHERE id = $1`, id)
		require.Empty(t, deltas(), "a change of nothing counted")
		exec(`UPDATE donations SET amount_cents = 3000 WHERE id = $1`, id)
		require.Equal(t, []delta{{f0, -1, -2500}, {f0, 1, 3000}}, deltas(), "an amount corrected")
		exec(`UPDATE donations SET fundraiser_id = $2 WHERE id = $1`, id, f1)
		require.Equal(t, []delta{{f0, -1, -3000}, {f1, 1, 3000}}, deltas(), "a donation moved")
		exec(`UPDATE donations SET status = 'failed' WHERE id = $1`, id)
		require.Equal(t, []delta{{f1, -1, -3000}}, deltas(), "a refund")
		exec(`UPDATE donations SET status = 'succeeded' WHERE id = $1`, id)
		require.Equal(t, []delta{{f1, 1, 3000}}, deltas(), "a payment that succeeded late")
		exec(`DELETE FROM donations WHERE id = $1`, id)
		require.Equal(t, []delta{{f1, -1, -3000}}, deltas(), "a donation deleted")
		require.Equal(t, int64(4), b.count(ctx, t, `SELECT count(*) FROM user_counter_deltas WHERE donations = 1`))
		require.Equal(t, int64(4), b.count(ctx, t, `SELECT count(*) FROM user_counter_deltas WHERE donations = -1`))

		// Changes made in SQL have no fold job: RefoldPendingCounters
		// enqueues them.
		exec(`DELETE FROM user_counter_deltas`)
		exec(`INSERT INTO donations (user_id, fundraiser_id, donor_email, amount_cents, currency, status)
			SELECT $1, f, 'ada@example.com', 100 * f, 'EUR', 'succeeded' FROM unnest($2::bigint[]) AS f`, users, fundraisers)
		n, err := b.svc.RefoldPendingCounters(ctx)
		require.NoError(t, err)
		require.Equal(t, 3, n, "two fundraisers and a user")
		b.startSecondWorker(ctx, t, 4)
		b.waitQueuesDrained(ctx, t)
		require.Empty(t, b.staleCounters(ctx, t))
	})

	t.Run("InvariantHoldsUnderDonationsFoldsAndRecounts", func(t *testing.T) {
		t.Parallel()
		b := setupCounterTest(ctx, t, counterOpts{maxConns: 12, fail: failOneInFive})
		fundraisers := seedFundraisers(ctx, t, b.schema.Pool, 3)
		inputs := planDonations(7, fundraisers, 20, 600)
		runCtx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		var checks, recounts atomic.Int64
		wg.Go(func() { // recounts of every row, over and over
			for runCtx.Err() == nil {
				if _, err := b.svc.RecountAllFundraisers(ctx); err != nil {
					t.Error(err)
					return
				}
				if _, err := b.svc.RecountAllUsers(ctx); err != nil {
					t.Error(err)
					return
				}
				recounts.Add(1)
				time.Sleep(10 * time.Millisecond)
			}
		})
		wg.Go(func() { // the invariant, checked in one snapshot at a time
			for runCtx.Err() == nil {
				if broken := b.brokenInvariant(ctx, t); len(broken) > 0 {
					t.Errorf("counter + pending deltas differ from the donations: %v", broken)
					return
				}
				checks.Add(1)
				time.Sleep(5 * time.Millisecond)
			}
		})
		err := donateAll(ctx, b.svc, inputs, 6)
		stop()
		wg.Wait()
		require.NoError(t, err)
		b.waitQueuesDrained(ctx, t)
		require.Empty(t, b.brokenInvariant(ctx, t))
		require.Empty(t, b.staleCounters(ctx, t))
		require.Positive(t, recounts.Load())
		require.Greater(t, checks.Load(), int64(10))
		var drift int64
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job
			WHERE kind LIKE 'donations.recount_%' AND state = 'completed' AND (metadata->'output'->>'drift_count')::int <> 0`).Scan(&drift))
		require.Zero(t, drift, "no recount found drift: folds and recounts never double-count")
		t.Logf("%d invariant checks, %d rounds of recounts, %d fold jobs", checks.Load(), recounts.Load(),
			b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind LIKE 'donations.fold_%'`))
	})
}

// TestReconcileCounters: drift injected by hand (a counter, a total, a
// user's count) is found by the reconciliation jobs, a slice of the rows
// checked longest ago per run, repaired, and reported: once to OnDrift and
// in a log line naming the row and the difference; rows that were exact
// are checked and left alone.
func TestReconcileCounters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var mu sync.Mutex
	var drifts []donations.Drift
	var logs bytes.Buffer
	b := setupCounterTest(ctx, t, counterOpts{maxConns: 6, reconcile: &donations.ReconcileConfig{
		Interval: time.Hour, Slice: 3,
		OnDrift: func(_ context.Context, d donations.Drift) {
			mu.Lock()
			defer mu.Unlock()
			drifts = append(drifts, d)
		},
		Logger: slog.New(slog.NewTextHandler(&syncWriter{w: &logs, mu: &mu}, nil)),
	}})
	fundraisers := seedFundraisers(ctx, t, b.schema.Pool, 5)
	inputs := planDonations(8, fundraisers, 4, 80)
	for i := range inputs {
		inputs[i].Succeeded = true
	}
	require.NoError(t, donateAll(ctx, b.svc, inputs, 2))
	b.waitQueuesDrained(ctx, t)
	require.Empty(t, b.staleCounters(ctx, t))
	var user int64
	var userCount int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT id, donations_count FROM users ORDER BY id LIMIT 1`).Scan(&user, &userCount))
	require.Positive(t, userCount)

	// Drift, by hand: fundraiser 2 counts 3 too many, fundraiser 4's total
	// is 500 cents short, the first user counts nothing.
	for _, q := range []struct {
		sql string
		id  int64
	}{
		{`UPDATE fundraisers SET donations_count = donations_count + 3 WHERE id = $1`, fundraisers[1]},
		{`UPDATE fundraisers SET donations_total_cents = donations_total_cents - 500 WHERE id = $1`, fundraisers[3]},
		{`UPDATE users SET donations_count = 0 WHERE id = $1`, user},
	} {
		_, err := b.schema.Pool.Exec(ctx, q.sql, q.id)
		require.NoError(t, err)
	}
	require.Len(t, b.staleCounters(ctx, t), 3)

	reconcile := func() donations.ReconcileCountersOutput {
		t.Helper()
		res, err := b.client.Insert(ctx, donations.ReconcileCountersArgs{}, &river.InsertOpts{Queue: donations.QueueCounters})
		require.NoError(t, err)
		b.waitQueuesDrained(ctx, t)
		var out donations.ReconcileCountersOutput
		var raw []byte
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT metadata->'output' FROM river_job WHERE id = $1`, res.Job.ID).Scan(&raw))
		require.NoError(t, json.Unmarshal(raw, &out))
		return out
	}
	// First run: fundraisers 1-3 (never checked, by id) and 3 users;
	// fundraiser 2 and the first user had drifted.
	require.Equal(t, donations.ReconcileCountersOutput{Fundraisers: 3, Users: 3, Drifted: 2}, reconcile())
	stale := b.staleCounters(ctx, t)
	require.Len(t, stale, 1)
	require.Contains(t, stale[0], fmt.Sprintf("fundraiser %d:", fundraisers[3]), "fundraiser 4 waits for its turn")
	// Second run: fundraisers 4 and 5 (never checked), then 1 (checked
	// longest ago); the users left.
	out := reconcile()
	require.Equal(t, 3, out.Fundraisers)
	require.Equal(t, 1, out.Drifted)
	require.Empty(t, b.staleCounters(ctx, t))

	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []donations.Drift{
		{Table: "fundraisers", ID: fundraisers[1], Count: -3},
		{Table: "users", ID: user, Count: userCount},
		{Table: "fundraisers", ID: fundraisers[3], TotalCents: 500},
	}, drifts)
	line := fmt.Sprintf("table=fundraisers id=%d drift_count=-3 drift_total_cents=0", fundraisers[1])
	require.Contains(t, logs.String(), line)
	require.Equal(t, 3, strings.Count(logs.String(), "counter cache drifted; repaired"))
}

// syncWriter serializes writes to w under mu.
type syncWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// TestRegisterReconcilerRefusesABadConfig: an Interval under a second or a
// Slice under 1 is a programming error, refused at startup with a message
// that names the field, before anything is registered.
func TestRegisterReconcilerRefusesABadConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []donations.ReconcileConfig{{Interval: 500 * time.Millisecond}, {Slice: -1}, {Interval: -time.Minute}} {
		reg := jobs.NewRegistry()
		donations.Register(reg, nil)
		before := reg.Kinds()
		require.PanicsWithValue(t, fmt.Sprintf("donations: ReconcileConfig.Interval must be at least 1s and Slice at least 1, got %s and %d",
			cmp.Or(cfg.Interval, donations.ReconcileIntervalDefault), cmp.Or(cfg.Slice, donations.ReconcileSliceDefault)),
			func() { donations.RegisterReconciler(reg, nil, &cfg) })
		require.Equal(t, before, reg.Kinds(), "nothing registered")
	}
	reg := jobs.NewRegistry()
	donations.Register(reg, nil)
	donations.RegisterReconciler(reg, nil, nil)
	require.NoError(t, reg.Err())
	require.Contains(t, reg.Kinds(), donations.ReconcileCountersKind)
}
