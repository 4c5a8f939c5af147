package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/reporting"
)

func printBackfillUsage(w io.Writer, printFlags func(io.Writer)) {
	fmt.Fprintf(w, `Usage:
  aftercommit backfill --from YYYY-MM-DD [--to YYYY-MM-DD]

Recomputes the daily donation rollups (fundraiser_daily_totals) from the
donations table for every UTC day from --from to --to (default: --from),
both included, one transaction per day; rows outside the range are not
touched. Use it for donations written without a donation.created event, or
older than the rollups. Safe while workers run. At most %d days.

Exit codes: 0 done, 1 failure (the days before it stay recomputed), 2 bad
usage, 130 interrupted.

Flags:
`, reporting.MaxBackfillDays)
	printFlags(w)
}

func runBackfill(ctx context.Context, args []string, e *env) int {
	c := newFrame("backfill", e, printBackfillUsage)
	fs := c.fs
	from := fs.String("from", "", "first UTC `day` to recompute (YYYY-MM-DD)")
	to := fs.String("to", "", "last UTC `day` to recompute (YYYY-MM-DD; default: --from)")

	if _, code, ok := c.parse(args, true); !ok {
		return code
	}
	if *from == "" {
		return c.usageError("--from is required")
	}
	first, err := time.Parse(time.DateOnly, *from)
	if err != nil {
		return c.usageError(fmt.Sprintf("--from %q is not a day (YYYY-MM-DD)", *from))
	}
	last := first
	if *to != "" {
		if last, err = time.Parse(time.DateOnly, *to); err != nil {
			return c.usageError(fmt.Sprintf("--to %q is not a day (YYYY-MM-DD)", *to))
		}
	}
	if last.Before(first) {
		return c.usageError(fmt.Sprintf("--to %s is before --from %s", *to, *from))
	}
	if days := int(last.Sub(first).Hours()/24) + 1; days > reporting.MaxBackfillDays {
		return c.usageError(fmt.Sprintf("%d days is more than %d: split the range", days, reporting.MaxBackfillDays))
	}
	c.resolveDB()

	pool, code, ok := c.connect(ctx, 0)
	if !ok {
		return code
	}
	defer pool.Close()
	reg := app.Registry(pool, nil)
	client, err := jobs.NewClient(pool, reg, &jobs.ClientConfig{Queues: []string{}, Schema: c.db.schema}) // insert only
	if err != nil {
		return reportError(ctx, e, fmt.Errorf("aftercommit backfill: %w", err))
	}
	ob, err := jobs.NewOutbox(pool, client, reg, nil)
	if err != nil {
		return reportError(ctx, e, fmt.Errorf("aftercommit backfill: %w", err))
	}
	out, err := reporting.NewService(pool, ob).Backfill(ctx, first, last)
	if err != nil {
		if out.Written+out.Emptied > 0 {
			fmt.Fprintf(e.stdout, "recomputed before the error: %d rows written, %d emptied, %d donations\n", out.Written, out.Emptied, out.Donations)
		}
		return reportError(ctx, e, fmt.Errorf("aftercommit backfill: %w", err))
	}
	fmt.Fprintf(e.stdout, "%s to %s: %d rows written, %d emptied, %d donations counted\n",
		first.Format(time.DateOnly), last.Format(time.DateOnly), out.Written, out.Emptied, out.Donations)
	return exitOK
}
