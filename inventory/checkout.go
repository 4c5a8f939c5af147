package inventory

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// MaxQuantity is the largest quantity one checkout may ask for.
const MaxQuantity = 1_000_000

// MaxSKUBytes is the longest SKU (products.sku).
const MaxSKUBytes = 100

// State is the state of a checkout (checkouts.state).
type State string

// The states of a checkout. Open, payment_failed and paid hold a claim;
// the others are final and hold none.
const (
	// StateOpen: the buyer is paying; the units are held until the claim
	// expires.
	StateOpen State = "open"
	// StatePaymentFailed: a payment failed; the units are held for
	// Config.PaymentRetryTTL from the failure.
	StatePaymentFailed State = "payment_failed"
	// StatePaid: the payment was authorized; the units are held until
	// CompleteCheckout sells them.
	StatePaid State = "paid"
	// StateCompleted: the units were taken off the stock.
	StateCompleted State = "completed"
	// StateExpired: the claim ran out before the buyer paid.
	StateExpired State = "expired"
	// StateAbandoned: the buyer gave up; the units were released at once.
	StateAbandoned State = "abandoned"
)

// Checkout is a buyer's checkout of one product.
type Checkout struct {
	// ID is the checkout's ID.
	ID int64
	// ProductID is the product's ID.
	ProductID int64
	// SKU is the product's SKU.
	SKU string
	// Quantity is the number of units claimed.
	Quantity int
	// State is the checkout's state after the call that returned it.
	State State
	// CreatedAt is when the checkout began.
	CreatedAt time.Time
	// UpdatedAt is when its state last changed.
	UpdatedAt time.Time
	// ExpiresAt is when its claim expires (expired) unless it is paid.
	ExpiresAt time.Time
}

// holdsClaim reports whether a checkout in state s holds a claim that can
// still expire.
func (s State) holdsClaim() bool { return s == StateOpen || s == StatePaymentFailed }

// BeginCheckout claims quantity units of the product sku for a new
// checkout, for Config.ClaimTTL.
//
// Under StrategySingleRow, in one transaction it locks the product row
// (SELECT … FOR NO KEY UPDATE), sums its unexpired claims and, when
// stock − claimed ≥ quantity, inserts an open checkout with its claim and
// schedules ExpireCheckoutArgs at the claim's expiry. Under StrategyBuckets
// it claims in one bucket instead (see the package documentation), with
// the same answers. Otherwise it returns a *SoldOutError
// (errors.Is(err, ErrSoldOut)).
// A SKU that names no product is ErrUnknownProduct; a quantity out of range
// or an empty SKU is a *ValidationError, found before any SQL runs. A lock
// or statement timeout is a *BusyError (ErrBusy). Nothing is written when
// an error is returned.
func (s *Service) BeginCheckout(ctx context.Context, sku string, quantity int) (Checkout, error) {
	return s.BeginCheckoutTx(ctx, nil, sku, quantity)
}

// BeginCheckoutTx is BeginCheckout in the caller's transaction tx: the
// checkout, its claim and its expiry job commit or roll back with the
// caller's rows. In a transaction from Outbox.InTx the job is written with
// its COMMIT; in any other pgx.Tx before BeginCheckoutTx returns, in one
// more round trip (outbox.Outbox.JoinTx). The claim's locks are held until
// the caller ends tx, so keep the rest of it short. Config's lock and
// statement timeouts are not set on a caller's transaction: set them in
// its BEGIN if it needs them. A bucket claim that must start over under
// the product lock rolls back to a savepoint, not the caller's work. After
// an error other than a *ValidationError, *SoldOutError or
// ErrUnknownProduct the transaction is aborted and must be rolled back. A
// nil tx is a transaction of its own, as BeginCheckout.
func (s *Service) BeginCheckoutTx(ctx context.Context, tx pgx.Tx, sku string, quantity int) (Checkout, error) {
	if err := validSKU(sku); err != nil {
		return Checkout{}, err
	}
	switch {
	case quantity <= 0:
		return Checkout{}, &ValidationError{Field: "quantity", Message: fmt.Sprintf("must be more than zero, got %d", quantity)}
	case quantity > MaxQuantity:
		return Checkout{}, &ValidationError{Field: "quantity", Message: fmt.Sprintf("must be at most %d, got %d", MaxQuantity, quantity)}
	}

	c := Checkout{SKU: sku, Quantity: quantity}
	var err error
	if tx == nil {
		begin := func(claim func(context.Context, pgx.Tx, *Checkout) error) error {
			return s.inTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
				if err := claim(ctx, tx, &c); err != nil {
					return err
				}
				return tx.Enqueue(ExpireCheckoutArgs{CheckoutID: c.ID}, jobs.At(c.ExpiresAt))
			})
		}
		err = begin(s.claim)
		if errors.Is(err, errStartOver) {
			err = begin(s.claimLocked)
		}
	} else {
		err = s.inTx(ctx, tx, func(ctx context.Context, tx *outbox.Tx) error {
			// Rolling back to the savepoint releases the bucket lock the
			// first try may hold, as the rollback of a whole transaction does.
			err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error { return s.claim(ctx, sp, &c) })
			if errors.Is(err, errStartOver) {
				err = s.claimLocked(ctx, tx, &c)
			}
			if err != nil {
				return err
			}
			return tx.Enqueue(ExpireCheckoutArgs{CheckoutID: c.ID}, jobs.At(c.ExpiresAt))
		})
	}
	if err != nil {
		return Checkout{}, translate(ctx, "beginning a checkout", err)
	}
	return c, nil
}

// errStartOver rolls back a claim that may hold a bucket lock it did not
// use, so that the claim starts over under the product lock without
// holding a bucket out of order.
var errStartOver = errors.New("inventory: start the claim over under the product lock")

// validSKU reports a SKU that cannot name a product.
func validSKU(sku string) error {
	switch {
	case sku == "":
		return &ValidationError{Field: "sku", Message: "is required"}
	case len(sku) > MaxSKUBytes:
		return &ValidationError{Field: "sku", Message: fmt.Sprintf("must be at most %d bytes, got %d", MaxSKUBytes, len(sku))}
	case !utf8.ValidString(sku) || strings.ContainsRune(sku, 0):
		return &ValidationError{Field: "sku", Message: "must be text (UTF-8 without NUL characters)"}
	}
	return nil
}

// claim claims c.Quantity units of c.SKU for a new checkout in tx and
// fills c. Under single_row it takes the product lock and counts; under
// buckets it claims in a free bucket that has the units, in one statement,
// else waits for one bucket that had them, else takes the slow path under
// the product lock (claimLocked). It returns errStartOver when the slow
// path is needed but tx may hold a bucket lock.
func (s *Service) claim(ctx context.Context, tx pgx.Tx, c *Checkout) error {
	var (
		strategy Strategy
		stock    *int
		nc       newCheckout
		wait     *int16
		held     bool
	)
	err := tx.QueryRow(ctx, beginClaimSQL, c.SKU, c.Quantity, s.cfg.ClaimTTL.Seconds()).
		Scan(append(append([]any{&c.ProductID, &strategy, &stock}, nc.dest()...), &wait, &held)...)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %q", ErrUnknownProduct, c.SKU)
	}
	if err != nil {
		return fmt.Errorf("inventory: claiming %d of %q: %w", c.Quantity, c.SKU, err)
	}
	switch {
	case nc.fill(c): // a free bucket had the units
		return nil
	case strategy == StrategySingleRow && stock != nil: // the product row is ours
		return s.claimSingleRow(ctx, tx, c, *stock)
	case held:
		return errStartOver
	case wait != nil:
		// Every bucket with the units was held: wait for one of them.
		if err := s.claimInBucket(ctx, tx, c, *wait); err != nil || c.ID != 0 {
			return err
		}
		return errStartOver // it ran out meanwhile
	}
	// No bucket had the units, or the strategy changed since the
	// statement's snapshot; tx holds no lock.
	return s.claimLocked(ctx, tx, c)
}

// claimLocked locks the product, then claims by its strategy.
func (s *Service) claimLocked(ctx context.Context, tx pgx.Tx, c *Checkout) error {
	if c.ProductID == 0 {
		err := tx.QueryRow(ctx, `SELECT id FROM products WHERE sku = $1`, c.SKU).Scan(&c.ProductID)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %q", ErrUnknownProduct, c.SKU)
		}
		if err != nil {
			return fmt.Errorf("inventory: reading product %q: %w", c.SKU, err)
		}
	}
	var (
		strategy Strategy
		stock    int
	)
	if err := tx.QueryRow(ctx, lockProductSQL, c.ProductID).Scan(&strategy, &stock); err != nil {
		return fmt.Errorf("inventory: locking product %q: %w", c.SKU, err)
	}
	if strategy == StrategySingleRow {
		return s.claimSingleRow(ctx, tx, c, stock)
	}
	return s.claimBucketsSlow(ctx, tx, c)
}

// claimInBucket claims c.Quantity units in bucket of c.ProductID, waiting
// for its lock, and fills c; c.ID stays 0 when the bucket lacks the units.
func (s *Service) claimInBucket(ctx context.Context, tx pgx.Tx, c *Checkout, bucket int16) error {
	var nc newCheckout
	err := tx.QueryRow(ctx, claimInBucketSQL, c.ProductID, c.Quantity, s.cfg.ClaimTTL.Seconds(), bucket).
		Scan(nc.dest()...)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("inventory: claiming %d of %q in bucket %d: %w", c.Quantity, c.SKU, bucket, err)
	}
	nc.fill(c)
	return nil
}

// claimSingleRow claims under the product row lock tx holds.
func (s *Service) claimSingleRow(ctx context.Context, tx pgx.Tx, c *Checkout, stock int) error {
	var (
		available int
		nc        newCheckout
	)
	err := tx.QueryRow(ctx, claimSingleRowSQL, c.ProductID, c.Quantity, s.cfg.ClaimTTL.Seconds(), stock).
		Scan(append([]any{&available}, nc.dest()...)...)
	if err != nil {
		return fmt.Errorf("inventory: claiming %d of %q: %w", c.Quantity, c.SKU, err)
	}
	if !nc.fill(c) {
		return &SoldOutError{SKU: c.SKU, Requested: c.Quantity, Available: max(available, 0)}
	}
	return nil
}

// newCheckout scans the checkout a claim statement may have inserted: all
// NULL when it inserted none.
type newCheckout struct {
	id                             *int64
	state                          *State
	createdAt, updatedAt, expireAt *time.Time
}

func (n *newCheckout) dest() []any {
	return []any{&n.id, &n.state, &n.createdAt, &n.updatedAt, &n.expireAt}
}

// fill copies the checkout into c and reports whether there was one.
func (n *newCheckout) fill(c *Checkout) bool {
	if n.id == nil {
		return false
	}
	c.ID, c.State, c.CreatedAt, c.UpdatedAt, c.ExpiresAt = *n.id, *n.state, *n.createdAt, *n.updatedAt, *n.expireAt
	return true
}

// PaymentFailed records a failed payment: the checkout's claim is extended
// to Config.PaymentRetryTTL from now, so the buyer can fix their card, its
// state becomes payment_failed, and a new ExpireCheckoutArgs is scheduled
// at the new expiry (the earlier one will find the claim not yet expired
// and be skipped). A checkout that is not open or payment_failed, or whose
// claim has already run out, is a *StateError (ErrCheckoutClosed).
func (s *Service) PaymentFailed(ctx context.Context, checkoutID int64) (Checkout, error) {
	return s.PaymentFailedTx(ctx, nil, checkoutID)
}

// PaymentFailedTx is PaymentFailed in the caller's transaction tx, as
// BeginCheckoutTx is BeginCheckout. A nil tx is a transaction of its own.
func (s *Service) PaymentFailedTx(ctx context.Context, tx pgx.Tx, checkoutID int64) (Checkout, error) {
	c, err := s.change(ctx, tx, checkoutID, "record a failed payment of", func(ctx context.Context, tx *outbox.Tx, c *Checkout, claimExpired bool) error {
		if !c.State.holdsClaim() || claimExpired {
			return stateError(c, claimExpired, "record a failed payment of")
		}
		if err := tx.QueryRow(ctx, extendClaimSQL, c.ID, s.cfg.PaymentRetryTTL.Seconds(), StatePaymentFailed).
			Scan(&c.UpdatedAt, &c.ExpiresAt); err != nil {
			return fmt.Errorf("inventory: extending the claim of checkout %d: %w", c.ID, err)
		}
		c.State = StatePaymentFailed
		return tx.Enqueue(ExpireCheckoutArgs{CheckoutID: c.ID}, jobs.At(c.ExpiresAt))
	})
	return c, err
}

// Abandon releases the checkout's units at once: its claim is deleted and
// its state becomes abandoned. Abandoning an abandoned checkout changes
// nothing; a paid, completed or expired one is a *StateError.
func (s *Service) Abandon(ctx context.Context, checkoutID int64) (Checkout, error) {
	return s.AbandonTx(ctx, nil, checkoutID)
}

// AbandonTx is Abandon in the caller's transaction tx, as BeginCheckoutTx is
// BeginCheckout. A nil tx is a transaction of its own.
func (s *Service) AbandonTx(ctx context.Context, tx pgx.Tx, checkoutID int64) (Checkout, error) {
	// The claim is released whether or not it has run out: no claimExpired.
	return s.change(ctx, tx, checkoutID, "abandon", func(ctx context.Context, tx *outbox.Tx, c *Checkout, _ bool) error {
		if c.State == StateAbandoned {
			return nil
		}
		if !c.State.holdsClaim() {
			return stateError(c, false, "abandon")
		}
		if err := tx.QueryRow(ctx, releaseClaimSQL, c.ID, StateAbandoned).Scan(&c.UpdatedAt); err != nil {
			return fmt.Errorf("inventory: abandoning checkout %d: %w", c.ID, err)
		}
		c.State = StateAbandoned
		return nil
	})
}

// PaymentAuthorized records an authorized payment and returns at once: the
// checkout becomes paid, its claim stops expiring, and CompleteCheckoutArgs
// is enqueued in the same transaction; the job takes the units off the
// stock. A paid or completed checkout is left as it is (a repeated call
// changes nothing). A checkout that was abandoned or expired, or whose
// claim has run out, is a *StateError: its units may have been sold to
// someone else.
func (s *Service) PaymentAuthorized(ctx context.Context, checkoutID int64) (Checkout, error) {
	return s.PaymentAuthorizedTx(ctx, nil, checkoutID)
}

// PaymentAuthorizedTx is PaymentAuthorized in the caller's transaction tx,
// as BeginCheckoutTx is BeginCheckout: the order the caller marks paid and
// the completion job commit together. A nil tx is a transaction of its own.
func (s *Service) PaymentAuthorizedTx(ctx context.Context, tx pgx.Tx, checkoutID int64) (Checkout, error) {
	return s.change(ctx, tx, checkoutID, "pay", func(ctx context.Context, tx *outbox.Tx, c *Checkout, claimExpired bool) error {
		if c.State == StatePaid || c.State == StateCompleted {
			return nil
		}
		if !c.State.holdsClaim() || claimExpired {
			return stateError(c, claimExpired, "pay")
		}
		if err := tx.QueryRow(ctx, holdClaimSQL, c.ID).Scan(&c.UpdatedAt); err != nil {
			return fmt.Errorf("inventory: marking checkout %d paid: %w", c.ID, err)
		}
		c.State = StatePaid
		return tx.Enqueue(CompleteCheckoutArgs{CheckoutID: c.ID}, nil)
	})
}

// inTx runs fn in the caller's transaction tx (outbox.Outbox.JoinTx) or,
// when tx is nil, in an outbox transaction of its own that begins with the
// domain's lock and statement timeouts.
func (s *Service) inTx(ctx context.Context, tx pgx.Tx, fn func(ctx context.Context, tx *outbox.Tx) error) error {
	if tx != nil {
		_, err := s.ob.JoinTx(ctx, tx, fn)
		return err
	}
	_, err := s.ob.InTx(ctx, &outbox.InTxOpts{TxOptions: s.cfg.txOptions()}, fn)
	return err
}

// change runs fn on checkout id in tx (nil: an outbox transaction of its
// own), locked after its product (single_row) or its claim's bucket
// (buckets), and returns the checkout as fn left it.
func (s *Service) change(ctx context.Context, tx pgx.Tx, id int64, op string, fn func(ctx context.Context, tx *outbox.Tx, c *Checkout, claimExpired bool) error) (Checkout, error) {
	var c Checkout
	err := s.inTx(ctx, tx, func(ctx context.Context, tx *outbox.Tx) error {
		var claimExpired bool
		c = Checkout{ID: id}
		if err := lockCheckout(ctx, tx, &c, &claimExpired, false); err != nil {
			return err
		}
		return fn(ctx, tx, &c, claimExpired)
	})
	if err != nil {
		return Checkout{}, translate(ctx, "trying to "+op+" a checkout", err)
	}
	return c, nil
}

// lockCheckout locks checkout c.ID after the row that counts its claim, and
// reads it into c; claimExpired says whether its claim has run out by the
// clock. The first lock is the product row under single_row, or, when
// withProduct, under both strategies; then, for a claim in a bucket, that
// bucket; then the checkout. That is the order every transaction of the
// domain takes its locks in: product, bucket, checkout.
func lockCheckout(ctx context.Context, tx pgx.Tx, c *Checkout, claimExpired *bool, withProduct bool) error {
	var (
		strategy Strategy
		bucket   *int16
	)
	err := tx.QueryRow(ctx, checkoutLockTargetSQL, c.ID).Scan(&c.ProductID, &c.SKU, &strategy, &bucket)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %d", ErrUnknownCheckout, c.ID)
	}
	if err != nil {
		return fmt.Errorf("inventory: reading checkout %d: %w", c.ID, err)
	}
	if strategy == StrategySingleRow || withProduct {
		var stock int
		if err := tx.QueryRow(ctx, lockProductSQL, c.ProductID).Scan(&strategy, &stock); err != nil {
			return fmt.Errorf("inventory: locking the product of checkout %d: %w", c.ID, err)
		}
	}
	// A claim never changes bucket, and a checkout never gains a claim after
	// its first transaction; a bucket gone meanwhile (a strategy change,
	// which needs every claim gone) locks nothing and the checkout is
	// found closed below.
	if bucket != nil {
		if _, err := tx.Exec(ctx, lockBucketSQL, c.ProductID, *bucket); err != nil {
			return fmt.Errorf("inventory: locking the bucket of checkout %d: %w", c.ID, err)
		}
	}
	var hasClaim bool
	if err := tx.QueryRow(ctx, lockCheckoutSQL, c.ID).
		Scan(&c.Quantity, &c.State, &c.CreatedAt, &c.UpdatedAt, &c.ExpiresAt, &hasClaim, claimExpired); err != nil {
		return fmt.Errorf("inventory: locking checkout %d: %w", c.ID, err)
	}
	if c.State.holdsClaim() && !hasClaim {
		*claimExpired = true // released meanwhile; cannot happen while the states hold
	}
	return nil
}

// stateError is the *StateError of op on c.
func stateError(c *Checkout, claimExpired bool, op string) error {
	st := c.State
	if claimExpired && st.holdsClaim() {
		st = StateExpired
	}
	return &StateError{CheckoutID: c.ID, State: st, Op: op}
}
