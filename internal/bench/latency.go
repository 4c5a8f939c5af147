package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// latencyRates are the steady enqueue rates of the latency scenario.
var latencyRates = []int{200, 2000}

// latencyProducers is how many goroutines insert the jobs at rate: one per
// 100 jobs/s, so that each has time for its inserts.
func latencyProducers(rate int) int { return max(2, rate/100) }

// latencyPath is how the latency scenario's producers enqueue.
type latencyPath int

const (
	// directPath: River's insert, one job per transaction (client.Insert).
	directPath latencyPath = iota
	// outboxPath: outbox.InTx on the default path (one outbox_jobs row per
	// transaction), a relay beside the River client moving the rows.
	outboxPath
)

// latencySide is one way of running the latency scenario.
type latencySide struct {
	path  latencyPath
	river func(env *Env) *river.Config
	// relay tunes the relay of the outbox path (nil: its defaults);
	// notify is the outbox's RelayNotifyInterval (0: its default).
	relay  *relay.Config
	notify time.Duration
}

// latencyMetrics are the figures of a latency side, per rate.
func latencyMetrics() []Metric {
	var metrics []Metric
	for _, r := range latencyRates {
		rate := strconv.Itoa(r)
		metrics = append(metrics, Metric{"p50 ms @" + rate + "/s", false}, Metric{"p95 ms @" + rate + "/s", false},
			Metric{"p99 ms @" + rate + "/s", false}, Metric{"achieved/s @" + rate, true})
	}
	return metrics
}

// latencyScenario: enqueue-to-start latency of jobs enqueued one per
// transaction at a steady rate, with River's default fetch settings, with
// the ones the runtime ships, and through the outbox table with a relay
// running beside the River client.
func latencyScenario(Config) *Scenario {
	var round atomic.Int64
	metrics := latencyMetrics()
	run := func(side latencySide) func(ctx context.Context, env *Env) (Sample, error) {
		return runLatency(side, &round)
	}
	return &Scenario{
		Name:    "latency",
		Title:   "enqueue-to-start latency (attempted_at − created_at; for the outbox path created_at is the outbox row's, its transaction's start) at a steady rate, one job per transaction, 100 workers",
		Metrics: metrics,
		Sides: []Side{
			{Name: "river_defaults", Note: "direct: FetchCooldown 100ms, FetchPollInterval 1s (River's defaults)", Run: run(latencySide{path: directPath, river: func(env *Env) *river.Config {
				return &river.Config{Logger: env.Logger, FetchCooldown: river.FetchCooldownDefault, FetchPollInterval: river.FetchPollIntervalDefault}
			}})},
			{Name: "shipped", Note: fmt.Sprintf("direct (River's insert): FetchCooldown %s, FetchPollInterval %s (jobs.NewClient's defaults)",
				jobs.FetchCooldownDefault, jobs.FetchPollIntervalDefault), Run: run(latencySide{path: directPath, river: shippedRiver})},
			{Name: "outbox_relay", Note: fmt.Sprintf("outbox.InTx (outbox_jobs) + a relay beside the client: shipped fetch settings, relay poll %s…%s, notify every %s at most",
				relay.PollMinDefault, relay.PollMaxDefault, outbox.RelayNotifyIntervalDefault), Run: run(latencySide{path: outboxPath, river: shippedRiver})},
		},
		Goals: []Goal{
			{Side: "shipped", Metric: "p50 ms @200/s", Absolute: true, AtMost: 10, Text: "p50 ≤ 10 ms at 200/s"},
			{Side: "shipped", Metric: "p99 ms @200/s", Absolute: true, AtMost: 50, Text: "p99 ≤ 50 ms at 200/s"},
			{Side: "outbox_relay", Metric: "p50 ms @200/s", Absolute: true, AtMost: 5, Text: "p50 ≤ 5 ms at 200/s, relay included"},
			{Side: "outbox_relay", Metric: "p99 ms @200/s", Absolute: true, AtMost: 25, Text: "p99 ≤ 25 ms at 200/s, relay included"},
			{Side: "outbox_relay", Metric: "p99 ms @2000/s", Absolute: true, AtMost: 50, Text: "p99 ≤ 50 ms at 2,000/s, relay included"},
		},
	}
}

// runLatency runs one side of a latency scenario; round numbers the tags
// of the jobs of the scenario's loads.
func runLatency(side latencySide, round *atomic.Int64) func(ctx context.Context, env *Env) (Sample, error) {
	return func(ctx context.Context, env *Env) (Sample, error) {
		if err := env.Truncate(ctx, "river_job", "outbox_jobs"); err != nil {
			return nil, err
		}
		reg := jobs.NewRegistry()
		jobs.AddWorker(reg, river.QueueDefault, neededNoopWorker{})
		client, err := defaultQueueClient(env, reg, 100, side.river(env))
		if err != nil {
			return nil, err
		}
		insert := func(ctx context.Context, tag int) error {
			_, err := client.Insert(ctx, noopArgs{N: tag}, nil)
			return err
		}
		var rl *relay.Relay
		if side.path == outboxPath {
			ob, err := jobs.NewOutbox(env.Pool, client, reg, &outbox.Config{RelayNotifyInterval: side.notify, Logger: env.Logger})
			if err != nil {
				return nil, err
			}
			rcfg := relay.Config{}
			if side.relay != nil {
				rcfg = *side.relay
			}
			rcfg.Schema, rcfg.Logger = env.Schema, env.Logger
			if rl, err = jobs.NewRelay(env.Pool, client, reg, &rcfg); err != nil {
				return nil, err
			}
			insert = func(ctx context.Context, tag int) error {
				_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
					return tx.Enqueue(noopArgs{N: tag}, nil)
				})
				return err
			}
		}
		if err := client.Start(ctx); err != nil {
			return nil, err
		}
		defer stopClient(ctx, client)
		if rl != nil {
			if err := rl.Start(ctx); err != nil {
				return nil, err
			}
			defer stopRelay(ctx, rl)
		}
		s := Sample{}
		for _, rate := range latencyRates {
			tag := int(round.Add(1))
			achieved, err := produceWith(ctx, env.Pool, rate, env.Duration/time.Duration(len(latencyRates)), tag, insert)
			if err != nil {
				return nil, err
			}
			p, err := startLatency(ctx, env.Pool, tag)
			if err != nil {
				return nil, err
			}
			r := strconv.Itoa(rate)
			s["p50 ms @"+r+"/s"], s["p95 ms @"+r+"/s"], s["p99 ms @"+r+"/s"] = p[0], p[1], p[2]
			s["achieved/s @"+r] = achieved
		}
		return s, nil
	}
}

// produce inserts jobs tagged tag at rate per second for d, one per
// transaction from latencyProducers goroutines, waits for them to complete,
// and returns the rate achieved.
func produce(ctx context.Context, client *river.Client[pgx.Tx], pool *pgxpool.Pool, rate int, d time.Duration, tag int) (float64, error) {
	return produceWith(ctx, pool, rate, d, tag, func(ctx context.Context, tag int) error {
		_, err := client.Insert(ctx, noopArgs{N: tag}, nil)
		return err
	})
}

// produceWith is produce with insert enqueueing one job tagged tag in a
// transaction of its own.
func produceWith(ctx context.Context, pool *pgxpool.Pool, rate int, d time.Duration, tag int, insert func(ctx context.Context, tag int) error) (float64, error) {
	achieved, err := paced(ctx, rate, d, func(ctx context.Context) error { return insert(ctx, tag) })
	if err != nil {
		return 0, err
	}
	// Wait for the last ones to be relayed and run.
	for waited := time.Duration(0); ; waited += 20 * time.Millisecond {
		var left int
		if err := pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM river_job WHERE (args->>'n')::int = $1 AND state <> 'completed')
     + (SELECT count(*) FROM outbox_jobs WHERE (args->>'n')::int = $1)`, tag).Scan(&left); err != nil {
			return 0, err
		}
		if left == 0 {
			return achieved, nil
		}
		if waited > time.Minute {
			return 0, fmt.Errorf("%d jobs still not completed a minute after the load", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// paced runs op at rate per second for d, from latencyProducers goroutines
// each keeping its own schedule, and returns the rate achieved.
func paced(ctx context.Context, rate int, d time.Duration, op func(ctx context.Context) error) (float64, error) {
	producers := latencyProducers(rate)
	interval := time.Duration(float64(time.Second) * float64(producers) / float64(rate))
	var (
		inserted atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		failure  error
	)
	start := time.Now()
	deadline := start.Add(d)
	for range producers {
		wg.Go(func() {
			next := time.Now()
			for next.Before(deadline) {
				if wait := time.Until(next); wait > 0 {
					time.Sleep(wait)
				}
				if err := op(ctx); err != nil {
					errOnce.Do(func() { failure = err })
					return
				}
				inserted.Add(1)
				next = next.Add(interval)
			}
		})
	}
	wg.Wait()
	if failure != nil {
		return 0, failure
	}
	return float64(inserted.Load()) / time.Since(start).Seconds(), nil
}

// startLatency returns p50, p95, p99 in milliseconds of attempted_at −
// created_at over the jobs tagged tag.
func startLatency(ctx context.Context, db interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}, tag int) ([3]float64, error) {
	var p [3]float64
	err := db.QueryRow(ctx, `
SELECT 1000 * extract(epoch FROM percentile_disc(0.50) WITHIN GROUP (ORDER BY attempted_at - created_at)),
       1000 * extract(epoch FROM percentile_disc(0.95) WITHIN GROUP (ORDER BY attempted_at - created_at)),
       1000 * extract(epoch FROM percentile_disc(0.99) WITHIN GROUP (ORDER BY attempted_at - created_at))
  FROM river_job WHERE (args->>'n')::int = $1`, tag).Scan(&p[0], &p[1], &p[2])
	return p, err
}
