package inventory_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aftercommit/aftercommit/inventory"
)

// BenchmarkClaims: BeginCheckout on ONE hot product, one claim per op, by
// 1, 8 and 32 concurrent buyers, under the single-row lock (the baseline
// of each group) and with the stock split into 8 and 32 buckets. Each claim
// is the full checkout transaction: the claim, the checkout row and its
// scheduled ExpireCheckout job, committed. The stock never runs out, and
// claims live one second, so the product holds about one second of sales of
// unexpired claims, as in a flash sale. Each sub-benchmark starts from empty
// tables. The River client only inserts.
//
//	for i in 1 2 3 4 5 6; do go test -run '^$' -bench BenchmarkClaims -benchtime 3000x -count 1 ./inventory; done | go run ./internal/benchratio
func BenchmarkClaims(b *testing.B) {
	ctx := context.Background()
	bb := setup(ctx, b, &setupOpts{maxConns: 36, cfg: &inventory.Config{ClaimTTL: time.Second}})

	for _, buyers := range []int{1, 8, 32} {
		for _, buckets := range []int{0, 8, 32} {
			name := "single_row"
			if buckets > 0 {
				name = fmt.Sprintf("buckets_%d", buckets)
			}
			b.Run(fmt.Sprintf("buyers=%d/%s", buyers, name), func(b *testing.B) {
				if _, err := bb.schema.Pool.Exec(ctx, `TRUNCATE inventory_claims, checkouts, product_buckets, products, river_job`); err != nil {
					b.Fatal(err)
				}
				bb.product(ctx, b, "HOT", 1_000_000_000)
				if buckets > 0 {
					if err := bb.svc.SetStrategy(ctx, "HOT", inventory.StrategyBuckets, buckets); err != nil {
						b.Fatal(err)
					}
				}
				var (
					next    atomic.Int64
					wg      sync.WaitGroup
					errOnce sync.Once
					failure error
				)
				b.ResetTimer()
				for range buyers {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							if _, err := bb.svc.BeginCheckout(ctx, "HOT", 1); err != nil {
								errOnce.Do(func() { failure = err })
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				if failure != nil {
					b.Fatal(failure)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "claims/s")
				if n := bb.count(ctx, b, `SELECT count(*) FROM inventory_claims`); n != b.N {
					b.Fatalf("%d claims, want %d", n, b.N)
				}
			})
		}
	}
}
