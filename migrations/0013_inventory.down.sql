DROP TABLE IF EXISTS inventory_claims;
DROP TABLE IF EXISTS checkouts;
DROP TABLE IF EXISTS products;
