package inventory_test

import (
	"cmp"
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
)

// testBundle is what setup gives a test.
type testBundle struct {
	schema *dbtest.Schema
	client *river.Client[pgx.Tx]
	svc    *inventory.Service
	events <-chan *river.Event
}

// setupOpts are the options of setup.
type setupOpts struct {
	// work starts the client on every queue; otherwise it only inserts.
	work bool
	// cfg is the domain's Config, for the service and the workers.
	cfg *inventory.Config
	// maxConns sizes the pool (10 when 0).
	maxConns int32
}

func setup(ctx context.Context, t testing.TB, opts *setupOpts) *testBundle {
	t.Helper()
	if opts == nil {
		opts = &setupOpts{}
	}
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: cmp.Or(opts.maxConns, 10)})
	b := &testBundle{schema: s}

	reg := jobs.NewRegistry()
	inventory.Register(reg, s.Pool, opts.cfg)
	// No more completions per process than the semaphore's permits, so none
	// snoozes (a snoozed job waits for River's 5 s scheduler).
	b.client, b.events = jobstest.Client(ctx, t, s, reg, jobstest.Opts{
		Work:       opts.work,
		MaxWorkers: 4,
		River: &river.Config{
			FetchCooldown:     10 * time.Millisecond,
			FetchPollInterval: 20 * time.Millisecond,
		},
	})
	ob, err := jobs.NewOutbox(s.Pool, b.client, reg, directInsert)
	require.NoError(t, err)
	b.svc, err = inventory.NewService(s.Pool, ob, opts.cfg)
	require.NoError(t, err)
	return b
}

// product inserts a product.
func (b *testBundle) product(ctx context.Context, t testing.TB, sku string, stock int) int64 {
	t.Helper()
	var id int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx,
		`INSERT INTO products (sku, stock) VALUES ($1, $2) RETURNING id`, sku, stock).Scan(&id))
	return id
}

// count runs a count query.
func (b *testBundle) count(ctx context.Context, t testing.TB, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, b.schema.Pool.QueryRow(ctx, sql, args...).Scan(&n))
	return n
}

// stock returns a product's stock.
func (b *testBundle) stock(ctx context.Context, t testing.TB, productID int64) int {
	t.Helper()
	return b.count(ctx, t, `SELECT stock FROM products WHERE id = $1`, productID)
}

// state returns a checkout's state.
func (b *testBundle) state(ctx context.Context, t testing.TB, checkoutID int64) inventory.State {
	t.Helper()
	var st inventory.State
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT state FROM checkouts WHERE id = $1`, checkoutID).Scan(&st))
	return st
}

// expireClaim moves a checkout's claim (and its recorded expiry) into the
// past, as if its time had run out.
func (b *testBundle) expireClaim(ctx context.Context, t testing.TB, checkoutID int64) {
	t.Helper()
	_, err := b.schema.Pool.Exec(ctx, `
WITH cl AS (UPDATE inventory_claims SET expires_at = now() - interval '1 second' WHERE checkout_id = $1)
UPDATE checkouts SET expires_at = now() - interval '1 second' WHERE id = $1`, checkoutID)
	require.NoError(t, err)
}

// runExpiryNow makes the waiting expire_checkout jobs of a checkout
// available now.
func (b *testBundle) runExpiryNow(ctx context.Context, t testing.TB, checkoutID int64) {
	t.Helper()
	tag, err := b.schema.Pool.Exec(ctx, `
UPDATE river_job SET state = 'available', scheduled_at = now()
 WHERE kind = $1 AND (args->>'checkout_id')::bigint = $2 AND state = 'scheduled'`, inventory.ExpireCheckoutKind, checkoutID)
	require.NoError(t, err)
	require.Positive(t, tag.RowsAffected())
}

// waitJob returns the next event of a job of kind for checkoutID (0: any),
// passing over other events.
func (b *testBundle) waitJob(t testing.TB, kind string, checkoutID int64) *river.Event {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev := <-b.events:
			if ev.Job.Kind != kind {
				continue
			}
			if checkoutID != 0 {
				var args struct {
					CheckoutID int64 `json:"checkout_id"`
				}
				require.NoError(t, json.Unmarshal(ev.Job.EncodedArgs, &args))
				if args.CheckoutID != checkoutID {
					continue
				}
			}
			return ev
		case <-timeout:
			t.Fatalf("no %s job event within 15 s", kind)
			return nil
		}
	}
}

// requireOutput checks that ev is a completion whose output is want.
func requireOutput[T any](t testing.TB, want T, ev *river.Event) {
	t.Helper()
	require.Equal(t, river.EventKindJobCompleted, ev.Kind, "job errors: %v", ev.Job.Errors)
	var got T
	require.NoError(t, json.Unmarshal(ev.Job.Output(), &got))
	require.Equal(t, want, got)
}

func ptr[T any](v T) *T { return &v }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
