package reporting_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/reporting"
)

// insertDonationSQL writes a donation as the donations domain does (without
// a user: the column is nullable, and the rollups do not read it); $4 NULL
// means now().
const insertDonationSQL = `
INSERT INTO donations (fundraiser_id, donor_email, amount_cents, currency, status, created_at)
VALUES ($1, 'donor@example.com', $2, 'USD', $3, coalesce($4, now()))
RETURNING id`

// donate records a donation and publishes its donation.created event in one
// outbox transaction, with the payload the donations domain publishes.
func (b *bundle) donate(ctx context.Context, fundraiserID, cents int64, status string) error {
	_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		var id int64
		if err := tx.QueryRow(ctx, insertDonationSQL, fundraiserID, cents, status, nil).Scan(&id); err != nil {
			return err
		}
		return tx.Publish(reporting.TopicDonationCreated, map[string]any{
			"donation_id": id, "fundraiser_id": fundraiserID, "user_id": 0,
			"amount_cents": cents, "currency": "USD", "status": status,
		})
	})
	return err
}

// insertDonation writes a donation at a given time, without an event.
func (b *bundle) insertDonation(ctx context.Context, t testing.TB, fundraiserID, cents int64, status string, at time.Time) {
	t.Helper()
	var id int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx, insertDonationSQL, fundraiserID, cents, status, at).Scan(&id))
}

// staleRollups returns, as readable lines, the (fundraiser, day) pairs whose
// rollup row differs from a GROUP BY over the succeeded donations (a missing
// or extra row included), for days from first to last.
func (b *bundle) staleRollups(ctx context.Context, t testing.TB, first, last time.Time) []string {
	t.Helper()
	return b.strings(ctx, t, `
		WITH actual AS (
		    SELECT fundraiser_id, (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n, sum(amount_cents) AS total
		      FROM donations WHERE status = 'succeeded' GROUP BY 1, 2
		)
		SELECT format('fundraiser %s on %s: rollup %s / %s, actual %s / %s',
		              fundraiser_id, day, r.donations_count, r.total_cents, a.n, a.total)
		  FROM actual a FULL JOIN fundraiser_daily_totals r USING (fundraiser_id, day)
		 WHERE day BETWEEN $1::date AND $2::date
		   AND (r.donations_count IS DISTINCT FROM a.n OR r.total_cents IS DISTINCT FROM a.total)
		 ORDER BY 1`, first, last)
}

// rollupRows lists the rollup rows as "<fundraiser> <day> <count> <total>".
func (b *bundle) rollupRows(ctx context.Context, t testing.TB) []string {
	t.Helper()
	return b.strings(ctx, t, `
		SELECT fundraiser_id || ' ' || day || ' ' || donations_count || ' ' || total_cents
		  FROM fundraiser_daily_totals ORDER BY fundraiser_id, day`)
}

var (
	allDays = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	noDay   = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
)

// date is a UTC day.
func date(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 0, 0, 0, 0, time.UTC) }

func TestRollups(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("EqualGroupByAfterTheQueueDrainsWithRetriesInjected", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true, fail: failOneInFive(reporting.RollupFundraiserDayKind)})
		fundraisers := b.fundraisers(ctx, t, 8)

		var (
			wg       sync.WaitGroup
			firstErr atomic.Pointer[error]
		)
		for g := range 6 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(g), 11))
				for range 80 {
					status := "succeeded"
					switch rng.IntN(6) {
					case 0:
						status = "failed"
					case 1:
						status = "pending"
					}
					if err := b.donate(ctx, fundraisers[rng.IntN(len(fundraisers))], 1+rng.Int64N(50_000), status); err != nil {
						firstErr.CompareAndSwap(nil, &err)
						return
					}
				}
			})
		}
		wg.Wait()
		if err := firstErr.Load(); err != nil {
			require.NoError(t, *err)
		}
		b.waitDrained(ctx, t)

		require.Empty(t, b.staleRollups(ctx, t, allDays, noDay))
		require.Equal(t, 480, b.count(ctx, t, `SELECT count(*) FROM donations`))
		var succeeded, rolledUp int
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `
			SELECT (SELECT count(*) FROM donations WHERE status = 'succeeded'),
			       (SELECT sum(donations_count) FROM fundraiser_daily_totals)`).Scan(&succeeded, &rolledUp))
		require.Equal(t, succeeded, rolledUp)
		require.Less(t, succeeded, 480, "failed and pending donations are not counted")
		rows := b.count(ctx, t, `SELECT count(*) FROM fundraiser_daily_totals`)
		require.GreaterOrEqual(t, rows, 8, "a row per fundraiser for today (and one for yesterday, past midnight)")
		require.LessOrEqual(t, rows, 16)

		injected := b.inject.Injected.Load()
		require.Positive(t, injected)
		require.Equal(t, int(injected), b.count(ctx, t,
			`SELECT coalesce(sum(cardinality(errors)), 0) FROM river_job WHERE kind = $1`, reporting.RollupFundraiserDayKind),
			"every injected failure is a recorded error")
		t.Logf("480 donations (%d succeeded): %d rollup jobs, %d injected failures", succeeded,
			b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, reporting.RollupFundraiserDayKind), injected)
	})

	t.Run("ABurstLeavesOneWaitingJobPerFundraiserAndDay", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		f := b.fundraisers(ctx, t, 3)

		before := time.Now().UTC().Format(time.DateOnly)
		for range 20 {
			require.NoError(t, b.donate(ctx, f[0], 500, "succeeded"))
		}
		require.NoError(t, b.donate(ctx, f[1], 500, "pending"))
		require.NoError(t, b.donate(ctx, f[1], 500, "succeeded"))
		for range 3 {
			require.NoError(t, b.donate(ctx, f[2], 500, "failed"))
		}
		after := time.Now().UTC().Format(time.DateOnly)

		jobs := b.strings(ctx, t, `
			SELECT (args->>'fundraiser_id') || ' ' || state || ' ' || queue FROM river_job WHERE kind = $1 ORDER BY id`,
			reporting.RollupFundraiserDayKind)
		days := b.strings(ctx, t, `SELECT DISTINCT args->>'day' FROM river_job`)
		if before == after {
			require.Equal(t, []string{
				fmt.Sprint(f[0], " available ", reporting.QueueReports),
				fmt.Sprint(f[1], " available ", reporting.QueueReports),
			}, jobs, "a failed donation changes no total")
			require.Equal(t, []string{before}, days)
		} else { // the test ran over midnight: a job per day at most
			require.LessOrEqual(t, len(jobs), 4)
			require.Subset(t, []string{before, after}, days)
		}
	})

	t.Run("AJobRecomputesItsDayAndTheDaysAround", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		f := b.fundraisers(ctx, t, 2)
		day := date(2026, 3, 10)

		for _, d := range []struct {
			at     time.Time
			cents  int64
			status string
		}{
			{day.Add(-24*time.Hour - time.Microsecond), 1, "succeeded"}, // 03-08 23:59:59.999999: outside
			{day.Add(-time.Microsecond), 10, "succeeded"},               // 03-09, last microsecond
			{day, 100, "succeeded"},                                     // 03-10, first microsecond
			{day.Add(12 * time.Hour), 1000, "succeeded"},
			{day.Add(13 * time.Hour), 5000, "failed"},
			{day.Add(14 * time.Hour), 7000, "pending"},
			{day.Add(24 * time.Hour), 10_000, "succeeded"},  // 03-11
			{day.Add(48 * time.Hour), 100_000, "succeeded"}, // 03-12: outside
		} {
			b.insertDonation(ctx, t, f[0], d.cents, d.status, d.at)
		}
		b.insertDonation(ctx, t, f[1], 3, "succeeded", day) // another fundraiser
		// A stale row in the window, and one outside it.
		_, err := b.schema.Pool.Exec(ctx, `
			INSERT INTO fundraiser_daily_totals (fundraiser_id, day, donations_count, total_cents)
			VALUES ($1, '2026-03-11', 99, 99), ($1, '2026-03-07', 42, 42)`, f[0])
		require.NoError(t, err)

		_, err = b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(reporting.RollupFundraiserDayArgs{FundraiserID: f[0], Day: "2026-03-10"}, nil)
		})
		require.NoError(t, err)
		ev := b.waitJob(t, reporting.RollupFundraiserDayKind)
		require.JSONEq(t, `{"written": 3, "emptied": 0, "donations": 4}`, string(ev.Job.Output()))
		require.Equal(t, []string{
			fmt.Sprint(f[0], " 2026-03-07 42 42"), // untouched
			fmt.Sprint(f[0], " 2026-03-09 1 10"),
			fmt.Sprint(f[0], " 2026-03-10 2 1100"),
			fmt.Sprint(f[0], " 2026-03-11 1 10000"),
		}, b.rollupRows(ctx, t))

		// A day without donations leaves no row, and deletes a stale one.
		_, err = b.schema.Pool.Exec(ctx, `
			INSERT INTO fundraiser_daily_totals (fundraiser_id, day, donations_count, total_cents) VALUES ($1, '2026-06-01', 5, 5)`, f[1])
		require.NoError(t, err)
		_, err = b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(reporting.RollupFundraiserDayArgs{FundraiserID: f[1], Day: "2026-06-02"}, nil)
		})
		require.NoError(t, err)
		ev = b.waitJob(t, reporting.RollupFundraiserDayKind)
		require.JSONEq(t, `{"written": 0, "emptied": 3, "donations": 0}`, string(ev.Job.Output()))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM fundraiser_daily_totals WHERE fundraiser_id = $1`, f[1]))
	})

	t.Run("AMalformedDayCancelsTheJob", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(reporting.RollupFundraiserDayArgs{FundraiserID: 1, Day: "10/03/2026"}, nil)
		})
		require.NoError(t, err)
		ev := b.waitJob(t, reporting.RollupFundraiserDayKind)
		require.Equal(t, river.EventKindJobCancelled, ev.Kind)
		require.Equal(t, 1, ev.Job.Attempt, "cancelled at its first attempt")
		require.Equal(t, `JobCancelError: reporting.rollup_fundraiser_day: args: day: must be a date such as 2006-01-02, got "10/03/2026"`, ev.Job.Errors[0].Error)
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM fundraiser_daily_totals`))
	})

	t.Run("AnUnreadableEventRollsTheDonationBack", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		f := b.fundraisers(ctx, t, 1)[0]

		for _, payload := range []any{
			map[string]any{"donation_id": 1, "status": "succeeded"},         // no fundraiser
			map[string]any{"fundraiser_id": "seven", "status": "succeeded"}, // not a number
		} {
			_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
				if _, err := tx.Exec(ctx, insertDonationSQL, f, 500, "succeeded", nil); err != nil {
					return err
				}
				return tx.Publish(reporting.TopicDonationCreated, payload)
			})
			require.ErrorContains(t, err, "reporting: ")
			require.ErrorContains(t, err, "donation.created")
		}
		for _, table := range []string{"donations", "river_job", "outbox_events"} {
			require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM `+table), "rows in %s", table)
		}
	})
}

func TestBackfill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("RecomputesTheRangeFromSourceAndNothingElse", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		f := b.fundraisers(ctx, t, 4)
		first, last := date(2026, 2, 1), date(2026, 2, 10)

		// Donations over 12 days, written without events (an import); the
		// ones before and after the range must not be rolled up.
		rng := rand.New(rand.NewPCG(3, 3))
		statuses := []string{"succeeded", "succeeded", "succeeded", "failed", "pending"}
		for range 400 {
			at := first.Add(-24*time.Hour + time.Duration(rng.Int64N(int64(12*24*time.Hour))))
			b.insertDonation(ctx, t, f[rng.IntN(3)], 1+rng.Int64N(10_000), statuses[rng.IntN(len(statuses))], at)
		}
		// Stale rows: a wrong total, a day without donations, and one
		// outside the range that must stay as it is.
		_, err := b.schema.Pool.Exec(ctx, `
			INSERT INTO fundraiser_daily_totals (fundraiser_id, day, donations_count, total_cents)
			VALUES ($1, '2026-02-03', 1, 1), ($2, '2026-02-05', 7, 700), ($1, '2026-02-20', 9, 9)`, f[0], f[3])
		require.NoError(t, err)
		require.NotEmpty(t, b.staleRollups(ctx, t, first, last))

		res, err := b.svc.Backfill(ctx, first, time.Date(2026, 2, 10, 23, 0, 0, 0, time.FixedZone("UTC-5", -5*3600)))
		require.NoError(t, err)

		require.Empty(t, b.staleRollups(ctx, t, first, last))
		var groups, succeeded int64
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `
			SELECT count(DISTINCT (fundraiser_id, (created_at AT TIME ZONE 'UTC')::date)), count(*)
			  FROM donations
			 WHERE status = 'succeeded'
			   AND created_at >= '2026-02-01 00:00:00+00' AND created_at < '2026-02-11 00:00:00+00'`).Scan(&groups, &succeeded))
		require.Equal(t, reporting.RollupOutput{Written: groups, Emptied: 1, Donations: succeeded}, res)
		require.Equal(t, int(groups)+1, b.count(ctx, t, `SELECT count(*) FROM fundraiser_daily_totals`))
		require.Equal(t, []string{fmt.Sprint(f[0], " 2026-02-20 9 9")}, b.strings(ctx, t, `
			SELECT fundraiser_id || ' ' || day || ' ' || donations_count || ' ' || total_cents
			  FROM fundraiser_daily_totals WHERE day NOT BETWEEN '2026-02-01' AND '2026-02-10'`), "outside the range: untouched")
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))

		again, err := b.svc.Backfill(ctx, first, last)
		require.NoError(t, err)
		require.Equal(t, reporting.RollupOutput{Written: groups, Donations: succeeded}, again, "idempotent")
	})

	t.Run("RefusesBadRanges", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		_, err := b.svc.Backfill(ctx, date(2026, 2, 10), date(2026, 2, 9))
		require.EqualError(t, err, "reporting: invalid last: 2026-02-09 is before the first day, 2026-02-10")
		require.ErrorIs(t, err, reporting.ErrInvalidInput)
		_, err = b.svc.Backfill(ctx, date(2016, 1, 1), date(2026, 1, 8))
		require.EqualError(t, err, "reporting: invalid last: 2016-01-01 to 2026-01-08 is 3661 days, at most 3660 per call")
		require.ErrorIs(t, err, reporting.ErrInvalidInput)
		_, err = b.svc.Backfill(ctx, date(2016, 1, 1), date(2026, 1, 7)) // exactly 3660 days: accepted
		require.NoError(t, err)

		res, err := b.svc.Backfill(ctx, date(2026, 2, 10), date(2026, 2, 10))
		require.NoError(t, err)
		require.Zero(t, res, "one day, nothing in it")
	})

	t.Run("SafeWhileDonationsAndRollupJobsRun", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		f := b.fundraisers(ctx, t, 5)
		today := time.Now().UTC()

		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		record := func(err error) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
		for g := range 3 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(g), 5))
				for range 150 {
					record(b.donate(ctx, f[rng.IntN(len(f))], 1+rng.Int64N(1000), "succeeded"))
				}
			})
		}
		wg.Go(func() {
			for range 10 {
				_, err := b.svc.Backfill(ctx, today.AddDate(0, 0, -1), today.AddDate(0, 0, 1))
				record(err)
			}
		})
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		b.waitDrained(ctx, t)
		require.Empty(t, b.staleRollups(ctx, t, allDays, noDay))
		require.Equal(t, 450, b.count(ctx, t, `SELECT coalesce(sum(donations_count), 0) FROM fundraiser_daily_totals`))
	})
}
