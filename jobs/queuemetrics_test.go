package jobs_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
)

// gaugesAndCounters returns every gauge and counter sample of g keyed as in
// the text exposition, name{label="value",…}, but the database's gauges
// (aftercommit_db_…): they read every session of the server, other tests'
// included (TestVacuumHoldbackGauges checks them).
func gaugesAndCounters(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for key, v := range allGaugesAndCounters(t, g) {
		if !strings.HasPrefix(key, "aftercommit_db_") {
			out[key] = v
		}
	}
	return out
}

// allGaugesAndCounters is gaugesAndCounters with the database's gauges.
func allGaugesAndCounters(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	families, err := g.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := make([]string, 0, len(m.GetLabel()))
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := f.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch f.GetType() { //nolint:exhaustive // QueueMetrics has only these
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// describeCount is how many metrics c describes.
func describeCount(c prometheus.Collector) int {
	ch := make(chan *prometheus.Desc, 32)
	c.Describe(ch)
	close(ch)
	return len(ch)
}

// queueGauges are the series of one queue in the order of the states.
func queueGauges(queue string, available, pending, retryable, running, scheduled, stuck float64) map[string]float64 {
	q := fmt.Sprintf("queue=%q", queue)
	return map[string]float64{
		`aftercommit_queue_jobs{` + q + `,state="available"}`: available,
		`aftercommit_queue_jobs{` + q + `,state="pending"}`:   pending,
		`aftercommit_queue_jobs{` + q + `,state="retryable"}`: retryable,
		`aftercommit_queue_jobs{` + q + `,state="running"}`:   running,
		`aftercommit_queue_jobs{` + q + `,state="scheduled"}`: scheduled,
		`aftercommit_queue_stuck_jobs{` + q + `}`:             stuck,
	}
}

const oldestAgeKey = `aftercommit_queue_oldest_available_age_seconds{queue="q_alpha"}`

// The outbox gauges' keys.
const (
	outboxDepthKey  = "aftercommit_outbox_depth"
	outboxOldestKey = "aftercommit_outbox_oldest_age_seconds"
	outboxDeadKey   = "aftercommit_outbox_dead_rows"
)

// emptyOutbox are the outbox gauges of an empty outbox: always reported.
func emptyOutbox() map[string]float64 {
	return map[string]float64{outboxDepthKey: 0, outboxOldestKey: 0, outboxDeadKey: 0}
}

func TestQueueMetrics(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	// Every state of a job in queue q_alpha; q_idle is known to River (a
	// client works it) and has no job.
	_, err := s.Pool.Exec(ctx, `
		INSERT INTO river_job (kind, args, queue, state, scheduled_at, attempted_at, finalized_at, attempt, max_attempts, priority)
		VALUES ('k', '{}', 'q_alpha', 'available', now() - interval '10 s', NULL, NULL, 0, 25, 1),
		       ('k', '{}', 'q_alpha', 'available', now() - interval '5 s',  NULL, NULL, 0, 25, 1),
		       ('k', '{}', 'q_alpha', 'available', now(),                    NULL, NULL, 0, 25, 1),
		       ('k', '{}', 'q_alpha', 'pending',   now(),                    NULL, NULL, 0, 25, 1),
		       ('k', '{}', 'q_alpha', 'retryable', now() + interval '1 min', now() - interval '1 s', NULL, 1, 25, 1),
		       ('k', '{}', 'q_alpha', 'running',   now() - interval '3 min', now() - interval '2 min', NULL, 1, 25, 1),
		       ('k', '{}', 'q_alpha', 'running',   now() - interval '3 min', now() - interval '10 s', NULL, 1, 25, 1),
		       ('k', '{}', 'q_alpha', 'scheduled', now() + interval '1 h',   NULL, NULL, 0, 25, 1),
		       ('k', '{}', 'q_alpha', 'scheduled', now() + interval '2 h',   NULL, NULL, 0, 25, 1),
		       ('k', '{}', 'q_alpha', 'completed', now() - interval '1 h',   now() - interval '1 h', now(), 1, 25, 1),
		       ('k', '{}', 'q_alpha', 'discarded', now() - interval '1 h',   now() - interval '1 h', now(), 25, 25, 1);
		INSERT INTO river_queue (name, metadata, created_at, updated_at) VALUES ('q_idle', '{}', now(), now())`)
	require.NoError(t, err)

	var logs testlog.Buffer
	fresh, err := jobs.NewQueueMetrics(s.Pool, &jobs.QueueMetricsConfig{
		CacheFor:   -1,
		StuckAfter: time.Minute,
		Logger:     slog.New(slog.NewTextHandler(&logs, nil)),
	})
	require.NoError(t, err)
	cached, err := jobs.NewQueueMetrics(s.Pool, &jobs.QueueMetricsConfig{CacheFor: time.Hour, ConstLabels: prometheus.Labels{"cache": "hour"}})
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	reg.MustRegister(fresh)
	cachedReg := prometheus.NewRegistry()
	cachedReg.MustRegister(cached)

	want := queueGauges("q_alpha", 3, 1, 1, 2, 2, 1)
	for k, v := range queueGauges("q_idle", 0, 0, 0, 0, 0, 0) {
		want[k] = v
	}
	want[`aftercommit_queue_oldest_available_age_seconds{queue="q_idle"}`] = 0
	want["aftercommit_queue_read_errors_total"] = 0
	for k, v := range emptyOutbox() {
		want[k] = v
	}

	got := gaugesAndCounters(t, reg)
	// The oldest available job was due 10 s before the insert.
	require.InDelta(t, 10, got[oldestAgeKey], 2)
	want[oldestAgeKey] = got[oldestAgeKey]
	require.Equal(t, want, got)
	require.Len(t, gaugesAndCounters(t, cachedReg), len(want), "the cached collector read once")

	// One more available job: a read on every scrape sees it; the cached
	// collector answers from its first read.
	_, err = s.Pool.Exec(ctx, `INSERT INTO river_job (kind, args, queue, state, scheduled_at, max_attempts, priority)
		VALUES ('k', '{}', 'q_new', 'available', now(), 25, 1)`)
	require.NoError(t, err)
	got = gaugesAndCounters(t, reg)
	require.InDelta(t, 1, got[`aftercommit_queue_jobs{queue="q_new",state="available"}`], 0)
	require.InDelta(t, 0, got[`aftercommit_queue_jobs{queue="q_new",state="running"}`], 0, "every live state of a new queue has a series")
	require.InDelta(t, 0, got[`aftercommit_queue_stuck_jobs{queue="q_new"}`], 0)
	_, ok := gaugesAndCounters(t, cachedReg)[`aftercommit_queue_jobs{cache="hour",queue="q_new",state="available"}`]
	require.False(t, ok, "cached for an hour")
	require.Empty(t, logs.String())
}

// A read that fails or takes longer than Timeout leaves the gauges out of
// the scrape (never stale values), counts an error and logs once; the next
// read that works brings them back and logs that.
func TestQueueMetricsReadFails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	var logs testlog.Buffer
	qm, err := jobs.NewQueueMetrics(s.Pool, &jobs.QueueMetricsConfig{
		CacheFor: -1,
		Timeout:  200 * time.Millisecond,
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
	})
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	reg.MustRegister(qm)
	// A first read within the default timeout (a loaded machine's first
	// read may exceed 200ms): no queue known, no job.
	relaxed, err := jobs.NewQueueMetrics(s.Pool, &jobs.QueueMetricsConfig{CacheFor: -1})
	require.NoError(t, err)
	relaxedReg := prometheus.NewRegistry()
	relaxedReg.MustRegister(relaxed)
	want := emptyOutbox()
	want["aftercommit_queue_read_errors_total"] = 0
	require.Equal(t, want, gaugesAndCounters(t, relaxedReg), "no queue known, no job: the outbox gauges and the error counter")

	// Another transaction holds river_job: reads time out.
	tx, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `LOCK TABLE river_job IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)
	for i := 1; i <= 2; i++ {
		start := time.Now()
		require.Equal(t, map[string]float64{"aftercommit_queue_read_errors_total": float64(i)}, gaugesAndCounters(t, reg))
		require.Less(t, time.Since(start), 2*time.Second, "the read gave up after its timeout")
	}
	require.NoError(t, tx.Rollback(ctx))

	_, err = s.Pool.Exec(ctx, `INSERT INTO river_job (kind, args, queue, state, scheduled_at, max_attempts, priority)
		VALUES ('k', '{}', 'q', 'available', now(), 25, 1)`)
	require.NoError(t, err)
	got := gaugesAndCounters(t, reg)
	require.InDelta(t, 1, got[`aftercommit_queue_jobs{queue="q",state="available"}`], 0)
	require.InDelta(t, 2, got["aftercommit_queue_read_errors_total"], 0)

	out := logs.String()
	require.Equal(t, 1, strings.Count(out, "level=WARN"), out)
	require.Contains(t, out, `msg="jobs: reading the queue gauges failed; scrapes go without them until a read succeeds" timeout=200ms`)
	require.Equal(t, 1, strings.Count(out, "level=INFO"), out)
	require.Contains(t, out, `msg="jobs: reading the queue gauges works again"`)

	// A server that refuses connections: the same, at once.
	closed, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2")
	require.NoError(t, err)
	t.Cleanup(closed.Close)
	down, err := jobs.NewQueueMetrics(closed, nil)
	require.NoError(t, err)
	downReg := prometheus.NewRegistry()
	downReg.MustRegister(down)
	require.Equal(t, map[string]float64{"aftercommit_queue_read_errors_total": 1}, gaugesAndCounters(t, downReg))
}

// With LeaderClientID only River's elected leader reads and reports; the
// others report the error counter alone and read nothing.
func TestQueueMetricsLeaderOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	_, err := s.Pool.Exec(ctx, `
		INSERT INTO river_job (kind, args, queue, state, scheduled_at, max_attempts, priority)
		VALUES ('k', '{}', 'q', 'available', now(), 25, 1);
		INSERT INTO river_leader (leader_id, elected_at, expires_at) VALUES ('leader', now(), now() + interval '15 s')`)
	require.NoError(t, err)

	collect := func(clientID string) map[string]float64 {
		qm, err := jobs.NewQueueMetrics(s.Pool, &jobs.QueueMetricsConfig{LeaderClientID: clientID, CacheFor: -1})
		require.NoError(t, err)
		reg := prometheus.NewRegistry()
		reg.MustRegister(qm)
		return gaugesAndCounters(t, reg)
	}
	require.InDelta(t, 1, collect("leader")[`aftercommit_queue_jobs{queue="q",state="available"}`], 0)
	require.Len(t, collect("leader"), 11, "7 series of queue q, 3 of the outbox, the error counter")
	require.Equal(t, map[string]float64{"aftercommit_queue_read_errors_total": 0}, collect("follower"))
	require.Len(t, collect(""), 11, "no LeaderClientID: every process reports")

	// A lapsed term is nobody's.
	_, err = s.Pool.Exec(ctx, `UPDATE river_leader SET expires_at = now() - interval '1 s'`)
	require.NoError(t, err)
	require.Equal(t, map[string]float64{"aftercommit_queue_read_errors_total": 0}, collect("leader"))
}

func TestQueueMetricsConfig(t *testing.T) {
	t.Parallel()
	_, err := jobs.NewQueueMetrics(nil, nil)
	require.EqualError(t, err, "jobs: NewQueueMetrics needs a database")
	s := dbtest.TestSchema(context.Background(), t, nil)
	_, err = jobs.NewQueueMetrics(s.Pool, &jobs.QueueMetricsConfig{StuckAfter: -time.Second})
	require.EqualError(t, err, "jobs: QueueMetricsConfig.StuckAfter (-1s) and Timeout (3s) must not be negative")

	qm, err := jobs.NewQueueMetrics(s.Pool, &jobs.QueueMetricsConfig{Namespace: "acme", StuckAfter: 5 * time.Minute})
	require.NoError(t, err)
	require.Equal(t, 10, describeCount(qm))
	reg := prometheus.NewRegistry()
	reg.MustRegister(qm)
	families, err := reg.Gather()
	require.NoError(t, err)
	var names []string
	for _, f := range families {
		// The oldest snapshot's gauges come and go with other sessions.
		if !strings.HasPrefix(f.GetName(), "acme_db_oldest_xmin_") {
			names = append(names, f.GetName())
		}
	}
	require.Equal(t, []string{"acme_db_dead_tuples",
		"acme_outbox_dead_rows", "acme_outbox_depth", "acme_outbox_oldest_age_seconds", "acme_queue_read_errors_total"}, names,
		"no queue: the database's gauges, the outbox gauges and the error counter")
	descs := make(chan *prometheus.Desc, 10)
	qm.Describe(descs)
	close(descs)
	var all []string
	for d := range descs {
		all = append(all, d.String())
	}
	require.Contains(t, strings.Join(all, "\n"), "attempted more than 5m0s ago")
}

// The outbox gauges read outbox_jobs and outbox_dead_jobs: committed rows
// only, the oldest row's age, the dead rows; only when the process reports.
func TestQueueMetricsOutbox(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	qm, err := jobs.NewQueueMetrics(s.Pool, &jobs.QueueMetricsConfig{CacheFor: -1})
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	reg.MustRegister(qm)
	outbox := func() map[string]float64 {
		got := gaugesAndCounters(t, reg)
		return map[string]float64{outboxDepthKey: got[outboxDepthKey], outboxOldestKey: got[outboxOldestKey], outboxDeadKey: got[outboxDeadKey]}
	}
	require.Equal(t, emptyOutbox(), outbox(), "an empty outbox: every gauge at 0")

	// Three rows written 90 s, 30 s and 0 s before the insert's now(), two
	// dead rows; a row of a transaction still open is not counted.
	start := time.Now()
	_, err = s.Pool.Exec(ctx, `
		INSERT INTO outbox_jobs (kind, args, created_at)
		VALUES ('k', '{"id": 1}', now() - interval '90 s'),
		       ('k', '{"id": 2}', now() - interval '30 s'),
		       ('k', '{"id": 3}', now());
		INSERT INTO outbox_dead_jobs (id, kind, args, tx_id, created_at, reason)
		VALUES (100, 'nope', '{}', pg_current_xact_id(), now() - interval '1 h', 'unknown kind "nope"'),
		       (101, 'k', '{"id": "x"}', pg_current_xact_id(), now() - interval '1 h', 'args do not decode')`)
	require.NoError(t, err)
	open, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = open.Rollback(context.WithoutCancel(ctx)) })
	_, err = open.Exec(ctx, `INSERT INTO outbox_jobs (kind, args, created_at) VALUES ('k', '{}', now() - interval '1 h')`)
	require.NoError(t, err)

	got := outbox()
	elapsed := time.Since(start).Seconds()
	// The oldest row's age is 90 s plus the time between the insert and
	// the read, which this test measured around both.
	require.GreaterOrEqual(t, got[outboxOldestKey], 90.0)
	require.LessOrEqual(t, got[outboxOldestKey], 90+elapsed)
	require.Equal(t, map[string]float64{outboxDepthKey: 3, outboxOldestKey: got[outboxOldestKey], outboxDeadKey: 2}, got)

	// Committed, the open transaction's row (an hour old) is counted.
	require.NoError(t, open.Commit(ctx))
	got = outbox()
	require.Equal(t, 4.0, got[outboxDepthKey])
	require.GreaterOrEqual(t, got[outboxOldestKey], 3600.0)
	require.LessOrEqual(t, got[outboxOldestKey], 3600+time.Since(start).Seconds())

	// Relayed (deleted), the outbox is empty again: age 0, dead rows stay.
	// A row dated in the future (another clock) has age 0, not negative.
	_, err = s.Pool.Exec(ctx, `DELETE FROM outbox_jobs;
		INSERT INTO outbox_jobs (kind, args, created_at) VALUES ('k', '{}', now() + interval '1 min')`)
	require.NoError(t, err)
	require.Equal(t, map[string]float64{outboxDepthKey: 1, outboxOldestKey: 0, outboxDeadKey: 2}, outbox())
	_, err = s.Pool.Exec(ctx, `DELETE FROM outbox_jobs`)
	require.NoError(t, err)
	require.Equal(t, map[string]float64{outboxDepthKey: 0, outboxOldestKey: 0, outboxDeadKey: 2}, outbox())

	// A process that does not lead reports no outbox gauge.
	follower, err := jobs.NewQueueMetrics(s.Pool, &jobs.QueueMetricsConfig{CacheFor: -1, LeaderClientID: "follower"})
	require.NoError(t, err)
	followerReg := prometheus.NewRegistry()
	followerReg.MustRegister(follower)
	require.Equal(t, map[string]float64{"aftercommit_queue_read_errors_total": 0}, gaugesAndCounters(t, followerReg))
}

// TestVacuumHoldbackGauges: a session holds a REPEATABLE READ snapshot open;
// db_vacuum_holdback names it, with its application_name and age, and the
// gauge of the oldest snapshot is at least as old (other tests' sessions of
// the shared server may be older). The dead tuples of River's and
// aftercommit's tables are reported per table.
func TestVacuumHoldbackGauges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	app := "holder-" + s.Name
	_, _ = s.HoldSnapshot(ctx, t, app, nil)
	const held = 1200 * time.Millisecond
	time.Sleep(held)

	var (
		pid      int32
		heldFor  time.Duration
		xminAge  int64
		holderOf string
	)
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT holder, pid, held_for, xmin_age FROM db_vacuum_holdback WHERE application_name = $1`, app).
		Scan(&holderOf, &pid, &heldFor, &xminAge))
	require.Equal(t, "session", holderOf)
	require.GreaterOrEqual(t, heldFor, held)
	require.GreaterOrEqual(t, xminAge, int64(0)) // 0 while no transaction took an id since

	qm, err := jobs.NewQueueMetrics(s.Pool, nil)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	reg.MustRegister(qm)
	got := allGaugesAndCounters(t, reg)
	var oldest []float64
	tables := map[string]bool{}
	for key, v := range got {
		switch {
		case strings.HasPrefix(key, "aftercommit_db_oldest_xmin_age_seconds{"):
			oldest = append(oldest, v)
		case strings.HasPrefix(key, "aftercommit_db_dead_tuples{"):
			tables[strings.TrimSuffix(strings.TrimPrefix(key, `aftercommit_db_dead_tuples{table="`), `"}`)] = true
		}
	}
	require.Len(t, oldest, 1, "one series: the oldest snapshot's")
	require.GreaterOrEqual(t, oldest[0], held.Seconds())
	for _, table := range []string{"river_job", "outbox_jobs", "outbox_events", "job_locks", "job_rate_limits"} {
		require.True(t, tables[table], "dead tuples of %s", table)
	}
	if held := `aftercommit_db_oldest_xmin_age_seconds{application_name="` + app + `",holder="session",pid="` + fmt.Sprint(pid) + `",usename="postgres"}`; got[held] > 0 {
		t.Logf("the oldest snapshot is the test's own: %s", held)
	}
}
