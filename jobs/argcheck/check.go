// Package argcheck checks, before a deploy, that the jobs already queued in
// River's job table still decode with the args types of the code about to
// run, and lists the jobs workers recently cancelled for bad args or ran
// with unknown fields: Check, which `aftercommit check-args` runs. Each job
// is judged as the worker of a client built by jobs.NewClient judges it
// (jobs.Registry.CheckArgs); the problems are jobs.ArgsProblem values.
package argcheck

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/jobs"
)

// DB is what Check needs of a database: *pgxpool.Pool, *pgx.Conn and
// pgx.Tx all satisfy it.
type DB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Defaults of Opts.
const (
	// PageSizeDefault is how many jobs one query of Check reads.
	PageSizeDefault = 1000
	// MaxProblemsDefault is how many problems a Report lists.
	MaxProblemsDefault = 1000
	// SinceDefault is how far back Check looks for finished jobs with args
	// problems: River's retention of cancelled jobs.
	SinceDefault = 24 * time.Hour
)

// Opts are optional settings of Check. A nil *Opts takes every default.
type Opts struct {
	// Schema is River's schema (as in jobs.ClientConfig.Schema).
	//
	// Defaults to empty: the connection's search_path.
	Schema string

	// PageSize is how many jobs one query reads; jobs are read in pages
	// ordered by id, so a table of millions of jobs is read in bounded
	// memory.
	//
	// Defaults to PageSizeDefault.
	PageSize int

	// MaxProblems caps Report.Problems; the counts stay exact. When there
	// are more problems than that, failures are listed before warnings. A
	// negative value lists none (counts only).
	//
	// Defaults to MaxProblemsDefault.
	MaxProblems int

	// Since is how far back finished jobs are read: those finalized within
	// Since whose worker recorded args problems
	// (jobs.MetadataKeyArgsProblems). A negative value reads none: queued
	// jobs only, the pre-deploy check.
	//
	// Defaults to SinceDefault.
	Since time.Duration
}

// KindSummary counts the jobs of one kind in a report.
type KindSummary struct {
	Kind string `json:"kind"`
	// Registered is false for kinds no worker is registered for.
	Registered bool `json:"registered"`
	// Checked is the number of queued jobs of the kind that were checked;
	// Failing of them have at least one failure, Warned have warnings
	// only.
	Checked int `json:"checked"`
	Failing int `json:"failing"`
	Warned  int `json:"warned"`
	// Finished is the number of finished jobs of the kind with recorded
	// args problems; Cancelled of them were cancelled for bad args.
	Finished  int `json:"finished"`
	Cancelled int `json:"cancelled"`
}

// Report is the result of Check.
type Report struct {
	// Checked is the number of queued jobs checked. Each is counted in
	// exactly one of OK (no problem), Warned (warnings only) and Failing
	// (at least one failure): Checked = OK + Warned + Failing.
	Checked int `json:"checked"`
	OK      int `json:"ok"`
	Warned  int `json:"warned"`
	Failing int `json:"failing"`

	// Finished is the number of jobs finalized within Opts.Since whose
	// worker recorded args problems when it ran them; Cancelled of them
	// were cancelled for bad args, the others ran with warnings only
	// (unknown fields). They are not counted in Checked; their problems,
	// as recorded, are listed with their state.
	Finished  int `json:"finished"`
	Cancelled int `json:"cancelled"`

	// ProblemCount is the number of problems found, listed or not.
	ProblemCount int `json:"problem_count"`

	// Kinds summarizes each kind that has jobs in the report, sorted by
	// kind.
	Kinds []KindSummary `json:"kinds"`

	// Problems lists problems ordered by job id (and, within a job, as
	// described at Check), at most Opts.MaxProblems of them, failures kept
	// in preference to warnings.
	Problems []jobs.ArgsProblem `json:"problems"`
}

// Failed reports whether any queued job would fail with today's code, or
// a job was cancelled for bad args within Opts.Since.
func (r *Report) Failed() bool { return r.Failing > 0 || r.Cancelled > 0 }

// Truncated reports whether some problems are counted but not listed.
func (r *Report) Truncated() bool { return r.ProblemCount > len(r.Problems) }

// Failures returns the listed problems of severity failure.
func (r *Report) Failures() []jobs.ArgsProblem { return r.bySeverity(jobs.ArgsSeverityFailure) }

// Warnings returns the listed problems of severity warning.
func (r *Report) Warnings() []jobs.ArgsProblem { return r.bySeverity(jobs.ArgsSeverityWarning) }

func (r *Report) bySeverity(s jobs.ArgsSeverity) []jobs.ArgsProblem {
	var out []jobs.ArgsProblem
	for _, p := range r.Problems {
		if p.Severity == s {
			out = append(out, p)
		}
	}
	return out
}

// The queries of Check: select + table + page. The queued page reads the
// jobs a worker will still decode, after id $1. The states are
// literals of River's enum, so the planner can choose between walking the
// primary key (most jobs queued) and River's index on state (few jobs
// queued among many finished ones). The finished page reads the jobs
// finalized in the last $3 microseconds with recorded args problems, which
// River's GIN index on metadata finds. The table is "river_job", qualified
// with Opts.Schema when set, sanitized as an identifier.
const (
	checkArgsSelectSQL = `SELECT id, kind, state::text, queue, args FROM `
	checkArgsPageSQL   = `
 WHERE state IN ('available', 'pending', 'retryable', 'scheduled') AND id > $1
 ORDER BY id
 LIMIT $2`
	checkArgsFinishedSelectSQL = `SELECT id, kind, state::text, queue, metadata -> '` + jobs.MetadataKeyArgsProblems + `' FROM `
	checkArgsFinishedPageSQL   = `
 WHERE metadata ? '` + jobs.MetadataKeyArgsProblems + `'
   AND state IN ('cancelled', 'completed', 'discarded')
   AND finalized_at >= now() - $3 * interval '1 microsecond'
   AND id > $1
 ORDER BY id
 LIMIT $2`
)

// Check checks, before a deploy, that the jobs already queued still decode
// with the args types of the code about to run, and lists the jobs that
// workers recently cancelled for bad args or ran with unknown fields. Run it against the production database with a registry built by
// the new release (the CLI does: `aftercommit check-args`, which exits 1
// when any job would fail or was cancelled).
//
// It reads every job a worker will still decode — states available,
// scheduled, retryable and pending; running jobs are left alone — in pages
// ordered by id (Opts.PageSize), and decodes each one's args strictly, as
// the worker of a client built by jobs.NewClient will (see
// jobs.Registry.CheckArgs): with the type its kind is registered with (by
// jobs.AddWorker, aliases from KindAliases included) and that type's jobs
// tags and Validate method. It reports per job:
//
//   - unknown_kind (failure): no worker for the kind (its args are not
//     checked);
//   - unknown_queue (warning): a queue no domain declared;
//   - undecodable (failure): not a JSON object, or the args fail to decode
//     as a whole; type_mismatch (failure): a field's value does not decode
//     into its type;
//   - missing_field (failure): a required field is absent;
//   - null_field: a field is null (failure if required, warning if
//     optional and its type cannot be nil);
//   - invalid_id (failure): an ID field is 0 or negative;
//   - invalid (failure): Validate returned an error;
//   - unknown_field (warning): a key the type has no field for.
//
// Then it reads the jobs finalized within Opts.Since whose worker recorded
// args problems in their metadata (jobs.MetadataKeyArgsProblems): cancelled
// for bad args, or run with unknown fields; they are listed with the
// problems recorded when they ran.
//
// # Required fields
//
// A field is required when its jobs tag says so — `jobs:"required"` (present
// and not null) or `jobs:"id"` (present, an integer above 0, or a list of
// them) — and optional otherwise. So adding a field is safe: older jobs
// without it run with its zero value. A new required field is reported on
// every job queued before it existed, which the worker would cancel. Fields
// are found the way encoding/json finds them (exported, json:"-" skipped,
// embedded structs promoted), and keys match them the way encoding/json
// matches them (exactly, else ignoring case).
//
// # Nested structs
//
// A field whose type is a struct, or a pointer to one, and whose value is
// a JSON object, is checked by the same rules at every depth: its unknown
// and missing fields are reported with a dotted path ("customer.email").
// Types with their own UnmarshalJSON or UnmarshalText (time.Time, …) are
// checked by decoding only. Elements of slices, arrays and maps are checked
// by decoding only: a type mismatch inside them is found, an unknown or
// missing field is not.
//
// # Report
//
// Counts are exact; the list of problems is capped by Opts.MaxProblems.
// Problems are ordered by job id; those of one job come in this order: kind, queue, fields in declaration order (the
// problems of a nested object in place of its field, and each object's
// unknown keys, sorted, after its fields), then undecodable, then invalid.
//
// db is a pool, a connection or a transaction: run it in a REPEATABLE READ
// transaction for a report of one snapshot; otherwise jobs inserted or
// worked during the scan may or may not be counted. Database errors are
// returned wrapped; a problem of a job is never an error.
func Check(ctx context.Context, db DB, reg *jobs.Registry, opts *Opts) (*Report, error) {
	if db == nil {
		return nil, errors.New("argcheck: Check: nil database")
	}
	if reg == nil {
		return nil, errors.New("argcheck: Check: nil registry")
	}
	if opts == nil {
		opts = &Opts{}
	}
	pageSize := cmp.Or(opts.PageSize, PageSizeDefault)
	if pageSize < 0 {
		return nil, fmt.Errorf("argcheck: Check: PageSize must be positive, got %d", opts.PageSize)
	}
	maxProblems := cmp.Or(opts.MaxProblems, MaxProblemsDefault)
	maxProblems = max(maxProblems, 0)
	since := cmp.Or(opts.Since, SinceDefault)

	table := "river_job"
	if opts.Schema != "" {
		table = pgx.Identifier{opts.Schema, table}.Sanitize()
	}

	c := newArgsChecker(reg, maxProblems)
	if err := c.scan(ctx, db, "queued", checkArgsSelectSQL+table+checkArgsPageSQL, pageSize, nil, c.check); err != nil {
		return nil, err
	}
	if since > 0 {
		if err := c.scan(ctx, db, "finished", checkArgsFinishedSelectSQL+table+checkArgsFinishedPageSQL, pageSize,
			[]any{since.Microseconds()}, c.recorded); err != nil {
			return nil, err
		}
	}
	return c.report(), nil
}

// scan reads query page by page ($1 the last id read, $2 the page size,
// then extra) and hands each row to each.
func (c *argsChecker) scan(ctx context.Context, db DB, what, query string, pageSize int, extra []any,
	each func(job *checkedJob, raw []byte),
) error {
	var afterID int64
	for {
		n, lastID, err := readPage(ctx, db, query, afterID, pageSize, extra, each)
		if err != nil {
			return fmt.Errorf("argcheck: reading %s jobs after id %d: %w", what, afterID, err)
		}
		if n < pageSize {
			return nil
		}
		afterID = lastID
	}
}

func readPage(ctx context.Context, db DB, query string, afterID int64, pageSize int, extra []any,
	each func(job *checkedJob, raw []byte),
) (n int, lastID int64, err error) {
	rows, err := db.Query(ctx, query, append([]any{afterID, pageSize}, extra...)...)
	if err != nil {
		return 0, 0, err
	}
	defer rows.Close()
	var job checkedJob
	var raw []byte
	var state string
	for rows.Next() {
		if err := rows.Scan(&job.id, &job.kind, &state, &job.queue, &raw); err != nil {
			return 0, 0, err
		}
		job.state = rivertype.JobState(state)
		each(&job, raw)
		n++
		lastID = job.id
	}
	return n, lastID, rows.Err()
}

// checkedJob is the job being checked.
type checkedJob struct {
	id    int64
	kind  string
	state rivertype.JobState
	queue string
}

// argsChecker accumulates the report.
type argsChecker struct {
	reg    *jobs.Registry
	queues map[string]bool
	known  map[string]bool // kind → a worker is registered for it

	maxProblems int
	seq         int // problems found so far, for ordering
	failures    []seqProblem
	warnings    []seqProblem

	totals Report
	byKind map[string]*KindSummary

	problems []jobs.ArgsProblem // of the job being checked
}

type seqProblem struct {
	seq int
	jobs.ArgsProblem
}

func newArgsChecker(reg *jobs.Registry, maxProblems int) *argsChecker {
	c := &argsChecker{
		reg:         reg,
		queues:      make(map[string]bool),
		known:       make(map[string]bool),
		maxProblems: maxProblems,
		byKind:      make(map[string]*KindSummary),
	}
	for _, name := range reg.QueueNames() {
		c.queues[name] = true
	}
	return c
}

// check checks one queued job and records its problems.
func (c *argsChecker) check(job *checkedJob, raw []byte) {
	c.problems = c.problems[:0]
	// CheckArgs errs only for a kind no worker is registered for
	// (jobs.ErrUnknownKind), whose args it does not check.
	problems, err := c.reg.CheckArgs(job.kind, raw)
	known := err == nil
	c.known[job.kind] = known
	if !known {
		c.add(job, jobs.ArgsProblem{Problem: jobs.ArgsProblemUnknownKind, Severity: jobs.ArgsSeverityFailure,
			Message: fmt.Sprintf("no worker is registered for kind %q: every attempt fails (UnknownJobKindError) until River discards the job", job.kind)})
	}
	if !c.queues[job.queue] {
		c.add(job, jobs.ArgsProblem{Problem: jobs.ArgsProblemUnknownQueue, Severity: jobs.ArgsSeverityWarning,
			Message: fmt.Sprintf("queue %q is not declared in the registry: no client built from it works that queue, so the job never runs", job.queue)})
	}
	for _, p := range problems {
		c.add(job, p)
	}
	failing, warned := c.keep()
	sum := c.summary(job.kind, known)
	r := &c.totals
	r.Checked++
	sum.Checked++
	switch {
	case failing:
		r.Failing++
		sum.Failing++
	case warned:
		r.Warned++
		sum.Warned++
	default:
		r.OK++
	}
}

// recorded records the problems a worker recorded in a finished job:
// raw is the value of its metadata key jobs.MetadataKeyArgsProblems, a JSON
// array of problems without the job (problem, severity, field, message).
func (c *argsChecker) recorded(job *checkedJob, raw []byte) {
	c.problems = c.problems[:0]
	var recorded []jobs.ArgsProblem
	if err := json.Unmarshal(raw, &recorded); err != nil {
		recorded = []jobs.ArgsProblem{{Problem: jobs.ArgsProblemUndecodable, Severity: jobs.ArgsSeverityWarning,
			Message: fmt.Sprintf("the args problems recorded in the job's metadata do not decode: %v", err)}}
	}
	for _, p := range recorded {
		c.add(job, p)
	}
	failing, _ := c.keep()
	sum := c.summary(job.kind, c.registered(job.kind))
	c.totals.Finished++
	sum.Finished++
	if job.state == rivertype.JobStateCancelled && failing {
		c.totals.Cancelled++
		sum.Cancelled++
	}
}

// registered reports whether a worker is registered for kind, or for the
// kind it is an alias of. CheckArgs says so by its error alone (the
// problems of empty args are dropped: no Validate or UnmarshalJSON of the
// args type runs on them); check records the answer for every queued job.
func (c *argsChecker) registered(kind string) bool {
	known, asked := c.known[kind]
	if !asked {
		_, err := c.reg.CheckArgs(kind, nil)
		known = err == nil
		c.known[kind] = known
	}
	return known
}

// add records problem p of the job being checked, naming the job.
func (c *argsChecker) add(job *checkedJob, p jobs.ArgsProblem) {
	c.problems = append(c.problems, jobs.ArgsProblem{
		JobID:    job.id,
		Kind:     job.kind,
		State:    job.state,
		Queue:    job.queue,
		Problem:  p.Problem,
		Severity: p.Severity,
		Field:    p.Field,
		Message:  p.Message,
	})
}

// keep counts the problems of the job being checked and keeps them within
// the limit. It reports whether there were failures, and warnings.
func (c *argsChecker) keep() (failing, warned bool) {
	for _, p := range c.problems {
		c.seq++
		sp := seqProblem{seq: c.seq, ArgsProblem: p}
		if p.Severity == jobs.ArgsSeverityFailure {
			failing = true
			if len(c.failures) < c.maxProblems {
				c.failures = append(c.failures, sp)
			}
		} else {
			warned = true
			if len(c.warnings) < c.maxProblems {
				c.warnings = append(c.warnings, sp)
			}
		}
	}
	c.totals.ProblemCount += len(c.problems)
	return failing, warned
}

func (c *argsChecker) summary(kind string, registered bool) *KindSummary {
	sum := c.byKind[kind]
	if sum == nil {
		sum = &KindSummary{Kind: kind, Registered: registered}
		c.byKind[kind] = sum
	}
	return sum
}

// report assembles the report: failures first within the limit, then
// warnings, listed by job id.
func (c *argsChecker) report() *Report {
	r := c.totals
	keep := slices.Clone(c.failures)
	keep = append(keep, c.warnings[:min(len(c.warnings), c.maxProblems-len(keep))]...)
	slices.SortFunc(keep, func(a, b seqProblem) int {
		return cmp.Or(cmp.Compare(a.JobID, b.JobID), cmp.Compare(a.seq, b.seq))
	})
	r.Problems = make([]jobs.ArgsProblem, len(keep))
	for i, p := range keep {
		r.Problems[i] = p.ArgsProblem
	}
	r.Kinds = make([]KindSummary, 0, len(c.byKind))
	for _, s := range c.byKind {
		r.Kinds = append(r.Kinds, *s)
	}
	slices.SortFunc(r.Kinds, func(a, b KindSummary) int { return strings.Compare(a.Kind, b.Kind) })
	return &r
}
