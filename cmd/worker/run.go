package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/internal/dbconn"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// Exit codes of run.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// hardStopTimeout bounds the wait for jobs to return once their contexts are
// cancelled, after the shutdown timeout elapsed.
const hardStopTimeout = 10 * time.Second

// run is the whole worker: it parses args (falling back to getenv), connects,
// checks the schema, works jobs until ctx is done (the signal), then shuts
// down gracefully. It returns the process's exit code. Usage errors go to
// stderr as one plain line; everything else is logged to stderr with
// log/slog.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stdout)
	if errors.Is(err, errHelp) {
		return exitOK
	}
	if err != nil {
		_, _ = fmt.Fprintln(stderr, err.Error())
		return exitUsage
	}

	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	stopDev, code, ok := setUpDev(ctx, cfg, logger) // --dev only
	if !ok {
		return code
	}
	defer stopDev()
	if err := serve(ctx, cfg, logger); err != nil {
		// Each error of serve is one sentence that says what to do.
		logger.ErrorContext(ctx, err.Error())
		return exitFailure
	}
	return exitOK
}

// errHardStopTimeout means jobs kept running after their contexts were
// cancelled; River's rescuer will put them back in the queue later.
var errHardStopTimeout = errors.New("worker: running jobs did not return within " + hardStopTimeout.String() +
	" of being cancelled; exiting anyway, River will rescue them once they count as stuck")

// serve runs the River client from start to stop.
func serve(ctx context.Context, cfg *config, logger *slog.Logger) error {
	pool, err := dbconn.Connect(ctx, cfg.pool, "worker")
	if errors.Is(err, dbconn.ErrInterrupted) {
		logger.InfoContext(ctx, "worker: interrupted before start")
		return nil
	}
	if err != nil {
		return err
	}
	// Closed on every path but a failed hard stop, where jobs still hold
	// connections and Close would wait for them forever.
	closePool := true
	defer func() {
		if closePool {
			pool.Close()
		}
	}()

	err = retryTransient(ctx, logger, "the schema was checked", startRetryFor, func() error {
		return checkMigrated(ctx, pool, cfg.schema)
	})
	if err != nil {
		if ctx.Err() != nil {
			logger.InfoContext(ctx, "worker: interrupted before start")
			return nil
		}
		return err
	}

	// River's listener and the relay's LISTEN on direct connections, when
	// the pool goes through a pooler in transaction mode.
	var listenPool *pgxpool.Pool
	if cfg.listen != nil {
		listenPool, err = dbconn.Connect(ctx, cfg.listen, "worker")
		if errors.Is(err, dbconn.ErrInterrupted) {
			logger.InfoContext(ctx, "worker: interrupted before start")
			return nil
		}
		if err != nil {
			return err
		}
		defer func() {
			if closePool {
				listenPool.Close()
			}
		}()
	}

	// Every kind and periodic job is registered, whatever queues this
	// process works: the leader's rescuer must know them all.
	metrics := jobs.NewMetrics(nil)
	rc := riverConfig(cfg)
	drift := newDriftCounter()
	reg := app.Registry(pool, &app.Config{CounterReconciler: &donations.ReconcileConfig{OnDrift: drift.observe, Logger: logger}})
	if faultHooks != nil {
		reg = faultHooks(pool, rc, logger)
	}
	queues := cfg.queues
	if queues == nil {
		queues = []string{jobs.AllQueues}
	}
	client, err := jobs.NewClient(pool, reg, &jobs.ClientConfig{
		Queues:     queues,
		MaxWorkers: cfg.maxWorkers,
		Metrics:    metrics,
		Schema:     cfg.schema,
		Logger:     logger,
		River:      rc,
		ListenPool: listenPool,
		// A dead process's locks and semaphore slots are free again after
		// a job timeout, well before its jobs are rescued.
		Lock: &jobs.LockConfig{Lease: cfg.jobTimeout, Logger: logger},
	})
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}

	// started is true from a successful Start until shutdown begins; /readyz
	// reports it.
	var (
		started atomic.Bool
		srv     *httpServer
		// httpFailed stays nil, never ready, when HTTP is off.
		httpFailed <-chan struct{}
	)
	// The events relay (--nats-url) needs only the pool: it starts before
	// the HTTP server, which serves its metrics and its /readyz line.
	var events *eventsRelay
	if cfg.natsURL != "" {
		events, err = startEventsRelay(ctx, cfg, logger)
		if err != nil {
			return err
		}
		defer events.stop()
	}
	if cfg.httpAddr != "" {
		// The backlog and stuck-job gauges, read from the database at
		// scrape by River's leader only (one read per scrape interval
		// whatever the number of workers); a job counts as stuck past the
		// job timeout.
		var queue *jobs.QueueMetrics
		queue, err = jobs.NewQueueMetrics(pool, &jobs.QueueMetricsConfig{
			StuckAfter: cfg.jobTimeout, LeaderClientID: client.ID(), Logger: logger,
		})
		if err != nil {
			return fmt.Errorf("worker: %w", err)
		}
		srv, err = startHTTP(ctx, cfg.httpAddr, &httpDeps{
			ready:    &readiness{db: pool, started: started.Load, timeout: readyPingTimeout, logger: logger, events: events},
			events:   events,
			metrics:  metrics,
			drift:    drift,
			queue:    queue,
			client:   client,
			user:     cfg.httpUser,
			password: cfg.httpPassword,
			logger:   logger,
		})
		if err != nil {
			return err
		}
		// Deferred after closePool, so it runs first: requests in flight
		// (River UI, /readyz) still have the pool. It runs once the River
		// client stopped, so /metrics serves until the last job finished.
		defer srv.shutdown(ctx)
		httpFailed = srv.failed
	}

	// Shutdown goes through Stop below, never through Start's context.
	if err := startClient(ctx, client, logger, startRetryFor); err != nil {
		if ctx.Err() != nil {
			logger.InfoContext(ctx, "worker: interrupted before start")
			return nil
		}
		return fmt.Errorf("worker: starting the River client: %w", err)
	}
	// The relay needs no leader: it moves rows from the first moment, in
	// every process, and stops before the client so its last batch's jobs
	// are inserted while the client still runs.
	var rl *relay.Relay
	if cfg.relay {
		rcfg := &relay.Config{Schema: cfg.schema, Logger: logger, OnMove: metrics.ObserveRelay, DisableListen: cfg.pollOnly}
		if listenPool != nil {
			rcfg.ListenConnConfig = listenPool.Config().ConnConfig
		}
		rl, err = jobs.NewRelay(pool, client, reg, rcfg)
		if err != nil {
			_ = client.Stop(context.WithoutCancel(ctx))
			return fmt.Errorf("worker: %w", err)
		}
		if err := rl.Start(context.WithoutCancel(ctx)); err != nil {
			_ = client.Stop(context.WithoutCancel(ctx))
			return fmt.Errorf("worker: starting the relay: %w", err)
		}
	}
	started.Store(true)
	logger.InfoContext(ctx, "worker: started",
		slog.String("client_id", client.ID()),
		slog.String("schema", cfg.schema),
		slog.String("queues", queuesLog(cfg.queues)),
		slog.Int("max_workers", cfg.maxWorkers),
		slog.Int("max_conns", int(cfg.pool.MaxConns)),
		slog.Duration("job_timeout", cfg.jobTimeout),
		slog.Duration("rescue_after", cfg.rescueAfter),
		slog.Bool("reindexer", cfg.reindexer),
		slog.Bool("relay", cfg.relay),
		slog.Bool("events_relay", events != nil),
	)

	var httpErr error
	select {
	case <-ctx.Done():
	case <-httpFailed:
		// The probes and metrics are gone: stop gracefully and exit 1
		// rather than work on unobserved.
		httpErr = fmt.Errorf("worker: the HTTP server failed (%w); stopped the worker", srv.serveErr)
		logger.ErrorContext(ctx, "worker: the HTTP server failed; stopping the worker", slog.Any("err", srv.serveErr))
	case <-client.Stopped():
		started.Store(false)
		return errors.New("worker: the River client stopped on its own; see the log lines above")
	}
	started.Store(false)

	if rl != nil {
		relayCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
		if err := rl.Stop(relayCtx); err != nil {
			logger.WarnContext(ctx, "worker: the relay's last batch was cut short; its rows stay for another relay", slog.Any("err", err))
		}
		cancel()
	}
	err = shutdown(ctx, client, cfg.shutdownTimeout, logger)
	if errors.Is(err, errHardStopTimeout) {
		closePool = false
	}
	if err == nil {
		err = httpErr
	}
	return err
}

// riverConfig is the base River configuration of cfg: the fetch settings
// jobs.NewClient ships with, the job timeout, the rescue horizon and, when
// the reindexer is off, a schedule that never comes.
func riverConfig(cfg *config) *river.Config {
	rc := jobs.RiverDefaults()
	rc.JobTimeout = cfg.jobTimeout
	rc.RescueStuckJobsAfter = cfg.rescueAfter
	if !cfg.reindexer {
		rc.ReindexerSchedule = river.NeverSchedule()
	}
	rc.PollOnly = cfg.pollOnly
	return rc
}

// shutdown stops fetching and waits up to timeout for running jobs; then it
// cancels the jobs still running, which River puts back in the queue, and
// waits up to hardStopTimeout for them to return.
func shutdown(ctx context.Context, client *river.Client[pgx.Tx], timeout time.Duration, logger *slog.Logger) error {
	base := context.WithoutCancel(ctx)
	logger.InfoContext(base, "worker: stopping; waiting for running jobs", slog.Duration("shutdown_timeout", timeout))
	start := time.Now()

	softCtx, cancel := context.WithTimeout(base, timeout)
	err := client.Stop(softCtx)
	cancel()
	if err == nil {
		logger.InfoContext(base, "worker: stopped", slog.Duration("took", time.Since(start)))
		return nil
	}

	logger.WarnContext(base, "worker: shutdown timeout elapsed; cancelling running jobs, they will be retried",
		slog.Duration("shutdown_timeout", timeout))
	hardCtx, cancel := context.WithTimeout(base, hardStopTimeout)
	defer cancel()
	if err := client.StopAndCancel(hardCtx); err != nil {
		return errHardStopTimeout
	}
	logger.InfoContext(base, "worker: stopped after cancelling running jobs", slog.Duration("took", time.Since(start)))
	return nil
}

// queuesLog names the queues for the log: "all" when nil.
func queuesLog(queues []string) string {
	if queues == nil {
		return queuesAll
	}
	return strings.Join(queues, ",")
}
