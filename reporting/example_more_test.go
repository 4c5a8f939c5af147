package reporting_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/exampleapp"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/reporting"
)

// exReporting is the reporting domain wired as cmd/worker and the
// application wire it, in one process, for the examples.
type exReporting struct {
	*exampleapp.App
	svc *reporting.Service
}

// newExReporting wires the domain on a schema of its own, with users
// "Driver 1" … "Driver <users>" (IDs 1 to users). Its client is not
// started: call start. release ends everything.
func newExReporting(ctx context.Context, users int) (*exReporting, func()) {
	app, release := exampleapp.New(ctx, func(reg *jobs.Registry, pool *pgxpool.Pool) {
		// In the application the donations domain declares this topic.
		reg.AddTopic("donations", reporting.TopicDonationCreated)
		reporting.Register(reg, pool)
	})
	_, err := app.Pool().Exec(ctx, `INSERT INTO users (name, email) SELECT 'Driver ' || i, 'driver' || i || '@example.com' FROM generate_series(1, $1::int) AS i`, users)
	if err != nil {
		log.Fatal(err)
	}
	return &exReporting{App: app, svc: reporting.NewService(app.Pool(), app.Outbox)}, release
}

// The service is built on an outbox from a registry Register filled; the
// donations domain declares, on the same registry, the topic whose events
// feed the daily totals.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleNewService() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, &dbtest.Opts{MaxConns: 8})
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	reg.AddTopic("donations", reporting.TopicDonationCreated) // donations.Register does this
	reporting.Register(reg, s.Pool)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Schema: s.Name, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	svc := reporting.NewService(s.Pool, ob)

	car, err := svc.CreateCar(ctx, "Minibus")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("car:", car)
	for _, q := range reg.Queues() {
		fmt.Println("queue:", q.Name)
	}
	// Output:
	// car: 1
	// queue: reporting_bulk
	// queue: reporting_reports
}

// CreateCar creates a car; its report appears with its first user.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_CreateCar() {
	ctx := context.Background()
	r, release := newExReporting(ctx, 0)
	defer release()

	car, err := r.svc.CreateCar(ctx, "Minibus")
	if err != nil {
		log.Fatal(err)
	}
	report, err := r.svc.CarReport(ctx, car)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("car:", car, "report computed:", report.Computed)

	_, err = r.svc.CreateCar(ctx, "")
	fmt.Println(errors.Is(err, reporting.ErrInvalidInput), err)
	// Output:
	// car: 1 report computed: false
	// true reporting: invalid name: is required
}

// AddCarUser adds a user to a car and enqueues the car's report in one
// transaction. The report is queue-locked per car: additions made while one
// report waits add no job, and the one report counts them all.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_AddCarUser() {
	ctx := context.Background()
	r, release := newExReporting(ctx, 2)
	defer release()
	car, err := r.svc.CreateCar(ctx, "Minibus")
	if err != nil {
		log.Fatal(err)
	}

	for _, user := range []int64{1, 1, 2} {
		added, err := r.svc.AddCarUser(ctx, car, user)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("user", user, "added:", added)
	}
	_, err = r.svc.AddCarUser(ctx, car, 9)
	fmt.Println(errors.Is(err, reporting.ErrUnknownUsers), err)

	moved := r.Drain(ctx)
	fmt.Println("outbox rows:", moved.Rows, "report jobs:", moved.Inserted)
	r.Start(ctx)
	ev := r.WaitFor(reporting.CarReportKind)
	fmt.Println("report:", string(ev.Job.Output()))
	// Output:
	// user 1 added: true
	// user 1 added: false
	// user 2 added: true
	// true reporting: invalid user_id: unknown user IDs (1): 9
	// outbox rows: 2 report jobs: 1
	// report: {"result": "reported", "users_count": 2}
}

// CreateCarUsersInBulk adds many users at once, in one transaction with the
// car's report job, and says what it did; unknown users are listed and
// nothing is written.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_CreateCarUsersInBulk() {
	ctx := context.Background()
	r, release := newExReporting(ctx, 5)
	defer release()
	car, err := r.svc.CreateCar(ctx, "Minibus")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := r.svc.AddCarUser(ctx, car, 1); err != nil {
		log.Fatal(err)
	}

	res, err := r.svc.CreateCarUsersInBulk(ctx, car, []int64{1, 2, 3, 3, 4})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%+v\n", res)

	_, err = r.svc.CreateCarUsersInBulk(ctx, car, []int64{5, 6, 7})
	var invalid *reporting.ValidationError
	if errors.As(err, &invalid) {
		fmt.Println(errors.Is(err, reporting.ErrUnknownUsers), invalid.IDs)
	}

	r.Drain(ctx)
	r.Start(ctx)
	ev := r.WaitFor(reporting.CarReportKind)
	fmt.Println("report:", string(ev.Job.Output()))
	// Output:
	// {CarID:1 Requested:5 Distinct:4 Inserted:3 Existing:1 ReportEnqueued:true}
	// true [6 7]
	// report: {"result": "reported", "users_count": 4}
}

// CarReport reads a car's report as the last report job computed it.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_CarReport() {
	ctx := context.Background()
	r, release := newExReporting(ctx, 3)
	defer release()
	car, err := r.svc.CreateCar(ctx, "Minibus")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := r.svc.CreateCarUsersInBulk(ctx, car, []int64{1, 2, 3}); err != nil {
		log.Fatal(err)
	}

	report, err := r.svc.CarReport(ctx, car)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("before the job: computed", report.Computed, "users", report.UsersCount)

	r.Drain(ctx)
	r.Start(ctx)
	r.WaitFor(reporting.CarReportKind)
	report, err = r.svc.CarReport(ctx, car)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("after the job: computed", report.Computed, "users", report.UsersCount, "last added known:", !report.LastUserAddedAt.IsZero())

	_, err = r.svc.CarReport(ctx, car+1)
	fmt.Println(errors.Is(err, reporting.ErrUnknownCar), err)
	// Output:
	// before the job: computed false users 0
	// after the job: computed true users 3 last added known: true
	// true reporting: invalid car_id: no car has id 2
}

// AddCarUserTx adds a user in the caller's transaction, beside the caller's
// own rows: the pair and the report job commit, or roll back, with them.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_AddCarUserTx() {
	ctx := context.Background()
	r, release := newExReporting(ctx, 1)
	defer release()
	car, err := r.svc.CreateCar(ctx, "Minibus")
	if err != nil {
		log.Fatal(err)
	}
	errAssignmentFailed := errors.New("assignment failed")

	// The caller's transaction fails after the addition: nothing remains.
	err = pgx.BeginFunc(ctx, r.Schema.Pool, func(tx pgx.Tx) error {
		if _, err := r.svc.AddCarUserTx(ctx, tx, car, 1); err != nil {
			return err
		}
		return errAssignmentFailed
	})
	fmt.Println("rolled back:", err)
	r.count(ctx)

	// It commits: the pair and the car's report job are there.
	err = pgx.BeginFunc(ctx, r.Schema.Pool, func(tx pgx.Tx) error {
		added, err := r.svc.AddCarUserTx(ctx, tx, car, 1)
		fmt.Println("added:", added)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	r.count(ctx)
	// Output:
	// rolled back: assignment failed
	// car users: 0 report jobs: 0
	// added: true
	// car users: 1 report jobs: 1
}

// count prints the car_users rows and the outbox's jobs.
func (r *exReporting) count(ctx context.Context) {
	var pairs, jobRows int
	err := r.Schema.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM car_users), (SELECT count(*) FROM outbox_jobs WHERE kind = $1)`, reporting.CarReportKind).
		Scan(&pairs, &jobRows)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("car users:", pairs, "report jobs:", jobRows)
}
