package reporting_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/testtrace"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/reporting"
)

// reportJobs lists the CarReport jobs as "<car_id> <state>", oldest first.
func (b *bundle) reportJobs(ctx context.Context, t testing.TB) []string {
	t.Helper()
	return b.strings(ctx, t, `SELECT (args->>'car_id') || ' ' || state FROM river_job WHERE kind = $1 ORDER BY id`,
		reporting.CarReportKind)
}

// requireNothingWritten checks that no pair, report or job exists.
func (b *bundle) requireNothingWritten(ctx context.Context, t testing.TB) {
	t.Helper()
	for _, table := range []string{"car_users", "car_reports", "river_job", "outbox_events"} {
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM `+table), "rows in %s", table)
	}
}

// unknownIDs returns n user IDs that name no user.
func unknownIDs(n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = 1_000_001 + int64(i)
	}
	return out
}

func TestCreateCarUsersInBulk(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("TenThousandUsersOneReportInsertOneWaitingReport", func(t *testing.T) {
		t.Parallel()
		// The client works the bulk queue only: the report job stays
		// waiting, and the traced pool sees the bulk job's transaction
		// alone.
		b := setup(ctx, t, &setupOpts{work: true, queues: []string{reporting.QueueBulk}, traceWorkers: true, outboxTable: true})
		car := b.car(ctx, t, "Minibus")
		users := b.users(ctx, t, 10_000)

		require.NoError(t, b.svc.EnqueueCarUsersInBulk(ctx, car, users))
		ev := b.waitJob(t, reporting.CreateCarUsersInBulkKind)
		require.Equal(t, river.EventKindJobCompleted, ev.Kind)
		require.JSONEq(t, fmt.Sprintf(`{"car_id": %d, "requested": 10000, "distinct": 10000, "inserted": 10000, "existing": 0, "report_enqueued": true}`, car),
			string(ev.Job.Output()))

		trips := b.roundTrips()
		for i, trip := range trips {
			t.Logf("round trip %d: %d statements: %.60q", i, len(trip), trip)
		}
		require.Equal(t, 1, b.trace.Count("INSERT INTO outbox_jobs"), "one report-job insert, into the outbox table")
		require.Equal(t, 1, b.trace.Count("INSERT INTO car_users"), "one insert of the pairs")
		require.Len(t, trips, 5, "BEGIN; checks and insert; the fair share's wake-up; completion; report job and COMMIT")
		require.Equal(t, []string{"begin"}, trips[0])
		require.Len(t, trips[1], 3)
		require.True(t, testtrace.Matches(trips[1][0], "FROM cars"))
		require.True(t, testtrace.Matches(trips[1][1], "FROM users"))
		require.True(t, testtrace.Matches(trips[1][2], "INSERT INTO car_users"))
		// A job of a fair share names its queue for the wake-up its client
		// sends after the COMMIT (jobs.CompleteTx).
		require.Len(t, trips[2], 1)
		require.True(t, testtrace.Matches(trips[2][0], "aftercommit.sequence_wakes"))
		require.Len(t, trips[3], 1)
		require.True(t, testtrace.Matches(trips[3][0], "JobSetStateIfRunningMany"), "the job completes in the transaction")
		require.True(t, testtrace.Matches(trips[4][0], "INSERT INTO outbox_jobs"))
		require.Equal(t, "COMMIT", trips[4][len(trips[4])-1])
		for _, stmt := range trips[4][1 : len(trips[4])-1] {
			require.True(t, testtrace.Matches(stmt, "pg_notify"), "the relays' wake-up, nothing else")
		}

		require.Equal(t, 10_000, b.count(ctx, t, `SELECT count(*) FROM car_users WHERE car_id = $1`, car))
		// The running relay moves the report job from the outbox table into
		// river_job after the bulk job's COMMIT, which the completion event
		// may come before.
		require.Eventually(t, func() bool {
			var waiting int
			err := b.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_jobs`).Scan(&waiting)
			return err == nil && waiting == 0
		}, 10*time.Second, 10*time.Millisecond, "the relay moved the report job")
		require.Equal(t, []string{fmt.Sprint(car, " available")}, b.reportJobs(ctx, t))
		require.Equal(t, reporting.QueueReports, b.strings(ctx, t, `SELECT queue FROM river_job WHERE kind = $1`, reporting.CarReportKind)[0])
	})

	t.Run("SkipsDuplicatesAndExistingPairs", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{traceService: true})
		car := b.car(ctx, t, "Van")
		u := b.users(ctx, t, 4)

		res, err := b.svc.CreateCarUsersInBulk(ctx, car, []int64{u[1], u[0], u[1], u[2]})
		require.NoError(t, err)
		require.Equal(t, reporting.BulkResult{CarID: car, Requested: 4, Distinct: 3, Inserted: 3, Existing: 0, ReportEnqueued: true}, res)
		trips := b.roundTrips()
		require.Len(t, trips, 3, "BEGIN; checks and insert; report job and COMMIT")
		require.True(t, testtrace.Matches(trips[2][0], "JobInsertFastMany"))
		require.Equal(t, "COMMIT", trips[2][len(trips[2])-1])

		b.trace.Reset()
		res, err = b.svc.CreateCarUsersInBulk(ctx, car, []int64{u[3], u[2], u[3], u[0]})
		require.NoError(t, err)
		require.Equal(t, reporting.BulkResult{CarID: car, Requested: 4, Distinct: 3, Inserted: 1, Existing: 2, ReportEnqueued: true}, res)
		require.Equal(t, 1, b.trace.Count("JobInsertFastMany"))

		b.trace.Reset()
		res, err = b.svc.CreateCarUsersInBulk(ctx, car, []int64{u[2], u[0]})
		require.NoError(t, err)
		require.Equal(t, reporting.BulkResult{CarID: car, Requested: 2, Distinct: 2, Inserted: 0, Existing: 2, ReportEnqueued: false}, res)
		require.Zero(t, b.trace.Count("JobInsertFastMany"), "nothing new, no report")

		require.Equal(t, 4, b.count(ctx, t, `SELECT count(*) FROM car_users WHERE car_id = $1`, car))
		require.Equal(t, []string{fmt.Sprint(car, " available")}, b.reportJobs(ctx, t), "the second report matched the waiting one")
	})

	t.Run("BadInputIsRefusedAndWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{traceService: true})
		car := b.car(ctx, t, "Van")
		users := b.users(ctx, t, 3)
		tooMany := make([]int64, reporting.MaxBulkUserIDs+1)
		for i := range tooMany {
			tooMany[i] = int64(i + 1)
		}
		// 10,001 IDs with one duplicate are 10,000 distinct ones: accepted.
		tenThousandDistinct := append(slices.Clone(tooMany[:reporting.MaxBulkUserIDs]), 1)

		// Refused before any SQL, by both entry points.
		shape := []struct {
			name    string
			carID   int64
			ids     []int64
			want    string
			field   string
			ids20   []int64
			another error
		}{
			{"NoCar", 0, users, "reporting: invalid car_id: must name a car, got 0", "car_id", nil, nil},
			{"NoUsers", car, nil, "reporting: invalid user_ids: is empty: give at least one user ID", "user_ids", nil, nil},
			{"IDsNotAboveZero", car, []int64{users[0], -4, 0, -4}, "reporting: invalid user_ids: IDs not above zero (2): -4, 0", "user_ids", []int64{-4, 0}, nil},
			{"TenThousandAndOne", car, tooMany,
				"reporting: invalid user_ids: 10001 distinct IDs, at most 10000 per job: split the list into several jobs", "user_ids", nil, reporting.ErrTooManyUserIDs},
		}
		for _, tt := range shape {
			for _, path := range []string{"now", "enqueue"} {
				b.trace.Reset()
				var err error
				if path == "now" {
					var res reporting.BulkResult
					res, err = b.svc.CreateCarUsersInBulk(ctx, tt.carID, tt.ids)
					require.Zero(t, res)
				} else {
					err = b.svc.EnqueueCarUsersInBulk(ctx, tt.carID, tt.ids)
				}
				require.EqualError(t, err, tt.want, "%s/%s", tt.name, path)
				require.ErrorIs(t, err, reporting.ErrInvalidInput, tt.name)
				var ve *reporting.ValidationError
				require.ErrorAs(t, err, &ve)
				require.Equal(t, tt.field, ve.Field, tt.name)
				require.Equal(t, tt.ids20, ve.IDs, tt.name)
				if tt.another != nil {
					require.ErrorIs(t, err, tt.another, tt.name)
				}
				require.Empty(t, b.trace.RoundTrips(), "%s/%s: statements sent", tt.name, path)
			}
		}

		// Checked in the transaction, which is rolled back.
		unknown := unknownIDs(25)
		checked := []struct {
			name     string
			carID    int64
			ids      []int64
			want     string
			field    string
			ids20    []int64
			sentinel error
		}{
			{"UnknownCar", 987_654, users, "reporting: invalid car_id: no car has id 987654", "car_id", nil, reporting.ErrUnknownCar},
			{"UnknownCarAndUsers", 987_654, unknown, "reporting: invalid car_id: no car has id 987654", "car_id", nil, reporting.ErrUnknownCar},
			{"OneUnknownUser", car, append([]int64{unknown[0]}, users...), "reporting: invalid user_ids: unknown user IDs (1): 1000001", "user_ids",
				unknown[:1], reporting.ErrUnknownUsers},
			{"TwentyFiveUnknownUsersAreListedUpToTwenty", car, append(append([]int64(nil), unknown...), users...),
				"reporting: invalid user_ids: unknown user IDs (25): 1000001, 1000002, 1000003, 1000004, 1000005, 1000006, 1000007, 1000008, 1000009, 1000010, " +
					"1000011, 1000012, 1000013, 1000014, 1000015, 1000016, 1000017, 1000018, 1000019, 1000020 and 5 more",
				"user_ids", unknown[:20], reporting.ErrUnknownUsers},
			{"TenThousandDistinctOfWhichMostAreUnknown", car, tenThousandDistinct, "", "user_ids", nil, reporting.ErrUnknownUsers},
		}
		for _, tt := range checked {
			res, err := b.svc.CreateCarUsersInBulk(ctx, tt.carID, tt.ids)
			require.Zero(t, res, tt.name)
			if tt.want != "" {
				require.EqualError(t, err, tt.want, tt.name)
			}
			require.ErrorIs(t, err, reporting.ErrInvalidInput, tt.name)
			require.ErrorIs(t, err, tt.sentinel, tt.name)
			var ve *reporting.ValidationError
			require.ErrorAs(t, err, &ve)
			require.Equal(t, tt.field, ve.Field, tt.name)
			if tt.ids20 != nil {
				require.Equal(t, tt.ids20, ve.IDs, tt.name)
			}
		}
		b.requireNothingWritten(ctx, t)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM cars`))
	})

	t.Run("MoreThanTenThousandIDsAreRefusedByEveryEnqueuePath", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{outboxTable: true})
		args := reporting.CreateCarUsersInBulkArgs{CarID: 1, UserIDs: make([]int64, reporting.MaxBulkUserIDs+1)}
		for i := range args.UserIDs {
			args.UserIDs[i] = int64(i + 1) // valid IDs: the relay checks them
		}
		const want = "10001 IDs, at most 10000 per job: split the list into several jobs"

		// In an outbox transaction: the enqueue fails, and the car inserted
		// before it is rolled back with the rest.
		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO cars (name) VALUES ('Bus')`); err != nil {
				return err
			}
			return tx.Enqueue(args, nil)
		})
		require.ErrorIs(t, err, reporting.ErrTooManyUserIDs)
		require.ErrorIs(t, err, reporting.ErrInvalidInput)
		require.ErrorIs(t, err, outbox.ErrInvalidArgs)
		require.ErrorContains(t, err, want)

		// River's own insert.
		_, err = b.client.Insert(ctx, args, nil)
		require.ErrorIs(t, err, reporting.ErrTooManyUserIDs)
		require.ErrorContains(t, err, want)

		// Exactly MaxBulkUserIDs is accepted.
		args.UserIDs = args.UserIDs[:reporting.MaxBulkUserIDs]
		_, err = b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error { return tx.Enqueue(args, nil) })
		require.NoError(t, err)

		b.drain(ctx, t)
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM cars`))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Equal(t, reporting.MaxBulkUserIDs, b.count(ctx, t, `SELECT jsonb_array_length(args->'user_ids') FROM river_job`))
	})

	t.Run("AJobWithUnknownUsersIsCancelledWithNothingWritten", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true, outboxTable: true})
		car := b.car(ctx, t, "Van")
		users := b.users(ctx, t, 5)

		require.NoError(t, b.svc.EnqueueCarUsersInBulk(ctx, car, append(users, 1_000_007, 1_000_003)))
		ev := b.waitJob(t, reporting.CreateCarUsersInBulkKind)
		require.Equal(t, river.EventKindJobCancelled, ev.Kind)
		require.Equal(t, rivertype.JobStateCancelled, ev.Job.State)
		require.Len(t, ev.Job.Errors, 1)
		require.Contains(t, ev.Job.Errors[0].Error, "reporting: invalid user_ids: unknown user IDs (2): 1000003, 1000007")
		require.Equal(t, 1, ev.Job.Attempt, "not retried")

		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM car_users`))
		require.Empty(t, b.reportJobs(ctx, t))
	})

	t.Run("TheJobAddsTheUsersAndTheReportFollows", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true, outboxTable: true})
		car := b.car(ctx, t, "Van")
		users := b.users(ctx, t, 500)

		require.NoError(t, b.svc.EnqueueCarUsersInBulk(ctx, car, append(users, users[:100]...)))
		b.waitDrained(ctx, t)

		var output string
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT metadata->>'output' FROM river_job WHERE kind = $1`,
			reporting.CreateCarUsersInBulkKind).Scan(&output))
		require.JSONEq(t, fmt.Sprintf(`{"car_id": %d, "requested": 500, "distinct": 500, "inserted": 500, "existing": 0, "report_enqueued": true}`, car),
			output, "the service dropped the duplicates before enqueueing")
		b.requireReportsExact(ctx, t)
		r, err := b.svc.CarReport(ctx, car)
		require.NoError(t, err)
		require.True(t, r.Computed)
		require.Equal(t, int64(500), r.UsersCount)
	})
}

func TestAddCarUser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ABurstOfAHundredLeavesOneWaitingReport", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		car, other := b.car(ctx, t, "Van"), b.car(ctx, t, "Bus")
		users := b.users(ctx, t, 100)

		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			errs  []error
			added int
		)
		for g := range 8 {
			wg.Go(func() {
				for i := g; i < len(users); i += 8 {
					ok, err := b.svc.AddCarUser(ctx, car, users[i])
					mu.Lock()
					errs = append(errs, err)
					if ok {
						added++
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		require.Equal(t, 100, added)
		for _, u := range users[:3] {
			ok, err := b.svc.AddCarUser(ctx, other, u)
			require.NoError(t, err)
			require.True(t, ok)
		}

		require.Equal(t, 100, b.count(ctx, t, `SELECT count(*) FROM car_users WHERE car_id = $1`, car))
		require.Equal(t, []string{fmt.Sprint(car, " available"), fmt.Sprint(other, " available")}, b.reportJobs(ctx, t))
	})

	t.Run("AnExistingPairAddsNoJob", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{traceService: true})
		car := b.car(ctx, t, "Van")
		user := b.users(ctx, t, 1)[0]

		ok, err := b.svc.AddCarUser(ctx, car, user)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, 1, b.trace.Count("JobInsertFastMany"))
		require.Len(t, b.roundTrips(), 3, "BEGIN; the pair; report job and COMMIT")

		b.trace.Reset()
		ok, err = b.svc.AddCarUser(ctx, car, user)
		require.NoError(t, err)
		require.False(t, ok)
		require.Zero(t, b.trace.Count("JobInsertFastMany"))
		require.Equal(t, []string{fmt.Sprint(car, " available")}, b.reportJobs(ctx, t))
	})

	t.Run("UnknownCarOrUserWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		car := b.car(ctx, t, "Van")
		user := b.users(ctx, t, 1)[0]

		tests := []struct {
			name          string
			carID, userID int64
			want          string
			sentinel      error
		}{
			{"UnknownCar", 987_654, user, "reporting: invalid car_id: no car has id 987654", reporting.ErrUnknownCar},
			{"UnknownUser", car, 1_000_001, "reporting: invalid user_id: unknown user IDs (1): 1000001", reporting.ErrUnknownUsers},
			{"NoCar", 0, user, "reporting: invalid car_id: must name a car, got 0", nil},
			{"NoUser", car, -1, "reporting: invalid user_id: must name a user, got -1", nil},
		}
		for _, tt := range tests {
			ok, err := b.svc.AddCarUser(ctx, tt.carID, tt.userID)
			require.False(t, ok, tt.name)
			require.EqualError(t, err, tt.want, tt.name)
			require.ErrorIs(t, err, reporting.ErrInvalidInput, tt.name)
			if tt.sentinel != nil {
				require.ErrorIs(t, err, tt.sentinel, tt.name)
			}
		}
		b.requireNothingWritten(ctx, t)
	})
}

func TestCreateCar(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t, nil)

	id, err := b.svc.CreateCar(ctx, "  Minibus ")
	require.NoError(t, err)
	require.Equal(t, []string{"Minibus"}, b.strings(ctx, t, `SELECT name FROM cars WHERE id = $1`, id))
	r, err := b.svc.CarReport(ctx, id)
	require.NoError(t, err)
	require.Equal(t, reporting.CarReport{CarID: id}, r, "no report before the first user")

	for _, tt := range []struct{ name, want string }{
		{" ", "reporting: invalid name: is required"},
		{strings.Repeat("é", 201), "reporting: invalid name: must be at most 200 characters"},
		{"a\x00b", "reporting: invalid name: must be text (UTF-8 without NUL characters)"},
	} {
		_, err := b.svc.CreateCar(ctx, tt.name)
		require.EqualError(t, err, tt.want)
		require.ErrorIs(t, err, reporting.ErrInvalidInput)
	}
	_, err = b.svc.CarReport(ctx, 987_654)
	require.ErrorIs(t, err, reporting.ErrUnknownCar)
	require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM cars`))
}
