package bench

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// The scenarios of the outbox table and its relay (issue 15): how fast a
// relay moves a backlog, what waking it costs the writers, the sustained
// end-to-end rate, and one hot queue-lock key.
func init() {
	registry = append(registry, relayThroughputScenario, relayNotifyScenario, relayLatencyScenario, sustainedScenario, hotKeyScenario,
		outboxSizeScenario)
}

// Sizes of the relay scenarios.
const (
	// relayBacklog is the backlog relay_throughput moves at Scale 1.
	relayBacklog = 100_000
	// notifyClients commit at once in relay_notify.
	notifyClients = 8
	// sustainedClients enqueue at once in sustained.
	sustainedClients = 8
	// hotKeyClients commit at once on the one key of hot_key.
	hotKeyClients = 32
	// depthSampleEvery is how often sustained samples the outbox depth.
	depthSampleEvery = 100 * time.Millisecond
	// waitingSampleEvery is how often hot_key counts the waiting jobs of
	// its key.
	waitingSampleEvery = 10 * time.Millisecond
)

// stopAfter stops a River client or a relay within 30 s of the end of a
// side, whatever ctx has become.
func stopAfter(ctx context.Context, stop func(context.Context) error) {
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_ = stop(stopCtx)
}

// relayThroughputScenario: a backlog of outbox rows moved into river_job by
// relay.Drain, against River's InsertManyFastTx of the same jobs in
// transactions of the same size.
func relayThroughputScenario(cfg Config) *Scenario {
	n := max(100, int(relayBacklog*cfg.Scale))
	var client *river.Client[pgx.Tx]
	var reg *jobs.Registry
	count := func(ctx context.Context, env *Env) error {
		var rows, left int
		if err := env.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM river_job), (SELECT count(*) FROM outbox_jobs)`).Scan(&rows, &left); err != nil {
			return err
		}
		if rows != n || left != 0 {
			return fmt.Errorf("%d jobs and %d outbox rows left, want %d and 0", rows, left, n)
		}
		return nil
	}
	insertManyFast := func(batch int) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := env.Truncate(ctx, "river_job", "outbox_jobs"); err != nil {
				return nil, err
			}
			params := make([]river.InsertManyParams, n)
			for i := range params {
				params[i] = river.InsertManyParams{Args: noopArgs{N: i}}
			}
			start := time.Now()
			for from := 0; from < n; from += batch {
				if err := pgx.BeginFunc(ctx, env.Pool, func(tx pgx.Tx) error {
					_, err := client.InsertManyFastTx(ctx, tx, params[from:min(n, from+batch)])
					return err
				}); err != nil {
					return nil, err
				}
			}
			took := time.Since(start)
			return Sample{"jobs/s": float64(n) / took.Seconds()}, count(ctx, env)
		}
	}
	// takeAndCopy is the least any relay does, one batch at a time: take
	// rows with the relay's statement (its shape: DELETE … RETURNING the
	// columns a job needs) and COPY as many jobs, built beforehand, in the
	// same transaction. No decode, no plan, no River per-row work beyond
	// the baseline's.
	takeAndCopy := func(batch int) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := writeBacklog(ctx, env, n); err != nil {
				return nil, err
			}
			params := make([]river.InsertManyParams, batch)
			for i := range params {
				params[i] = river.InsertManyParams{Args: noopArgs{N: i}}
			}
			take := `DELETE FROM outbox_jobs WHERE id = ANY (ARRAY(
    SELECT id FROM outbox_jobs ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
RETURNING id, kind, args::text, queue, priority, max_attempts, scheduled_at,
          metadata::text, options::text, tx_id::text, created_at`
			start := time.Now()
			for moved := 0; moved < n; {
				if err := pgx.BeginFunc(ctx, env.Pool, func(tx pgx.Tx) error {
					rows, err := tx.Query(ctx, take, batch)
					if err != nil {
						return err
					}
					taken := 0
					for rows.Next() {
						taken++
					}
					if rows.Err() != nil {
						return rows.Err()
					}
					if taken == 0 {
						return fmt.Errorf("the backlog ran out after %d of %d rows", moved, n)
					}
					moved += taken
					_, err = client.InsertManyFastTx(ctx, tx, params[:taken])
					return err
				}); err != nil {
					return nil, err
				}
			}
			took := time.Since(start)
			return Sample{"jobs/s": float64(n) / took.Seconds()}, count(ctx, env)
		}
	}
	drain := func(rc relay.Config, relays int) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := writeBacklog(ctx, env, n); err != nil {
				return nil, err
			}
			rc.Schema, rc.Logger = env.Schema, env.Logger
			rls := make([]*relay.Relay, relays)
			for i := range rls {
				var err error
				if rls[i], err = jobs.NewRelay(env.Pool, client, reg, &rc); err != nil {
					return nil, err
				}
			}
			// Relays share a backlog as several cmd/worker processes do:
			// each takes the oldest rows no other relay holds.
			var (
				mu      sync.Mutex
				wg      sync.WaitGroup
				res     relay.MoveResult
				failure error
			)
			start := time.Now()
			for _, rl := range rls {
				wg.Go(func() {
					r, err := rl.Drain(ctx)
					mu.Lock()
					defer mu.Unlock()
					res.Rows, res.Inserted = res.Rows+r.Rows, res.Inserted+r.Inserted
					failure = cmp.Or(failure, err)
				})
			}
			wg.Wait()
			if failure != nil {
				return nil, failure
			}
			took := time.Since(start)
			if res.Rows != n || res.Inserted != n {
				return nil, fmt.Errorf("drain moved %d rows into %d jobs, want %d", res.Rows, res.Inserted, n)
			}
			return Sample{"jobs/s": float64(n) / took.Seconds()}, count(ctx, env)
		}
	}
	return &Scenario{
		Name:    "relay_throughput",
		Title:   fmt.Sprintf("a backlog of %d outbox rows moved into river_job by relay.Drain (jobs.NewRelay), vs River's InsertManyFastTx of the same jobs in transactions of the same size", n),
		Metrics: []Metric{{"jobs/s", true}},
		Setup: func(_ context.Context, env *Env) error {
			reg = jobs.NewRegistry()
			jobs.AddWorker(reg, river.QueueDefault, noopWorker{})
			var err error
			client, _, err = insertOnly(env, reg)
			return err
		},
		Sides: []Side{
			{Name: "insert_many_fast_1000", Note: "River InsertManyFastTx (COPY), 1,000 jobs per transaction", Run: insertManyFast(1000)},
			{Name: "relay_1000", Note: fmt.Sprintf("relay.Drain, BatchSize 1000, CopyMinJobs %d, Movers %d (the defaults)", relay.CopyMinJobsDefault, relay.MoversDefault),
				Run: drain(relay.Config{BatchSize: 1000}, 1)},
			{Name: "relay_1000_1_mover", Note: "relay.Drain, BatchSize 1000, Movers 1 (one batch at a time)",
				Run: drain(relay.Config{BatchSize: 1000, Movers: 1}, 1)},
			{Name: "take_copy_floor_1000", Note: "the floor of one mover: the relay's take and a COPY of ready-made jobs per transaction, nothing else",
				Run: takeAndCopy(1000)},
			{Name: "relay_1000_no_copy", Note: "relay.Drain, BatchSize 1000, CopyMinJobs -1 (River's multi-row InsertManyTx)",
				Run: drain(relay.Config{BatchSize: 1000, CopyMinJobs: -1}, 1)},
			{Name: "relay_1000_2_relays", Note: "two relays (two cmd/worker processes) draining the backlog at once, BatchSize 1000",
				Run: drain(relay.Config{BatchSize: 1000}, 2)},
			{Name: "insert_many_fast_5000", Note: "River InsertManyFastTx (COPY), 5,000 jobs per transaction", Run: insertManyFast(5000)},
			{Name: "relay_5000", Note: "relay.Drain, BatchSize 5000, COPY", Run: drain(relay.Config{BatchSize: 5000}, 1)},
		},
		Goals: []Goal{{Side: "relay_1000", AtLeast: 0.8, Text: "≥ 0.8× InsertManyFast in batches of the same size"}},
	}
}

// writeBacklog empties river_job and outbox_jobs and writes n outbox rows
// of noopArgs, fast and untimed.
func writeBacklog(ctx context.Context, env *Env, n int) error {
	if err := env.Truncate(ctx, "river_job", "outbox_jobs"); err != nil {
		return err
	}
	if _, err := env.Pool.Exec(ctx, `
INSERT INTO outbox_jobs (kind, args) SELECT 'bench.noop', jsonb_build_object('n', i) FROM generate_series(1, $1) i`, n); err != nil {
		return err
	}
	_, err := env.Pool.Exec(ctx, `ANALYZE outbox_jobs`)
	return err
}

// startRelay starts a relay of reg on env's schema with rc (whose Schema
// and Logger it sets), and returns its stop.
func startRelay(ctx context.Context, env *Env, client *river.Client[pgx.Tx], reg *jobs.Registry, rc relay.Config) (func(), error) {
	rc.Schema, rc.Logger = env.Schema, env.Logger
	rl, err := jobs.NewRelay(env.Pool, client, reg, &rc)
	if err != nil {
		return nil, err
	}
	if err := rl.Start(ctx); err != nil {
		return nil, err
	}
	return func() { stopRelay(ctx, rl) }, nil
}

// relayStopWait bounds how long stopRelay waits. Relay.Stop ends the move
// loop at once but waits for the listener too, which only returns on a
// notification or when Stop's context ends (outbox/relay: listenOnce does
// not watch the stop channel): without a bound, Stop after the load takes
// all of its context's time.
const relayStopWait = 200 * time.Millisecond

// startWorking starts client and, with withRelay, a relay of reg's defaults
// beside it, as a cmd/worker process runs them; stop stops both.
func startWorking(ctx context.Context, env *Env, client *river.Client[pgx.Tx], reg *jobs.Registry, withRelay bool) (stop func(), err error) {
	if err := client.Start(ctx); err != nil {
		return nil, err
	}
	stopRelay := func() {}
	if withRelay {
		if stopRelay, err = startRelay(ctx, env, client, reg, relay.Config{}); err != nil {
			stopAfter(ctx, client.Stop)
			return nil, err
		}
	}
	return func() {
		stopRelay()
		stopAfter(ctx, client.Stop)
	}, nil
}

// stopRelay stops rl, cutting its listener off after relayStopWait.
func stopRelay(ctx context.Context, rl *relay.Relay) {
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), relayStopWait)
	defer cancel()
	_ = rl.Stop(stopCtx)
}

// stopClient stops client, giving its jobs 30 s to finish, even when ctx
// is done.
func stopClient(ctx context.Context, client *river.Client[pgx.Tx]) {
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_ = client.Stop(stopCtx)
}

// pingTx commits one pings row and, unless ob is nil, its job args(id)
// through ob.
func pingTx(ob *outbox.Outbox, pool *pgxpool.Pool, args func(id int64) river.JobArgs) func(ctx context.Context) error {
	const insertPing = `INSERT INTO pings (note) VALUES ('bench') RETURNING id`
	if ob == nil {
		return func(ctx context.Context) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				var id int64
				return tx.QueryRow(ctx, insertPing).Scan(&id)
			})
		}
	}
	return func(ctx context.Context) error {
		_, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			var id int64
			if err := tx.QueryRow(ctx, insertPing).Scan(&id); err != nil {
				return err
			}
			return tx.Enqueue(args(id), nil)
		})
		return err
	}
}

func pingJob(id int64) river.JobArgs { return pingArgs{PingID: id} }

// relayNotifyScenario: what the writer's notification to the relays costs,
// at 8 clients, with a relay running.
func relayNotifyScenario(Config) *Scenario {
	side := func(interval time.Duration) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := env.Truncate(ctx, "pings", "river_job", "outbox_jobs"); err != nil {
				return nil, err
			}
			reg := jobs.NewRegistry()
			jobs.AddWorker(reg, river.QueueDefault, pingWorker{})
			client, _, err := insertOnly(env, reg)
			if err != nil {
				return nil, err
			}
			ob, err := jobs.NewOutbox(env.Pool, client, reg, &outbox.Config{RelayNotifyInterval: interval, Logger: env.Logger})
			if err != nil {
				return nil, err
			}
			stop, err := startRelay(ctx, env, client, reg, relay.Config{})
			if err != nil {
				return nil, err
			}
			defer stop()
			v, err := loop(ctx, notifyClients, env.Duration, pingTx(ob, env.Pool, pingJob))
			if err != nil {
				return nil, err
			}
			return Sample{"tx/s": v}, nil
		}
	}
	return &Scenario{
		Name:    "relay_notify",
		Title:   fmt.Sprintf("what waking the relays costs the writers: %d clients committing a row and its job (outbox path), a relay running", notifyClients),
		Metrics: []Metric{{"tx/s", true}},
		Sides: []Side{
			{Name: "notify_10ms", Note: "RelayNotifyInterval 10ms (the default): a pg_notify with one COMMIT per 10 ms at most", Run: side(0)},
			{Name: "notify_never", Note: "RelayNotifyInterval -1: no notification, the relay's poll alone", Run: side(-1)},
			{Name: "notify_every_tx", Note: "RelayNotifyInterval 1ns: a pg_notify with every COMMIT", Run: side(time.Nanosecond)},
		},
	}
}

// relayLatencyScenario: the latency scenario's outbox side with the
// settings that bound it turned: how often the writers notify the relays,
// the relay's longest poll, River's fetch cooldown.
func relayLatencyScenario(Config) *Scenario {
	var round atomic.Int64
	river1ms := func(env *Env) *river.Config {
		c := shippedRiver(env)
		c.FetchCooldown = time.Millisecond
		return c
	}
	return &Scenario{
		Name:    "relay_latency",
		Title:   "enqueue-to-start latency through outbox_jobs and a relay (as latency/outbox_relay), with its settings turned",
		Metrics: latencyMetrics(),
		Sides: []Side{
			{Name: "defaults", Note: fmt.Sprintf("notify every %s at most, relay poll %s…%s, FetchCooldown %s",
				outbox.RelayNotifyIntervalDefault, relay.PollMinDefault, relay.PollMaxDefault, jobs.FetchCooldownDefault),
				Run: runLatency(latencySide{path: outboxPath, river: shippedRiver}, &round)},
			{Name: "notify_1ms", Note: "RelayNotifyInterval 1ms", Run: runLatency(latencySide{path: outboxPath, river: shippedRiver, notify: time.Millisecond}, &round)},
			{Name: "poll_max_5ms", Note: "relay PollMax 5ms", Run: runLatency(latencySide{path: outboxPath, river: shippedRiver, relay: &relay.Config{PollMax: 5 * time.Millisecond}}, &round)},
			{Name: "notify_1ms_cooldown_1ms", Note: "RelayNotifyInterval 1ms and River FetchCooldown 1ms",
				Run: runLatency(latencySide{path: outboxPath, river: river1ms, notify: time.Millisecond}, &round)},
		},
	}
}

// countingPingWorker counts the ping jobs it works.
type countingPingWorker struct {
	river.WorkerDefaults[pingArgs]
	worked *atomic.Int64
}

func (w countingPingWorker) Work(context.Context, *river.Job[pingArgs]) error {
	w.worked.Add(1)
	return nil
}

// sampleMax runs query (one integer) every period until stop is closed and
// returns the largest value seen.
func sampleMax(ctx context.Context, pool *pgxpool.Pool, period time.Duration, query string, args ...any) (func() (int64, error), chan<- struct{}) {
	stop := make(chan struct{})
	var (
		wg      sync.WaitGroup
		highest int64
		failure error
	)
	wg.Go(func() {
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			var v int64
			if err := pool.QueryRow(ctx, query, args...).Scan(&v); err != nil {
				if ctx.Err() == nil {
					failure = err
				}
				return
			}
			highest = max(highest, v)
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	return func() (int64, error) { wg.Wait(); return highest, failure }, stop
}

// sustainedScenario: clients enqueue through InTx at their best rate while
// workers complete the jobs, on the direct path and through the outbox
// table and a relay.
func sustainedScenario(Config) *Scenario {
	run := func(direct bool) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := env.Truncate(ctx, "pings", "river_job", "outbox_jobs"); err != nil {
				return nil, err
			}
			var worked atomic.Int64
			reg := jobs.NewRegistry()
			jobs.AddWorker(reg, river.QueueDefault, countingPingWorker{worked: &worked})
			client, err := defaultQueueClient(env, reg, 100, nil)
			if err != nil {
				return nil, err
			}
			ob, err := jobs.NewOutbox(env.Pool, client, reg, &outbox.Config{DirectInsert: direct, Logger: env.Logger})
			if err != nil {
				return nil, err
			}
			stop, err := startWorking(ctx, env, client, reg, !direct)
			if err != nil {
				return nil, err
			}
			defer stop()
			depth, stopSampling := sampleMax(ctx, env.Pool, depthSampleEvery, `SELECT count(*) FROM outbox_jobs`)
			before, start := worked.Load(), time.Now()
			enqueued, err := loop(ctx, sustainedClients, env.Duration, pingTx(ob, env.Pool, pingJob))
			done, took := worked.Load()-before, time.Since(start)
			close(stopSampling)
			maxDepth, serr := depth()
			if err != nil {
				return nil, err
			}
			if serr != nil {
				return nil, serr
			}
			return Sample{"completed/s": float64(done) / took.Seconds(), "enqueued/s": enqueued, "max outbox depth": float64(maxDepth)}, nil
		}
	}
	return &Scenario{
		Name: "sustained",
		Title: fmt.Sprintf("end to end: %d clients commit a row and its job through outbox.InTx at their best rate for --duration while 100 workers complete no-op jobs; outbox depth sampled every %s",
			sustainedClients, depthSampleEvery),
		Metrics: []Metric{{"completed/s", true}, {"enqueued/s", true}, {"max outbox depth", false}},
		Sides: []Side{
			{Name: "direct", Note: "DirectInsert: River's insert into river_job in the transaction", Run: run(true)},
			{Name: "outbox_relay", Note: "outbox_jobs (the default) + a relay beside the client, defaults", Run: run(false)},
		},
		Goals: []Goal{{Side: "outbox_relay", AtLeast: 1.0, Text: "completed jobs/s ≥ 1.0× the direct path's"}},
	}
}

// hotKeyArgs is one queue-locked job per key: every enqueue of hot_key is
// for the same key.
type hotKeyArgs struct {
	Key    string `json:"key" jobs:"queue_lock"`
	PingID int64  `json:"ping_id"`
}

func (hotKeyArgs) Kind() string { return "bench.hot_key" }

type hotKeyWorker struct {
	river.WorkerDefaults[hotKeyArgs]
}

func (hotKeyWorker) Work(context.Context, *river.Job[hotKeyArgs]) error { return nil }

func hotKeyJob(id int64) river.JobArgs { return hotKeyArgs{Key: "hot", PingID: id} }

// hotKeyScenario: many clients commit a row and a queue-locked job for one
// key, with a worker running, while the waiting jobs of the key are
// counted.
func hotKeyScenario(Config) *Scenario {
	const waiting = `SELECT count(*) FROM river_job WHERE kind = 'bench.hot_key' AND state IN ('available', 'scheduled', 'retryable', 'pending')`
	run := func(withJob, direct, working bool) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := env.Truncate(ctx, "pings", "river_job", "outbox_jobs"); err != nil {
				return nil, err
			}
			reg := jobs.NewRegistry()
			jobs.AddWorker(reg, river.QueueDefault, hotKeyWorker{})
			client, err := defaultQueueClient(env, reg, 10, nil)
			if err != nil {
				return nil, err
			}
			ob, err := jobs.NewOutbox(env.Pool, client, reg, &outbox.Config{DirectInsert: direct, Logger: env.Logger})
			if err != nil {
				return nil, err
			}
			if !withJob {
				ob = nil
			}
			// Every side but the write's floor runs the relay and the
			// worker, so that they differ only in the transactions.
			if working {
				stop, err := startWorking(ctx, env, client, reg, true)
				if err != nil {
					return nil, err
				}
				defer stop()
			}
			most, stopSampling := sampleMax(ctx, env.Pool, waitingSampleEvery, waiting)
			v, err := loop(ctx, hotKeyClients, env.Duration, pingTx(ob, env.Pool, hotKeyJob))
			close(stopSampling)
			maxWaiting, serr := most()
			if err != nil {
				return nil, err
			}
			if serr != nil {
				return nil, serr
			}
			return Sample{"tx/s": v, "max waiting jobs": float64(maxWaiting)}, nil
		}
	}
	return &Scenario{
		Name: "hot_key",
		Title: fmt.Sprintf("%d clients each commit a row and a queue-locked job for the SAME key, a worker and a relay running; waiting jobs of the key counted every %s",
			hotKeyClients, waitingSampleEvery),
		Metrics: []Metric{{"tx/s", true}, {"max waiting jobs", false}},
		Sides: []Side{
			{Name: "no_job", Note: "the row alone (pgx transaction)", Run: run(false, false, true)},
			{Name: "outbox", Note: "outbox.InTx: the row + Enqueue into outbox_jobs; the relay coalesces the key", Run: run(true, false, true)},
			{Name: "outbox_write_only", Note: "the same transactions with no relay nor worker running (the rows pile up): what the write alone costs", Run: run(true, false, false)},
			{Name: "direct", Note: "outbox.InTx with DirectInsert: the row + the queue-locked insert into river_job", Run: run(true, true, true)},
		},
		Goals: []Goal{
			{Side: "outbox", AtLeast: 0.9, Text: "≥ 0.9× the tx/s without the job"},
			{Side: "outbox", Metric: "max waiting jobs", Absolute: true, AtMost: 1, Text: "at most one job waiting for the key"},
			{Side: "direct", Metric: "max waiting jobs", Absolute: true, AtMost: 1, Text: "at most one job waiting for the key"},
		},
	}
}

// relayScenarioNames are the scenarios of this file and outboxsize.go, for
// the tests.
var relayScenarioNames = []string{"relay_throughput", "relay_notify", "relay_latency", "sustained", "hot_key", "outbox_size"}
