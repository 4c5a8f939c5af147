package jobs_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/jobs"
)

// tenantArgs is a job of a tenant.
type tenantArgs struct {
	Tenant string `json:"tenant"`
	N      int    `json:"n"`
}

func (tenantArgs) Kind() string { return "test.tenant" }

// tenantWorker runs each job for a millisecond or so; a tenant gets
// inFlight places.
type tenantWorker struct {
	river.WorkerDefaults[tenantArgs]
	inFlight int
}

func (w tenantWorker) FairShareFor(args tenantArgs) jobs.FairShare {
	return jobs.FairShare{Key: args.Tenant, InFlight: w.inFlight}
}

func (tenantWorker) Work(ctx context.Context, _ *river.Job[tenantArgs]) error {
	select {
	case <-time.After(time.Millisecond):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fairInvariantSQL names the tenants with more than $1 jobs that may run
// (released: available, running, or retrying in place).
const fairInvariantSQL = `SELECT coalesce(string_agg(k || ': ' || c, ', '), '') FROM (
	SELECT args->>'tenant' AS k, count(*) AS c FROM river_job
	 WHERE kind = 'test.tenant' AND state IN ('available', 'running', 'retryable', 'scheduled')
	 GROUP BY 1 HAVING count(*) > $1) AS x`

// TestFairShare: tenant A queues 400 jobs, then tenant B 20, in a queue of 8
// workers where a tenant gets 4 places. Never more than 4 jobs of a tenant
// may run (checked every few milliseconds while they run), and every job
// of B completes while A still has most of its backlog: B is not behind A.
// Each tenant's jobs are spread over 4 stripes, in each of which they
// start in commit order.
func TestFairShare(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 12})
	reg := jobs.NewRegistry()
	queue := reg.AddQueue("test", "tenants", jobs.WeightNormal, nil)
	const inFlight = 4
	jobs.AddWorker(reg, queue, tenantWorker{inFlight: inFlight})
	client, _ := jobstest.Client(ctx, t, s, reg, jobstest.Opts{Work: true, MaxWorkers: 8})

	var checks atomic.Int64
	stop := make(chan struct{})
	violations := make(chan string, 100)
	go func() {
		for {
			select {
			case <-stop:
				close(violations)
				return
			case <-time.After(2 * time.Millisecond):
			}
			var v string
			if err := s.Pool.QueryRow(ctx, fairInvariantSQL, inFlight).Scan(&v); err == nil && v != "" {
				select {
				case violations <- v:
				default:
				}
			}
			checks.Add(1)
		}
	}()

	_, err := s.Pool.Exec(ctx, `SELECT aftercommit_enqueue('test.tenant', jsonb_build_object('tenant', 'A', 'n', g))
		FROM generate_series(1, 400) AS g`)
	require.NoError(t, err)
	// B commits its jobs one by one while A's backlog runs.
	for i := range 20 {
		_, err := s.Pool.Exec(ctx, `SELECT aftercommit_enqueue('test.tenant', jsonb_build_object('tenant', 'B', 'n', $1::int))`, i+1)
		require.NoError(t, err)
	}
	var aLeft int
	require.Eventually(t, func() bool {
		var bDone int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE args->>'tenant' = 'B' AND state = 'completed'),
			count(*) FILTER (WHERE args->>'tenant' = 'A' AND state <> 'completed') FROM river_job`).Scan(&bDone, &aLeft))
		return bDone == 20
	}, 30*time.Second, 2*time.Millisecond)
	require.Greater(t, aLeft, 200, "B's 20 jobs finished before half of A's backlog")

	require.Eventually(t, func() bool {
		var left int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state <> 'completed'`).Scan(&left))
		return left == 0
	}, 60*time.Second, 10*time.Millisecond, "%s", jobStateCounts(ctx, t, s))
	close(stop)
	for v := range violations {
		t.Errorf("more than %d jobs of a tenant could run: %s", inFlight, v)
	}
	require.Positive(t, checks.Load())

	// A tenant's jobs are spread over inFlight stripes, each a sequence:
	// within a stripe they started in commit order.
	rows, err := s.Pool.Query(ctx, `SELECT metadata->'aftercommit_seq'->>'key', array_agg((args->>'n')::int ORDER BY attempted_at, id)
		FROM river_job GROUP BY 1 ORDER BY 1`)
	require.NoError(t, err)
	stripes := 0
	for rows.Next() {
		var (
			key   string
			order []int
		)
		require.NoError(t, rows.Scan(&key, &order))
		require.IsIncreasing(t, order, "stripe %s", key)
		stripes++
	}
	require.NoError(t, rows.Err())
	require.Equal(t, 2*inFlight, stripes, "each tenant's jobs in %d stripes", inFlight)
	require.Zero(t, countRows(ctx, t, s, `SELECT count(*) FROM job_sequences`)+countRows(ctx, t, s, `SELECT count(*) FROM job_sequence_members`))
	_ = client
	var waitA, waitB, runA float64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT
		percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM attempted_at - scheduled_at)) FILTER (WHERE args->>'tenant' = 'A') * 1000,
		percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM attempted_at - scheduled_at)) FILTER (WHERE args->>'tenant' = 'B') * 1000,
		percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finalized_at - attempted_at)) FILTER (WHERE args->>'tenant' = 'A') * 1000
		FROM river_job`).Scan(&waitA, &waitB, &runA))
	t.Logf("median wait once released: A %.1f ms, B %.1f ms; median run of A %.1f ms", waitA, waitB, runA)
	t.Logf("%d invariant checks; %d jobs of A were left when B's 20 were done", checks.Load(), aLeft)
}

func countRows(ctx context.Context, t *testing.T, s *dbtest.Schema, sql string) int {
	t.Helper()
	var n int
	require.NoError(t, s.Pool.QueryRow(ctx, sql).Scan(&n))
	return n
}

// TestFairShareAndSequenceExclusive: a worker is a Sequencer or a
// FairSharer, not both.
func TestFairShareAndSequenceExclusive(t *testing.T) {
	t.Parallel()
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, river.QueueDefault, bothWorker{})
	require.ErrorContains(t, reg.Err(), `kind "test.both": a worker is a Sequencer or a FairSharer, not both`)
}

type bothArgs struct{}

func (bothArgs) Kind() string { return "test.both" }

type bothWorker struct{ river.WorkerDefaults[bothArgs] }

func (bothWorker) Work(context.Context, *river.Job[bothArgs]) error { return nil }
func (bothWorker) SequenceFor(bothArgs) jobs.Sequence               { return jobs.Sequence{} }
func (bothWorker) FairShareFor(bothArgs) jobs.FairShare             { return jobs.FairShare{} }
