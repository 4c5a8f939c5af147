#!/usr/bin/env bash
# The Postgres ceiling of inventory claims on one hot product: pgbench runs
# claim_single_row.sql and claim_buckets.sql (32 buckets) alternately
# (ROUNDS rounds of SECONDS_PER_RUN each, at CLIENTS clients) in a scratch
# schema, from empty tables each run, and prints the median claims/s of each
# and their ratio. No Go code is involved: this is what the claim
# transactions of BenchmarkClaims cost the server alone on this machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
schema=aftercommit_pgbench_claims
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_RUN:-6}
clients=${CLIENTS:-32}

psql -X -q "$url" -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" >/dev/null
trap 'psql -X -q "$url" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1' EXIT
(cd "$root" && go run ./cmd/aftercommit migrate up --database-url "$url" --schema "$schema" >/dev/null)

reset() {
  PGOPTIONS="-c search_path=$schema" psql -X -q "$url" <<'SQL' >/dev/null
TRUNCATE inventory_claims, checkouts, product_buckets, products, river_job;
INSERT INTO products (sku, stock) VALUES ('ROW', 1000000000);
INSERT INTO products (sku, stock, claim_strategy) VALUES ('BKT', 1000000000, 'buckets');
INSERT INTO product_buckets (product_id, bucket, stock)
SELECT id, i, 1000000000 / 32 FROM products, generate_series(0, 31) i WHERE sku = 'BKT';
UPDATE products SET stock = 1000000000 / 32 * 32 WHERE sku = 'BKT';
VACUUM ANALYZE products, product_buckets;
SQL
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

: >/tmp/claims_single.$$; : >/tmp/claims_buckets.$$
for _ in $(seq "$rounds"); do
  for script in single_row buckets; do
    reset
    PGOPTIONS="-c search_path=$schema" pgbench -n -M prepared -f "$here/claim_$script.sql" -c "$clients" -j 2 -T "$seconds" "$url" 2>/dev/null \
      | awk '/^tps/ {print $3}' >>/tmp/claims_${script%_row}.$$
  done
done
s=$(median </tmp/claims_single.$$); b=$(median </tmp/claims_buckets.$$)
printf '| clients | single_row claims/s (median) | buckets_32 claims/s (median) | buckets / single_row |\n|---:|---:|---:|---:|\n'
printf '| %d | %.0f | %.0f | %.2f |\n' "$clients" "$s" "$b" "$(echo "$b / $s" | bc -l)"
rm -f /tmp/claims_single.$$ /tmp/claims_buckets.$$
