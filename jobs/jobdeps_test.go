package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// dagArgs is a node of a DAG of jobs; Fail discards it.
type dagArgs struct {
	Layer int  `json:"layer"`
	Index int  `json:"index"`
	Fail  bool `json:"fail"`
}

func (dagArgs) Kind() string { return "test.dag" }

type dagWorker struct {
	river.WorkerDefaults[dagArgs]
}

func (dagWorker) Work(_ context.Context, job *river.Job[dagArgs]) error {
	if job.Args.Fail {
		return errors.New("node failed")
	}
	// A moment of work, so that a child started too early would overlap.
	time.Sleep(2 * time.Millisecond)
	return nil
}

type depsEnv struct {
	s  *dbtest.Schema
	ob *outbox.Outbox
	rl *relay.Relay
}

func newDepsEnv(ctx context.Context, t *testing.T, direct bool) *depsEnv {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 10})
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, reg.AddQueue("test", "dags", jobs.WeightNormal, nil), dagWorker{})
	client, _ := jobstest.Client(ctx, t, s, reg, jobstest.Opts{Work: true, MaxWorkers: 20})
	ob, err := jobs.NewOutbox(s.Pool, client, reg, &outbox.Config{DirectInsert: direct})
	require.NoError(t, err)
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name, Logger: discardLogger()})
	require.NoError(t, err)
	return &depsEnv{s: s, ob: ob, rl: rl}
}

// finished waits until n jobs of the schema are finished.
func (e *depsEnv) finished(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, err := e.rl.Drain(ctx)
		require.NoError(t, err)
		var done int
		require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE finalized_at IS NOT NULL`).Scan(&done))
		return done == n
	}, 30*time.Second, 20*time.Millisecond)
}

// TestJobDependenciesDAG: a DAG of 100 jobs in 10 layers, each job after
// three of the layer before, enqueued in one transaction, runs in
// dependency order: no job started before all its parents completed
// (attempted_at against finalized_at), and nothing waits at the end.
func TestJobDependenciesDAG(t *testing.T) {
	t.Parallel()
	for _, direct := range []bool{false, true} {
		t.Run(fmt.Sprintf("direct=%t", direct), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			e := newDepsEnv(ctx, t, direct)
			const layers, width = 10, 10
			_, err := e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
				var prev []outbox.JobRef
				for layer := range layers {
					var cur []outbox.JobRef
					for i := range width {
						var ref outbox.JobRef
						var err error
						if layer == 0 {
							ref, err = tx.EnqueueRef(dagArgs{Layer: layer, Index: i}, nil)
						} else {
							after := outbox.After{Refs: []outbox.JobRef{prev[i], prev[(i+1)%width], prev[(i+3)%width]}}
							ref, err = tx.EnqueueAfter(after, dagArgs{Layer: layer, Index: i}, nil)
						}
						if err != nil {
							return err
						}
						cur = append(cur, ref)
					}
					prev = cur
				}
				return nil
			})
			require.NoError(t, err)
			e.finished(ctx, t, layers*width)

			var completed, edges, early, waits int
			require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'completed') FROM river_job`).Scan(&completed))
			require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE c.attempted_at < p.finalized_at)
				FROM river_job c
				CROSS JOIN LATERAL jsonb_array_elements_text(c.metadata->'aftercommit_after'->'refs') AS r(ref)
				JOIN river_job p ON p.metadata->>'aftercommit_ref' = r.ref`).Scan(&edges, &early))
			require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT count(*) FROM job_waits`).Scan(&waits))
			require.Equal(t, []int{layers * width, (layers - 1) * width * 3, 0, 0}, []int{completed, edges, early, waits})
		})
	}
}

// TestJobDependenciesFailure: a discarded job cancels the jobs that wait
// for it, with the reason, and theirs in turn; a job that runs on failure
// runs; a job enqueued after its dependency failed (a later transaction)
// is cancelled as it is inserted, one that waits for a completed job runs
// at once, and one that names an unknown job is cancelled.
func TestJobDependenciesFailure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newDepsEnv(ctx, t, false)
	var parent, child, ok outbox.JobRef
	_, err := e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		var err error
		if parent, err = tx.EnqueueRef(dagArgs{Layer: 0, Fail: true}, &river.InsertOpts{MaxAttempts: 1}); err != nil {
			return err
		}
		if ok, err = tx.EnqueueRef(dagArgs{Layer: 0, Index: 1}, nil); err != nil {
			return err
		}
		if child, err = tx.EnqueueAfter(outbox.After{Refs: []outbox.JobRef{parent, ok}}, dagArgs{Layer: 1}, nil); err != nil {
			return err
		}
		if _, err = tx.EnqueueAfter(outbox.After{Refs: []outbox.JobRef{child}}, dagArgs{Layer: 2}, nil); err != nil {
			return err
		}
		_, err = tx.EnqueueAfter(outbox.After{Refs: []outbox.JobRef{parent}, RunOnFailure: true}, dagArgs{Layer: 1, Index: 9}, nil)
		return err
	})
	require.NoError(t, err)
	e.finished(ctx, t, 5)
	_, err = e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		if _, err := tx.EnqueueAfter(outbox.After{Refs: []outbox.JobRef{parent}}, dagArgs{Layer: 3}, nil); err != nil {
			return err
		}
		if _, err := tx.EnqueueAfter(outbox.After{Refs: []outbox.JobRef{ok}}, dagArgs{Layer: 3, Index: 1}, nil); err != nil {
			return err
		}
		_, err := tx.EnqueueAfter(outbox.After{Refs: []outbox.JobRef{"0b7e4a4e-5c1e-4f3a-9d7e-2b1c0a9f8e7d"}}, dagArgs{Layer: 3, Index: 2}, nil)
		return err
	})
	require.NoError(t, err)
	e.finished(ctx, t, 8)

	type row struct {
		Layer, Index int
		State        string
		Reason       string
	}
	rows, err := e.s.Pool.Query(ctx, `SELECT (args->>'layer')::int, (args->>'index')::int, state::text,
		coalesce(errors[array_length(errors, 1)]->>'error', '') FROM river_job ORDER BY 1, 2`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	require.NoError(t, err)
	require.Equal(t, []row{
		{0, 0, "discarded", "node failed"},
		{0, 1, "completed", ""},
		{1, 0, "cancelled", fmt.Sprintf("dependency %s was discarded", parent)},
		{1, 9, "completed", ""},
		{2, 0, "cancelled", fmt.Sprintf("dependency %s was cancelled", child)},
		{3, 0, "cancelled", fmt.Sprintf("dependency %s was discarded", parent)},
		{3, 1, "completed", ""},
		{3, 2, "cancelled", "dependency 0b7e4a4e-5c1e-4f3a-9d7e-2b1c0a9f8e7d is unknown"},
	}, got)

	// Bad references are refused where they are enqueued.
	_, err = e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		_, err := tx.EnqueueAfter(outbox.After{}, dagArgs{}, nil)
		return err
	})
	require.ErrorIs(t, err, outbox.ErrInvalidOptions)
	_, err = e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		_, err := tx.EnqueueAfter(outbox.After{Refs: []outbox.JobRef{"job-1"}}, dagArgs{}, nil)
		return err
	})
	require.ErrorIs(t, err, outbox.ErrInvalidOptions)
}
