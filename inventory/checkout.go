package inventory

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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
// In one transaction it locks the product row (SELECT … FOR UPDATE), sums
// its unexpired claims and, when stock − claimed ≥ quantity, inserts an open
// checkout with its claim and schedules ExpireCheckoutArgs at the claim's
// expiry. Otherwise it returns a *SoldOutError (errors.Is(err, ErrSoldOut)).
// A SKU that names no product is ErrUnknownProduct; a quantity out of range
// or an empty SKU is a *ValidationError, found before any SQL runs. A lock
// or statement timeout is a *BusyError (ErrBusy). Nothing is written when
// an error is returned.
func (s *Service) BeginCheckout(ctx context.Context, sku string, quantity int) (Checkout, error) {
	switch {
	case sku == "":
		return Checkout{}, &ValidationError{Field: "sku", Message: "is required"}
	case len(sku) > MaxSKUBytes:
		return Checkout{}, &ValidationError{Field: "sku", Message: fmt.Sprintf("must be at most %d bytes, got %d", MaxSKUBytes, len(sku))}
	case !utf8.ValidString(sku) || strings.ContainsRune(sku, 0):
		return Checkout{}, &ValidationError{Field: "sku", Message: "must be text (UTF-8 without NUL characters)"}
	case quantity <= 0:
		return Checkout{}, &ValidationError{Field: "quantity", Message: fmt.Sprintf("must be more than zero, got %d", quantity)}
	case quantity > MaxQuantity:
		return Checkout{}, &ValidationError{Field: "quantity", Message: fmt.Sprintf("must be at most %d, got %d", MaxQuantity, quantity)}
	}

	c := Checkout{SKU: sku, Quantity: quantity}
	err := s.ob.InTx(ctx, func(ctx context.Context, tx *outbox.Tx) error {
		if err := setTimeouts(ctx, tx, s.cfg); err != nil {
			return err
		}
		var stock int
		err := tx.QueryRow(ctx, lockProductBySKUSQL, sku).Scan(&c.ProductID, &stock)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %q", ErrUnknownProduct, sku)
		}
		if err != nil {
			return fmt.Errorf("inventory: locking product %q: %w", sku, err)
		}
		var claimed int
		if err := tx.QueryRow(ctx, claimedSQL, c.ProductID).Scan(&claimed); err != nil {
			return fmt.Errorf("inventory: summing the claims of product %q: %w", sku, err)
		}
		if available := stock - claimed; available < quantity {
			return &SoldOutError{SKU: sku, Requested: quantity, Available: max(available, 0)}
		}
		if err := tx.QueryRow(ctx, insertCheckoutSQL, c.ProductID, quantity, s.cfg.ClaimTTL.Seconds()).
			Scan(&c.ID, &c.State, &c.CreatedAt, &c.UpdatedAt, &c.ExpiresAt); err != nil {
			return fmt.Errorf("inventory: inserting a checkout of %q: %w", sku, err)
		}
		return tx.Enqueue(ExpireCheckoutArgs{CheckoutID: c.ID}, jobs.At(c.ExpiresAt))
	})
	if err != nil {
		return Checkout{}, translate(ctx, "beginning a checkout", err)
	}
	return c, nil
}

// PaymentFailed records a failed payment: the checkout's claim is extended
// to Config.PaymentRetryTTL from now, so the buyer can fix their card, its
// state becomes payment_failed, and a new ExpireCheckoutArgs is scheduled
// at the new expiry (the earlier one will find the claim not yet expired
// and be skipped). A checkout that is not open or payment_failed, or whose
// claim has already run out, is a *StateError (ErrCheckoutClosed).
func (s *Service) PaymentFailed(ctx context.Context, checkoutID int64) (Checkout, error) {
	c, err := s.change(ctx, checkoutID, "record a failed payment of", func(ctx context.Context, tx *outbox.Tx, c *Checkout, claimExpired bool) error {
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
	return s.change(ctx, checkoutID, "abandon", func(ctx context.Context, tx *outbox.Tx, c *Checkout, claimExpired bool) error {
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
	return s.change(ctx, checkoutID, "pay", func(ctx context.Context, tx *outbox.Tx, c *Checkout, claimExpired bool) error {
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

// change runs fn in an outbox transaction on checkout id, locked after its
// product, and returns the checkout as fn left it.
func (s *Service) change(ctx context.Context, id int64, op string, fn func(ctx context.Context, tx *outbox.Tx, c *Checkout, claimExpired bool) error) (Checkout, error) {
	var c Checkout
	err := s.ob.InTx(ctx, func(ctx context.Context, tx *outbox.Tx) error {
		if err := setTimeouts(ctx, tx, s.cfg); err != nil {
			return err
		}
		var claimExpired bool
		c = Checkout{ID: id}
		if err := lockCheckout(ctx, tx, &c, &claimExpired); err != nil {
			return err
		}
		return fn(ctx, tx, &c, claimExpired)
	})
	if err != nil {
		return Checkout{}, translate(ctx, "trying to "+op+" a checkout", err)
	}
	return c, nil
}

// lockCheckout locks c.ID's product, then the checkout, and reads it into
// c; claimExpired says whether its claim has run out by the clock.
func lockCheckout(ctx context.Context, tx pgx.Tx, c *Checkout, claimExpired *bool) error {
	err := tx.QueryRow(ctx, lockCheckoutProductSQL, c.ID).Scan(&c.ProductID, &c.SKU)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %d", ErrUnknownCheckout, c.ID)
	}
	if err != nil {
		return fmt.Errorf("inventory: locking the product of checkout %d: %w", c.ID, err)
	}
	var hasClaim bool
	if err := tx.QueryRow(ctx, lockCheckoutSQL, c.ID).
		Scan(&c.Quantity, &c.State, &c.CreatedAt, &c.UpdatedAt, &c.ExpiresAt, &hasClaim, claimExpired); err != nil {
		return fmt.Errorf("inventory: locking checkout %d: %w", c.ID, err)
	}
	if c.State.holdsClaim() && !hasClaim {
		*claimExpired = true // pruned meanwhile; cannot happen while the states hold
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

// setTimeouts bounds tx's lock waits and statements.
func setTimeouts(ctx context.Context, tx pgx.Tx, cfg Config) error {
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }
	if _, err := tx.Exec(ctx, setTimeoutsSQL, ms(cfg.LockTimeout), ms(cfg.StatementTimeout)); err != nil {
		return fmt.Errorf("inventory: setting timeouts: %w", err)
	}
	return nil
}
