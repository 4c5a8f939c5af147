package reporting_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/reporting"
)

// staleReports returns, as readable lines, the cars whose report differs
// from a GROUP BY over car_users (a car with users and no report included).
func (b *bundle) staleReports(ctx context.Context, t testing.TB) []string {
	t.Helper()
	return b.strings(ctx, t, `
		SELECT format('car %s: report %s / %s, actual %s / %s', c.id, r.users_count, r.last_user_added_at, coalesce(a.n, 0), a.last)
		  FROM cars c
		  LEFT JOIN (SELECT car_id, count(*) AS n, max(created_at) AS last FROM car_users GROUP BY car_id) a ON a.car_id = c.id
		  LEFT JOIN car_reports r ON r.car_id = c.id
		 WHERE (a.n IS NOT NULL OR r.car_id IS NOT NULL)
		   AND (r.users_count IS DISTINCT FROM coalesce(a.n, 0) OR r.last_user_added_at IS DISTINCT FROM a.last)`)
}

// requireReportsExact checks every car's report against car_users.
func (b *bundle) requireReportsExact(ctx context.Context, t testing.TB) {
	t.Helper()
	require.Empty(t, b.staleReports(ctx, t))
}

func TestCarReport(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ExactAfterRandomAdditionsWithRetriesInjected", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true, fail: failOneInFive(reporting.CarReportKind), outboxTable: true})
		cars := []int64{b.car(ctx, t, "A"), b.car(ctx, t, "B"), b.car(ctx, t, "C"), b.car(ctx, t, "D"), b.car(ctx, t, "Idle")}
		users := b.users(ctx, t, 400)

		// Six goroutines add users at random: mostly one at a time, now and
		// then a bulk list (with duplicates, overlapping earlier additions)
		// at once or as a job.
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		for g := range 6 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(g), 7))
				for range 60 {
					car := cars[rng.IntN(len(cars)-1)]
					var err error
					switch op := rng.IntN(10); {
					case op < 8:
						_, err = b.svc.AddCarUser(ctx, car, users[rng.IntN(len(users))])
					default:
						ids := make([]int64, 1+rng.IntN(120))
						for i := range ids {
							ids[i] = users[rng.IntN(len(users))]
						}
						if op == 8 {
							_, err = b.svc.CreateCarUsersInBulk(ctx, car, ids)
						} else {
							err = b.svc.EnqueueCarUsersInBulk(ctx, car, ids)
						}
					}
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		b.waitDrained(ctx, t)

		b.requireReportsExact(ctx, t)
		require.Equal(t, 4, b.count(ctx, t, `SELECT count(*) FROM car_reports WHERE users_count > 0`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM car_reports WHERE car_id = $1`, cars[4]), "no user, no report")
		injected := b.inject.Injected.Load()
		require.Positive(t, injected)
		require.Equal(t, int(injected), b.count(ctx, t,
			`SELECT coalesce(sum(cardinality(errors)), 0) FROM river_job WHERE kind = $1`, reporting.CarReportKind),
			"every injected failure is a recorded error")
		t.Logf("360 additions: %d pairs, %d report jobs, %d injected failures",
			b.count(ctx, t, `SELECT count(*) FROM car_users`),
			b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, reporting.CarReportKind), injected)
	})

	t.Run("AReportOfADeletedCarIsRecordedNotRetried", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		car := b.car(ctx, t, "Van")
		_, err := b.svc.AddCarUser(ctx, car, b.users(ctx, t, 1)[0])
		require.NoError(t, err)
		// The car disappears between the enqueue and the run.
		_, err = b.schema.Pool.Exec(ctx, `DELETE FROM cars`)
		require.NoError(t, err)
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM car_users`), "the pairs went with the car")

		b.start(ctx, t, allQueues)
		ev := b.waitJob(t, reporting.CarReportKind)
		require.Equal(t, river.EventKindJobCompleted, ev.Kind)
		require.Equal(t, 1, ev.Job.Attempt)
		require.JSONEq(t, `{"result": "not_found", "users_count": 0}`, string(ev.Job.Output()))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM car_reports`))
	})

	t.Run("RecordsTheCountAndTheLastAddition", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		car := b.car(ctx, t, "Van")
		users := b.users(ctx, t, 3)
		for _, u := range users {
			_, err := b.svc.AddCarUser(ctx, car, u)
			require.NoError(t, err)
		}
		b.start(ctx, t, allQueues)
		ev := b.waitJob(t, reporting.CarReportKind)
		require.Equal(t, river.EventKindJobCompleted, ev.Kind)
		require.JSONEq(t, `{"result": "reported", "users_count": 3}`, string(ev.Job.Output()))

		r, err := b.svc.CarReport(ctx, car)
		require.NoError(t, err)
		var last time.Time
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT max(created_at) FROM car_users`).Scan(&last))
		require.True(t, r.Computed)
		require.Equal(t, int64(3), r.UsersCount)
		require.True(t, last.Equal(r.LastUserAddedAt), "last addition %s, reported %s", last, r.LastUserAddedAt)
		require.False(t, r.ComputedAt.Before(last))

		// Drift is repaired by one more recount.
		_, err = b.schema.Pool.Exec(ctx, `UPDATE car_reports SET users_count = 99, last_user_added_at = NULL`)
		require.NoError(t, err)
		require.NotEmpty(t, b.staleReports(ctx, t))
		require.NoError(t, b.svc.RecountCar(ctx, car))
		ev = b.waitJob(t, reporting.CarReportKind)
		require.JSONEq(t, `{"result": "reported", "users_count": 3}`, string(ev.Job.Output()))
		b.requireReportsExact(ctx, t)

		err = b.svc.RecountCar(ctx, 987_654)
		require.EqualError(t, err, "reporting: invalid car_id: no car has id 987654")
		require.ErrorIs(t, err, reporting.ErrUnknownCar)
		require.Equal(t, 2, b.count(ctx, t, `SELECT count(*) FROM river_job`), "nothing enqueued for an unknown car")
	})
}
