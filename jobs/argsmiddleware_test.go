package jobs_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/jobs/argcheck"
)

// amOrderArgs is the current release of a kind: order_id is required,
// channel was added later as an optional field.
type amOrderArgs struct {
	OrderID int64  `json:"order_id" jobs:"id"`
	Channel string `json:"channel"`
}

func (amOrderArgs) Kind() string { return "test.am_order" }

// amOrderWorker records the args of every job it runs.
type amOrderWorker struct {
	river.WorkerDefaults[amOrderArgs]

	mu  sync.Mutex
	ran []amOrderArgs
}

// args returns the args of the jobs run so far.
func (w *amOrderWorker) args() []amOrderArgs {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]amOrderArgs(nil), w.ran...)
}

func (w *amOrderWorker) Work(_ context.Context, job *river.Job[amOrderArgs]) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ran = append(w.ran, job.Args)
	return nil
}

// amMootArgs' worker finds every job moot: bad args must still be
// cancelled, never completed as "not needed".
type amMootArgs struct {
	InvoiceID int64 `json:"invoice_id" jobs:"id"`
}

func (amMootArgs) Kind() string { return "test.am_moot" }

type amMootWorker struct {
	river.WorkerDefaults[amMootArgs]
}

func (amMootWorker) Needed(context.Context, *river.Job[amMootArgs]) (bool, error) { return false, nil }
func (amMootWorker) Work(context.Context, *river.Job[amMootArgs]) error           { return nil }

// amLockedArgs' worker takes a worker lock keyed by its args: bad args are
// cancelled before any lock is asked for.
type amLockedArgs struct {
	PayerID int64 `json:"payer_id" jobs:"id"`
}

func (amLockedArgs) Kind() string { return "test.am_locked" }

type amLockedWorker struct {
	river.WorkerDefaults[amLockedArgs]
}

func (amLockedWorker) LockFor(_ context.Context, job *river.Job[amLockedArgs]) (jobs.Lock, error) {
	return jobs.Lock{Key: fmt.Sprint(job.Args.PayerID)}, nil
}
func (amLockedWorker) Work(context.Context, *river.Job[amLockedArgs]) error { return nil }

// amWideArgs has no field: every key of its jobs is unknown.
type amWideArgs struct{}

func (amWideArgs) Kind() string { return "test.am_wide" }

type amWideWorker struct {
	river.WorkerDefaults[amWideArgs]
}

func (amWideWorker) Work(context.Context, *river.Job[amWideArgs]) error { return nil }

type amBundle struct {
	schema  *dbtest.Schema
	reg     *jobs.Registry
	orders  *amOrderWorker
	metrics *jobs.Metrics
	promReg *prometheus.Registry
	logs    *testlog.Buffer
}

func setupArgsMiddleware(ctx context.Context, t *testing.T) *amBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, nil)
	b := &amBundle{schema: s, reg: jobs.NewRegistry(), orders: &amOrderWorker{}, metrics: jobs.NewMetrics(nil),
		promReg: prometheus.NewRegistry(), logs: &testlog.Buffer{}}
	b.promReg.MustRegister(b.metrics)
	jobs.AddWorker(b.reg, river.QueueDefault, b.orders)
	jobs.AddWorker(b.reg, river.QueueDefault, amMootWorker{})
	jobs.AddWorker(b.reg, river.QueueDefault, amLockedWorker{})
	jobs.AddWorker(b.reg, river.QueueDefault, amWideWorker{})
	require.NoError(t, b.reg.Err())

	client, err := jobs.NewClient(s.Pool, b.reg, &jobs.ClientConfig{
		Queues:  []string{jobs.AllQueues},
		Schema:  s.Name,
		Logger:  slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Metrics: b.metrics,
		River:   &river.Config{FetchCooldown: 10 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
	})
	require.NoError(t, err)
	require.NoError(t, client.Start(ctx))
	t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
	return b
}

// insert writes a job row by SQL, as any producer may, and returns its id.
func (b *amBundle) insert(ctx context.Context, t *testing.T, kind, args string) int64 {
	t.Helper()
	var id int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `
		INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at)
		VALUES ($1::jsonb, $2, 25, 1, 'default', 'available', now()) RETURNING id`, args, kind).Scan(&id))
	return id
}

// waitFinal waits until no job is left to run.
func (b *amBundle) waitFinal(ctx context.Context, t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool {
		var left int
		err := b.schema.Pool.QueryRow(ctx,
			`SELECT count(*) FROM river_job WHERE state NOT IN ('completed', 'cancelled', 'discarded')`).Scan(&left)
		return err == nil && left == 0
	}, 20*time.Second, 20*time.Millisecond, "every job reached a final state")
}

type amJob struct {
	State    string
	Attempt  int
	Errors   []string
	Output   string
	Problems string
}

func (b *amBundle) job(ctx context.Context, t *testing.T, id int64) amJob {
	t.Helper()
	var j amJob
	var output, problems *string
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `
		SELECT state::text, attempt, array(SELECT e->>'error' FROM unnest(errors) e), metadata->>'output', metadata->>'args_problems'
		  FROM river_job WHERE id = $1`, id).Scan(&j.State, &j.Attempt, &j.Errors, &output, &problems))
	if output != nil {
		j.Output = *output
	}
	if problems != nil {
		j.Problems = *problems
	}
	return j
}

// unknownFieldCounts returns aftercommit_job_args_unknown_fields_total by
// "kind field".
func (b *amBundle) unknownFieldCounts(t *testing.T) map[string]float64 {
	t.Helper()
	families, err := b.promReg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "aftercommit_job_args_unknown_fields_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out[labels["kind"]+" "+labels["field"]] = m.GetCounter().GetValue()
		}
	}
	return out
}

func TestArgsMiddleware(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("BadArgsAreCancelledAtTheFirstAttempt", func(t *testing.T) {
		t.Parallel()
		b := setupArgsMiddleware(ctx, t)
		bad := []struct {
			kind, args, wantErr string
		}{
			{"test.am_order", `[1, 2]`, "test.am_order: args: must be a JSON object, got an array"},
			{"test.am_order", `{"order_id": "7"}`, "test.am_order: args: order_id: wrong type: a JSON string where int64 is expected"},
			{"test.am_order", `{"order_id": 7, "channel": 3}`, "test.am_order: args: channel: wrong type: a JSON number where string is expected"},
			{"test.am_order", `{}`, "test.am_order: args: order_id: missing (required)"},
			{"test.am_order", `{"order_id": 0}`, "test.am_order: args: order_id: must be an ID above 0, got 0"},
			{"test.am_order", `{"order_id": -1}`, "test.am_order: args: order_id: must be an ID above 0, got -1"},
			{"test.am_order", `{"orderId": 7}`, `test.am_order: args: order_id: missing (required); unknown field "orderId" (ignored)`},
			{"test.am_moot", `{"invoice_id": 0}`, "test.am_moot: args: invoice_id: must be an ID above 0, got 0"},
			{"test.am_locked", `{"payer_id": -5}`, "test.am_locked: args: payer_id: must be an ID above 0, got -5"},
			{"test.am_wide", `"x"`, "test.am_wide: args: must be a JSON object, got a string"},
		}
		ids := make([]int64, len(bad))
		for i, bj := range bad {
			ids[i] = b.insert(ctx, t, bj.kind, bj.args)
		}
		good := b.insert(ctx, t, "test.am_order", `{"order_id": 8}`)
		moot := b.insert(ctx, t, "test.am_moot", `{"invoice_id": 9}`)
		b.waitFinal(ctx, t)

		for i, bj := range bad {
			j := b.job(ctx, t, ids[i])
			require.Equal(t, "cancelled", j.State, bj.args)
			require.Equal(t, 1, j.Attempt, "%s: cancelled at its first attempt", bj.args)
			require.Equal(t, []string{"JobCancelError: " + bj.wantErr}, j.Errors, bj.args)
			require.Empty(t, j.Output, "%s: never completed as not needed", bj.args)
			var recorded []map[string]any
			require.NoError(t, json.Unmarshal([]byte(j.Problems), &recorded), bj.args)
			require.NotEmpty(t, recorded, "%s: problems recorded in the metadata", bj.args)
			require.Equal(t, "failure", recorded[0]["severity"], bj.args)
		}
		require.Equal(t, "completed", b.job(ctx, t, good).State)
		require.Equal(t, []amOrderArgs{{OrderID: 8}}, b.orders.args(), "only the good order ran")
		mootJob := b.job(ctx, t, moot)
		require.Equal(t, "completed", mootJob.State)
		require.JSONEq(t, `{"skipped": "not needed"}`, mootJob.Output, "a valid job the source of truth finds moot")

		var locks int
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM job_locks`).Scan(&locks))
		require.Zero(t, locks, "no lock was taken for bad args")

		// Each cancel is logged at error level with the job and its error.
		cancelled := b.logs.Records(t, "cancelling a job whose args cannot mean anything")
		require.Len(t, cancelled, len(bad))
		for _, rec := range cancelled {
			require.Equal(t, "ERROR", rec["level"])
			require.Contains(t, rec["err"], ": args: ")
		}

		// failing_jobs shows each kind's latest error: a bad-args cancel.
		rows, err := b.schema.Pool.Query(ctx, `SELECT kind, job_id, state::text, attempt, error FROM failing_jobs ORDER BY kind`)
		require.NoError(t, err)
		type failing struct {
			Kind    string
			JobID   int64
			State   string
			Attempt int
			Error   string
		}
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[failing])
		require.NoError(t, err)
		require.Len(t, got, 4, "one row per kind")
		for _, f := range got {
			require.Equal(t, "cancelled", f.State, f.Kind)
			require.Equal(t, 1, f.Attempt, f.Kind)
			require.True(t, strings.HasPrefix(f.Error, "JobCancelError: "+f.Kind+": args: "), f.Error)
		}

		// check-args lists every cancelled job with what was wrong.
		r, err := argcheck.Check(ctx, b.schema.Pool, b.reg, nil)
		require.NoError(t, err)
		require.True(t, r.Failed())
		require.Equal(t, len(bad), r.Cancelled)
		require.Equal(t, len(bad), r.Finished)
		require.Zero(t, r.Checked, "nothing queued")
		byJob := map[int64][]string{}
		for _, p := range r.Problems {
			require.Equal(t, rivertype.JobStateCancelled, p.State)
			byJob[p.JobID] = append(byJob[p.JobID], fmt.Sprintf("%s %s %s", p.Severity, p.Problem, p.Field))
		}
		require.Equal(t, []string{"failure missing_field order_id", "warning unknown_field orderId"}, byJob[ids[6]])
		require.Equal(t, []string{"failure invalid_id invoice_id"}, byJob[ids[7]])
		require.Len(t, byJob, len(bad))
	})

	t.Run("UnknownFieldsRunAndAreReported", func(t *testing.T) {
		t.Parallel()
		b := setupArgsMiddleware(ctx, t)
		ids := []int64{
			b.insert(ctx, t, "test.am_order", `{"order_id": 1, "coupon": "X1"}`),
			b.insert(ctx, t, "test.am_order", `{"order_id": 2, "coupon": "X2"}`),
			b.insert(ctx, t, "test.am_order", `{"order_id": 3, "coupon": "X3", "gift": true}`),
		}
		b.waitFinal(ctx, t)

		for _, id := range ids {
			j := b.job(ctx, t, id)
			require.Equal(t, "completed", j.State)
			require.Equal(t, 1, j.Attempt)
			require.Empty(t, j.Errors)
		}
		require.ElementsMatch(t, []amOrderArgs{{OrderID: 1}, {OrderID: 2}, {OrderID: 3}}, b.orders.args())
		require.JSONEq(t, `[{"problem": "unknown_field", "severity": "warning", "field": "coupon", "message": "not a field of jobs_test.amOrderArgs: its value is dropped when the job is decoded"},
			{"problem": "unknown_field", "severity": "warning", "field": "gift", "message": "not a field of jobs_test.amOrderArgs: its value is dropped when the job is decoded"}]`,
			b.job(ctx, t, ids[2]).Problems)

		// Counted per job, logged once per kind and field.
		require.Equal(t, map[string]float64{"test.am_order coupon": 3, "test.am_order gift": 1}, b.unknownFieldCounts(t))
		logged := b.logs.Records(t, "hold a field its kind does not know")
		fields := []string{}
		for _, rec := range logged {
			require.Equal(t, "WARN", rec["level"])
			require.Equal(t, "test.am_order", rec["kind"])
			field, ok := rec["field"].(string)
			require.True(t, ok, "field %#v is a string", rec["field"])
			fields = append(fields, field)
		}
		require.ElementsMatch(t, []string{"coupon", "gift"}, fields)

		// check-args reports the jobs that ran with unknown fields, as
		// warnings: no failure.
		r, err := argcheck.Check(ctx, b.schema.Pool, b.reg, nil)
		require.NoError(t, err)
		require.False(t, r.Failed())
		require.Equal(t, 3, r.Finished)
		require.Zero(t, r.Cancelled)
		require.Equal(t, []string{
			fmt.Sprintf("%d warning unknown_field coupon", ids[0]),
			fmt.Sprintf("%d warning unknown_field coupon", ids[1]),
			fmt.Sprintf("%d warning unknown_field coupon", ids[2]),
			fmt.Sprintf("%d warning unknown_field gift", ids[2]),
		}, problemsOf(r))
		require.Equal(t, []argcheck.KindSummary{{Kind: "test.am_order", Registered: true, Finished: 3}}, r.Kinds)
		// Without finished jobs: the pre-deploy check of queued jobs only.
		r, err = argcheck.Check(ctx, b.schema.Pool, b.reg, &argcheck.Opts{Since: -1})
		require.NoError(t, err)
		require.Empty(t, r.Problems)
	})

	t.Run("UnknownFieldLabelsAreBounded", func(t *testing.T) {
		t.Parallel()
		b := setupArgsMiddleware(ctx, t)
		keys := make([]string, 25)
		for i := range keys {
			keys[i] = fmt.Sprintf(`"k%02d": 1`, i)
		}
		id := b.insert(ctx, t, "test.am_wide", "{"+strings.Join(keys, ", ")+"}")
		b.waitFinal(ctx, t)
		require.Equal(t, "completed", b.job(ctx, t, id).State)

		counts := b.unknownFieldCounts(t)
		require.Len(t, counts, 21, "20 keys of their own and the rest together")
		require.Equal(t, float64(5), counts["test.am_wide (other)"])
		require.Equal(t, float64(1), counts["test.am_wide k00"])
		require.Len(t, b.logs.Records(t, "hold a field its kind does not know"), 20)
		require.Len(t, b.logs.Records(t, "too many distinct unknown args fields"), 1)
	})

	t.Run("OldShapeJobsRunWithTheNewOptionalField", func(t *testing.T) {
		t.Parallel()
		b := setupArgsMiddleware(ctx, t)
		// Written before channel existed, and by today's release.
		oldID := b.insert(ctx, t, "test.am_order", `{"order_id": 4}`)
		newID := b.insert(ctx, t, "test.am_order", `{"order_id": 5, "channel": "web"}`)
		b.waitFinal(ctx, t)
		require.Equal(t, "completed", b.job(ctx, t, oldID).State)
		require.Equal(t, "completed", b.job(ctx, t, newID).State)
		require.Empty(t, b.job(ctx, t, oldID).Problems, "nothing to report")
		require.ElementsMatch(t, []amOrderArgs{{OrderID: 4}, {OrderID: 5, Channel: "web"}}, b.orders.args())
		require.Empty(t, b.unknownFieldCounts(t))
	})
}

// problemsOf returns job id, severity, problem and field of every problem
// r lists (as the tests of package argcheck compare them).
func problemsOf(r *argcheck.Report) []string {
	out := []string{}
	for _, p := range r.Problems {
		out = append(out, fmt.Sprintf("%d %s %s %s", p.JobID, p.Severity, p.Problem, p.Field))
	}
	return out
}
