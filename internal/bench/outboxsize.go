package bench

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// outboxSizeRate is the steady enqueue rate of outbox_size.
const outboxSizeRate = 2000

// outboxSizeSamples is how many times outbox_size samples the table over
// its duration (at least once a second).
const outboxSizeSamples = 20

// outboxSize is one look at outbox_jobs.
type outboxSize struct {
	at                   time.Duration
	bytes                int64 // table, TOAST and index
	rows, live, dead     int64
	vacuums, autovacuums int64
}

// readOutboxSize reads the size of outbox_jobs, its rows waiting, and what
// the statistics collector says of its tuples and vacuums.
func readOutboxSize(ctx context.Context, env *Env) (outboxSize, error) {
	var s outboxSize
	err := env.Pool.QueryRow(ctx, `
SELECT pg_total_relation_size(t.relid), (SELECT count(*) FROM outbox_jobs),
       t.n_live_tup, t.n_dead_tup, t.vacuum_count, t.autovacuum_count
  FROM pg_stat_user_tables t WHERE t.relid = 'outbox_jobs'::regclass`).
		Scan(&s.bytes, &s.rows, &s.live, &s.dead, &s.vacuums, &s.autovacuums)
	return s, err
}

// outboxSizeScenario: outbox_jobs under a steady 2,000 enqueues/s for the
// run's duration, a relay and a worker running: its size, the dead tuples
// the relay's deletes leave for vacuum, and the vacuums that ran. Run it on
// a server with autovacuum on (BENCHMARKS.md: a private one) for
// --duration 10m; on a server without autovacuum the table grows by every
// row moved, which the report shows as well.
func outboxSizeScenario(cfg Config) *Scenario {
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	return &Scenario{
		Name: "outbox_size",
		Title: fmt.Sprintf("outbox_jobs under %d enqueues/s (one job per transaction) for the run's duration, a relay and 100 workers running: size, dead tuples, vacuums (sampled %d times)",
			outboxSizeRate, outboxSizeSamples),
		Metrics: []Metric{
			{"achieved/s", true}, {"max table MB", false}, {"last table MB", false},
			{"max dead tuples", false}, {"max rows waiting", false}, {"vacuums", true},
		},
		Sides: []Side{{
			Name: "outbox_relay",
			Note: fmt.Sprintf("outbox.InTx (outbox_jobs) at %d/s from %d producers, the relay's defaults, shipped fetch settings",
				outboxSizeRate, latencyProducers(outboxSizeRate)),
			Run: func(ctx context.Context, env *Env) (Sample, error) {
				if err := env.Truncate(ctx, "river_job", "outbox_jobs"); err != nil {
					return nil, err
				}
				reg := jobs.NewRegistry()
				jobs.AddWorker(reg, river.QueueDefault, noopWorker{})
				client, err := defaultQueueClient(env, reg, 100, nil)
				if err != nil {
					return nil, err
				}
				ob, err := jobs.NewOutbox(env.Pool, client, reg, &outbox.Config{Logger: env.Logger})
				if err != nil {
					return nil, err
				}
				stop, err := startWorking(ctx, env, client, reg, true)
				if err != nil {
					return nil, err
				}
				defer stop()

				first, err := readOutboxSize(ctx, env)
				if err != nil {
					return nil, err
				}
				var (
					samples []outboxSize
					failure error
					wg      sync.WaitGroup
				)
				done := make(chan struct{})
				start := time.Now()
				every := max(env.Duration/outboxSizeSamples, time.Second)
				wg.Go(func() {
					tick := time.NewTicker(every)
					defer tick.Stop()
					for {
						select {
						case <-done:
							return
						case <-tick.C:
						}
						s, err := readOutboxSize(ctx, env)
						if err != nil {
							failure = err
							return
						}
						s.at = time.Since(start).Round(time.Second)
						samples = append(samples, s)
						_, _ = fmt.Fprintf(out, "outbox_size/outbox_relay %s: %.2f MB, %d rows waiting, %d live and %d dead tuples, %d vacuums (%d auto)\n",
							s.at, float64(s.bytes)/(1<<20), s.rows, s.live, s.dead,
							s.vacuums+s.autovacuums-first.vacuums-first.autovacuums, s.autovacuums-first.autovacuums)
					}
				})
				achieved, err := paced(ctx, outboxSizeRate, env.Duration, func(ctx context.Context) error {
					_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
						return tx.Enqueue(noopArgs{N: 1}, nil)
					})
					return err
				})
				close(done)
				wg.Wait()
				if err != nil {
					return nil, err
				}
				if failure != nil {
					return nil, failure
				}
				last, err := readOutboxSize(ctx, env)
				if err != nil {
					return nil, err
				}
				sample := Sample{"achieved/s": achieved, "last table MB": float64(last.bytes) / (1 << 20),
					"vacuums": float64(last.vacuums + last.autovacuums - first.vacuums - first.autovacuums)}
				for _, s := range append(samples, last) {
					sample["max table MB"] = max(sample["max table MB"], float64(s.bytes)/(1<<20))
					sample["max dead tuples"] = max(sample["max dead tuples"], float64(s.dead))
					sample["max rows waiting"] = max(sample["max rows waiting"], float64(s.rows))
				}
				return sample, nil
			},
		}},
	}
}
