package donations_test

import (
	"context"
	"fmt"
	"log"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/outbox"
)

// The Track…Tx forms record events in the caller's transaction; inside one
// transaction of the outbox the fold jobs of one email are written once.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_TrackOpenTx() {
	ctx := context.Background()
	d, release := newExDonations(ctx)
	defer release()
	_, emailID := d.fundraiserWithEmail(ctx)

	res, err := d.Outbox.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		if err := d.svc.TrackOpenTx(ctx, tx, emailID); err != nil {
			return err
		}
		if err := d.svc.TrackClickTx(ctx, tx, emailID); err != nil {
			return err
		}
		return d.svc.TrackBatchTx(ctx, tx, []int64{emailID}, []int64{emailID})
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("enqueued:", res.Enqueued, "written:", res.Inserted)

	d.Drain(ctx)
	d.Start(ctx)
	ev := d.WaitFor(donations.FoldEmailCountersKind)
	fmt.Println("fold:", string(ev.Job.Output()))
	// Output:
	// enqueued: 3 written: 1
	// fold: {"opens": 2, "clicks": 2, "deltas": 3}
}
