package reporting_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/testtrace"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox/relay"
	"github.com/aftercommit/aftercommit/reporting"
)

// benchInsertCarUserSQL is the naive path's insert: one pair.
const benchInsertCarUserSQL = `INSERT INTO car_users (car_id, user_id) VALUES ($1, $2)`

// BenchmarkCarUsersInBulk: one op gives a new car every one of N existing
// users and leaves its report job waiting, at one client.
//
//   - "naive" (the baseline) is what an after_commit callback does: per
//     user, a transaction that inserts the pair, then, after its COMMIT, a
//     CarReport enqueue of its own (River's Insert; the kind's queue lock
//     keeps one row, but every enqueue is an insert statement and a round
//     trip).
//   - "add_car_user_loop" calls Service.AddCarUser per user: the pair and
//     the report job in one outbox transaction, one commit per user.
//   - "bulk" is Service.CreateCarUsersInBulk, the body of the bulk job: the
//     two checks and the insert of every pair in one round trip, the report
//     job with the COMMIT.
//   - "bulk_job" is the job itself, end to end: Service.EnqueueCarUsersInBulk
//     on the outbox table (the job is in its car's fair share, which
//     DirectInsert refuses), a relay, and a River client (working the bulk
//     queue only) that fetches and completes it; ns/op includes the relay's
//     and River's pick-up latency.
//
// Reported besides ns/op: round_trips/op (every round trip of the op's
// statements, the job's included), report_inserts/op (statements that
// insert CarReport jobs) and report_jobs/op (CarReport rows left). Nothing
// works the reports queue, so no report competes for the CPU.
//
//	for i in 1 2 3; do go test -run '^$' -bench 'BenchmarkCarUsersInBulk/^users=10000$/' -benchtime 3x -count 1 ./reporting; done | go run ./internal/benchratio
//
// users=100 is the quick check of the same code:
//
//	go test -run '^$' -bench 'BenchmarkCarUsersInBulk/^users=100$/' -benchtime 20x -count 1 ./reporting
func BenchmarkCarUsersInBulk(b *testing.B) {
	for _, n := range []int{100, 10_000} {
		b.Run(fmt.Sprintf("users=%d", n), func(b *testing.B) {
			benchCarUsers(b, n)
		})
	}
}

func benchCarUsers(b *testing.B, n int) {
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, b, &dbtest.Opts{MaxConns: 4})
	// The op's statements go through traced pools: the service's (and the
	// naive path's), and the bulk job worker's.
	var svcTrace, workerTrace testtrace.Tracer
	tracedPool := func(tr *testtrace.Tracer) *pgxpool.Pool {
		cfg, err := pgxpool.ParseConfig(s.URL)
		if err != nil {
			b.Fatal(err)
		}
		cfg.MaxConns = 2
		cfg.ConnConfig.Tracer = tr
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(pool.Close)
		return pool
	}
	svcPool, workerPool := tracedPool(&svcTrace), tracedPool(&workerTrace)

	reg := jobs.NewRegistry()
	reg.AddTopic(donationsDomain, reporting.TopicDonationCreated)
	reporting.Register(reg, workerPool)
	logger := slog.New(slog.DiscardHandler)
	inserter, err := jobs.NewClient(svcPool, reg, &jobs.ClientConfig{Queues: []string{}, Schema: s.Name, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	ob, err := jobs.NewOutbox(svcPool, inserter, reg, directInsert)
	if err != nil {
		b.Fatal(err)
	}
	svc := reporting.NewService(svcPool, ob)

	var users []int64
	rows, err := s.Pool.Query(ctx, `
		INSERT INTO users (name, email) SELECT 'User ' || i, 'user' || i || '@example.com' FROM generate_series(1, $1) AS i
		RETURNING id`, n)
	if err == nil {
		users, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	}
	if err != nil {
		b.Fatal(err)
	}
	newCar := func() int64 {
		var id int64
		if err := s.Pool.QueryRow(ctx, `INSERT INTO cars (name) VALUES ('Bench') RETURNING id`).Scan(&id); err != nil {
			b.Fatal(err)
		}
		return id
	}

	// run measures op over fresh cars and reports its round trips and
	// report jobs.
	run := func(name string, op func(car int64)) {
		b.Run(name, func(b *testing.B) {
			if _, err := s.Pool.Exec(ctx, `TRUNCATE car_users, car_reports, cars, river_job, outbox_jobs`); err != nil {
				b.Fatal(err)
			}
			svcTrace.Reset()
			workerTrace.Reset()
			for b.Loop() {
				op(newCar())
			}
			b.StopTimer()
			waitMoved(ctx, b, s.Pool)
			var pairs, cars, reportJobs int
			if err := s.Pool.QueryRow(ctx, `
				SELECT (SELECT count(*) FROM car_users), (SELECT count(*) FROM cars),
				       (SELECT count(*) FROM river_job WHERE kind = $1)`, reporting.CarReportKind).Scan(&pairs, &cars, &reportJobs); err != nil {
				b.Fatal(err)
			}
			if pairs != cars*n || reportJobs != cars {
				b.Fatalf("%d cars have %d pairs and %d report jobs, want %d and %d", cars, pairs, reportJobs, cars*n, cars)
			}
			// The bulk job's own insert is on the service's side; the
			// worker inserts nothing but the report, into the outbox table.
			reportInserts := workerTrace.Count("JobInsertFastMany") + workerTrace.Count("INSERT INTO outbox_jobs")
			if name != "bulk_job" {
				reportInserts += svcTrace.Count("JobInsertFastMany")
			}
			trips := 0
			for _, tr := range []*testtrace.Tracer{&svcTrace, &workerTrace} {
				for _, trip := range tr.RoundTrips() {
					if len(trip) != 1 || !testtrace.Matches(trip[0], "PGGetProductAndVersion") {
						trips++
					}
				}
			}
			b.ReportMetric(float64(trips)/float64(cars), "round_trips/op")
			b.ReportMetric(float64(reportInserts)/float64(cars), "report_inserts/op")
			b.ReportMetric(float64(reportJobs)/float64(cars), "report_jobs/op")
		})
	}

	run("naive", func(car int64) {
		for _, u := range users {
			err := pgx.BeginFunc(ctx, svcPool, func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, benchInsertCarUserSQL, car, u)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			// after_commit: enqueue the report.
			if _, err := inserter.Insert(ctx, reporting.CarReportArgs{CarID: car}, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	run("add_car_user_loop", func(car int64) {
		for _, u := range users {
			if _, err := svc.AddCarUser(ctx, car, u); err != nil {
				b.Fatal(err)
			}
		}
	})
	run("bulk", func(car int64) {
		res, err := svc.CreateCarUsersInBulk(ctx, car, users)
		if err != nil {
			b.Fatal(err)
		}
		if res.Inserted != n || !res.ReportEnqueued {
			b.Fatalf("bulk result %+v", res)
		}
	})

	worker, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{reporting.QueueBulk},
		Schema: s.Name,
		Logger: logger,
		River:  &river.Config{FetchCooldown: time.Millisecond, FetchPollInterval: 20 * time.Millisecond},
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := worker.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := worker.Stop(context.WithoutCancel(ctx)); err != nil {
			b.Error(err)
		}
	}()
	// The relay moves the bulk jobs and the report jobs the workers write
	// to the outbox table; it stops before the worker.
	rl, err := jobs.NewRelay(s.Pool, worker, reg, &relay.Config{Schema: s.Name, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	if err := rl.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := rl.Stop(context.WithoutCancel(ctx)); err != nil {
			b.Error(err)
		}
	}()
	obTable, err := jobs.NewOutbox(svcPool, inserter, reg, nil)
	if err != nil {
		b.Fatal(err)
	}
	queued := reporting.NewService(svcPool, obTable)
	run("bulk_job", func(car int64) {
		if err := queued.EnqueueCarUsersInBulk(ctx, car, users); err != nil {
			b.Fatal(err)
		}
		// Wait for the job's commit: poll its state (River's event stream
		// would add its own batching delay to the measure).
		deadline := time.Now().Add(time.Minute)
		for {
			var state string
			err := s.Pool.QueryRow(ctx, `SELECT state FROM river_job WHERE kind = $1 AND (args->>'car_id')::bigint = $2`,
				reporting.CreateCarUsersInBulkKind, car).Scan(&state)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) { // no row: the relay has not moved it yet
				b.Fatal(err)
			}
			if state == "completed" {
				return
			}
			if state == "cancelled" || state == "discarded" || time.Now().After(deadline) {
				b.Fatalf("bulk job of car %d: %s", car, state)
			}
			time.Sleep(time.Millisecond)
		}
	})
}

// waitMoved waits until the outbox table is empty: every report job the
// op's transactions wrote there has been moved (and coalesced) into
// river_job. Without a relay running it returns at once only when nothing
// went to the outbox table.
func waitMoved(ctx context.Context, b *testing.B, pool *pgxpool.Pool) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var left int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox_jobs`).Scan(&left); err != nil {
			b.Fatal(err)
		}
		if left == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d outbox rows not moved after a minute", left)
		}
		time.Sleep(time.Millisecond)
	}
}
