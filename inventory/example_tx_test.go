package inventory_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/jackc/pgx/v5"

	"github.com/aftercommit/aftercommit/inventory"
)

// PaymentAuthorizedTx marks a checkout paid in the caller's transaction:
// the caller's own rows (its order, say) and the completion job commit
// together, or not at all.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_PaymentAuthorizedTx() {
	ctx := context.Background()
	inv, release := newExInventory(ctx, 5)
	defer release()
	inv.Start(ctx)
	c, err := inv.svc.BeginCheckout(ctx, "tee", 2)
	if err != nil {
		log.Fatal(err)
	}
	errOrderFailed := errors.New("order failed")

	err = pgx.BeginFunc(ctx, inv.Schema.Pool, func(tx pgx.Tx) error {
		if _, err := inv.svc.PaymentAuthorizedTx(ctx, tx, c.ID); err != nil {
			return err
		}
		return errOrderFailed
	})
	fmt.Println("rolled back:", err)
	var state inventory.State
	if err := inv.Schema.Pool.QueryRow(ctx, `SELECT state FROM checkouts WHERE id = $1`, c.ID).Scan(&state); err != nil {
		log.Fatal(err)
	}
	fmt.Println("checkout:", c.ID, state)

	err = pgx.BeginFunc(ctx, inv.Schema.Pool, func(tx pgx.Tx) error {
		paid, err := inv.svc.PaymentAuthorizedTx(ctx, tx, c.ID)
		fmt.Println("checkout:", paid.ID, paid.State)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	inv.Drain(ctx)
	ev := inv.WaitFor(inventory.CompleteCheckoutKind)
	fmt.Println("completion:", string(ev.Job.Output()))
	// Output:
	// rolled back: order failed
	// checkout: 1 open
	// checkout: 1 paid
	// completion: {"state": "completed", "stock": 3, "result": "completed"}
}
