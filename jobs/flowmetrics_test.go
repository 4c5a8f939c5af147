package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
)

// TestMetricsFlowDelayed: a client built with Metrics counts the starts
// its worker lock and its rate limit put off, by kind and control. Four
// jobs of one rate-limited key, 4 starts per 300 ms allowed: none is put
// off; two more are. A job whose lock another holder keeps: put off at
// each try.
func TestMetricsFlowDelayed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 10})
	reg := jobs.NewRegistry()
	queue := reg.AddQueue("test", "flow", jobs.WeightNormal, nil)
	jobs.AddWorker(reg, queue, ratedWorker{})
	jobs.AddWorker(reg, queue, &lockedWorker{probe: &lockProbe{}, pool: s.Pool})
	metrics := jobs.NewMetrics(nil)
	preg := prometheus.NewRegistry()
	preg.MustRegister(metrics)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues}, Schema: s.Name, Metrics: metrics,
		Lock: &jobs.LockConfig{SnoozeBase: 20 * time.Millisecond},
	})
	require.NoError(t, err)

	// The lock of "held" belongs to another job, for an hour.
	_, err = s.Pool.Exec(ctx, `INSERT INTO job_locks (namespace, lock_key, slot, holder_job_id, expires_at)
		VALUES ('test.locked', 'held', 0, -1, now() + interval '1 hour')`)
	require.NoError(t, err)
	var params []river.InsertManyParams
	for i := range 6 {
		params = append(params, river.InsertManyParams{Args: ratedArgs{Key: "k", Limit: 4, Seq: i}})
	}
	params = append(params, river.InsertManyParams{Args: lockedArgs{Key: "held"}})
	_, err = client.InsertMany(ctx, params)
	require.NoError(t, err)
	require.NoError(t, client.Start(ctx))
	t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })

	delayed := func(kind, control string) float64 { return flowDelayed(t, preg, kind, control) }
	require.Eventually(t, func() bool {
		var done int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'test.rated' AND state = 'completed'`).Scan(&done))
		return done == 6 && delayed("test.locked", jobs.FlowControlWorkerLock) >= 2
	}, 20*time.Second, 10*time.Millisecond)
	// The 5th and 6th start of the key waited at least once each; on a
	// loaded machine a decision taken a period after its fetch is refused
	// as stale and counted again.
	require.GreaterOrEqual(t, delayed("test.rated", jobs.FlowControlRateLimit), 2.0, "the 5th and 6th start of the key waited")
	var refused float64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT delayed FROM job_rate_limits WHERE namespace = 'test.rated' AND rate_key = 'k'`).Scan(&refused))
	require.GreaterOrEqual(t, refused, 2.0, "the database refused them")
}

// flowDelayed returns the value of aftercommit_job_flow_delayed_total for
// kind and control (0 when the series does not exist).
func flowDelayed(t *testing.T, reg *prometheus.Registry, kind, control string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != "aftercommit_job_flow_delayed_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["kind"] == kind && labels["control"] == control {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
