package jobs_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// One args type, and so one kind, per outcome.

type metricsCompleteArgs struct{}

func (metricsCompleteArgs) Kind() string { return "test.metrics_complete" }

type metricsRetryArgs struct{}

func (metricsRetryArgs) Kind() string { return "test.metrics_retry" }

type metricsSnoozeArgs struct{}

func (metricsSnoozeArgs) Kind() string { return "test.metrics_snooze" }

type metricsCancelArgs struct{}

func (metricsCancelArgs) Kind() string { return "test.metrics_cancel" }

type metricsDiscardArgs struct{}

func (metricsDiscardArgs) Kind() string                 { return "test.metrics_discard" }
func (metricsDiscardArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{MaxAttempts: 1} }

type metricsSkipArgs struct{}

func (metricsSkipArgs) Kind() string { return "test.metrics_skip" }

type metricsLateArgs struct{}

func (metricsLateArgs) Kind() string { return "test.metrics_late" }

type metricsBlockArgs struct {
	N int `json:"n"`
}

func (metricsBlockArgs) Kind() string { return "test.metrics_block" }

type metricsFlushArgs struct {
	Key int `json:"key"`
}

func (metricsFlushArgs) Kind() string { return "test.metrics_flush" }

type metricsUniqueArgs struct {
	ID int `json:"id"`
}

func (metricsUniqueArgs) Kind() string { return "test.metrics_unique" }
func (metricsUniqueArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

// metricsWorker works every test kind; what it does depends on the kind.
type metricsWorker[T river.JobArgs] struct {
	river.WorkerDefaults[T]
	work   func(ctx context.Context, job *river.Job[T]) error
	worked atomic.Int64
}

func (w *metricsWorker[T]) Work(ctx context.Context, job *river.Job[T]) error {
	w.worked.Add(1)
	if w.work == nil {
		return nil
	}
	return w.work(ctx, job)
}

// NextRetry retries at once, so the retry test does not wait for River's
// backoff.
func (w *metricsWorker[T]) NextRetry(*river.Job[T]) time.Time {
	return time.Now().Add(time.Millisecond)
}

// skipWorker is a metricsWorker with a needed-check that always says no.
type skipWorker struct {
	metricsWorker[metricsSkipArgs]
	checked atomic.Int64
}

func (w *skipWorker) Needed(context.Context, *river.Job[metricsSkipArgs]) (bool, error) {
	w.checked.Add(1)
	return false, nil
}

type metricsBundle struct {
	schema   *dbtest.Schema
	metrics  *jobs.Metrics
	registry *prometheus.Registry
	client   *river.Client[pgx.Tx]
	ob       *outbox.Outbox
	events   <-chan *river.Event
	skip     *skipWorker
	started  chan int64 // ids of running block jobs
}

// setupMetrics registers a worker for every test kind on queue
// metrics_work, and builds a client (started unless insertOnly) and an
// outbox that both feed a fresh Metrics registered on a fresh registry.
func setupMetrics(ctx context.Context, t *testing.T, insertOnly bool) *metricsBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, nil)
	b := &metricsBundle{
		schema:   s,
		metrics:  jobs.NewMetrics(nil),
		registry: prometheus.NewRegistry(),
		skip:     &skipWorker{},
		started:  make(chan int64, 10),
	}
	b.registry.MustRegister(b.metrics)

	reg := jobs.NewRegistry()
	q := reg.AddQueue("metrics", "work", 0, nil)
	var snoozes atomic.Int64
	jobs.AddWorker(reg, q, &metricsWorker[metricsCompleteArgs]{})
	jobs.AddWorker(reg, q, &metricsWorker[metricsRetryArgs]{work: func(_ context.Context, job *river.Job[metricsRetryArgs]) error {
		if job.Attempt == 1 {
			return errors.New("first attempt fails")
		}
		return nil
	}})
	jobs.AddWorker(reg, q, &metricsWorker[metricsSnoozeArgs]{work: func(context.Context, *river.Job[metricsSnoozeArgs]) error {
		if snoozes.Add(1) == 1 {
			return river.JobSnooze(time.Millisecond)
		}
		return nil
	}})
	jobs.AddWorker(reg, q, &metricsWorker[metricsCancelArgs]{work: func(context.Context, *river.Job[metricsCancelArgs]) error {
		return river.JobCancel(errors.New("permanent failure"))
	}})
	jobs.AddWorker(reg, q, &metricsWorker[metricsDiscardArgs]{work: func(context.Context, *river.Job[metricsDiscardArgs]) error {
		return errors.New("fails on its only attempt")
	}})
	jobs.AddWorker(reg, q, b.skip)
	jobs.AddWorker(reg, q, &metricsWorker[metricsLateArgs]{})
	jobs.AddWorker(reg, q, &metricsWorker[metricsBlockArgs]{work: func(ctx context.Context, job *river.Job[metricsBlockArgs]) error {
		b.started <- job.ID
		<-ctx.Done()
		return ctx.Err()
	}})
	jobs.AddWorker(reg, q, &metricsWorker[metricsFlushArgs]{})
	jobs.AddWorker(reg, q, &metricsWorker[metricsUniqueArgs]{})

	cfg := &jobs.ClientConfig{
		Schema: s.Name,
		Logger: discardLogger(),
		River: &river.Config{
			FetchCooldown:     20 * time.Millisecond,
			FetchPollInterval: 50 * time.Millisecond,
			Plugins:           []rivertype.Plugin{b.metrics.Plugin()},
		},
	}
	if !insertOnly {
		cfg.Queues = []string{jobs.AllQueues}
	}
	client, err := jobs.NewClient(s.Pool, reg, cfg)
	require.NoError(t, err)
	b.client = client
	if !insertOnly {
		events, cancel := client.Subscribe(river.EventKindJobCompleted, river.EventKindJobFailed,
			river.EventKindJobCancelled, river.EventKindJobSnoozed)
		t.Cleanup(cancel)
		require.NoError(t, client.Start(ctx))
		t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
		b.events = events
	}

	b.ob, err = jobs.NewOutbox(s.Pool, client, reg, &outbox.Config{OnFlush: b.metrics.OnFlush, DirectInsert: true})
	require.NoError(t, err)
	return b
}

// waitFinal waits for n jobs to reach a final state (completed, cancelled,
// discarded) and returns them by kind.
func (b *metricsBundle) waitFinal(t *testing.T, n int) map[string]*rivertype.JobRow {
	t.Helper()
	out := make(map[string]*rivertype.JobRow)
	deadline := time.After(20 * time.Second)
	for len(out) < n {
		select {
		case ev := <-b.events:
			switch ev.Job.State { //nolint:exhaustive // the others are not final
			case rivertype.JobStateCompleted, rivertype.JobStateCancelled, rivertype.JobStateDiscarded:
				out[ev.Job.Kind] = ev.Job
			}
		case <-deadline:
			t.Fatalf("only %d of %d jobs finished within 20 s: %v", len(out), n, out)
		}
	}
	return out
}

// gathered returns every non-zero counter sample of g and the sample count
// of every histogram series, keyed as in the text exposition:
// name{label="value",…}, name_count{…} for histograms.
func gathered(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	families, err := g.Gather()
	require.NoError(t, err)
	out := make(map[string]float64)
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := make([]string, 0, len(m.GetLabel()))
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			suffix := ""
			if len(labels) > 0 {
				suffix = "{" + strings.Join(labels, ",") + "}"
			}
			switch f.GetType() { //nolint:exhaustive // Metrics has only these
			case dto.MetricType_COUNTER:
				if v := m.GetCounter().GetValue(); v != 0 {
					out[f.GetName()+suffix] = v
				}
			case dto.MetricType_HISTOGRAM:
				if n := m.GetHistogram().GetSampleCount(); n != 0 {
					out[f.GetName()+"_count"+suffix] = float64(n)
				}
			}
		}
	}
	return out
}

// histogram returns the histogram series of name for kind on queue
// metrics_work.
func histogram(t *testing.T, g prometheus.Gatherer, name, kind string) *dto.Histogram {
	t.Helper()
	families, err := g.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return m.GetHistogram()
				}
			}
		}
	}
	t.Fatalf("no %s series for kind %s", name, kind)
	return nil
}

func executions(kind, outcome string) string {
	return fmt.Sprintf(`aftercommit_job_executions_total{kind=%q,outcome=%q,queue="metrics_work"}`, kind, outcome)
}

func runCount(kind string) string {
	return fmt.Sprintf(`aftercommit_job_run_duration_seconds_count{kind=%q,queue="metrics_work"}`, kind)
}

func latencyCount(kind string) string {
	return fmt.Sprintf(`aftercommit_job_queue_latency_seconds_count{kind=%q,queue="metrics_work"}`, kind)
}

func TestMetricsJobOutcomes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupMetrics(ctx, t, false)

	const lateBy = 2 * time.Second
	_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		for _, args := range []river.JobArgs{
			metricsCompleteArgs{}, metricsRetryArgs{}, metricsSnoozeArgs{}, metricsCancelArgs{},
			metricsDiscardArgs{}, metricsSkipArgs{},
		} {
			require.NoError(t, tx.Enqueue(args, nil))
		}
		// Due 2 s ago: it waited at least that long after it was due.
		return tx.Enqueue(metricsLateArgs{}, &river.InsertOpts{ScheduledAt: time.Now().Add(-lateBy)})
	})
	require.NoError(t, err)
	final := b.waitFinal(t, 7)

	// The needed-check recorded its verdict on the job; Metrics agrees.
	require.Equal(t, rivertype.JobStateCompleted, final["test.metrics_skip"].State)
	var out jobs.SkippedOutput
	require.NoError(t, json.Unmarshal(final["test.metrics_skip"].Output(), &out))
	require.Equal(t, jobs.SkippedOutput{Skipped: "not needed"}, out)
	require.Equal(t, int64(1), b.skip.checked.Load())
	require.Equal(t, int64(0), b.skip.worked.Load(), "a skipped job's Work is not called")
	require.Equal(t, rivertype.JobStateCancelled, final["test.metrics_cancel"].State)
	require.Equal(t, rivertype.JobStateDiscarded, final["test.metrics_discard"].State)

	// Exact values of every series that is not zero. Metrics records a job
	// before River reports its state, so they are complete once the events
	// are in.
	want := map[string]float64{
		executions("test.metrics_complete", jobs.OutcomeCompleted): 1,
		executions("test.metrics_retry", jobs.OutcomeFailed):       1,
		executions("test.metrics_retry", jobs.OutcomeCompleted):    1,
		executions("test.metrics_snooze", jobs.OutcomeSnoozed):     1,
		executions("test.metrics_snooze", jobs.OutcomeCompleted):   1,
		executions("test.metrics_cancel", jobs.OutcomeCancelled):   1,
		executions("test.metrics_discard", jobs.OutcomeDiscarded):  1,
		executions("test.metrics_skip", jobs.OutcomeSkipped):       1,
		executions("test.metrics_late", jobs.OutcomeCompleted):     1,

		"aftercommit_outbox_flushes_total":       1,
		"aftercommit_outbox_jobs_enqueued_total": 7,
		"aftercommit_outbox_jobs_inserted_total": 7,
		"aftercommit_outbox_round_trips_total":   1,
	}
	// One run-time and one latency sample per completed job, from the pass
	// that completed it (skipped included), as job_kind_stats counts: the
	// retried and the snoozed job's first passes, the cancelled and the
	// discarded job are not observed.
	for _, kind := range []string{
		"test.metrics_complete", "test.metrics_retry", "test.metrics_snooze", "test.metrics_skip", "test.metrics_late",
	} {
		want[runCount(kind)] = 1
		want[latencyCount(kind)] = 1
	}
	require.Equal(t, want, gathered(t, b.registry))

	// Every (kind, queue) pair seen has all its outcomes, at zero or not.
	require.Equal(t, 7*7, testutil.CollectAndCount(b.metrics, "aftercommit_job_executions_total"))

	late := histogram(t, b.registry, "aftercommit_job_queue_latency_seconds", "test.metrics_late")
	require.GreaterOrEqual(t, late.GetSampleSum(), lateBy.Seconds())
	for _, bucket := range late.GetBucket() {
		if bucket.GetUpperBound() < lateBy.Seconds() {
			require.Zero(t, bucket.GetCumulativeCount(), "bucket le=%v", bucket.GetUpperBound())
		}
	}
	onTime := histogram(t, b.registry, "aftercommit_job_queue_latency_seconds", "test.metrics_complete")
	require.Less(t, onTime.GetSampleSum(), lateBy.Seconds())
}

func TestMetricsRemoteCancelAndStop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupMetrics(ctx, t, false)

	enqueueBlock := func(n int) {
		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(metricsBlockArgs{N: n}, nil)
		})
		require.NoError(t, err)
	}
	waitStarted := func() int64 {
		select {
		case id := <-b.started:
			return id
		case <-time.After(20 * time.Second):
			t.Fatal("block job did not start within 20 s")
			return 0
		}
	}

	// Cancelled from outside while running: cancelled, not failed.
	enqueueBlock(1)
	id := waitStarted()
	_, err := b.client.JobCancel(ctx, id)
	require.NoError(t, err)
	final := b.waitFinal(t, 1)
	require.Equal(t, rivertype.JobStateCancelled, final["test.metrics_block"].State)

	// Interrupted by StopAndCancel: River puts the job back, so it did not
	// fail.
	enqueueBlock(2)
	id = waitStarted()
	require.NoError(t, b.client.StopAndCancel(ctx))
	var state string
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT state::text FROM river_job WHERE id = $1`, id).Scan(&state))
	require.Equal(t, "available", state)

	got := gathered(t, b.registry)
	require.Equal(t, 1.0, got[executions("test.metrics_block", jobs.OutcomeCancelled)])
	require.Equal(t, 1.0, got[executions("test.metrics_block", jobs.OutcomeInterrupted)])
	require.Zero(t, got[runCount("test.metrics_block")], "neither pass completed the job")
	require.Zero(t, got[executions("test.metrics_block", jobs.OutcomeFailed)])
	require.Zero(t, got[executions("test.metrics_block", jobs.OutcomeDiscarded)])
}

func TestMetricsOutboxFlushes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupMetrics(ctx, t, true)

	// 10 enqueues over 3 keys: 7 duplicates dropped, 3 rows.
	res, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		for i := range 10 {
			require.NoError(t, tx.Enqueue(metricsFlushArgs{Key: i % 3}, nil))
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, outbox.FlushResult{Enqueued: 10, Duplicates: 7, Inserted: 3, RoundTrips: 1}, res)

	// A unique job, then the same one again: River matches it to the row
	// the first transaction wrote.
	for range 2 {
		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(metricsUniqueArgs{ID: 1}, nil)
		})
		require.NoError(t, err)
	}
	// No jobs, or rolled back: no flush.
	_, err = b.ob.InTx(ctx, nil, func(context.Context, *outbox.Tx) error { return nil })
	require.NoError(t, err)
	_, err = b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		require.NoError(t, tx.Enqueue(metricsFlushArgs{Key: 9}, nil))
		return errors.New("roll back")
	})
	require.Error(t, err)

	require.Equal(t, map[string]float64{
		"aftercommit_outbox_flushes_total":             3,
		"aftercommit_outbox_jobs_enqueued_total":       12,
		"aftercommit_outbox_duplicates_removed_total":  7,
		"aftercommit_outbox_jobs_inserted_total":       4,
		"aftercommit_outbox_jobs_unique_skipped_total": 1,
		"aftercommit_outbox_round_trips_total":         3,
	}, gathered(t, b.registry))
	var rows int
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job`).Scan(&rows))
	require.Equal(t, 4, rows)
}

func TestMetricsConfig(t *testing.T) {
	t.Parallel()

	t.Run("Defaults", func(t *testing.T) {
		t.Parallel()
		cfg := (*jobs.MetricsConfig)(nil).WithDefaults()
		require.Equal(t, jobs.MetricsNamespaceDefault, cfg.Namespace)
		require.Equal(t, jobs.MetricsDurationBucketsDefault(), cfg.DurationBuckets)
		require.InDelta(t, 0.001, cfg.DurationBuckets[0], 0)
		require.InDelta(t, 3600.0, cfg.DurationBuckets[len(cfg.DurationBuckets)-1], 0)

		m := jobs.NewMetrics(nil)
		reg := prometheus.NewRegistry()
		require.NoError(t, reg.Register(m))
		// Describe lists all fifteen metrics, before any job ran.
		descs := make(chan *prometheus.Desc, 20)
		m.Describe(descs)
		close(descs)
		require.Len(t, descs, 15)
		// Its parts: the job metrics with the relay's two counters (the
		// relay runs in the worker processes), the flow controls' delays
		// and the job batches' two, and the outbox counters.
		require.Equal(t, 9, describeCount(m.JobCollector()))
		require.Equal(t, 6, describeCount(m.OutboxCollector()))
		jobOnly := prometheus.NewRegistry()
		require.NoError(t, jobOnly.Register(m.JobCollector()))
		require.Error(t, jobOnly.Register(m), "Metrics and its parts on one registry collide")
		// Registering twice on one registry is refused; on another is fine.
		require.Error(t, reg.Register(m))
		require.NoError(t, prometheus.NewRegistry().Register(m))
	})

	t.Run("NamespaceAndConstLabels", func(t *testing.T) {
		t.Parallel()
		m := jobs.NewMetrics(&jobs.MetricsConfig{Namespace: "acme", ConstLabels: prometheus.Labels{"service": "worker"}})
		reg := prometheus.NewRegistry()
		reg.MustRegister(m)
		m.OnFlush(context.Background(), outbox.FlushResult{Enqueued: 5, Duplicates: 1, Inserted: 3, UniqueSkipped: 1, RoundTrips: 2})
		require.Equal(t, map[string]float64{
			`acme_outbox_flushes_total{service="worker"}`:             1,
			`acme_outbox_jobs_enqueued_total{service="worker"}`:       5,
			`acme_outbox_duplicates_removed_total{service="worker"}`:  1,
			`acme_outbox_jobs_inserted_total{service="worker"}`:       3,
			`acme_outbox_jobs_unique_skipped_total{service="worker"}`: 1,
			`acme_outbox_round_trips_total{service="worker"}`:         2,
		}, gathered(t, reg))
	})

	t.Run("NativeHistograms", func(t *testing.T) {
		t.Parallel()
		for _, factor := range []float64{0, 1.1} {
			m := jobs.NewMetrics(&jobs.MetricsConfig{NativeHistogramBucketFactor: factor})
			reg := prometheus.NewRegistry()
			reg.MustRegister(m)
			mw, ok := m.Plugin().(rivertype.WorkerMiddleware)
			require.True(t, ok, "the plugin is a worker middleware")
			now := time.Now()
			job := &rivertype.JobRow{Kind: "test.native", Queue: "q", Attempt: 1, MaxAttempts: 25,
				ScheduledAt: now.Add(-150 * time.Millisecond), AttemptedAt: &now}
			require.NoError(t, mw.Work(context.Background(), job, func(context.Context) error { return nil }))

			h := histogram(t, reg, "aftercommit_job_queue_latency_seconds", "test.native")
			require.Len(t, h.GetBucket(), len(jobs.MetricsDurationBucketsDefault()), "the classic buckets stay")
			if factor == 0 {
				require.Nil(t, h.Schema, "classic only by default")
				continue
			}
			// Factor 1.1 is schema 3: 2^(1/8) per bucket. 0.15 s is in bucket
			// 2^(-22/8) < 0.15 <= 2^(-21/8), index -21.
			require.Equal(t, int32(3), h.GetSchema())
			require.Len(t, h.GetPositiveSpan(), 1)
			require.Equal(t, int32(-21), h.GetPositiveSpan()[0].GetOffset())
			require.Equal(t, uint32(1), h.GetPositiveSpan()[0].GetLength())
			require.Equal(t, []int64{1}, h.GetPositiveDelta())
		}
	})

	t.Run("BadBucketsPanic", func(t *testing.T) {
		t.Parallel()
		require.PanicsWithValue(t, "jobs: MetricsConfig.DurationBuckets must be strictly increasing, got [1 0.5]",
			func() { jobs.NewMetrics(&jobs.MetricsConfig{DurationBuckets: []float64{1, 0.5}}) })
	})
}

// relayCounters returns the relay's counters of g, zeros included.
func relayCounters(t *testing.T, g prometheus.Gatherer, prefix string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for k, v := range gaugesAndCounters(t, g) {
		if strings.HasPrefix(k, prefix+"_relay_") {
			out[k] = v
		}
	}
	return out
}

// wantRelay is the relay's counters with these values.
func wantRelay(batches, inserted, uniqueSkipped, coalesced, dead float64) map[string]float64 {
	return map[string]float64{
		"aftercommit_relay_batches_total":                       batches,
		`aftercommit_relay_rows_total{result="inserted"}`:       inserted,
		`aftercommit_relay_rows_total{result="unique_skipped"}`: uniqueSkipped,
		`aftercommit_relay_rows_total{result="coalesced"}`:      coalesced,
		`aftercommit_relay_rows_total{result="dead"}`:           dead,
	}
}

// ObserveRelay counts batches and rows by result; all four result series
// exist at 0 before the first batch, so rate() and increase() see the
// first dead row.
func TestMetricsRelay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("Counts", func(t *testing.T) {
		t.Parallel()
		m := jobs.NewMetrics(nil)
		reg := prometheus.NewRegistry()
		reg.MustRegister(m)
		require.Equal(t, wantRelay(0, 0, 0, 0, 0), relayCounters(t, reg, "aftercommit"), "every series from the start")

		m.ObserveRelay(ctx, relay.MoveResult{Rows: 10, Inserted: 6, UniqueSkipped: 2, Coalesced: 1, Dead: 1, OldestCreatedAt: time.Now()})
		require.Equal(t, wantRelay(1, 6, 2, 1, 1), relayCounters(t, reg, "aftercommit"))
		m.ObserveRelay(ctx, relay.MoveResult{Rows: 3, Inserted: 3})
		m.ObserveRelay(ctx, relay.MoveResult{Rows: 4, Dead: 4})
		require.Equal(t, wantRelay(3, 9, 2, 1, 5), relayCounters(t, reg, "aftercommit"))
	})

	t.Run("Concurrent", func(t *testing.T) {
		t.Parallel()
		m := jobs.NewMetrics(nil)
		reg := prometheus.NewRegistry()
		reg.MustRegister(m)
		const goroutines, batches = 8, 200
		var wg sync.WaitGroup
		for range goroutines {
			wg.Go(func() {
				for range batches {
					m.ObserveRelay(ctx, relay.MoveResult{Rows: 4, Inserted: 1, UniqueSkipped: 1, Coalesced: 1, Dead: 1})
				}
			})
		}
		// Scrapes while batches are counted: every series is there, none
		// above what the goroutines observe in all.
		for range 20 {
			got := relayCounters(t, reg, "aftercommit")
			require.Len(t, got, 5)
			for k, v := range got {
				require.LessOrEqual(t, v, float64(goroutines*batches), k)
			}
		}
		wg.Wait()
		const n = goroutines * batches
		require.Equal(t, wantRelay(n, n, n, n, n), relayCounters(t, reg, "aftercommit"))
	})

	t.Run("NamespaceAndConstLabels", func(t *testing.T) {
		t.Parallel()
		m := jobs.NewMetrics(&jobs.MetricsConfig{Namespace: "acme", ConstLabels: prometheus.Labels{"service": "worker"}})
		reg := prometheus.NewRegistry()
		reg.MustRegister(m.JobCollector())
		m.ObserveRelay(ctx, relay.MoveResult{Rows: 2, Inserted: 1, Dead: 1})
		require.Equal(t, map[string]float64{
			`acme_relay_batches_total{service="worker"}`:                      1,
			`acme_relay_rows_total{result="inserted",service="worker"}`:       1,
			`acme_relay_rows_total{result="unique_skipped",service="worker"}`: 0,
			`acme_relay_rows_total{result="coalesced",service="worker"}`:      0,
			`acme_relay_rows_total{result="dead",service="worker"}`:           1,
		}, relayCounters(t, reg, "acme"), "in the job collector")
	})

	// A real relay with OnMove = ObserveRelay: the counters say what
	// MoveBatch returned, batch by batch.
	t.Run("RelayOnMove", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, nil)
		m := jobs.NewMetrics(nil)
		reg := prometheus.NewRegistry()
		reg.MustRegister(m)

		registry := jobs.NewRegistry()
		q := registry.AddQueue("relay", "metrics", 0, nil)
		jobs.AddWorker(registry, q, &metricsWorker[metricsCompleteArgs]{})
		jobs.AddWorker(registry, q, &metricsWorker[metricsUniqueArgs]{})
		client, err := jobs.NewClient(s.Pool, registry, &jobs.ClientConfig{Schema: s.Name, Queues: []string{}, Logger: discardLogger()})
		require.NoError(t, err)
		rl, err := jobs.NewRelay(s.Pool, client, registry, &relay.Config{
			Schema: s.Name, OnMove: m.ObserveRelay, Logger: discardLogger(), DisableListen: true,
		})
		require.NoError(t, err)

		// Three plain jobs, a River-unique job twice (one job), an unknown
		// kind and args that do not decode (two dead rows).
		_, err = s.Pool.Exec(ctx, `
			INSERT INTO outbox_jobs (kind, args) VALUES
			  ('test.metrics_complete', '{}'), ('test.metrics_complete', '{}'), ('test.metrics_complete', '{}'),
			  ('test.metrics_unique', '{"id": 1}'), ('test.metrics_unique', '{"id": 1}'),
			  ('test.nope', '{}'), ('test.metrics_unique', '{"id": "x"}')`)
		require.NoError(t, err)
		res, err := rl.MoveBatch(ctx)
		require.NoError(t, err)
		require.Equal(t, relay.MoveResult{Rows: 7, Inserted: 4, UniqueSkipped: 1, Dead: 2, OldestCreatedAt: res.OldestCreatedAt}, res)
		var jobsInserted int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job`).Scan(&jobsInserted))
		require.Equal(t, res.Inserted, jobsInserted)
		require.Equal(t, 4, jobsInserted, "three plain jobs and one unique job")
		require.Equal(t, wantRelay(1, 4, 1, 0, 2), relayCounters(t, reg, "aftercommit"))

		// An empty outbox moves nothing and counts no batch.
		res, err = rl.MoveBatch(ctx)
		require.NoError(t, err)
		require.Equal(t, relay.MoveResult{}, res)
		require.InDelta(t, 1, relayCounters(t, reg, "aftercommit")["aftercommit_relay_batches_total"], 0)
	})
}

// BenchmarkMetricsWork is the cost Metrics adds to one job: the plugin's
// middleware and hook around a no-op Work.
func BenchmarkMetricsWork(b *testing.B) {
	m := jobs.NewMetrics(nil)
	plugin := m.Plugin()
	mw, ok := plugin.(rivertype.WorkerMiddleware)
	require.True(b, ok, "the plugin is a worker middleware")
	hook, ok := plugin.(rivertype.HookWorkBegin)
	require.True(b, ok, "the plugin is a work-begin hook")
	now := time.Now()
	job := &rivertype.JobRow{Kind: "bench.noop", Queue: "default", Attempt: 1, MaxAttempts: 25, ScheduledAt: now, AttemptedAt: &now}
	inner := func(ctx context.Context) error { return hook.WorkBegin(ctx, job) }
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := mw.Work(ctx, job, inner); err != nil {
			b.Fatal(err)
		}
	}
}
