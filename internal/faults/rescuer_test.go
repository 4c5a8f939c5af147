//go:build long

package faults_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
)

// insertRunning inserts a job of args and makes it look like the attempt
// of a process that died `ago` ago: running, attempt 1, attempted_at backdated.
func insertRunning(ctx context.Context, t *testing.T, s *dbtest.Schema, args river.JobArgs, ago time.Duration) int64 {
	t.Helper()
	inserter, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	require.NoError(t, err)
	res, err := inserter.Insert(ctx, args, nil)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `
UPDATE river_job SET state = 'running', attempt = 1, attempted_at = now() - $2::interval, attempted_by = ARRAY['a-dead-process']
 WHERE id = $1`, res.Job.ID, ago.String())
	require.NoError(t, err)
	return res.Job.ID
}

// TestRescuerSparesJobCompletedMeanwhile replays River's rescuer step by
// step with its own driver calls (JobGetStuck, then JobRescueMany, as
// maintenance.JobRescuer does): a job that completes between the read and
// the write stays completed, one that was rerun meanwhile (a newer attempt)
// is left alone, and one still stuck is rescued in the same write.
func TestRescuerSparesJobCompletedMeanwhile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	completed := insertRunning(ctx, t, s, jobs.PingArgs{}, time.Hour)
	rerun := insertRunning(ctx, t, s, jobs.PingArgs{}, time.Hour)
	stuck := insertRunning(ctx, t, s, jobs.PingArgs{}, time.Hour)

	exec := riverpgxv5.New(s.Pool).GetExecutor()
	horizon := time.Now().Add(-10 * time.Minute)
	read, err := exec.JobGetStuck(ctx, &riverdriver.JobGetStuckParams{Max: 100, Schema: s.Name, StuckHorizon: horizon})
	require.NoError(t, err)
	require.Len(t, read, 3, "the rescuer's read sees the three jobs stuck")

	// Between the read and the write: one job's worker completes it; the
	// other is rescued by someone else and started again.
	_, err = s.Pool.Exec(ctx, `UPDATE river_job SET state = 'completed', finalized_at = now() WHERE id = $1`, completed)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `UPDATE river_job SET attempt = 2, attempted_at = now() WHERE id = $1`, rerun)
	require.NoError(t, err)

	params := &riverdriver.JobRescueManyParams{Schema: s.Name, StuckHorizon: horizon}
	for _, j := range read {
		params.ID = append(params.ID, j.ID)
		params.Error = append(params.Error, []byte(`{"at":"2026-01-01T00:00:00Z","attempt":1,"error":"Stuck job rescued by Rescuer","trace":"TODO"}`))
		params.FinalizedAt = append(params.FinalizedAt, nil)
		params.ScheduledAt = append(params.ScheduledAt, time.Now())
		params.State = append(params.State, string(rivertype.JobStateRetryable))
	}
	_, err = exec.JobRescueMany(ctx, params)
	require.NoError(t, err)

	type row struct {
		state   string
		attempt int
		errs    int
	}
	get := func(id int64) row {
		var r row
		require.NoError(t, s.Pool.QueryRow(ctx,
			`SELECT state::text, attempt, coalesce(array_length(errors, 1), 0) FROM river_job WHERE id = $1`, id).Scan(&r.state, &r.attempt, &r.errs))
		return r
	}
	require.Equal(t, row{"completed", 1, 0}, get(completed), "completed between the read and the write: stays completed")
	require.Equal(t, row{"running", 2, 0}, get(rerun), "running again since: left alone")
	require.Equal(t, row{"retryable", 1, 1}, get(stuck), "still stuck: rescued by the same write")
}

// TestRescuerKnowsEveryKind leaves a donation's job stuck and starts a
// worker that works only River's default queue. It becomes leader, and its
// rescuer retries the job rather than discard it: every process registers
// every kind (internal/app), whatever queues it works. The control, a bare
// River client that registers only the ping worker, discards the same job
// as an unknown kind: the failure this guards against.
func TestRescuerKnowsEveryKind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("worker", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		id := insertRunning(ctx, t, s, donations.UpdateEmailDonationArgs{DonationID: 1}, 2*time.Hour)
		p := startWorker(t, s, "default-only", nil, "--queues", "default")
		var state string
		require.Eventually(t, func() bool {
			require.NoError(t, s.Pool.QueryRow(ctx, `SELECT state::text FROM river_job WHERE id = $1`, id).Scan(&state))
			return state != "running"
		}, 60*time.Second, 20*time.Millisecond)
		require.Contains(t, []string{"retryable", "available"}, state, "rescued for a retry, not discarded")
		// The rescuer logs its counts after its UPDATE committed: wait for
		// the line, which a loaded machine may print after the state was
		// seen (a CI run read the log too early).
		require.Eventually(t, func() bool {
			return strings.Contains(p.log.String(), "num_jobs_retry_scheduled=")
		}, 30*time.Second, 20*time.Millisecond, "the rescuer logs its counts; log:\n%s", p.log)
		require.Contains(t, p.log.String(), "num_jobs_discarded=0 num_jobs_retry_scheduled=1")
	})

	t.Run("control_partial_registry", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
		id := insertRunning(ctx, t, s, donations.UpdateEmailDonationArgs{DonationID: 1}, 2*time.Hour)
		workers := river.NewWorkers()
		jobs.AddPingWorker(workers, s.Pool)
		client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{
			Schema:  s.Name,
			Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 1}},
			Workers: workers,
			Logger:  discardLogger(),
		})
		require.NoError(t, err)
		require.NoError(t, client.Start(ctx))
		t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
		var state string
		require.Eventually(t, func() bool {
			require.NoError(t, s.Pool.QueryRow(ctx, `SELECT state::text FROM river_job WHERE id = $1`, id).Scan(&state))
			return state != "running"
		}, 60*time.Second, 20*time.Millisecond)
		require.Equal(t, "discarded", state, "a leader that does not know the kind discards the job")
	})
}

// TestTimeoutsAreRetryableInJobs runs a checkout completion while another
// transaction holds its product row, once past the domain's lock_timeout
// (55P03) and once past its statement_timeout (57014): the attempt fails
// with inventory's BusyError, recorded in the job's errors, and the job is
// retryable — then, once the row is free, it completes.
func TestTimeoutsAreRetryableInJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		cfg  inventory.Config
		code string
	}{
		{"lock_timeout", inventory.Config{LockTimeout: 50 * time.Millisecond, StatementTimeout: 10 * time.Second}, "55P03"},
		{"statement_timeout", inventory.Config{LockTimeout: 10 * time.Second, StatementTimeout: 50 * time.Millisecond}, "57014"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 6})
			f := newFixture(ctx, t, s, 10)
			checkouts := f.paidCheckouts(ctx, t, 1)

			holder, err := s.Pool.Begin(ctx)
			require.NoError(t, err)
			t.Cleanup(func() { _ = holder.Rollback(context.WithoutCancel(ctx)) })
			_, err = holder.Exec(ctx, `SELECT 1 FROM products WHERE id = $1 FOR UPDATE`, f.productID)
			require.NoError(t, err)

			reg := jobs.NewRegistry()
			cfg := tc.cfg
			inventory.Register(reg, s.Pool, &cfg)
			client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
				Schema: s.Name, Queues: []string{inventory.QueueCheckout}, Logger: discardLogger(),
			})
			require.NoError(t, err)
			require.NoError(t, client.Start(ctx))
			t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
			rl := jobstest.Relay(t, s, client, reg)
			require.NoError(t, rl.Start(ctx))
			t.Cleanup(func() { require.NoError(t, rl.Stop(context.WithoutCancel(ctx))) })

			var (
				state string
				errs  []string
			)
			// No row until the relay moved the job from the outbox.
			require.Eventually(t, func() bool {
				err := s.Pool.QueryRow(ctx, `
SELECT state::text, coalesce(array_agg(e->>'error') FILTER (WHERE e IS NOT NULL), '{}')
  FROM river_job LEFT JOIN unnest(errors) AS e ON true
 WHERE kind = $1 GROUP BY state`, inventory.CompleteCheckoutKind).Scan(&state, &errs)
				return err == nil && len(errs) > 0
			}, 30*time.Second, 20*time.Millisecond)
			// Retryable; River makes a retry due within seconds available at
			// once, and it may already be running its second attempt.
			require.Contains(t, []string{"retryable", "available", "running"}, state, "to be retried, not discarded")
			require.Len(t, errs, 1)
			require.True(t, strings.HasPrefix(errs[0], "inventory: busy completing a checkout, try again: "), errs[0])
			require.Contains(t, errs[0], "(SQLSTATE "+tc.code+")")
			require.Equal(t, f.stock0, count(ctx, t, s, `SELECT stock FROM products WHERE id = $1`, f.productID), "nothing sold by the failed attempt")

			require.NoError(t, holder.Rollback(ctx))
			// River's retry policy waits ~1 s, then the scheduler (every 5 s) makes it available.
			require.Eventually(t, func() bool {
				return count(ctx, t, s, `SELECT count(*) FROM checkouts WHERE id = $1 AND state = 'completed'`, checkouts[0]) == 1
			}, 30*time.Second, 50*time.Millisecond, "completed on a retry once the row is free")
			f.effectsOnce(ctx, t, nil, checkouts)
		})
	}
}
