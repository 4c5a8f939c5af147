package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/aftercommit/aftercommit/internal/bench"
	"github.com/aftercommit/aftercommit/internal/pgserver"
)

func printBenchUsage(w io.Writer, printFlags func(io.Writer)) {
	fmt.Fprintf(w, `Usage:
  aftercommit bench [--scenario NAME,...] [--rounds N] [--duration D] [--scale X] [--json] [--chart PATH]
  aftercommit bench --soak D [--interval D] [--scale X] [--json]
  aftercommit bench --holdback D [--interval D] [--rate N] [--stacks bare,full] [--apart] [--private-server] [--json] [--chart PATH]

Runs benchmark scenarios, each against its baseline in this one process, on
the database's server: every scenario works in a scratch schema of its own
(created, migrated, dropped). The sides of a scenario alternate for --rounds
rounds; the table gives each side's median, min and max and the ratio of its
median to the baseline's, measured in the same run. Figures and their
reading: BENCHMARKS.md. --chart draws the growth scenario's throughput
and latency against the jobs already in the table as a PNG (docs/growth.png
in the repository).

Scenarios: %s.

--soak D runs the demo workload for D instead of the scenarios: round after
round of 'aftercommit demo' (donations, opens and clicks, a flash sale with
failing payments, bulk car users), at most one round ahead of an in-process
worker of every queue, in a scratch schema of its own. Every --interval it
prints on stderr the jobs completed per second, their p50 and p99 latency
(finalized_at - scheduled_at), the job errors, discarded jobs, application
errors, the backlog, and the sizes of river_job (with its dead tuples),
outbox_events and job_locks. Then it drains the queues, checks the demo's
invariants over every round and compares the last third of the run with the
first: jobs/s, p99 and river_job's growth per minute, as ratios. --scale
sizes each round as the demo's --scale (default %g with --soak). CI runs 60s
of it (internal/bench TestSoak60s).

--holdback D measures a transaction that holds back vacuum: per stack (bare:
River alone; full: the outbox, a relay and the runtime's client with a
worker lock), a held side and a clear side run at once, each in a database
of its own at --rate jobs/s (default %d). After two intervals a session of
the held side opens a REPEATABLE READ transaction and holds its snapshot for
D, then lets go; the run watches two intervals more. Every --interval
(default %s with --holdback) it samples both sides: jobs done per second,
commit-to-start p50 and p99, the backlog, the dead tuples of river_job,
outbox_jobs, job_locks and outbox_events, and the holder db_vacuum_holdback
names. It ends with the held side's last interval of the hold against the
clear side's medians over the hold, as ratios. --apart runs the clear side
first, then the held side, each alone. Run it
where autovacuum is on, as in production: --private-server starts a server
of its own (initdb, default settings, removed at the end) instead of
--database-url's. --chart draws the run (docs/holdback.png).

Exit codes: 0 done (goals met or not: read the table; with --soak: no job
lost, discarded or failed unexpectedly and every invariant held, stable or
not), 1 failure, 2 bad usage, 130 interrupted.

Flags:
`, strings.Join(bench.Names(), ", "), bench.SoakScaleDefault, bench.HoldbackRateDefault, bench.HoldbackIntervalDefault)
	printFlags(w)
}

func runBench(ctx context.Context, args []string, e *env) int {
	c := newFrame("bench", e, printBenchUsage)
	fs := c.fs
	scenarios := fs.String("scenario", "", "comma-separated scenarios to run (default: all)")
	rounds := fs.Int("rounds", bench.RoundsDefault, "rounds of each side, alternated")
	duration := fs.Duration("duration", bench.DurationDefault, "how long each timed side runs per round")
	scale := fs.Float64("scale", bench.ScaleDefault, "multiply the fixed sizes (100,000 jobs at 1)")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	verbose := fs.Bool("v", false, "print every round's figures on stderr as they come (--soak: its samples, even with --json)")
	chart := fs.String("chart", "", "write the growth scenario's (--holdback: the run's) chart to this PNG file (its directory is created)")
	soak := fs.Duration("soak", 0, "run the demo workload for this long and sample it (the soak mode; see above)")
	interval := fs.Duration("interval", bench.SoakIntervalDefault, "with --soak or --holdback: how often to sample (--holdback: 30s unless set)")
	holdback := fs.Duration("holdback", 0, "hold a snapshot this long beside a steady load and sample it (the holdback mode; see above)")
	rate := fs.Int("rate", bench.HoldbackRateDefault, "with --holdback: jobs per second on each side")
	stacks := fs.String("stacks", bench.HoldbackBare+","+bench.HoldbackFull, "with --holdback: the stacks to run, one after the other")
	apart := fs.Bool("apart", false, "with --holdback: run the clear side, then the held side, each alone (a machine too small for both at --rate)")
	privateServer := fs.Bool("private-server", false, "with --holdback: run on a Postgres server of its own, autovacuum on (initdb)")

	if _, code, ok := c.parse(args, true); !ok {
		return code
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["soak"] && set["holdback"] {
		return c.usageError("--soak and --holdback are two modes: pick one")
	}
	if !set["holdback"] {
		for _, only := range []string{"rate", "stacks", "apart", "private-server"} {
			if set[only] {
				return c.usageError(fmt.Sprintf("--%s goes with --holdback", only))
			}
		}
	}
	if set["holdback"] {
		for _, other := range []string{"scenario", "rounds", "duration", "scale", "soak"} {
			if set[other] {
				return c.usageError(fmt.Sprintf("--holdback runs its own load, not the scenarios: drop --%s", other))
			}
		}
		if *privateServer && set["database-url"] {
			return c.usageError("--private-server runs on a server of its own: drop --database-url")
		}
		cfg := bench.HoldbackConfig{Hold: *holdback, Rate: *rate, Stacks: splitList(*stacks), Apart: *apart}
		if set["interval"] {
			cfg.Interval = *interval
		}
		return runHoldback(ctx, c, cfg, *privateServer, *chart, *asJSON, *verbose)
	}
	if set["soak"] {
		for _, other := range []string{"scenario", "rounds", "duration", "chart"} {
			if set[other] {
				return c.usageError(fmt.Sprintf("--soak runs the demo workload, not the scenarios: drop --%s", other))
			}
		}
		cfg := bench.SoakConfig{Duration: *soak, Interval: *interval, Scale: bench.SoakScaleDefault}
		if set["scale"] {
			cfg.Scale = *scale
		}
		return runSoak(ctx, c, cfg, *asJSON, *verbose)
	}
	if set["interval"] {
		return c.usageError("--interval goes with --soak or --holdback")
	}
	// Zero means "default" to bench.Config, not on the command line.
	switch {
	case *rounds < 1:
		return c.usageError(fmt.Sprintf("--rounds must be in 1…100, got %d", *rounds))
	case *duration <= 0:
		return c.usageError(fmt.Sprintf("--duration must be at least 10ms, got %s", *duration))
	case !(*scale > 0):
		return c.usageError(fmt.Sprintf("--scale must be in (0, 100], got %g", *scale))
	}
	cfg := bench.Config{Rounds: *rounds, Duration: *duration, Scale: *scale}
	if *scenarios != "" {
		cfg.Scenarios = splitList(*scenarios)
	}
	if *verbose {
		cfg.Out = e.stderr
	}
	c.resolveDB()
	cfg.DatabaseURL = c.db.url
	// Check the configuration before touching the database.
	if err := bench.Validate(cfg); err != nil {
		return c.usageError(strings.TrimPrefix(err.Error(), bench.ErrInvalidConfig.Error()+": "))
	}
	if *chart != "" && cfg.Scenarios != nil && !slices.Contains(cfg.Scenarios, bench.GrowthScenario) {
		return c.usageError(fmt.Sprintf("--chart draws the %s scenario, which --scenario %s leaves out", bench.GrowthScenario, *scenarios))
	}

	report, err := bench.Run(ctx, cfg)
	if err != nil {
		if errors.Is(err, bench.ErrInvalidConfig) {
			return c.usageError(err.Error())
		}
		return reportError(ctx, e, fmt.Errorf("aftercommit %w", err))
	}
	if *asJSON {
		if err := writeJSON(e.stdout, report); err != nil {
			return reportError(ctx, e, err)
		}
	} else {
		report.Print(e.stdout)
	}
	// After the figures, so that a chart that cannot be written loses none.
	if *chart != "" {
		if err := os.MkdirAll(filepath.Dir(*chart), 0o755); err != nil {
			return reportError(ctx, e, fmt.Errorf("aftercommit bench: writing the chart: %w", err))
		}
		if err := bench.WriteGrowthChart(*chart, report.Results); err != nil {
			return reportError(ctx, e, fmt.Errorf("aftercommit %w", err))
		}
	}
	return exitOK
}

// runSoak runs `aftercommit bench --soak`.
func runSoak(ctx context.Context, c *frame, cfg bench.SoakConfig, asJSON, verbose bool) int {
	e := c.e
	// Zero means "default" to bench.SoakConfig, not on the command line.
	switch {
	case cfg.Duration <= 0:
		return c.usageError(fmt.Sprintf("--soak must be at least 1s, got %s", cfg.Duration))
	case cfg.Interval <= 0:
		return c.usageError(fmt.Sprintf("--interval must be in 100ms…the --soak duration, got %s", cfg.Interval))
	case !(cfg.Scale > 0):
		return c.usageError(fmt.Sprintf("--scale must be in (0, 100], got %g", cfg.Scale))
	}
	c.resolveDB()
	cfg.DatabaseURL = c.db.url
	if err := bench.ValidateSoak(cfg); err != nil {
		return c.usageError(strings.TrimPrefix(err.Error(), bench.ErrInvalidConfig.Error()+": "))
	}
	if !asJSON || verbose {
		cfg.Out = e.stderr // the samples as they come; the report goes to stdout
	}
	report, err := bench.Soak(ctx, cfg)
	if err != nil {
		if errors.Is(err, bench.ErrInvalidConfig) {
			return c.usageError(err.Error())
		}
		return reportError(ctx, e, fmt.Errorf("aftercommit %w", err))
	}
	if asJSON {
		if err := writeJSON(e.stdout, report); err != nil {
			return reportError(ctx, e, err)
		}
	} else {
		report.Print(e.stdout)
	}
	if !report.OK {
		fmt.Fprintf(e.stderr, "aftercommit bench: the soak failed: %s\n", strings.Join(report.Failures, "; "))
		return exitFailure
	}
	return exitOK
}

// runHoldback runs `aftercommit bench --holdback`.
func runHoldback(ctx context.Context, c *frame, cfg bench.HoldbackConfig, private bool, chart string, asJSON, verbose bool) int {
	e := c.e
	// Zero means "default" to bench.HoldbackConfig, not on the command line.
	switch {
	case cfg.Hold <= 0:
		return c.usageError(fmt.Sprintf("--holdback must be at least the interval, got %s", cfg.Hold))
	case cfg.Rate <= 0:
		return c.usageError(fmt.Sprintf("--rate must be in 1…20000, got %d", cfg.Rate))
	}
	if err := bench.ValidateHoldback(cfg); err != nil {
		return c.usageError(strings.TrimPrefix(err.Error(), bench.ErrInvalidConfig.Error()+": "))
	}
	if private {
		srv, err := pgserver.Start(ctx, "")
		if err != nil {
			return reportError(ctx, e, fmt.Errorf("aftercommit bench: starting a private server: %w", err))
		}
		defer srv.Stop() //nolint:contextcheck // the server goes, even after ctx was cancelled
		cfg.DatabaseURL = srv.URL("")
	} else {
		c.resolveDB()
		cfg.DatabaseURL = c.db.url
	}
	if !asJSON || verbose {
		cfg.Progress = e.stderr // the samples as they come; the report goes to stdout
	}
	report, err := bench.Holdback(ctx, cfg)
	if err != nil {
		if errors.Is(err, bench.ErrInvalidConfig) {
			return c.usageError(err.Error())
		}
		return reportError(ctx, e, fmt.Errorf("aftercommit bench: %w", err))
	}
	if asJSON {
		if err := writeJSON(e.stdout, report); err != nil {
			return reportError(ctx, e, err)
		}
	} else {
		report.Print(e.stdout)
	}
	// After the figures, so that a chart that cannot be written loses none.
	if chart != "" {
		if err := os.MkdirAll(filepath.Dir(chart), 0o755); err != nil {
			return reportError(ctx, e, fmt.Errorf("aftercommit bench: writing the chart: %w", err))
		}
		if err := bench.WriteHoldbackChart(chart, report); err != nil {
			return reportError(ctx, e, fmt.Errorf("aftercommit %w", err))
		}
	}
	return exitOK
}
