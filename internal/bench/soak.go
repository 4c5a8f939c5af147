package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/internal/dbconn"
	"github.com/aftercommit/aftercommit/internal/demo"
	"github.com/aftercommit/aftercommit/jobs"
)

// Defaults of SoakConfig.
const (
	SoakIntervalDefault     = 10 * time.Second
	SoakScaleDefault        = 0.1
	SoakConcurrencyDefault  = 4
	SoakMaxConnsDefault     = 8
	SoakDrainTimeoutDefault = 2 * time.Minute
	SoakAheadDefault        = 1
	SoakVacuumEveryDefault  = 30 * time.Second
)

// The stable-load verdict's bounds: the last third of a soak against its
// first third.
const (
	// StableJobsRatioMin is the lowest jobs/s ratio that is stable.
	StableJobsRatioMin = 0.7
	// StableP99RatioMax is the highest p99 ratio that is stable.
	StableP99RatioMax = 2.0
	// StableGrowthRatioMax is the highest ratio of river_job's growth per
	// minute that is stable (linear growth, not accelerating).
	StableGrowthRatioMax = 2.0
)

// soakLag delays each sample's window of finished jobs (a quarter of the
// interval at most): River's completer commits finished jobs in batches, a
// little after their finalized_at, and a job committed after its window was
// read would fall out of every window.
const soakLag = time.Second

// soakSettleGrace is how long after a round ended the jobs its jobs
// enqueue are given before the round's invariants are checked early.
const soakSettleGrace = 2 * time.Second

// SoakConfig tunes Soak.
type SoakConfig struct {
	// DatabaseURL names the server; the soak creates its own schema there.
	DatabaseURL string
	// Duration is how long the load runs. Required.
	Duration time.Duration
	// Interval is how often a sample is taken. Defaults to
	// SoakIntervalDefault.
	Interval time.Duration
	// Scale sizes each round as `aftercommit demo --scale` sizes its run
	// (5,000 donations, 50,000 car users at 1). Defaults to
	// SoakScaleDefault.
	Scale float64
	// Concurrency is how many goroutines play each phase of a round.
	// Defaults to SoakConcurrencyDefault.
	Concurrency int
	// MaxConns sizes the pool shared by the load, the worker and the
	// sampler (one more connection creates and drops the schema).
	// Defaults to SoakMaxConnsDefault.
	MaxConns int32
	// MaxWorkers, when above zero, is the in-process worker's MaxWorkers
	// per queue. Defaults to 0: each queue's own, derived from its weight,
	// as cmd/worker runs them.
	MaxWorkers int
	// Ahead is how many rounds the load may play ahead of the workers: a
	// round starts once every job of the rounds before the last Ahead ones
	// has run (a closed loop, so that the backlog stays bounded and the
	// soak measures the load the system holds, not a queue growing without
	// end). Defaults to SoakAheadDefault.
	Ahead int
	// DrainTimeout bounds the wait for the queues to drain once the load
	// stopped. Defaults to SoakDrainTimeoutDefault.
	DrainTimeout time.Duration
	// Seed makes the rounds' random choices repeatable. 0: random.
	Seed uint64
	// VacuumEvery, when the server runs without autovacuum (a CI server
	// tuned for short tests), is how often the soak runs VACUUM (ANALYZE)
	// on its schema's tables in autovacuum's place: without it river_job's
	// dead tuples pile up and the soak measures a server no production
	// runs. Defaults to SoakVacuumEveryDefault; negative: never. With
	// autovacuum on it is not used.
	VacuumEvery time.Duration
	// Out receives one line per sample as the soak goes. Nil: none.
	Out io.Writer
}

func (c SoakConfig) withDefaults() SoakConfig {
	if c.VacuumEvery == 0 {
		c.VacuumEvery = SoakVacuumEveryDefault
	}
	if c.Interval == 0 {
		c.Interval = SoakIntervalDefault
	}
	if c.Scale == 0 {
		c.Scale = SoakScaleDefault
	}
	if c.Concurrency == 0 {
		c.Concurrency = SoakConcurrencyDefault
	}
	if c.MaxConns == 0 {
		c.MaxConns = SoakMaxConnsDefault
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = SoakDrainTimeoutDefault
	}
	if c.Ahead == 0 {
		c.Ahead = SoakAheadDefault
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return c
}

// ValidateSoak reports a SoakConfig out of range (after its defaults),
// wrapping ErrInvalidConfig.
func ValidateSoak(cfg SoakConfig) error {
	cfg = cfg.withDefaults()
	switch {
	case cfg.Duration < time.Second:
		return fmt.Errorf("%w: --soak must be at least 1s, got %s", ErrInvalidConfig, cfg.Duration)
	case cfg.Interval < 100*time.Millisecond || cfg.Interval > cfg.Duration:
		return fmt.Errorf("%w: --interval must be in 100ms…the --soak duration, got %s", ErrInvalidConfig, cfg.Interval)
	case !(cfg.Scale > 0 && cfg.Scale <= demo.ScaleMax):
		return fmt.Errorf("%w: --scale must be in (0, %g], got %g", ErrInvalidConfig, demo.ScaleMax, cfg.Scale)
	case cfg.Concurrency < 1 || cfg.Concurrency > 64:
		return fmt.Errorf("%w: concurrency must be in 1…64, got %d", ErrInvalidConfig, cfg.Concurrency)
	case cfg.MaxConns < 4:
		return fmt.Errorf("%w: max conns must be at least 4, got %d", ErrInvalidConfig, cfg.MaxConns)
	case cfg.Ahead < 1:
		return fmt.Errorf("%w: ahead must be at least 1, got %d", ErrInvalidConfig, cfg.Ahead)
	case cfg.MaxWorkers < 0:
		return fmt.Errorf("%w: max workers must not be negative, got %d", ErrInvalidConfig, cfg.MaxWorkers)
	}
	return nil
}

// SoakSample is one interval of a soak.
type SoakSample struct {
	// Elapsed is the end of the interval, in seconds since the load began.
	Elapsed float64 `json:"elapsed_s"`
	// Seconds is the interval's length.
	Seconds float64 `json:"seconds"`
	// Rounds is how many rounds of the demo workload were started so far.
	Rounds int `json:"rounds"`
	// Completed counts the jobs completed in the interval (finalized_at in
	// the interval, shifted back by up to a second for the completer's
	// batching); JobsPerSec is Completed over that window's length.
	Completed  int64   `json:"completed"`
	JobsPerSec float64 `json:"jobs_per_s"`
	// P50Ms and P99Ms are the latency of those jobs: finalized_at minus
	// scheduled_at (the time the job was due: its insert, or the end of
	// its last snooze or retry backoff), so queue wait plus run time.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	// JobErrors counts the errors recorded in river_job.errors in the
	// interval (each failed attempt is one, retried or not).
	JobErrors int64 `json:"job_errors"`
	// Discarded and Cancelled count the jobs finalized so in the interval.
	Discarded int64 `json:"discarded"`
	Cancelled int64 `json:"cancelled"`
	// AppErrors counts the rounds that failed on the application's side in
	// the interval (an enqueue or a domain call returned an error).
	AppErrors int64 `json:"app_errors"`
	// Backlog counts the jobs to run now: available, running, retryable,
	// pending, and scheduled ones already due, plus the outbox rows not yet
	// relayed. Timers counts the scheduled
	// jobs due later (a checkout's expiry, ten minutes out).
	Backlog int64 `json:"backlog"`
	Timers  int64 `json:"timers"`
	// Table sizes (pg_total_relation_size: heap, indexes and TOAST) and
	// river_job's dead tuples (pg_stat_user_tables, as of the last stats
	// report).
	RiverJobBytes     int64 `json:"river_job_bytes"`
	OutboxEventsBytes int64 `json:"outbox_events_bytes"`
	JobLocksBytes     int64 `json:"job_locks_bytes"`
	RiverJobDead      int64 `json:"river_job_dead_tuples"`
}

// SoakTotals are the counts of a whole soak, read after the queues
// drained.
type SoakTotals struct {
	// Rounds started and checked (invariants): all of them, unless one
	// failed on the application's side. The round in progress at the
	// deadline is played to its end, unsampled, before the drain.
	Rounds        int `json:"rounds"`
	RoundsChecked int `json:"rounds_checked"`
	// Jobs is every job row; the states follow.
	Jobs      int64 `json:"jobs"`
	Completed int64 `json:"completed"`
	Cancelled int64 `json:"cancelled"`
	Discarded int64 `json:"discarded"`
	// Timers are scheduled jobs due after the end (expected).
	Timers int64 `json:"timers"`
	// Lost are jobs that should have run and did not reach a final state
	// (available, running, retryable, pending, or scheduled and due).
	Lost int64 `json:"lost"`
	// JobErrors are every error in river_job.errors; TransientErrors those
	// of them that are a serialization failure, a deadlock or a lock
	// timeout on a job that then completed (retried by design);
	// UnexpectedErrors the rest.
	JobErrors        int64 `json:"job_errors"`
	TransientErrors  int64 `json:"transient_errors"`
	UnexpectedErrors int64 `json:"unexpected_errors"`
	// AppErrors counts rounds that failed on the application's side.
	AppErrors int64 `json:"app_errors"`
	// Drained says whether the queues drained within the drain timeout,
	// and DrainSeconds how long that took.
	Drained      bool    `json:"drained"`
	DrainSeconds float64 `json:"drain_s"`
	// Errors lists a few distinct unexpected error messages (job and
	// application).
	Errors []string `json:"errors,omitempty"`
}

// SoakVerdict compares the last third of the samples with the first: ratios,
// not absolute figures, since the machine is shared.
type SoakVerdict struct {
	// JobsRatio is the mean jobs/s of the last third over the first's.
	JobsRatio float64 `json:"jobs_ratio"`
	// P99Ratio is the median p99 of the last third over the first's.
	P99Ratio float64 `json:"p99_ratio"`
	// BacklogFirst and BacklogLast are the mean backlog of each third.
	BacklogFirst float64 `json:"backlog_first"`
	BacklogLast  float64 `json:"backlog_last"`
	// GrowthMBPerMin is river_job's growth per minute over the whole load,
	// GrowthFirst and GrowthLast over each third, GrowthRatio last/first.
	GrowthMBPerMin float64 `json:"growth_mb_per_min"`
	GrowthFirst    float64 `json:"growth_first_mb_per_min"`
	GrowthLast     float64 `json:"growth_last_mb_per_min"`
	GrowthRatio    float64 `json:"growth_ratio"`
	// WarmupSamples is how many samples at the start were left out: those
	// that began before the load first waited for the workers.
	WarmupSamples int `json:"warmup_samples"`
	// Stable says whether every ratio is within its bound
	// (StableJobsRatioMin, StableP99RatioMax, StableGrowthRatioMax).
	Stable bool `json:"stable"`
	// Text says the verdict in words.
	Text string `json:"text"`
}

// SoakInvariant is one of the demo's invariants over every round checked.
type SoakInvariant struct {
	Name string `json:"name"`
	// Want and Got count the rounds where it should hold and where it
	// held; Got names the first failure, if any.
	Want string `json:"want"`
	Got  string `json:"got"`
	OK   bool   `json:"ok"`
}

// SoakReport is a whole soak.
type SoakReport struct {
	Started  time.Time `json:"started"`
	Took     string    `json:"took"`
	Duration string    `json:"duration"`
	Interval string    `json:"interval"`
	Scale    float64   `json:"scale"`
	Server   string    `json:"server"`
	// Autovacuum is the server's autovacuum setting, "on" or "off".
	Autovacuum string `json:"autovacuum"`
	// Vacuums counts the VACUUM (ANALYZE) rounds the soak ran in
	// autovacuum's place (SoakConfig.VacuumEvery).
	Vacuums    int             `json:"vacuums"`
	Samples    []SoakSample    `json:"samples"`
	Totals     SoakTotals      `json:"totals"`
	Verdict    SoakVerdict     `json:"verdict"`
	Invariants []SoakInvariant `json:"invariants"`
	Failures   []string        `json:"failures,omitempty"`
	OK         bool            `json:"ok"`
}

// Soak runs the demo workload (internal/demo's rounds: donations, opens
// and clicks, a flash sale with failing payments, bulk car users) without
// pause for cfg.Duration, with an in-process worker of every queue (the
// application's registry), in a scratch schema of its own, and samples the
// jobs every cfg.Interval. Once the load stopped it waits for the queues to
// drain, checks the demo's invariants over every round, and reports.
//
// Report.OK is false, and Report.Failures says why, when an invariant
// failed, a job was lost, discarded or cancelled, a job error other than a
// transient one occurred, a round failed on the application's side, or the
// queues did not drain. The verdict on stability is reported, never a
// failure. The error is for a soak that could not run.
func Soak(ctx context.Context, cfg SoakConfig) (*SoakReport, error) {
	cfg = cfg.withDefaults()
	if err := ValidateSoak(cfg); err != nil {
		return nil, err
	}
	env, err := newEnv(ctx, Config{DatabaseURL: cfg.DatabaseURL, Scale: cfg.Scale, Duration: cfg.Duration}, newRunID(), "soak")
	if err != nil {
		return nil, fmt.Errorf("bench: soak: %w", err)
	}
	defer env.close(ctx)
	// newEnv's pool is sized for the scenarios: swap it for a small one.
	env.Pool.Close()
	env.Pool = nil
	pcfg, err := dbconn.ParseConfig(cfg.DatabaseURL, &dbconn.Opts{Component: "bench", Schema: env.Schema, MaxConns: cfg.MaxConns})
	if err != nil {
		return nil, err
	}
	if env.Pool, err = dbconn.Connect(ctx, pcfg, "bench"); err != nil {
		return nil, err
	}

	s := &soakRun{cfg: cfg, env: env}
	return s.run(ctx)
}

// soakRun is one soak's state.
type soakRun struct {
	cfg SoakConfig
	env *Env

	mu        sync.Mutex
	appErrors int64
	// closed is when the load first waited for the workers (since its
	// start): the samples before it are its warm-up.
	closed  time.Duration
	errMsgs []string
}

func (s *soakRun) run(ctx context.Context) (*SoakReport, error) {
	cfg, env := s.cfg, s.env
	soak, err := demo.NewSoak(env.Pool, demo.Config{
		Scale: cfg.Scale, Concurrency: cfg.Concurrency, Seed: cfg.Seed, Schema: env.Schema, Logger: env.Logger,
		DrainTimeout: cfg.DrainTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: soak: %w", err)
	}
	reg := app.Registry(env.Pool, nil)
	client, err := jobs.NewClient(env.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues},
		Schema: env.Schema, Logger: env.Logger, River: shippedRiver(env), MaxWorkers: cfg.MaxWorkers,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: soak: %w", err)
	}
	if err := client.Start(ctx); err != nil {
		return nil, fmt.Errorf("bench: soak: starting the worker: %w", err)
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := client.Stop(stopCtx); err != nil {
			_ = client.StopAndCancel(stopCtx)
		}
	}()
	stopRelay, err := startAppRelay(ctx, env, env.Pool, client, reg)
	if err != nil {
		return nil, fmt.Errorf("bench: soak: starting the relay: %w", err)
	}
	defer stopRelay()

	report := &SoakReport{Started: time.Now(), Duration: cfg.Duration.String(), Interval: cfg.Interval.String(),
		Scale: cfg.Scale, Server: env.server}
	if err := env.Pool.QueryRow(ctx, `SELECT current_setting('autovacuum')`).Scan(&report.Autovacuum); err != nil {
		return nil, fmt.Errorf("bench: soak: reading autovacuum: %w", err)
	}
	first, err := s.sample(ctx, time.Time{}, time.Time{})
	if err != nil {
		return nil, err
	}

	start := time.Now()
	loadCtx, stopLoad := context.WithDeadline(ctx, start.Add(cfg.Duration))
	defer stopLoad()
	var wg sync.WaitGroup
	// The load: rounds back to back until the deadline, each waiting until
	// the jobs of the rounds more than cfg.Ahead behind it are worked; the
	// last one ends after the deadline.
	wg.Go(func() {
		var ended []time.Time
		for loadCtx.Err() == nil {
			if n := len(ended); n > cfg.Ahead {
				s.mu.Lock()
				if s.closed == 0 {
					s.closed = time.Since(start)
				}
				s.mu.Unlock()
				if err := s.waitBehind(loadCtx, ended[n-1-cfg.Ahead]); err != nil {
					if loadCtx.Err() == nil {
						s.mu.Lock()
						s.appErrors++
						s.addErr("load: waiting for the workers: " + err.Error())
						s.mu.Unlock()
					}
					return
				}
			}
			if loadCtx.Err() != nil {
				return
			}
			// The round started is played to its end, past the deadline if
			// need be, so that every round is checked.
			_, err := soak.Round(ctx)
			ended = append(ended, time.Now())
			if err != nil && ctx.Err() == nil {
				s.mu.Lock()
				s.appErrors++
				s.addErr("app: " + err.Error())
				s.mu.Unlock()
			}
		}
	})
	// Autovacuum's stand-in on a server that runs without it.
	var vacuums atomic.Int64
	if report.Autovacuum == "off" && cfg.VacuumEvery > 0 {
		wg.Go(func() {
			t := time.NewTicker(cfg.VacuumEvery)
			defer t.Stop()
			for {
				select {
				case <-loadCtx.Done():
					return
				case <-t.C:
				}
				if err := s.vacuum(loadCtx); err != nil {
					if loadCtx.Err() == nil {
						s.mu.Lock()
						s.addErr("vacuum: " + err.Error())
						s.mu.Unlock()
					}
					return
				}
				vacuums.Add(1)
			}
		})
	}
	// Early checks of the settled rounds, so that a long soak keeps only
	// the rounds in flight.
	checkErr := make(chan error, 1)
	wg.Go(func() {
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
		for {
			select {
			case <-loadCtx.Done():
				checkErr <- nil
				return
			case <-t.C:
				if _, err := soak.CheckSettled(loadCtx, soakSettleGrace); err != nil && loadCtx.Err() == nil {
					checkErr <- err
					return
				}
			}
		}
	})

	// The samples, on the interval's ticks, then a last one at the end if
	// at least half an interval is left.
	end := start.Add(cfg.Duration)
	lag := min(soakLag, cfg.Interval/4)
	prev := start
	var appSeen int64
	for {
		next := prev.Add(cfg.Interval)
		if next.After(end) {
			if end.Sub(prev) < cfg.Interval/2 {
				break
			}
			next = end
		}
		select {
		case <-ctx.Done():
			stopLoad()
			wg.Wait()
			return nil, context.Cause(ctx)
		case <-time.After(time.Until(next)):
		}
		// The window of finished jobs lags the interval by lag; the first
		// one starts with the load.
		from, to := prev.Add(-lag), next.Add(-lag)
		if prev.Equal(start) {
			from = start
		}
		sm, err := s.sample(ctx, from, to)
		if err != nil {
			stopLoad()
			wg.Wait()
			return nil, err
		}
		sm.Elapsed = next.Sub(start).Seconds()
		sm.Seconds = next.Sub(prev).Seconds()
		sm.JobsPerSec = float64(sm.Completed) / to.Sub(from).Seconds()
		sm.Rounds, _ = soak.Rounds()
		s.mu.Lock()
		sm.AppErrors, appSeen = s.appErrors-appSeen, s.appErrors
		s.mu.Unlock()
		report.Samples = append(report.Samples, *sm)
		if len(report.Samples) == 1 {
			_, _ = fmt.Fprintln(cfg.Out, strings.ReplaceAll(soakHeader, "\t", "  "))
		}
		_, _ = fmt.Fprintln(cfg.Out, strings.ReplaceAll(sm.row(), "\t", "  "))
		prev = next
		if !next.Before(end) {
			break
		}
	}
	stopLoad()
	wg.Wait()
	report.Vacuums = int(vacuums.Load())
	if err := <-checkErr; err != nil {
		return nil, fmt.Errorf("bench: soak: %w", err)
	}

	// Drain and check.
	drainStart := time.Now()
	invariants, err := soak.Check(ctx)
	switch {
	case errors.Is(err, demo.ErrNotDrained):
		report.Failures = append(report.Failures, err.Error())
	case err != nil:
		return nil, fmt.Errorf("bench: soak: %w", err)
	default:
		report.Totals.Drained = true
		report.Totals.DrainSeconds = time.Since(drainStart).Seconds()
	}
	for _, inv := range invariants {
		report.Invariants = append(report.Invariants, SoakInvariant(inv))
	}
	if err := s.totals(ctx, report); err != nil {
		return nil, err
	}
	report.Totals.Rounds, report.Totals.RoundsChecked = soak.Rounds()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	report.Verdict = verdict(first, report.Samples, closed)
	report.Took = time.Since(report.Started).Round(time.Second).String()
	report.judge()
	return report, nil
}

// waitBehind waits until no job created up to t is still to run.
func (s *soakRun) waitBehind(ctx context.Context, t time.Time) error {
	for {
		var left int64
		if err := s.env.Pool.QueryRow(ctx, soakBehindSQL, t).Scan(&left); err != nil || left == 0 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// addErr keeps a few distinct error messages; s.mu is held.
func (s *soakRun) addErr(msg string) {
	if len(s.errMsgs) < 10 && !slices.Contains(s.errMsgs, msg) {
		s.errMsgs = append(s.errMsgs, msg)
	}
}

// The sampling queries. River's fetch index (state, queue, priority,
// scheduled_at, id) serves the backlog, its (state, finalized_at) index
// the finished jobs; the errors scan the rows that have any.
const (
	soakFinishedSQL = `
WITH fin AS (
    SELECT state, extract(epoch FROM finalized_at - scheduled_at) * 1000 AS ms
      FROM river_job
     WHERE state IN ('completed', 'cancelled', 'discarded') AND finalized_at > $1 AND finalized_at <= $2
)
SELECT count(*) FILTER (WHERE state = 'completed'),
       count(*) FILTER (WHERE state = 'cancelled'),
       count(*) FILTER (WHERE state = 'discarded'),
       coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE state = 'completed'), 0),
       coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FILTER (WHERE state = 'completed'), 0)
  FROM fin`
	soakErrorsSQL = `
SELECT count(*) FROM river_job j CROSS JOIN LATERAL unnest(j.errors) AS e
 WHERE j.errors IS NOT NULL AND (e->>'at')::timestamptz > $1 AND (e->>'at')::timestamptz <= $2`
	soakBacklogSQL = `
SELECT count(*) FILTER (WHERE state <> 'scheduled' OR scheduled_at <= now())
         + (SELECT count(*) FROM outbox_jobs),
       count(*) FILTER (WHERE state = 'scheduled' AND scheduled_at > now())
  FROM river_job WHERE state IN ('available', 'running', 'retryable', 'pending', 'scheduled')`
	soakSizesSQL = `
SELECT pg_total_relation_size('river_job'), pg_total_relation_size('outbox_events'), pg_total_relation_size('job_locks'),
       coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = current_schema() AND relname = 'river_job'), 0)`
	soakBehindSQL = `
SELECT (SELECT count(*) FROM river_job
         WHERE created_at <= $1
           AND (state IN ('available', 'running', 'retryable', 'pending') OR (state = 'scheduled' AND scheduled_at <= now())))
     + (SELECT count(*) FROM outbox_jobs WHERE created_at <= $1)`
	soakStatesSQL        = `SELECT state::text, count(*) FROM river_job GROUP BY 1`
	soakErrorMessagesSQL = `
SELECT j.state = 'completed', e->>'error', count(*)
  FROM river_job j CROSS JOIN LATERAL unnest(j.errors) AS e
 WHERE j.errors IS NOT NULL
 GROUP BY 1, 2`
)

// transientError matches the errors a retry is designed to absorb: a
// serialization failure, a deadlock, a lock timeout.
var transientError = regexp.MustCompile(`SQLSTATE (40001|40P01|55P03)|deadlock detected|could not serialize`)

// sample reads one interval's figures; from and to bound the window of
// finished jobs and errors (zero: sizes and backlog only).
func (s *soakRun) sample(ctx context.Context, from, to time.Time) (*SoakSample, error) {
	pool := s.env.Pool
	sm := &SoakSample{}
	if !to.IsZero() {
		if err := pool.QueryRow(ctx, soakFinishedSQL, from, to).Scan(&sm.Completed, &sm.Cancelled, &sm.Discarded, &sm.P50Ms, &sm.P99Ms); err != nil {
			return nil, fmt.Errorf("bench: soak: sampling the finished jobs: %w", err)
		}
		if err := pool.QueryRow(ctx, soakErrorsSQL, from, to).Scan(&sm.JobErrors); err != nil {
			return nil, fmt.Errorf("bench: soak: sampling the job errors: %w", err)
		}
	}
	if err := pool.QueryRow(ctx, soakBacklogSQL).Scan(&sm.Backlog, &sm.Timers); err != nil {
		return nil, fmt.Errorf("bench: soak: sampling the backlog: %w", err)
	}
	if err := pool.QueryRow(ctx, soakSizesSQL).Scan(&sm.RiverJobBytes, &sm.OutboxEventsBytes, &sm.JobLocksBytes, &sm.RiverJobDead); err != nil {
		return nil, fmt.Errorf("bench: soak: sampling the table sizes: %w", err)
	}
	return sm, nil
}

// countJobs counts the jobs by state, and those still to run, in one
// snapshot.
func (s *soakRun) countJobs(ctx context.Context, t *SoakTotals) error {
	return pgx.BeginTxFunc(ctx, s.env.Pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		t.Jobs, t.Completed, t.Cancelled, t.Discarded = 0, 0, 0, 0
		rows, err := tx.Query(ctx, soakStatesSQL)
		if err != nil {
			return fmt.Errorf("bench: soak: counting the jobs: %w", err)
		}
		var (
			state string
			n     int64
		)
		if _, err := pgx.ForEachRow(rows, []any{&state, &n}, func() error {
			t.Jobs += n
			switch state {
			case "completed":
				t.Completed += n
			case "cancelled":
				t.Cancelled += n
			case "discarded":
				t.Discarded += n
			}
			return nil
		}); err != nil {
			return fmt.Errorf("bench: soak: counting the jobs: %w", err)
		}
		if err := tx.QueryRow(ctx, soakBacklogSQL).Scan(&t.Lost, &t.Timers); err != nil {
			return fmt.Errorf("bench: soak: counting the jobs left: %w", err)
		}
		return nil
	})
}

// totals reads the job states and errors once the queues drained.
func (s *soakRun) totals(ctx context.Context, report *SoakReport) error {
	t := &report.Totals
	// The worker goes on after the drain: a job snoozed for its worker
	// lock, a timer coming due, a periodic job the leader enqueues can be
	// due by now and still to run, for a moment. Lost is what is still to
	// run once that moment had the drain timeout to pass.
	deadline := time.Now().Add(s.cfg.DrainTimeout)
	for {
		if err := s.countJobs(ctx, t); err != nil {
			return err
		}
		if t.Lost == 0 || !t.Drained || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bench: soak: counting the jobs left: %w", context.Cause(ctx))
		case <-time.After(100 * time.Millisecond):
		}
	}

	rows, err := s.env.Pool.Query(ctx, soakErrorMessagesSQL)
	if err != nil {
		return fmt.Errorf("bench: soak: reading the job errors: %w", err)
	}
	var (
		completed bool
		msg       string
		n         int64
	)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := pgx.ForEachRow(rows, []any{&completed, &msg, &n}, func() error {
		t.JobErrors += n
		if completed && transientError.MatchString(msg) {
			t.TransientErrors += n
			return nil
		}
		t.UnexpectedErrors += n
		s.addErr("job: " + msg)
		return nil
	}); err != nil {
		return fmt.Errorf("bench: soak: reading the job errors: %w", err)
	}
	t.AppErrors = s.appErrors
	t.Errors = s.errMsgs
	return nil
}

// verdict compares the last third of the samples with the first, leaving
// out the warm-up: the samples that began before closed, when the load
// first waited for the workers (until then the queues fill from empty, so
// the first round's latency is not the steady state's). With fewer than 3
// samples after the warm-up, it keeps them all. before is the state before
// the load.
func verdict(before *SoakSample, samples []SoakSample, closed time.Duration) SoakVerdict {
	var v SoakVerdict
	// origin is where river_job's growth is measured from: the state before
	// the load, or the last sample of the warm-up.
	originBytes, originS := before.RiverJobBytes, 0.0
	warm := 0
	for warm < len(samples) && (samples[warm].Elapsed-samples[warm].Seconds)*float64(time.Second) < float64(closed) {
		warm++
	}
	if warm > 0 && len(samples)-warm >= 3 {
		v.WarmupSamples = warm
		originBytes, originS = samples[warm-1].RiverJobBytes, samples[warm-1].Elapsed
		samples = samples[warm:]
	}
	n := len(samples)
	if n < 3 {
		v.Text = fmt.Sprintf("too few samples (%d) for a verdict: need 3", n)
		return v
	}
	k := n / 3
	head, tail := samples[:k], samples[n-k:]
	mean := func(ss []SoakSample, f func(SoakSample) float64) float64 {
		var sum float64
		for _, s := range ss {
			sum += f(s)
		}
		return sum / float64(len(ss))
	}
	med := func(ss []SoakSample, f func(SoakSample) float64) float64 {
		vs := make([]float64, len(ss))
		for i, s := range ss {
			vs[i] = f(s)
		}
		return median(vs)
	}
	jobsPerSec := func(s SoakSample) float64 { return s.JobsPerSec }
	p99 := func(s SoakSample) float64 { return s.P99Ms }
	backlog := func(s SoakSample) float64 { return float64(s.Backlog) }
	v.JobsRatio = ratio(mean(tail, jobsPerSec), mean(head, jobsPerSec))
	v.P99Ratio = ratio(med(tail, p99), med(head, p99))
	v.BacklogFirst, v.BacklogLast = mean(head, backlog), mean(tail, backlog)

	const mb = 1 << 20
	growth := func(fromBytes int64, fromS float64, to SoakSample) float64 {
		minutes := (to.Elapsed - fromS) / 60
		if minutes <= 0 {
			return 0
		}
		return float64(to.RiverJobBytes-fromBytes) / mb / minutes
	}
	last, pre := samples[n-1], samples[n-k-1]
	v.GrowthMBPerMin = growth(originBytes, originS, last)
	v.GrowthFirst = growth(originBytes, originS, head[k-1])
	v.GrowthLast = growth(pre.RiverJobBytes, pre.Elapsed, last)
	v.GrowthRatio = ratio(v.GrowthLast, v.GrowthFirst)

	var off []string
	if v.JobsRatio < StableJobsRatioMin {
		off = append(off, fmt.Sprintf("jobs/s fell to ×%.2f (bound ×%g)", v.JobsRatio, StableJobsRatioMin))
	}
	if v.P99Ratio > StableP99RatioMax {
		off = append(off, fmt.Sprintf("p99 rose to ×%.2f (bound ×%g)", v.P99Ratio, StableP99RatioMax))
	}
	if v.GrowthRatio > StableGrowthRatioMax {
		off = append(off, fmt.Sprintf("river_job grows ×%.2f faster (bound ×%g)", v.GrowthRatio, StableGrowthRatioMax))
	}
	v.Stable = len(off) == 0
	if v.Stable {
		v.Text = fmt.Sprintf("stable: last third against first, jobs/s ×%.2f (≥ ×%g), p99 ×%.2f (≤ ×%g), river_job growth ×%.2f (≤ ×%g)",
			v.JobsRatio, StableJobsRatioMin, v.P99Ratio, StableP99RatioMax, v.GrowthRatio, StableGrowthRatioMax)
	} else {
		v.Text = "NOT stable: " + strings.Join(off, "; ")
	}
	return v
}

// judge fills Failures and OK.
func (r *SoakReport) judge() {
	t := r.Totals
	add := func(cond bool, format string, args ...any) {
		if cond {
			r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
		}
	}
	add(t.Lost > 0, "%d jobs lost (still to run after the drain)", t.Lost)
	add(t.Discarded > 0, "%d jobs discarded", t.Discarded)
	add(t.Cancelled > 0, "%d jobs cancelled (every cancel in the domains is a permanent failure)", t.Cancelled)
	add(t.UnexpectedErrors > 0, "%d unexpected job errors", t.UnexpectedErrors)
	add(t.AppErrors > 0, "%d rounds failed on the application's side", t.AppErrors)
	add(t.RoundsChecked == 0, "no round was checked")
	add(t.RoundsChecked+int(t.AppErrors) < t.Rounds, "%d rounds not checked", t.Rounds-t.RoundsChecked)
	for _, inv := range r.Invariants {
		add(!inv.OK, "invariant %q: %s", inv.Name, inv.Got)
	}
	r.OK = len(r.Failures) == 0
}

const soakHeader = "  ELAPSED\tROUNDS\tJOBS/S\tP50 MS\tP99 MS\tJOB ERRORS\tDISCARDED\tAPP ERRORS\tBACKLOG\tTIMERS\tRIVER_JOB\tDEAD\tOUTBOX_EVENTS\tJOB_LOCKS"

func (s SoakSample) row() string {
	return fmt.Sprintf("  %s\t%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t%s\t%s",
		(time.Duration(s.Elapsed * float64(time.Second))).Round(time.Second), s.Rounds, formatValue(s.JobsPerSec),
		formatValue(s.P50Ms), formatValue(s.P99Ms), s.JobErrors, s.Discarded+s.Cancelled, s.AppErrors, s.Backlog, s.Timers,
		formatBytes(s.RiverJobBytes), s.RiverJobDead, formatBytes(s.OutboxEventsBytes), formatBytes(s.JobLocksBytes))
}

// formatBytes prints n in MB with one decimal (kB below 1 MB).
func formatBytes(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%d kB", n>>10)
	}
	return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
}

// vacuum runs VACUUM (ANALYZE) on every table of the soak's schema.
func (s *soakRun) vacuum(ctx context.Context) error {
	rows, err := s.env.Pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename`, s.env.Schema)
	if err != nil {
		return err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, table := range tables {
		if _, err := s.env.Pool.Exec(ctx, "VACUUM (ANALYZE) "+pgx.Identifier{s.env.Schema, table}.Sanitize()); err != nil {
			return fmt.Errorf("%s: %w", table, err)
		}
	}
	return nil
}

// Print writes the report: the samples, the totals, the verdict, the
// invariants and the result.
func (r *SoakReport) Print(w io.Writer) {
	_, _ = fmt.Fprintf(w, "aftercommit bench --soak: %s of the demo workload at scale %g, a sample every %s, %s; took %s\n",
		r.Duration, r.Scale, r.Interval, r.Server, r.Took)
	switch {
	case r.Autovacuum != "off":
		_, _ = fmt.Fprintf(w, "autovacuum: %s\n\n", r.Autovacuum)
	case r.Vacuums > 0:
		_, _ = fmt.Fprintf(w, "autovacuum: off on this server; the soak ran VACUUM (ANALYZE) on its tables %d times in its place\n\n", r.Vacuums)
	default:
		_, _ = fmt.Fprintf(w, "autovacuum: off on this server and not stood in for: dead tuples pile up, figures are not a production server's\n\n")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	_, _ = fmt.Fprintln(tw, soakHeader+"\t")
	for _, s := range r.Samples {
		_, _ = fmt.Fprintln(tw, s.row()+"\t")
	}
	_ = tw.Flush()

	t := r.Totals
	drained := fmt.Sprintf("drained in %.1fs", t.DrainSeconds)
	if !t.Drained {
		drained = "did NOT drain"
	}
	_, _ = fmt.Fprintf(w, "\nRounds: %d played, %d checked (the last one ended after the deadline); queues %s after it\n",
		t.Rounds, t.RoundsChecked, drained)
	_, _ = fmt.Fprintf(w, "Jobs: %d inserted: %d completed, %d timers due later, %d lost, %d discarded, %d cancelled\n",
		t.Jobs, t.Completed, t.Timers, t.Lost, t.Discarded, t.Cancelled)
	_, _ = fmt.Fprintf(w, "Errors: %d job errors (%d transient, retried and completed; %d unexpected), %d application errors\n",
		t.JobErrors, t.TransientErrors, t.UnexpectedErrors, t.AppErrors)
	for _, e := range t.Errors {
		_, _ = fmt.Fprintf(w, "  %s\n", e)
	}
	v := r.Verdict
	_, _ = fmt.Fprintf(w, "Load held? %s\n", v.Text)
	if v.Text != "" && !strings.HasPrefix(v.Text, "too few") {
		_, _ = fmt.Fprintf(w, "  %d warm-up samples left out; backlog mean %.0f → %.0f; river_job +%.2f MB/min (first third %.2f, last third %.2f)\n",
			v.WarmupSamples, v.BacklogFirst, v.BacklogLast, v.GrowthMBPerMin, v.GrowthFirst, v.GrowthLast)
	}

	_, _ = fmt.Fprintf(w, "\nInvariants over the %d rounds checked\n", t.RoundsChecked)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, inv := range r.Invariants {
		mark := "ok  "
		if !inv.OK {
			mark = "FAIL"
		}
		_, _ = fmt.Fprintf(tw, "  %s\t%s\t%s\n", mark, inv.Name, inv.Got)
	}
	_ = tw.Flush()
	if r.OK {
		_, _ = fmt.Fprintf(w, "\nOK: no job lost, no unexpected error, all %d invariants hold\n", len(r.Invariants))
	} else {
		_, _ = fmt.Fprintf(w, "\nFAILED: %s\n", strings.Join(r.Failures, "; "))
	}
}
