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
//
// The database must be migrated first (`aftercommit migrate up`): the worker
// checks that River's and aftercommit's tables are at the versions it knows
// and refuses to start otherwise.
//
// # Shutdown
//
// On SIGINT or SIGTERM the worker stops fetching and waits up to the shutdown
// timeout for running jobs to finish. Jobs still running then have their
// contexts cancelled; River puts them back in the queue (state available,
// attempt not counted), so another worker runs them again. None is lost.
//
// Exit codes: 0 stopped on a signal, 1 failure (database unreachable, schema
// not migrated, jobs that ignore cancellation), 2 bad flags.
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
