package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/aftercommit/aftercommit/internal/bench"
)

func printBenchUsage(w io.Writer, printFlags func(io.Writer)) {
	fmt.Fprintf(w, `Usage:
  aftercommit bench [--scenario NAME,...] [--rounds N] [--duration D] [--scale X] [--json] [--chart PATH]

Runs benchmark scenarios, each against its baseline in this one process, on
the database's server: every scenario works in a scratch schema of its own
(created, migrated, dropped). The sides of a scenario alternate for --rounds
rounds; the table gives each side's median, min and max and the ratio of its
median to the baseline's, measured in the same run. Figures and their
reading: BENCHMARKS.md. --chart draws the growth scenario's throughput
and latency against the jobs already in the table as a PNG (docs/growth.png
in the repository).

Scenarios: %s.

Exit codes: 0 done (goals met or not: read the table), 1 failure, 2 bad
usage, 130 interrupted.

Flags:
`, strings.Join(bench.Names(), ", "))
	printFlags(w)
}

func runBench(ctx context.Context, args []string, e *env) int {
	const name = "bench"
	fs := newFlagSet(name, e)
	var db dbFlags
	db.register(fs)
	scenarios := fs.String("scenario", "", "comma-separated scenarios to run (default: all)")
	rounds := fs.Int("rounds", bench.RoundsDefault, "rounds of each side, alternated")
	duration := fs.Duration("duration", bench.DurationDefault, "how long each timed side runs per round")
	scale := fs.Float64("scale", bench.ScaleDefault, "multiply the fixed sizes (100,000 jobs at 1)")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	verbose := fs.Bool("v", false, "print every round's figures on stderr as they come")
	chart := fs.String("chart", "", "write the growth scenario's chart to this PNG file (its directory is created)")
	usage := commandUsage(fs, e, printBenchUsage)

	positional, code, ok := parseArgs(fs, e, name, usage, args)
	if !ok {
		return code
	}
	if len(positional) > 0 {
		return usageError(e, name, fmt.Sprintf("bench takes no arguments, got %s", strings.Join(positional, " ")))
	}
	// Zero means "default" to bench.Config, not on the command line.
	switch {
	case *rounds < 1:
		return usageError(e, name, fmt.Sprintf("--rounds must be in 1…100, got %d", *rounds))
	case *duration <= 0:
		return usageError(e, name, fmt.Sprintf("--duration must be at least 10ms, got %s", *duration))
	case !(*scale > 0):
		return usageError(e, name, fmt.Sprintf("--scale must be in (0, 100], got %g", *scale))
	}
	cfg := bench.Config{Rounds: *rounds, Duration: *duration, Scale: *scale}
	if *scenarios != "" {
		cfg.Scenarios = splitList(*scenarios)
	}
	if *verbose {
		cfg.Out = e.stderr
	}
	db.resolve(fs, e)
	cfg.DatabaseURL = db.url
	// Check the configuration before touching the database.
	if err := bench.Validate(cfg); err != nil {
		return usageError(e, name, strings.TrimPrefix(err.Error(), bench.ErrInvalidConfig.Error()+": "))
	}
	if *chart != "" && cfg.Scenarios != nil && !slices.Contains(cfg.Scenarios, bench.GrowthScenario) {
		return usageError(e, name, fmt.Sprintf("--chart draws the %s scenario, which --scenario %s leaves out", bench.GrowthScenario, *scenarios))
	}

	report, err := bench.Run(ctx, cfg)
	if err != nil {
		if errors.Is(err, bench.ErrInvalidConfig) {
			return usageError(e, name, err.Error())
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
