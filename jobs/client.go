package jobs

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/internal/outboxseam"
	"github.com/aftercommit/aftercommit/outbox"
)

// ClientConfig tunes the River client NewClient builds. A nil *ClientConfig
// takes every default.
type ClientConfig struct {
	// Queues lists the queues this process works; []string{AllQueues}
	// works every declared queue plus River's default queue. Every kind and
	// every periodic job is registered regardless, because River's rescuer
	// and periodic enqueuer run on whichever process is leader.
	//
	// Defaults to nil, as in River: an insert-only client that works
	// nothing (and cannot Start). Nil and empty are the same.
	Queues []string

	// MaxWorkers, when above zero, replaces the MaxWorkers of every selected
	// queue (cmd/worker's --max-workers).
	//
	// Defaults to 0: each queue's own, derived from its weight.
	MaxWorkers int

	// Metrics, when set, records every job's outcome, run time and queue
	// latency (it is installed as a River plugin, outside every middleware).
	//
	// Defaults to nil: no metrics.
	Metrics *Metrics

	// Lock tunes the worker lock and semaphore of kinds whose worker
	// implements Locker. Defaults to nil: LockConfig's defaults.
	Lock *LockConfig

	// Schema is River's schema (river.Config.Schema). Defaults to empty:
	// the connections' search_path.
	Schema string

	// Logger receives the client's logs, River's and the middleware's.
	// Defaults to nil, which is River's own default: warnings and errors
	// written to os.Stdout. It is not slog.Default().
	Logger *slog.Logger

	// ListenPool, when set, holds River's LISTEN connection (one, for the
	// client's life) instead of the client's pool. Give it a direct
	// connection to Postgres when the client's pool goes through a pooler
	// in transaction mode (PgBouncer), which cannot hold a LISTEN; the
	// alternative is River's poll-only mode (River.PollOnly), which starts
	// jobs a poll interval late. README, "Running in production".
	//
	// Defaults to nil: the client's pool.
	ListenPool *pgxpool.Pool

	// River, when set, is the base River configuration (fetch settings,
	// timeouts, job retention, …). Workers, Queues, PeriodicJobs, Schema and
	// Logger are set by NewClient; Middleware is appended to.
	River *river.Config
}

// AllQueues selects, alone in ClientConfig.Queues, every queue the registry
// declares plus River's default queue. It is not a valid queue name, so it
// cannot clash with one.
const AllQueues = "*"

// The fetch settings NewClient ships with, where ClientConfig.River leaves
// them zero. River's own defaults (100 ms cooldown, 1 s poll) put about
// 50 ms between a job's commit and its start, and cap a client near one
// fetch per queue every 100 ms; these start a job a few milliseconds after
// its commit and fetch as fast as jobs complete, for one cheap indexed query
// per fetch. BENCHMARKS.md ("Latency") measures both.
const (
	// FetchCooldownDefault is the shortest time between two fetches of a
	// queue (river.Config.FetchCooldown).
	FetchCooldownDefault = 5 * time.Millisecond
	// FetchPollIntervalDefault is how often a queue is polled when no
	// insert notification arrives (river.Config.FetchPollInterval).
	FetchPollIntervalDefault = 200 * time.Millisecond
)

// RiverDefaults returns a River configuration with the fetch settings
// NewClient ships with, for a bare River client to be compared with it.
func RiverDefaults() *river.Config {
	return &river.Config{FetchCooldown: FetchCooldownDefault, FetchPollInterval: FetchPollIntervalDefault}
}

// NewClient builds the River client for reg: every registered worker and
// periodic job, the selected queues with the MaxWorkers derived from their
// weights, and the job middleware: strict args decoding (a job whose args
// cannot mean anything is cancelled at its first attempt; see
// Registry.DecodeArgs), worker lock and semaphore (Locker), queue lock,
// needed-check. It fails when reg has
// registration errors or cfg names an undeclared queue.
func NewClient(pool *pgxpool.Pool, reg *Registry, cfg *ClientConfig) (*river.Client[pgx.Tx], error) {
	if pool == nil {
		return nil, errors.New("jobs: nil pool")
	}
	if reg == nil {
		return nil, errors.New("jobs: nil registry")
	}
	if err := reg.Err(); err != nil {
		return nil, err
	}
	if cfg == nil {
		cfg = &ClientConfig{}
	}

	var rc river.Config
	if cfg.River != nil {
		rc = *cfg.River
	}
	rc.FetchCooldown = cmp.Or(rc.FetchCooldown, FetchCooldownDefault)
	rc.FetchPollInterval = cmp.Or(rc.FetchPollInterval, FetchPollIntervalDefault)
	rc.Schema = cfg.Schema
	rc.Logger = cfg.Logger
	rc.Workers = reg.workers
	rc.PeriodicJobs = append([]*river.PeriodicJob(nil), reg.periodic...)
	if cfg.Metrics != nil {
		rc.Plugins = append(append([]rivertype.Plugin(nil), rc.Plugins...), cfg.Metrics.Plugin())
	}
	lockCfg := cfg.Lock
	if lockCfg == nil {
		lockCfg = &LockConfig{Logger: cfg.Logger}
	}
	lockMW, err := newLockMiddleware(pool, reg.lockFunc, lockCfg)
	if err != nil {
		return nil, err
	}
	rateMW := newRateMiddleware(pool, reg.rateFunc, cfg.Schema)
	if cfg.Metrics != nil {
		lockMW.onDelay, rateMW.onDelay = cfg.Metrics.ObserveFlowDelay, cfg.Metrics.ObserveFlowDelay
	}
	// Outermost first. Args are checked before anything reads them (a lock
	// key, a rate-limit key, the needed-check) or takes a lock. The worker
	// lock comes before the queue lock is freed, so a job waiting for its
	// lock keeps coalescing enqueues. The rate limit comes after the lock,
	// so a job its lock refuses uses no start. The queue lock is freed
	// before the needed-check reads the source of truth, so no enqueue is
	// matched to a job that then finds itself moot. A job of a sequence or
	// fair share is completed as soon as it returns (moot or not), inside
	// its worker lock, so the next one is released at once.
	rc.Middleware = append([]rivertype.Middleware{
		newArgsMiddleware(reg, cfg.Logger, cfg.Metrics),
		lockMW,
		rateMW,
		newQueueLockMiddleware(reg, pool, cfg.Schema),
		&outboxCreatedAtMiddleware{},
		newSeqCompleteMiddleware(pool, cfg.Schema, cfg.Logger),
		newNeededMiddleware(reg.neededFunc),
	}, rc.Middleware...)
	if len(cfg.Queues) > 0 {
		names := cfg.Queues
		if slices.Contains(names, AllQueues) {
			if len(names) > 1 {
				return nil, fmt.Errorf("%w: ClientConfig.Queues: AllQueues must stand alone, got %q", ErrRegistry, names)
			}
			names = nil // selectQueues: every declared queue
		}
		queues, err := reg.selectQueues(names)
		if err != nil {
			return nil, err
		}
		if cfg.MaxWorkers > 0 {
			for name := range queues {
				queues[name] = river.QueueConfig{MaxWorkers: cfg.MaxWorkers}
			}
		}
		rc.Queues = queues
	}

	client, err := river.NewClient(newHookedDriver(pool, cfg.ListenPool, []workHooks{lockMW.hooks()}), &rc)
	if err != nil {
		return nil, fmt.Errorf("jobs: building the River client: %w", err)
	}
	return client, nil
}

// NewOutbox returns an outbox whose jobs get their queue and priority from
// reg, may only go to reg's queues, and are de-duplicated inside a
// transaction by their queue-lock key when their kind has one; events may
// only be published on reg's topics, and reg's subscriptions turn them into
// jobs in the same commit. cfg may be nil; its Queues and Topics, when set,
// restrict further. client must be built by NewClient from the same reg (it
// carries the queue-lock insert middleware).
func NewOutbox(pool *pgxpool.Pool, client *river.Client[pgx.Tx], reg *Registry, cfg *outbox.Config) (*outbox.Outbox, error) {
	if reg == nil {
		return nil, errors.New("jobs: nil registry")
	}
	var c outbox.Config
	if cfg != nil {
		c = *cfg
	}
	outboxseam.Attach(&c, &outboxseam.Registry{
		Queues:       reg.QueueNames(),
		Topics:       reg.TopicNames(),
		Subscribers:  reg.subscribers,
		KindDefaults: reg.KindDefaults,
		DedupeKey:    reg.queueLockKey,
		Sequenced:    reg.sequenced,
	})
	return outbox.New(pool, client, &c)
}
