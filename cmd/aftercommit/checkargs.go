package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/jobs/argcheck"
)

func printCheckArgsUsage(w io.Writer, printFlags func(io.Writer)) {
	fmt.Fprint(w, `Usage:
  aftercommit check-args [flags]

Checks, before a deploy, that the jobs already queued (available, scheduled,
retryable, pending) decode with the job args types of this build, strictly,
as its workers will: every kind has a worker; the args are a JSON object; no
field holds a value of the wrong type; no required field is missing or null;
no ID is 0 or negative; the args' Validate method accepts them. A worker
cancels a job that fails any of these at its first attempt. Unknown fields
(a newer producer's, or a typo: the job runs without them), nulls in
optional fields and jobs in queues no domain declares are warnings.

A field is required when tagged jobs:"required" (present, not null) or
jobs:"id" (present, an integer above 0, or a list of them); every other
field is optional.

Then it lists the jobs that finished within --since whose worker recorded
args problems: those cancelled for bad args (failures) and those that ran
with unknown fields (warnings), with the problems recorded when they ran.

Prints a summary per kind and one line per problem, or the report as JSON
with --json. Reads one consistent snapshot; writes nothing.

Exit codes: 0 no queued job would fail and no job was cancelled for bad args
within --since (warnings allowed), 1 otherwise or the check could not run,
2 bad usage, 130 interrupted. Before a deploy, --since 0 checks the queued
jobs alone.

Flags:
`)
	printFlags(w)
}

func runCheckArgs(ctx context.Context, args []string, e *env) int {
	c := newFrame("check-args", e, printCheckArgsUsage)
	fs := c.fs
	asJSON := fs.Bool("json", false, "print the report as JSON")
	maxProblems := fs.Int("max-problems", argcheck.MaxProblemsDefault,
		"list at most `N` problems, failures first (0: none); the counts stay exact")
	since := fs.Duration("since", argcheck.SinceDefault,
		"also list the jobs that finished within `D` with args problems: cancelled for bad args, or run with unknown fields (0: queued jobs only)")

	if _, code, ok := c.parse(args, true); !ok {
		return code
	}
	if *maxProblems < 0 {
		return c.usageError(fmt.Sprintf("--max-problems must be 0 or more, got %d", *maxProblems))
	}
	if *since < 0 {
		return c.usageError(fmt.Sprintf("--since must be 0 or more, got %s", *since))
	}
	c.resolveDB()

	pool, code, ok := c.connect(ctx, 0)
	if !ok {
		return code
	}
	defer pool.Close()

	reg := app.Registry(pool, nil)
	if err := reg.Err(); err != nil {
		return reportError(ctx, e, fmt.Errorf("aftercommit check-args: the registry of this build is invalid: %w", err))
	}
	opts := &argcheck.Opts{MaxProblems: *maxProblems, Since: *since}
	if *maxProblems == 0 {
		opts.MaxProblems = -1 // none
	}
	if *since == 0 {
		opts.Since = -1 // queued jobs only
	}
	report, err := checkQueuedArgs(ctx, pool, reg, opts)
	if err != nil {
		return reportError(ctx, e, describeCheckArgsError(err, c.db.schema))
	}

	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return reportError(ctx, e, fmt.Errorf("aftercommit check-args: writing the report: %w", err))
		}
	} else {
		printArgsReport(e.stdout, report, *maxProblems, *since)
	}
	if report.Failed() {
		var why []string
		if report.Failing > 0 {
			why = append(why, fmt.Sprintf("%d queued %s would fail with the args types of this build",
				report.Failing, plural(report.Failing, "job", "jobs")))
		}
		if report.Cancelled > 0 {
			why = append(why, fmt.Sprintf("%d %s cancelled for bad args in the last %s",
				report.Cancelled, plural(report.Cancelled, "job was", "jobs were"), formatSince(*since)))
		}
		fmt.Fprintf(e.stderr, "aftercommit check-args: %s\n", strings.Join(why, "; "))
		return exitFailure
	}
	return exitOK
}

// formatSince prints d without trailing zero units: 24h, 90m, 1h30m.
func formatSince(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// checkQueuedArgs runs the check in a read-only REPEATABLE READ
// transaction, so that its counts describe one snapshot.
func checkQueuedArgs(ctx context.Context, pool *pgxpool.Pool, reg *jobs.Registry, opts *argcheck.Opts) (*argcheck.Report, error) {
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("beginning a read-only transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	return argcheck.Check(ctx, tx, reg, opts)
}

// describeCheckArgsError gives a database error of the check its one line,
// with what to do when River's tables are missing.
func describeCheckArgsError(err error, schema string) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		where := "the connection's search_path"
		if schema != "" {
			where = fmt.Sprintf("schema %q", schema)
		}
		return fmt.Errorf("aftercommit check-args: River's job table is not in %s (%s): run 'aftercommit migrate up' or change --schema / AFTERCOMMIT_SCHEMA",
			where, pgErr.Message)
	}
	return fmt.Errorf("aftercommit check-args: %w", err)
}

// printArgsReport prints the human form of the report: a table per kind,
// one line per listed problem, and a summary line. With since, the table
// counts the finished jobs too: CANCELLED for bad args, RAN_WARNED with
// warnings only.
func printArgsReport(w io.Writer, r *argcheck.Report, maxProblems int, since time.Duration) {
	if len(r.Kinds) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		if since > 0 {
			fmt.Fprintln(tw, "KIND\tCHECKED\tFAILING\tWARNED\tCANCELLED\tRAN_WARNED")
		} else {
			fmt.Fprintln(tw, "KIND\tCHECKED\tFAILING\tWARNED")
		}
		for _, k := range r.Kinds {
			kind := k.Kind
			if !k.Registered {
				kind += " (no worker)"
			}
			if since > 0 {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\n", kind, k.Checked, k.Failing, k.Warned, k.Cancelled, k.Finished-k.Cancelled)
			} else {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", kind, k.Checked, k.Failing, k.Warned)
			}
		}
		_ = tw.Flush()
	}
	if len(r.Problems) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "JOB\tKIND\tSTATE\tQUEUE\tSEVERITY\tPROBLEM\tFIELD\tMESSAGE")
		for _, p := range r.Problems {
			field := p.Field
			if field == "" {
				field = "-"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.JobID, p.Kind, p.State, p.Queue, p.Severity, p.Problem, field, p.Message)
		}
		_ = tw.Flush()
	}
	if len(r.Kinds) > 0 {
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "checked %d queued %s: %d ok, %d with warnings only, %d failing; ",
		r.Checked, plural(r.Checked, "job", "jobs"), r.OK, r.Warned, r.Failing)
	if since > 0 {
		fmt.Fprintf(w, "%d %s in the last %s with args problems, %d cancelled; ",
			r.Finished, plural(r.Finished, "job finished", "jobs finished"), formatSince(since), r.Cancelled)
	}
	fmt.Fprintf(w, "%d %s", r.ProblemCount, plural(r.ProblemCount, "problem", "problems"))
	if r.Truncated() {
		fmt.Fprintf(w, ", %d listed (--max-problems %d)", len(r.Problems), maxProblems)
	}
	fmt.Fprintln(w)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
