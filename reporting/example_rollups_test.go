package reporting_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aftercommit/aftercommit/reporting"
)

// RecountCar repairs a car's report, here after its users were added by
// hand, without the report job the service enqueues.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_RecountCar() {
	ctx := context.Background()
	r, release := newExReporting(ctx, 3)
	defer release()
	car, err := r.svc.CreateCar(ctx, "Minibus")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := r.Schema.Pool.Exec(ctx, `INSERT INTO car_users (car_id, user_id) SELECT $1, id FROM users`, car); err != nil {
		log.Fatal(err)
	}
	r.Start(ctx)

	if err := r.svc.RecountCar(ctx, car); err != nil {
		log.Fatal(err)
	}
	r.Drain(ctx)
	ev := r.WaitFor(reporting.CarReportKind)
	fmt.Println("report:", string(ev.Job.Output()))

	err = r.svc.RecountCar(ctx, car+1)
	fmt.Println(errors.Is(err, reporting.ErrUnknownCar), err)
	// Output:
	// report: {"result": "reported", "users_count": 3}
	// true reporting: invalid car_id: no car has id 2
}

// Backfill recomputes the daily donation totals of a range of days from
// the donations, here written by hand without their donation.created
// events. Only succeeded donations count.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_Backfill() {
	ctx := context.Background()
	r, release := newExReporting(ctx, 1)
	defer release()
	_, err := r.Schema.Pool.Exec(ctx, `
		WITH f AS (INSERT INTO fundraisers (name) VALUES ('Engines') RETURNING id)
		INSERT INTO donations (user_id, fundraiser_id, donor_email, amount_cents, currency, status, created_at)
		SELECT 1, f.id, 'driver1@example.com', d.amount, 'EUR', d.status, d.at::timestamptz FROM f, (VALUES
		  (2500, 'succeeded', '2026-03-01 09:00Z'),
		  (1000, 'succeeded', '2026-03-01 18:00Z'),
		  (9900, 'failed',    '2026-03-01 19:00Z'),
		  (4000, 'succeeded', '2026-03-03 12:00Z')) AS d (amount, status, at)`)
	if err != nil {
		log.Fatal(err)
	}

	first := time.Date(2026, time.March, 1, 0, 0, 0, 0, time.UTC)
	last := time.Date(2026, time.March, 3, 0, 0, 0, 0, time.UTC)
	out, err := r.svc.Backfill(ctx, first, last)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%+v\n", out)

	rows, err := r.Schema.Pool.Query(ctx, `SELECT day::text, donations_count, total_cents FROM fundraiser_daily_totals ORDER BY day`)
	if err != nil {
		log.Fatal(err)
	}
	var day string
	var count, total int64
	_, err = pgx.ForEachRow(rows, []any{&day, &count, &total}, func() error {
		fmt.Println(day, count, total)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// {Written:2 Emptied:0 Donations:3}
	// 2026-03-01 2 3500
	// 2026-03-03 1 4000
}
