package jobs

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
)

// DBTX is what CheckQueuedArgs needs of a database: *pgxpool.Pool,
// *pgx.Conn and pgx.Tx all satisfy it.
type DBTX interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Defaults of CheckArgsOpts.
const (
	// CheckArgsPageSizeDefault is how many jobs one query of
	// CheckQueuedArgs reads.
	CheckArgsPageSizeDefault = 1000
	// CheckArgsMaxProblemsDefault is how many problems an ArgsReport lists.
	CheckArgsMaxProblemsDefault = 1000
	// CheckArgsSinceDefault is how far back CheckQueuedArgs looks for
	// finished jobs with args problems: River's retention of cancelled jobs.
	CheckArgsSinceDefault = 24 * time.Hour
)

// MetadataKeyArgsProblems is the key of river_job.metadata under which the
// worker of a client built by NewClient records the args problems it found
// in a job — the reasons it cancelled it, the unknown fields it ran with —
// as a JSON array of {"problem", "severity", "field", "message"}. River's
// GIN index on metadata finds them: metadata ? 'args_problems'.
const MetadataKeyArgsProblems = "args_problems"

// CheckArgsOpts are optional settings of CheckQueuedArgs. A nil
// *CheckArgsOpts takes every default.
type CheckArgsOpts struct {
	// Schema is River's schema (as in ClientConfig.Schema).
	//
	// Defaults to empty: the connection's search_path.
	Schema string

	// PageSize is how many jobs one query reads; jobs are read in pages
	// ordered by id, so a table of millions of jobs is read in bounded
	// memory.
	//
	// Defaults to CheckArgsPageSizeDefault.
	PageSize int

	// MaxProblems caps ArgsReport.Problems; the counts stay exact. When
	// there are more problems than that, failures are listed before
	// warnings. A negative value lists none (counts only).
	//
	// Defaults to CheckArgsMaxProblemsDefault.
	MaxProblems int

	// Since is how far back finished jobs are read: those finalized within
	// Since whose worker recorded args problems (MetadataKeyArgsProblems).
	// A negative value reads none: queued jobs only, the pre-deploy check.
	//
	// Defaults to CheckArgsSinceDefault.
	Since time.Duration
}

// ArgsProblemKind says what is wrong with a job's args.
type ArgsProblemKind string

// The problems CheckQueuedArgs reports, with their severity. A failure is
// what the worker of a client built by NewClient cancels a job for, at its
// first attempt (but unknown_kind, which River fails and retries); a
// warning is reported and the job runs.
const (
	// ArgsProblemUnknownKind (failure): no worker is registered for the
	// job's kind (nor as a KindAliases alias). River fails every attempt
	// with an UnknownJobKindError and finally discards the job.
	ArgsProblemUnknownKind ArgsProblemKind = "unknown_kind"

	// ArgsProblemUnknownQueue (warning): the job sits in a queue no domain
	// declared, so no client built from the registry works it: it waits
	// forever.
	ArgsProblemUnknownQueue ArgsProblemKind = "unknown_queue"

	// ArgsProblemTypeMismatch (failure): a field's JSON value does not
	// decode into the field's Go type (a string where an int64 is
	// expected).
	ArgsProblemTypeMismatch ArgsProblemKind = "type_mismatch"

	// ArgsProblemUndecodable (failure): the args as a whole do not decode
	// (not a JSON object, a custom UnmarshalJSON returned an error, …) and
	// no single field is to blame.
	ArgsProblemUndecodable ArgsProblemKind = "undecodable"

	// ArgsProblemMissingField (failure): a field tagged `jobs:"required"`
	// or `jobs:"id"` is absent.
	ArgsProblemMissingField ArgsProblemKind = "missing_field"

	// ArgsProblemNullField: a field is JSON null. A failure when the field
	// is required; a warning when it is optional and its Go type cannot be
	// nil (a number, string, bool, struct or array), which then decodes to
	// its zero value.
	ArgsProblemNullField ArgsProblemKind = "null_field"

	// ArgsProblemInvalidID (failure): a field tagged `jobs:"id"` holds 0 or
	// a negative number (or a list with one).
	ArgsProblemInvalidID ArgsProblemKind = "invalid_id"

	// ArgsProblemInvalid (failure): the args' Validate method
	// (ArgsValidator) returned an error.
	ArgsProblemInvalid ArgsProblemKind = "invalid"

	// ArgsProblemUnknownField (warning): a key the type has no field for —
	// a field removed or renamed, a newer producer's field, a typo. Its
	// value is dropped when the job is decoded; the worker counts it in
	// Metrics, logs it once per kind and key, and records it in the job's
	// metadata.
	ArgsProblemUnknownField ArgsProblemKind = "unknown_field"
)

// ArgsSeverity grades an ArgsProblem.
type ArgsSeverity string

const (
	// ArgsSeverityFailure marks args that cannot mean anything: the job is
	// cancelled at its first attempt (or fails, for an unknown kind).
	ArgsSeverityFailure ArgsSeverity = "failure"
	// ArgsSeverityWarning marks a job that runs, but not quite as written
	// (data dropped, a null taken as zero, a queue nobody works).
	ArgsSeverityWarning ArgsSeverity = "warning"
)

// ArgsProblem is one problem of one job.
type ArgsProblem struct {
	// JobID, Kind, State and Queue identify the job.
	JobID int64              `json:"job_id"`
	Kind  string             `json:"kind"`
	State rivertype.JobState `json:"state"`
	Queue string             `json:"queue"`
	// Problem says what is wrong; Severity how bad it is.
	Problem  ArgsProblemKind `json:"problem"`
	Severity ArgsSeverity    `json:"severity"`
	// Field is the JSON path of the field at fault ("customer.email"),
	// empty for problems of the whole job.
	Field string `json:"field,omitempty"`
	// Message says what is wrong with the field (or the job) to a person:
	// "missing (required)", "must be an ID above 0, got 0".
	Message string `json:"message"`
}

// ArgsKindSummary counts the jobs of one kind in a report.
type ArgsKindSummary struct {
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

// ArgsReport is the result of CheckQueuedArgs.
type ArgsReport struct {
	// Checked is the number of queued jobs checked. Each is counted in
	// exactly one of OK (no problem), Warned (warnings only) and Failing
	// (at least one failure): Checked = OK + Warned + Failing.
	Checked int `json:"checked"`
	OK      int `json:"ok"`
	Warned  int `json:"warned"`
	Failing int `json:"failing"`

	// Finished is the number of jobs finalized within CheckArgsOpts.Since
	// whose worker recorded args problems when it ran them; Cancelled of
	// them were cancelled for bad args, the others ran with warnings only
	// (unknown fields). They are not counted in Checked; their problems,
	// as recorded, are listed with their state.
	Finished  int `json:"finished"`
	Cancelled int `json:"cancelled"`

	// ProblemCount is the number of problems found, listed or not.
	ProblemCount int `json:"problem_count"`

	// Kinds summarizes each kind that has jobs in the report, sorted by
	// kind.
	Kinds []ArgsKindSummary `json:"kinds"`

	// Problems lists problems ordered by job id (and, within a job, as
	// described at CheckQueuedArgs), at most CheckArgsOpts.MaxProblems of
	// them, failures kept in preference to warnings.
	Problems []ArgsProblem `json:"problems"`
}

// Failed reports whether any queued job would fail with today's code, or
// a job was cancelled for bad args within CheckArgsOpts.Since.
func (r *ArgsReport) Failed() bool { return r.Failing > 0 || r.Cancelled > 0 }

// Truncated reports whether some problems are counted but not listed.
func (r *ArgsReport) Truncated() bool { return r.ProblemCount > len(r.Problems) }

// Failures returns the listed problems of severity failure.
func (r *ArgsReport) Failures() []ArgsProblem { return r.bySeverity(ArgsSeverityFailure) }

// Warnings returns the listed problems of severity warning.
func (r *ArgsReport) Warnings() []ArgsProblem { return r.bySeverity(ArgsSeverityWarning) }

func (r *ArgsReport) bySeverity(s ArgsSeverity) []ArgsProblem {
	var out []ArgsProblem
	for _, p := range r.Problems {
		if p.Severity == s {
			out = append(out, p)
		}
	}
	return out
}

// The queries of CheckQueuedArgs: select + table + page. The queued page
// reads the jobs a worker will still decode, after id $1. The states are
// literals of River's enum, so the planner can choose between walking the
// primary key (most jobs queued) and River's index on state (few jobs
// queued among many finished ones). The finished page reads the jobs
// finalized in the last $3 microseconds with recorded args problems, which
// River's GIN index on metadata finds. The table is "river_job", qualified
// with CheckArgsOpts.Schema when set, sanitized as an identifier.
const (
	checkArgsSelectSQL = `SELECT id, kind, state::text, queue, args FROM `
	checkArgsPageSQL   = `
 WHERE state IN ('available', 'pending', 'retryable', 'scheduled') AND id > $1
 ORDER BY id
 LIMIT $2`
	checkArgsFinishedSelectSQL = `SELECT id, kind, state::text, queue, metadata -> '` + MetadataKeyArgsProblems + `' FROM `
	checkArgsFinishedPageSQL   = `
 WHERE metadata ? '` + MetadataKeyArgsProblems + `'
   AND state IN ('cancelled', 'completed', 'discarded')
   AND finalized_at >= now() - $3 * interval '1 microsecond'
   AND id > $1
 ORDER BY id
 LIMIT $2`
)

// CheckQueuedArgs checks, before a deploy, that the jobs already queued
// still decode with the args types of the code about to run, and lists the
// jobs that workers recently cancelled for bad args or ran with unknown
// fields. Run it against the production database with a registry built by
// the new release (the CLI does: `aftercommit check-args`, which exits 1
// when any job would fail or was cancelled).
//
// It reads every job a worker will still decode — states available,
// scheduled, retryable and pending; running jobs are left alone — in pages
// ordered by id (CheckArgsOpts.PageSize), and decodes each one's args
// strictly, as the worker of a client built by NewClient will (see
// Registry.DecodeArgs): with the type its kind is registered with (by
// AddWorker, aliases from KindAliases included) and that type's jobs tags
// and Validate method. It reports per job:
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
// Then it reads the jobs finalized within CheckArgsOpts.Since whose worker
// recorded args problems in their metadata (MetadataKeyArgsProblems):
// cancelled for bad args, or run with unknown fields; they are listed with
// the problems recorded when they ran.
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
// Counts are exact; the list of problems is capped by
// CheckArgsOpts.MaxProblems. Problems are ordered by job id; those of one
// job come in this order: kind, queue, fields in declaration order (the
// problems of a nested object in place of its field, and each object's
// unknown keys, sorted, after its fields), then undecodable, then invalid.
//
// db is a pool, a connection or a transaction: run it in a REPEATABLE READ
// transaction for a report of one snapshot; otherwise jobs inserted or
// worked during the scan may or may not be counted. Database errors are
// returned wrapped; a problem of a job is never an error.
func CheckQueuedArgs(ctx context.Context, db DBTX, reg *Registry, opts *CheckArgsOpts) (*ArgsReport, error) {
	if db == nil {
		return nil, errors.New("jobs: CheckQueuedArgs: nil database")
	}
	if reg == nil {
		return nil, errors.New("jobs: CheckQueuedArgs: nil registry")
	}
	if opts == nil {
		opts = &CheckArgsOpts{}
	}
	pageSize := cmp.Or(opts.PageSize, CheckArgsPageSizeDefault)
	if pageSize < 0 {
		return nil, fmt.Errorf("jobs: CheckQueuedArgs: PageSize must be positive, got %d", opts.PageSize)
	}
	maxProblems := cmp.Or(opts.MaxProblems, CheckArgsMaxProblemsDefault)
	maxProblems = max(maxProblems, 0)
	since := cmp.Or(opts.Since, CheckArgsSinceDefault)

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
func (c *argsChecker) scan(ctx context.Context, db DBTX, what, query string, pageSize int, extra []any,
	each func(job *checkedJob, raw []byte),
) error {
	var afterID int64
	for {
		n, lastID, err := readPage(ctx, db, query, afterID, pageSize, extra, each)
		if err != nil {
			return fmt.Errorf("jobs: reading %s jobs after id %d: %w", what, afterID, err)
		}
		if n < pageSize {
			return nil
		}
		afterID = lastID
	}
}

func readPage(ctx context.Context, db DBTX, query string, afterID int64, pageSize int, extra []any,
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
	reg    *Registry
	queues map[string]bool

	maxProblems int
	seq         int // problems found so far, for ordering
	failures    []seqProblem
	warnings    []seqProblem

	totals ArgsReport
	byKind map[string]*ArgsKindSummary

	problems []ArgsProblem // of the job being checked
}

type seqProblem struct {
	seq int
	ArgsProblem
}

func newArgsChecker(reg *Registry, maxProblems int) *argsChecker {
	c := &argsChecker{
		reg:         reg,
		queues:      make(map[string]bool),
		maxProblems: maxProblems,
		byKind:      make(map[string]*ArgsKindSummary),
	}
	for _, name := range reg.QueueNames() {
		c.queues[name] = true
	}
	return c
}

// check checks one queued job and records its problems.
func (c *argsChecker) check(job *checkedJob, raw []byte) {
	c.problems = c.problems[:0]
	spec, known := c.reg.argsSpec(job.kind)
	if !known {
		c.add(job, argsIssue{Problem: ArgsProblemUnknownKind, Severity: ArgsSeverityFailure,
			Message: fmt.Sprintf("no worker is registered for kind %q: every attempt fails (UnknownJobKindError) until River discards the job", job.kind)})
	}
	if !c.queues[job.queue] {
		c.add(job, argsIssue{Problem: ArgsProblemUnknownQueue, Severity: ArgsSeverityWarning,
			Message: fmt.Sprintf("queue %q is not declared in the registry: no client built from it works that queue, so the job never runs", job.queue)})
	}
	if known {
		_, issues := spec.decode(raw)
		for _, is := range issues {
			c.add(job, is)
		}
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
// raw is the value of its metadata key MetadataKeyArgsProblems.
func (c *argsChecker) recorded(job *checkedJob, raw []byte) {
	c.problems = c.problems[:0]
	var issues []argsIssue
	if err := json.Unmarshal(raw, &issues); err != nil {
		issues = []argsIssue{{Problem: ArgsProblemUndecodable, Severity: ArgsSeverityWarning,
			Message: fmt.Sprintf("the args problems recorded in the job's metadata do not decode: %v", err)}}
	}
	for _, is := range issues {
		c.add(job, is)
	}
	c.keep()
	_, known := c.reg.argsSpec(job.kind)
	sum := c.summary(job.kind, known)
	c.totals.Finished++
	sum.Finished++
	if job.state == rivertype.JobStateCancelled && failed(issues) {
		c.totals.Cancelled++
		sum.Cancelled++
	}
}

// add records a problem of the job being checked.
func (c *argsChecker) add(job *checkedJob, is argsIssue) {
	c.problems = append(c.problems, ArgsProblem{
		JobID:    job.id,
		Kind:     job.kind,
		State:    job.state,
		Queue:    job.queue,
		Problem:  is.Problem,
		Severity: is.Severity,
		Field:    is.Field,
		Message:  is.Message,
	})
}

// keep counts the problems of the job being checked and keeps them within
// the limit. It reports whether there were failures, and warnings.
func (c *argsChecker) keep() (failing, warned bool) {
	for _, p := range c.problems {
		c.seq++
		sp := seqProblem{seq: c.seq, ArgsProblem: p}
		if p.Severity == ArgsSeverityFailure {
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

func (c *argsChecker) summary(kind string, registered bool) *ArgsKindSummary {
	sum := c.byKind[kind]
	if sum == nil {
		sum = &ArgsKindSummary{Kind: kind, Registered: registered}
		c.byKind[kind] = sum
	}
	return sum
}

// report assembles the report: failures first within the limit, then
// warnings, listed by job id.
func (c *argsChecker) report() *ArgsReport {
	r := c.totals
	keep := slices.Clone(c.failures)
	keep = append(keep, c.warnings[:min(len(c.warnings), c.maxProblems-len(keep))]...)
	slices.SortFunc(keep, func(a, b seqProblem) int {
		return cmp.Or(cmp.Compare(a.JobID, b.JobID), cmp.Compare(a.seq, b.seq))
	})
	r.Problems = make([]ArgsProblem, len(keep))
	for i, p := range keep {
		r.Problems[i] = p.ArgsProblem
	}
	r.Kinds = make([]ArgsKindSummary, 0, len(c.byKind))
	for _, s := range c.byKind {
		r.Kinds = append(r.Kinds, *s)
	}
	slices.SortFunc(r.Kinds, func(a, b ArgsKindSummary) int { return strings.Compare(a.Kind, b.Kind) })
	return &r
}
