-- The flash-sale checkout domain (package inventory). A checkout holds an
-- inventory claim while it is open, payment_failed or paid; the claim is
-- counted against products.stock until it expires or the checkout ends.
-- stock is decremented only when a paid checkout completes, in the same
-- transaction that deletes its claim, so stock + completed quantity is
-- constant. Every writer locks the product row first, then the checkout.
CREATE TABLE products (
    id         bigserial   PRIMARY KEY,
    sku        text        NOT NULL UNIQUE CHECK (length(sku) BETWEEN 1 AND 100),
    -- Units not yet sold. Never negative: an oversell cannot commit.
    stock      integer     NOT NULL CHECK (stock >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE checkouts (
    id         bigserial   PRIMARY KEY,
    product_id bigint      NOT NULL REFERENCES products (id),
    quantity   integer     NOT NULL CHECK (quantity > 0),
    state      text        NOT NULL DEFAULT 'open'
               CHECK (state IN ('open', 'payment_failed', 'paid', 'completed', 'expired', 'abandoned')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- When the checkout's claim expires (or expired) unless it is paid.
    expires_at timestamptz NOT NULL,
    -- The target of inventory_claims' composite foreign key: a claim always
    -- names its checkout's product and quantity.
    UNIQUE (id, product_id, quantity)
);
CREATE INDEX checkouts_product_idx ON checkouts (product_id);

-- Units held for a checkout. A paid checkout's claim never expires
-- (expires_at = 'infinity') until its completion deletes it.
CREATE TABLE inventory_claims (
    checkout_id bigint      PRIMARY KEY,
    product_id  bigint      NOT NULL REFERENCES products (id),
    quantity    integer     NOT NULL CHECK (quantity > 0),
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (checkout_id, product_id, quantity) REFERENCES checkouts (id, product_id, quantity)
);
-- BeginCheckout sums a product's unexpired claims.
CREATE INDEX inventory_claims_product_expires_idx ON inventory_claims (product_id, expires_at) INCLUDE (quantity);
-- PruneExpiredClaims finds expired claims across products.
CREATE INDEX inventory_claims_expires_idx ON inventory_claims (expires_at);
