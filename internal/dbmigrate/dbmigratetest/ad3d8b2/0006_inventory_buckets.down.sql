ALTER TABLE IF EXISTS inventory_claims
    ADD CONSTRAINT inventory_claims_product_id_fkey FOREIGN KEY (product_id) REFERENCES products (id);
ALTER TABLE IF EXISTS inventory_claims
    DROP CONSTRAINT IF EXISTS inventory_claims_bucket_fkey,
    DROP COLUMN IF EXISTS bucket;
DROP TABLE IF EXISTS product_buckets;
ALTER TABLE IF EXISTS products DROP COLUMN IF EXISTS claim_strategy;
