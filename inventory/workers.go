package inventory

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
)

// Kinds of the domain's jobs. They never change.
const (
	CompleteCheckoutKind   = "inventory.complete_checkout"
	ExpireCheckoutKind     = "inventory.expire_checkout"
	PruneExpiredClaimsKind = "inventory.prune_expired_claims"
)

// CompleteCheckoutArgs asks for a paid checkout's units to be taken off the
// stock. PaymentAuthorized enqueues it in the payment's transaction.
type CompleteCheckoutArgs struct {
	// CheckoutID is the checkout; the worker reads everything else.
	CheckoutID int64 `json:"checkout_id" jobs:"id"`
}

// Kind implements river.JobArgs.
func (CompleteCheckoutArgs) Kind() string { return CompleteCheckoutKind }

// ExpireCheckoutArgs asks for a checkout's claim to be released when it
// has run out. BeginCheckout and PaymentFailed schedule it at the claim's
// expiry.
type ExpireCheckoutArgs struct {
	// CheckoutID is the checkout.
	CheckoutID int64 `json:"checkout_id" jobs:"id"`
}

// Kind implements river.JobArgs.
func (ExpireCheckoutArgs) Kind() string { return ExpireCheckoutKind }

// PruneExpiredClaimsArgs asks for every expired claim of an open or
// payment_failed checkout to be released. The leader enqueues it every
// Config.PruneInterval: the safety net for a lost ExpireCheckout job.
type PruneExpiredClaimsArgs struct{}

// Kind implements river.JobArgs.
func (PruneExpiredClaimsArgs) Kind() string { return PruneExpiredClaimsKind }

// Results recorded in CheckoutOutput.Result.
const (
	// ResultCompleted: the units were taken off the stock.
	ResultCompleted = "completed"
	// ResultExpired: the claim was released and the checkout expired.
	ResultExpired = "expired"
	// ResultUnchanged: the checkout's state called for nothing (a second
	// delivery, a checkout paid or abandoned meanwhile); State says why.
	ResultUnchanged = "unchanged"
)

// CheckoutOutput is recorded as the output of CompleteCheckout and
// ExpireCheckout jobs, in the transaction that completes them.
type CheckoutOutput struct {
	// Result is one of the Result… constants.
	Result string `json:"result"`
	// State is the checkout's state after the job ("" when the checkout
	// does not exist).
	State State `json:"state"`
	// Stock is the product's stock after a completion.
	Stock *int `json:"stock,omitempty"`
}

// PruneOutput is recorded as a PruneExpiredClaims job's output.
type PruneOutput struct {
	// Expired is the number of checkouts the run expired.
	Expired int64 `json:"expired"`
}

// CompleteCheckoutWorker works CompleteCheckoutArgs behind a semaphore of
// Config.CompletionConcurrency permits shared by every worker process.
type CompleteCheckoutWorker struct {
	river.WorkerDefaults[CompleteCheckoutArgs]

	pool *pgxpool.Pool
	cfg  Config
}

var _ jobs.Locker[CompleteCheckoutArgs] = (*CompleteCheckoutWorker)(nil)

// LockFor implements jobs.Locker: one of Config.CompletionConcurrency slots
// of the global completion semaphore.
func (w *CompleteCheckoutWorker) LockFor(context.Context, *river.Job[CompleteCheckoutArgs]) (jobs.Lock, error) {
	return jobs.Lock{Namespace: CompletionLockNamespace, Key: "global", Permits: w.cfg.CompletionConcurrency}, nil
}

// Work sells a paid checkout's units and completes the job in one
// transaction: it locks the product, then the checkout, and when the
// checkout is paid takes its quantity off the stock, deletes its claim and
// marks it completed. Any other state changes nothing (ResultUnchanged), so
// a second delivery sells nothing twice.
func (w *CompleteCheckoutWorker) Work(ctx context.Context, job *river.Job[CompleteCheckoutArgs]) error {
	err := pgx.BeginTxFunc(ctx, w.pool, w.cfg.txOptions(), func(tx pgx.Tx) error {
		out, err := completeCheckout(ctx, tx, job.Args.CheckoutID)
		if err != nil {
			return err
		}
		return jobs.CompleteTx(ctx, tx, job, out)
	})
	return translate(ctx, "completing a checkout", err)
}

// completeCheckout sells checkout id's units if it is paid; it locks the
// product even under StrategyBuckets, since it changes the product's stock.
func completeCheckout(ctx context.Context, tx pgx.Tx, id int64) (CheckoutOutput, error) {
	c := Checkout{ID: id}
	var claimExpired bool
	err := lockCheckout(ctx, tx, &c, &claimExpired, true)
	if errors.Is(err, ErrUnknownCheckout) {
		return CheckoutOutput{Result: ResultUnchanged}, nil
	}
	if err != nil {
		return CheckoutOutput{}, err
	}
	if c.State != StatePaid {
		return CheckoutOutput{Result: ResultUnchanged, State: c.State}, nil
	}
	var stock int
	if err := tx.QueryRow(ctx, completeSQL, id).Scan(&stock); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return CheckoutOutput{}, river.JobCancel(fmt.Errorf("inventory: paid checkout %d has no claim", id))
		}
		return CheckoutOutput{}, fmt.Errorf("inventory: completing checkout %d: %w", id, err)
	}
	return CheckoutOutput{Result: ResultCompleted, State: StateCompleted, Stock: &stock}, nil
}

// ExpireCheckoutWorker works ExpireCheckoutArgs.
type ExpireCheckoutWorker struct {
	river.WorkerDefaults[ExpireCheckoutArgs]

	pool *pgxpool.Pool
	cfg  Config
}

var _ jobs.Needed[ExpireCheckoutArgs] = (*ExpireCheckoutWorker)(nil)

// Needed implements jobs.Needed: only an open or payment_failed checkout
// whose claim has run out needs expiring. A paid, completed or abandoned
// checkout, or one whose claim was extended (PaymentFailed scheduled
// another job), is skipped.
func (w *ExpireCheckoutWorker) Needed(ctx context.Context, job *river.Job[ExpireCheckoutArgs]) (bool, error) {
	var (
		state   State
		expired bool
	)
	err := w.pool.QueryRow(ctx, expireNeededSQL, job.Args.CheckoutID).Scan(&state, &expired)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("inventory: reading checkout %d: %w", job.Args.CheckoutID, err)
	}
	return state.holdsClaim() && expired, nil
}

// Work releases the claim and marks the checkout expired, in the
// transaction that completes the job, after checking again under the
// product and checkout locks.
func (w *ExpireCheckoutWorker) Work(ctx context.Context, job *river.Job[ExpireCheckoutArgs]) error {
	err := pgx.BeginTxFunc(ctx, w.pool, w.cfg.txOptions(), func(tx pgx.Tx) error {
		c := Checkout{ID: job.Args.CheckoutID}
		var claimExpired bool
		err := lockCheckout(ctx, tx, &c, &claimExpired, false)
		if errors.Is(err, ErrUnknownCheckout) {
			return jobs.CompleteTx(ctx, tx, job, CheckoutOutput{Result: ResultUnchanged})
		}
		if err != nil {
			return err
		}
		if !c.State.holdsClaim() || !claimExpired {
			return jobs.CompleteTx(ctx, tx, job, CheckoutOutput{Result: ResultUnchanged, State: c.State})
		}
		if err := tx.QueryRow(ctx, releaseClaimSQL, c.ID, StateExpired).Scan(&c.UpdatedAt); err != nil {
			return fmt.Errorf("inventory: expiring checkout %d: %w", c.ID, err)
		}
		return jobs.CompleteTx(ctx, tx, job, CheckoutOutput{Result: ResultExpired, State: StateExpired})
	})
	return translate(ctx, "expiring a checkout", err)
}

// PruneExpiredClaimsWorker works PruneExpiredClaimsArgs.
type PruneExpiredClaimsWorker struct {
	river.WorkerDefaults[PruneExpiredClaimsArgs]

	pool *pgxpool.Pool
	cfg  Config
}

// Work releases expired claims of open and payment_failed checkouts and
// marks those checkouts expired, Config.PruneBatchSize at a time, each batch
// in its own short transaction, until a batch comes back short or ctx ends.
// It is idempotent: a retry releases only what is still expired.
func (w *PruneExpiredClaimsWorker) Work(ctx context.Context, _ *river.Job[PruneExpiredClaimsArgs]) error {
	var total int64
	for {
		var n int64
		err := pgx.BeginTxFunc(ctx, w.pool, w.cfg.txOptions(), func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, pruneSQL, w.cfg.PruneBatchSize).Scan(&n)
		})
		if err != nil {
			return translate(ctx, "pruning expired claims", fmt.Errorf("inventory: pruning expired claims (%d done): %w", total, err))
		}
		total += n
		if n < int64(w.cfg.PruneBatchSize) || ctx.Err() != nil {
			break
		}
	}
	return river.RecordOutput(ctx, PruneOutput{Expired: total})
}
