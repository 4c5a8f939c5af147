package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"golang.org/x/term"

	"github.com/aftercommit/aftercommit/internal/dbmigrate"
	"github.com/aftercommit/aftercommit/internal/demo"
	"github.com/aftercommit/aftercommit/internal/devdb"
)

func printDemoUsage(w io.Writer, printFlags func(io.Writer)) {
	fmt.Fprint(w, `Usage:
  aftercommit demo [--scale X] [--external-workers] [--drain-timeout D] [--seed N] [--nats URL]

Migrates the database, then plays a realistic scenario through aftercommit's
public APIs: 1,000 users and 10 fundraisers with 10,000 sent emails; 5,000
donations (by email link, by address, by new donors; 10 % failed payments);
20,000 email opens and clicks; a flash sale of 200 buyers for 100 units with
payment failures and abandons; a bulk import of 50,000 car users over 20
cars. A worker runs in-process unless --external-workers says cmd/worker
processes are running against the same database. When the queues have
drained it prints the jobs per kind with their p50/p95/p99 run time and queue
latency, and checks every invariant against the source of truth.

With --nats URL the run's donation.created events also go to NATS JetStream
(a stream of the run's own, removed at the end) through the events relay,
and a consumer keeps its own tally per fundraiser through the inbox, in a
schema of its own; two more invariants check it against the donations.

The database is --database-url, else DATABASE_URL, else the local server at
127.0.0.1:5432; when nothing answers there, a postgres:16 container is
started with Docker (testcontainers) for the run and removed when the demo
ends, Ctrl-C included.

Every row the demo creates carries the run's tag: the demo can run again on
the same database, and each run checks its own rows.

Exit codes: 0 every invariant holds, 1 an invariant failed or the demo could
not run, 2 bad usage, 130 interrupted.

Flags:
`)
	printFlags(w)
}

func runDemo(ctx context.Context, args []string, e *env) int {
	return runDemoWith(ctx, args, e, nil)
}

// runDemoWith is runDemo with dev telling where to look for a database when
// neither --database-url nor DATABASE_URL names one (nil: devdb's defaults,
// the local server, else a postgres:16 container). Its URL field is ignored.
func runDemoWith(ctx context.Context, args []string, e *env, dev *devdb.Config) int {
	c := newFrame("demo", e, printDemoUsage)
	fs := c.fs
	scale := fs.Float64("scale", demo.ScaleDefault, fmt.Sprintf("multiply every size of the scenario by `X` (0 < X ≤ %g)", demo.ScaleMax))
	external := fs.Bool("external-workers", false, "leave the jobs to cmd/worker processes already running against the database")
	natsURL := fs.String("nats", "", "also send the run's donation.created events to NATS JetStream at `URL` (a stream of the run's own) and check a consumer's tally kept through the inbox")
	drain := fs.Duration("drain-timeout", demo.DrainTimeoutDefault, "how long to wait for the queues to drain")
	seed := fs.Uint64("seed", 0, "seed of the scenario's random choices (0: random)")

	if _, code, ok := c.parse(args, true); !ok {
		return code
	}
	switch {
	case !(*scale > 0 && *scale <= demo.ScaleMax):
		return c.usageError(fmt.Sprintf("--scale must be in (0, %g], got %g", demo.ScaleMax, *scale))
	case *drain <= 0:
		return c.usageError(fmt.Sprintf("--drain-timeout must be positive, got %s", *drain))
	}
	// With no database named, the demo finds one: the local server, else a
	// throw-away postgres:16 container, removed on exit (Ctrl-C included).
	find := devdb.Config{}
	if dev != nil {
		find = *dev
	}
	find.URL = cmp.Or(c.db.url, e.getenv("DATABASE_URL"))
	find.DefaultURL = cmp.Or(find.DefaultURL, defaultDatabaseURL)
	found, err := devdb.Find(ctx, &find)
	if noServer := (*devdb.NoServerError)(nil); errors.As(err, &noServer) {
		fmt.Fprintln(e.stderr, "aftercommit demo: "+noServer.Error())
		return exitFailure
	}
	if err != nil {
		return reportError(ctx, e, err)
	}
	defer found.Close()
	if note := found.Note(); note != "" {
		fmt.Fprintln(e.stdout, "aftercommit demo: "+note)
	}
	c.db.url = found.URL
	c.resolveDB()

	// The scenario's goroutines, the in-process worker and its services.
	pool, code, ok := c.connect(ctx, demo.ConcurrencyDefault+12)
	if !ok {
		return code
	}
	defer pool.Close()
	res, err := dbmigrate.Up(ctx, pool, &dbmigrate.Options{Schema: c.db.schema})
	if err != nil {
		return reportResult(ctx, e, "up", res, err)
	}
	fmt.Fprintln(e.stdout, "migrate: "+describeResult("up", res))

	sum, err := demo.Run(ctx, pool, demo.Config{
		Scale:           *scale,
		ExternalWorkers: *external,
		Out:             e.stdout,
		Bars:            isTerminal(e.stdout),
		DrainTimeout:    *drain,
		Seed:            *seed,
		Schema:          c.db.schema,
		Logger:          slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		NATSURL:         *natsURL,
	})
	if err != nil {
		return reportError(ctx, e, fmt.Errorf("aftercommit %w", err)) // "aftercommit demo: …"
	}
	sum.Print(e.stdout)
	if !sum.OK() {
		fmt.Fprintf(e.stderr, "aftercommit demo: %d invariants failed (seed %d to replay)\n", len(sum.Failed()), sum.Seed)
		return exitFailure
	}
	return exitOK
}

// isTerminal reports whether w is a terminal (progress bars then).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd())) //nolint:gosec // a file descriptor fits an int
}
