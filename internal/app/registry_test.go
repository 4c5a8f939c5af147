package app_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit"
	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/reporting"
)

func TestRegistry(t *testing.T) {
	t.Parallel()

	reg := app.Registry(nil, nil)
	require.NoError(t, reg.Err())
	require.Equal(t, []string{
		jobs.PingKind,
		jobs.PruneEventsKind,
		donations.FoldEmailCountersKind,
		donations.FoldFundraiserCountersKind,
		donations.FoldUserCountersKind,
		donations.ReconcileCountersKind,
		donations.RecountFundraiserKind,
		donations.RecountUserKind,
		donations.UpdateEmailDonationKind,
		inventory.CompleteCheckoutKind,
		inventory.ExpireCheckoutKind,
		inventory.PruneExpiredClaimsKind,
		reporting.CarReportKind,
		reporting.CarUsersImportedKind,
		reporting.CreateCarUsersInBulkKind,
		reporting.RollupFundraiserDayKind,
	}, reg.Kinds())

	// The commands register exactly what an embedding application does.
	public := jobs.NewRegistry()
	aftercommit.Register(public, nil, nil)
	require.Equal(t, public.Kinds(), reg.Kinds())
	require.Equal(t, public.Queues(), reg.Queues())
	require.Equal(t, public.TopicNames(), reg.TopicNames())
}

// The domains meet only through the registry: donations publishes
// donation.created, reporting's subscription turns it into rollup jobs in
// the donation's commit. Once the queue drains, the daily totals equal a
// GROUP BY over the donations, and add up to the donations domain's own
// counter caches (both count succeeded donations only).
func TestDonationsFeedReportingRollups(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 8})
	reg := app.Registry(s.Pool, nil)
	client, _ := jobstest.Client(ctx, t, s, reg, jobstest.Opts{
		Work:       true,
		MaxWorkers: 4,
		River:      &river.Config{FetchCooldown: 10 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
	})
	ob, err := jobs.NewOutbox(s.Pool, client, reg, directInsert)
	require.NoError(t, err)
	svc := donations.NewService(s.Pool, ob)

	rows, err := s.Pool.Query(ctx, `INSERT INTO fundraisers (name) SELECT 'Fundraiser ' || i FROM generate_series(1, 4) AS i RETURNING id`)
	require.NoError(t, err)
	fundraisers, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 75 {
				_, err := svc.Donate(ctx, donations.DonateInput{
					FundraiserID: fundraisers[rng.IntN(len(fundraisers))],
					DonorEmail:   fmt.Sprintf("donor%d@example.com", rng.IntN(30)),
					AmountCents:  1 + rng.Int64N(20_000),
					Currency:     "USD",
					Succeeded:    rng.IntN(5) != 0,
				})
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))

	require.Eventually(t, func() bool {
		var n int
		err := s.Pool.QueryRow(ctx,
			`SELECT count(*) FROM river_job WHERE state NOT IN ('completed', 'discarded', 'cancelled')`).Scan(&n)
		return err == nil && n == 0
	}, 2*time.Minute, 20*time.Millisecond, "jobs still pending")

	stale := func(sql string) []string {
		rows, err := s.Pool.Query(ctx, sql)
		require.NoError(t, err)
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return out
	}
	require.Empty(t, stale(`
		WITH actual AS (
		    SELECT fundraiser_id, (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n, sum(amount_cents) AS total
		      FROM donations WHERE status = 'succeeded' GROUP BY 1, 2
		)
		SELECT format('fundraiser %s on %s: rollup %s / %s, actual %s / %s', fundraiser_id, day, r.donations_count, r.total_cents, a.n, a.total)
		  FROM actual a FULL JOIN fundraiser_daily_totals r USING (fundraiser_id, day)
		 WHERE r.donations_count IS DISTINCT FROM a.n OR r.total_cents IS DISTINCT FROM a.total`))
	require.Empty(t, stale(`
		SELECT format('fundraiser %s: cached %s / %s, rolled up %s / %s', f.id, f.donations_count, f.donations_total_cents, r.n, r.total)
		  FROM fundraisers f
		  LEFT JOIN (SELECT fundraiser_id, sum(donations_count) AS n, sum(total_cents) AS total
		               FROM fundraiser_daily_totals GROUP BY 1) r ON r.fundraiser_id = f.id
		 WHERE f.donations_count <> coalesce(r.n, 0) OR f.donations_total_cents <> coalesce(r.total, 0)`))

	var succeeded, rolledUp, lost int
	require.NoError(t, s.Pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM donations WHERE status = 'succeeded'),
		       (SELECT coalesce(sum(donations_count), 0) FROM fundraiser_daily_totals),
		       (SELECT count(*) FROM river_job WHERE state IN ('discarded', 'cancelled'))`).Scan(&succeeded, &rolledUp, &lost))
	require.Zero(t, lost)
	require.Positive(t, succeeded)
	require.Less(t, succeeded, 300, "failed donations are not counted")
	require.Equal(t, succeeded, rolledUp)
}
