package donations_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/aftercommit/aftercommit/donations"
)

// TrackOpens and TrackClicks record a buffer of events of one kind in one
// transaction: one fold job per distinct email.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_TrackOpens() {
	ctx := context.Background()
	d, release := newExDonations(ctx)
	defer release()
	_, emailID := d.fundraiserWithEmail(ctx)

	if err := d.svc.TrackOpens(ctx, []int64{emailID, emailID, emailID}); err != nil {
		log.Fatal(err)
	}
	if err := d.svc.TrackClicks(ctx, []int64{emailID}); err != nil {
		log.Fatal(err)
	}
	err := d.svc.TrackClicks(ctx, []int64{emailID, emailID + 1})
	fmt.Println("unknown email:", errors.Is(err, donations.ErrUnknownEmail))

	moved := d.Drain(ctx)
	fmt.Println("outbox rows:", moved.Rows, "fold jobs:", moved.Inserted)
	d.Start(ctx)
	ev := d.WaitFor(donations.FoldEmailCountersKind)
	fmt.Println("fold:", string(ev.Job.Output()))
	// Output:
	// unknown email: true
	// outbox rows: 2 fold jobs: 1
	// fold: {"opens": 3, "clicks": 1, "deltas": 2}
}

// RecountUser repairs a user's donations_count from their succeeded
// donations, here written by hand without their events (their deltas
// wait, with no fold job): no drift, the recount folds them.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_RecountUser() {
	ctx := context.Background()
	d, release := newExDonations(ctx)
	defer release()
	fundraiserID, _ := d.fundraiserWithEmail(ctx)
	_, err := d.Schema.Pool.Exec(ctx, `
		INSERT INTO donations (user_id, fundraiser_id, donor_email, amount_cents, currency, status) VALUES
		  (1, $1, 'ada@example.com', 2500, 'EUR', 'succeeded'),
		  (1, $1, 'ada@example.com', 9900, 'EUR', 'failed')`, fundraiserID)
	if err != nil {
		log.Fatal(err)
	}
	d.Start(ctx)

	if err := d.svc.RecountUser(ctx, 1); err != nil {
		log.Fatal(err)
	}
	d.Drain(ctx)
	ev := d.WaitFor(donations.RecountUserKind)
	fmt.Println("recount:", string(ev.Job.Output()))

	err = d.svc.RecountUser(ctx, 2)
	fmt.Println("unknown user:", errors.Is(err, donations.ErrUnknownUser))
	// Output:
	// recount: {"result": "recounted", "drift_count": 0, "donations_count": 1}
	// unknown user: true
}

// Currencies lists the ISO 4217 codes Donate accepts, for a form's menu.
func ExampleCurrencies() {
	fmt.Println(donations.Currencies())
	// Output:
	// [AUD BRL CAD CHF CZK DKK EUR GBP HKD HUF ILS INR JPY MXN NOK NZD PLN SEK SGD USD ZAR]
}
