package argcheck

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/jobs"
)

// The fuzzed args types are a copy of those of package jobs' internal
// tests (fzargs_internal_test.go), which fuzz the strict decoder alone.

// fzCustomer is a nested struct of the fuzzed args.
type fzCustomer struct {
	Email string `json:"email"`
	Age   int    `json:"age,omitempty"`
}

// fzOrderArgs has one field of every kind the checker treats apart.
type fzOrderArgs struct {
	OrderID  int64          `json:"order_id" jobs:"id"`
	Note     string         `json:"note,omitempty"`
	Tags     []string       `json:"tags" jobs:"required"`
	Channel  *string        `json:"channel"`
	Region   string         `json:"region" jobs:"optional"`
	Count    uint8          `json:"count,string" jobs:"required"`
	At       time.Time      `json:"at,omitzero"`
	Customer fzCustomer     `json:"customer" jobs:"required"`
	Meta     map[string]int `json:"meta,omitempty"`
	Any      any            `json:"any,omitempty"`
	Skip     int            `json:"-"`
}

func (fzOrderArgs) Kind() string { return "fz.order" }

type fzBase struct {
	TenantID int64 `json:"tenant_id" jobs:"id"`
}

type FzAudit struct {
	By string `json:"by"`
}

// fzNestedArgs has promoted, pointer, slice and self-decoding fields, and
// an alias.
type fzNestedArgs struct {
	fzBase
	*FzAudit
	Parent *fzCustomer      `json:"parent"`
	Items  []fzCustomer     `json:"items" jobs:"required"`
	Raw    json.RawMessage  `json:"raw" jobs:"required"`
	Seen   map[string]*bool `json:"seen" jobs:"required"`
}

func (fzNestedArgs) Kind() string          { return "fz.nested" }
func (fzNestedArgs) KindAliases() []string { return []string{"fz.nested_v1"} }

type fzWorker[T river.JobArgs] struct{ river.WorkerDefaults[T] }

func (fzWorker[T]) Work(context.Context, *river.Job[T]) error { return nil }

// fzKind is what the fuzz target knows of a kind independently of the
// checker: a fresh value to decode into, and its top-level JSON names.
type fzKind struct {
	name     string
	newArgs  func() any
	fields   []string // every top-level JSON name
	required []string
}

var fzKinds = []fzKind{
	{"fz.order", func() any { return new(fzOrderArgs) },
		[]string{"order_id", "note", "tags", "channel", "region", "count", "at", "customer", "meta", "any"},
		[]string{"order_id", "tags", "count", "customer"}},
	{"fz.nested", func() any { return new(fzNestedArgs) },
		[]string{"tenant_id", "by", "parent", "items", "raw", "seen"},
		[]string{"tenant_id", "items", "raw", "seen"}},
	{"fz.nested_v1", func() any { return new(fzNestedArgs) },
		[]string{"tenant_id", "by", "parent", "items", "raw", "seen"},
		[]string{"tenant_id", "items", "raw", "seen"}},
	{"fz.unknown", nil, nil, nil},
}

// fzSeverities is Check's documented severity of each problem
// ("" for null_field, which may be either).
var fzSeverities = map[jobs.ArgsProblemKind]jobs.ArgsSeverity{
	jobs.ArgsProblemUnknownKind:  jobs.ArgsSeverityFailure,
	jobs.ArgsProblemUnknownQueue: jobs.ArgsSeverityWarning,
	jobs.ArgsProblemTypeMismatch: jobs.ArgsSeverityFailure,
	jobs.ArgsProblemUndecodable:  jobs.ArgsSeverityFailure,
	jobs.ArgsProblemMissingField: jobs.ArgsSeverityFailure,
	jobs.ArgsProblemNullField:    "",
	jobs.ArgsProblemInvalidID:    jobs.ArgsSeverityFailure,
	jobs.ArgsProblemInvalid:      jobs.ArgsSeverityFailure,
	jobs.ArgsProblemUnknownField: jobs.ArgsSeverityWarning,
}

// FuzzCheckArgs feeds the queued-args checker (the part of Check that runs
// on each job's kind, queue and JSON, without a database) any bytes as
// args. It must never panic, and its report must keep the
// documented promises: one job counted once; only the documented problems,
// with their severities; a type_mismatch or undecodable problem exactly
// when encoding/json (as River) fails to decode the args or they are not a
// JSON object; a failure
// whenever it does; unknown_kind alone for a kind without a worker; a
// missing_field problem exactly for the required fields no key names (for
// a JSON object); an unknown_field problem for every key no field takes.
func FuzzCheckArgs(f *testing.F) {
	reg := jobs.NewRegistry()
	queue := reg.AddQueue("fz", "main", 1, nil)
	jobs.AddWorker(reg, queue, fzWorker[fzOrderArgs]{})
	jobs.AddWorker(reg, queue, fzWorker[fzNestedArgs]{})
	if err := reg.Err(); err != nil {
		f.Fatal(err)
	}

	f.Add([]byte(`{"order_id":1,"tags":[],"count":"3","customer":{"email":"a@b.c"}}`), uint8(0), queue)
	f.Add([]byte(`{"order_id":"1","tags":null,"count":3,"customer":{"email":1,"extra":true},"At":"yesterday","gone":1}`), uint8(0), queue)
	f.Add([]byte(`{"ORDER_ID":1,"Order_Id":2,"tags":["x"],"count":"300","customer":null,"any":{"x":[1]}}`), uint8(0), "other")
	f.Add([]byte(`{"tenant_id":1,"by":"me","parent":{"email":"p"},"items":[{"email":2}],"raw":{"k":[]},"seen":{"a":null}}`), uint8(1), queue)
	f.Add([]byte(`{"tenant_id":null,"by":null,"parent":[],"items":{},"raw":null,"seen":1}`), uint8(2), queue)
	f.Add([]byte(`[1,2]`), uint8(1), queue)
	f.Add([]byte(`null`), uint8(0), queue)
	f.Add([]byte(`{"a":`), uint8(0), queue)
	f.Add([]byte(`{}`), uint8(3), "")
	f.Fuzz(func(t *testing.T, raw []byte, kindSel uint8, jobQueue string) {
		k := fzKinds[int(kindSel)%len(fzKinds)]
		c := newArgsChecker(reg, 1<<20)
		job := &checkedJob{id: 42, kind: k.name, state: rivertype.JobStateAvailable, queue: jobQueue}
		c.check(job, raw)
		r := c.report()

		if r.Checked != 1 || r.OK+r.Warned+r.Failing != 1 || r.ProblemCount != len(r.Problems) {
			t.Fatalf("counts: checked %d, ok %d, warned %d, failing %d, problems %d/%d", r.Checked, r.OK, r.Warned, r.Failing, len(r.Problems), r.ProblemCount)
		}
		if len(r.Kinds) != 1 || r.Kinds[0].Kind != k.name || r.Kinds[0].Registered != (k.newArgs != nil) || r.Kinds[0].Checked != 1 {
			t.Fatalf("kind summaries %+v for kind %q", r.Kinds, k.name)
		}
		has := map[jobs.ArgsProblemKind]int{}
		failed := false
		for _, p := range r.Problems {
			sev, documented := fzSeverities[p.Problem]
			if !documented || (sev != "" && p.Severity != sev) || (p.Severity != jobs.ArgsSeverityFailure && p.Severity != jobs.ArgsSeverityWarning) {
				t.Fatalf("undocumented problem %q of severity %q: %+v", p.Problem, p.Severity, p)
			}
			if p.JobID != job.id || p.Kind != job.kind || p.State != job.state || p.Queue != job.queue || p.Message == "" {
				t.Fatalf("problem does not name the job: %+v", p)
			}
			has[p.Problem]++
			failed = failed || p.Severity == jobs.ArgsSeverityFailure
		}
		if failed != (r.Failing == 1) || (!failed && len(r.Problems) > 0) != (r.Warned == 1) {
			t.Fatalf("failing %d, warned %d, but problems %+v", r.Failing, r.Warned, r.Problems)
		}
		if (has[jobs.ArgsProblemUnknownQueue] == 1) != (jobQueue != queue) || has[jobs.ArgsProblemUnknownQueue] > 1 {
			t.Fatalf("queue %q: %d unknown_queue problems", jobQueue, has[jobs.ArgsProblemUnknownQueue])
		}
		// Problems of one job: kind, queue, then fields, then undecodable,
		// then invalid.
		order := func(p jobs.ArgsProblem) int {
			switch p.Problem {
			case jobs.ArgsProblemUnknownKind:
				return 0
			case jobs.ArgsProblemUnknownQueue:
				return 1
			case jobs.ArgsProblemUndecodable:
				return 3
			case jobs.ArgsProblemInvalid:
				return 4
			}
			return 2
		}
		if !slices.IsSortedFunc(r.Problems, func(a, b jobs.ArgsProblem) int { return order(a) - order(b) }) {
			t.Fatalf("problems out of the documented order: %+v", r.Problems)
		}

		if k.newArgs == nil {
			if has[jobs.ArgsProblemUnknownKind] != 1 || len(r.Problems) != 1+has[jobs.ArgsProblemUnknownQueue] {
				t.Fatalf("unknown kind: want unknown_kind alone, got %+v", r.Problems)
			}
			return
		}
		if has[jobs.ArgsProblemUnknownKind] != 0 {
			t.Fatalf("registered kind %q reported unknown", k.name)
		}

		decodeErr := json.Unmarshal(raw, k.newArgs())
		var obj map[string]json.RawMessage
		isObject := json.Unmarshal(raw, &obj) == nil && obj != nil
		blamed := has[jobs.ArgsProblemTypeMismatch] + has[jobs.ArgsProblemUndecodable]
		if (decodeErr != nil || !isObject) != (blamed > 0) {
			t.Fatalf("River's decode error %v, object %v, but %d type_mismatch/undecodable problems: %+v", decodeErr, isObject, blamed, r.Problems)
		}
		if has[jobs.ArgsProblemUndecodable] > 1 || has[jobs.ArgsProblemUndecodable] == 1 && has[jobs.ArgsProblemTypeMismatch] > 0 {
			t.Fatalf("undecodable is reported once, and only when no field is blamed: %+v", r.Problems)
		}

		if !isObject {
			return // not an object: nothing more is checked
		}
		problemAt := func(kind jobs.ArgsProblemKind, field string) bool {
			return slices.ContainsFunc(r.Problems, func(p jobs.ArgsProblem) bool { return p.Problem == kind && p.Field == field })
		}
		named := func(name string) bool {
			for key := range obj {
				if strings.EqualFold(key, name) {
					return true
				}
			}
			return false
		}
		for _, name := range k.required {
			if problemAt(jobs.ArgsProblemMissingField, name) == named(name) {
				t.Fatalf("required field %q: named by a key %v, reported missing %v (keys %v)", name, named(name), !named(name), reflect.ValueOf(obj).MapKeys())
			}
		}
		for _, name := range k.fields {
			if !slices.Contains(k.required, name) && problemAt(jobs.ArgsProblemMissingField, name) {
				t.Fatalf("optional field %q reported missing", name)
			}
		}
		for key := range obj {
			// A key over 100 bytes is reported cut, marked with "…".
			reported := func(p jobs.ArgsProblem) bool {
				return p.Problem == jobs.ArgsProblemUnknownField &&
					(p.Field == key || len(key) > 100 && strings.HasSuffix(p.Field, "…") && strings.HasPrefix(key, strings.TrimSuffix(p.Field, "…")))
			}
			if !slices.ContainsFunc(k.fields, func(name string) bool { return strings.EqualFold(key, name) }) &&
				!slices.ContainsFunc(r.Problems, reported) {
				t.Fatalf("key %q names no field, but no unknown_field problem: %+v", key, r.Problems)
			}
		}
	})
}
