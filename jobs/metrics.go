package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/outbox"
)

// MetricsNamespaceDefault is the default MetricsConfig.Namespace, the prefix
// of every metric name.
const MetricsNamespaceDefault = "aftercommit"

// MetricsDurationBucketsDefault returns the default upper bounds, in seconds,
// of the run-time and queue-latency histograms: 1 ms to 1 h, roughly 1-2.5-5
// per decade.
func MetricsDurationBucketsDefault() []float64 {
	return []float64{
		0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
		1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
	}
}

// The values of the outcome label of <namespace>_job_executions_total: what
// one pass of a job through the worker stack came to. Each mirrors the state
// River gives the job afterwards.
const (
	// OutcomeCompleted: the worker's Work ran and returned nil.
	OutcomeCompleted = "completed"
	// OutcomeSkipped: the job completed without its worker's Work being
	// called, because a middleware (the needed-check) found it not needed.
	OutcomeSkipped = "skipped"
	// OutcomeSnoozed: river.JobSnooze was returned (by the worker or by a
	// middleware such as the worker lock); the job runs again later without
	// using up an attempt.
	OutcomeSnoozed = "snoozed"
	// OutcomeFailed: an error or a panic with attempts left; River retries.
	OutcomeFailed = "failed"
	// OutcomeCancelled: river.JobCancel was returned, or the job was
	// cancelled remotely (Client.JobCancel) while running.
	OutcomeCancelled = "cancelled"
	// OutcomeDiscarded: an error or a panic on the last attempt
	// (job.Attempt >= job.MaxAttempts); River discards the job.
	OutcomeDiscarded = "discarded"
	// OutcomeInterrupted: the client was stopped with StopAndCancel while
	// the job ran; River makes it available again without using up an
	// attempt.
	OutcomeInterrupted = "interrupted"
)

// outcome indexes jobSeries.outcomes.
type outcome int

const (
	outcomeCompleted outcome = iota
	outcomeSkipped
	outcomeSnoozed
	outcomeFailed
	outcomeCancelled
	outcomeDiscarded
	outcomeInterrupted
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	OutcomeCompleted, OutcomeSkipped, OutcomeSnoozed, OutcomeFailed,
	OutcomeCancelled, OutcomeDiscarded, OutcomeInterrupted,
}

// MetricsConfig tunes Metrics. A nil *MetricsConfig takes every default.
type MetricsConfig struct {
	// Namespace prefixes every metric name: <Namespace>_job_…,
	// <Namespace>_outbox_….
	//
	// Defaults to MetricsNamespaceDefault ("aftercommit").
	Namespace string

	// ConstLabels are added to every metric, e.g. {"service": "worker"}.
	//
	// Defaults to none.
	ConstLabels prometheus.Labels

	// DurationBuckets are the upper bounds, in seconds and strictly
	// increasing, of the run-time and queue-latency histograms (a last
	// +Inf bucket is implied).
	//
	// Defaults to MetricsDurationBucketsDefault(): 1 ms to 1 h.
	DurationBuckets []float64
}

// WithDefaults returns a copy of c (which may be nil) with defaults filled in.
func (c *MetricsConfig) WithDefaults() MetricsConfig {
	var out MetricsConfig
	if c != nil {
		out = *c
	}
	if out.Namespace == "" {
		out.Namespace = MetricsNamespaceDefault
	}
	if len(out.DurationBuckets) == 0 {
		out.DurationBuckets = MetricsDurationBucketsDefault()
	}
	return out
}

// Metrics holds the Prometheus metrics of the job runtime and the outbox.
//
// Metrics is itself a prometheus.Collector: register it on your own
// registry (prometheus.NewRegistry().MustRegister(m)); it never touches the
// global one. It feeds from two places:
//
//   - Jobs, through Plugin, which goes into river.Config.Plugins (with
//     NewClient: ClientConfig.River.Plugins). Every pass of a job through
//     the worker stack counts once in <ns>_job_executions_total{kind,
//     queue, outcome} (see the Outcome constants) and once in the
//     <ns>_job_run_duration_seconds{kind, queue} histogram (the whole
//     middleware stack and Work, as River's JobStatistics.RunDuration);
//     <ns>_job_queue_latency_seconds{kind, queue} observes attempted_at −
//     scheduled_at, the time the job waited after it was due (for a retried
//     or snoozed job: after its retry or snooze time).
//   - Outbox flushes, through OnFlush, which goes into outbox.Config.OnFlush:
//     <ns>_outbox_flushes_total, <ns>_outbox_jobs_enqueued_total,
//     <ns>_outbox_duplicates_removed_total, <ns>_outbox_jobs_inserted_total,
//     <ns>_outbox_jobs_unique_skipped_total (matched an existing job) and
//     <ns>_outbox_round_trips_total.
//
// # Why a plugin and not river.Config.Middleware
//
// A skipped job (not needed) is one that completed without its worker's
// Work being called. NewClient puts the needed-check first in
// river.Config.Middleware, so a metrics middleware listed there would run
// inside it and never see a skip. River enters the middleware of
// river.Config.Plugins before that of river.Config.Middleware, so Plugin
// wraps the needed-check (and any other middleware): it notes, through a
// rivertype.HookWorkBegin that River calls right before Work, whether the
// worker was reached, and counts a nil result without it as skipped. This
// needs nothing from the needed-check and counts any middleware that
// completes a job without working it.
//
// Jobs River fails before any middleware runs (an unknown kind, a row that
// does not decode) are not counted, and an ErrorHandler that cancels a job
// is seen as failed or discarded: the middleware sees the error, not the
// handler's verdict.
//
// Label lookups are cached per (kind, queue) pair, so recording a job costs
// one atomic load, one map lookup, a context allocation and the counter and
// histogram updates: about 220 ns and one allocation per job
// (BenchmarkMetricsWork). Each pair's series, all outcomes included, appear at
// zero when the pair is first seen.
type Metrics struct {
	executions *prometheus.CounterVec
	runTime    *prometheus.HistogramVec
	latency    *prometheus.HistogramVec
	// argsUnknownFields counts jobs run with unknown args fields (argsmiddleware.go).
	argsUnknownFields *prometheus.CounterVec

	flushes       prometheus.Counter
	enqueued      prometheus.Counter
	duplicates    prometheus.Counter
	inserted      prometheus.Counter
	uniqueSkipped prometheus.Counter
	roundTrips    prometheus.Counter

	// series maps (kind, queue) to its resolved children. It is replaced,
	// never modified, under seriesMu, so lookups take no lock.
	series   atomic.Pointer[map[seriesKey]*jobSeries]
	seriesMu sync.Mutex

	plugin *metricsPlugin
}

var _ prometheus.Collector = (*Metrics)(nil)

type seriesKey struct{ kind, queue string }

// jobSeries are the children of one (kind, queue) pair.
type jobSeries struct {
	outcomes [numOutcomes]prometheus.Counter
	runTime  prometheus.Observer
	latency  prometheus.Observer
}

// NewMetrics returns unregistered job and outbox metrics; cfg may be nil.
// Like the prometheus constructors it wraps, it panics on a programming
// error, DurationBuckets that are not strictly increasing (prometheus would
// only panic at the first job, on a worker goroutine); an invalid Namespace
// or label name is reported by the registry's Register.
func NewMetrics(cfg *MetricsConfig) *Metrics {
	c := cfg.WithDefaults()
	for i := 1; i < len(c.DurationBuckets); i++ {
		if c.DurationBuckets[i] <= c.DurationBuckets[i-1] {
			panic(fmt.Sprintf("jobs: MetricsConfig.DurationBuckets must be strictly increasing, got %v", c.DurationBuckets))
		}
	}
	labels := []string{"kind", "queue"}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: c.Namespace, Subsystem: "outbox", Name: name, Help: help, ConstLabels: c.ConstLabels,
		})
	}
	m := &Metrics{
		executions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: c.Namespace, Subsystem: "job", Name: "executions_total", ConstLabels: c.ConstLabels,
			Help: "Passes of jobs through the worker stack, by outcome: completed, skipped (not needed), snoozed, failed (will retry), cancelled, discarded, interrupted.",
		}, append(labels, "outcome")),
		runTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: c.Namespace, Subsystem: "job", Name: "run_duration_seconds", ConstLabels: c.ConstLabels,
			Help:    "Time one pass of a job spent in the worker stack (middleware and Work).",
			Buckets: c.DurationBuckets,
		}, labels),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: c.Namespace, Subsystem: "job", Name: "queue_latency_seconds", ConstLabels: c.ConstLabels,
			Help:    "Time a job waited after it was due before it was attempted (attempted_at - scheduled_at).",
			Buckets: c.DurationBuckets,
		}, labels),
		flushes:       counter("flushes_total", "Outbox commits and batch flushes that wrote jobs."),
		enqueued:      counter("jobs_enqueued_total", "Jobs enqueued in the outbox, duplicates included."),
		duplicates:    counter("duplicates_removed_total", "Enqueued jobs dropped as duplicates of a job buffered in the same transaction."),
		inserted:      counter("jobs_inserted_total", "Job rows the outbox inserted."),
		uniqueSkipped: counter("jobs_unique_skipped_total", "Jobs the outbox wrote that matched an existing job (River unique jobs, queue lock) and added no row."),
		roundTrips:    counter("round_trips_total", "Round trips outbox flushes spent writing jobs and committing."),
	}
	m.argsUnknownFields = newArgsUnknownFieldsVec(c)
	m.series.Store(&map[seriesKey]*jobSeries{})
	m.plugin = &metricsPlugin{m: m}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.executions, m.runTime, m.latency, m.argsUnknownFields,
		m.flushes, m.enqueued, m.duplicates, m.inserted, m.uniqueSkipped, m.roundTrips,
	}
}

// Plugin returns the River plugin that records jobs: put it in
// river.Config.Plugins, e.g.
//
//	jobs.NewClient(pool, reg, &jobs.ClientConfig{
//		River: &river.Config{Plugins: []rivertype.Plugin{m.Plugin()}},
//	})
//
// It is a worker middleware and a rivertype.HookWorkBegin, and must be
// installed as both, which only Plugins does (see the Metrics doc for why
// not river.Config.Middleware). Every call returns the same plugin; install
// it on any number of clients.
func (m *Metrics) Plugin() rivertype.Plugin { return m.plugin }

// OnFlush records what one outbox flush wrote. Pass it as
// outbox.Config.OnFlush (jobs.NewOutbox keeps it). It is safe for concurrent
// use and does not block.
func (m *Metrics) OnFlush(_ context.Context, res outbox.FlushResult) {
	m.flushes.Inc()
	m.enqueued.Add(float64(res.Enqueued))
	m.duplicates.Add(float64(res.Duplicates))
	m.inserted.Add(float64(res.Inserted))
	m.uniqueSkipped.Add(float64(res.UniqueSkipped))
	m.roundTrips.Add(float64(res.RoundTrips))
}

// seriesFor returns the children of (kind, queue), creating them, at zero,
// the first time.
func (m *Metrics) seriesFor(kind, queue string) *jobSeries {
	key := seriesKey{kind: kind, queue: queue}
	if s, ok := (*m.series.Load())[key]; ok {
		return s
	}

	m.seriesMu.Lock()
	defer m.seriesMu.Unlock()
	old := *m.series.Load()
	if s, ok := old[key]; ok {
		return s
	}
	s := &jobSeries{
		runTime: m.runTime.WithLabelValues(kind, queue),
		latency: m.latency.WithLabelValues(kind, queue),
	}
	for i, name := range outcomeNames {
		s.outcomes[i] = m.executions.WithLabelValues(kind, queue, name)
	}
	next := make(map[seriesKey]*jobSeries, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[key] = s
	m.series.Store(&next)
	return s
}

// metricsPlugin is the worker middleware and work hook of a Metrics.
type metricsPlugin struct {
	river.PluginDefaults

	m *Metrics
}

var (
	_ rivertype.WorkerMiddleware = (*metricsPlugin)(nil)
	_ rivertype.HookWorkBegin    = (*metricsPlugin)(nil)
)

// Work implements rivertype.WorkerMiddleware.
func (p *metricsPlugin) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	s := p.m.seriesFor(job.Kind, job.Queue)
	if job.AttemptedAt != nil {
		s.latency.Observe(max(job.AttemptedAt.Sub(job.ScheduledAt), 0).Seconds())
	}

	wctx := &workContext{Context: ctx, owner: p}
	start := time.Now()
	returned := false
	defer func() {
		if !returned {
			// doInner panicked; River recovers above us and fails the
			// attempt as it would an error.
			s.runTime.Observe(time.Since(start).Seconds())
			s.outcomes[errorOutcome(job)].Inc()
		}
	}()
	err := doInner(wctx)
	returned = true

	s.runTime.Observe(time.Since(start).Seconds())
	s.outcomes[classify(ctx, job, err, wctx.began)].Inc()
	return err
}

// WorkBegin implements rivertype.HookWorkBegin. River calls it after every
// middleware, right before Work: reaching it means the job was not skipped.
func (p *metricsPlugin) WorkBegin(ctx context.Context, _ *rivertype.JobRow) error {
	if c, ok := ctx.Value(p).(*workContext); ok {
		c.began = true
	}
	return nil
}

// workContext carries the per-job state from Work to WorkBegin. It is the
// context value itself (its key is the plugin) to cost one allocation.
type workContext struct {
	context.Context

	owner *metricsPlugin
	began bool // set by WorkBegin, on the job's goroutine
}

func (c *workContext) Value(key any) any {
	if p, ok := key.(*metricsPlugin); ok && p == c.owner {
		return c
	}
	return c.Context.Value(key)
}

// classify mirrors, in River's order, how River's executor turns the result
// of a pass into the job's next state (internal/jobexecutor reportResult and
// reportError).
func classify(ctx context.Context, job *rivertype.JobRow, err error, began bool) outcome {
	if err == nil {
		if began {
			return outcomeCompleted
		}
		return outcomeSkipped
	}
	cause := context.Cause(ctx)
	if errors.Is(cause, rivertype.ErrJobCancelledRemotely) {
		return outcomeCancelled
	}
	var snooze *rivertype.JobSnoozeError
	if errors.As(err, &snooze) {
		return outcomeSnoozed
	}
	var cancel *rivertype.JobCancelError
	if errors.As(err, &cancel) {
		return outcomeCancelled
	}
	// StopAndCancel cancels job contexts with a cause of River's own; a job
	// that returns because of it is put back, not failed. A context
	// cancelled plainly (the Start context) is an ordinary error to River.
	if cause != nil && !errors.Is(cause, context.Canceled) && !errors.Is(cause, context.DeadlineExceeded) &&
		(errors.Is(err, context.Canceled) || errors.Is(err, cause)) {
		return outcomeInterrupted
	}
	return errorOutcome(job)
}

// errorOutcome is the outcome of an error or a panic: discarded on the last
// attempt, else failed (retried).
func errorOutcome(job *rivertype.JobRow) outcome {
	if job.Attempt >= job.MaxAttempts {
		return outcomeDiscarded
	}
	return outcomeFailed
}
