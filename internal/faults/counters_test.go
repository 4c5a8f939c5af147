//go:build long

package faults_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// counterKinds are the counter caches' fold jobs.
var counterKinds = []string{donations.FoldFundraiserCountersKind, donations.FoldUserCountersKind}

// brokenCountersSQL lists the fundraisers and users for which, in the
// statement's snapshot, counter + pending deltas is not their succeeded
// donations: the invariant folds keep whatever happens to a worker.
const brokenCountersSQL = `
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
 WHERE u.donations_count + coalesce(p.n, 0) <> coalesce(d.n, 0)`

// TestCounterCachesWorkerKilled: 8 goroutines make 5,000 donations (about
// one in six failed) to 20 fundraisers from 300 donors while a worker
// process folds the counters with one fold attempt in five failing on
// purpose; the worker is killed (SIGKILL) a third of the way through and
// another takes over. At every check, counter + pending deltas equals the
// donations for every row; at the end every delta is folded and every
// counter equals its donations, and no fold job was lost.
func TestCounterCachesWorkerKilled(t *testing.T) {
	// Not parallel: its 8 donors and two worker processes load the two
	// cores enough to push the package's time-bound recoveries past their
	// bounds (a CI run failed TestWorkerKilledMidJob beside it). Go runs a
	// package's sequential tests before its parallel ones, so this one
	// runs alone in the package, in its own schema as ever.
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 12})
	f := newFixture(ctx, t, s, 1)
	rows, err := s.Pool.Query(ctx, `INSERT INTO fundraisers (name) SELECT 'Counter ' || i FROM generate_series(1, 20) AS i RETURNING id`)
	require.NoError(t, err)
	fundraisers, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)

	// One first attempt in five fails: River retries it about a second
	// later (a second failure in a row would wait 16 s, a third 81 s).
	env := []string{"AFTERCOMMIT_FAULT_FAIL_ONE_IN=5", "AFTERCOMMIT_FAULT_ATTEMPT=1",
		"AFTERCOMMIT_FAULT_KINDS=" + counterKinds[0] + "," + counterKinds[1]}
	a := startWorker(t, s, "a", env, "--max-workers", "20")

	const total = 5000
	var done atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 21))
			for done.Load() < total {
				_, err := f.donations.Donate(ctx, donations.DonateInput{
					FundraiserID: fundraisers[rng.IntN(len(fundraisers))],
					DonorEmail:   fmt.Sprintf("donor%d@counters.example", rng.IntN(300)),
					AmountCents:  1 + rng.Int64N(50_000), Currency: "EUR",
					Succeeded: rng.IntN(6) != 0,
				})
				if err != nil {
					t.Error(err)
					return
				}
				done.Add(1)
			}
		})
	}
	check := func() {
		t.Helper()
		rows, err := s.Pool.Query(ctx, brokenCountersSQL)
		require.NoError(t, err)
		broken, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		require.Empty(t, broken, "counter + pending deltas differ from the donations")
	}
	var b *workerProc
	for done.Load() < total {
		check()
		if b == nil && done.Load() >= total/3 {
			a.kill(t)
			t.Logf("worker a killed after %d donations", done.Load())
			b = startWorker(t, s, "b", env, "--max-workers", "20", "--job-timeout", "3s", "--rescue-after", "4s")
			b.clientID(t)
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	require.NotNil(t, b, "worker a was killed mid-run")
	start := time.Now()
	for {
		check()
		left := count(ctx, t, s, `SELECT (SELECT count(*) FROM fundraiser_counter_deltas) + (SELECT count(*) FROM user_counter_deltas)
			+ (SELECT count(*) FROM river_job WHERE kind = ANY($1) AND state NOT IN ('completed', 'discarded', 'cancelled'))`, counterKinds)
		if left == 0 {
			break
		}
		require.Less(t, time.Since(start), 2*time.Minute, "deltas and folds left: %d; jobs: %s", left, jobStates(ctx, t, s, counterKinds...))
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("every delta folded %.1f s after the last donation", time.Since(start).Seconds())
	check()
	require.Zero(t, count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = ANY($1) AND state IN ('discarded', 'cancelled')`, counterKinds))
	require.Zero(t, count(ctx, t, s, `
		SELECT count(*) FROM fundraisers f
		  LEFT JOIN (SELECT fundraiser_id, count(*) AS n, sum(amount_cents) AS total FROM donations WHERE status = 'succeeded' GROUP BY fundraiser_id) d
		    ON d.fundraiser_id = f.id
		 WHERE f.donations_count <> coalesce(d.n, 0) OR f.donations_total_cents <> coalesce(d.total, 0)`), "a fundraiser's counters off")
	require.Zero(t, count(ctx, t, s, `
		SELECT count(*) FROM users u
		  LEFT JOIN (SELECT user_id, count(*) AS n FROM donations WHERE status = 'succeeded' GROUP BY user_id) d ON d.user_id = u.id
		 WHERE u.donations_count <> coalesce(d.n, 0)`), "a user's counter off")
	retried := count(ctx, t, s, `SELECT coalesce(sum(cardinality(errors)), 0) FROM river_job WHERE kind = ANY($1)`, counterKinds)
	rescued := count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = ANY($1) AND metadata ? 'river:rescue_count'`, counterKinds)
	succeeded := count(ctx, t, s, `SELECT count(*) FROM donations WHERE status = 'succeeded'`)
	t.Logf("%d donations (%d succeeded), %d fold jobs, %d failed attempts retried, %d rescued from the killed worker",
		count(ctx, t, s, `SELECT count(*) FROM donations`), succeeded,
		count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = ANY($1)`, counterKinds), retried, rescued)
	require.Positive(t, retried, "injected failures were retried")
	require.GreaterOrEqual(t, count(ctx, t, s, `SELECT count(*) FROM donations`), total)
}
