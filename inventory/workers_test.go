package inventory_test

import (
	"context"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
)

func TestCompleteCheckout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("SecondDeliveryChangesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		pid := b.product(ctx, t, "TEE-1", 5)
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 2)
		require.NoError(t, err)
		_, err = b.svc.PaymentAuthorized(ctx, c.ID)
		require.NoError(t, err)

		ev := b.waitJob(t, inventory.CompleteCheckoutKind, c.ID)
		requireOutput(t, inventory.CheckoutOutput{Result: "completed", State: "completed", Stock: ptr(3)}, ev)
		require.Equal(t, 3, b.stock(ctx, t, pid))
		require.Equal(t, inventory.StateCompleted, b.state(ctx, t, c.ID))
		require.Equal(t, 0, b.count(ctx, t, `SELECT count(*) FROM inventory_claims`))
		// The slot is released after the job's completion, in the
		// background (the lock releaser): wait for it.
		require.Eventually(t, func() bool { return b.count(ctx, t, `SELECT count(*) FROM job_locks`) == 0 },
			10*time.Second, 5*time.Millisecond, "the semaphore slot is released")

		// Deliver the same job again, as a crash after the commit would.
		tag, err := b.schema.Pool.Exec(ctx, `
UPDATE river_job SET state = 'available', finalized_at = NULL, scheduled_at = now()
 WHERE id = $1 AND state = 'completed'`, ev.Job.ID)
		require.NoError(t, err)
		require.Equal(t, int64(1), tag.RowsAffected())

		again := b.waitJob(t, inventory.CompleteCheckoutKind, c.ID)
		require.Equal(t, ev.Job.ID, again.Job.ID)
		requireOutput(t, inventory.CheckoutOutput{Result: "unchanged", State: "completed"}, again)
		require.Equal(t, 3, b.stock(ctx, t, pid), "the stock is decremented once")
		require.Equal(t, inventory.StateCompleted, b.state(ctx, t, c.ID))
	})

	t.Run("UnpaidCheckoutIsNotSold", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		pid := b.product(ctx, t, "TEE-1", 5)
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 2)
		require.NoError(t, err)

		_, err = b.client.Insert(ctx, inventory.CompleteCheckoutArgs{CheckoutID: c.ID}, &river.InsertOpts{Queue: inventory.QueueCheckout})
		require.NoError(t, err)
		requireOutput(t, inventory.CheckoutOutput{Result: "unchanged", State: "open"}, b.waitJob(t, inventory.CompleteCheckoutKind, c.ID))
		require.Equal(t, 5, b.stock(ctx, t, pid))
		require.Equal(t, inventory.StateOpen, b.state(ctx, t, c.ID))
	})
}

func TestExpireCheckout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ReleasesARunOutClaim", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		pid := b.product(ctx, t, "TEE-1", 1)
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 1)
		require.NoError(t, err)

		b.expireClaim(ctx, t, c.ID)
		b.runExpiryNow(ctx, t, c.ID)
		requireOutput(t, inventory.CheckoutOutput{Result: "expired", State: "expired"}, b.waitJob(t, inventory.ExpireCheckoutKind, c.ID))
		require.Equal(t, inventory.StateExpired, b.state(ctx, t, c.ID))
		require.Equal(t, 0, b.count(ctx, t, `SELECT count(*) FROM inventory_claims`))
		require.Equal(t, 1, b.stock(ctx, t, pid))
	})

	t.Run("SkippedForAPaidCheckout", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		pid := b.product(ctx, t, "TEE-1", 1)
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 1)
		require.NoError(t, err)
		_, err = b.svc.PaymentAuthorized(ctx, c.ID)
		require.NoError(t, err)
		requireOutput(t, inventory.CheckoutOutput{Result: "completed", State: "completed", Stock: ptr(0)},
			b.waitJob(t, inventory.CompleteCheckoutKind, c.ID))

		// The expiry comes due after the sale.
		b.runExpiryNow(ctx, t, c.ID)
		requireOutput(t, jobs.SkippedOutput{Skipped: "not needed"}, b.waitJob(t, inventory.ExpireCheckoutKind, c.ID))
		require.Equal(t, inventory.StateCompleted, b.state(ctx, t, c.ID))
		require.Equal(t, 0, b.stock(ctx, t, pid))
	})

	t.Run("SkippedForAPaidCheckoutNotYetCompleted", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		pid := b.product(ctx, t, "TEE-1", 1)
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 1)
		require.NoError(t, err)

		// Mark it paid by hand, without a completion job, and let its
		// recorded expiry pass: a paid claim never expires.
		_, err = b.schema.Pool.Exec(ctx, `
WITH cl AS (UPDATE inventory_claims SET expires_at = 'infinity' WHERE checkout_id = $1)
UPDATE checkouts SET state = 'paid', expires_at = now() - interval '1 second' WHERE id = $1`, c.ID)
		require.NoError(t, err)
		b.runExpiryNow(ctx, t, c.ID)
		requireOutput(t, jobs.SkippedOutput{Skipped: "not needed"}, b.waitJob(t, inventory.ExpireCheckoutKind, c.ID))
		require.Equal(t, inventory.StatePaid, b.state(ctx, t, c.ID))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM inventory_claims WHERE checkout_id = $1`, c.ID))
		require.Equal(t, 1, b.stock(ctx, t, pid))
	})

	t.Run("SkippedWhenPaymentFailedExtendedTheClaim", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		b.product(ctx, t, "TEE-1", 1)
		c, err := b.svc.BeginCheckout(ctx, "TEE-1", 1)
		require.NoError(t, err)
		_, err = b.svc.PaymentFailed(ctx, c.ID)
		require.NoError(t, err)

		// Run the first (now early) expiry and the rescheduled one: both
		// find the extended claim alive.
		b.runExpiryNow(ctx, t, c.ID)
		requireOutput(t, jobs.SkippedOutput{Skipped: "not needed"}, b.waitJob(t, inventory.ExpireCheckoutKind, c.ID))
		requireOutput(t, jobs.SkippedOutput{Skipped: "not needed"}, b.waitJob(t, inventory.ExpireCheckoutKind, c.ID))
		require.Equal(t, inventory.StatePaymentFailed, b.state(ctx, t, c.ID))
	})
}

func TestPruneExpiredClaims(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("MarksExpiredCheckoutsAndLeavesLiveOnes", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true, cfg: &inventory.Config{PruneBatchSize: 2}})
		pid := b.product(ctx, t, "TEE-1", 10)
		begin := func() int64 {
			c, err := b.svc.BeginCheckout(ctx, "TEE-1", 1)
			require.NoError(t, err)
			return c.ID
		}
		openExpired, failedExpired, openExpired2 := begin(), begin(), begin()
		live, failedLive, paid, abandoned := begin(), begin(), begin(), begin()
		_, err := b.svc.PaymentFailed(ctx, failedExpired)
		require.NoError(t, err)
		_, err = b.svc.PaymentFailed(ctx, failedLive)
		require.NoError(t, err)
		_, err = b.svc.Abandon(ctx, abandoned)
		require.NoError(t, err)
		b.expireClaim(ctx, t, openExpired)
		b.expireClaim(ctx, t, failedExpired)
		b.expireClaim(ctx, t, openExpired2)
		_, err = b.svc.PaymentAuthorized(ctx, paid)
		require.NoError(t, err)
		requireOutput(t, inventory.CheckoutOutput{Result: "completed", State: "completed", Stock: ptr(9)},
			b.waitJob(t, inventory.CompleteCheckoutKind, paid))

		_, err = b.client.Insert(ctx, inventory.PruneExpiredClaimsArgs{}, &river.InsertOpts{Queue: inventory.QueueMaintenance})
		require.NoError(t, err)
		requireOutput(t, inventory.PruneOutput{Expired: 3}, b.waitJob(t, inventory.PruneExpiredClaimsKind, 0))

		for id, want := range map[int64]inventory.State{
			openExpired: "expired", failedExpired: "expired", openExpired2: "expired",
			live: "open", failedLive: "payment_failed", paid: "completed", abandoned: "abandoned",
		} {
			require.Equal(t, want, b.state(ctx, t, id), "checkout %d", id)
		}
		var claims []int64
		require.NoError(t, b.schema.Pool.QueryRow(ctx,
			`SELECT array_agg(checkout_id ORDER BY checkout_id) FROM inventory_claims`).Scan(&claims))
		require.Equal(t, []int64{live, failedLive}, claims)
		require.Equal(t, 9, b.stock(ctx, t, pid))

		_, err = b.client.Insert(ctx, inventory.PruneExpiredClaimsArgs{}, &river.InsertOpts{Queue: inventory.QueueMaintenance})
		require.NoError(t, err)
		requireOutput(t, inventory.PruneOutput{Expired: 0}, b.waitJob(t, inventory.PruneExpiredClaimsKind, 0))
	})
}
