package inventory_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/exampleapp"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
)

// exInventory is the inventory domain wired as cmd/worker and the
// application wire it, in one process, for the examples.
type exInventory struct {
	*exampleapp.App
	svc *inventory.Service
}

// newExInventory wires the domain on a schema of its own, with a product
// "tee" of stock units. Its client is not started: call start. release
// ends everything.
func newExInventory(ctx context.Context, stock int) (*exInventory, func()) {
	app, release := exampleapp.New(ctx, func(reg *jobs.Registry, pool *pgxpool.Pool) { inventory.Register(reg, pool, nil) })
	svc, err := inventory.NewService(app.Pool(), app.Outbox, nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := app.Pool().Exec(ctx, `INSERT INTO products (sku, stock) VALUES ('tee', $1)`, stock); err != nil {
		log.Fatal(err)
	}
	return &exInventory{App: app, svc: svc}, release
}

// stock prints the product's stock and the units its claims hold.
func (inv *exInventory) stock(ctx context.Context) {
	var stock, claimed int
	err := inv.Schema.Pool.QueryRow(ctx, `
		SELECT p.stock, coalesce((SELECT sum(quantity) FROM inventory_claims c WHERE c.product_id = p.id), 0)
		  FROM products p WHERE sku = 'tee'`).Scan(&stock, &claimed)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("stock:", stock, "claimed:", claimed)
}

// jobStates prints the domain's jobs in River's job table.
func (inv *exInventory) jobStates(ctx context.Context) {
	rows, err := inv.Schema.Pool.Query(ctx, `SELECT kind, state FROM river_job ORDER BY id`)
	if err != nil {
		log.Fatal(err)
	}
	var kind, state string
	_, err = pgx.ForEachRow(rows, []any{&kind, &state}, func() error {
		fmt.Println("job:", kind, state)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}

// Register declares the domain's queues, workers and periodic pruner on
// the registry every worker process builds its client from.
func ExampleRegister() {
	reg := jobs.NewRegistry()
	inventory.Register(reg, nil, nil) // a pool for the workers in a real process
	if err := reg.Err(); err != nil {
		log.Fatal(err)
	}
	for _, q := range reg.Queues() {
		fmt.Printf("%s: priority %d, %d workers\n", q.Name, q.Priority, q.MaxWorkers)
	}
	for _, kind := range reg.Kinds() {
		queue, _, _ := reg.KindDefaults(kind)
		fmt.Println(kind, "on", queue)
	}
	// Output:
	// inventory_checkout: priority 1, 100 workers
	// inventory_maintenance: priority 3, 10 workers
	// inventory.complete_checkout on inventory_checkout
	// inventory.expire_checkout on inventory_checkout
	// inventory.prune_expired_claims on inventory_maintenance
}

// The service is built on an outbox from a registry Register filled, with
// the same Config as the workers; a Config out of range is refused.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleNewService() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, &dbtest.Opts{MaxConns: 8})
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	cfg := &inventory.Config{ClaimTTL: 15 * time.Minute}
	reg := jobs.NewRegistry()
	inventory.Register(reg, s.Pool, cfg)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Schema: s.Name, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	svc, err := inventory.NewService(s.Pool, ob, cfg)
	if err != nil {
		log.Fatal(err)
	}

	if _, err := s.Pool.Exec(ctx, `INSERT INTO products (sku, stock) VALUES ('tee', 10)`); err != nil {
		log.Fatal(err)
	}
	c, err := svc.BeginCheckout(ctx, "tee", 2)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("checkout:", c.ID, c.SKU, c.Quantity, c.State, "held for", c.ExpiresAt.Sub(c.CreatedAt).Round(time.Minute))

	_, err = inventory.NewService(s.Pool, ob, &inventory.Config{CompletionConcurrency: -1})
	fmt.Println(err)
	// Output:
	// checkout: 1 tee 2 open held for 15m0s
	// inventory: Config.CompletionConcurrency must be in 1…1000, got -1
}

// BeginCheckout claims units for a checkout and schedules its expiry in the
// same transaction; a product without enough unclaimed units is sold out.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_BeginCheckout() {
	ctx := context.Background()
	inv, release := newExInventory(ctx, 5)
	defer release()

	c, err := inv.svc.BeginCheckout(ctx, "tee", 3)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("checkout:", c.ID, c.Quantity, c.State)
	inv.stock(ctx)
	inv.Drain(ctx)
	inv.jobStates(ctx) // the expiry, due in ten minutes

	_, err = inv.svc.BeginCheckout(ctx, "tee", 3)
	fmt.Println(errors.Is(err, inventory.ErrSoldOut), err)
	_, err = inv.svc.BeginCheckout(ctx, "mug", 1)
	fmt.Println(errors.Is(err, inventory.ErrUnknownProduct), err)
	_, err = inv.svc.BeginCheckout(ctx, "tee", 0)
	fmt.Println(errors.Is(err, inventory.ErrInvalidCheckout), err)
	// Output:
	// checkout: 1 3 open
	// stock: 5 claimed: 3
	// job: inventory.expire_checkout scheduled
	// true inventory: sold out: tee: 3 requested, 2 available
	// true inventory: unknown product: "mug"
	// true inventory: invalid quantity: must be more than zero, got 0
}

// A refused checkout says how many units were left, to offer them.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleSoldOutError() {
	ctx := context.Background()
	inv, release := newExInventory(ctx, 5)
	defer release()
	if _, err := inv.svc.BeginCheckout(ctx, "tee", 4); err != nil {
		log.Fatal(err)
	}

	_, err := inv.svc.BeginCheckout(ctx, "tee", 3)
	var soldOut *inventory.SoldOutError
	if errors.As(err, &soldOut) && soldOut.Available > 0 {
		fmt.Printf("only %d of %d left\n", soldOut.Available, soldOut.Requested)
		c, err := inv.svc.BeginCheckout(ctx, soldOut.SKU, soldOut.Available)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("checkout:", c.ID, c.Quantity, c.State)
	}
	// Output:
	// only 1 of 3 left
	// checkout: 2 1 open
}

// PaymentAuthorized marks the checkout paid and returns at once; the
// completion job it enqueued takes the units off the stock.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_PaymentAuthorized() {
	ctx := context.Background()
	inv, release := newExInventory(ctx, 5)
	defer release()
	inv.Start(ctx)

	c, err := inv.svc.BeginCheckout(ctx, "tee", 2)
	if err != nil {
		log.Fatal(err)
	}
	c, err = inv.svc.PaymentAuthorized(ctx, c.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("checkout:", c.ID, c.State)
	inv.stock(ctx)

	inv.Drain(ctx)
	ev := inv.WaitFor(inventory.CompleteCheckoutKind)
	fmt.Println("completion:", string(ev.Job.Output()))
	inv.stock(ctx)
	// Output:
	// checkout: 1 paid
	// stock: 5 claimed: 2
	// completion: {"state": "completed", "stock": 3, "result": "completed"}
	// stock: 3 claimed: 0
}

// A failed payment keeps the units for the buyer to fix their card: the
// claim is extended and a new expiry scheduled. A later authorization
// goes through.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_PaymentFailed() {
	ctx := context.Background()
	inv, release := newExInventory(ctx, 5)
	defer release()

	opened, err := inv.svc.BeginCheckout(ctx, "tee", 2)
	if err != nil {
		log.Fatal(err)
	}
	failed, err := inv.svc.PaymentFailed(ctx, opened.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("checkout:", failed.ID, failed.State, "claim extended:", failed.ExpiresAt.After(opened.ExpiresAt))
	inv.stock(ctx)
	inv.Drain(ctx)
	inv.jobStates(ctx) // the first expiry will find the claim extended

	paid, err := inv.svc.PaymentAuthorized(ctx, opened.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("checkout:", paid.ID, paid.State)
	// Output:
	// checkout: 1 payment_failed claim extended: true
	// stock: 5 claimed: 2
	// job: inventory.expire_checkout scheduled
	// job: inventory.expire_checkout scheduled
	// checkout: 1 paid
}

// Abandon releases a checkout's units at once, for the next buyer. An
// abandoned checkout cannot be paid any more.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_Abandon() {
	ctx := context.Background()
	inv, release := newExInventory(ctx, 2)
	defer release()

	first, err := inv.svc.BeginCheckout(ctx, "tee", 2)
	if err != nil {
		log.Fatal(err)
	}
	_, err = inv.svc.BeginCheckout(ctx, "tee", 1)
	fmt.Println("second buyer:", err)

	abandoned, err := inv.svc.Abandon(ctx, first.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("checkout:", abandoned.ID, abandoned.State)
	inv.stock(ctx)
	second, err := inv.svc.BeginCheckout(ctx, "tee", 1)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("second buyer: checkout", second.ID, second.State)

	_, err = inv.svc.PaymentAuthorized(ctx, first.ID)
	var stateErr *inventory.StateError
	if errors.As(err, &stateErr) {
		fmt.Println(errors.Is(err, inventory.ErrCheckoutClosed), stateErr.Op, stateErr.State)
	}
	// Output:
	// second buyer: inventory: sold out: tee: 1 requested, 0 available
	// checkout: 1 abandoned
	// stock: 2 claimed: 0
	// second buyer: checkout 2 open
	// true pay abandoned
}

// BeginCheckoutTx claims units in the caller's transaction, beside the
// caller's own rows: the checkout, its claim and its expiry job commit, or
// roll back, with them. The caller sets its own lock timeout in its BEGIN.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_BeginCheckoutTx() {
	ctx := context.Background()
	inv, release := newExInventory(ctx, 5)
	defer release()
	opts := pgx.TxOptions{BeginQuery: "BEGIN; SET LOCAL lock_timeout = '2s'"}
	errOrderFailed := errors.New("order failed")

	// The caller's transaction fails after the claim: the units are free.
	err := pgx.BeginTxFunc(ctx, inv.Schema.Pool, opts, func(tx pgx.Tx) error {
		if _, err := inv.svc.BeginCheckoutTx(ctx, tx, "tee", 5); err != nil {
			return err
		}
		return errOrderFailed
	})
	fmt.Println("rolled back:", err)
	inv.stock(ctx)

	// It commits: the checkout, its claim and its expiry job are there.
	// (Its ID is 2: the rolled-back one used 1, as sequences do not roll
	// back.)
	err = pgx.BeginTxFunc(ctx, inv.Schema.Pool, opts, func(tx pgx.Tx) error {
		c, err := inv.svc.BeginCheckoutTx(ctx, tx, "tee", 5)
		fmt.Println("checkout:", c.ID, c.Quantity, c.State)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	inv.stock(ctx)
	var kind string
	if err := inv.Schema.Pool.QueryRow(ctx, `SELECT kind FROM outbox_jobs`).Scan(&kind); err != nil {
		log.Fatal(err)
	}
	fmt.Println("job:", kind)
	// Output:
	// rolled back: order failed
	// stock: 5 claimed: 0
	// checkout: 2 5 open
	// stock: 5 claimed: 5
	// job: inventory.expire_checkout
}
