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

func init() {
	registry = append(registry, batchLatencyScenario)
}

// Figures of batch_latency.
const (
	batchLatencyRate    = 200 // transactions per second
	batchLatencyMembers = 5
)

// batchLatencyScenario: at 200 transactions a second through the outbox and
// a relay, a job's start after its commit (job_alone), against a job
// batch's callback's start after its last member finished (batch_callback,
// 200 batches of 5 a second).
func batchLatencyScenario(Config) *Scenario {
	return &Scenario{
		Name: "batch_latency",
		Title: fmt.Sprintf("%d transactions/s through outbox.InTx and a relay, 100 workers: a job's start after its transaction (job_alone), "+
			"a job batch's callback's start after its last member finished (batch_callback: a batch of %d no-op members per transaction)",
			batchLatencyRate, batchLatencyMembers),
		Metrics: []Metric{{"p50 ms", false}, {"p99 ms", false}, {"achieved/s", true}},
		Sides: []Side{
			{Name: "job_alone", Note: "attempted_at − created_at of a job enqueued alone (created_at: its outbox row's)", Run: runBatchLatency(false)},
			{Name: "batch_callback", Note: "callback's attempted_at − the batch's finished_at (the last member's finish)", Run: runBatchLatency(true)},
		},
		Goals: []Goal{{Side: "batch_callback", Metric: "p99 ms", Absolute: true, AtMost: 50, Text: "p99 ≤ 50 ms at 200 batches/s (issue 18)"}},
	}
}

func runBatchLatency(batch bool) func(ctx context.Context, env *Env) (Sample, error) {
	return func(ctx context.Context, env *Env) (Sample, error) {
		if err := env.Truncate(ctx, "river_job", "outbox_jobs", "job_batch_members", "job_batches"); err != nil {
			return nil, err
		}
		reg := jobs.NewRegistry()
		jobs.AddWorker(reg, river.QueueDefault, neededNoopWorker{})
		client, err := defaultQueueClient(env, reg, 100, nil)
		if err != nil {
			return nil, err
		}
		ob, err := jobs.NewOutbox(env.Pool, client, reg, &outbox.Config{Logger: env.Logger})
		if err != nil {
			return nil, err
		}
		rl, err := jobs.NewRelay(env.Pool, client, reg, &relay.Config{Schema: env.Schema, Logger: env.Logger})
		if err != nil {
			return nil, err
		}
		if err := client.Start(ctx); err != nil {
			return nil, err
		}
		defer stopClient(ctx, client)
		if err := rl.Start(ctx); err != nil {
			return nil, err
		}
		defer stopRelay(ctx, rl)

		achieved, err := paced(ctx, batchLatencyRate, env.Duration, func(ctx context.Context) error {
			_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
				if !batch {
					return tx.Enqueue(noopArgs{N: 1}, nil)
				}
				jb, err := tx.NewJobBatch(&outbox.JobBatchOpts{OnSuccess: noopArgs{N: -1}})
				if err != nil {
					return err
				}
				for range batchLatencyMembers {
					if err := jb.Enqueue(noopArgs{N: 1}, nil); err != nil {
						return err
					}
				}
				return nil
			})
			return err
		})
		if err != nil {
			return nil, err
		}
		for waited := time.Duration(0); ; waited += 20 * time.Millisecond {
			var left int
			if err := env.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM river_job WHERE state <> 'completed')
				+ (SELECT count(*) FROM outbox_jobs) + (SELECT count(*) FROM job_batches WHERE finished_at IS NULL)`).Scan(&left); err != nil {
				return nil, err
			}
			if left == 0 {
				break
			}
			if waited > time.Minute {
				return nil, fmt.Errorf("bench: %d jobs, outbox rows or batches left a minute after the load", left)
			}
			time.Sleep(20 * time.Millisecond)
		}
		var p50, p99 float64
		q := `SELECT 1000 * extract(epoch FROM percentile_disc(0.50) WITHIN GROUP (ORDER BY attempted_at - created_at)),
		             1000 * extract(epoch FROM percentile_disc(0.99) WITHIN GROUP (ORDER BY attempted_at - created_at))
		        FROM river_job`
		if batch {
			q = `SELECT 1000 * extract(epoch FROM percentile_disc(0.50) WITHIN GROUP (ORDER BY j.attempted_at - b.finished_at)),
			            1000 * extract(epoch FROM percentile_disc(0.99) WITHIN GROUP (ORDER BY j.attempted_at - b.finished_at))
			       FROM job_batches b JOIN river_job j ON j.id = b.callback_job_id`
		}
		if err := env.Pool.QueryRow(ctx, q).Scan(&p50, &p99); err != nil {
			return nil, err
		}
		return Sample{"p50 ms": p50, "p99 ms": p99, "achieved/s": achieved}, nil
	}
}
