#!/usr/bin/env bash
# A throwaway Postgres server with the stock settings of its package —
# autovacuum ON, unlike this project's shared CI server — for the
# benchmarks whose figures depend on vacuum (outbox_size). It runs as the
# postgres user from a temporary directory and prints the URL to give
# `aftercommit bench` as DATABASE_URL:
#
#   url=$(internal/bench/pgbench/private_server.sh start)
#   DATABASE_URL=$url go run ./cmd/aftercommit bench --scenario outbox_size --rounds 1 --duration 10m
#   internal/bench/pgbench/private_server.sh stop
#
# PORT (default 5499) and DIR (default /tmp/aftercommit-private-pg) choose
# where it listens and lives; PG_BINDIR its binaries (default: the newest
# /usr/lib/postgresql/*/bin).
set -euo pipefail
port=${PORT:-5499}
dir=${DIR:-/tmp/aftercommit-private-pg}
bindir=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case ${1:-} in
start)
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    as_pg "$bindir/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 >/dev/null
  fi
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=100" start >/dev/null
  as_pg "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc "SHOW autovacuum" | grep -qx on \
    || { echo "private_server.sh: autovacuum is not on" >&2; exit 1; }
  echo "postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
  ;;
stop)
  as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
