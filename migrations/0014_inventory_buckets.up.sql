-- Hot products (package inventory): a product's claim strategy, and the
-- buckets that split a "buckets" product's stock so that buyers lock
-- different rows instead of all waiting on the product row.
--
-- single_row: a claim locks the product row and counts the unexpired claims
-- (0005). buckets: products.stock is split over product_buckets rows; a
-- claim takes one bucket row (FOR UPDATE SKIP LOCKED) and adds its quantity
-- to that bucket's claimed counter, which the CHECK keeps within the
-- bucket's stock, so an oversell cannot commit under either strategy.
ALTER TABLE products
    ADD COLUMN claim_strategy text NOT NULL DEFAULT 'single_row'
        CHECK (claim_strategy IN ('single_row', 'buckets'));

CREATE TABLE product_buckets (
    product_id bigint   NOT NULL REFERENCES products (id),
    bucket     smallint NOT NULL CHECK (bucket >= 0),
    -- This bucket's share of products.stock; the shares sum to it.
    stock      integer  NOT NULL CHECK (stock >= 0),
    -- The quantity of the claims held in this bucket, expired or not, until
    -- each is released (completed, abandoned, expired by a job).
    claimed    integer  NOT NULL DEFAULT 0 CHECK (claimed >= 0 AND claimed <= stock),
    PRIMARY KEY (product_id, bucket)
);

-- A claim of a buckets product names its bucket; NULL under single_row.
ALTER TABLE inventory_claims
    ADD COLUMN bucket smallint,
    ADD CONSTRAINT inventory_claims_bucket_fkey
        FOREIGN KEY (product_id, bucket) REFERENCES product_buckets (product_id, bucket);

-- The composite foreign key to checkouts (id, product_id, quantity) already
-- ties a claim to an existing product (checkouts.product_id references
-- products); the direct one only added a check per claim and a FOR KEY
-- SHARE lock on the hot product row, which every concurrent claimer of that
-- product then shares through a growing MultiXact.
ALTER TABLE inventory_claims DROP CONSTRAINT inventory_claims_product_id_fkey;
