#!/usr/bin/env bash
# The Postgres floor of "a transaction with one job vs without": pgbench runs
# tx_plain.sql and tx_job_pipelined.sql alternately (ROUNDS rounds of SECONDS
# each, at 1 and 8 clients) in a scratch schema, and prints the median tps of
# each and their ratio. No Go code is involved: this is what inserting one
# river_job row costs the server on this machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}
schema=aftercommit_pgbench_floor
rounds=${ROUNDS:-5}
seconds=${SECONDS_PER_RUN:-6}

psql -X -q "$url" -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" >/dev/null
trap 'psql -X -q "$url" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1' EXIT
(cd "$root" && go run ./cmd/aftercommit migrate up --database-url "$url" --schema "$schema" >/dev/null)

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

printf '| clients | plain tps (median) | job tps (median) | ratio of time per transaction |\n|---:|---:|---:|---:|\n'
for clients in 1 8; do
  : >/tmp/floor_plain.$$; : >/tmp/floor_job.$$
  for _ in $(seq "$rounds"); do
    for script in plain job; do
      file=$here/tx_plain.sql; [ $script = job ] && file=$here/tx_job_pipelined.sql
      PGOPTIONS="-c search_path=$schema" pgbench -n -M extended -f "$file" -c "$clients" -j "$(( clients < 2 ? 1 : 2 ))" -T "$seconds" "$url" 2>/dev/null \
        | awk '/^tps/ {print $3}' >>/tmp/floor_$script.$$
    done
  done
  p=$(median </tmp/floor_plain.$$); j=$(median </tmp/floor_job.$$)
  printf '| %d | %.0f | %.0f | %.2f |\n' "$clients" "$p" "$j" "$(echo "$p / $j" | bc -l)"
  rm -f /tmp/floor_plain.$$ /tmp/floor_job.$$
done
