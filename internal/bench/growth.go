package bench

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
)

// GrowthScenario is the name of the growth scenario, whose results
// WriteGrowthChart draws.
const GrowthScenario = "growth"

// Metrics of the growth scenario.
const (
	growthThroughput = "jobs/s"
	growthP99        = "p99 ms @200/s"
	growthP50        = "p50 ms @200/s"
	growthSize       = "river_job MB"
)

// growthRate is the steady enqueue rate of the growth scenario's latency
// part, jobs per second.
const growthRate = 200

// growthBacklog is one side of the growth scenario: the rows already in
// river_job while the work is measured.
type growthBacklog struct {
	// side names the side by its size at Scale 1.
	side string
	// nominal is the number of rows at Scale 1; min the fewest at any
	// scale (the sides keep their ratios at tiny scales).
	nominal, min int
	// query writes the rows: $1 their number.
	query string
	// note says what the rows are; label says it in the chart's legend.
	note, label string
}

// growthBacklogs are the growth scenario's sides, the baseline first. The
// waiting ones (growthWaitingSQL), in order, are the chart's x axis.
var growthBacklogs = []growthBacklog{
	{side: "waiting_10k", nominal: 10_000, min: 300, query: growthWaitingSQL,
		note: "10,000 jobs waiting (available) in another queue"},
	{side: "waiting_100k", nominal: 100_000, min: 3_000, query: growthWaitingSQL,
		note: "100,000 jobs waiting (available) in another queue"},
	{side: "waiting_1m", nominal: 1_000_000, min: 30_000, query: growthWaitingSQL,
		note: "1,000,000 jobs waiting (available) in another queue"},
	{side: "scheduled_1m", nominal: 1_000_000, min: 30_000, query: growthScheduledSQL,
		note: "1,000,000 jobs of the measured queue scheduled a week ahead", label: "1 M scheduled a week ahead"},
	{side: "finished_1m", nominal: 1_000_000, min: 30_000, query: growthFinishedSQL,
		note:  "1,000,000 completed jobs of the measured queue, within River's retention (not yet cleaned)",
		label: "1 M finished, not yet cleaned"},
}

// waiting says whether b's rows are waiting jobs (the chart's line).
func (b growthBacklog) waiting() bool { return b.query == growthWaitingSQL }

// rows is the backlog's size at scale.
func (b growthBacklog) rows(scale float64) int {
	return max(b.min, int(float64(b.nominal)*scale))
}

// The backlogs are written by one INSERT … SELECT, without building and
// sending a million Go values (a million rows in about ten seconds on the
// development machine, most of it spent on the GIN index on args). Their
// args are a dictionary of one ID, like real jobs' args, with no "n", so
// the latency queries (args->>'n') never count them.
//
// Waiting jobs are 'available' in a queue of their own that no client
// works: a backlog that is really there, ready to run, in the same heap,
// the same indexes and under the same maintenance services as the measured
// queue's jobs, but that the measured client never fetches. Available in
// the measured queue would not measure the table's cost: the client would
// work the backlog, and new jobs would wait behind a million others (a
// queue's depth, not a table's size). So the fetch query of the measured
// queue (state = 'available' AND queue = 'default' … ORDER BY priority,
// scheduled_at, id, on river_job_prioritized_fetching_index: state, queue,
// priority, scheduled_at, id) descends the same B-tree, one level deeper
// as it grows, to its own entries; the backlog's entries sit beside them,
// not among them.
//
// The same queue's jobs can only sit in the table unworked when they are
// not due: scheduled_1m puts a million there, a week ahead. The fetch does
// not read them either (state 'scheduled'), but River's scheduler does: its
// query (state IN ('retryable', 'scheduled') AND scheduled_at <= now(), on
// the same index with the queue unconstrained) walks every scheduled entry
// each time it runs, every 5 s on the leader (about 85 ms for a million on
// the development machine).
//
// Finished jobs ran in the measured queue an hour ago: within River's
// CompletedJobRetentionPeriod (24 h by default), so the job cleaner, which
// runs when the client starts and every 30 s, leaves them in place.
const (
	growthWaitingSQL = `
INSERT INTO river_job (state, max_attempts, priority, queue, kind, args, created_at, scheduled_at)
SELECT 'available', 25, 1, 'bench_backlog', 'bench.backlog', jsonb_build_object('id', g),
       now() - interval '1 hour', now() - interval '1 hour'
  FROM generate_series(1, $1::int) AS g`
	growthScheduledSQL = `
INSERT INTO river_job (state, max_attempts, priority, queue, kind, args, created_at, scheduled_at)
SELECT 'scheduled', 25, 1, 'default', 'bench.backlog', jsonb_build_object('id', g),
       now() - interval '1 hour', now() + interval '7 days'
  FROM generate_series(1, $1::int) AS g`
	growthFinishedSQL = `
INSERT INTO river_job (state, attempt, max_attempts, priority, queue, kind, args, attempted_at, attempted_by,
                       created_at, scheduled_at, finalized_at)
SELECT 'completed', 1, 25, 1, 'default', 'bench.backlog', jsonb_build_object('id', g), now() - interval '1 hour', '{bench}',
       now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour'
  FROM generate_series(1, $1::int) AS g`
	growthSizeSQL = `SELECT pg_total_relation_size('river_job')`
)

// growthScenario: throughput and start latency of the shipped client while
// river_job holds 10 k, 100 k or 1 M waiting jobs (of another queue), 1 M
// jobs scheduled for later or 1 M finished jobs not yet cleaned.
func growthScenario(cfg Config) *Scenario {
	// 50,000 jobs take a few seconds to drain, so the client's start
	// (leader election, first fetches) is a small part of the time.
	drainN := max(200, int(50_000*cfg.Scale))
	const maxWorkers = 100
	var tags atomic.Int64
	run := func(b growthBacklog) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := env.Truncate(ctx, "river_job"); err != nil {
				return nil, err
			}
			if _, err := env.Pool.Exec(ctx, b.query, b.rows(env.Scale)); err != nil {
				return nil, fmt.Errorf("loading the backlog: %w", err)
			}
			// A table that has held its rows for a while: vacuumed (hint
			// bits, visibility map) and analysed, as autovacuum leaves it.
			if _, err := env.Pool.Exec(ctx, `VACUUM (ANALYZE) river_job`); err != nil {
				return nil, fmt.Errorf("vacuuming: %w", err)
			}

			reg := jobs.NewRegistry()
			jobs.AddWorker(reg, river.QueueDefault, neededNoopWorker{})
			client, err := jobs.NewClient(env.Pool, reg, &jobs.ClientConfig{
				Queues: []string{river.QueueDefault}, MaxWorkers: maxWorkers, Schema: env.Schema, Logger: env.Logger,
				River: shippedRiver(env), Metrics: jobs.NewMetrics(nil),
			})
			if err != nil {
				return nil, err
			}

			// Throughput: drainN no-op jobs already queued, worked from the
			// client's start. Their N is -1, no latency tag.
			p := make([]river.InsertManyParams, drainN)
			for i := range p {
				p[i] = river.InsertManyParams{Args: noopArgs{N: -1}}
			}
			if _, err := client.InsertManyFast(ctx, p); err != nil {
				return nil, err
			}
			completed, cancel := client.SubscribeConfig(&river.SubscribeConfig{
				ChanSize: drainN + 1000, Kinds: []river.EventKind{river.EventKindJobCompleted}})
			defer cancel()
			start := time.Now()
			if err := client.Start(ctx); err != nil {
				return nil, err
			}
			stop := sync.OnceFunc(func() {
				stopClient(ctx, client)
			})
			defer stop()
			for i := range drainN {
				select {
				case <-completed:
				case <-time.After(time.Minute):
					return nil, fmt.Errorf("jobs stopped completing after %d of %d", i, drainN)
				case <-ctx.Done():
					return nil, context.Cause(ctx)
				}
			}
			s := Sample{growthThroughput: float64(drainN) / time.Since(start).Seconds()}
			cancel() // idempotent: the deferred call does nothing more

			// Latency: a steady growthRate jobs/s for the run's Duration.
			tag := int(tags.Add(1))
			if _, err := produce(ctx, client, env.Pool, growthRate, env.Duration, tag); err != nil {
				return nil, err
			}
			lat, err := startLatency(ctx, env.Pool, tag)
			if err != nil {
				return nil, err
			}
			s[growthP50], s[growthP99] = lat[0], lat[2]
			stop()

			// The table as the side leaves it: the backlog, and the drained
			// and latency jobs, completed and kept (River's retention).
			var size int64
			if err := env.Pool.QueryRow(ctx, growthSizeSQL).Scan(&size); err != nil {
				return nil, err
			}
			s[growthSize] = float64(size) / 1e6
			return s, nil
		}
	}
	sides := make([]Side, len(growthBacklogs))
	for i, b := range growthBacklogs {
		sides[i] = Side{Name: b.side, Note: b.note, Run: run(b)}
	}
	return &Scenario{
		Name: GrowthScenario,
		Title: fmt.Sprintf("the shipped client (%d workers) with river_job already large: %d no-op jobs drained, then %d jobs/s for the run's duration; "+
			"backlog sizes at scale %g: %s", maxWorkers, drainN, growthRate, cfg.Scale, growthSizes(cfg.Scale)),
		Metrics: []Metric{{growthThroughput, true}, {growthP99, false}, {growthP50, false}, {growthSize, false}},
		Sides:   sides,
		Goals:   []Goal{{Side: "waiting_1m", Metric: growthP99, AtMost: 2, Text: "p99 at 1 M waiting ≤ 2× at 10 k"}},
	}
}

// growthSizes lists the backlogs' sizes at scale.
func growthSizes(scale float64) string {
	parts := make([]string, len(growthBacklogs))
	for i, b := range growthBacklogs {
		parts[i] = fmt.Sprintf("%s %d", b.side, b.rows(scale))
	}
	return strings.Join(parts, ", ")
}
