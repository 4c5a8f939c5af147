package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
)

// Limits of jobs list.
const (
	jobsListLimitDefault = 50
	jobsListLimitMax     = 10_000
)

func printJobsUsage(w io.Writer, printFlags func(io.Writer)) {
	fmt.Fprint(w, `Usage:
  aftercommit jobs list [--state S] [--kind K] [--queue Q] [--limit N] [--json]
  aftercommit jobs list --outbox [--kind K] [--queue Q] [--limit N] [--json]
  aftercommit jobs list --dead [--kind K] [--queue Q] [--limit N] [--json]
  aftercommit jobs show ID [--json]
  aftercommit jobs retry ID
  aftercommit jobs cancel ID
  aftercommit jobs batch show BATCH_ID [--json]

list    the newest jobs first, filtered by state, kind and queue (each flag
        may hold several values separated by commas)
        --outbox: the rows of outbox_jobs instead, jobs enqueued and not yet
        relayed into River's job table (no job ID yet), in the order the
        relay takes them (by id), with how long each has waited; rows that
        wait for long mean no worker process relays (cmd/worker --relay on)
        --dead: the rows of outbox_dead_jobs, which the relay refused, newest
        first, with the reason; fix and re-enqueue them with SQL (see
        outbox_dead_jobs in migrations/0020_outbox_jobs.up.sql)
        With --outbox and --dead, --queue matches the queue a row names (a
        row that names none takes its kind's queue when relayed).
show    one job: its args, metadata, attempts and errors
retry   make a job available to run now (any state but running; a job that
        used all its attempts gets one more)
cancel  cancel a job; a running job is asked to stop, and is not retried
batch show
        a job batch (outbox.Tx.NewJobBatch): its state (open, running,
        succeeded, failed), expected members and how they finished, its
        callback job, and its finished members with their outputs

States: available, cancelled, completed, discarded, pending, retryable,
running, scheduled.

Exit codes: 0 done, 1 failure (no such job, database unreachable), 2 bad
usage, 130 interrupted.

Flags:
`)
	printFlags(w)
}

// jobsFlags are the flags of jobs.
type jobsFlags struct {
	states string
	kinds  string
	queues string
	limit  int
	asJSON bool
	outbox bool
	dead   bool
}

func runJobs(ctx context.Context, args []string, e *env) int {
	c := newFrame("jobs", e, printJobsUsage)
	fs := c.fs
	var f jobsFlags
	fs.StringVar(&f.states, "state", "", "list: only jobs in these `states` (comma-separated)")
	fs.StringVar(&f.kinds, "kind", "", "list: only jobs of these `kinds` (comma-separated)")
	fs.StringVar(&f.queues, "queue", "", "list: only jobs in these `queues` (comma-separated)")
	fs.IntVar(&f.limit, "limit", jobsListLimitDefault, "list: at most `N` jobs (1.."+strconv.Itoa(jobsListLimitMax)+")")
	fs.BoolVar(&f.asJSON, "json", false, "list, show: print JSON")
	fs.BoolVar(&f.outbox, "outbox", false, "list: the outbox rows not yet relayed into River's job table, in the order the relay takes them")
	fs.BoolVar(&f.dead, "dead", false, "list: the outbox rows the relay refused (outbox_dead_jobs), newest first, with the reason")

	positional, code, ok := c.parse(args, false)
	if !ok {
		return code
	}
	if len(positional) == 0 {
		return c.usageError("missing action: list, show, retry, cancel or batch")
	}
	action, rest := positional[0], positional[1:]

	var id int64
	var batchID string
	switch action {
	case "list":
		if len(rest) > 0 {
			return c.usageError(fmt.Sprintf("jobs list takes no arguments, got %s", strings.Join(rest, " ")))
		}
		if f.limit < 1 || f.limit > jobsListLimitMax {
			return c.usageError(fmt.Sprintf("--limit must be in 1..%d, got %d", jobsListLimitMax, f.limit))
		}
		if _, err := parseStates(f.states); err != nil {
			return c.usageError(err.Error())
		}
		switch {
		case f.outbox && f.dead:
			return c.usageError("--outbox and --dead list different tables: choose one")
		case (f.outbox || f.dead) && f.states != "":
			return c.usageError("--state applies to River's jobs, not to outbox rows (--outbox, --dead)")
		}
	case "show", "retry", "cancel":
		if f.outbox || f.dead {
			return c.usageError("--outbox and --dead apply to jobs list only")
		}
		if len(rest) != 1 {
			return c.usageError(fmt.Sprintf("jobs %s takes one job ID", action))
		}
		var err error
		id, err = strconv.ParseInt(rest[0], 10, 64)
		if err != nil || id < 1 {
			return c.usageError(fmt.Sprintf("job ID must be a positive integer, got %q", rest[0]))
		}
	case "batch":
		if len(rest) != 2 || rest[0] != "show" {
			return c.usageError("usage: aftercommit jobs batch show BATCH_ID")
		}
		if !uuidRE.MatchString(rest[1]) {
			return c.usageError(fmt.Sprintf("a batch ID is a UUID, got %q", rest[1]))
		}
		batchID = rest[1]
	default:
		return c.usageError(fmt.Sprintf("unknown action %q: want list, show, retry, cancel or batch", action))
	}
	pool, code, ok := c.connect(ctx, 0)
	if !ok {
		return code
	}
	defer pool.Close()
	if action == "batch" {
		if err := jobsBatchShow(ctx, pool, batchID, f.asJSON, e); err != nil {
			if sqlState(err) == "42P01" {
				err = fmt.Errorf("aftercommit jobs: the job batch tables are missing: run 'aftercommit migrate up' (%w)", err)
			}
			return reportError(ctx, e, err)
		}
		return exitOK
	}
	if f.outbox || f.dead {
		if err := outboxList(ctx, pool, &f, e); err != nil {
			if sqlState(err) == "42P01" {
				err = fmt.Errorf("aftercommit jobs: the outbox tables are missing: run 'aftercommit migrate up' (%w)", err)
			}
			return reportError(ctx, e, err)
		}
		return exitOK
	}
	// An insert-only client: it runs no worker and no maintenance service,
	// and reaches the tables through the pool's search_path.
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{Schema: c.db.schema})
	if err != nil {
		return reportError(ctx, e, fmt.Errorf("aftercommit jobs: %w", err))
	}

	switch action {
	case "list":
		err = jobsList(ctx, client, &f, e)
	case "show":
		err = jobsShow(ctx, client, id, f.asJSON, e)
	case "retry", "cancel":
		err = jobsChange(ctx, client, action, id, e)
	}
	if err != nil {
		if sqlState(err) == "42P01" {
			err = fmt.Errorf("aftercommit jobs: River's tables are missing: run 'aftercommit migrate up' (%w)", err)
		}
		return reportError(ctx, e, err)
	}
	return exitOK
}

// sqlState returns the SQLSTATE of the Postgres error in err's chain, or "".
func sqlState(err error) string {
	var pgErr interface{ SQLState() string }
	if errors.As(err, &pgErr) {
		return pgErr.SQLState()
	}
	return ""
}

// parseStates parses a comma-separated list of job states ("" for all).
func parseStates(s string) ([]rivertype.JobState, error) {
	var out []rivertype.JobState
	for v := range strings.SplitSeq(s, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		st := rivertype.JobState(v)
		if !slices.Contains(rivertype.JobStates(), st) {
			names := make([]string, 0, len(rivertype.JobStates()))
			for _, st := range rivertype.JobStates() {
				names = append(names, string(st))
			}
			slices.Sort(names)
			return nil, fmt.Errorf("unknown state %q: want one of %s", v, strings.Join(names, ", "))
		}
		out = append(out, st)
	}
	return out, nil
}

// splitList parses a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func jobsList(ctx context.Context, client *river.Client[pgx.Tx], f *jobsFlags, e *env) error {
	params := river.NewJobListParams().First(f.limit).OrderBy(river.JobListOrderByID, river.SortOrderDesc)
	if states, _ := parseStates(f.states); len(states) > 0 {
		params = params.States(states...)
	}
	if kinds := splitList(f.kinds); len(kinds) > 0 {
		params = params.Kinds(kinds...)
	}
	if queues := splitList(f.queues); len(queues) > 0 {
		params = params.Queues(queues...)
	}
	res, err := client.JobList(ctx, params)
	if err != nil {
		return fmt.Errorf("aftercommit jobs list: %w", err)
	}
	if len(res.Jobs) == f.limit {
		defer fmt.Fprintf(e.stderr, "aftercommit jobs list: showing the newest %d; raise --limit or narrow the filters for more\n", f.limit)
	}
	if f.asJSON {
		out := make([]jobView, 0, len(res.Jobs))
		for _, j := range res.Jobs {
			out = append(out, newJobView(j))
		}
		return writeJSON(e.stdout, out)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tKIND\tQUEUE\tATTEMPT\tSCHEDULED\tLAST ERROR")
	for _, j := range res.Jobs {
		lastErr := "-"
		if n := len(j.Errors); n > 0 {
			lastErr = truncate(oneLine(j.Errors[n-1].Error), 60)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", j.ID, j.State, j.Kind, j.Queue, j.Attempt, j.MaxAttempts,
			formatTime(j.ScheduledAt), lastErr)
	}
	return tw.Flush()
}

func jobsShow(ctx context.Context, client *river.Client[pgx.Tx], id int64, asJSON bool, e *env) error {
	j, err := getJob(ctx, client, "show", id)
	if err != nil {
		return err
	}
	v := newJobView(j)
	if asJSON {
		return writeJSON(e.stdout, v)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("ID", strconv.FormatInt(v.ID, 10))
	row("Kind", v.Kind)
	row("Queue", v.Queue)
	row("State", string(v.State))
	row("Attempt", fmt.Sprintf("%d of %d", v.Attempt, v.MaxAttempts))
	row("Priority", strconv.Itoa(v.Priority))
	row("Created", formatTime(v.CreatedAt))
	row("Scheduled", formatTime(v.ScheduledAt))
	row("Attempted", formatTimePtr(v.AttemptedAt))
	row("Finalized", formatTimePtr(v.FinalizedAt))
	row("Attempted by", strings.Join(v.AttemptedBy, ", "))
	row("Tags", strings.Join(v.Tags, ", "))
	row("Args", string(v.Args))
	row("Metadata", string(v.Metadata))
	if len(v.Errors) == 0 {
		row("Errors", "none")
	}
	if err := tw.Flush(); err != nil || len(v.Errors) == 0 {
		return err
	}
	fmt.Fprintln(e.stdout, "Errors:")
	for _, ae := range v.Errors {
		fmt.Fprintf(e.stdout, "  attempt %d at %s: %s\n", ae.Attempt, formatTime(ae.At), oneLine(ae.Error))
	}
	return nil
}

func jobsChange(ctx context.Context, client *river.Client[pgx.Tx], action string, id int64, e *env) error {
	before, err := getJob(ctx, client, action, id)
	if err != nil {
		return err
	}
	var after *rivertype.JobRow
	switch action {
	case "retry":
		if before.State == rivertype.JobStateRunning {
			return fmt.Errorf("aftercommit jobs retry: job %d is running; cancel it first or wait for it to end", id)
		}
		after, err = client.JobRetry(ctx, id)
	case "cancel":
		switch before.State {
		case rivertype.JobStateCompleted, rivertype.JobStateCancelled, rivertype.JobStateDiscarded:
			return fmt.Errorf("aftercommit jobs cancel: job %d is already %s", id, before.State)
		}
		after, err = client.JobCancel(ctx, id)
	}
	if err != nil {
		return fmt.Errorf("aftercommit jobs %s: job %d: %w", action, id, err)
	}
	note := ""
	if action == "cancel" && after.State == rivertype.JobStateRunning {
		note = " (asked to stop; it is cancelled when its worker sees the request, and is not retried)"
	}
	fmt.Fprintf(e.stdout, "job %d: %s → %s%s\n", id, before.State, after.State, note)
	return nil
}

// getJob returns job id, or an error "no job <id>".
func getJob(ctx context.Context, client *river.Client[pgx.Tx], action string, id int64) (*rivertype.JobRow, error) {
	j, err := client.JobGet(ctx, id)
	if errors.Is(err, river.ErrNotFound) {
		return nil, fmt.Errorf("aftercommit jobs %s: no job %d", action, id)
	}
	if err != nil {
		return nil, fmt.Errorf("aftercommit jobs %s: job %d: %w", action, id, err)
	}
	return j, nil
}

// jobView is a job as jobs list --json and jobs show --json print it.
type jobView struct {
	ID          int64              `json:"id"`
	Kind        string             `json:"kind"`
	Queue       string             `json:"queue"`
	State       rivertype.JobState `json:"state"`
	Attempt     int                `json:"attempt"`
	MaxAttempts int                `json:"max_attempts"`
	Priority    int                `json:"priority"`
	CreatedAt   time.Time          `json:"created_at"`
	ScheduledAt time.Time          `json:"scheduled_at"`
	AttemptedAt *time.Time         `json:"attempted_at"`
	FinalizedAt *time.Time         `json:"finalized_at"`
	AttemptedBy []string           `json:"attempted_by"`
	Tags        []string           `json:"tags"`
	Args        json.RawMessage    `json:"args"`
	Metadata    json.RawMessage    `json:"metadata"`
	Errors      []attemptErrorView `json:"errors"`
}

// attemptErrorView is one attempt's error.
type attemptErrorView struct {
	At      time.Time `json:"at"`
	Attempt int       `json:"attempt"`
	Error   string    `json:"error"`
	Trace   string    `json:"trace,omitempty"`
}

func newJobView(j *rivertype.JobRow) jobView {
	v := jobView{
		ID: j.ID, Kind: j.Kind, Queue: j.Queue, State: j.State,
		Attempt: j.Attempt, MaxAttempts: j.MaxAttempts, Priority: j.Priority,
		CreatedAt: j.CreatedAt.UTC(), ScheduledAt: j.ScheduledAt.UTC(),
		AttemptedAt: utcPtr(j.AttemptedAt), FinalizedAt: utcPtr(j.FinalizedAt),
		AttemptedBy: nonNil(j.AttemptedBy), Tags: nonNil(j.Tags),
		Args: rawOrNull(j.EncodedArgs), Metadata: rawOrNull(j.Metadata),
		Errors: []attemptErrorView{},
	}
	for _, ae := range j.Errors {
		v.Errors = append(v.Errors, attemptErrorView{At: ae.At.UTC(), Attempt: ae.Attempt, Error: ae.Error, Trace: ae.Trace})
	}
	return v
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func rawOrNull(b []byte) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return json.RawMessage(b)
}

// formatTime prints t in UTC to the second.
func formatTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") }

func formatTimePtr(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return formatTime(*t)
}

// oneLine folds s onto one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// truncate cuts s to n runes, marking the cut with "…".
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// outboxRowView is a row of outbox_jobs (jobs list --outbox) or of
// outbox_dead_jobs (jobs list --dead) as --json prints it. The columns a
// row leaves to its kind's defaults are null.
type outboxRowView struct {
	ID          int64           `json:"id"`
	Kind        string          `json:"kind"`
	Args        json.RawMessage `json:"args"`
	Queue       *string         `json:"queue"`
	Priority    *int            `json:"priority"`
	MaxAttempts *int            `json:"max_attempts"`
	ScheduledAt *time.Time      `json:"scheduled_at"`
	Metadata    json.RawMessage `json:"metadata"`
	Options     json.RawMessage `json:"options"`
	CreatedAt   time.Time       `json:"created_at"`
	// AgeMs is how long the row has waited (now() - created_at) when
	// listed; for a dead row, until it died (dead_at - created_at).
	AgeMs  float64    `json:"age_ms"`
	DeadAt *time.Time `json:"dead_at,omitempty"`
	Reason string     `json:"reason,omitempty"`
}

// outboxListSQL lists outbox_jobs by id, the order the relay takes them
// in; $1 kinds and $2 queues filter when not empty, $3 limits.
const outboxListSQL = `
SELECT id, kind, args, queue, priority, max_attempts, scheduled_at, metadata, options, created_at,
       now() - created_at, NULL::timestamptz, NULL::text
  FROM outbox_jobs
 WHERE (cardinality($1::text[]) = 0 OR kind = ANY($1::text[]))
   AND (cardinality($2::text[]) = 0 OR queue = ANY($2::text[]))
 ORDER BY id
 LIMIT $3`

// outboxDeadListSQL lists outbox_dead_jobs newest dead first.
const outboxDeadListSQL = `
SELECT id, kind, args, queue, priority, max_attempts, scheduled_at, metadata, options, created_at,
       dead_at - created_at, dead_at, reason
  FROM outbox_dead_jobs
 WHERE (cardinality($1::text[]) = 0 OR kind = ANY($1::text[]))
   AND (cardinality($2::text[]) = 0 OR queue = ANY($2::text[]))
 ORDER BY dead_at DESC, id DESC
 LIMIT $3`

// outboxList is jobs list --outbox and --dead.
func outboxList(ctx context.Context, pool *pgxpool.Pool, f *jobsFlags, e *env) error {
	query, what, order := outboxListSQL, "outbox", "first"
	if f.dead {
		query, what, order = outboxDeadListSQL, "dead", "newest"
	}
	kinds, queues := splitList(f.kinds), splitList(f.queues)
	rows, err := pool.Query(ctx, query, nonNil(kinds), nonNil(queues), f.limit)
	if err != nil {
		return fmt.Errorf("aftercommit jobs list --%s: %w", what, err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (outboxRowView, error) {
		var v outboxRowView
		var args, metadata, options []byte
		var age time.Duration
		var reason *string
		err := row.Scan(&v.ID, &v.Kind, &args, &v.Queue, &v.Priority, &v.MaxAttempts, &v.ScheduledAt, &metadata, &options,
			&v.CreatedAt, &age, &v.DeadAt, &reason)
		v.Args, v.Metadata, v.Options = rawOrNull(args), rawOrNull(metadata), rawOrNull(options)
		v.CreatedAt, v.ScheduledAt, v.DeadAt = v.CreatedAt.UTC(), utcPtr(v.ScheduledAt), utcPtr(v.DeadAt)
		v.AgeMs, v.Reason = msf(age), deref(reason)
		return v, err
	})
	if err != nil {
		return fmt.Errorf("aftercommit jobs list --%s: %w", what, err)
	}
	if len(list) == f.limit {
		defer fmt.Fprintf(e.stderr, "aftercommit jobs list: showing the %s %d; raise --limit or narrow the filters for more\n", order, f.limit)
	}
	if f.asJSON {
		return writeJSON(e.stdout, list)
	}

	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	if f.dead {
		fmt.Fprintln(tw, "ID\tKIND\tQUEUE\tARGS\tCREATED\tDEAD AT\tREASON")
	} else {
		fmt.Fprintln(tw, "ID\tKIND\tQUEUE\tARGS\tCREATED\tAGE")
	}
	for _, v := range list {
		queue := "-"
		if v.Queue != nil {
			queue = *v.Queue
		}
		args := truncate(oneLine(string(v.Args)), 40)
		if f.dead {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", v.ID, v.Kind, queue, args, formatTime(v.CreatedAt),
				formatTimePtr(v.DeadAt), truncate(oneLine(v.Reason), 80))
			continue
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", v.ID, v.Kind, queue, args, formatTime(v.CreatedAt),
			formatAge(time.Duration(v.AgeMs*float64(time.Millisecond))))
	}
	return tw.Flush()
}

// deref returns *p, or the zero value when p is nil.
func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}
