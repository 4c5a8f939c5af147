package inventory_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/inventory"
)

// bucketsOf returns the buckets of sku.
func (b *testBundle) bucketsOf(ctx context.Context, t testing.TB, sku string) []inventory.Bucket {
	t.Helper()
	out, err := b.svc.Buckets(ctx, sku)
	require.NoError(t, err)
	return out
}

// stocks returns the Stock of each bucket.
func stocks(buckets []inventory.Bucket) []int {
	out := make([]int, len(buckets))
	for i, bk := range buckets {
		out[i] = bk.Stock
	}
	return out
}

// claimedOf returns the Claimed of each bucket.
func claimedOf(buckets []inventory.Bucket) []int {
	out := make([]int, len(buckets))
	for i, bk := range buckets {
		out[i] = bk.Claimed
	}
	return out
}

// claimBucket returns the bucket of a checkout's claim (-1 when it has
// none or is single_row).
func (b *testBundle) claimBucket(ctx context.Context, t testing.TB, checkoutID int64) int {
	t.Helper()
	return b.count(ctx, t, `SELECT coalesce((SELECT bucket FROM inventory_claims WHERE checkout_id = $1), -1)`, checkoutID)
}

func TestSetStrategy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("SplitsTheStockEvenly", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "SPLIT", 10)

		require.NoError(t, b.svc.SetStrategy(ctx, "SPLIT", inventory.StrategyBuckets, 4))
		require.Equal(t, []inventory.Bucket{{0, 3, 0}, {1, 3, 0}, {2, 2, 0}, {3, 2, 0}}, b.bucketsOf(ctx, t, "SPLIT"))
		require.Equal(t, "buckets", b.strategy(ctx, t, "SPLIT"))

		// Re-splitting, and more buckets than units.
		require.NoError(t, b.svc.SetStrategy(ctx, "SPLIT", inventory.StrategyBuckets, 12))
		require.Equal(t, []int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, stocks(b.bucketsOf(ctx, t, "SPLIT")))

		require.NoError(t, b.svc.SetStrategy(ctx, "SPLIT", inventory.StrategySingleRow, 0))
		require.Empty(t, b.bucketsOf(ctx, t, "SPLIT"))
		require.Equal(t, "single_row", b.strategy(ctx, t, "SPLIT"))
	})

	t.Run("RefusedWhileAClaimIsOpen", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "BUSY", 10)
		c, err := b.svc.BeginCheckout(ctx, "BUSY", 2)
		require.NoError(t, err)

		err = b.svc.SetStrategy(ctx, "BUSY", inventory.StrategyBuckets, 4)
		var open *inventory.ClaimsOpenError
		require.ErrorAs(t, err, &open)
		require.ErrorIs(t, err, inventory.ErrClaimsOpen)
		require.Equal(t, &inventory.ClaimsOpenError{SKU: "BUSY", Claims: 1}, open)
		require.Equal(t, "single_row", b.strategy(ctx, t, "BUSY"))
		require.Empty(t, b.bucketsOf(ctx, t, "BUSY"))

		// A paid claim is still open.
		_, err = b.svc.PaymentAuthorized(ctx, c.ID)
		require.NoError(t, err)
		require.ErrorIs(t, b.svc.SetStrategy(ctx, "BUSY", inventory.StrategyBuckets, 4), inventory.ErrClaimsOpen)
	})

	t.Run("ReleasesRunOutClaimsFirst", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "STALE", 10)
		c, err := b.svc.BeginCheckout(ctx, "STALE", 2)
		require.NoError(t, err)
		b.expireClaim(ctx, t, c.ID)

		require.NoError(t, b.svc.SetStrategy(ctx, "STALE", inventory.StrategyBuckets, 2))
		require.Equal(t, inventory.StateExpired, b.state(ctx, t, c.ID))
		require.Equal(t, []inventory.Bucket{{0, 5, 0}, {1, 5, 0}}, b.bucketsOf(ctx, t, "STALE"))
	})

	t.Run("BadInput", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "P", 10)

		for _, tc := range []struct {
			sku      string
			strategy inventory.Strategy
			buckets  int
			want     string
		}{
			{"P", inventory.StrategyBuckets, 0, "inventory: invalid buckets: must be in 1…256, got 0"},
			{"P", inventory.StrategyBuckets, 257, "inventory: invalid buckets: must be in 1…256, got 257"},
			{"P", inventory.StrategySingleRow, 4, "inventory: invalid buckets: must be 0 for single_row, got 4"},
			{"P", "sharded", 4, `inventory: invalid strategy: must be "single_row" or "buckets", got "sharded"`},
			{"", inventory.StrategyBuckets, 4, "inventory: invalid sku: is required"},
		} {
			err := b.svc.SetStrategy(ctx, tc.sku, tc.strategy, tc.buckets)
			require.ErrorIs(t, err, inventory.ErrInvalidCheckout)
			require.EqualError(t, err, tc.want)
		}
		require.ErrorIs(t, b.svc.SetStrategy(ctx, "NOPE", inventory.StrategyBuckets, 4), inventory.ErrUnknownProduct)
		require.Equal(t, "single_row", b.strategy(ctx, t, "P"))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM product_buckets`))
	})
}

// strategy returns a product's claim strategy.
func (b *testBundle) strategy(ctx context.Context, t testing.TB, sku string) string {
	t.Helper()
	var s string
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT claim_strategy FROM products WHERE sku = $1`, sku).Scan(&s))
	return s
}

func TestBucketClaims(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("AClaimTakesOneBucket", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		pid := b.product(ctx, t, "HOT", 8)
		require.NoError(t, b.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, 4))

		c, err := b.svc.BeginCheckout(ctx, "HOT", 2)
		require.NoError(t, err)
		require.Equal(t, pid, c.ProductID)
		require.Equal(t, inventory.StateOpen, c.State)
		bk := b.claimBucket(ctx, t, c.ID)
		require.GreaterOrEqual(t, bk, 0)
		want := []int{0, 0, 0, 0}
		want[bk] = 2
		require.Equal(t, want, claimedOf(b.bucketsOf(ctx, t, "HOT")))
		require.Equal(t, 8, b.stock(ctx, t, pid), "a claim does not touch the stock")
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'scheduled'`, inventory.ExpireCheckoutKind))
	})

	t.Run("HeldBucketsAreSkipped", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "HOT", 8)
		require.NoError(t, b.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, 4))

		// Another transaction holds buckets 0, 1 and 3.
		tx, err := b.schema.Pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()
		_, err = tx.Exec(ctx, `SELECT 1 FROM product_buckets WHERE bucket IN (0, 1, 3) FOR UPDATE`)
		require.NoError(t, err)

		for range 2 {
			c, err := b.svc.BeginCheckout(ctx, "HOT", 1)
			require.NoError(t, err)
			require.Equal(t, 2, b.claimBucket(ctx, t, c.ID))
		}
		require.Equal(t, []int{0, 0, 2, 0}, claimedOf(b.bucketsOf(ctx, t, "HOT")))
	})

	t.Run("AllHeldWaitsInsteadOfSellingOut", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{cfg: &inventory.Config{LockTimeout: 300 * time.Millisecond}})
		b.product(ctx, t, "HOT", 8)
		require.NoError(t, b.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, 4))

		tx, err := b.schema.Pool.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `SELECT 1 FROM product_buckets FOR UPDATE`)
		require.NoError(t, err)

		// Held longer than the lock timeout: busy, not sold out.
		_, err = b.svc.BeginCheckout(ctx, "HOT", 1)
		require.ErrorIs(t, err, inventory.ErrBusy)
		require.NotErrorIs(t, err, inventory.ErrSoldOut)

		// Released while the buyer waits: the claim goes through.
		done := make(chan error, 1)
		go func() {
			_, err := b.svc.BeginCheckout(ctx, "HOT", 1)
			done <- err
		}()
		time.Sleep(100 * time.Millisecond)
		require.NoError(t, tx.Rollback(ctx))
		require.NoError(t, <-done)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM inventory_claims`))
	})

	t.Run("NoFalseSoldOutWhenNoBucketHasEnough", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "HOT", 10)
		require.NoError(t, b.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, 4)) // 3, 3, 2, 2

		c1, err := b.svc.BeginCheckout(ctx, "HOT", 5)
		require.NoError(t, err, "5 units in no single bucket, 10 in all")
		c2, err := b.svc.BeginCheckout(ctx, "HOT", 5)
		require.NoError(t, err)
		_, err = b.svc.BeginCheckout(ctx, "HOT", 1)
		require.Equal(t, &inventory.SoldOutError{SKU: "HOT", Requested: 1, Available: 0}, err)

		got := b.bucketsOf(ctx, t, "HOT")
		total, claimed := 0, 0
		for _, bk := range got {
			require.Equal(t, bk.Stock, bk.Claimed, "every unit is claimed")
			total += bk.Stock
			claimed += bk.Claimed
		}
		require.Equal(t, 10, total, "units moved, none made")
		require.Equal(t, 10, claimed)
		require.NotEqual(t, b.claimBucket(ctx, t, c1.ID), b.claimBucket(ctx, t, c2.ID))
	})

	t.Run("RunOutClaimsAreReleasedBeforeSoldOut", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.product(ctx, t, "HOT", 4)
		require.NoError(t, b.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, 2))
		c1, err := b.svc.BeginCheckout(ctx, "HOT", 2)
		require.NoError(t, err)
		_, err = b.svc.BeginCheckout(ctx, "HOT", 2)
		require.NoError(t, err)
		_, err = b.svc.BeginCheckout(ctx, "HOT", 1)
		require.ErrorIs(t, err, inventory.ErrSoldOut)

		b.expireClaim(ctx, t, c1.ID)
		c3, err := b.svc.BeginCheckout(ctx, "HOT", 2)
		require.NoError(t, err)
		require.Equal(t, inventory.StateExpired, b.state(ctx, t, c1.ID))
		require.Equal(t, []int{2, 2}, claimedOf(b.bucketsOf(ctx, t, "HOT")))
		require.Equal(t, 2, b.count(ctx, t, `SELECT count(*) FROM inventory_claims`))
		require.Equal(t, 0, b.count(ctx, t, `SELECT count(*) FROM inventory_claims WHERE checkout_id = $1`, c1.ID))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM inventory_claims WHERE checkout_id = $1`, c3.ID))
	})

	t.Run("ChangesGiveUnitsBackToTheBucket", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		pid := b.product(ctx, t, "HOT", 6)
		require.NoError(t, b.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, 2))

		ab, err := b.svc.BeginCheckout(ctx, "HOT", 1)
		require.NoError(t, err)
		failed, err := b.svc.BeginCheckout(ctx, "HOT", 1)
		require.NoError(t, err)
		sold, err := b.svc.BeginCheckout(ctx, "HOT", 2)
		require.NoError(t, err)

		_, err = b.svc.Abandon(ctx, ab.ID)
		require.NoError(t, err)
		_, err = b.svc.PaymentFailed(ctx, failed.ID)
		require.NoError(t, err)
		_, err = b.svc.PaymentAuthorized(ctx, sold.ID)
		require.NoError(t, err)
		requireOutput(t, inventory.CheckoutOutput{Result: inventory.ResultCompleted, State: inventory.StateCompleted, Stock: ptr(4)},
			b.waitJob(t, inventory.CompleteCheckoutKind, sold.ID))

		got := b.bucketsOf(ctx, t, "HOT")
		require.Equal(t, 4, got[0].Stock+got[1].Stock, "the completion took 2 units off its bucket")
		require.Equal(t, 1, got[0].Claimed+got[1].Claimed, "only the failed payment's unit is held")
		require.Equal(t, 1, got[b.claimBucket(ctx, t, failed.ID)].Claimed)
		require.Equal(t, 4, b.stock(ctx, t, pid))
	})

	t.Run("PruneGivesUnitsBackToTheBucket", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		b.product(ctx, t, "HOT", 4)
		require.NoError(t, b.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, 2))
		var ids []int64
		for range 3 {
			c, err := b.svc.BeginCheckout(ctx, "HOT", 1)
			require.NoError(t, err)
			ids = append(ids, c.ID)
		}
		b.expireClaim(ctx, t, ids[0])
		b.expireClaim(ctx, t, ids[1])

		_, err := b.client.Insert(ctx, inventory.PruneExpiredClaimsArgs{}, nil)
		require.NoError(t, err)
		requireOutput(t, inventory.PruneOutput{Expired: 2}, b.waitJob(t, inventory.PruneExpiredClaimsKind, 0))
		got := b.bucketsOf(ctx, t, "HOT")
		require.Equal(t, 1, got[0].Claimed+got[1].Claimed)
		require.Equal(t, 1, got[b.claimBucket(ctx, t, ids[2])].Claimed)
		require.Equal(t, inventory.StateExpired, b.state(ctx, t, ids[0]))
		require.Equal(t, inventory.StateOpen, b.state(ctx, t, ids[2]))
	})

	t.Run("ASecondCompletionDeliveryChangesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{work: true})
		pid := b.product(ctx, t, "HOT", 5)
		require.NoError(t, b.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, 2))
		c, err := b.svc.BeginCheckout(ctx, "HOT", 3)
		require.NoError(t, err)
		_, err = b.svc.PaymentAuthorized(ctx, c.ID)
		require.NoError(t, err)
		requireOutput(t, inventory.CheckoutOutput{Result: inventory.ResultCompleted, State: inventory.StateCompleted, Stock: ptr(2)},
			b.waitJob(t, inventory.CompleteCheckoutKind, c.ID))

		_, err = b.client.Insert(ctx, inventory.CompleteCheckoutArgs{CheckoutID: c.ID}, nil)
		require.NoError(t, err)
		requireOutput(t, inventory.CheckoutOutput{Result: inventory.ResultUnchanged, State: inventory.StateCompleted},
			b.waitJob(t, inventory.CompleteCheckoutKind, c.ID))
		require.Equal(t, 2, b.stock(ctx, t, pid))
		got := b.bucketsOf(ctx, t, "HOT")
		require.Equal(t, 2, got[0].Stock+got[1].Stock)
		require.Equal(t, []int{0, 0}, claimedOf(got))
	})
}

// TestStrategiesGiveTheSameAnswers plays one scripted sequence of claims,
// releases and expiries against a single_row product and a buckets one, and
// checks every answer is the same.
func TestStrategiesGiveTheSameAnswers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t, nil)
	b.product(ctx, t, "ROW", 20)
	b.product(ctx, t, "BKT", 20)
	require.NoError(t, b.svc.SetStrategy(ctx, "BKT", inventory.StrategyBuckets, 6))

	type step struct {
		op  string // claim, abandon, expire
		qty int    // claim: quantity; abandon/expire: index of an earlier claim
	}
	script := []step{
		{"claim", 6}, {"claim", 6}, {"claim", 6}, {"claim", 3}, {"claim", 2}, // 18 held, 3 > 2 free, 20 held
		{"abandon", 1}, {"claim", 5}, {"claim", 2}, // 6 back: 14, then 19 held, 2 > 1 free
		{"expire", 0}, {"claim", 7}, {"claim", 1}, // 6 run out: 13, then 20 held
		{"expire", 2}, {"expire", 4}, {"claim", 9}, {"claim", 8}, // 6 and 2 run out: 12 held, 9 > 8 free
	}
	answers := map[string][]string{}
	for _, sku := range []string{"ROW", "BKT"} {
		var ids []int64
		for i, st := range script {
			var answer string
			switch st.op {
			case "claim":
				c, err := b.svc.BeginCheckout(ctx, sku, st.qty)
				var soldOut *inventory.SoldOutError
				switch {
				case err == nil:
					answer = fmt.Sprintf("claimed %d", st.qty)
				case errors.As(err, &soldOut):
					answer = fmt.Sprintf("sold out: %d available", soldOut.Available)
				default:
					require.NoError(t, err)
				}
				ids = append(ids, c.ID) // 0 when refused
			case "abandon":
				_, err := b.svc.Abandon(ctx, ids[st.qty])
				require.NoError(t, err)
				answer = "abandoned"
			case "expire":
				b.expireClaim(ctx, t, ids[st.qty])
				answer = "expired"
			}
			answers[sku] = append(answers[sku], fmt.Sprintf("%d %s", i, answer))
		}
	}
	require.Equal(t, answers["ROW"], answers["BKT"])
	require.Equal(t, []string{
		"0 claimed 6", "1 claimed 6", "2 claimed 6", "3 sold out: 2 available", "4 claimed 2",
		"5 abandoned", "6 claimed 5", "7 sold out: 1 available",
		"8 expired", "9 claimed 7", "10 sold out: 0 available",
		"11 expired", "12 expired", "13 sold out: 8 available", "14 claimed 8",
	}, answers["ROW"])
}

func TestRebalance(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t, nil)
	b.product(ctx, t, "HOT", 12)
	require.NoError(t, b.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, 3)) // 4, 4, 4

	// Drain one bucket by hand (as a sale might), keeping the total.
	_, err := b.schema.Pool.Exec(ctx, `UPDATE product_buckets SET stock = CASE bucket WHEN 0 THEN 0 WHEN 1 THEN 4 ELSE 8 END`)
	require.NoError(t, err)
	c, err := b.svc.BeginCheckout(ctx, "HOT", 3)
	require.NoError(t, err)
	held := b.claimBucket(ctx, t, c.ID)

	got, err := b.svc.Rebalance(ctx, "HOT")
	require.NoError(t, err)
	free := 12 - 3
	total := 0
	for _, bk := range got {
		wantClaimed := 0
		if bk.Index == held {
			wantClaimed = 3
		}
		require.Equal(t, wantClaimed, bk.Claimed)
		require.Equal(t, free/3, bk.Available(), "bucket %d", bk.Index)
		total += bk.Stock
	}
	require.Equal(t, 12, total)
	require.Equal(t, got, b.bucketsOf(ctx, t, "HOT"))

	b.product(ctx, t, "ROW", 5)
	_, err = b.svc.Rebalance(ctx, "ROW")
	require.ErrorIs(t, err, inventory.ErrWrongStrategy)
	_, err = b.svc.Rebalance(ctx, "NOPE")
	require.ErrorIs(t, err, inventory.ErrUnknownProduct)
}

// TestLockOrderNoDeadlock runs, on one buckets product and one single_row
// product, buyers, payers, abandoners, a strategy changer and a rebalancer
// at once: every transaction takes its locks product, bucket, checkout, so
// none deadlocks (Postgres would abort one with SQLSTATE 40P01).
func TestLockOrderNoDeadlock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t, &setupOpts{work: true, cfg: &inventory.Config{
		ClaimTTL: 200 * time.Millisecond, PaymentRetryTTL: 200 * time.Millisecond, PruneInterval: 100 * time.Millisecond,
	}})
	b.product(ctx, t, "HOT", 40)
	require.NoError(t, b.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, 4))

	deadline := time.Now().Add(3 * time.Second)
	errs := make(chan error, 16)
	run := func(fn func() error) {
		go func() {
			for time.Now().Before(deadline) {
				if err := fn(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	ok := func(err error) error {
		if err == nil || errors.Is(err, inventory.ErrSoldOut) || errors.Is(err, inventory.ErrCheckoutClosed) || errors.Is(err, inventory.ErrClaimsOpen) {
			return nil
		}
		return err
	}
	for i := range 6 {
		run(func() error {
			c, err := b.svc.BeginCheckout(ctx, "HOT", 1+i%3)
			if err != nil {
				return ok(err)
			}
			switch i % 3 {
			case 0:
				_, err = b.svc.PaymentAuthorized(ctx, c.ID)
			case 1:
				_, err = b.svc.Abandon(ctx, c.ID)
			default:
				_, err = b.svc.PaymentFailed(ctx, c.ID)
			}
			return ok(err)
		})
	}
	run(func() error { _, err := b.svc.Rebalance(ctx, "HOT"); return ok(err) })
	run(func() error {
		err := b.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, 4)
		time.Sleep(20 * time.Millisecond)
		return ok(err)
	})
	for range 8 {
		require.NoError(t, <-errs)
	}
	checkouts := b.count(ctx, t, `SELECT count(*) FROM checkouts`)
	t.Logf("%d checkouts", checkouts)
	require.Greater(t, checkouts, 40, "the buyers ran")
	require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE state IN ('retryable', 'discarded')`))
	var stock, bucketStock int
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `
SELECT p.stock, (SELECT sum(stock) FROM product_buckets WHERE product_id = p.id)
  FROM products p WHERE sku = 'HOT'`).Scan(&stock, &bucketStock))
	require.Equal(t, stock, bucketStock)
}
