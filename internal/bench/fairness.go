package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// The fairness scenario (issue 17): one tenant's backlog against another
// tenant's trickle, in one queue.
func init() {
	registry = append(registry, fairnessScenario)
}

// Sizes of the fairness scenario.
const (
	// fairBacklog is tenant A's backlog at Scale 1.
	fairBacklog = 100_000
	// fairRate is tenant B's jobs per second.
	fairRate = 20
	// fairWorkers work the queue.
	fairWorkers = 20
	// fairJob is how long each job runs.
	fairJob = 2 * time.Millisecond
)

// tenantArgs is a job of a tenant; N tags the round of tenant B's jobs.
type tenantArgs struct {
	Tenant string `json:"tenant"`
	N      int    `json:"n"`
}

func (tenantArgs) Kind() string { return "bench.tenant" }

// tenantWorker runs each job for fairJob.
type tenantWorker struct {
	river.WorkerDefaults[tenantArgs]
}

func (tenantWorker) Work(ctx context.Context, _ *river.Job[tenantArgs]) error {
	select {
	case <-time.After(fairJob):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fairTenantWorker gives each tenant fairWorkers places: a tenant alone
// fills every worker, and another's job waits behind at most that many.
type fairTenantWorker struct{ tenantWorker }

func (fairTenantWorker) FairShareFor(args tenantArgs) jobs.FairShare {
	return jobs.FairShare{Key: args.Tenant, InFlight: fairWorkers}
}

// fairnessScenario: tenant B enqueues fairRate jobs per second, one per
// transaction through the outbox, for the run's duration; its p99 queue
// latency alone, beside tenant A's backlog with a fair share per tenant,
// and beside the same backlog without.
func fairnessScenario(cfg Config) *Scenario {
	backlog := max(1000, int(fairBacklog*cfg.Scale))
	run := func(w river.Worker[tenantArgs], withBacklog bool) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := env.Truncate(ctx, "river_job", "outbox_jobs", "job_sequence_inbox", "job_sequences", "job_sequence_members"); err != nil {
				return nil, err
			}
			reg := jobs.NewRegistry()
			jobs.AddWorker(reg, river.QueueDefault, w)
			client, err := defaultQueueClient(env, reg, fairWorkers, nil)
			if err != nil {
				return nil, err
			}
			rl, err := jobs.NewRelay(env.Pool, client, reg, &relay.Config{Schema: env.Schema, Logger: env.Logger})
			if err != nil {
				return nil, err
			}
			if withBacklog {
				if _, err := env.Pool.Exec(ctx, `SELECT aftercommit_enqueue('bench.tenant', jsonb_build_object('tenant', 'A', 'n', 0))
					FROM generate_series(1, $1::int)`, backlog); err != nil {
					return nil, err
				}
				if _, err := rl.Drain(ctx); err != nil {
					return nil, err
				}
			}
			if err := client.Start(ctx); err != nil {
				return nil, err
			}
			defer stopClient(ctx, client)
			if err := rl.Start(ctx); err != nil {
				return nil, err
			}
			defer stopRelay(ctx, rl)
			ob, err := jobs.NewOutbox(env.Pool, client, reg, &outbox.Config{Logger: env.Logger})
			if err != nil {
				return nil, err
			}
			const aDoneSQL = `SELECT count(*) FROM river_job WHERE args->>'tenant' = 'A' AND state = 'completed'`
			var aBefore, aAfter int
			if err := env.Pool.QueryRow(ctx, aDoneSQL).Scan(&aBefore); err != nil {
				return nil, err
			}
			began := time.Now()
			achieved, err := paced(ctx, fairRate, env.Duration, func(ctx context.Context) error {
				_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
					return tx.Enqueue(tenantArgs{Tenant: "B", N: 1}, nil)
				})
				return err
			})
			if err != nil {
				return nil, err
			}
			if err := env.Pool.QueryRow(ctx, aDoneSQL).Scan(&aAfter); err != nil {
				return nil, err
			}
			aRate := float64(aAfter-aBefore) / time.Since(began).Seconds()
			for waited := time.Duration(0); ; waited += 20 * time.Millisecond {
				var left int
				if err := env.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM river_job WHERE args->>'tenant' = 'B' AND state <> 'completed')
					+ (SELECT count(*) FROM outbox_jobs WHERE args->>'tenant' = 'B')`).Scan(&left); err != nil {
					return nil, err
				}
				if left == 0 {
					break
				}
				if waited > 5*time.Minute {
					return nil, fmt.Errorf("%d jobs of tenant B still not completed 5 minutes after the load", left)
				}
				time.Sleep(20 * time.Millisecond)
			}
			var p50, p99, ready50, fetch50 float64
			if err := env.Pool.QueryRow(ctx, `SELECT
				percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM attempted_at - created_at)) * 1000,
				percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM attempted_at - created_at)) * 1000,
				percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM scheduled_at - created_at)) * 1000,
				percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM attempted_at - scheduled_at)) * 1000
				FROM river_job WHERE args->>'tenant' = 'B'`).Scan(&p50, &p99, &ready50, &fetch50); err != nil {
				return nil, err
			}
			return Sample{"B p99 ms": p99, "B p50 ms": p50, "B ready p50 ms": ready50, "B fetch p50 ms": fetch50,
				"B jobs/s": achieved, "A jobs/s": aRate}, nil
		}
	}
	return &Scenario{
		Name: "fairness",
		Title: fmt.Sprintf("tenant B enqueues %d jobs/s (outbox, one per transaction) for the run's duration; B's queue latency (attempted_at − created_at), alone and beside tenant A's backlog of %d jobs, one queue of %d workers, jobs of %s",
			fairRate, backlog, fairWorkers, fairJob),
		Metrics: []Metric{{"B p99 ms", false}, {"B p50 ms", false}, {"B ready p50 ms", false}, {"B fetch p50 ms", false},
			{"B jobs/s", true}, {"A jobs/s", true}},
		Sides: []Side{
			{Name: "b_alone", Note: "tenant B only", Run: run(tenantWorker{}, false)},
			{Name: "fair_share", Note: fmt.Sprintf("A's backlog; jobs.FairShare per tenant, InFlight %d (as many as workers)", fairWorkers),
				Run: run(fairTenantWorker{}, true)},
			{Name: "no_fair_share", Note: "A's backlog; no fair share: B's jobs queue behind it", Run: run(tenantWorker{}, true)},
		},
		Goals: []Goal{{Side: "fair_share", AtMost: 2, Text: "B's p99 ≤ 2× alone"}},
	}
}
