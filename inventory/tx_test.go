package inventory_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/inventory"
)

// TestWritesInTheCallersTx checks the …Tx twins: a checkout, its claim and
// its jobs commit and roll back with the caller's transaction, under both
// strategies.
func TestWritesInTheCallersTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for _, strategy := range []inventory.Strategy{inventory.StrategySingleRow, inventory.StrategyBuckets} {
		t.Run(string(strategy), func(t *testing.T) {
			t.Parallel()

			t.Run("RolledBack", func(t *testing.T) {
				t.Parallel()
				b := setup(ctx, t, nil)
				b.product(ctx, t, "TEE-1", 4)
				if strategy == inventory.StrategyBuckets {
					require.NoError(t, b.svc.SetStrategy(ctx, "TEE-1", strategy, 2))
				}
				tx, err := b.schema.Pool.Begin(ctx)
				require.NoError(t, err)
				c, err := b.svc.BeginCheckoutTx(ctx, tx, "TEE-1", 2)
				require.NoError(t, err)
				_, err = b.svc.PaymentAuthorizedTx(ctx, tx, c.ID)
				require.NoError(t, err)
				require.NoError(t, tx.Rollback(ctx))
				for _, table := range []string{"checkouts", "inventory_claims", "river_job"} {
					require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM `+table), table)
				}
			})

			t.Run("Committed", func(t *testing.T) {
				t.Parallel()
				b := setup(ctx, t, nil)
				pid := b.product(ctx, t, "TEE-1", 4)
				if strategy == inventory.StrategyBuckets {
					require.NoError(t, b.svc.SetStrategy(ctx, "TEE-1", strategy, 2))
				}
				tx, err := b.schema.Pool.Begin(ctx)
				require.NoError(t, err)
				// 3 units: under buckets no bucket of 2 holds them, so the
				// claim takes the slow path under the product lock.
				paid, err := b.svc.BeginCheckoutTx(ctx, tx, "TEE-1", 3)
				require.NoError(t, err)
				_, err = b.svc.PaymentAuthorizedTx(ctx, tx, paid.ID)
				require.NoError(t, err)
				// Sold out: an answer, not an SQL error; tx goes on.
				_, err = b.svc.BeginCheckoutTx(ctx, tx, "TEE-1", 2)
				require.ErrorIs(t, err, inventory.ErrSoldOut)
				failed, err := b.svc.BeginCheckoutTx(ctx, tx, "TEE-1", 1)
				require.NoError(t, err)
				failed, err = b.svc.PaymentFailedTx(ctx, tx, failed.ID)
				require.NoError(t, err)
				require.Equal(t, inventory.StatePaymentFailed, failed.State)
				abandoned, err := b.svc.AbandonTx(ctx, tx, failed.ID)
				require.NoError(t, err)
				require.Equal(t, inventory.StateAbandoned, abandoned.State)
				require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM checkouts`), "nothing visible before the caller commits")
				require.NoError(t, tx.Commit(ctx))

				require.Equal(t, inventory.StatePaid, b.state(ctx, t, paid.ID))
				require.Equal(t, inventory.StateAbandoned, b.state(ctx, t, failed.ID))
				require.Equal(t, 1, b.count(ctx, t,
					`SELECT count(*) FROM inventory_claims WHERE product_id = $1 AND checkout_id = $2 AND quantity = 3 AND expires_at = 'infinity'`, pid, paid.ID))
				require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM inventory_claims WHERE checkout_id = $1`, failed.ID))
				// An expiry per checkout and per failed payment, one completion.
				require.Equal(t, 3, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, inventory.ExpireCheckoutKind))
				require.Equal(t, 1, b.count(ctx, t,
					`SELECT count(*) FROM river_job WHERE kind = $1 AND (args->>'checkout_id')::bigint = $2`, inventory.CompleteCheckoutKind, paid.ID))
			})
		})
	}
}
