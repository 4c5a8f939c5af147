// Command worker is aftercommit's worker daemon: it runs a River client that
// fetches and works the jobs the application enqueued in its transactions,
// until SIGINT or SIGTERM, then shuts down gracefully.
//
// Usage:
//
//	worker [flags]
//
// Every flag has an environment variable it falls back to:
//
//	--database-url      DATABASE_URL                  (default postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable)
//	--schema            AFTERCOMMIT_SCHEMA            (default: the connection's search_path)
//	--queues            AFTERCOMMIT_QUEUES            (default "default"; comma separated)
//	--max-workers       AFTERCOMMIT_MAX_WORKERS       (default 50, per queue, 1..10000)
//	--shutdown-timeout  AFTERCOMMIT_SHUTDOWN_TIMEOUT  (default 30s)
//	--log-level         AFTERCOMMIT_LOG_LEVEL         (default info)
//	--http              AFTERCOMMIT_HTTP              (default 127.0.0.1:9090; "" or off turns HTTP off)
//	--http-user         AFTERCOMMIT_HTTP_USER         (default none: no basic auth)
//	--http-password     AFTERCOMMIT_HTTP_PASSWORD     (set with --http-user; never logged)
//
// The database must be migrated first (`aftercommit migrate up`): the worker
// checks that River's and aftercommit's tables are at the versions it knows
// and refuses to start otherwise.
//
// # Development
//
// With --dev (a flag only, no environment variable, so a production
// deployment never turns it on by accident) the worker applies the
// migrations itself at start. When neither --database-url nor DATABASE_URL
// names a database and nothing answers at the default URL, it starts
// postgres:16 with Docker (testcontainers, as the tests do), logs the
// container's URL in one line — point `aftercommit demo --external-workers`
// at it with DATABASE_URL — and removes the container on exit, SIGINT and
// SIGTERM included. With neither a server nor Docker it exits 1 with one
// line saying how to provide a database.
//
// # HTTP
//
// Unless --http is off, the worker serves:
//
//	/healthz    200 while the process serves HTTP (liveness)
//	/readyz     200 when the database answers a ping within 1s and the River
//	            client is started; 503 with a one-line reason otherwise,
//	            including while shutting down (readiness)
//	/metrics    Prometheus text format: the job metrics of jobs.Metrics
//	            (aftercommit_job_…; not its outbox counters, the worker
//	            enqueues through no outbox), the backlog and stuck-job gauges
//	            of jobs.QueueMetrics (aftercommit_queue_…, read from the
//	            database at scrape by the worker River elected leader, at
//	            most every 10 s), the Go runtime and process collectors;
//	            deploy/prometheus has rules and alerts over them
//	/riverui/   the River UI (riverqueue.com/riverui): jobs, queues, errors;
//	            it can cancel, retry and delete jobs
//
// With --http-user and --http-password, /metrics and /riverui/ ask for basic
// auth; /healthz and /readyz never do, since orchestrators probe them
// without credentials. The default address is loopback only; an address
// beyond loopback without basic auth logs a warning at startup.
//
// # Shutdown
//
// On SIGINT or SIGTERM the worker stops fetching and waits up to the shutdown
// timeout for running jobs to finish. Jobs still running then have their
// contexts cancelled; River puts them back in the queue (state available,
// attempt not counted), so another worker runs them again. None is lost.
// /readyz answers 503 from the signal on; HTTP stops once the River client
// stopped.
//
// Exit codes: 0 stopped on a signal, 1 failure (database unreachable, schema
// not migrated, HTTP port in use, jobs that ignore cancellation), 2 bad
// flags.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
