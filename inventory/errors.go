package inventory

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrSoldOut is matched (errors.Is) by the *SoldOutError BeginCheckout
// returns when the product has fewer unclaimed units than asked for.
var ErrSoldOut = errors.New("inventory: sold out")

// ErrUnknownProduct is returned (wrapped) by BeginCheckout for a SKU that
// names no product.
var ErrUnknownProduct = errors.New("inventory: unknown product")

// ErrUnknownCheckout is returned (wrapped) for a checkout ID that names no
// checkout.
var ErrUnknownCheckout = errors.New("inventory: unknown checkout")

// ErrInvalidCheckout is matched by every *ValidationError: input a caller
// must correct. Nothing is written then.
var ErrInvalidCheckout = errors.New("inventory: invalid checkout")

// ErrCheckoutClosed is matched by the *StateError returned when a checkout
// is not in a state that allows the change (paying an expired checkout,
// abandoning a completed one).
var ErrCheckoutClosed = errors.New("inventory: checkout is closed")

// ErrBusy is matched by the *BusyError returned when a transaction waited
// longer than Config.LockTimeout for a lock or ran longer than
// Config.StatementTimeout. Nothing was written; the caller may retry.
var ErrBusy = errors.New("inventory: busy, try again")

// ErrClaimsOpen is matched by the *ClaimsOpenError SetStrategy returns when
// the product still holds claims.
var ErrClaimsOpen = errors.New("inventory: the product holds claims")

// ErrWrongStrategy is returned (wrapped) by Rebalance for a product that
// does not use StrategyBuckets.
var ErrWrongStrategy = errors.New("inventory: wrong claim strategy")

// ClaimsOpenError reports a strategy change refused because checkouts
// still hold units of the product.
type ClaimsOpenError struct {
	// SKU is the product's SKU.
	SKU string
	// Claims is the number of claims left (open, payment_failed or paid
	// checkouts).
	Claims int
}

// Error implements error.
func (e *ClaimsOpenError) Error() string {
	return fmt.Sprintf("inventory: cannot change the claim strategy of %s: %d claims are open; try again when they are released", e.SKU, e.Claims)
}

// Is makes errors.Is(err, ErrClaimsOpen) true.
func (e *ClaimsOpenError) Is(target error) bool { return target == ErrClaimsOpen }

// SoldOutError reports a checkout refused for want of stock.
type SoldOutError struct {
	// SKU is the product's SKU.
	SKU string
	// Requested is the quantity asked for.
	Requested int
	// Available is the stock left unclaimed when the checkout was refused.
	Available int
}

// Error implements error.
func (e *SoldOutError) Error() string {
	return fmt.Sprintf("inventory: sold out: %s: %d requested, %d available", e.SKU, e.Requested, e.Available)
}

// Is makes errors.Is(err, ErrSoldOut) true.
func (e *SoldOutError) Is(target error) bool { return target == ErrSoldOut }

// ValidationError is a problem with a call's input.
type ValidationError struct {
	// Field names the argument at fault, such as "quantity".
	Field string
	// Message says what is wrong, such as "must be more than zero, got 0".
	Message string
}

// Error implements error: "inventory: invalid <field>: <message>".
func (e *ValidationError) Error() string {
	return "inventory: invalid " + e.Field + ": " + e.Message
}

// Is makes errors.Is(err, ErrInvalidCheckout) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidCheckout }

// StateError reports a change a checkout's state does not allow.
type StateError struct {
	// CheckoutID is the checkout.
	CheckoutID int64
	// State is its state (or StateExpired for an open checkout whose claim
	// has run out but which no job has marked yet).
	State State
	// Op is the refused change, such as "pay".
	Op string
}

// Error implements error.
func (e *StateError) Error() string {
	return fmt.Sprintf("inventory: cannot %s checkout %d: it is %s", e.Op, e.CheckoutID, e.State)
}

// Is makes errors.Is(err, ErrCheckoutClosed) true.
func (e *StateError) Is(target error) bool { return target == ErrCheckoutClosed }

// BusyError reports a lock or statement timeout. It matches ErrBusy and
// unwraps to the database's error.
type BusyError struct {
	// Op says what was being done, such as "beginning a checkout".
	Op string
	// Err is the *pgconn.PgError (SQLSTATE 55P03 or 57014).
	Err error
}

// Error implements error.
func (e *BusyError) Error() string {
	return "inventory: busy " + e.Op + ", try again: " + e.Err.Error()
}

// Is makes errors.Is(err, ErrBusy) true.
func (e *BusyError) Is(target error) bool { return target == ErrBusy }

// Unwrap returns Err.
func (e *BusyError) Unwrap() error { return e.Err }

// Retryable is true: a BusyError wrote nothing and may be retried.
func (e *BusyError) Retryable() bool { return true }

// translate turns a lock or statement timeout into a *BusyError; other
// errors pass through. A statement cancelled because ctx ended is the
// context's error, not a timeout.
func translate(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "55P03" || pgErr.Code == "57014") {
		if ctx.Err() != nil {
			return fmt.Errorf("inventory: %s: %w", op, context.Cause(ctx))
		}
		return &BusyError{Op: op, Err: pgErr}
	}
	return err
}
