-- One single_row claim, as inventory.BeginCheckout sends it (same SQL, same
-- round trips): BEGIN with its timeouts; lock the product row; count the
-- unexpired claims and insert the checkout and its claim; the expiry job's
-- river_job row pipelined with the COMMIT.
\startpipeline
BEGIN;
SET LOCAL lock_timeout = '2000ms';
SET LOCAL statement_timeout = '5000ms';
\endpipeline
SELECT id AS pid, stock FROM products WHERE sku = 'ROW' FOR NO KEY UPDATE \gset
WITH avail AS (
    SELECT :stock::integer - coalesce(sum(quantity), 0) AS n
      FROM inventory_claims
     WHERE product_id = :pid AND expires_at > now()
), c AS (
    INSERT INTO checkouts (product_id, quantity, expires_at)
    SELECT :pid, 1, clock_timestamp() + interval '1 second' FROM avail WHERE n >= 1
    RETURNING id, product_id, quantity, state, created_at, updated_at, expires_at
), claim AS (
    INSERT INTO inventory_claims (checkout_id, product_id, quantity, expires_at)
    SELECT id, product_id, quantity, expires_at FROM c
)
SELECT avail.n, c.id FROM avail LEFT JOIN c ON true;
\startpipeline
INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at)
  VALUES ('{"checkout_id": 1}', 'inventory.expire_checkout', 25, 1, 'inventory_checkout', 'scheduled', now() + interval '1 second') RETURNING id;
COMMIT;
\endpipeline
