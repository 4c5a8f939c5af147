// Package demo plays aftercommit's demo scenario against a database through
// the domains' public APIs, waits for the job queues to drain, and checks
// the invariants of every domain against the source of truth: the scenario
// `aftercommit demo` runs, and the README's main job.
//
// The scenario, at Scale 1: 1,000 users and 10 fundraisers with 10,000 sent
// emails; 5,000 donations (some naming the email whose link led to them,
// some by address only, some from new donors, 10 % failed payments);
// 20,000 email opens and clicks; a flash sale of 200 buyers for 100 units
// with payment failures and abandons; a bulk import of 50,000 car users
// over 20 cars in pages of 500 users, whose fair share per car keeps one
// car's pages from crowding out another's. Every row it creates carries the
// run's tag, so a database can hold many runs and each run checks its own
// rows.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/schollz/progressbar/v3"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
	"github.com/aftercommit/aftercommit/reporting"
)

// Defaults of Config.
const (
	// ScaleDefault plays the scenario at its full size.
	ScaleDefault = 1.0
	// ScaleMax bounds Scale: the scenario's rows grow linearly with it.
	ScaleMax = 100.0
	// DrainTimeoutDefault bounds the wait for the queues to drain.
	DrainTimeoutDefault = 2 * time.Minute
	// ConcurrencyDefault is how many goroutines play each phase.
	ConcurrencyDefault = 8
)

// ErrInvalidConfig is wrapped by Run's error for a Config out of range.
var ErrInvalidConfig = errors.New("demo: invalid config")

// Config tunes a run. The zero value is not valid: use a Scale above 0.
type Config struct {
	// Scale multiplies every size of the scenario (0 < Scale ≤ ScaleMax);
	// each size is at least 1.
	Scale float64
	// ExternalWorkers leaves the jobs to worker processes already running
	// against the database (cmd/worker); otherwise Run starts a River
	// client in-process for the length of the run.
	ExternalWorkers bool
	// Out receives the progress of each phase. Nil: none.
	Out io.Writer
	// Bars draws progress bars on Out (a terminal); otherwise each phase
	// prints one line when it ends.
	Bars bool
	// DrainTimeout bounds the wait for the queues to drain. Defaults to
	// DrainTimeoutDefault.
	DrainTimeout time.Duration
	// Concurrency is how many goroutines play each phase. Defaults to
	// ConcurrencyDefault.
	Concurrency int
	// Seed makes the scenario's random choices repeatable. 0: a random
	// seed.
	Seed uint64
	// Schema is River's schema ("" for the connections' search_path).
	Schema string
	// Logger receives the in-process worker's logs. Defaults to a logger
	// that discards them.
	Logger *slog.Logger
	// NATSURL, when set, also sends the run's donation.created events to
	// NATS JetStream (a stream of the run's own) and checks that a consumer
	// keeping its own tally per fundraiser through the inbox agrees with
	// the donations (two more invariants).
	NATSURL string
}

// sizes are the scenario's sizes at a scale.
type sizes struct {
	users, fundraisers, emails, donations, events int
	stock, buyers                                 int
	cars, carUsers                                int
}

func sizesAt(scale float64) sizes {
	n := func(full int) int { return max(1, int(math.Round(float64(full)*scale))) }
	return sizes{
		users: n(1000), fundraisers: min(10, n(10)), emails: n(10_000), donations: n(5000), events: n(20_000),
		stock: n(100), buyers: n(200),
		cars: min(20, n(20)), carUsers: n(50_000),
	}
}

// run is one run's state.
type run struct {
	cfg   Config
	pool  *pgxpool.Pool
	tag   string
	sizes sizes
	rng   *rand.Rand
	rngMu sync.Mutex

	ob        *outbox.Outbox
	donations *donations.Service
	inventory *inventory.Service
	reporting *reporting.Service

	summary *Summary
	// expect holds what the scenario did, for the invariants.
	expect expectations
	// showShare makes the bulk import show the bulk queue's fair share per
	// car (Run): pages of carUsersPage users, sampled into share. A soak's
	// rounds keep the load they have always had: pages of
	// reporting.MaxBulkUserIDs, not sampled.
	showShare bool
	share     *shareSampler
}

// Run plays the scenario on pool, whose database must be migrated, waits
// for the queues to drain and checks the invariants. It returns the summary
// (Summary.OK says whether every invariant held) or the error that stopped
// the run.
func Run(ctx context.Context, pool *pgxpool.Pool, cfg Config) (*Summary, error) {
	if cfg.Scale <= 0 || cfg.Scale > ScaleMax || math.IsNaN(cfg.Scale) {
		return nil, fmt.Errorf("%w: Scale must be in (0, %g], got %g", ErrInvalidConfig, ScaleMax, cfg.Scale)
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DrainTimeoutDefault
	}
	if cfg.DrainTimeout < 0 {
		return nil, fmt.Errorf("%w: DrainTimeout must not be negative, got %s", ErrInvalidConfig, cfg.DrainTimeout)
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = ConcurrencyDefault
	}
	if cfg.Concurrency < 1 || cfg.Concurrency > 256 {
		return nil, fmt.Errorf("%w: Concurrency must be in 1…256, got %d", ErrInvalidConfig, cfg.Concurrency)
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}

	r := &run{
		cfg:     cfg,
		pool:    pool,
		tag:     strconv.FormatUint(cfg.Seed%1_000_000_007, 36) + strconv.FormatInt(time.Now().UnixMilli()%1_000_000, 36),
		sizes:   sizesAt(cfg.Scale),
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		summary: &Summary{Scale: cfg.Scale, Seed: cfg.Seed, Started: time.Now()},

		showShare: true,
	}
	r.summary.Tag = r.tag
	defer func() {
		if r.share != nil {
			r.share.stop()
		}
	}()

	reg := app.Registry(pool, nil)
	if err := reg.Err(); err != nil {
		return nil, fmt.Errorf("demo: the registry is invalid: %w", err)
	}
	clientCfg := &jobs.ClientConfig{
		Schema: cfg.Schema,
		Logger: cfg.Logger,
		River: &river.Config{
			// Drain fast: the demo measures the system, not River's idle
			// polling.
			FetchCooldown:     5 * time.Millisecond,
			FetchPollInterval: 50 * time.Millisecond,
		},
	}
	if !cfg.ExternalWorkers {
		clientCfg.Queues = []string{jobs.AllQueues} // else insert-only
	}
	client, err := jobs.NewClient(pool, reg, clientCfg)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	if !cfg.ExternalWorkers {
		if err := client.Start(context.WithoutCancel(ctx)); err != nil {
			return nil, fmt.Errorf("demo: starting the in-process worker: %w", err)
		}
		defer func() {
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := client.Stop(stopCtx); err != nil {
				_ = client.StopAndCancel(stopCtx)
			}
		}()
		// The in-process relay moves the committed outbox rows into River
		// (external workers run their own); deferred after the client's
		// Stop, so it stops first.
		rl, err := jobs.NewRelay(pool, client, reg, &relay.Config{Schema: cfg.Schema, Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		if err := rl.Start(context.WithoutCancel(ctx)); err != nil {
			return nil, fmt.Errorf("demo: starting the relay: %w", err)
		}
		defer func() {
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = rl.Stop(stopCtx)
		}()
	}
	if r.ob, err = jobs.NewOutbox(pool, client, reg, nil); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	r.donations = donations.NewService(pool, r.ob)
	if r.inventory, err = inventory.NewService(pool, r.ob, nil); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	r.reporting = reporting.NewService(pool, r.ob)
	var tally *natsTally
	if cfg.NATSURL != "" {
		if tally, err = r.startNATS(ctx); err != nil {
			return nil, err
		}
		defer tally.stop(ctx, r)
	}

	for _, p := range []struct {
		name string
		fn   func(context.Context) error
	}{
		{"seed users, fundraisers and emails", r.seedDonations},
		{"donations", r.playDonations},
		{"email opens and clicks", r.playTracking},
		{"flash sale", r.playFlashSale},
		{"bulk import of car users", r.playCarUsers},
	} {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("demo: interrupted before %s: %w", p.name, context.Cause(ctx))
		}
		if err := p.fn(ctx); err != nil {
			return nil, fmt.Errorf("demo: %s: %w", p.name, err)
		}
	}

	if err := r.drain(ctx); err != nil {
		return nil, err
	}
	if err := r.check(ctx); err != nil {
		return nil, err
	}
	if tally != nil {
		if err := tally.check(ctx, r, cfg.DrainTimeout); err != nil {
			return nil, err
		}
	}
	if err := r.checkShare(ctx); err != nil {
		return nil, err
	}
	if err := r.collectJobStats(ctx); err != nil {
		return nil, err
	}
	r.summary.Took = time.Since(r.summary.Started)
	return r.summary, nil
}

// intN returns a random int in [0, n) from the run's seeded source.
func (r *run) intN(n int) int {
	r.rngMu.Lock()
	defer r.rngMu.Unlock()
	return r.rng.IntN(n)
}

// phase runs fn(i) for i in [0, total) on cfg.Concurrency goroutines,
// drawing progress, and records the phase in the summary. It stops at the
// first error.
func (r *run) phase(ctx context.Context, name string, total int, fn func(ctx context.Context, i int) error) error {
	start := time.Now()
	var bar *progressbar.ProgressBar
	if r.cfg.Bars {
		bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(r.cfg.Out),
			progressbar.OptionSetDescription(fmt.Sprintf("%-28s", name)),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { _, _ = fmt.Fprintln(r.cfg.Out) }),
		)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		next int
		mu   sync.Mutex
		wg   sync.WaitGroup
	)
	for range min(r.cfg.Concurrency, total) {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= total || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(err)
					return
				}
				if bar != nil {
					_ = bar.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	took := time.Since(start)
	r.summary.Phases = append(r.summary.Phases, Phase{Name: name, Ops: total, Took: took})
	if bar == nil {
		_, _ = fmt.Fprintf(r.cfg.Out, "%-28s %7d in %6.2fs (%.0f/s)\n", name, total, took.Seconds(), float64(total)/took.Seconds())
	}
	return nil
}

// exec runs one statement on the pool.
func (r *run) exec(ctx context.Context, sql string, args ...any) error {
	_, err := r.pool.Exec(ctx, sql, args...)
	return err
}

// queryInt64s runs a query of one bigint column.
func (r *run) queryInt64s(ctx context.Context, sql string, args ...any) ([]int64, error) {
	rows, err := r.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}
