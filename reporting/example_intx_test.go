package reporting_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"

	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/reporting"
)

// The …Tx forms compose in one transaction of the outbox: a new car and its
// first users commit together, and the car's report job goes out with the
// COMMIT.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_CreateCarTx() {
	ctx := context.Background()
	r, release := newExReporting(ctx, 2)
	defer release()

	var car int64
	res, err := r.Outbox.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		var err error
		if car, err = r.svc.CreateCarTx(ctx, tx, "Minibus"); err != nil {
			return err
		}
		bulk, err := r.svc.CreateCarUsersInBulkTx(ctx, tx, car, []int64{1, 2})
		fmt.Println("users added:", bulk.Inserted)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("jobs written with the commit:", res.Inserted)

	r.Drain(ctx)
	r.Start(ctx)
	ev := r.WaitFor(reporting.CarReportKind)
	fmt.Println("report:", string(ev.Job.Output()))
	// Output:
	// users added: 2
	// jobs written with the commit: 1
	// report: {"result": "reported", "users_count": 2}
}

// EnqueueCarUsersInBulkTx enqueues a bulk job in the caller's transaction:
// here the car it needs commits with it, so the job never meets a car that
// does not exist.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_EnqueueCarUsersInBulkTx() {
	ctx := context.Background()
	r, release := newExReporting(ctx, 3)
	defer release()

	_, err := r.Outbox.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		car, err := r.svc.CreateCarTx(ctx, tx, "Minibus")
		if err != nil {
			return err
		}
		return r.svc.EnqueueCarUsersInBulkTx(ctx, tx, car, []int64{1, 2, 3})
	})
	if err != nil {
		log.Fatal(err)
	}

	r.Start(ctx)
	r.Drain(ctx)
	ev := r.WaitFor(reporting.CreateCarUsersInBulkKind)
	var res reporting.BulkResult
	if err := json.Unmarshal(ev.Job.Output(), &res); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%+v\n", res)
	// Output:
	// {CarID:1 Requested:3 Distinct:3 Inserted:3 Existing:0 ReportEnqueued:true}
}
