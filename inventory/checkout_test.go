package inventory_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
)

func TestBeginCheckout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ClaimsUnitsAndSchedulesExpiry", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		pid := b.product(ctx, t, "TEE-1", 5)

		before := time.Now()
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 3)
		require.NoError(t, err)
		require.Positive(t, c.ID)
		require.Equal(t, inventory.Checkout{
			ID: c.ID, ProductID: pid, SKU: "TEE-1", Quantity: 3, State: inventory.StateOpen,
			CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt, ExpiresAt: c.ExpiresAt,
		}, c)
		require.WithinDuration(t, before.Add(inventory.ClaimTTLDefault), c.ExpiresAt, 5*time.Second)

		require.Equal(t, 1, b.count(ctx, t,
			`SELECT count(*) FROM inventory_claims WHERE checkout_id = $1 AND product_id = $2 AND quantity = 3 AND expires_at = $3`,
			c.ID, pid, c.ExpiresAt))
		require.Equal(t, 1, b.count(ctx, t,
			`SELECT count(*) FROM river_job WHERE kind = $1 AND (args->>'checkout_id')::bigint = $2
			    AND state = 'scheduled' AND queue = $3 AND abs(extract(epoch FROM scheduled_at - $4::timestamptz)) < 0.001`,
			inventory.ExpireCheckoutKind, c.ID, inventory.QueueCheckout, c.ExpiresAt))
		require.Equal(t, 5, b.stock(ctx, t, pid), "a claim does not touch the stock")
	})

	t.Run("SoldOut", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "TEE-1", 5)
		_, err := b.svc.BeginCheckout(ctx, "TEE-1", 3)
		require.NoError(t, err)

		_, err = b.svc.BeginCheckout(ctx, "TEE-1", 3)
		require.ErrorIs(t, err, inventory.ErrSoldOut)
		var soldOut *inventory.SoldOutError
		require.ErrorAs(t, err, &soldOut)
		require.Equal(t, &inventory.SoldOutError{SKU: "TEE-1", Requested: 3, Available: 2}, soldOut)
		require.EqualError(t, err, "inventory: sold out: TEE-1: 3 requested, 2 available")
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM checkouts`))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job`))

		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 2)
		require.NoError(t, err, "the last two units are still there")
		require.Equal(t, 2, c.Quantity)
	})

	t.Run("ExpiredClaimsDoNotCount", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "TEE-1", 1)
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 1)
		require.NoError(t, err)
		_, err = b.svc.BeginCheckout(ctx, "TEE-1", 1)
		require.ErrorIs(t, err, inventory.ErrSoldOut)

		b.expireClaim(ctx, t, c.ID)
		_, err = b.svc.BeginCheckout(ctx, "TEE-1", 1)
		require.NoError(t, err)
	})

	t.Run("BadInputWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "TEE-1", 5)

		for _, tc := range []struct {
			sku   string
			qty   int
			field string
		}{
			{"TEE-1", 0, "quantity"},
			{"TEE-1", -1, "quantity"},
			{"TEE-1", inventory.MaxQuantity + 1, "quantity"},
			{"", 1, "sku"},
			{"TEE\x00", 1, "sku"},
		} {
			_, err := b.svc.BeginCheckout(ctx, tc.sku, tc.qty)
			require.ErrorIs(t, err, inventory.ErrInvalidCheckout, "%q × %d", tc.sku, tc.qty)
			var verr *inventory.ValidationError
			require.ErrorAs(t, err, &verr)
			require.Equal(t, tc.field, verr.Field)
		}
		_, err := b.svc.BeginCheckout(ctx, "TEE-1", 0)
		require.EqualError(t, err, "inventory: invalid quantity: must be more than zero, got 0")

		_, err = b.svc.BeginCheckout(ctx, "NO-SUCH", 1)
		require.ErrorIs(t, err, inventory.ErrUnknownProduct)
		_, err = b.svc.BeginCheckout(ctx, "TEE-1", 6)
		require.ErrorIs(t, err, inventory.ErrSoldOut)

		require.Equal(t, 0, b.count(ctx, t, `SELECT count(*) FROM checkouts`))
		require.Equal(t, 0, b.count(ctx, t, `SELECT count(*) FROM inventory_claims`))
		require.Equal(t, 0, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})

	// A wait for the product row past lock_timeout (55P03), or a statement
	// past statement_timeout (57014, here waiting for a lock whose
	// lock_timeout is longer), is a retryable BusyError that wrote nothing.
	for _, tc := range []struct {
		name string
		cfg  inventory.Config
		code string
	}{
		{"LockTimeoutIsBusy", inventory.Config{LockTimeout: 50 * time.Millisecond}, "55P03"},
		{"StatementTimeoutIsBusy", inventory.Config{LockTimeout: 10 * time.Second, StatementTimeout: 50 * time.Millisecond}, "57014"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(ctx, t, &setupOpts{cfg: &tc.cfg})
			b.product(ctx, t, "TEE-1", 5)

			holder, err := b.schema.Pool.Begin(ctx)
			require.NoError(t, err)
			t.Cleanup(func() { _ = holder.Rollback(context.WithoutCancel(ctx)) })
			_, err = holder.Exec(ctx, `SELECT 1 FROM products WHERE sku = 'TEE-1' FOR UPDATE`)
			require.NoError(t, err)

			_, err = b.svc.BeginCheckout(ctx, "TEE-1", 1)
			require.ErrorIs(t, err, inventory.ErrBusy)
			var busy *inventory.BusyError
			require.ErrorAs(t, err, &busy)
			require.True(t, busy.Retryable())
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			require.Equal(t, tc.code, pgErr.Code)
			require.NoError(t, holder.Rollback(ctx))

			require.Equal(t, 0, b.count(ctx, t, `SELECT count(*) FROM checkouts`))
			// Free again once the lock is gone. A 50 ms statement timeout
			// can still expire on a loaded machine with nothing held: that
			// is the retryable ErrBusy, and the caller's retry succeeds.
			require.Eventually(t, func() bool {
				_, err = b.svc.BeginCheckout(ctx, "TEE-1", 1)
				return !errors.Is(err, inventory.ErrBusy)
			}, 30*time.Second, 10*time.Millisecond, "still busy with the lock gone: %v", err)
			require.NoError(t, err, "free again once the lock is gone")
			require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM checkouts`))
		})
	}
}

func TestCheckoutChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("PaymentFailedExtendsTheClaimAndReschedules", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "TEE-1", 5)
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 2)
		require.NoError(t, err)

		before := time.Now()
		f, err := b.svc.PaymentFailed(ctx, c.ID)
		require.NoError(t, err)
		require.Equal(t, inventory.StatePaymentFailed, f.State)
		require.WithinDuration(t, before.Add(inventory.PaymentRetryTTLDefault), f.ExpiresAt, 5*time.Second)
		require.Equal(t, inventory.StatePaymentFailed, b.state(ctx, t, c.ID))
		require.Equal(t, 1, b.count(ctx, t,
			`SELECT count(*) FROM inventory_claims WHERE checkout_id = $1 AND expires_at = $2`, c.ID, f.ExpiresAt))
		require.Equal(t, 2, b.count(ctx, t,
			`SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'scheduled'`, inventory.ExpireCheckoutKind))

		_, err = b.svc.PaymentFailed(ctx, c.ID)
		require.NoError(t, err, "a second failure extends again")
	})

	t.Run("ARunOutClaimCannotBeRevived", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "TEE-1", 1)
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 1)
		require.NoError(t, err)
		b.expireClaim(ctx, t, c.ID)

		_, err = b.svc.PaymentFailed(ctx, c.ID)
		require.ErrorIs(t, err, inventory.ErrCheckoutClosed)
		_, err = b.svc.PaymentAuthorized(ctx, c.ID)
		require.ErrorIs(t, err, inventory.ErrCheckoutClosed)
		require.EqualError(t, err, "inventory: cannot pay checkout "+itoa(c.ID)+": it is expired")
		require.Equal(t, inventory.StateOpen, b.state(ctx, t, c.ID), "left for the expiry job")
	})

	t.Run("AbandonReleasesAtOnce", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "TEE-1", 2)
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 2)
		require.NoError(t, err)

		a, err := b.svc.Abandon(ctx, c.ID)
		require.NoError(t, err)
		require.Equal(t, inventory.StateAbandoned, a.State)
		require.Equal(t, inventory.StateAbandoned, b.state(ctx, t, c.ID))
		require.Equal(t, 0, b.count(ctx, t, `SELECT count(*) FROM inventory_claims`))

		_, err = b.svc.Abandon(ctx, c.ID)
		require.NoError(t, err, "abandoning twice changes nothing")
		_, err = b.svc.PaymentAuthorized(ctx, c.ID)
		require.ErrorIs(t, err, inventory.ErrCheckoutClosed)
		_, err = b.svc.BeginCheckout(ctx, "TEE-1", 2)
		require.NoError(t, err)
	})

	t.Run("PaymentAuthorizedHoldsTheClaimAndEnqueuesCompletion", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		pid := b.product(ctx, t, "TEE-1", 2)
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 2)
		require.NoError(t, err)

		p, err := b.svc.PaymentAuthorized(ctx, c.ID)
		require.NoError(t, err)
		require.Equal(t, inventory.StatePaid, p.State)
		require.Equal(t, 1, b.count(ctx, t,
			`SELECT count(*) FROM inventory_claims WHERE checkout_id = $1 AND expires_at = 'infinity'`, c.ID))
		require.Equal(t, 1, b.count(ctx, t,
			`SELECT count(*) FROM river_job WHERE kind = $1 AND (args->>'checkout_id')::bigint = $2 AND state = 'available' AND queue = $3`,
			inventory.CompleteCheckoutKind, c.ID, inventory.QueueCheckout))
		require.Equal(t, 2, b.stock(ctx, t, pid), "the job, not the request, sells the units")

		_, err = b.svc.PaymentAuthorized(ctx, c.ID)
		require.NoError(t, err, "a repeated authorization changes nothing")
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, inventory.CompleteCheckoutKind))
		_, err = b.svc.Abandon(ctx, c.ID)
		require.ErrorIs(t, err, inventory.ErrCheckoutClosed)

		_, err = b.svc.PaymentAuthorized(ctx, c.ID+1000)
		require.ErrorIs(t, err, inventory.ErrUnknownCheckout)
	})
}

func TestConfig(t *testing.T) {
	t.Parallel()

	require.Equal(t, inventory.Config{
		ClaimTTL: 10 * time.Minute, PaymentRetryTTL: 30 * time.Minute,
		LockTimeout: 2 * time.Second, StatementTimeout: 5 * time.Second,
		CompletionConcurrency: 4, PruneInterval: time.Minute, PruneBatchSize: 1000,
	}, (*inventory.Config)(nil).WithDefaults())

	_, err := inventory.NewService(nil, nil, &inventory.Config{ClaimTTL: -time.Second, CompletionConcurrency: -1})
	require.ErrorContains(t, err, "Config.ClaimTTL must be at least 1ms")
	require.ErrorContains(t, err, "Config.CompletionConcurrency must be in 1…1000, got -1")
	require.Panics(t, func() {
		inventory.Register(jobs.NewRegistry(), nil, &inventory.Config{PruneBatchSize: -1})
	})
}
