package inventory

// Every SQL statement of the inventory domain, as named constants. Table
// names are unqualified: they resolve through the connection's search_path.
//
// Clocks. BeginCheckout counts the claims unexpired at now() (the start of
// its transaction, before it waited for the product lock): a claim that
// expires while it waits is still counted, which can only make it refuse a
// unit, never oversell. A statement that keeps a claim alive (PaymentFailed,
// PaymentAuthorized) checks it against clock_timestamp() after taking the
// product lock, so it never revives a claim that a checkout which held the
// lock before it already counted as expired.

// beginSQLFormat begins every transaction of the domain and bounds it, in
// the BEGIN's round trip: lock_timeout, then statement_timeout, in
// milliseconds, for this transaction only.
const beginSQLFormat = `BEGIN; SET LOCAL lock_timeout = '%dms'; SET LOCAL statement_timeout = '%dms'`

// Product row locks are FOR NO KEY UPDATE, the lock an UPDATE of a non-key
// column takes: it excludes the other claimers as FOR UPDATE would, but not
// the FOR KEY SHARE locks that foreign-key checks take on the product when a
// bucket claim inserts its checkout, so a bucket claimer never waits on the
// product row.

// beginClaimSQL is a checkout's first statement: it finds the product by SKU
// ($1) and, by its strategy,
//
//   - single_row: locks the product row and returns its stock;
//   - buckets: claims $2 units in one bucket that has them and that no one
//     holds (FOR NO KEY UPDATE SKIP LOCKED, a random one of them), inserts
//     the checkout and its claim expiring $3 seconds from now, and returns
//     the checkout. A bucket claim is then done but for its expiry job and
//     the COMMIT. When every bucket with enough units is held by another
//     transaction, or none has enough, no checkout is returned, but a
//     bucket that had enough units at the statement's snapshot (to wait
//     for), and whether the statement left the transaction holding a lock
//     (a bucket whose recheck failed once locked, as it drained).
//
// No row when the SKU names no product. A bucket updated since the
// statement's snapshot is re-checked on its newest version once locked, and
// the bucket's CHECK (claimed <= stock) would refuse an oversell anyway.
// The bucket is picked in a CTE joined by the UPDATE, not in a subquery of
// its WHERE: there, Postgres' recheck of a concurrently updated row could
// fail after the subquery had locked a bucket, leaving the transaction
// holding a bucket it did not claim (and the slow path, which locks every
// bucket, deadlocking on it).
const beginClaimSQL = `
WITH p AS (
    SELECT id, claim_strategy FROM products WHERE sku = $1
), locked AS (
    SELECT id, stock FROM products
     WHERE id = (SELECT id FROM p) AND claim_strategy = 'single_row'
       FOR NO KEY UPDATE
), pick AS (
    SELECT product_id, bucket
      FROM product_buckets
     WHERE product_id = (SELECT id FROM p WHERE claim_strategy = 'buckets')
       AND stock - claimed >= $2::integer
     ORDER BY random()
     LIMIT 1
       FOR NO KEY UPDATE SKIP LOCKED
), b AS (
    UPDATE product_buckets pb SET claimed = pb.claimed + $2::integer
      FROM pick
     WHERE pb.product_id = pick.product_id AND pb.bucket = pick.bucket
    RETURNING pb.product_id, pb.bucket
` + bucketCheckoutSQL + `
SELECT p.id, p.claim_strategy, (SELECT stock FROM locked),
       c.id, c.state, c.created_at, c.updated_at, c.expires_at,
       CASE WHEN c.id IS NULL AND p.claim_strategy = 'buckets' THEN (
           SELECT bucket FROM product_buckets
            WHERE product_id = p.id AND stock - claimed >= $2::integer
            ORDER BY random()
            LIMIT 1)
       END,
       txid_current_if_assigned() IS NOT NULL
  FROM p LEFT JOIN c ON true`

// lockProductSQL locks product $1 and returns its strategy and stock: the
// first lock of a bucket product's slow path, of a completion, of a
// strategy change and of a rebalance.
const lockProductSQL = `SELECT claim_strategy, stock FROM products WHERE id = $1 FOR NO KEY UPDATE`

// claimSingleRowSQL claims $2 units of product $1, whose row the
// transaction holds and whose stock is $4, when its claims unexpired at the
// transaction's start leave enough: it inserts the checkout and its claim,
// expiring $3 seconds from now. It runs after the lock, so its snapshot sees
// every claim committed before the lock was granted. It returns the units
// available before the claim, and the checkout (NULL when refused).
const claimSingleRowSQL = `
WITH avail AS (
    SELECT $4::integer - coalesce(sum(quantity), 0) AS n
      FROM inventory_claims
     WHERE product_id = $1 AND expires_at > now()
), c AS (
    INSERT INTO checkouts (product_id, quantity, expires_at)
    SELECT $1, $2::integer, clock_timestamp() + make_interval(secs => $3) FROM avail WHERE n >= $2::integer
    RETURNING id, product_id, quantity, state, created_at, updated_at, expires_at
), claim AS (
    INSERT INTO inventory_claims (checkout_id, product_id, quantity, expires_at)
    SELECT id, product_id, quantity, expires_at FROM c
)
SELECT avail.n, c.id, c.state, c.created_at, c.updated_at, c.expires_at
  FROM avail LEFT JOIN c ON true`

// lockBucketsSQL locks every bucket of product $1, in bucket order (the
// order every multi-bucket lock takes), and reads them.
const lockBucketsSQL = `
SELECT bucket, stock, claimed FROM product_buckets
 WHERE product_id = $1
 ORDER BY bucket
   FOR NO KEY UPDATE`

// bucketsSQL reads the buckets of product $1 without locking them.
const bucketsSQL = `SELECT bucket, stock, claimed FROM product_buckets WHERE product_id = $1 ORDER BY bucket`

// setBucketStocksSQL sets the stock of buckets $2 of product $1 to $3 (a
// move of units between buckets the transaction holds).
const setBucketStocksSQL = `
UPDATE product_buckets b SET stock = v.stock
  FROM unnest($2::smallint[], $3::integer[]) AS v (bucket, stock)
 WHERE b.product_id = $1 AND b.bucket = v.bucket`

// bucketCheckoutSQL continues a statement whose CTE "b" claimed $2 units
// in a bucket (product_id, bucket): it inserts the checkout (c) and its
// claim in that bucket, expiring $3 seconds from now.
const bucketCheckoutSQL = `), c AS (
    INSERT INTO checkouts (product_id, quantity, expires_at)
    SELECT product_id, $2::integer, clock_timestamp() + make_interval(secs => $3) FROM b
    RETURNING id, product_id, quantity, state, created_at, updated_at, expires_at
), claim AS (
    INSERT INTO inventory_claims (checkout_id, product_id, quantity, expires_at, bucket)
    SELECT c.id, c.product_id, c.quantity, c.expires_at, b.bucket FROM c, b
)`

// claimInBucketSQL claims $2 units of product $1 in bucket $4, waiting for
// the bucket's lock, if it has them once locked: it adds them to the
// bucket's claimed counter and inserts the checkout and its claim, expiring
// $3 seconds from now. No row when the bucket lacks the units (the
// transaction may then hold its lock).
const claimInBucketSQL = `
WITH b AS (
    UPDATE product_buckets SET claimed = claimed + $2::integer
     WHERE product_id = $1 AND bucket = $4 AND stock - claimed >= $2::integer
    RETURNING product_id, bucket
` + bucketCheckoutSQL + `
SELECT id, state, created_at, updated_at, expires_at FROM c`

// expireProductClaimsSQL releases every claim of product $1 that has run
// out by the clock, of an open or payment_failed checkout, and marks those
// checkouts expired: what the expiry jobs would do, done at once by a
// transaction that holds the product and all its buckets (in that order, so
// it may wait for the checkouts). Returns how many it expired.
const expireProductClaimsSQL = `
WITH doomed AS (
    SELECT c.id
      FROM inventory_claims cl
      JOIN checkouts c ON c.id = cl.checkout_id
     WHERE cl.product_id = $1
       AND cl.expires_at <= clock_timestamp()
       AND c.state IN ('open', 'payment_failed')
       FOR UPDATE OF c, cl
` + expireDoomedSQL

// expireDoomedSQL ends a statement whose CTEs so far select, in "doomed",
// the IDs of checkouts (locked with their claims) to expire: it deletes
// their claims, gives bucket claims' units back to their buckets, marks the
// checkouts expired and returns how many.
const expireDoomedSQL = `), released AS (
    DELETE FROM inventory_claims cl
     USING doomed
     WHERE cl.checkout_id = doomed.id
    RETURNING cl.checkout_id, cl.product_id, cl.bucket, cl.quantity
), freed AS (
    UPDATE product_buckets b SET claimed = b.claimed - r.quantity
      FROM (SELECT product_id, bucket, sum(quantity)::integer AS quantity
              FROM released WHERE bucket IS NOT NULL
             GROUP BY product_id, bucket) r
     WHERE b.product_id = r.product_id AND b.bucket = r.bucket
), expired AS (
    UPDATE checkouts c SET state = 'expired', updated_at = clock_timestamp()
      FROM released
     WHERE c.id = released.checkout_id
    RETURNING c.id
)
SELECT count(*) FROM expired`

// countClaimsSQL counts the claims of product $1.
const countClaimsSQL = `SELECT count(*) FROM inventory_claims WHERE product_id = $1`

// deleteBucketsSQL deletes the buckets of product $1; the caller holds
// them and has checked that no claim is left.
const deleteBucketsSQL = `DELETE FROM product_buckets WHERE product_id = $1`

// setStrategySQL gives product $1, whose buckets are gone, $3 buckets (none
// when $3 is 0) that split its stock as evenly as they can, and sets its
// strategy to $2.
const setStrategySQL = `
WITH made AS (
    INSERT INTO product_buckets (product_id, bucket, stock)
    SELECT p.id, i, p.stock / $3 + CASE WHEN i < p.stock % $3 THEN 1 ELSE 0 END
      FROM products p, generate_series(0, $3 - 1) AS i
     WHERE p.id = $1 AND $3 > 0
)
UPDATE products SET claim_strategy = $2 WHERE id = $1`

// checkoutLockTargetSQL reads, without locking, what a change of checkout
// $1 must lock first: its product, the product's strategy and its claim's
// bucket. No row when the checkout does not exist.
const checkoutLockTargetSQL = `
SELECT p.id, p.sku, p.claim_strategy, cl.bucket
  FROM checkouts c
  JOIN products p ON p.id = c.product_id
  LEFT JOIN inventory_claims cl ON cl.checkout_id = c.id
 WHERE c.id = $1`

// lockBucketSQL locks bucket $2 of product $1 (no row once it is gone).
const lockBucketSQL = `SELECT 1 FROM product_buckets WHERE product_id = $1 AND bucket = $2 FOR NO KEY UPDATE`

// lockCheckoutSQL locks checkout $1 (the second lock) and reads it with its
// claim: whether there is one, and whether it has expired by the clock.
const lockCheckoutSQL = `
SELECT c.quantity, c.state, c.created_at, c.updated_at, c.expires_at,
       cl.checkout_id IS NOT NULL,
       coalesce(cl.expires_at <= clock_timestamp(), false)
  FROM checkouts c
  LEFT JOIN inventory_claims cl ON cl.checkout_id = c.id
 WHERE c.id = $1
   FOR UPDATE OF c`

// extendClaimSQL moves the claim of checkout $1 to $2 seconds from now and
// sets the checkout's state to $3 and its expires_at to the claim's.
const extendClaimSQL = `
WITH cl AS (
    UPDATE inventory_claims
       SET expires_at = clock_timestamp() + make_interval(secs => $2)
     WHERE checkout_id = $1
    RETURNING checkout_id, expires_at
)
UPDATE checkouts c
   SET state = $3, expires_at = cl.expires_at, updated_at = clock_timestamp()
  FROM cl
 WHERE c.id = cl.checkout_id
RETURNING c.updated_at, c.expires_at`

// holdClaimSQL makes the claim of checkout $1 never expire and marks the
// checkout paid: the units stay held until CompleteCheckout sells them.
const holdClaimSQL = `
WITH cl AS (
    UPDATE inventory_claims SET expires_at = 'infinity'
     WHERE checkout_id = $1
    RETURNING checkout_id
)
UPDATE checkouts c
   SET state = 'paid', updated_at = clock_timestamp()
  FROM cl
 WHERE c.id = cl.checkout_id
RETURNING c.updated_at`

// releaseClaimSQL deletes the claim of checkout $1 (if any), gives its
// units back to its bucket (if it has one) and sets the checkout's state to
// $2 (abandoned or expired).
const releaseClaimSQL = `
WITH cl AS (
    DELETE FROM inventory_claims WHERE checkout_id = $1
    RETURNING product_id, bucket, quantity
), b AS (
    UPDATE product_buckets SET claimed = claimed - cl.quantity
      FROM cl
     WHERE product_buckets.product_id = cl.product_id AND product_buckets.bucket = cl.bucket
)
UPDATE checkouts SET state = $2, updated_at = clock_timestamp()
 WHERE id = $1
RETURNING updated_at`

// completeSQL sells the claim of checkout $1: it deletes the claim, takes
// its quantity off the product's stock (and off its bucket's stock and
// claimed counter) and marks the checkout completed, in one statement. No
// row when the checkout has no claim. The stock CHECK refuses a sale that
// would make it negative.
const completeSQL = `
WITH cl AS (
    DELETE FROM inventory_claims WHERE checkout_id = $1
    RETURNING product_id, bucket, quantity
), b AS (
    UPDATE product_buckets SET stock = stock - cl.quantity, claimed = claimed - cl.quantity
      FROM cl
     WHERE product_buckets.product_id = cl.product_id AND product_buckets.bucket = cl.bucket
), p AS (
    UPDATE products SET stock = stock - cl.quantity
      FROM cl
     WHERE products.id = cl.product_id
    RETURNING products.stock
)
UPDATE checkouts SET state = 'completed', updated_at = clock_timestamp()
 WHERE id = $1 AND EXISTS (SELECT 1 FROM p)
RETURNING (SELECT stock FROM p)`

// expireNeededSQL reads what ExpireCheckout's needed-check needs: the
// checkout's state and whether its claim has expired.
const expireNeededSQL = `
SELECT c.state, coalesce(cl.expires_at <= clock_timestamp(), false)
  FROM checkouts c
  LEFT JOIN inventory_claims cl ON cl.checkout_id = c.id
 WHERE c.id = $1`

// pruneSQL deletes at most $1 expired claims of open and payment_failed
// checkouts under each strategy, gives bucket claims' units back to their
// buckets and marks those checkouts expired, returning how many. It never
// waits: rows another transaction holds are skipped (the next run takes
// them). The claim is locked with its checkout so that a claim extended
// meanwhile is checked again; a bucket claim is locked with its bucket. It
// takes no product lock: deleting a claim can only free units.
const pruneSQL = `
WITH single AS (
    SELECT c.id
      FROM inventory_claims cl
      JOIN checkouts c ON c.id = cl.checkout_id
     WHERE cl.expires_at <= now()
       AND cl.bucket IS NULL
       AND c.state IN ('open', 'payment_failed')
     ORDER BY cl.expires_at
     LIMIT $1
       FOR UPDATE OF c, cl SKIP LOCKED
), bucketed AS (
    SELECT c.id
      FROM inventory_claims cl
      JOIN checkouts c ON c.id = cl.checkout_id
      JOIN product_buckets b ON b.product_id = cl.product_id AND b.bucket = cl.bucket
     WHERE cl.expires_at <= now()
       AND c.state IN ('open', 'payment_failed')
     ORDER BY cl.expires_at
     LIMIT $1
       FOR UPDATE OF c, cl SKIP LOCKED
       FOR NO KEY UPDATE OF b SKIP LOCKED
), doomed AS (
    SELECT id FROM single UNION ALL SELECT id FROM bucketed
` + expireDoomedSQL
