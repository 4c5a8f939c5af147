// Package inventory is the flash-sale checkout domain: products, checkouts
// and the inventory claims that hold a checkout's units, with zero oversell.
//
// # Claims
//
// Service.BeginCheckout locks the product row (SELECT … FOR UPDATE), sums
// its unexpired claims and, when enough units are left, inserts an open
// checkout and a claim that expires after Config.ClaimTTL (ten minutes by
// default), scheduling ExpireCheckoutArgs at that time in the same
// transaction; otherwise it returns a *SoldOutError (ErrSoldOut). A failed
// payment (PaymentFailed) extends the claim by Config.PaymentRetryTTL
// (thirty minutes) and schedules a new expiry; Abandon releases it at once.
// PaymentAuthorized marks the checkout paid, makes its claim stop expiring
// and enqueues CompleteCheckoutArgs, and returns at once.
//
// # Workers
//
// CompleteCheckout takes a paid checkout's units off products.stock,
// deletes its claim and marks it completed, in the transaction that
// completes the job; a second delivery changes nothing. It runs behind a
// global semaphore (jobs.Locker, Config.CompletionConcurrency permits across
// every process), so heavy completions never starve the claims.
// ExpireCheckout releases a claim that has run out, and is skipped by its
// needed-check when the checkout was paid, abandoned or extended.
// PruneExpiredClaims, a periodic job run by the leader every
// Config.PruneInterval, releases expired claims in bounded batches: the
// safety net when an expiry job was lost.
//
// # Why it cannot oversell
//
// products.stock has CHECK (stock >= 0) and is decremented only by a
// completion, in the statement that deletes the claim it sells. Claims are
// created only under the product's row lock after counting the others, and
// a claim is kept alive (paid, or extended) only under that lock after
// checking it has not run out by the clock; so at every moment the
// unexpired claims of a product sum to at most its stock, and stock plus
// the completed quantity is the initial stock.
//
// # Locks
//
// Every transaction sets lock_timeout and statement_timeout
// (Config.LockTimeout, Config.StatementTimeout); a timeout becomes a
// *BusyError (ErrBusy), which wrote nothing and may be retried. Locks are
// always taken in the same order, the product row, then the checkout row,
// so two transactions never deadlock; the pruner takes no product lock and
// skips locked checkouts.
//
// The package imports outbox and jobs, never another domain.
package inventory
