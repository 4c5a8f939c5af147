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

// setTimeoutsSQL bounds every transaction of the domain: $1 lock_timeout,
// $2 statement_timeout, as Postgres durations ("2000ms"), for this
// transaction only.
const setTimeoutsSQL = `SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)`

// lockProductBySKUSQL locks a product by SKU: the first lock every checkout
// takes.
const lockProductBySKUSQL = `SELECT id, stock FROM products WHERE sku = $1 FOR UPDATE`

// claimedSQL sums a product's claims unexpired at the transaction's start.
const claimedSQL = `
SELECT coalesce(sum(quantity), 0)
  FROM inventory_claims
 WHERE product_id = $1 AND expires_at > now()`

// insertCheckoutSQL inserts an open checkout and its claim, both expiring
// $3 seconds from now. $1 product_id, $2 quantity.
const insertCheckoutSQL = `
WITH c AS (
    INSERT INTO checkouts (product_id, quantity, expires_at)
    VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))
    RETURNING id, product_id, quantity, state, created_at, updated_at, expires_at
), claim AS (
    INSERT INTO inventory_claims (checkout_id, product_id, quantity, expires_at)
    SELECT id, product_id, quantity, expires_at FROM c
)
SELECT id, state, created_at, updated_at, expires_at FROM c`

// lockCheckoutProductSQL locks the product of checkout $1 (the first lock)
// and returns its id and SKU; no row when the checkout does not exist.
const lockCheckoutProductSQL = `
SELECT p.id, p.sku
  FROM checkouts c
  JOIN products p ON p.id = c.product_id
 WHERE c.id = $1
   FOR UPDATE OF p`

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

// releaseClaimSQL deletes the claim of checkout $1 (if any) and sets the
// checkout's state to $2 (abandoned or expired).
const releaseClaimSQL = `
WITH cl AS (
    DELETE FROM inventory_claims WHERE checkout_id = $1
)
UPDATE checkouts SET state = $2, updated_at = clock_timestamp()
 WHERE id = $1
RETURNING updated_at`

// completeSQL sells the claim of checkout $1: it deletes the claim, takes
// its quantity off the product's stock and marks the checkout completed, in
// one statement. No row when the checkout has no claim. The stock CHECK
// refuses a sale that would make it negative.
const completeSQL = `
WITH cl AS (
    DELETE FROM inventory_claims WHERE checkout_id = $1
    RETURNING product_id, quantity
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
// checkouts and marks those checkouts expired, returning how many. Rows
// another transaction holds are skipped (the next run takes them); the
// claim is locked with its checkout so that a claim extended meanwhile is
// checked again. It takes no product lock: deleting a claim can only free
// units.
const pruneSQL = `
WITH doomed AS (
    SELECT c.id
      FROM inventory_claims cl
      JOIN checkouts c ON c.id = cl.checkout_id
     WHERE cl.expires_at <= now()
       AND c.state IN ('open', 'payment_failed')
     ORDER BY cl.expires_at
     LIMIT $1
       FOR UPDATE OF c, cl SKIP LOCKED
), released AS (
    DELETE FROM inventory_claims cl
     USING doomed
     WHERE cl.checkout_id = doomed.id
    RETURNING cl.checkout_id
), expired AS (
    UPDATE checkouts c SET state = 'expired', updated_at = clock_timestamp()
      FROM released
     WHERE c.id = released.checkout_id
    RETURNING c.id
)
SELECT count(*) FROM expired`
