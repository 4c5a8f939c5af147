package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
)

// Defaults of QueueMetricsConfig.
const (
	// QueueMetricsStuckAfterDefault is River's default JobTimeout, the
	// threshold of the stuck_jobs view when nothing else is set.
	QueueMetricsStuckAfterDefault = river.JobTimeoutDefault
	// QueueMetricsTimeoutDefault bounds one read, well within Prometheus'
	// default scrape timeout of 10 s.
	QueueMetricsTimeoutDefault = 3 * time.Second
	// QueueMetricsCacheForDefault is how long one read answers the scrapes
	// that follow it: two Prometheus servers scraping every worker every
	// 15 s cost one read per worker per 15 s, not two.
	QueueMetricsCacheForDefault = 10 * time.Second
)

// liveJobStates are the states of the jobs not finalized yet, the state
// label of <ns>_queue_jobs: each queue has a series for every one of them.
var liveJobStates = [...]string{"available", "pending", "retryable", "running", "scheduled"}

// QueueMetricsDB is what QueueMetrics needs of a database: *pgxpool.Pool
// satisfies it. River's tables are found through its search_path, like
// every table of the project.
type QueueMetricsDB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// QueueMetricsConfig tunes QueueMetrics. A nil *QueueMetricsConfig takes
// every default.
type QueueMetricsConfig struct {
	// Namespace prefixes every metric name, as MetricsConfig.Namespace.
	//
	// Defaults to MetricsNamespaceDefault ("aftercommit").
	Namespace string

	// ConstLabels are added to every metric.
	//
	// Defaults to none.
	ConstLabels prometheus.Labels

	// StuckAfter is how long a job may run before it counts as stuck, as
	// the stuck_jobs view's timeout: set it to the client's JobTimeout.
	//
	// Defaults to QueueMetricsStuckAfterDefault (1 minute).
	StuckAfter time.Duration

	// Timeout bounds one read of the database. A read that fails or takes
	// longer leaves the queue gauges out of that scrape (they are never
	// reported stale) and counts in <ns>_queue_read_errors_total.
	//
	// Defaults to QueueMetricsTimeoutDefault (3 s).
	Timeout time.Duration

	// CacheFor is how long the result of a read answers later scrapes
	// without a new read. Scrapes that arrive while a read runs wait for
	// it instead of starting their own.
	//
	// Defaults to QueueMetricsCacheForDefault (10 s). Negative: read on
	// every scrape.
	CacheFor time.Duration

	// LeaderClientID, when set to a River client's ID (Client.ID()), makes
	// the gauges read and reported only while that client is River's
	// elected leader (its row in river_leader): N worker processes then
	// cost one read per scrape interval, not N. The others report only
	// <ns>_queue_read_errors_total; aggregate the gauges with max by
	// (queue) so that a change of leader goes unnoticed.
	//
	// Defaults to "": every process reads and reports.
	LeaderClientID string

	// Logger is told when reads start failing and when they recover (not
	// at every failed scrape).
	//
	// Defaults to a logger that discards.
	Logger *slog.Logger
}

// withDefaults returns a copy of c with defaults filled in.
func (c *QueueMetricsConfig) withDefaults() QueueMetricsConfig {
	var out QueueMetricsConfig
	if c != nil {
		out = *c
	}
	if out.Namespace == "" {
		out.Namespace = MetricsNamespaceDefault
	}
	if out.StuckAfter == 0 {
		out.StuckAfter = QueueMetricsStuckAfterDefault
	}
	if out.Timeout == 0 {
		out.Timeout = QueueMetricsTimeoutDefault
	}
	if out.CacheFor == 0 {
		out.CacheFor = QueueMetricsCacheForDefault
	}
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}
	return out
}

// QueueMetrics is a prometheus.Collector of what waits in River's job table:
// the backlog and the stuck jobs, which the job metrics (Metrics) cannot see
// because they only count what a worker touched. It reads the database when
// scraped (at most once per CacheFor, within Timeout):
//
//   - <ns>_queue_jobs{queue, state}: the jobs of the queue in each state
//     that is not final (available, pending, retryable, running,
//     scheduled); state="available" is the backlog,
//     the jobs due and not yet fetched.
//   - <ns>_queue_oldest_available_age_seconds{queue}: how long the oldest
//     available job of the queue has been due (now() − scheduled_at); 0
//     when none waits. Unlike the queue-latency histogram it grows while no
//     worker fetches anything.
//   - <ns>_queue_stuck_jobs{queue}: running jobs attempted more than
//     StuckAfter ago, the rule of the stuck_jobs view.
//   - <ns>_outbox_depth: rows waiting in outbox_jobs, committed and not
//     yet relayed into River's job table (the outbox_depth view's depth).
//   - <ns>_outbox_oldest_age_seconds: how long the oldest of them has
//     waited (now() − created_at, its transaction's start); 0 when the
//     outbox is empty. It grows while no relay runs.
//   - <ns>_outbox_dead_rows: rows in outbox_dead_jobs, the outbox rows the
//     relay refused, kept with their reason.
//   - <ns>_queue_read_errors_total: reads that failed or timed out.
//
// Every queue River knows (river_queue, where each client working a queue
// registers it) or that holds a live job has all its series, at 0 or not:
// 7 series per queue. The three outbox gauges are always there (when the
// process reports at all).
//
// # Cost
//
// One read is one statement: a count per (queue, state) of the live jobs,
// which Postgres answers from River's fetch index (state, queue, priority,
// scheduled_at, id), plus the running jobs' attempted_at, plus the
// outbox_depth view: a count and min(created_at) of outbox_jobs, which the
// relay keeps near empty, and a count of outbox_dead_jobs. Finalized jobs,
// which River keeps for a day and which the queue_depth view counts, are
// never read. The cost grows with the backlog: 0.4–0.65 s for 200,000
// available jobs on a busy two-core machine (the queue_depth view: 1.3–2.5
// s, with a million completed jobs beside them). With LeaderClientID only
// River's leader reads, once per CacheFor at most, whatever the number of
// workers; without it every process does. Processes that report give the
// same values: aggregate them with max (max by (queue) (…)), never sum; the
// rules of deploy/prometheus do.
type QueueMetrics struct {
	db  QueueMetricsDB
	cfg QueueMetricsConfig

	jobsDesc, oldestDesc, stuckDesc                   *prometheus.Desc
	outboxDepthDesc, outboxOldestDesc, outboxDeadDesc *prometheus.Desc
	xminAgeDesc, xminXidsDesc, deadTuplesDesc         *prometheus.Desc
	readErrors                                        prometheus.Counter

	// mu serializes reads: a scrape that arrives during a read waits for
	// it and uses its result.
	mu       sync.Mutex
	last     *queueSnapshot
	lastRead time.Time
	failing  bool
}

var _ prometheus.Collector = (*QueueMetrics)(nil)

// queueSnapshot is the result of one read.
type queueSnapshot struct {
	queues map[string]*queueRow
	// outbox is nil when the process does not report (not the leader).
	outbox *outboxRow
	// xmin is the oldest snapshot holding back vacuum (db_vacuum_holdback);
	// nil when none is seen or the process does not report.
	xmin *xminRow
	// deadTuples are db_table_health's dead tuples, by table.
	deadTuples map[string]float64
}

// xminRow is the session (or prepared transaction, or slot) whose snapshot
// is the oldest.
type xminRow struct {
	holder, application, user, pid string
	xids, age                      float64 // transactions; seconds
}

// outboxRow is what the outbox tables hold.
type outboxRow struct {
	depth     float64
	oldestAge float64 // seconds
	dead      float64
}

// queueRow is what one queue holds.
type queueRow struct {
	jobs      map[string]float64 // by live state
	oldestAge float64            // seconds
	stuck     float64
}

// NewQueueMetrics returns unregistered queue gauges reading db; cfg may be
// nil.
func NewQueueMetrics(db QueueMetricsDB, cfg *QueueMetricsConfig) (*QueueMetrics, error) {
	if db == nil {
		return nil, errors.New("jobs: NewQueueMetrics needs a database")
	}
	c := cfg.withDefaults()
	if c.StuckAfter < 0 || c.Timeout < 0 {
		return nil, fmt.Errorf("jobs: QueueMetricsConfig.StuckAfter (%s) and Timeout (%s) must not be negative", c.StuckAfter, c.Timeout)
	}
	name := func(n string) string { return prometheus.BuildFQName(c.Namespace, "queue", n) }
	return &QueueMetrics{
		db:  db,
		cfg: c,
		jobsDesc: prometheus.NewDesc(name("jobs"),
			"Jobs of the queue in a state that is not final, read from River's job table at scrape; state=\"available\" is the backlog.",
			[]string{"queue", "state"}, c.ConstLabels),
		oldestDesc: prometheus.NewDesc(name("oldest_available_age_seconds"),
			"How long the oldest available job of the queue has been due (now() - scheduled_at), 0 when none waits.",
			[]string{"queue"}, c.ConstLabels),
		stuckDesc: prometheus.NewDesc(name("stuck_jobs"),
			fmt.Sprintf("Running jobs of the queue attempted more than %s ago (the stuck_jobs view's rule).", c.StuckAfter),
			[]string{"queue"}, c.ConstLabels),
		outboxDepthDesc: prometheus.NewDesc(prometheus.BuildFQName(c.Namespace, "outbox", "depth"),
			"Rows waiting in outbox_jobs, committed and not yet relayed into River's job table, read at scrape.",
			nil, c.ConstLabels),
		outboxOldestDesc: prometheus.NewDesc(prometheus.BuildFQName(c.Namespace, "outbox", "oldest_age_seconds"),
			"How long the oldest row of outbox_jobs has waited (now() - created_at, its transaction's start), 0 when the outbox is empty; it grows while no relay runs.",
			nil, c.ConstLabels),
		outboxDeadDesc: prometheus.NewDesc(prometheus.BuildFQName(c.Namespace, "outbox", "dead_rows"),
			"Rows in outbox_dead_jobs: outbox rows the relay refused (unknown kind, args that do not decode, a bad option, too large), kept with the reason until an operator re-enqueues or deletes them.",
			nil, c.ConstLabels),
		xminAgeDesc: prometheus.NewDesc(prometheus.BuildFQName(c.Namespace, "db", "oldest_xmin_age_seconds"),
			"How long the transaction whose snapshot is the oldest in the database has been open: it holds back vacuum of every table, River's included (db_vacuum_holdback). Labels name it: holder (session, prepared transaction, replication slot), application_name, usename, pid. Absent when no snapshot is seen (other roles' sessions need pg_read_all_stats).",
			[]string{"holder", "application_name", "usename", "pid"}, c.ConstLabels),
		xminXidsDesc: prometheus.NewDesc(prometheus.BuildFQName(c.Namespace, "db", "oldest_xmin_age_transactions"),
			"How many transactions old the oldest snapshot of the database is (age(backend_xmin)); same labels as aftercommit_db_oldest_xmin_age_seconds.",
			[]string{"holder", "application_name", "usename", "pid"}, c.ConstLabels),
		deadTuplesDesc: prometheus.NewDesc(prometheus.BuildFQName(c.Namespace, "db", "dead_tuples"),
			"Dead tuples of River's and aftercommit's tables (db_table_health, from pg_stat_user_tables): they grow while a snapshot holds back vacuum.",
			[]string{"table"}, c.ConstLabels),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: c.Namespace, Subsystem: "queue", Name: "read_errors_total", ConstLabels: c.ConstLabels,
			Help: "Reads of the queue gauges that failed or timed out; their scrape had no queue gauges.",
		}),
	}, nil
}

// Describe implements prometheus.Collector.
func (q *QueueMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- q.jobsDesc
	ch <- q.oldestDesc
	ch <- q.stuckDesc
	ch <- q.outboxDepthDesc
	ch <- q.outboxOldestDesc
	ch <- q.outboxDeadDesc
	ch <- q.xminAgeDesc
	ch <- q.xminXidsDesc
	ch <- q.deadTuplesDesc
	q.readErrors.Describe(ch)
}

// Collect implements prometheus.Collector: it reads the database unless a
// read younger than CacheFor answers.
func (q *QueueMetrics) Collect(ch chan<- prometheus.Metric) {
	if snap := q.snapshot(); snap != nil {
		for queue, row := range snap.queues {
			for _, state := range liveJobStates {
				ch <- prometheus.MustNewConstMetric(q.jobsDesc, prometheus.GaugeValue, row.jobs[state], queue, state)
			}
			ch <- prometheus.MustNewConstMetric(q.oldestDesc, prometheus.GaugeValue, row.oldestAge, queue)
			ch <- prometheus.MustNewConstMetric(q.stuckDesc, prometheus.GaugeValue, row.stuck, queue)
		}
		if o := snap.outbox; o != nil {
			ch <- prometheus.MustNewConstMetric(q.outboxDepthDesc, prometheus.GaugeValue, o.depth)
			ch <- prometheus.MustNewConstMetric(q.outboxOldestDesc, prometheus.GaugeValue, o.oldestAge)
			ch <- prometheus.MustNewConstMetric(q.outboxDeadDesc, prometheus.GaugeValue, o.dead)
		}
		if x := snap.xmin; x != nil {
			ch <- prometheus.MustNewConstMetric(q.xminAgeDesc, prometheus.GaugeValue, x.age, x.holder, x.application, x.user, x.pid)
			ch <- prometheus.MustNewConstMetric(q.xminXidsDesc, prometheus.GaugeValue, x.xids, x.holder, x.application, x.user, x.pid)
		}
		for table, n := range snap.deadTuples {
			ch <- prometheus.MustNewConstMetric(q.deadTuplesDesc, prometheus.GaugeValue, n, table)
		}
	}
	q.readErrors.Collect(ch)
}

// snapshot returns a read no older than CacheFor, reading when there is
// none; nil when the read failed.
func (q *QueueMetrics) snapshot() *queueSnapshot {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.last != nil && time.Since(q.lastRead) < q.cfg.CacheFor {
		return q.last
	}

	ctx, cancel := context.WithTimeout(context.Background(), q.cfg.Timeout)
	defer cancel()
	snap, err := q.read(ctx)
	if err != nil {
		q.readErrors.Inc()
		q.last = nil
		if !q.failing {
			q.failing = true
			q.cfg.Logger.WarnContext(ctx, "jobs: reading the queue gauges failed; scrapes go without them until a read succeeds",
				slog.Duration("timeout", q.cfg.Timeout), slog.Any("err", err))
		}
		return nil
	}
	if q.failing {
		q.failing = false
		q.cfg.Logger.InfoContext(ctx, "jobs: reading the queue gauges works again")
	}
	q.last, q.lastRead = snap, time.Now()
	return snap
}

// queueMetricsSQL reads the live jobs per (queue, state), with the age of
// the oldest available one, the stuck jobs per queue ($1: the stuck
// threshold in microseconds), the queues River knows and the outbox (two
// rows of the outbox_depth view: (NULL, 'outbox', depth, oldest age) and
// (NULL, 'outbox_dead', dead rows, NULL)), in one statement: one snapshot
// and one now(). The live states are the index's leading column, so the
// first part is an index-only scan of River's fetch index. With $2, a River
// client ID, it reads nothing unless that client is the leader, and then
// returns the one row (NULL, 'not_leader', 0, NULL).
const queueMetricsSQL = `
WITH reporting AS (
    SELECT $2::text = '' OR EXISTS (
        SELECT 1 FROM river_leader WHERE leader_id = $2::text AND expires_at > now()
    ) AS yes
), outbox AS (
    SELECT depth, greatest(extract(epoch FROM oldest_age), 0)::float8 AS oldest_age, dead
      FROM outbox_depth
     WHERE (SELECT yes FROM reporting)
)
SELECT queue, state::text, count(*),
       CASE WHEN state = 'available'
            THEN greatest(extract(epoch FROM now() - min(scheduled_at)), 0)::float8 END,
       NULL::text[]
  FROM river_job
 WHERE (SELECT yes FROM reporting)
   AND state IN ('available', 'pending', 'retryable', 'running', 'scheduled')
 GROUP BY queue, state
UNION ALL
SELECT queue, 'stuck', count(*), NULL, NULL
  FROM river_job
 WHERE (SELECT yes FROM reporting)
   AND state = 'running' AND attempted_at < now() - $1 * interval '1 microsecond'
 GROUP BY queue
UNION ALL
SELECT name, NULL, 0, NULL, NULL FROM river_queue WHERE (SELECT yes FROM reporting)
UNION ALL
SELECT NULL, 'outbox', depth, oldest_age, NULL FROM outbox
UNION ALL
SELECT NULL, 'outbox_dead', dead, NULL, NULL FROM outbox
UNION ALL
(SELECT NULL, 'xmin', coalesce(xmin_age, 0), greatest(coalesce(extract(epoch FROM held_for), 0), 0)::float8,
        ARRAY[holder, coalesce(application_name, ''), coalesce(usename, ''), coalesce(pid::text, '')]
   FROM db_vacuum_holdback
  WHERE (SELECT yes FROM reporting)
  ORDER BY xmin_age DESC NULLS LAST
  LIMIT 1)
UNION ALL
SELECT NULL, 'dead_tuples', dead_tuples, NULL, ARRAY[table_name] FROM db_table_health WHERE (SELECT yes FROM reporting)
UNION ALL
SELECT NULL, 'not_leader', 0, NULL, NULL WHERE NOT (SELECT yes FROM reporting)`

func (q *QueueMetrics) read(ctx context.Context) (*queueSnapshot, error) {
	rows, err := q.db.Query(ctx, queueMetricsSQL, q.cfg.StuckAfter.Microseconds(), q.cfg.LeaderClientID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	snap := &queueSnapshot{queues: map[string]*queueRow{}}
	for rows.Next() {
		var (
			queue *string
			state *string
			n     int64
			age   *float64
			info  []string
		)
		if err := rows.Scan(&queue, &state, &n, &age, &info); err != nil {
			return nil, err
		}
		if queue == nil {
			// The database's rows, the outbox's two, else not the leader:
			// nothing to report.
			switch st := deref(state); {
			case st == "xmin" && len(info) == 4:
				snap.xmin = &xminRow{holder: info[0], application: info[1], user: info[2], pid: info[3], xids: float64(n), age: deref(age)}
			case st == "dead_tuples" && len(info) == 1:
				if snap.deadTuples == nil {
					snap.deadTuples = map[string]float64{}
				}
				snap.deadTuples[info[0]] = float64(n)
			case st == "outbox" || st == "outbox_dead":
				if snap.outbox == nil {
					snap.outbox = &outboxRow{}
				}
				if st == "outbox" {
					snap.outbox.depth, snap.outbox.oldestAge = float64(n), deref(age)
				} else {
					snap.outbox.dead = float64(n)
				}
			}
			continue
		}
		row := snap.queues[*queue]
		if row == nil {
			row = &queueRow{jobs: map[string]float64{}}
			snap.queues[*queue] = row
		}
		switch {
		case state == nil: // a queue River knows
		case *state == "stuck":
			row.stuck = float64(n)
		default:
			row.jobs[*state] = float64(n)
			if age != nil && !math.IsNaN(*age) {
				row.oldestAge = *age
			}
		}
	}
	return snap, rows.Err()
}

// deref returns *p, or the zero value for a NULL (nil) column.
func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}
