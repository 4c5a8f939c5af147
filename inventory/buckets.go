package inventory

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/aftercommit/aftercommit/outbox"
)

// Strategy is how checkouts claim a product's units (products.claim_strategy).
type Strategy string

// The claim strategies. Both give the same answers: never more units
// claimed than the stock, and ErrSoldOut only when the product's unclaimed
// units (counting expired claims as released) are fewer than asked for.
const (
	// StrategySingleRow: a claim locks the product row and counts the
	// unexpired claims. Simple and exact; every buyer of the product waits
	// for the one before.
	StrategySingleRow Strategy = "single_row"
	// StrategyBuckets: the stock is split over buckets (rows of
	// product_buckets); a claim takes a free bucket that has the units
	// (FOR UPDATE SKIP LOCKED) so buyers of a hot product do not queue on
	// one row. When no free bucket has them, the claim locks the product and
	// every bucket, releases the claims that have run out, and moves units
	// between buckets if it must, before it answers ErrSoldOut.
	StrategyBuckets Strategy = "buckets"
)

// MaxBuckets is the most buckets a product may be split into.
const MaxBuckets = 256

// Bucket is one share of a buckets product's stock.
type Bucket struct {
	// Index is the bucket's number, from 0.
	Index int
	// Stock is the bucket's share of the product's stock.
	Stock int
	// Claimed is the quantity its claims hold, expired or not, until each
	// is released.
	Claimed int
}

// Available is the bucket's unclaimed stock.
func (b Bucket) Available() int { return b.Stock - b.Claimed }

// SetStrategy switches the claim strategy of the product sku. buckets is
// the number of buckets for StrategyBuckets (1…MaxBuckets), and must be 0
// for StrategySingleRow; the stock is split as evenly as it can be. Setting
// the strategy a product already has re-splits its buckets.
//
// A switch needs the product to hold no claim: claims that have run out are
// released first, and if any other remains it returns a *ClaimsOpenError
// (ErrClaimsOpen) and changes nothing. An unknown SKU is ErrUnknownProduct;
// a bad strategy or bucket count is a *ValidationError.
func (s *Service) SetStrategy(ctx context.Context, sku string, strategy Strategy, buckets int) error {
	if err := validSKU(sku); err != nil {
		return err
	}
	switch {
	case strategy == StrategySingleRow && buckets != 0:
		return &ValidationError{Field: "buckets", Message: fmt.Sprintf("must be 0 for %s, got %d", strategy, buckets)}
	case strategy == StrategyBuckets && (buckets < 1 || buckets > MaxBuckets):
		return &ValidationError{Field: "buckets", Message: fmt.Sprintf("must be in 1…%d, got %d", MaxBuckets, buckets)}
	case strategy != StrategySingleRow && strategy != StrategyBuckets:
		return &ValidationError{Field: "strategy", Message: fmt.Sprintf("must be %q or %q, got %q", StrategySingleRow, StrategyBuckets, strategy)}
	}
	err := s.inTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		id, _, err := s.lockProductAndBuckets(ctx, tx, sku)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, expireProductClaimsSQL, id); err != nil {
			return fmt.Errorf("inventory: releasing the run-out claims of %q: %w", sku, err)
		}
		var open int
		if err := tx.QueryRow(ctx, countClaimsSQL, id).Scan(&open); err != nil {
			return fmt.Errorf("inventory: counting the claims of %q: %w", sku, err)
		}
		if open > 0 {
			return &ClaimsOpenError{SKU: sku, Claims: open}
		}
		if _, err := tx.Exec(ctx, deleteBucketsSQL, id); err != nil {
			return fmt.Errorf("inventory: deleting the buckets of %q: %w", sku, err)
		}
		if _, err := tx.Exec(ctx, setStrategySQL, id, strategy, buckets); err != nil {
			return fmt.Errorf("inventory: setting the strategy of %q: %w", sku, err)
		}
		return nil
	})
	return translate(ctx, "setting a claim strategy", err)
}

// Rebalance spreads the unclaimed units of the buckets product sku evenly
// over its buckets (each keeps what its claims hold) and returns the
// buckets. Claims take any free bucket that has enough, and move units
// themselves when none has, so Rebalance is never needed for correctness;
// it makes the fast path likelier after a sale drained some buckets more
// than others. A single_row product is ErrWrongStrategy.
func (s *Service) Rebalance(ctx context.Context, sku string) ([]Bucket, error) {
	if err := validSKU(sku); err != nil {
		return nil, err
	}
	var out []Bucket
	err := s.inTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		id, buckets, err := s.lockProductAndBuckets(ctx, tx, sku)
		if err != nil {
			return err
		}
		if buckets == nil {
			return fmt.Errorf("%w: %q uses %s", ErrWrongStrategy, sku, StrategySingleRow)
		}
		out = spread(buckets)
		return setStocks(ctx, tx, id, out)
	})
	if err != nil {
		return nil, translate(ctx, "rebalancing", err)
	}
	return out, nil
}

// Buckets returns the buckets of the product sku, in order; none for a
// single_row product.
func (s *Service) Buckets(ctx context.Context, sku string) ([]Bucket, error) {
	if err := validSKU(sku); err != nil {
		return nil, err
	}
	var id int64
	err := s.pool.QueryRow(ctx, `SELECT id FROM products WHERE sku = $1`, sku).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %q", ErrUnknownProduct, sku)
	}
	if err != nil {
		return nil, fmt.Errorf("inventory: reading product %q: %w", sku, err)
	}
	rows, err := s.pool.Query(ctx, bucketsSQL, id)
	if err != nil {
		return nil, fmt.Errorf("inventory: reading the buckets of %q: %w", sku, err)
	}
	return collectBuckets(rows)
}

// lockProductAndBuckets locks the product sku, then its buckets in order,
// and returns its id and buckets (nil under single_row).
func (s *Service) lockProductAndBuckets(ctx context.Context, tx pgx.Tx, sku string) (int64, []Bucket, error) {
	var (
		id       int64
		strategy Strategy
	)
	err := tx.QueryRow(ctx, `SELECT id, claim_strategy FROM products WHERE sku = $1 FOR NO KEY UPDATE`, sku).Scan(&id, &strategy)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, fmt.Errorf("%w: %q", ErrUnknownProduct, sku)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("inventory: locking product %q: %w", sku, err)
	}
	if strategy != StrategyBuckets {
		return id, nil, nil
	}
	buckets, err := lockBuckets(ctx, tx, id)
	return id, buckets, err
}

// lockBuckets locks every bucket of product id in order and reads them.
func lockBuckets(ctx context.Context, tx pgx.Tx, id int64) ([]Bucket, error) {
	rows, err := tx.Query(ctx, lockBucketsSQL, id)
	if err != nil {
		return nil, fmt.Errorf("inventory: locking the buckets of product %d: %w", id, err)
	}
	return collectBuckets(rows)
}

func collectBuckets(rows pgx.Rows) ([]Bucket, error) {
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Bucket, error) {
		var (
			b   Bucket
			idx int16
		)
		err := row.Scan(&idx, &b.Stock, &b.Claimed)
		b.Index = int(idx)
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("inventory: reading buckets: %w", err)
	}
	return out, nil
}

// setStocks writes the stocks of buckets (held by tx) of product id.
func setStocks(ctx context.Context, tx pgx.Tx, id int64, buckets []Bucket) error {
	idx := make([]int16, len(buckets))
	stocks := make([]int32, len(buckets))
	for i, b := range buckets {
		idx[i], stocks[i] = int16(b.Index), int32(b.Stock) //nolint:gosec // bounded by MaxBuckets and the stock column
	}
	if _, err := tx.Exec(ctx, setBucketStocksSQL, id, idx, stocks); err != nil {
		return fmt.Errorf("inventory: moving units between the buckets of product %d: %w", id, err)
	}
	return nil
}

// claimBucketsSlow claims c.Quantity units of a buckets product whose row
// tx holds, when the fast path found no free bucket with them: it locks
// every bucket (waiting for the claims in flight), and claims in a bucket
// that has the units; failing that, it releases the claims that have run
// out and, if the product then has the units but no bucket does, moves
// units into one bucket. Otherwise the product is sold out.
func (s *Service) claimBucketsSlow(ctx context.Context, tx pgx.Tx, c *Checkout) error {
	buckets, err := lockBuckets(ctx, tx, c.ProductID)
	if err != nil {
		return err
	}
	target, ok := pickBucket(buckets, c.Quantity)
	if !ok {
		var expired int64
		if err := tx.QueryRow(ctx, expireProductClaimsSQL, c.ProductID).Scan(&expired); err != nil {
			return fmt.Errorf("inventory: releasing the run-out claims of %q: %w", c.SKU, err)
		}
		if expired > 0 {
			rows, err := tx.Query(ctx, bucketsSQL, c.ProductID) // still ours
			if err != nil {
				return fmt.Errorf("inventory: reading the buckets of %q: %w", c.SKU, err)
			}
			if buckets, err = collectBuckets(rows); err != nil {
				return err
			}
		}
		var moved []Bucket
		target, moved, ok = gather(buckets, c.Quantity)
		if !ok {
			available := 0
			for _, b := range buckets {
				available += b.Available()
			}
			return &SoldOutError{SKU: c.SKU, Requested: c.Quantity, Available: available}
		}
		if len(moved) > 0 {
			if err := setStocks(ctx, tx, c.ProductID, moved); err != nil {
				return err
			}
		}
	}
	if err := s.claimInBucket(ctx, tx, c, int16(target)); err != nil { //nolint:gosec // a bucket index
		return err
	}
	if c.ID == 0 {
		return fmt.Errorf("inventory: claiming %d of %q: bucket %d lacks the units it was given", c.Quantity, c.SKU, target)
	}
	return nil
}

// pickBucket returns the bucket with the most available units if it has
// quantity of them.
func pickBucket(buckets []Bucket, quantity int) (int, bool) {
	if len(buckets) == 0 {
		return 0, false
	}
	best := slices.MaxFunc(buckets, func(a, b Bucket) int { return cmp.Compare(a.Available(), b.Available()) })
	return best.Index, best.Available() >= quantity
}

// gather plans a claim of quantity units in one bucket: the bucket with the
// most available units, topped up from the others, richest first. It
// returns the target and the buckets whose stock changes (with their new
// stock), or false when all the buckets together lack the units.
func gather(buckets []Bucket, quantity int) (int, []Bucket, bool) {
	total := 0
	for _, b := range buckets {
		total += b.Available()
	}
	if len(buckets) == 0 || total < quantity {
		return 0, nil, false
	}
	order := slices.Clone(buckets)
	slices.SortStableFunc(order, func(a, b Bucket) int { return cmp.Compare(b.Available(), a.Available()) })
	target := order[0]
	need := quantity - target.Available()
	if need <= 0 {
		return target.Index, nil, true
	}
	var moved []Bucket
	for _, b := range order[1:] {
		if need == 0 {
			break
		}
		take := min(need, b.Available())
		if take == 0 {
			continue
		}
		b.Stock -= take
		target.Stock += take
		need -= take
		moved = append(moved, b)
	}
	return target.Index, append(moved, target), true
}

// spread returns buckets with their unclaimed units spread evenly: each
// keeps its claimed units and gets an equal share of the rest, the first
// ones one more when it does not divide.
func spread(buckets []Bucket) []Bucket {
	out := slices.Clone(buckets)
	free := 0
	for _, b := range out {
		free += b.Available()
	}
	n := len(out)
	for i := range out {
		share := free / n
		if i < free%n {
			share++
		}
		out[i].Stock = out[i].Claimed + share
	}
	return out
}
