package jobs

import (
	"bytes"
	"cmp"
	"context"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
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
)

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
}

// ArgsProblemKind says what is wrong with a queued job's args.
type ArgsProblemKind string

// The problems CheckQueuedArgs reports, with their severity.
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
	// decode into the field's Go type (a string where an int64 is now
	// expected). River fails every attempt before the worker runs.
	ArgsProblemTypeMismatch ArgsProblemKind = "type_mismatch"

	// ArgsProblemUndecodable (failure): the args as a whole do not decode
	// (not a JSON object, a custom UnmarshalJSON returned an error, …) and
	// no single field is to blame. River fails every attempt.
	ArgsProblemUndecodable ArgsProblemKind = "undecodable"

	// ArgsProblemMissingField (failure): a required field is absent; the
	// worker would get its zero value. See CheckQueuedArgs for the rule.
	ArgsProblemMissingField ArgsProblemKind = "missing_field"

	// ArgsProblemNullField: a field whose Go type cannot be nil (a number,
	// string, bool, struct or array) is JSON null; it decodes to its zero
	// value. A failure when the field is required, a warning when it is
	// optional.
	ArgsProblemNullField ArgsProblemKind = "null_field"

	// ArgsProblemUnknownField (warning): a key today's type has no field
	// for, typically a field that was removed or renamed. Its value is
	// silently dropped when the job is decoded.
	ArgsProblemUnknownField ArgsProblemKind = "unknown_field"
)

// ArgsSeverity grades an ArgsProblem.
type ArgsSeverity string

const (
	// ArgsSeverityFailure marks a job that today's code would fail on, or
	// run with a zero value where a value is required.
	ArgsSeverityFailure ArgsSeverity = "failure"
	// ArgsSeverityWarning marks a job that will run, but not quite as
	// written (data dropped, a null taken as zero, a queue nobody works).
	ArgsSeverityWarning ArgsSeverity = "warning"
)

// ArgsProblem is one problem of one queued job.
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
	// Message explains the problem to a person, naming the Go field.
	Message string `json:"message"`
}

// ArgsKindSummary counts the checked jobs of one kind.
type ArgsKindSummary struct {
	Kind string `json:"kind"`
	// Registered is false for kinds no worker is registered for.
	Registered bool `json:"registered"`
	// Checked is the number of jobs of the kind that were checked; Failing
	// of them have at least one failure, Warned have warnings only.
	Checked int `json:"checked"`
	Failing int `json:"failing"`
	Warned  int `json:"warned"`
}

// ArgsReport is the result of CheckQueuedArgs.
type ArgsReport struct {
	// Checked is the number of jobs checked. Each is counted in exactly
	// one of OK (no problem), Warned (warnings only) and Failing (at least
	// one failure): Checked = OK + Warned + Failing.
	Checked int `json:"checked"`
	OK      int `json:"ok"`
	Warned  int `json:"warned"`
	Failing int `json:"failing"`

	// ProblemCount is the number of problems found, listed or not.
	ProblemCount int `json:"problem_count"`

	// Kinds summarizes each kind that has checked jobs, sorted by kind.
	Kinds []ArgsKindSummary `json:"kinds"`

	// Problems lists problems ordered by job id (and, within a job, as
	// described at CheckQueuedArgs), at most CheckArgsOpts.MaxProblems of
	// them, failures kept in preference to warnings.
	Problems []ArgsProblem `json:"problems"`
}

// Failed reports whether any checked job would fail with today's code.
func (r *ArgsReport) Failed() bool { return r.Failing > 0 }

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

// checkArgsSelectSQL + table + checkArgsPageSQL reads one page of the jobs
// a worker will still decode, after id $1. The states are literals of
// River's enum, so the planner can choose between walking the primary key
// (most jobs queued) and River's index on state (few jobs queued among many
// finished ones). The table is "river_job", qualified with
// CheckArgsOpts.Schema when set, sanitized as an identifier.
const (
	checkArgsSelectSQL = `SELECT id, kind, state::text, queue, args FROM `
	checkArgsPageSQL   = `
 WHERE state IN ('available', 'pending', 'retryable', 'scheduled') AND id > $1
 ORDER BY id
 LIMIT $2`
)

// CheckQueuedArgs checks, before a deploy, that the jobs already queued
// still decode with the args types of the code about to run. Run it against
// the production database with a registry built by the new release (the CLI
// does: `aftercommit check-args`, which exits 1 when any job would fail).
//
// It reads every job a worker will still decode — states available,
// scheduled, retryable and pending; running and finalized jobs are left
// alone — in pages ordered by id (CheckArgsOpts.PageSize), decodes each
// one's args into a new value of the type its kind is registered with (by
// AddWorker, aliases from KindAliases included) with encoding/json, exactly
// as River will, and reports per job:
//
//   - unknown_kind (failure): no worker for the kind (its args are not
//     checked);
//   - unknown_queue (warning): a queue no domain declared;
//   - type_mismatch (failure): a field's value does not decode into its
//     type; undecodable (failure) when the args fail as a whole;
//   - missing_field (failure): a required field is absent;
//   - null_field: a non-nilable field is null (failure if required, warning
//     if optional);
//   - unknown_field (warning): a key the type has no field for.
//
// # Required fields
//
// A field is optional when any of these holds, and required otherwise:
//
//   - its json tag has omitempty or omitzero (today's code itself leaves it
//     out when zero, so its absence is normal);
//   - its type is a pointer (absent means nil, which the worker must
//     handle anyway);
//   - it is tagged `jobs:"optional"` (the worker supplies a default);
//   - it is promoted from an embedded pointer struct (which is left out
//     when nil).
//
// So adding a field with a default is safe when the field is optional by
// this rule, and a new required field is reported on every job queued
// before it existed. Fields are found the way encoding/json finds them
// (exported, json:"-" skipped, embedded structs promoted), and keys match
// them the way encoding/json matches them (exactly, else ignoring case).
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
// unknown keys, sorted, after its fields), then undecodable.
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

	table := "river_job"
	if opts.Schema != "" {
		table = pgx.Identifier{opts.Schema, table}.Sanitize()
	}
	query := checkArgsSelectSQL + table + checkArgsPageSQL

	c := newArgsChecker(reg, maxProblems)
	var afterID int64
	for {
		page, err := c.readPage(ctx, db, query, afterID, pageSize)
		if err != nil {
			return nil, fmt.Errorf("jobs: reading queued jobs after id %d: %w", afterID, err)
		}
		if page.count < pageSize {
			break
		}
		afterID = page.lastID
	}
	return c.report(), nil
}

type pageResult struct {
	count  int
	lastID int64
}

func (c *argsChecker) readPage(ctx context.Context, db DBTX, query string, afterID int64, pageSize int) (pageResult, error) {
	rows, err := db.Query(ctx, query, afterID, pageSize)
	if err != nil {
		return pageResult{}, err
	}
	defer rows.Close()
	var res pageResult
	var job checkedJob
	var args []byte
	var state string
	for rows.Next() {
		if err := rows.Scan(&job.id, &job.kind, &state, &job.queue, &args); err != nil {
			return pageResult{}, err
		}
		job.state = rivertype.JobState(state)
		c.check(&job, args)
		res.count++
		res.lastID = job.id
	}
	return res, rows.Err()
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
	kinds  map[string]reflect.Type // kind or alias → args type
	queues map[string]bool
	shapes map[reflect.Type]*argsShape

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
		kinds:       make(map[string]reflect.Type, len(reg.kinds)),
		queues:      make(map[string]bool),
		shapes:      make(map[reflect.Type]*argsShape),
		maxProblems: maxProblems,
		byKind:      make(map[string]*ArgsKindSummary),
	}
	for _, name := range reg.QueueNames() {
		c.queues[name] = true
	}
	for kind, e := range reg.kinds {
		c.kinds[kind] = e.argsType
		// A usable value of T to ask for its aliases (River asks its zero
		// value; a non-nil pointer when T is one).
		zero := reflect.New(e.argsType).Elem()
		if e.argsType.Kind() == reflect.Pointer {
			zero = reflect.New(e.argsType.Elem())
		}
		if withAliases, ok := zero.Interface().(river.JobArgsWithKindAliases); ok {
			for _, alias := range withAliases.KindAliases() {
				if _, taken := c.kinds[alias]; !taken {
					c.kinds[alias] = e.argsType
				}
			}
		}
	}
	return c
}

// check checks one job and records its problems.
func (c *argsChecker) check(job *checkedJob, raw []byte) {
	c.problems = c.problems[:0]
	typ, known := c.kinds[job.kind]
	if !known {
		c.add(job, ArgsProblemUnknownKind, ArgsSeverityFailure, "",
			fmt.Sprintf("no worker is registered for kind %q: every attempt fails (UnknownJobKindError) until River discards the job", job.kind))
	}
	if !c.queues[job.queue] {
		c.add(job, ArgsProblemUnknownQueue, ArgsSeverityWarning, "",
			fmt.Sprintf("queue %q is not declared in the registry: no client built from it works that queue, so the job never runs", job.queue))
	}
	if known {
		c.checkArgs(job, typ, raw)
	}
	c.record(job, known)
}

// checkArgs decodes raw the way River does and walks it against typ.
func (c *argsChecker) checkArgs(job *checkedJob, typ reflect.Type, raw []byte) {
	decodeErr := json.Unmarshal(raw, reflect.New(typ).Interface())

	st := typ
	if st.Kind() == reflect.Pointer {
		st = st.Elem()
	}
	shape := c.shape(st)
	mismatches := 0
	if shape.fields != nil {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err == nil {
			// null decodes to a nil map: every field is absent.
			mismatches = c.walk(job, obj, shape, "", "", decodeErr != nil, 0)
		}
	}
	if decodeErr != nil && mismatches == 0 {
		field := ""
		var te *json.UnmarshalTypeError
		if errors.As(decodeErr, &te) {
			field = te.Field
		}
		c.add(job, ArgsProblemUndecodable, ArgsSeverityFailure, field,
			fmt.Sprintf("args do not decode into %s (%v): every attempt fails", typ, decodeErr))
	}
}

// maxArgsDepth bounds the walk into nested objects.
const maxArgsDepth = 32

// walk checks the fields of obj against shape and returns the number of
// type mismatches it reported. Values are decoded one field at a time only
// when checkTypes (the args as a whole did not decode), to name every
// culprit.
func (c *argsChecker) walk(job *checkedJob, obj map[string]json.RawMessage, shape *argsShape, path, goPath string, checkTypes bool, depth int) int {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)

	// Which keys decode into which field, as encoding/json matches them.
	byField := make([][]string, len(shape.fields))
	var unknown []string
	for _, k := range keys {
		if i := shape.match(k); i >= 0 {
			byField[i] = append(byField[i], k)
		} else {
			unknown = append(unknown, k)
		}
	}

	mismatches := 0
	for i := range shape.fields {
		f := &shape.fields[i]
		fieldGo := joinPath(goPath, f.goName)
		if len(byField[i]) == 0 {
			if !f.optional {
				c.add(job, ArgsProblemMissingField, ArgsSeverityFailure, joinPath(path, f.name),
					"required "+describeField(f.name, fieldGo, f.typ)+" is missing: the worker would get the zero value")
			}
			continue
		}
		for _, k := range byField[i] {
			value := obj[k]
			fieldPath := joinPath(path, k)
			if isJSONNull(value) {
				if !f.nilable {
					sev := ArgsSeverityFailure
					if f.optional {
						sev = ArgsSeverityWarning
					}
					c.add(job, ArgsProblemNullField, sev, fieldPath,
						describeField(k, fieldGo, f.typ)+" is null but cannot be nil: the worker would get the zero value")
				}
				continue
			}
			if f.nested != nil && depth < maxArgsDepth {
				var child map[string]json.RawMessage
				if json.Unmarshal(value, &child) == nil && child != nil {
					mismatches += c.walk(job, child, c.shape(f.nested), fieldPath, fieldGo, checkTypes, depth+1)
					continue
				}
			}
			if checkTypes {
				if err := f.decodeValue(value); err != nil {
					mismatches++
					c.add(job, ArgsProblemTypeMismatch, ArgsSeverityFailure, fieldPath, mismatchMessage(k, fieldGo, f.typ, err))
				}
			}
		}
	}
	for _, k := range unknown {
		c.add(job, ArgsProblemUnknownField, ArgsSeverityWarning, joinPath(path, k),
			fmt.Sprintf("field %q is not in %s: its value is dropped when the job is decoded", k, shape.typ))
	}
	return mismatches
}

func mismatchMessage(key, goName string, typ reflect.Type, err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Type != nil {
		where := ""
		// The decode went through a one-field wrapper: Field is "v" or
		// "v.<path inside the value>".
		if _, inner, ok := strings.Cut(te.Field, "."); ok {
			where = " at " + inner
		}
		expected := ""
		if where != "" || te.Type != typ {
			expected = fmt.Sprintf(" where %s is expected", te.Type)
		}
		return fmt.Sprintf("%s holds a JSON %s%s%s: every attempt fails", describeField(key, goName, typ), te.Value, where, expected)
	}
	return fmt.Sprintf("%s does not decode (%v): every attempt fails", describeField(key, goName, typ), err)
}

// describeField names a field by its JSON key and its Go declaration:
// field "order_id" (OrderID int64).
func describeField(key, goName string, typ reflect.Type) string {
	return fmt.Sprintf("field %q (%s %s)", key, goName, typ)
}

func joinPath(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

func isJSONNull(raw json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

// add records a problem of the job being checked.
func (c *argsChecker) add(job *checkedJob, problem ArgsProblemKind, sev ArgsSeverity, field, msg string) {
	c.problems = append(c.problems, ArgsProblem{
		JobID:    job.id,
		Kind:     job.kind,
		State:    job.state,
		Queue:    job.queue,
		Problem:  problem,
		Severity: sev,
		Field:    field,
		Message:  msg,
	})
}

// record counts the job being checked and keeps its problems within the
// limit.
func (c *argsChecker) record(job *checkedJob, registered bool) {
	sum := c.byKind[job.kind]
	if sum == nil {
		sum = &ArgsKindSummary{Kind: job.kind, Registered: registered}
		c.byKind[job.kind] = sum
	}
	failing, warned := false, false
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
	r := &c.totals
	r.Checked++
	sum.Checked++
	r.ProblemCount += len(c.problems)
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

// report assembles the report: failures first within the limit, then
// warnings, listed by job id.
func (c *argsChecker) report() *ArgsReport {
	r := c.totals
	keep := slices.Clone(c.failures)
	keep = append(keep, c.warnings[:min(len(c.warnings), c.maxProblems-len(keep))]...)
	slices.SortFunc(keep, func(a, b seqProblem) int { return cmp.Compare(a.seq, b.seq) })
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

// argsShape is what the checker knows of a struct type: its fields as
// encoding/json sees them. fields is nil for types that are not structs or
// that decode themselves (UnmarshalJSON, UnmarshalText): those are checked
// by decoding only.
type argsShape struct {
	typ    reflect.Type
	fields []argsField
	exact  map[string]int // JSON name → index in fields
}

// argsField is one field of an argsShape.
type argsField struct {
	name     string       // JSON key
	goName   string       // Go field path, e.g. "Base.ID" for a promoted field
	typ      reflect.Type // the field's declared type
	optional bool         // by the rule of CheckQueuedArgs
	nilable  bool         // null is a legitimate value
	nested   reflect.Type // struct type to walk into, or nil
	wrapper  reflect.Type // struct{ V T `json:"v,<options>"` } to decode one value

	// For encoding/json's dominance rules.
	index  []int
	tagged bool
}

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// decodesItself reports whether encoding/json hands values of t to a
// method of t rather than decoding its fields.
func decodesItself(t reflect.Type) bool {
	for _, tt := range []reflect.Type{t, reflect.PointerTo(t)} {
		if tt.Implements(jsonUnmarshalerType) || tt.Implements(textUnmarshalerType) {
			return true
		}
	}
	return false
}

// decodeValue decodes one JSON value into the field's type, with the
// field's json options (",string"), the way the whole decode would.
func (f *argsField) decodeValue(value json.RawMessage) error {
	doc := make([]byte, 0, len(value)+6)
	doc = append(doc, `{"v":`...)
	doc = append(doc, value...)
	doc = append(doc, '}')
	return json.Unmarshal(doc, reflect.New(f.wrapper).Interface())
}

// match returns the index of the field key decodes into, or -1: an exact
// match first, else the first field whose name equals key ignoring case,
// as encoding/json does.
func (s *argsShape) match(key string) int {
	if i, ok := s.exact[key]; ok {
		return i
	}
	for i := range s.fields {
		if strings.EqualFold(s.fields[i].name, key) {
			return i
		}
	}
	return -1
}

// shape returns the cached shape of t.
func (c *argsChecker) shape(t reflect.Type) *argsShape {
	if s, ok := c.shapes[t]; ok {
		return s
	}
	s := &argsShape{typ: t}
	c.shapes[t] = s
	if t.Kind() == reflect.Struct && !decodesItself(t) {
		s.fields = structFields(t)
		s.exact = make(map[string]int, len(s.fields))
		for i, f := range s.fields {
			s.exact[f.name] = i
		}
		if s.fields == nil {
			s.fields = []argsField{} // a struct without fields: every key is unknown
		}
	}
	return s
}

// structFields lists the fields encoding/json decodes into for struct type
// t, in declaration order, following its rules (see typeFields in
// encoding/json): exported fields, json:"-" skipped, fields of embedded
// structs promoted, and of several fields with one name the shallowest, or
// the tagged one, wins — or none when that does not decide.
func structFields(t reflect.Type) []argsField {
	type embedded struct {
		typ    reflect.Type
		index  []int
		goName string
		viaPtr bool
	}
	var current []embedded
	next := []embedded{{typ: t}}
	var count, nextCount map[reflect.Type]int
	visited := map[reflect.Type]bool{}
	var fields []argsField

	for len(next) > 0 {
		current, next = next, current[:0]
		count, nextCount = nextCount, map[reflect.Type]int{}
		for _, e := range current {
			if visited[e.typ] {
				continue
			}
			visited[e.typ] = true
			for i := range e.typ.NumField() {
				sf := e.typ.Field(i)
				if sf.Anonymous {
					t := sf.Type
					if t.Kind() == reflect.Pointer {
						t = t.Elem()
					}
					if !sf.IsExported() && t.Kind() != reflect.Struct {
						continue
					}
				} else if !sf.IsExported() {
					continue
				}
				tag := sf.Tag.Get("json")
				if tag == "-" {
					continue
				}
				name, options, _ := strings.Cut(tag, ",")
				if !validJSONName(name) {
					name = ""
				}
				index := append(slices.Clone(e.index), i)
				goName := joinPath(e.goName, sf.Name)
				ft := sf.Type
				if ft.Name() == "" && ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}

				if name != "" || !sf.Anonymous || ft.Kind() != reflect.Struct {
					f := newArgsField(sf, name, options, goName, index, e.viaPtr)
					fields = append(fields, f)
					if count[e.typ] > 1 {
						// Several embeddings of one type at this depth: a
						// duplicate makes the dominance rule drop them.
						fields = append(fields, f)
					}
					continue
				}
				nextCount[ft]++
				if nextCount[ft] == 1 {
					next = append(next, embedded{
						typ: ft, index: index, goName: goName,
						viaPtr: e.viaPtr || sf.Type.Kind() == reflect.Pointer,
					})
				}
			}
		}
	}

	slices.SortFunc(fields, func(a, b argsField) int {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		if c := cmp.Compare(len(a.index), len(b.index)); c != 0 {
			return c
		}
		if a.tagged != b.tagged {
			if a.tagged {
				return -1
			}
			return 1
		}
		return slices.Compare(a.index, b.index)
	})
	out := fields[:0]
	for advance, i := 0, 0; i < len(fields); i += advance {
		first := fields[i]
		for advance = 1; i+advance < len(fields); advance++ {
			if fields[i+advance].name != first.name {
				break
			}
		}
		if advance > 1 {
			second := fields[i+1]
			if len(first.index) == len(second.index) && first.tagged == second.tagged {
				continue // ambiguous: encoding/json ignores them all
			}
		}
		out = append(out, first)
	}
	slices.SortFunc(out, func(a, b argsField) int { return slices.Compare(a.index, b.index) })
	return out
}

func newArgsField(sf reflect.StructField, name, options, goName string, index []int, viaPtr bool) argsField {
	tagged := name != ""
	if !tagged {
		name = sf.Name
	}
	opts := strings.Split(options, ",")
	optional := viaPtr ||
		slices.Contains(opts, "omitempty") || slices.Contains(opts, "omitzero") ||
		sf.Type.Kind() == reflect.Pointer ||
		slices.Contains(strings.Split(sf.Tag.Get("jobs"), ","), "optional")

	var nilable bool
	switch sf.Type.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice:
		nilable = true
	default:
		// A type that decodes itself decides what null means.
		nilable = decodesItself(sf.Type)
	}

	var nested reflect.Type
	if st := sf.Type; st.Kind() == reflect.Struct || st.Kind() == reflect.Pointer && st.Elem().Kind() == reflect.Struct {
		if st.Kind() == reflect.Pointer {
			st = st.Elem()
		}
		if !decodesItself(st) && !decodesItself(sf.Type) {
			nested = st
		}
	}

	wrapperTag := `json:"v`
	if options != "" {
		wrapperTag += "," + options
	}
	wrapperTag += `"`
	wrapper := reflect.StructOf([]reflect.StructField{{Name: "V", Type: sf.Type, Tag: reflect.StructTag(wrapperTag)}})

	return argsField{
		name:     name,
		goName:   goName,
		typ:      sf.Type,
		optional: optional,
		nilable:  nilable,
		nested:   nested,
		wrapper:  wrapper,
		index:    index,
		tagged:   tagged,
	}
}

// validJSONName is encoding/json's isValidTag.
func validJSONName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case strings.ContainsRune("!#$%&()*+-./:;<=>?@[]^_{|}~ ", c):
		case !unicode.IsLetter(c) && !unicode.IsDigit(c):
			return false
		}
	}
	return true
}
