package inventory_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/inventory"
)

// TestFlashSaleNoOversell runs a flash sale under each claim strategy: 64
// buyers' goroutines, 1,000 checkout attempts on a product of 100 units,
// with random payment failures, abandons and expiries (short TTLs) while a
// River client works the jobs, and a sampler that checks at every sample,
// in one snapshot, that the unexpired claims fit in the stock (and, with
// buckets, that the buckets split the stock and count their claims).
func TestFlashSaleNoOversell(t *testing.T) {
	t.Parallel()
	t.Run("single_row", func(t *testing.T) {
		t.Parallel()
		flashSale(t, inventory.StrategySingleRow, 0)
	})
	t.Run("buckets_8", func(t *testing.T) {
		t.Parallel()
		flashSale(t, inventory.StrategyBuckets, 8)
	})
}

func flashSale(t *testing.T, strategy inventory.Strategy, buckets int) {
	ctx := context.Background()

	// The quick suite runs a smaller sale, with as many buyers per unit:
	// the same contention on one row, a third of the CPU.
	initialStock, goroutines, attempts := 40, 32, int64(400)
	if dbtest.Long {
		initialStock, goroutines, attempts = 100, 64, 1000
	}
	const soldOutTries = 200 // a buyer retries a sold-out checkout at most so often
	b := setup(ctx, t, &setupOpts{work: true, cfg: &inventory.Config{
		// Short enough that walked-away claims expire many times during
		// the sale, long enough that a buyer who pays at once under a
		// loaded -race run (go test ./...) usually pays in time.
		ClaimTTL:        time.Second,
		PaymentRetryTTL: 1500 * time.Millisecond,
		PruneInterval:   500 * time.Millisecond,
		LockTimeout:     2 * time.Second,
	}})
	pid := b.product(ctx, t, "FLASH-1", initialStock)
	require.NoError(t, b.svc.SetStrategy(ctx, "FLASH-1", strategy, buckets))

	// The sampler: one statement, so one snapshot, per sample.
	var (
		samples    atomic.Int64
		mu         sync.Mutex
		violations []string
		stopSample = make(chan struct{})
		sampled    = make(chan struct{})
	)
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stopSample:
				return
			default:
			}
			// Live claims are judged by clock_timestamp(), read after the
			// statement's snapshot: now() is the statement's start, which
			// can precede its snapshot. A claimer that committed in between,
			// reusing the unit of a claim expired by its own clock, would
			// make that claim look live beside the new one (a loaded -race
			// run once saw "stock 86, claimed 87" that way).
			var stock, claimed, completed, bucketStock, badBuckets int
			err := b.schema.Pool.QueryRow(ctx, `
SELECT p.stock,
       coalesce((SELECT sum(quantity) FROM inventory_claims WHERE product_id = p.id AND expires_at > clock_timestamp()), 0),
       coalesce((SELECT sum(quantity) FROM checkouts WHERE product_id = p.id AND state = 'completed'), 0),
       coalesce((SELECT sum(stock) FROM product_buckets WHERE product_id = p.id), 0),
       (SELECT count(*) FROM product_buckets pb
         WHERE pb.product_id = p.id
           AND pb.claimed <> coalesce((SELECT sum(quantity) FROM inventory_claims cl
                                        WHERE cl.product_id = pb.product_id AND cl.bucket = pb.bucket), 0))
  FROM products p WHERE p.id = $1`, pid).Scan(&stock, &claimed, &completed, &bucketStock, &badBuckets)
			mu.Lock()
			switch {
			case err != nil:
				violations = append(violations, "sample: "+err.Error())
			case claimed > stock || stock < 0 || stock+completed != initialStock:
				violations = append(violations, fmt.Sprintf("stock %d, claimed %d, completed %d", stock, claimed, completed))
			case buckets > 0 && (bucketStock != stock || badBuckets != 0):
				violations = append(violations, fmt.Sprintf("stock %d, buckets' stock %d, buckets miscounting their claims %d", stock, bucketStock, badBuckets))
			}
			mu.Unlock()
			samples.Add(1)
		}
	}()

	var (
		next                             atomic.Int64
		begun, soldOut, busy, paid, lost atomic.Int64
		abandoned, walkedAway, failed    atomic.Int64
		errs                             = make(chan error, goroutines)
		done                             = make(chan struct{})
		doneOnce                         sync.Once
		wg                               sync.WaitGroup
	)
	// pause is a buyer's back-off after a sold-out or busy answer; it ends
	// early when the sale is over.
	pause := func(rng *rand.Rand) bool {
		timer := time.NewTimer(time.Duration(2+rng.IntN(8)) * time.Millisecond)
		defer timer.Stop()
		select {
		case <-done:
			return false
		case <-timer.C:
			return true
		}
	}
	pay := func(id int64) error {
		_, err := b.svc.PaymentAuthorized(ctx, id)
		switch {
		case err == nil:
			if paid.Add(1) == int64(initialStock) {
				doneOnce.Do(func() { close(done) })
			}
		case errors.Is(err, inventory.ErrCheckoutClosed):
			lost.Add(1) // the claim ran out first
		case errors.Is(err, inventory.ErrBusy):
			busy.Add(1)
		default:
			return err
		}
		return nil
	}
	buyer := func(rng *rand.Rand) error {
		var c inventory.Checkout
		for try := 0; ; try++ {
			select {
			case <-done:
				return nil
			default:
			}
			var err error
			c, err = b.svc.BeginCheckout(ctx, "FLASH-1", 1)
			if err == nil {
				break
			}
			switch {
			case errors.Is(err, inventory.ErrSoldOut):
				soldOut.Add(1)
			case errors.Is(err, inventory.ErrBusy):
				busy.Add(1)
			default:
				return err
			}
			if try == soldOutTries || !pause(rng) {
				return nil
			}
		}
		begun.Add(1)
		switch r := rng.IntN(100); {
		case r < 45: // pays at once
			return pay(c.ID)
		case r < 60: // a card is refused, then the buyer pays
			failed.Add(1)
			if _, err := b.svc.PaymentFailed(ctx, c.ID); err != nil && !errors.Is(err, inventory.ErrCheckoutClosed) && !errors.Is(err, inventory.ErrBusy) {
				return err
			}
			return pay(c.ID)
		case r < 70: // a card is refused, then the buyer gives up
			failed.Add(1)
			if _, err := b.svc.PaymentFailed(ctx, c.ID); err != nil && !errors.Is(err, inventory.ErrCheckoutClosed) && !errors.Is(err, inventory.ErrBusy) {
				return err
			}
			abandoned.Add(1)
			if _, err := b.svc.Abandon(ctx, c.ID); err != nil && !errors.Is(err, inventory.ErrCheckoutClosed) && !errors.Is(err, inventory.ErrBusy) {
				return err
			}
			return nil
		case r < 75: // a card is refused and the buyer walks away
			failed.Add(1)
			walkedAway.Add(1)
			if _, err := b.svc.PaymentFailed(ctx, c.ID); err != nil && !errors.Is(err, inventory.ErrCheckoutClosed) && !errors.Is(err, inventory.ErrBusy) {
				return err
			}
			return nil
		case r < 90: // gives up
			abandoned.Add(1)
			// Under load the claim may have run out and been expired first.
			if _, err := b.svc.Abandon(ctx, c.ID); err != nil && !errors.Is(err, inventory.ErrCheckoutClosed) && !errors.Is(err, inventory.ErrBusy) {
				return err
			}
			return nil
		default: // walks away: the claim expires
			walkedAway.Add(1)
			return nil
		}
	}
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 42))
			for next.Add(1) <= attempts {
				if err := buyer(rng); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	t.Logf("buyers %d, checkouts begun %d, sold out %d, busy %d, paid %d, lost to expiry %d, payment failures %d, abandoned %d, walked away %d",
		min(next.Load(), attempts), begun.Load(), soldOut.Load(), busy.Load(), paid.Load(), lost.Load(), failed.Load(), abandoned.Load(), walkedAway.Load())
	require.Equal(t, int64(initialStock), paid.Load(), "enough buyers paid to sell every unit")

	// Drain: every paid checkout completed, every other one released by an
	// expiry job or the pruner.
	require.Eventually(t, func() bool {
		var pending int
		err := b.schema.Pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM checkouts WHERE state IN ('open', 'payment_failed', 'paid'))
     + (SELECT count(*) FROM river_job WHERE kind = $1 AND state NOT IN ('completed', 'cancelled', 'discarded'))`,
			inventory.CompleteCheckoutKind).Scan(&pending)
		return err == nil && pending == 0
	}, 30*time.Second, 20*time.Millisecond)
	close(stopSample)
	<-sampled

	mu.Lock()
	require.Empty(t, violations)
	mu.Unlock()
	require.Positive(t, samples.Load())
	t.Logf("samples %d", samples.Load())

	var stock, completed, claims int
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `
SELECT (SELECT stock FROM products WHERE id = $1),
       (SELECT coalesce(sum(quantity), 0) FROM checkouts WHERE product_id = $1 AND state = 'completed'),
       (SELECT count(*) FROM inventory_claims)`, pid).Scan(&stock, &completed, &claims))
	require.Equal(t, initialStock, stock+completed)
	require.Equal(t, initialStock, completed, "exactly the stock was sold")
	require.Zero(t, stock)
	require.Zero(t, claims)
	require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE state IN ('retryable', 'discarded')`), "no job failed")
	if buckets > 0 {
		require.Equal(t, buckets, b.count(ctx, t, `SELECT count(*) FROM product_buckets WHERE product_id = $1 AND stock = 0 AND claimed = 0`, pid),
			"every bucket sold out and holds nothing")
	}
}
