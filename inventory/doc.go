// Package inventory is the flash-sale checkout domain: products, checkouts
// and the inventory claims that hold a checkout's units, with zero oversell.
//
// # Claims
//
// Service.BeginCheckout locks the product row (SELECT … FOR NO KEY UPDATE), sums
// its unexpired claims and, when enough units are left, inserts an open
// checkout and a claim that expires after Config.ClaimTTL (ten minutes by
// default), scheduling ExpireCheckoutArgs at that time in the same
// transaction; otherwise it returns a *SoldOutError (ErrSoldOut). A failed
// payment (PaymentFailed) extends the claim by Config.PaymentRetryTTL
// (thirty minutes) and schedules a new expiry; Abandon releases it at once.
// PaymentAuthorized marks the checkout paid, makes its claim stop expiring
// and enqueues CompleteCheckoutArgs, and returns at once.
//
// # Hot products: two claim strategies
//
// Under StrategySingleRow (the default) every buyer of a product waits for
// the product row's lock. Service.SetStrategy switches a product, while it
// holds no claim, to StrategyBuckets: its stock is split over N rows of
// product_buckets, each with a claimed counter that a CHECK keeps within
// the bucket's stock. A claim then takes, in one statement, a random bucket
// that has the units and that no one holds (FOR NO KEY UPDATE SKIP LOCKED);
// when all such buckets are held it waits for one of them; when none has
// the units it locks the product and every bucket, releases the claims that
// have run out and moves units between buckets if that makes enough, and
// only then answers ErrSoldOut. So both strategies give the same answers
// (TestStrategiesGiveTheSameAnswers), and a bucket claim never waits on the
// product row. Service.Rebalance spreads the unclaimed units evenly again.
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
// completion, in the statement that deletes the claim it sells. Under
// single_row, claims are created only under the product's row lock after
// counting the others, and a claim is kept alive (paid, or extended) only
// under that lock after checking it has not run out by the clock. Under
// buckets, a claim adds to its bucket's claimed counter, which cannot
// exceed the bucket's stock, and the buckets' stocks sum to the product's.
// So at every moment the unexpired claims of a product sum to at most its
// stock, and stock plus the completed quantity is the initial stock.
//
// # Locks
//
// Every transaction begins with SET LOCAL lock_timeout and
// statement_timeout (Config.LockTimeout, Config.StatementTimeout), sent with
// its BEGIN; a timeout becomes a *BusyError (ErrBusy), which wrote nothing
// and may be retried. Locks are always taken in the same order: the product
// row, then buckets in bucket order, then the checkout row, so two
// transactions never deadlock (TestLockOrderNoDeadlock). A transaction may
// skip a lock of that order but never takes one out of it; the fast bucket
// claim, which may end up holding a bucket it could not use, starts over
// in a new transaction before it takes the product lock. The pruner never
// waits: it skips locked rows. Product rows are locked FOR NO KEY UPDATE,
// so the foreign-key checks of concurrent bucket claims (FOR KEY SHARE on
// the product) never wait for them.
//
// The package imports outbox and jobs, never another domain.
package inventory
