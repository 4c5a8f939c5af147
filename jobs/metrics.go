package jobs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// MetricsNamespaceDefault is the default MetricsConfig.Namespace, the prefix
// of every metric name.
const MetricsNamespaceDefault = "aftercommit"

// MetricsDurationBucketsDefault returns the default upper bounds, in seconds,
// of the run-time and queue-latency histograms: 27 per decade from 1 ms to
// 50 s, then 60 s, 2 min, 5 min, 10 min, 30 min and 1 h; 134 bounds.
//
// From 1 ms to 50 s each bound is at most 9.3 % above the one before it.
// histogram_quantile interpolates linearly inside the bucket that holds the
// quantile, and that bucket also holds the observed value the quantile is
// (the one percentile_disc returns, as the job_kind_stats view does), so the
// two never differ by more than the bucket's width: 9.3 %. Coarser buckets
// are off by up to their width ratio: the previous default (1-2.5-5 per
// decade) reported 221 ms for a p99 of 110 ms. Above 50 s the buckets are
// coarse (up to 2.5× wide): a job that runs or waits that long is an alert,
// and the queue gauges (QueueMetrics) give a backlog's age exactly.
//
// 1, 2 and 5 of every decade are bounds (le="0.1", le="0.2", le="0.5", …),
// for SLO queries such as the share of jobs that waited under 100 ms.
//
// The price is series: 137 per histogram (134 bounds, +Inf, _sum, _count),
// 274 per (kind, queue) pair for the two, against 46 with the previous 20
// bounds. Pass coarser DurationBuckets (or NativeHistogramBucketFactor with
// few classic bounds) where that matters more than the precision.
func MetricsDurationBucketsDefault() []float64 {
	out := make([]float64, 0, 134)
	for exp := -3; exp <= 1; exp++ {
		for _, m := range durationMantissas {
			if exp == 1 && m > 5 {
				break
			}
			// Parsing "1.09e-3" gives the float nearest to 0.00109, which
			// the exposition writes as le="0.00109".
			v, err := strconv.ParseFloat(strconv.FormatFloat(m, 'f', -1, 64)+"e"+strconv.Itoa(exp), 64)
			if err != nil {
				panic(err) // unreachable: the string is a valid number
			}
			out = append(out, v)
		}
	}
	return append(out, 60, 120, 300, 600, 1800, 3600)
}

// durationMantissas are the bounds of one decade of
// MetricsDurationBucketsDefault: 1 to 2 and 5 to 10 in eight steps of
// 2^(1/8) (the boundaries of a native histogram of schema 3), 2 to 5 in
// eleven steps of 2.5^(1/11), rounded to three digits. The widest step,
// 1.83 to 2, is ×1.093.
var durationMantissas = [...]float64{
	1, 1.09, 1.19, 1.3, 1.41, 1.54, 1.68, 1.83,
	2, 2.17, 2.36, 2.57, 2.79, 3.03, 3.3, 3.58, 3.89, 4.23, 4.6,
	5, 5.45, 5.95, 6.48, 7.07, 7.71, 8.41, 9.17,
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
	// Defaults to MetricsDurationBucketsDefault(): 1 ms to 1 h, within
	// 9.3 % from 1 ms to 50 s.
	DurationBuckets []float64

	// NativeHistogramBucketFactor, when above 1, makes both histograms
	// native histograms too (client_golang's HistogramOpts of the same
	// name), beside their classic buckets: a Prometheus that scrapes
	// native histograms (protobuf; a feature flag before Prometheus 3)
	// stores only the buckets that hold observations, at this factor
	// (1.1 gives schema 3, 8 per doubling, the precision of the default
	// classic buckets). Such a Prometheus keeps the classic buckets only
	// with always_scrape_classic_histograms (scrape_classic_histograms
	// before 3.0): the recording rules of deploy/prometheus read them.
	// A native histogram keeps at most 160 buckets (then it halves its
	// resolution) and starts afresh at most once an hour.
	//
	// Defaults to 0: classic buckets only.
	NativeHistogramBucketFactor float64
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
// Metrics is itself a prometheus.Collector of both: register it on your own
// registry (prometheus.NewRegistry().MustRegister(m)); it never touches the
// global one. A process that only works jobs registers JobCollector instead
// (cmd/worker does), one that only enqueues OutboxCollector. It feeds from
// two places:
//
//   - Jobs, through Plugin, which goes into river.Config.Plugins (with
//     NewClient: ClientConfig.River.Plugins). Every pass of a job through
//     the worker stack counts once in <ns>_job_executions_total{kind,
//     queue, outcome} (see the Outcome constants). Each pass that completed
//     the job (outcome completed or skipped) is observed by two
//     histograms: <ns>_job_queue_latency_seconds{kind, queue},
//     attempted_at − scheduled_at, how long the job waited after it was due
//     (for a retried or snoozed job: after its retry or snooze time), and
//     <ns>_job_run_duration_seconds{kind, queue}, how long it then ran:
//     from attempted_at, when River fetched it and marked it running, to
//     the end of the pass (every middleware and Work). The two add up to
//     the time from due to done.
//   - Outbox flushes, through OnFlush, which goes into outbox.Config.OnFlush:
//     <ns>_outbox_flushes_total, <ns>_outbox_jobs_enqueued_total,
//     <ns>_outbox_duplicates_removed_total, <ns>_outbox_jobs_inserted_total,
//     <ns>_outbox_jobs_unique_skipped_total (matched an existing job) and
//     <ns>_outbox_round_trips_total. They count in the process that enqueues
//     (the application's own /metrics), never in a worker that does not.
//
// # Agreeing with job_kind_stats
//
// The histograms describe the jobs the job_kind_stats view describes (the
// completed ones, each by its last pass) with the same clocks, so
// histogram_quantile over them agrees with the view's percentiles to within
// the buckets' width: 9.3 % with the default buckets (see
// MetricsDurationBucketsDefault). One difference remains, for a job that
// completes in its own transaction (river.JobCompleteTx): the view's run
// time, finalized_at − attempted_at, ends when JobCompleteTx was called,
// before that transaction's UPDATE and COMMIT; the histogram's ends after
// them, when the job's work is visible. Those round trips take about a
// millisecond on a quiet server and tens of milliseconds on a saturated
// one: for a job of a few milliseconds the histogram then reads well above
// the view, and it is the view that misses part of the run.
//
// A failed, snoozed, cancelled or interrupted pass counts in
// executions_total only: its duration would describe neither the job's
// wait nor its work, and the view leaves it out too.
//
// The run time starts at attempted_at, the database's now() when the job
// was fetched, and ends on this process's clock, as the view's
// finalized_at does: in this process a job waits a few milliseconds (more
// when a large batch was fetched at once on a busy machine) between the
// fetch and its first middleware, and that wait is neither queue latency
// nor anything the process could see otherwise. A database clock ahead of
// the process's is cut off (the pass's own duration is the least reported);
// a database clock behind it adds the difference, as it does to the view.
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

	jobCollector, outboxCollector collectorSet

	flushes       prometheus.Counter
	enqueued      prometheus.Counter
	duplicates    prometheus.Counter
	inserted      prometheus.Counter
	uniqueSkipped prometheus.Counter
	roundTrips    prometheus.Counter

	// The relay's counters (ObserveRelay), in the job collector: the relay
	// runs in the worker processes.
	relayBatches prometheus.Counter
	relayRows    *prometheus.CounterVec

	// flowDelayed counts the starts a flow control put off
	// (ObserveFlowDelay), in the job collector.
	flowDelayed *prometheus.CounterVec
	// batchesFinished and batchDelay are the job batches' callbacks.
	batchesFinished *prometheus.CounterVec
	batchDelay      prometheus.Histogram

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
		runTime: prometheus.NewHistogramVec(histogramOpts(c, "run_duration_seconds",
			"Time a completed job ran: from its fetch (attempted_at) to the end of the pass that completed it (middleware and Work)."), labels),
		latency: prometheus.NewHistogramVec(histogramOpts(c, "queue_latency_seconds",
			"Time a completed job waited after it was due before its last attempt (attempted_at - scheduled_at)."), labels),
		flushes:       counter("flushes_total", "Outbox commits and batch flushes that wrote jobs."),
		enqueued:      counter("jobs_enqueued_total", "Jobs enqueued in the outbox, duplicates included."),
		duplicates:    counter("duplicates_removed_total", "Enqueued jobs dropped as duplicates of a job buffered in the same transaction."),
		inserted:      counter("jobs_inserted_total", "Job rows the outbox inserted."),
		uniqueSkipped: counter("jobs_unique_skipped_total", "Jobs the outbox wrote that matched an existing job (River unique jobs, queue lock) and added no row."),
		roundTrips:    counter("round_trips_total", "Round trips outbox flushes spent writing jobs and committing."),
	}
	m.argsUnknownFields = newArgsUnknownFieldsVec(c)
	m.relayBatches = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: c.Namespace, Subsystem: "relay", Name: "batches_total", ConstLabels: c.ConstLabels,
		Help: "Relay transactions that moved outbox rows into River.",
	})
	m.relayRows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: c.Namespace, Subsystem: "relay", Name: "rows_total", ConstLabels: c.ConstLabels,
		Help: "Outbox rows the relay moved, by result: inserted (a new job), unique_skipped (matched a waiting job: queue lock or River unique), coalesced (same queue-lock key earlier in the batch), dead (refused; see outbox_dead_jobs).",
	}, []string{"result"})
	for _, r := range relayResults {
		m.relayRows.WithLabelValues(r)
	}
	m.flowDelayed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: c.Namespace, Subsystem: "job", Name: "flow_delayed_total", ConstLabels: c.ConstLabels,
		Help: "Starts a flow control put off, by kind and control: worker_lock (its lock or semaphore was held: the job snoozed), rate_limit (over its limit: the job snoozed, or waited in its worker). Jobs waiting their turn in a sequence or fair share are the queue's pending jobs (queue metrics, state pending).",
	}, []string{"kind", "control"})
	m.batchesFinished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: c.Namespace, Subsystem: "job", Name: "batches_finished_total", ConstLabels: c.ConstLabels,
		Help: "Job batches whose callback started (its first attempt), by outcome: succeeded (every member completed) or failed. A batch with no callback for its outcome is not counted (job_batch_status shows every batch).",
	}, []string{"outcome"})
	for _, o := range []string{"succeeded", "failed"} {
		m.batchesFinished.WithLabelValues(o)
	}
	m.batchDelay = prometheus.NewHistogram(histogramOpts(c, "batch_callback_delay_seconds",
		"Time from a job batch's last member finishing to its callback's first start (attempted_at - finished_at, the database's clock)."))
	m.jobCollector = collectorSet{m.executions, m.runTime, m.latency, m.argsUnknownFields, m.relayBatches, m.relayRows, m.flowDelayed,
		m.batchesFinished, m.batchDelay}
	m.outboxCollector = collectorSet{m.flushes, m.enqueued, m.duplicates, m.inserted, m.uniqueSkipped, m.roundTrips}
	m.series.Store(&map[seriesKey]*jobSeries{})
	m.plugin = &metricsPlugin{m: m}
	return m
}

// Native histogram limits of MetricsConfig.NativeHistogramBucketFactor.
const (
	nativeHistogramMaxBuckets    = 160
	nativeHistogramMinResetAfter = time.Hour
)

// histogramOpts are the options of the job histogram name.
func histogramOpts(c MetricsConfig, name, help string) prometheus.HistogramOpts {
	opts := prometheus.HistogramOpts{
		Namespace: c.Namespace, Subsystem: "job", Name: name, Help: help, ConstLabels: c.ConstLabels,
		Buckets: c.DurationBuckets,
	}
	if c.NativeHistogramBucketFactor > 1 {
		opts.NativeHistogramBucketFactor = c.NativeHistogramBucketFactor
		opts.NativeHistogramMaxBucketNumber = nativeHistogramMaxBuckets
		opts.NativeHistogramMinResetDuration = nativeHistogramMinResetAfter
	}
	return opts
}

// collectorSet collects several collectors as one.
type collectorSet []prometheus.Collector

// Describe implements prometheus.Collector.
func (s collectorSet) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range s {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (s collectorSet) Collect(ch chan<- prometheus.Metric) {
	for _, c := range s {
		c.Collect(ch)
	}
}

// JobCollector returns the job metrics alone (<ns>_job_…), for the registry
// of a process that works jobs but enqueues none through an outbox fed to
// OnFlush, such as cmd/worker: there the outbox counters would stay at 0
// forever and suggest nothing was enqueued. Register either Metrics itself
// or its parts on one registry, not both.
func (m *Metrics) JobCollector() prometheus.Collector { return m.jobCollector }

// OutboxCollector returns the outbox metrics alone (<ns>_outbox_…), for the
// registry of a process that enqueues but works no jobs (an API server).
func (m *Metrics) OutboxCollector() prometheus.Collector { return m.outboxCollector }

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.jobCollector.Describe(ch)
	m.outboxCollector.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.jobCollector.Collect(ch)
	m.outboxCollector.Collect(ch)
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

// Values of the control label of <namespace>_job_flow_delayed_total.
const (
	FlowControlWorkerLock = "worker_lock"
	FlowControlRateLimit  = "rate_limit"
)

// ObserveFlowDelay counts one start of a job of kind put off by control
// (FlowControlWorkerLock, FlowControlRateLimit). NewClient calls it from
// the lock and rate-limit middleware when ClientConfig.Metrics is set. It
// is safe for concurrent use.
func (m *Metrics) ObserveFlowDelay(kind, control string) {
	m.flowDelayed.WithLabelValues(kind, control).Inc()
}

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

// The result label values of <ns>_relay_rows_total.
var relayResults = []string{"inserted", "unique_skipped", "coalesced", "dead"}

// ObserveRelay records what one relay batch did. Pass it as
// relay.Config.OnMove (cmd/worker does). It is safe for concurrent use and
// does not block.
func (m *Metrics) ObserveRelay(_ context.Context, res relay.MoveResult) {
	m.relayBatches.Inc()
	for i, n := range []int{res.Inserted, res.UniqueSkipped, res.Coalesced, res.Dead} {
		if n > 0 {
			m.relayRows.WithLabelValues(relayResults[i]).Add(float64(n))
		}
	}
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

// batchDoneKey marks the metadata of a job batch's callback.
var batchDoneKey = []byte(`"` + outbox.MetadataKeyJobBatchDone + `"`)

// Work implements rivertype.WorkerMiddleware.
func (p *metricsPlugin) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	s := p.m.seriesFor(job.Kind, job.Queue)
	if job.Attempt == 1 && job.AttemptedAt != nil && bytes.Contains(job.Metadata, batchDoneKey) {
		if d, ok := JobBatchDoneOf(job); ok {
			outcome := "failed"
			if d.Succeeded() {
				outcome = "succeeded"
			}
			p.m.batchesFinished.WithLabelValues(outcome).Inc()
			p.m.batchDelay.Observe(max(job.AttemptedAt.Sub(d.FinishedAt), 0).Seconds())
		}
	}
	wctx := &workContext{Context: ctx, owner: p}
	start := time.Now()
	returned := false
	defer func() {
		if !returned {
			// doInner panicked; River recovers above us and fails the
			// attempt as it would an error.
			s.outcomes[errorOutcome(job)].Inc()
		}
	}()
	err := doInner(wctx) //nolint:contextcheck // wctx embeds ctx (a context.WithValue in one allocation), so it inherits ctx
	returned = true

	o := classify(ctx, job, err, wctx.began)
	if o == outcomeCompleted || o == outcomeSkipped {
		runTime := time.Since(start)
		if job.AttemptedAt != nil {
			// Running since the fetch, as the job row says, unless the
			// database's clock is ahead of ours.
			runTime = max(runTime, time.Since(*job.AttemptedAt))
			s.latency.Observe(max(job.AttemptedAt.Sub(job.ScheduledAt), 0).Seconds())
		}
		s.runTime.Observe(runTime.Seconds())
	}
	s.outcomes[o].Inc()
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
