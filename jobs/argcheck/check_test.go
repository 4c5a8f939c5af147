package argcheck_test

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/jobs/argcheck"
)

// caOrderArgs is today's shape of a kind that evolved over three releases:
// v1 wrote order_id, customer_id and note; v2 dropped note and added three
// optional fields (priority with omitempty, channel as a pointer, region
// untagged, and so optional too); v3 added currency, required.
type caOrderArgs struct {
	OrderID    int64   `json:"order_id" jobs:"id"`
	CustomerID int64   `json:"customer_id" jobs:"id"`
	Currency   string  `json:"currency" jobs:"required"`
	Priority   int     `json:"priority,omitempty"`
	Channel    *string `json:"channel"`
	Region     string  `json:"region" jobs:"optional"`
}

func (caOrderArgs) Kind() string { return "test.order" }

// caNestedArgs has nested, embedded and specially decoded fields.
type caNestedArgs struct {
	caBase              // tenant_id: promoted, required
	*CaAudit            // by: promoted through a pointer, optional
	Ship     caAddress  `json:"ship" jobs:"required"`
	Bill     *caAddress `json:"bill"`
	At       time.Time  `json:"at,omitzero"`     // decodes itself: not walked into
	Lines    []caLine   `json:"lines,omitempty"` // elements: decoding only
	Count    int64      `json:"count,string,omitempty"`
	Internal string     `json:"-"`
}

func (caNestedArgs) Kind() string { return "test.nested" }

type caBase struct {
	TenantID int64 `json:"tenant_id" jobs:"id"`
}

// CaAudit is exported: encoding/json cannot set an embedded pointer to an
// unexported struct.
type CaAudit struct {
	By string `json:"by"`
}

type caAddress struct {
	Street string `json:"street" jobs:"required"`
	Zip    string `json:"zip,omitempty"`
}

type caLine struct {
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}

// caRenamedArgs was kind "test.old_name" before a rename.
type caRenamedArgs struct {
	ID int64 `json:"id" jobs:"id"`
}

func (caRenamedArgs) Kind() string          { return "test.new_name" }
func (caRenamedArgs) KindAliases() []string { return []string{"test.old_name"} }

// caWorker works any args, counting the jobs it ran.
type caWorker[T river.JobArgs] struct {
	river.WorkerDefaults[T]
	worked chan T
}

func (w *caWorker[T]) Work(_ context.Context, job *river.Job[T]) error {
	if w.worked != nil {
		w.worked <- job.Args
	}
	return nil
}

// caRegistry registers the test kinds: orders on shop_orders, the others
// on River's default queue.
func caRegistry(t *testing.T, orders *caWorker[caOrderArgs]) *jobs.Registry {
	t.Helper()
	reg := jobs.NewRegistry()
	q := reg.AddQueue("shop", "orders", 0, nil)
	if orders == nil {
		orders = &caWorker[caOrderArgs]{}
	}
	jobs.AddWorker(reg, q, orders)
	jobs.AddWorker(reg, river.QueueDefault, &caWorker[caNestedArgs]{})
	jobs.AddWorker(reg, river.QueueDefault, &caWorker[caRenamedArgs]{})
	require.NoError(t, reg.Err())
	return reg
}

type caBundle struct {
	schema *dbtest.Schema
	reg    *jobs.Registry
}

func setupCheckArgs(ctx context.Context, t *testing.T) *caBundle {
	t.Helper()
	return &caBundle{schema: dbtest.TestSchema(ctx, t, nil), reg: caRegistry(t, nil)}
}

// caJob is a river_job row written directly, the way an older release
// left it.
type caJob struct {
	kind  string
	args  string
	state rivertype.JobState // defaults to available
	queue string             // defaults to the kind's queue in caRegistry
}

// insert writes jobs in order and returns their ids.
func (b *caBundle) insert(ctx context.Context, t *testing.T, jobsToInsert ...caJob) []int64 {
	t.Helper()
	ids := make([]int64, 0, len(jobsToInsert))
	for _, j := range jobsToInsert {
		state := j.state
		if state == "" {
			state = rivertype.JobStateAvailable
		}
		queue := j.queue
		if queue == "" {
			queue = river.QueueDefault
			if j.kind == "test.order" {
				queue = "shop_orders"
			}
		}
		var id int64
		err := b.schema.Pool.QueryRow(ctx, `
			INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at, attempt, attempted_at, finalized_at)
			VALUES ($1::jsonb, $2, 25, 1, $3, $4::text::river_job_state,
			        CASE WHEN $4 = 'scheduled' THEN now() + interval '1 day' ELSE now() END,
			        CASE WHEN $4 IN ('available', 'scheduled', 'pending') THEN 0 ELSE 1 END,
			        CASE WHEN $4 IN ('available', 'scheduled', 'pending') THEN NULL ELSE now() END,
			        CASE WHEN $4 IN ('completed', 'cancelled', 'discarded') THEN now() END)
			RETURNING id`, j.args, j.kind, queue, string(state)).Scan(&id)
		require.NoError(t, err)
		ids = append(ids, id)
	}
	return ids
}

func (b *caBundle) check(ctx context.Context, t *testing.T, opts *argcheck.Opts) *argcheck.Report {
	t.Helper()
	report, err := argcheck.Check(ctx, b.schema.Pool, b.reg, opts)
	require.NoError(t, err)
	return report
}

// problemsOf returns problem, field and severity of every listed problem,
// the compact form most subtests compare.
func problemsOf(r *argcheck.Report) []string {
	out := []string{}
	for _, p := range r.Problems {
		out = append(out, fmt.Sprintf("%d %s %s %s", p.JobID, p.Severity, p.Problem, p.Field))
	}
	return out
}

// counts is Checked, OK, Warned and Failing of r.
func counts(r *argcheck.Report) [4]int { return [4]int{r.Checked, r.OK, r.Warned, r.Failing} }

func TestCheck(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("MissingOptionalFieldsAreOK", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		// v2's optional fields, absent from jobs written by v1 (with v3's
		// currency, to isolate them).
		b.insert(ctx, t, caJob{kind: "test.order", args: `{"order_id": 1, "customer_id": 2, "currency": "EUR"}`})

		r := b.check(ctx, t, nil)
		require.Equal(t, [4]int{1, 1, 0, 0}, counts(r))
		require.Empty(t, r.Problems)
		require.False(t, r.Failed())
		require.Equal(t, []argcheck.KindSummary{{Kind: "test.order", Registered: true, Checked: 1}}, r.Kinds)
	})

	t.Run("MissingRequiredFieldFails", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		ids := b.insert(ctx, t, caJob{kind: "test.order", args: `{"order_id": 1, "customer_id": 2, "priority": 3}`})

		r := b.check(ctx, t, nil)
		require.Equal(t, [4]int{1, 0, 0, 1}, counts(r))
		require.True(t, r.Failed())
		require.Equal(t, []jobs.ArgsProblem{{
			JobID: ids[0], Kind: "test.order", State: rivertype.JobStateAvailable, Queue: "shop_orders",
			Problem: jobs.ArgsProblemMissingField, Severity: jobs.ArgsSeverityFailure, Field: "currency",
			Message: "missing (required)",
		}}, r.Failures())
		require.Empty(t, r.Warnings())
	})

	t.Run("UnknownFieldWarns", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		ids := b.insert(ctx, t, caJob{kind: "test.order", args: `{"order_id": 1, "customer_id": 2, "currency": "EUR", "note": "gift"}`})

		r := b.check(ctx, t, nil)
		require.Equal(t, [4]int{1, 0, 1, 0}, counts(r))
		require.False(t, r.Failed(), "a warning does not fail the check")
		require.Empty(t, r.Failures())
		require.Equal(t, []jobs.ArgsProblem{{
			JobID: ids[0], Kind: "test.order", State: rivertype.JobStateAvailable, Queue: "shop_orders",
			Problem: jobs.ArgsProblemUnknownField, Severity: jobs.ArgsSeverityWarning, Field: "note",
			Message: "not a field of argcheck_test.caOrderArgs: its value is dropped when the job is decoded",
		}}, r.Warnings())
	})

	t.Run("TypeMismatchFails", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		// customer_id was a string once; both fields are named, not just
		// the first one encoding/json stops at.
		ids := b.insert(ctx, t, caJob{kind: "test.order", args: `{"order_id": 1.5, "customer_id": "C-2", "currency": "EUR"}`})

		r := b.check(ctx, t, nil)
		require.Equal(t, [4]int{1, 0, 0, 1}, counts(r))
		require.Equal(t, []jobs.ArgsProblem{
			{
				JobID: ids[0], Kind: "test.order", State: rivertype.JobStateAvailable, Queue: "shop_orders",
				Problem: jobs.ArgsProblemTypeMismatch, Severity: jobs.ArgsSeverityFailure, Field: "order_id",
				Message: "wrong type: a JSON number 1.5 where int64 is expected",
			},
			{
				JobID: ids[0], Kind: "test.order", State: rivertype.JobStateAvailable, Queue: "shop_orders",
				Problem: jobs.ArgsProblemTypeMismatch, Severity: jobs.ArgsSeverityFailure, Field: "customer_id",
				Message: "wrong type: a JSON string where int64 is expected",
			},
		}, r.Problems)
	})

	t.Run("UnknownKindFails", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		ids := b.insert(ctx, t, caJob{kind: "test.gone", args: `{"id": 1}`})

		r := b.check(ctx, t, nil)
		require.Equal(t, [4]int{1, 0, 0, 1}, counts(r))
		require.Equal(t, []jobs.ArgsProblem{{
			JobID: ids[0], Kind: "test.gone", State: rivertype.JobStateAvailable, Queue: "default",
			Problem: jobs.ArgsProblemUnknownKind, Severity: jobs.ArgsSeverityFailure,
			Message: `no worker is registered for kind "test.gone": every attempt fails (UnknownJobKindError) until River discards the job`,
		}}, r.Problems)
		require.Equal(t, []argcheck.KindSummary{{Kind: "test.gone", Registered: false, Checked: 1, Failing: 1}}, r.Kinds)
	})

	t.Run("OnlyJobsAWorkerWillDecodeAreChecked", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		const broken = `{"order_id": "x"}`      // a type mismatch and two missing fields
		for _, s := range []rivertype.JobState{ // every state of River's enum
			rivertype.JobStateAvailable, rivertype.JobStateCancelled, rivertype.JobStateCompleted, rivertype.JobStateDiscarded,
			rivertype.JobStatePending, rivertype.JobStateRetryable, rivertype.JobStateRunning, rivertype.JobStateScheduled,
		} {
			b.insert(ctx, t, caJob{kind: "test.order", args: broken, state: s})
		}

		r := b.check(ctx, t, nil)
		require.Equal(t, [4]int{4, 0, 0, 4}, counts(r))
		checked := map[rivertype.JobState]int{}
		for _, p := range r.Problems {
			checked[p.State]++
		}
		require.Equal(t, map[rivertype.JobState]int{
			rivertype.JobStateAvailable: 3,
			rivertype.JobStatePending:   3,
			rivertype.JobStateRetryable: 3,
			rivertype.JobStateScheduled: 3,
		}, checked)
	})

	t.Run("PagesThroughThousandsOfJobs", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		// 3,000 jobs: every 6th is completed (not checked), every 10th of
		// the others lacks currency.
		_, err := b.schema.Pool.Exec(ctx, `
			INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, finalized_at)
			SELECT CASE WHEN g % 10 = 0 THEN '{"order_id": 1, "customer_id": 2}'
			            ELSE '{"order_id": 1, "customer_id": 2, "currency": "EUR"}' END::jsonb,
			       'test.order', 25, 1, 'shop_orders',
			       CASE WHEN g % 6 = 0 THEN 'completed' ELSE 'available' END::river_job_state,
			       CASE WHEN g % 6 = 0 THEN now() END
			  FROM generate_series(1, 3000) g`)
		require.NoError(t, err)
		var want, wantFailing int
		for g := 1; g <= 3000; g++ {
			if g%6 != 0 {
				want++
				if g%10 == 0 {
					wantFailing++
				}
			}
		}
		require.Equal(t, 2500, want)

		db := &countingDB{DB: b.schema.Pool}
		r, err := argcheck.Check(ctx, db, b.reg, &argcheck.Opts{PageSize: 1000})
		require.NoError(t, err)
		require.Equal(t, [4]int{2500, 2500 - wantFailing, 0, wantFailing}, counts(r))
		require.Equal(t, wantFailing, r.ProblemCount)
		require.Len(t, r.Problems, wantFailing)
		require.Equal(t, []argcheck.KindSummary{{Kind: "test.order", Registered: true, Checked: 2500, Failing: wantFailing}}, r.Kinds)
		require.Equal(t, int64(4), db.queries.Load(), "pages of 1,000, 1,000 and 500, then one of finished jobs")
		for i := 1; i < len(r.Problems); i++ {
			require.Less(t, r.Problems[i-1].JobID, r.Problems[i].JobID)
		}

		// Pages of 500 read exactly 2,500 jobs: a last, empty page.
		db = &countingDB{DB: b.schema.Pool}
		r2, err := argcheck.Check(ctx, db, b.reg, &argcheck.Opts{PageSize: 500})
		require.NoError(t, err)
		require.Equal(t, r, r2)
		require.Equal(t, int64(7), db.queries.Load())
	})

	t.Run("ExactReportForAMixedSet", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		ids := b.insert(ctx, t,
			caJob{kind: "test.order", args: `{"order_id": 1, "customer_id": 2, "currency": "EUR", "channel": "web", "region": "eu"}`},
			caJob{kind: "test.order", args: `{"order_id": 2, "customer_id": 2, "note": "v1 job"}`, state: rivertype.JobStateRetryable},
			caJob{kind: "test.gone", args: `{}`, state: rivertype.JobStateScheduled},
			caJob{kind: "test.order", args: `{"order_id": 3, "customer_id": null, "currency": "EUR", "priority": null}`},
			caJob{kind: "test.order", args: `{"order_id": 4, "customer_id": 2, "currency": "EUR"}`, queue: "shop_typo"},
			caJob{kind: "test.old_name", args: `{"id": 5}`},
			caJob{kind: "test.order", args: `["not", "an", "object"]`},
			caJob{kind: "test.order", args: `{"order_id": 9}`, state: rivertype.JobStateCompleted},
			caJob{kind: "test.order", args: `null`, state: rivertype.JobStatePending},
		)
		job := func(i int, kind string, state rivertype.JobState, queue string) jobs.ArgsProblem {
			return jobs.ArgsProblem{JobID: ids[i], Kind: kind, State: state, Queue: queue}
		}
		with := func(p jobs.ArgsProblem, problem jobs.ArgsProblemKind, sev jobs.ArgsSeverity, field, msg string) jobs.ArgsProblem {
			p.Problem, p.Severity, p.Field, p.Message = problem, sev, field, msg
			return p
		}
		const (
			fail = jobs.ArgsSeverityFailure
			warn = jobs.ArgsSeverityWarning
		)
		j1 := job(1, "test.order", rivertype.JobStateRetryable, "shop_orders")
		j2 := job(2, "test.gone", rivertype.JobStateScheduled, "default")
		j3 := job(3, "test.order", rivertype.JobStateAvailable, "shop_orders")
		j4 := job(4, "test.order", rivertype.JobStateAvailable, "shop_typo")
		j6 := job(6, "test.order", rivertype.JobStateAvailable, "shop_orders")
		j8 := job(8, "test.order", rivertype.JobStatePending, "shop_orders")
		missing := func(p jobs.ArgsProblem, field string) jobs.ArgsProblem {
			return with(p, jobs.ArgsProblemMissingField, fail, field, "missing (required)")
		}

		r := b.check(ctx, t, nil)
		require.Equal(t, &argcheck.Report{
			Checked:      8,
			OK:           2, // ids[0], and ids[5] through its kind alias
			Warned:       1, // ids[4]
			Failing:      5,
			ProblemCount: 8,
			Kinds: []argcheck.KindSummary{
				{Kind: "test.gone", Registered: false, Checked: 1, Failing: 1},
				{Kind: "test.old_name", Registered: true, Checked: 1},
				{Kind: "test.order", Registered: true, Checked: 6, Failing: 4, Warned: 1},
			},
			Problems: []jobs.ArgsProblem{
				missing(j1, "currency"),
				with(j1, jobs.ArgsProblemUnknownField, warn, "note",
					"not a field of argcheck_test.caOrderArgs: its value is dropped when the job is decoded"),
				with(j2, jobs.ArgsProblemUnknownKind, fail, "",
					`no worker is registered for kind "test.gone": every attempt fails (UnknownJobKindError) until River discards the job`),
				with(j3, jobs.ArgsProblemNullField, fail, "customer_id", "null (required)"),
				with(j3, jobs.ArgsProblemNullField, warn, "priority", "null where int cannot be nil: taken as the zero value"),
				with(j4, jobs.ArgsProblemUnknownQueue, warn, "",
					`queue "shop_typo" is not declared in the registry: no client built from it works that queue, so the job never runs`),
				with(j6, jobs.ArgsProblemUndecodable, fail, "", "must be a JSON object, got an array"),
				with(j8, jobs.ArgsProblemUndecodable, fail, "", "must be a JSON object, got null"),
			},
		}, r)
		require.False(t, r.Truncated())
	})

	t.Run("NestedAndEmbeddedFields", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		ids := b.insert(ctx, t,
			// OK: bill and by are optional, count is a quoted number, at a
			// time, TENANT_ID matches tenant_id ignoring case as
			// encoding/json does.
			caJob{kind: "test.nested", args: `{"TENANT_ID": 1, "ship": {"street": "Main St"}, "count": "3", "at": "2024-01-02T03:04:05Z", "lines": [{"sku": "a", "qty": 1}]}`},
			// Nested problems carry a dotted path.
			caJob{kind: "test.nested", args: `{"tenant_id": 1, "by": "ops", "ship": {"zip": "1000", "floor": 2}, "bill": {"zip": "2000"}}`},
			// Types are checked inside slices, and through the string option.
			caJob{kind: "test.nested", args: `{"tenant_id": 1, "ship": {"street": "x"}, "lines": [{"sku": "a", "qty": "2"}], "count": "many", "at": "yesterday"}`},
			// A struct that is null or not an object.
			caJob{kind: "test.nested", args: `{"ship": null, "bill": "none", "Internal": "x"}`},
		)

		r := b.check(ctx, t, nil)
		require.Equal(t, [4]int{4, 1, 0, 3}, counts(r))
		require.Equal(t, []string{
			fmt.Sprintf("%d failure missing_field ship.street", ids[1]),
			fmt.Sprintf("%d warning unknown_field ship.floor", ids[1]),
			fmt.Sprintf("%d failure missing_field bill.street", ids[1]),
			fmt.Sprintf("%d failure type_mismatch at", ids[2]),
			fmt.Sprintf("%d failure type_mismatch lines", ids[2]),
			fmt.Sprintf("%d failure type_mismatch count", ids[2]),
			fmt.Sprintf("%d failure missing_field tenant_id", ids[3]),
			fmt.Sprintf("%d failure null_field ship", ids[3]),
			fmt.Sprintf("%d failure type_mismatch bill", ids[3]),
			fmt.Sprintf("%d warning unknown_field Internal", ids[3]),
		}, problemsOf(r))
		messages := map[string]string{}
		for _, p := range r.Problems {
			messages[fmt.Sprintf("%d %s", p.JobID, p.Field)] = p.Message
		}
		require.Equal(t, map[string]string{
			fmt.Sprintf("%d ship.street", ids[1]): "missing (required)",
			fmt.Sprintf("%d ship.floor", ids[1]):  "not a field of argcheck_test.caAddress: its value is dropped when the job is decoded",
			fmt.Sprintf("%d bill.street", ids[1]): "missing (required)",
			fmt.Sprintf("%d lines", ids[2]):       "wrong type: a JSON string at qty where int is expected",
			fmt.Sprintf("%d tenant_id", ids[3]):   "missing (required)",
			fmt.Sprintf("%d ship", ids[3]):        "null (required)",
			fmt.Sprintf("%d bill", ids[3]):        "wrong type: a JSON string where argcheck_test.caAddress is expected",
			fmt.Sprintf("%d Internal", ids[3]):    "not a field of argcheck_test.caNestedArgs: its value is dropped when the job is decoded",
		}, without(messages, fmt.Sprintf("%d at", ids[2]), fmt.Sprintf("%d count", ids[2])))
		// Errors of other decoders are quoted as they come.
		require.Regexp(t, `^does not decode into time.Time: .*"yesterday".*$`, messages[fmt.Sprintf("%d at", ids[2])])
		require.Regexp(t, `^does not decode into int64: .*"many".*$`, messages[fmt.Sprintf("%d count", ids[2])])
	})

	t.Run("KindAliasesAreKnown", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		ids := b.insert(ctx, t,
			caJob{kind: "test.old_name", args: `{"id": 1}`},
			caJob{kind: "test.new_name", args: `{"id": "2"}`},
		)
		r := b.check(ctx, t, nil)
		require.Equal(t, [4]int{2, 1, 0, 1}, counts(r))
		require.Equal(t, []string{fmt.Sprintf("%d failure type_mismatch id", ids[1])}, problemsOf(r))
	})

	t.Run("MaxProblemsKeepsCountsAndFailuresFirst", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		var jobsToInsert []caJob
		for range 20 { // warnings first …
			jobsToInsert = append(jobsToInsert, caJob{kind: "test.order", args: `{"order_id": 1, "customer_id": 2, "currency": "EUR", "note": "x"}`})
		}
		for range 10 { // … then failures
			jobsToInsert = append(jobsToInsert, caJob{kind: "test.order", args: `{"order_id": 1, "customer_id": 2}`})
		}
		ids := b.insert(ctx, t, jobsToInsert...)

		r := b.check(ctx, t, &argcheck.Opts{MaxProblems: 12})
		require.Equal(t, [4]int{30, 0, 20, 10}, counts(r))
		require.Equal(t, 30, r.ProblemCount)
		require.True(t, r.Truncated())
		require.Len(t, r.Problems, 12)
		require.Len(t, r.Failures(), 10, "every failure is listed")
		require.Equal(t, []int64{ids[0], ids[1]}, []int64{r.Problems[0].JobID, r.Problems[1].JobID}, "then the first warnings")
		require.Equal(t, ids[20], r.Problems[2].JobID)

		r = b.check(ctx, t, &argcheck.Opts{MaxProblems: 5})
		require.Len(t, r.Problems, 5)
		require.Len(t, r.Failures(), 5)
		require.Equal(t, ids[20], r.Problems[0].JobID)

		r = b.check(ctx, t, &argcheck.Opts{MaxProblems: -1})
		require.Equal(t, [4]int{30, 0, 20, 10}, counts(r))
		require.Equal(t, 30, r.ProblemCount)
		require.Empty(t, r.Problems)
		require.NotNil(t, r.Problems, "an empty list, not null, in JSON")
	})

	t.Run("EmptyQueue", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		r := b.check(ctx, t, nil)
		require.Equal(t, &argcheck.Report{Kinds: []argcheck.KindSummary{}, Problems: []jobs.ArgsProblem{}}, r)
	})

	t.Run("InATransactionAndAnotherSchema", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		b.insert(ctx, t, caJob{kind: "test.gone", args: `{}`})
		// With the search_path elsewhere, the schema comes from the options.
		tx, err := b.schema.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		require.NoError(t, err)
		defer func() { require.NoError(t, tx.Rollback(ctx)) }()
		_, err = tx.Exec(ctx, `SET LOCAL search_path TO pg_catalog`)
		require.NoError(t, err)

		r, err := argcheck.Check(ctx, tx, b.reg, &argcheck.Opts{Schema: b.schema.Name})
		require.NoError(t, err)
		require.Equal(t, 1, r.Failing)
	})

	t.Run("Errors", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)

		_, err := argcheck.Check(ctx, b.schema.Pool, nil, nil)
		require.EqualError(t, err, "argcheck: Check: nil registry")
		_, err = argcheck.Check(ctx, nil, b.reg, nil)
		require.EqualError(t, err, "argcheck: Check: nil database")
		_, err = argcheck.Check(ctx, b.schema.Pool, b.reg, &argcheck.Opts{PageSize: -1})
		require.EqualError(t, err, "argcheck: Check: PageSize must be positive, got -1")

		_, err = argcheck.Check(ctx, b.schema.Pool, b.reg, &argcheck.Opts{Schema: b.schema.Name + "_missing"})
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		require.Equal(t, "42P01", pgErr.Code) // undefined_table
		require.True(t, strings.HasPrefix(err.Error(), "argcheck: reading queued jobs after id 0: "), err.Error())

		canceled, cancel := context.WithCancel(ctx)
		cancel()
		_, err = argcheck.Check(canceled, b.schema.Pool, b.reg, nil)
		require.ErrorIs(t, err, context.Canceled)
	})
}

// without returns m without keys.
func without(m map[string]string, keys ...string) map[string]string {
	out := maps.Clone(m)
	for _, k := range keys {
		delete(out, k)
	}
	return out
}

// countingDB counts the queries made through it.
type countingDB struct {
	argcheck.DB
	queries atomic.Int64
}

func (d *countingDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	d.queries.Add(1)
	return d.DB.Query(ctx, sql, args...)
}

// The checker's verdicts are the worker's: a job it passes runs (with the
// default of a field the job lacks), one it fails is cancelled at its first
// attempt (or fails, for an unknown kind); and once they ran, it lists what
// the worker recorded.
func TestCheckPredictsWhatTheWorkerDoes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	orders := &caWorker[caOrderArgs]{worked: make(chan caOrderArgs, 10)}
	reg := caRegistry(t, orders)
	b := &caBundle{schema: s, reg: reg}
	ids := b.insert(ctx, t,
		caJob{kind: "test.order", args: `{"order_id": 1, "customer_id": 2, "currency": "EUR", "note": "v1"}`},
		caJob{kind: "test.order", args: `{"order_id": 2, "customer_id": "C-2", "currency": "EUR"}`},
		caJob{kind: "test.gone", args: `{}`},
		caJob{kind: "test.order", args: `{"order_id": 0, "customer_id": 2, "currency": "EUR"}`},
	)

	before := []string{
		fmt.Sprintf("%d warning unknown_field note", ids[0]),
		fmt.Sprintf("%d failure type_mismatch customer_id", ids[1]),
		fmt.Sprintf("%d failure unknown_kind ", ids[2]),
		fmt.Sprintf("%d failure invalid_id order_id", ids[3]),
	}
	r := b.check(ctx, t, nil)
	require.Equal(t, [4]int{4, 0, 1, 3}, counts(r))
	require.Equal(t, before, problemsOf(r))

	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues},
		Schema: s.Name,
		Logger: discardLogger(),
		River:  &river.Config{FetchCooldown: 20 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
	})
	require.NoError(t, err)
	events, cancel := client.Subscribe(river.EventKindJobCompleted, river.EventKindJobFailed, river.EventKindJobCancelled)
	t.Cleanup(cancel)
	require.NoError(t, client.Start(ctx))
	t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })

	outcomes := map[int64]river.EventKind{}
	errs := map[int64]string{}
	attempts := map[int64]int{}
	for len(outcomes) < 4 {
		select {
		case ev := <-events:
			if _, seen := outcomes[ev.Job.ID]; seen {
				continue // a retry
			}
			outcomes[ev.Job.ID] = ev.Kind
			attempts[ev.Job.ID] = ev.Job.Attempt
			if len(ev.Job.Errors) > 0 {
				errs[ev.Job.ID] = ev.Job.Errors[0].Error
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("only %d of 4 jobs ran within 15 s: %v", len(outcomes), outcomes)
		}
	}
	require.Equal(t, map[int64]river.EventKind{
		ids[0]: river.EventKindJobCompleted,
		ids[1]: river.EventKindJobCancelled,
		ids[2]: river.EventKindJobFailed,
		ids[3]: river.EventKindJobCancelled,
	}, outcomes)
	require.Equal(t, 1, attempts[ids[1]])
	require.Equal(t, 1, attempts[ids[3]])
	require.Equal(t, "JobCancelError: test.order: args: customer_id: wrong type: a JSON string where int64 is expected", errs[ids[1]])
	require.Equal(t, "JobCancelError: test.order: args: order_id: must be an ID above 0, got 0", errs[ids[3]])
	require.Equal(t, (&rivertype.UnknownJobKindError{Kind: "test.gone"}).Error(), errs[ids[2]])
	require.Equal(t, caOrderArgs{OrderID: 1, CustomerID: 2, Currency: "EUR"}, <-orders.worked)

	// Afterwards: the cancelled jobs and the one that ran with an unknown
	// field are listed as the worker recorded them; the unknown kind is
	// still queued and fails the check.
	require.NoError(t, client.Stop(ctx)) // no retry of the unknown kind under way
	r = b.check(ctx, t, nil)
	require.Equal(t, [4]int{1, 0, 0, 1}, counts(r))
	require.Equal(t, 3, r.Finished)
	require.Equal(t, 2, r.Cancelled)
	require.Equal(t, before, problemsOf(r))
	require.Equal(t, rivertype.JobStateCompleted, r.Problems[0].State)
	require.Equal(t, rivertype.JobStateCancelled, r.Problems[1].State)
	require.Contains(t, []rivertype.JobState{rivertype.JobStateRetryable, rivertype.JobStateAvailable}, r.Problems[2].State)
	require.Equal(t, rivertype.JobStateCancelled, r.Problems[3].State)
	require.Equal(t, []argcheck.KindSummary{
		{Kind: "test.gone", Registered: false, Checked: 1, Failing: 1},
		{Kind: "test.order", Registered: true, Finished: 3, Cancelled: 2},
	}, r.Kinds)
}

// Finished jobs are read from the problems recorded in their metadata,
// within Opts.Since, in pages.
func TestCheckFinishedJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupCheckArgs(ctx, t)
	const (
		failure = `{"args_problems": [{"problem": "missing_field", "severity": "failure", "field": "currency", "message": "missing (required)"}]}`
		warning = `{"args_problems": [{"problem": "unknown_field", "severity": "warning", "field": "note", "message": "not a field"}]}`
	)
	insert := func(state, metadata, finishedAgo string) int64 {
		var id int64
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `
			INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, attempt, attempted_at, finalized_at, metadata)
			VALUES ('{"order_id": 1}', 'test.order', 25, 1, 'shop_orders', $1::text::river_job_state, 1, now(),
			        CASE WHEN $1 IN ('completed', 'cancelled', 'discarded') THEN now() - $3::interval END, $2::jsonb)
			RETURNING id`, state, metadata, finishedAgo).Scan(&id))
		return id
	}
	ids := []int64{
		insert("cancelled", failure, "1 minute"),
		insert("completed", warning, "2 hours"),
		insert("discarded", warning, "1 hour"),
		insert("cancelled", failure, "3 days"), // before Since
		insert("cancelled", `{}`, "1 minute"),  // cancelled for another reason
		insert("completed", `{"args_problems": "garbled"}`, "1 minute"),
		insert("cancelled", failure, "23 hours"),
	}

	db := &countingDB{DB: b.schema.Pool}
	r, err := argcheck.Check(ctx, db, b.reg, &argcheck.Opts{PageSize: 2})
	require.NoError(t, err)
	require.Equal(t, int64(1+3), db.queries.Load(), "one empty page of queued jobs, pages of 2, 2 and 1 finished ones")
	require.Equal(t, [4]int{0, 0, 0, 0}, counts(r))
	require.Equal(t, 5, r.Finished)
	require.Equal(t, 2, r.Cancelled)
	require.True(t, r.Failed())
	require.Equal(t, []string{
		fmt.Sprintf("%d failure missing_field currency", ids[0]),
		fmt.Sprintf("%d warning unknown_field note", ids[1]),
		fmt.Sprintf("%d warning unknown_field note", ids[2]),
		fmt.Sprintf("%d warning undecodable ", ids[5]),
		fmt.Sprintf("%d failure missing_field currency", ids[6]),
	}, problemsOf(r))
	require.Equal(t, []argcheck.KindSummary{{Kind: "test.order", Registered: true, Finished: 5, Cancelled: 2}}, r.Kinds)

	r, err = argcheck.Check(ctx, b.schema.Pool, b.reg, &argcheck.Opts{Since: 90 * time.Minute})
	require.NoError(t, err)
	require.Equal(t, 3, r.Finished, "finished within 90 minutes")

	r, err = argcheck.Check(ctx, b.schema.Pool, b.reg, &argcheck.Opts{Since: -1})
	require.NoError(t, err)
	require.Zero(t, r.Finished)
	require.False(t, r.Failed(), "queued jobs only")
}
