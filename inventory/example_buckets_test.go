package inventory_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/aftercommit/aftercommit/inventory"
)

// A hot product's stock is split over buckets, so that its buyers do not
// all wait for one row's lock; the switch needs the product to hold no
// claim.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_SetStrategy() {
	ctx := context.Background()
	inv, release := newExInventory(ctx, 10)
	defer release()

	if err := inv.svc.SetStrategy(ctx, "tee", inventory.StrategyBuckets, 3); err != nil {
		log.Fatal(err)
	}
	buckets, err := inv.svc.Buckets(ctx, "tee")
	if err != nil {
		log.Fatal(err)
	}
	for _, b := range buckets {
		fmt.Printf("bucket %d: stock %d\n", b.Index, b.Stock)
	}

	c, err := inv.svc.BeginCheckout(ctx, "tee", 2)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("checkout:", c.ID, c.Quantity, c.State)
	err = inv.svc.SetStrategy(ctx, "tee", inventory.StrategySingleRow, 0)
	fmt.Println(errors.Is(err, inventory.ErrClaimsOpen), err)
	// Output:
	// bucket 0: stock 4
	// bucket 1: stock 3
	// bucket 2: stock 3
	// checkout: 1 2 open
	// true inventory: cannot change the claim strategy of tee: 1 claims are open; try again when they are released
}

// Rebalance spreads the unclaimed units evenly over the buckets again,
// whichever buckets the claims took.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_Rebalance() {
	ctx := context.Background()
	inv, release := newExInventory(ctx, 10)
	defer release()
	if err := inv.svc.SetStrategy(ctx, "tee", inventory.StrategyBuckets, 2); err != nil {
		log.Fatal(err)
	}
	if _, err := inv.svc.BeginCheckout(ctx, "tee", 4); err != nil {
		log.Fatal(err)
	}

	buckets, err := inv.svc.Rebalance(ctx, "tee")
	if err != nil {
		log.Fatal(err)
	}
	for _, b := range buckets {
		fmt.Printf("bucket %d: %d available\n", b.Index, b.Available())
	}
	// Output:
	// bucket 0: 3 available
	// bucket 1: 3 available
}
