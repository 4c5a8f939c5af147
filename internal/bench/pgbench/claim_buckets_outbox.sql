-- One bucket claim as inventory.BeginCheckout's fast path sends it on the
-- default outbox path (same SQL, same round trips as claim_buckets.sql): the
-- expiry job is one outbox_jobs row (kind, args, scheduled_at, as the
-- outbox writes a job with a scheduled time) pipelined with the COMMIT
-- instead of River's row.
\startpipeline
BEGIN;
SET LOCAL lock_timeout = '2000ms';
SET LOCAL statement_timeout = '5000ms';
\endpipeline
WITH p AS (
    SELECT id, claim_strategy FROM products WHERE sku = 'BKT'
), pick AS (
    SELECT product_id, bucket
      FROM product_buckets
     WHERE product_id = (SELECT id FROM p WHERE claim_strategy = 'buckets')
       AND stock - claimed >= 1
     ORDER BY random()
     LIMIT 1
       FOR NO KEY UPDATE SKIP LOCKED
), b AS (
    UPDATE product_buckets pb SET claimed = pb.claimed + 1
      FROM pick
     WHERE pb.product_id = pick.product_id AND pb.bucket = pick.bucket
    RETURNING pb.product_id, pb.bucket
), c AS (
    INSERT INTO checkouts (product_id, quantity, expires_at)
    SELECT product_id, 1, clock_timestamp() + interval '1 second' FROM b
    RETURNING id, product_id, quantity, state, created_at, updated_at, expires_at
), claim AS (
    INSERT INTO inventory_claims (checkout_id, product_id, quantity, expires_at, bucket)
    SELECT c.id, c.product_id, c.quantity, c.expires_at, b.bucket FROM c, b
)
SELECT p.id, c.id FROM p LEFT JOIN c ON true;
\startpipeline
INSERT INTO outbox_jobs (kind, args, queue, priority, max_attempts, scheduled_at, metadata, options)
SELECT k, a::jsonb, q, p, m, s, md::jsonb, op::jsonb
  FROM unnest(ARRAY['inventory.expire_checkout'], ARRAY['{"checkout_id": 1}'], ARRAY[NULL]::text[], ARRAY[NULL]::int[], ARRAY[NULL]::int[],
              ARRAY[now() + interval '1 second'], ARRAY[NULL]::text[], ARRAY[NULL]::text[])
       AS r (k, a, q, p, m, s, md, op);
COMMIT;
\endpipeline
