package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/bouncertest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

func init() {
	registry = append(registry, poolerLatencyScenario)
}

// poolerRate is the jobs per second of pgbouncer_latency.
const poolerRate = 200

// poolerMode is how a pgbouncer_latency side reaches Postgres.
type poolerMode int

const (
	// poolerDirect: every connection straight to Postgres (the baseline).
	poolerDirect poolerMode = iota
	// poolerPollOnly: every connection through PgBouncer in transaction
	// mode; River polls (PollOnly) and so does the relay (DisableListen).
	poolerPollOnly
	// poolerSplitListener: the pool through PgBouncer, River's and the
	// relay's LISTEN on direct connections.
	poolerSplitListener
	// poolerPollOnlyFast: poolerPollOnly, polling every 50 ms (River) and
	// at least every 20 ms (the relay).
	poolerPollOnlyFast
)

// Poll intervals of the poll_only_50ms side.
const (
	poolerFastFetchPoll = 50 * time.Millisecond
	poolerFastRelayPoll = 20 * time.Millisecond
)

// poolerLatencyScenario: commit → start latency of jobs enqueued through the
// outbox, one per transaction at 200/s, with the app, the relay and the
// workers behind PgBouncer in transaction mode, beside the same on direct
// connections.
func poolerLatencyScenario(Config) *Scenario {
	var round atomic.Int64
	r := strconv.Itoa(poolerRate)
	return &Scenario{
		Name: "pgbouncer_latency",
		Title: "commit-to-start latency (attempted_at − the outbox row's created_at) at " + r +
			" jobs/s through the outbox, one per transaction, 100 workers, behind PgBouncer 1.18 in transaction mode",
		Metrics: []Metric{{"p50 ms", false}, {"p95 ms", false}, {"p99 ms", false}, {"achieved/s", true}},
		Sides: []Side{
			{Name: "direct", Note: "app, relay and workers on direct connections (LISTEN/NOTIFY)", Run: runPoolerLatency(poolerDirect, &round)},
			{Name: "poll_only", Note: "everything through PgBouncer (default_query_exec_mode=exec); River PollOnly, relay without LISTEN; shipped poll intervals",
				Run: runPoolerLatency(poolerPollOnly, &round)},
			{Name: "poll_only_50ms", Note: fmt.Sprintf("poll_only, River polling every %s and the relay at least every %s: more idle queries per process and queue",
				poolerFastFetchPoll, poolerFastRelayPoll), Run: runPoolerLatency(poolerPollOnlyFast, &round)},
			{Name: "split_listener", Note: "everything through PgBouncer but River's and the relay's LISTEN, on direct connections (--listen-database-url)",
				Run: runPoolerLatency(poolerSplitListener, &round)},
		},
	}
}

// runPoolerLatency runs one side of pgbouncer_latency.
func runPoolerLatency(mode poolerMode, round *atomic.Int64) func(ctx context.Context, env *Env) (Sample, error) {
	return func(ctx context.Context, env *Env) (Sample, error) {
		if err := env.Truncate(ctx, "river_job", "outbox_jobs"); err != nil {
			return nil, err
		}
		pool := env.Pool
		var listen *pgxpool.Pool
		if mode != poolerDirect {
			b, err := bouncertest.Start(ctx, bouncertest.Config{ServerURL: env.url, Schema: env.Schema, PoolSize: 20})
			if err != nil {
				return nil, err
			}
			defer b.Stop()
			cfg, err := pgxpool.ParseConfig(b.URL("") + "&pool_max_conns=40")
			if err != nil {
				return nil, err
			}
			if pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
				return nil, err
			}
			defer pool.Close()
			if mode == poolerSplitListener {
				lcfg := env.Pool.Config().Copy()
				lcfg.MaxConns = 2
				if listen, err = pgxpool.NewWithConfig(ctx, lcfg); err != nil {
					return nil, err
				}
				defer listen.Close()
			}
		}
		pollOnly := mode == poolerPollOnly || mode == poolerPollOnlyFast
		rc := shippedRiver(env)
		rc.PollOnly = pollOnly
		if mode == poolerPollOnlyFast {
			rc.FetchPollInterval = poolerFastFetchPoll
		}
		reg := jobs.NewRegistry()
		jobs.AddWorker(reg, river.QueueDefault, neededNoopWorker{})
		client, err := jobs.NewClient(pool, reg, &jobs.ClientConfig{
			Queues: []string{river.QueueDefault}, MaxWorkers: 100, Schema: env.Schema, Logger: env.Logger,
			River: rc, ListenPool: listen,
		})
		if err != nil {
			return nil, err
		}
		ob, err := jobs.NewOutbox(pool, client, reg, &outbox.Config{Logger: env.Logger})
		if err != nil {
			return nil, err
		}
		rcfg := &relay.Config{Schema: env.Schema, Logger: env.Logger, DisableListen: pollOnly}
		if mode == poolerPollOnlyFast {
			rcfg.PollMax = poolerFastRelayPoll
		}
		if listen != nil {
			rcfg.ListenConnConfig = listen.Config().ConnConfig
		}
		rl, err := jobs.NewRelay(pool, client, reg, rcfg)
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

		tag := int(round.Add(1))
		achieved, err := produceWith(ctx, env.Pool, poolerRate, env.Duration, tag, func(ctx context.Context, tag int) error {
			_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
				return tx.Enqueue(noopArgs{N: tag}, nil)
			})
			return err
		})
		if err != nil {
			return nil, err
		}
		p, err := startLatency(ctx, env.Pool, tag)
		if err != nil {
			return nil, err
		}
		return Sample{"p50 ms": p[0], "p95 ms": p[1], "p99 ms": p[2], "achieved/s": achieved}, nil
	}
}
