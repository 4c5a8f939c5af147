package reporting_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox/relay"
	"github.com/aftercommit/aftercommit/reporting"
)

// A bulk job gives a car many users at once and enqueues the car's report
// in the same commit; the report job then recounts the car's users.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_EnqueueCarUsersInBulk() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, &dbtest.Opts{MaxConns: 8})
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	// In the application the donations domain declares the topic whose
	// events feed reporting's rollups; this example has no donations.
	reg.AddTopic("donations", reporting.TopicDonationCreated)
	reporting.Register(reg, s.Pool)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues},
		Schema: s.Name,
		Logger: slog.New(slog.DiscardHandler),
		River:  &river.Config{FetchCooldown: 10 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
	})
	if err != nil {
		log.Fatal(err)
	}
	completed, cancel := client.Subscribe(river.EventKindJobCompleted)
	defer cancel()
	if err := client.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = client.Stop(ctx) }()
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	// The relay moves committed outbox rows into River's job table.
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	if err := rl.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = rl.Stop(ctx) }()
	svc := reporting.NewService(s.Pool, ob)

	car, err := svc.CreateCar(ctx, "Minibus")
	if err != nil {
		log.Fatal(err)
	}
	rows, err := s.Pool.Query(ctx, `
		INSERT INTO users (name, email) SELECT 'Driver ' || i, 'driver' || i || '@example.com' FROM generate_series(1, 3) AS i
		RETURNING id`)
	if err != nil {
		log.Fatal(err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		log.Fatal(err)
	}

	// Five IDs, two of them twice: the service drops the duplicates.
	if err := svc.EnqueueCarUsersInBulk(ctx, car, append(users, users[0], users[2])); err != nil {
		log.Fatal(err)
	}
	for ev := range completed {
		switch ev.Job.Kind {
		case reporting.CreateCarUsersInBulkKind:
			var res reporting.BulkResult
			if err := json.Unmarshal(ev.Job.Output(), &res); err != nil {
				log.Fatal(err)
			}
			fmt.Printf("bulk job: %d users added, report enqueued: %t\n", res.Inserted, res.ReportEnqueued)
		case reporting.CarReportKind:
			fmt.Println("report job:", string(ev.Job.Output()))
		}
		if ev.Job.Kind == reporting.CarReportKind {
			break
		}
	}
	r, err := svc.CarReport(ctx, car)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("users:", r.UsersCount)

	// More than MaxBulkUserIDs IDs are refused at once, before any SQL.
	tooMany := make([]int64, reporting.MaxBulkUserIDs+1)
	for i := range tooMany {
		tooMany[i] = int64(i + 1)
	}
	err = svc.EnqueueCarUsersInBulk(ctx, car, tooMany)
	fmt.Println(err)

	// Output:
	// bulk job: 3 users added, report enqueued: true
	// report job: {"result": "reported", "users_count": 3}
	// users: 3
	// reporting: invalid user_ids: 10001 distinct IDs, at most 10000 per job: split the list into several jobs
}
