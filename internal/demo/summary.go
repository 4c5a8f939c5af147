package demo

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aftercommit/aftercommit/jobs/jobstats"
)

// Summary is what a run did and found.
type Summary struct {
	// Scale and Seed are the run's.
	Scale float64
	Seed  uint64
	// Tag marks every row the run created.
	Tag string
	// Started is when the run began; Took how long it lasted.
	Started time.Time
	Took    time.Duration
	// Phases are the scenario's phases, in order.
	Phases []Phase
	// Drain is how long the queues took to drain after the last phase.
	Drain time.Duration
	// Kinds are the job statistics of the last hour, per kind (from the
	// job_kind_stats view, so they include earlier runs of the last hour).
	Kinds []jobstats.KindStats
	// Invariants are the checks against the source of truth.
	Invariants []Invariant
}

// Phase is one phase of the scenario.
type Phase struct {
	// Name says what the phase did.
	Name string
	// Ops is the number of API calls (or rows seeded).
	Ops int
	// Took is the phase's wall time.
	Took time.Duration
}

// Invariant is one check of what the jobs did against the source of truth.
type Invariant struct {
	// Name says what is checked.
	Name string
	// Want and Got are the expected and the found values.
	Want, Got string
	// OK says whether they agree.
	OK bool
}

// OK reports whether every invariant held.
func (s *Summary) OK() bool {
	for _, inv := range s.Invariants {
		if !inv.OK {
			return false
		}
	}
	return len(s.Invariants) > 0
}

// Failed returns the invariants that did not hold.
func (s *Summary) Failed() []Invariant {
	var out []Invariant
	for _, inv := range s.Invariants {
		if !inv.OK {
			out = append(out, inv)
		}
	}
	return out
}

// drainStatesSQL counts the run's work still waiting: jobs available,
// running, retryable or pending, and scheduled jobs already due (River's
// scheduler promotes them every few seconds), plus the outbox rows no relay
// has moved yet, in the same snapshot (a job's completion and the outbox
// rows it enqueued commit together). Scheduled jobs due later (a checkout's
// expiry, ten minutes out) are not waited for.
const drainStatesSQL = `
SELECT (SELECT count(*) FROM river_job
         WHERE state IN ('available', 'running', 'retryable', 'pending')
            OR (state = 'scheduled' AND scheduled_at <= now()))
     + (SELECT count(*) FROM outbox_jobs)`

// drain waits until no job is left to run now, or cfg.DrainTimeout.
func (r *run) drain(ctx context.Context) error {
	start := time.Now()
	deadline := start.Add(r.cfg.DrainTimeout)
	for {
		var left int64
		if err := r.pool.QueryRow(ctx, drainStatesSQL).Scan(&left); err != nil {
			return fmt.Errorf("demo: waiting for the queues: %w", err)
		}
		if left == 0 {
			r.summary.Drain = time.Since(start)
			_, _ = fmt.Fprintf(r.cfg.Out, "%-28s %7s in %6.2fs\n", "queues drained", "", r.summary.Drain.Seconds())
			return nil
		}
		if time.Now().After(deadline) {
			hint := ""
			if r.cfg.ExternalWorkers {
				hint = " (--external-workers: are workers running against this database?)"
			}
			return fmt.Errorf("demo: %d jobs still waiting after %s%s; see 'aftercommit stats'", left, r.cfg.DrainTimeout, hint)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: interrupted while waiting for the queues: %w", context.Cause(ctx))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// check compares what the scenario did with what the database holds.
func (r *run) check(ctx context.Context) error {
	e := &r.expect
	add := func(name string, want, got any) {
		w, g := fmt.Sprint(want), fmt.Sprint(got)
		r.summary.Invariants = append(r.summary.Invariants, Invariant{Name: name, Want: w, Got: g, OK: w == g})
	}
	one := func(sql string, args ...any) (int64, error) {
		var n int64
		err := r.pool.QueryRow(ctx, sql, args...).Scan(&n)
		return n, err
	}

	// Donations: the flagged emails are exactly the expected ones.
	flagged, err := r.queryInt64s(ctx, `SELECT id FROM emails WHERE id = ANY($1) AND donated ORDER BY id`, emailIDs(e))
	if err != nil {
		return fmt.Errorf("demo: reading the flagged emails: %w", err)
	}
	want := make([]int64, 0, len(e.flagged))
	for id := range e.flagged {
		want = append(want, id)
	}
	slices.Sort(want)
	add("emails flagged by donations", len(want), len(flagged))
	add("flagged emails are exactly the expected ones", true, slices.Equal(want, flagged))

	// Counter caches: per fundraiser, as the scenario counted its succeeded
	// donations; per user, as a GROUP BY over the donations.
	rows, err := r.pool.Query(ctx, `SELECT id, donations_count, donations_total_cents FROM fundraisers WHERE id = ANY($1)`, e.fundraiserIDs)
	if err != nil {
		return fmt.Errorf("demo: reading the fundraisers: %w", err)
	}
	var (
		mismatched, counted, cents int64
		fid, fcount, fcents        int64
	)
	if _, err := pgx.ForEachRow(rows, []any{&fid, &fcount, &fcents}, func() error {
		if exp := e.succeededByFundraiser[fid]; fcount != exp.count || fcents != exp.cents {
			mismatched++
		}
		counted += fcount
		cents += fcents
		return nil
	}); err != nil {
		return fmt.Errorf("demo: reading the fundraisers: %w", err)
	}
	add("fundraiser counter caches off", 0, mismatched)
	usersOff, err := one(`
SELECT count(*) FROM users u
 WHERE u.email LIKE '%.' || $1 || '@demo.example'
   AND u.donations_count <> (SELECT count(*) FROM donations d WHERE d.user_id = u.id AND d.status = 'succeeded')`, r.tag)
	if err != nil {
		return fmt.Errorf("demo: checking the user counter caches: %w", err)
	}
	add("user counter caches off", 0, usersOff)

	// Opens and clicks: every event folded exactly once.
	var opens, clicks, wantOpens, wantClicks, off int64
	for _, n := range e.opens {
		wantOpens += n
	}
	for _, n := range e.clicks {
		wantClicks += n
	}
	ids := emailIDs(e)
	erows, err := r.pool.Query(ctx, `SELECT id, opens, clicks FROM emails WHERE id = ANY($1)`, ids)
	if err != nil {
		return fmt.Errorf("demo: reading the email counters: %w", err)
	}
	var id, o, c int64
	if _, err := pgx.ForEachRow(erows, []any{&id, &o, &c}, func() error {
		opens += o
		clicks += c
		if o != e.opens[id] || c != e.clicks[id] {
			off++
		}
		return nil
	}); err != nil {
		return fmt.Errorf("demo: reading the email counters: %w", err)
	}
	add("email opens", wantOpens, opens)
	add("email clicks", wantClicks, clicks)
	add("emails whose counters are off", 0, off)
	pendingDeltas, err := one(`SELECT count(*) FROM email_counter_deltas WHERE email_id = ANY($1)`, ids)
	if err != nil {
		return fmt.Errorf("demo: counting the unfolded deltas: %w", err)
	}
	add("unfolded open/click deltas", 0, pendingDeltas)

	// Flash sale.
	var stock, completed, completedQty, claimsHeld int64
	if err := r.pool.QueryRow(ctx, `
SELECT p.stock,
       (SELECT count(*) FROM checkouts WHERE product_id = p.id AND state = 'completed'),
       (SELECT coalesce(sum(quantity), 0) FROM checkouts WHERE product_id = p.id AND state = 'completed'),
       (SELECT count(*) FROM inventory_claims WHERE product_id = p.id AND expires_at = 'infinity')
  FROM products p WHERE sku = $1`, e.sku).Scan(&stock, &completed, &completedQty, &claimsHeld); err != nil {
		return fmt.Errorf("demo: reading the flash sale: %w", err)
	}
	add("units sold ≤ stock", true, completedQty <= int64(e.initialStock))
	add("stock + units sold = initial stock", e.initialStock, stock+completedQty)
	add("completed checkouts = paid checkouts", e.paid, completed)
	add("paid claims left unsold", 0, claimsHeld)

	// Car users: one report per car, exact.
	reports, err := r.pool.Query(ctx, `
SELECT c.id, coalesce(r.users_count, -1),
       (SELECT count(*) FROM car_users cu WHERE cu.car_id = c.id)
  FROM cars c LEFT JOIN car_reports r ON r.car_id = c.id
 WHERE c.id = ANY($1)`, e.cars)
	if err != nil {
		return fmt.Errorf("demo: reading the car reports: %w", err)
	}
	var carID, reported, pairs int64
	var reportsOK, pairsOK, carsSeen int64
	if _, err := pgx.ForEachRow(reports, []any{&carID, &reported, &pairs}, func() error {
		carsSeen++
		if pairs == int64(e.carUsers[carID]) {
			pairsOK++
		}
		if reported == pairs {
			reportsOK++
		}
		return nil
	}); err != nil {
		return fmt.Errorf("demo: reading the car reports: %w", err)
	}
	add("cars with all their users", len(e.cars), pairsOK)
	add("car reports equal to car_users", len(e.cars), reportsOK)
	waitingReports, err := one(`SELECT count(*) FROM river_job WHERE kind = 'reporting.car_report' AND (args->>'car_id')::bigint = ANY($1)
	   AND state NOT IN ('completed', 'cancelled', 'discarded')`, e.cars)
	if err != nil {
		return fmt.Errorf("demo: counting the report jobs: %w", err)
	}
	add("car report jobs left waiting", 0, waitingReports)
	// Imports: each finished once, its callback's event published once.
	importsDone, err := one(`SELECT count(DISTINCT payload->>'import_id') FILTER (WHERE (payload->>'jobs')::int = (payload->>'completed')::int)
	      - (count(*) - count(DISTINCT payload->>'import_id'))
	  FROM outbox_events WHERE topic = 'import.finished' AND payload->>'import_id' = ANY($1)`, e.imports)
	if err != nil {
		return fmt.Errorf("demo: counting the import.finished events: %w", err)
	}
	add("imports finished, each once (import.finished)", len(e.imports), importsDone)

	// Rollups: fundraiser_daily_totals equals a GROUP BY over the donations.
	rollupOff, err := one(`
WITH truth AS (
    SELECT fundraiser_id, (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n, sum(amount_cents) AS cents
      FROM donations WHERE status = 'succeeded' AND fundraiser_id = ANY($1)
     GROUP BY 1, 2
), rollup AS (
    SELECT fundraiser_id, day, donations_count::bigint AS n, total_cents AS cents
      FROM fundraiser_daily_totals WHERE fundraiser_id = ANY($1)
)
SELECT count(*) FROM (
    (SELECT * FROM truth EXCEPT SELECT * FROM rollup)
    UNION ALL
    (SELECT * FROM rollup EXCEPT SELECT * FROM truth)
) diff`, e.fundraiserIDs)
	if err != nil {
		return fmt.Errorf("demo: comparing the rollups: %w", err)
	}
	add("rollup rows differing from GROUP BY", 0, rollupOff)
	add("rollup totals = fundraiser totals", fmt.Sprintf("%d/%d", counted, cents), r.rollupTotals(ctx, e.fundraiserIDs))

	failed, err := one(`SELECT count(*) FROM river_job WHERE state IN ('discarded', 'retryable') AND created_at >= $1`, r.summary.Started)
	if err != nil {
		return fmt.Errorf("demo: counting failed jobs: %w", err)
	}
	add("jobs discarded or awaiting retry", 0, failed)
	return nil
}

// rollupTotals sums the rollup of fundraisers as "count/cents".
func (r *run) rollupTotals(ctx context.Context, fundraisers []int64) string {
	var n, cents int64
	if err := r.pool.QueryRow(ctx, `
SELECT coalesce(sum(donations_count), 0), coalesce(sum(total_cents), 0) FROM fundraiser_daily_totals WHERE fundraiser_id = ANY($1)`,
		fundraisers).Scan(&n, &cents); err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprintf("%d/%d", n, cents)
}

func emailIDs(e *expectations) []int64 {
	ids := make([]int64, len(e.emails))
	for i, em := range e.emails {
		ids[i] = em.id
	}
	return ids
}

// collectJobStats reads the job statistics of the last hour.
func (r *run) collectJobStats(ctx context.Context) error {
	report, err := jobstats.Collect(ctx, r.pool, nil)
	if err != nil {
		return fmt.Errorf("demo: reading the job statistics: %w", err)
	}
	for _, k := range report.Kinds {
		if k.Period == jobstats.PeriodHour {
			r.summary.Kinds = append(r.summary.Kinds, k)
		}
	}
	return nil
}

// Print writes the summary for a person.
func (s *Summary) Print(w io.Writer) {
	_, _ = fmt.Fprintf(w, "\naftercommit demo: scale %g, seed %d, tag %s, %.1fs in all (queues drained %.1fs after the last phase)\n\n",
		s.Scale, s.Seed, s.Tag, s.Took.Seconds(), s.Drain.Seconds())

	_, _ = fmt.Fprintln(w, "Jobs in the last hour, per kind")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	_, _ = fmt.Fprintln(tw, "  KIND\tCOMPLETED\tFAILED\tDISCARDED\tRUN p50\tp95\tp99\tLATENCY p50\tp95\tp99")
	for _, k := range s.Kinds {
		_, _ = fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Kind, k.Completed, k.Failed, k.Discarded,
			msOf(k.RunTimeP50, k.Completed), msOf(k.RunTimeP95, k.Completed), msOf(k.RunTimeP99, k.Completed),
			msOf(k.QueueLatencyP50, k.Completed), msOf(k.QueueLatencyP95, k.Completed), msOf(k.QueueLatencyP99, k.Completed))
	}
	_ = tw.Flush()

	_, _ = fmt.Fprintln(w, "\nInvariants, checked against the source of truth")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, inv := range s.Invariants {
		mark := "ok  "
		if !inv.OK {
			mark = "FAIL"
		}
		detail := inv.Got
		if !inv.OK {
			detail = "got " + inv.Got + ", want " + inv.Want
		}
		_, _ = fmt.Fprintf(tw, "  %s\t%s\t%s\n", mark, inv.Name, detail)
	}
	_ = tw.Flush()
	if s.OK() {
		_, _ = fmt.Fprintf(w, "\nall %d invariants hold\n", len(s.Invariants))
	} else {
		names := make([]string, 0)
		for _, inv := range s.Failed() {
			names = append(names, inv.Name)
		}
		_, _ = fmt.Fprintf(w, "\n%d of %d invariants FAILED: %s\n", len(names), len(s.Invariants), strings.Join(names, "; "))
	}
}

// msOf prints d in milliseconds with one decimal, or "-" when no job
// completed (there is no percentile), as `aftercommit stats` does.
func msOf(d time.Duration, completed int64) string {
	if completed == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
}
