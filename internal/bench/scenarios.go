package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// noopArgs is the job of the worker scenarios: it does nothing.
type noopArgs struct {
	N int `json:"n"`
}

func (noopArgs) Kind() string { return "bench.noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
}

func (noopWorker) Work(context.Context, *river.Job[noopArgs]) error { return nil }

// neededNoopWorker also answers the needed-check, so the middleware does its
// whole job.
type neededNoopWorker struct{ noopWorker }

func (neededNoopWorker) Needed(context.Context, *river.Job[noopArgs]) (bool, error) { return true, nil }

// lockedNoopWorker holds a worker lock per key (N mod keys) while it runs.
type lockedNoopWorker struct {
	noopWorker
	keys int
}

func (w lockedNoopWorker) LockFor(_ context.Context, job *river.Job[noopArgs]) (jobs.Lock, error) {
	return jobs.Lock{Namespace: "bench.noop", Key: strconv.Itoa(job.Args.N % w.keys)}, nil
}

// semaphoreNoopWorker takes one of permits slots of one global semaphore.
type semaphoreNoopWorker struct {
	noopWorker
	permits int
}

func (w semaphoreNoopWorker) LockFor(context.Context, *river.Job[noopArgs]) (jobs.Lock, error) {
	return jobs.Lock{Namespace: "bench.noop_sem", Key: "global", Permits: w.permits}, nil
}

// ratedNoopWorker is rate limited per key (N mod keys), to limit starts
// per period that the run never reaches.
type ratedNoopWorker struct {
	noopWorker
	keys   int
	limit  int
	period time.Duration
}

func (w ratedNoopWorker) RateLimitFor(_ context.Context, job *river.Job[noopArgs]) (jobs.RateLimit, error) {
	return jobs.RateLimit{Namespace: "bench.noop_rate", Key: strconv.Itoa(job.Args.N % w.keys), Limit: w.limit, Period: w.period}, nil
}

// sequencedNoopWorker puts its jobs in sequences, one per key (N mod keys).
type sequencedNoopWorker struct {
	noopWorker
	keys int
}

func (w sequencedNoopWorker) SequenceFor(args noopArgs) jobs.Sequence {
	return jobs.Sequence{Key: strconv.Itoa(args.N % w.keys)}
}

// fillSequenced queues n sequenced no-op jobs the way they arrive in
// production: outbox rows, moved by the relay, which places them in their
// sequences (the head of each available, the rest pending).
func fillSequenced(w sequencedNoopWorker) func(context.Context, *Env, *river.Client[pgx.Tx], int) error {
	return func(ctx context.Context, env *Env, client *river.Client[pgx.Tx], n int) error {
		if _, err := env.Pool.Exec(ctx, `INSERT INTO outbox_jobs (kind, args)
			SELECT 'bench.noop', jsonb_build_object('n', g) FROM generate_series(0, $1::int - 1) AS g`, n); err != nil {
			return err
		}
		reg := jobs.NewRegistry()
		jobs.AddWorker(reg, river.QueueDefault, w)
		rl, err := jobs.NewRelay(env.Pool, client, reg, &relay.Config{Schema: env.Schema, Logger: env.Logger})
		if err != nil {
			return err
		}
		if _, err := rl.Drain(ctx); err != nil {
			return err
		}
		var pending int
		if err := env.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'pending'`).Scan(&pending); err != nil {
			return err
		}
		if want := n - min(n, w.keys); pending != want {
			return fmt.Errorf("bench: %d jobs wait in their sequences, want %d", pending, want)
		}
		return nil
	}
}

// fillBatched queues n no-op jobs as members of job batches of size, the
// way they arrive in production: outbox rows carrying their batch, moved by
// the relay, the batches (sealed, no callback) written beside them.
func fillBatched(size int) func(context.Context, *Env, *river.Client[pgx.Tx], int) error {
	return func(ctx context.Context, env *Env, client *river.Client[pgx.Tx], n int) error {
		if _, err := env.Pool.Exec(ctx, `WITH b AS (
				INSERT INTO job_batches (id, expected, sealed)
				SELECT gen_random_uuid(), least($2::int, $1::int - g * $2::int), true
				  FROM generate_series(0, ($1::int - 1) / $2::int) AS g
				RETURNING id)
			INSERT INTO outbox_jobs (kind, args, metadata)
			SELECT 'bench.noop', jsonb_build_object('n', g), jsonb_build_object('aftercommit_batch', ids[g / $2::int + 1])
			  FROM generate_series(0, $1::int - 1) AS g, (SELECT array_agg(id) AS ids FROM b) AS x`, n, size); err != nil {
			return err
		}
		reg := jobs.NewRegistry()
		jobs.AddWorker(reg, river.QueueDefault, noopWorker{})
		rl, err := jobs.NewRelay(env.Pool, client, reg, &relay.Config{Schema: env.Schema, Logger: env.Logger})
		if err != nil {
			return err
		}
		_, err = rl.Drain(ctx)
		return err
	}
}

// pingArgs is the job of the transaction scenarios: the ping job's shape,
// a row ID.
type pingArgs struct {
	PingID int64 `json:"ping_id"`
}

func (pingArgs) Kind() string { return "bench.ping" }

type pingWorker struct {
	river.WorkerDefaults[pingArgs]
}

func (pingWorker) Work(context.Context, *river.Job[pingArgs]) error { return nil }

// insertOnly returns an insert-only client of the runtime and its outbox,
// for reg.
func insertOnly(env *Env, reg *jobs.Registry) (*river.Client[pgx.Tx], *outbox.Outbox, error) {
	client, err := jobs.NewClient(env.Pool, reg, &jobs.ClientConfig{Queues: []string{}, Schema: env.Schema, Logger: env.Logger})
	if err != nil {
		return nil, nil, err
	}
	ob, err := jobs.NewOutbox(env.Pool, client, reg, nil)
	return client, ob, err
}

// defaultQueueClient is a River client working reg's default queue with
// maxWorkers workers and River settings rc (nil: the shipped ones), with
// metrics on, as cmd/worker runs it.
func defaultQueueClient(env *Env, reg *jobs.Registry, maxWorkers int, rc *river.Config) (*river.Client[pgx.Tx], error) {
	if rc == nil {
		rc = shippedRiver(env)
	}
	return jobs.NewClient(env.Pool, reg, &jobs.ClientConfig{
		Queues: []string{river.QueueDefault}, MaxWorkers: maxWorkers, Schema: env.Schema, Logger: env.Logger,
		River: rc, Metrics: jobs.NewMetrics(nil),
	})
}

// loopMaxWait bounds how long loop waits past its duration for a first
// finished operation.
const loopMaxWait = 30 * time.Second

// loop runs op on conc goroutines for d (longer if none finished within d)
// and returns the operations done per second.
func loop(ctx context.Context, conc int, d time.Duration, op func(ctx context.Context) error) (float64, error) {
	var (
		done    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		failure error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	// A rate needs one finished operation: on a machine crushed by other
	// work none may finish within d, so the loop goes on until one has,
	// for at most loopMaxWait.
	go func() {
		timer := time.NewTimer(d)
		defer timer.Stop()
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for done.Load() == 0 && time.Since(start) < d+loopMaxWait {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
		cancel()
	}()
	for range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := op(ctx); err != nil {
					if ctx.Err() == nil || !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
						if ctx.Err() == nil {
							errOnce.Do(func() { failure = err; cancel() })
						}
					}
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	if failure != nil {
		return 0, failure
	}
	return float64(done.Load()) / time.Since(start).Seconds(), nil
}

// txOneJobScenario: a one-row transaction with one job vs without, at 1 and
// 8 clients: the outbox-table path (the default), the direct path
// (DirectInsert: River's insert into river_job), River's InsertTx, and the
// same transactions in pgbench (no Go at all) for the server's floor.
func txOneJobScenario(Config) *Scenario {
	var ob, direct *outbox.Outbox
	var client *river.Client[pgx.Tx]
	const insertPing = `INSERT INTO pings (note) VALUES ('bench') RETURNING id`
	tables := []string{"pings", "river_job", "outbox_jobs"}
	tps := func(op func(ctx context.Context) error) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			s := Sample{}
			for _, conc := range []int{1, 8} {
				v, err := loop(ctx, conc, env.Duration/2, op)
				if err != nil {
					return nil, err
				}
				s["tx/s @"+strconv.Itoa(conc)] = v
			}
			return s, env.Truncate(ctx, tables...)
		}
	}
	floor := func(script string) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			s := Sample{}
			for _, c := range []int{1, 8} {
				v, err := pgbench(ctx, env, script, c, env.Duration/2)
				if err != nil {
					return nil, err
				}
				s["tx/s @"+strconv.Itoa(c)] = v
			}
			return s, env.Truncate(ctx, tables...)
		}
	}
	withJob := func(ob **outbox.Outbox) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			_, err := (*ob).InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
				var id int64
				if err := tx.QueryRow(ctx, insertPing).Scan(&id); err != nil {
					return err
				}
				return tx.Enqueue(pingArgs{PingID: id}, nil)
			})
			return err
		}
	}
	var envp *Env
	return &Scenario{
		Name:    "tx_one_job",
		Title:   "a one-row business transaction with one enqueued job, vs the same transaction without",
		Metrics: []Metric{{"tx/s @1", true}, {"tx/s @8", true}},
		Setup: func(_ context.Context, env *Env) error {
			envp = env
			reg := jobs.NewRegistry()
			jobs.AddWorker(reg, river.QueueDefault, pingWorker{})
			var err error
			if client, ob, err = insertOnly(env, reg); err != nil {
				return err
			}
			direct, err = jobs.NewOutbox(env.Pool, client, reg, &outbox.Config{DirectInsert: true})
			return err
		},
		Sides: []Side{
			{Name: "plain", Note: "pgx transaction: INSERT one row, COMMIT", Run: tps(func(ctx context.Context) error {
				return pgx.BeginFunc(ctx, envp.Pool, func(tx pgx.Tx) error {
					var id int64
					return tx.QueryRow(ctx, insertPing).Scan(&id)
				})
			})},
			{Name: "outbox_job", Note: "outbox.InTx: the row + Enqueue, one INSERT into outbox_jobs sent with the COMMIT (default path; no relay runs)",
				Run: tps(withJob(&ob))},
			{Name: "outbox_direct", Note: "outbox.InTx with DirectInsert: River's insert into river_job sent with the COMMIT", Run: tps(withJob(&direct))},
			{Name: "river_insert_tx", Note: "pgx transaction: the row + River's InsertTx, then COMMIT", Run: tps(func(ctx context.Context) error {
				return pgx.BeginFunc(ctx, envp.Pool, func(tx pgx.Tx) error {
					var id int64
					if err := tx.QueryRow(ctx, insertPing).Scan(&id); err != nil {
						return err
					}
					_, err := client.InsertTx(ctx, tx, pingArgs{PingID: id}, nil)
					return err
				})
			})},
			{Name: "pgbench_plain", Note: "pgbench: BEGIN; INSERT one row; COMMIT (pgbench/tx_plain.sql)", Run: floor("tx_plain.sql")},
			{Name: "pgbench_outbox", Note: "pgbench: the same + INSERT INTO outbox_jobs (kind, args) pipelined with the COMMIT (pgbench/tx_outbox_pipelined.sql)",
				Run: floor("tx_outbox_pipelined.sql")},
		},
		Goals: []Goal{
			{Side: "outbox_job", Metric: "tx/s @1", AtLeast: 1 / 1.15, Text: "time ≤ 1.15× plain at 1 client, i.e. tx/s ≥ 0.87×"},
			{Side: "outbox_job", Metric: "tx/s @8", AtLeast: 1 / 1.30, Text: "time ≤ 1.30× plain at 8 clients, i.e. tx/s ≥ 0.77×"},
		},
	}
}

// txBulkScenario: 1,000 rows in one statement with 1,000 enqueues
// de-duplicated to 10 jobs, vs the rows alone.
func txBulkScenario(Config) *Scenario {
	var ob *outbox.Outbox
	const insertRows = `INSERT INTO pings (note) SELECT 'bench' FROM generate_series(1, 1000) RETURNING id`
	rows := func(ctx context.Context, tx pgx.Tx) ([]int64, error) {
		r, err := tx.Query(ctx, insertRows)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(r, pgx.RowTo[int64])
	}
	run := func(op func(ctx context.Context) error) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			v, err := loop(ctx, 1, env.Duration, op)
			if err != nil {
				return nil, err
			}
			return Sample{"tx/s": v}, env.Truncate(ctx, "pings", "river_job", "outbox_jobs")
		}
	}
	var envp *Env
	return &Scenario{
		Name:    "tx_bulk",
		Title:   "1,000 rows and 1,000 enqueues de-duplicated to 10 jobs in one transaction, vs the rows alone",
		Metrics: []Metric{{"tx/s", true}},
		Setup: func(_ context.Context, env *Env) error {
			envp = env
			reg := jobs.NewRegistry()
			jobs.AddWorker(reg, river.QueueDefault, pingWorker{})
			var err error
			_, ob, err = insertOnly(env, reg)
			return err
		},
		Sides: []Side{
			{Name: "rows_only", Note: "one INSERT of 1,000 rows, COMMIT", Run: func(ctx context.Context, env *Env) (Sample, error) {
				return run(func(ctx context.Context) error {
					return pgx.BeginFunc(ctx, envp.Pool, func(tx pgx.Tx) error { _, err := rows(ctx, tx); return err })
				})(ctx, env)
			}},
			{Name: "rows_and_jobs", Note: "the same + 1,000 Enqueue of 10 distinct jobs (outbox.InTx)", Run: func(ctx context.Context, env *Env) (Sample, error) {
				return run(func(ctx context.Context) error {
					_, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
						ids, err := rows(ctx, tx)
						if err != nil {
							return err
						}
						for _, id := range ids {
							if err := tx.Enqueue(pingArgs{PingID: id % 10}, nil); err != nil {
								return err
							}
						}
						return nil
					})
					return err
				})(ctx, env)
			}},
		},
		Goals: []Goal{{Side: "rows_and_jobs", AtLeast: 0.8, Text: "time ≤ 1.25× the rows alone"}},
	}
}

// bulkInsertScenario: N jobs inserted in one transaction by the outbox
// batcher, River's InsertManyFast (COPY) and River's InsertMany.
func bulkInsertScenario(cfg Config) *Scenario {
	var client *river.Client[pgx.Tx]
	var ob *outbox.Outbox
	n := max(100, int(100_000*cfg.Scale))
	params := func() []river.InsertManyParams {
		p := make([]river.InsertManyParams, n)
		for i := range p {
			p[i] = river.InsertManyParams{Args: noopArgs{N: i}}
		}
		return p
	}
	var envp *Env
	timed := func(op func(ctx context.Context, tx pgx.Tx) error) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := env.Truncate(ctx, "river_job", "outbox_jobs"); err != nil {
				return nil, err
			}
			start := time.Now()
			if err := pgx.BeginFunc(ctx, envp.Pool, func(tx pgx.Tx) error { return op(ctx, tx) }); err != nil {
				return nil, err
			}
			took := time.Since(start)
			// The outbox batch writes outbox rows (the default path), River
			// river_job rows.
			var rows int
			if err := env.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM river_job) + (SELECT count(*) FROM outbox_jobs)`).Scan(&rows); err != nil {
				return nil, err
			}
			if rows != n {
				return nil, fmt.Errorf("inserted %d jobs, want %d", rows, n)
			}
			return Sample{"jobs/s": float64(n) / took.Seconds()}, nil
		}
	}
	return &Scenario{
		Name:    "bulk_insert",
		Title:   fmt.Sprintf("%d jobs inserted in one transaction", n),
		Metrics: []Metric{{"jobs/s", true}},
		Setup: func(_ context.Context, env *Env) error {
			envp = env
			reg := jobs.NewRegistry()
			jobs.AddWorker(reg, river.QueueDefault, noopWorker{})
			var err error
			client, ob, err = insertOnly(env, reg)
			return err
		},
		Sides: []Side{
			{Name: "river_insert_many_fast", Note: "River InsertManyFastTx (COPY)", Run: timed(func(ctx context.Context, tx pgx.Tx) error {
				_, err := client.InsertManyFastTx(ctx, tx, params())
				return err
			})},
			{Name: "outbox_batch", Note: "outbox Batch: Add × N, Flush (de-duplication on) into outbox_jobs (the relay's move is relay_throughput)", Run: timed(func(ctx context.Context, tx pgx.Tx) error {
				b := ob.NewBatch()
				for i := range n {
					if err := b.Add(noopArgs{N: i}, nil); err != nil {
						return err
					}
				}
				_, err := b.Flush(ctx, tx)
				return err
			})},
			{Name: "river_insert_many", Note: "River InsertManyTx (one multi-row INSERT, returns the rows)", Run: timed(func(ctx context.Context, tx pgx.Tx) error {
				_, err := client.InsertManyTx(ctx, tx, params())
				return err
			})},
		},
		Goals: []Goal{{Side: "outbox_batch", AtLeast: 0.8, Text: "≥ 0.8× InsertManyFast"}},
	}
}

// shippedRiver is the River configuration the worker ships with (jobs'
// defaults), with the run's logger.
func shippedRiver(env *Env) *river.Config {
	return &river.Config{Logger: env.Logger}
}

// workerThroughputScenario: N no-op jobs already queued, worked by a bare
// River client and by the runtime's client (middleware, metrics), with the
// worker lock and the semaphore on.
func workerThroughputScenario(cfg Config) *Scenario {
	full := max(200, int(100_000*cfg.Scale))
	const maxWorkers = 100
	// drain works n jobs; the sides with a lock work a fifth as many (each
	// job adds lock statements, so they are slower), which leaves jobs/s
	// comparable.
	// queue puts n no-op jobs in the queue, unless fill does.
	queue := func(ctx context.Context, env *Env, client *river.Client[pgx.Tx], n int, fill func(context.Context, *Env, *river.Client[pgx.Tx], int) error) error {
		if fill != nil {
			return fill(ctx, env, client, n)
		}
		p := make([]river.InsertManyParams, n)
		for i := range p {
			p[i] = river.InsertManyParams{Args: noopArgs{N: i}}
		}
		_, err := client.InsertManyFast(ctx, p)
		return err
	}
	drainFilled := func(n int, build func(env *Env) (*river.Client[pgx.Tx], error), fill func(context.Context, *Env, *river.Client[pgx.Tx], int) error) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := env.Truncate(ctx, "river_job", "job_locks", "job_rate_limits", "outbox_jobs",
				"job_sequence_inbox", "job_sequences", "job_sequence_members", "job_batch_members", "job_batches"); err != nil {
				return nil, err
			}
			client, err := build(env)
			if err != nil {
				return nil, err
			}
			if err := queue(ctx, env, client, n, fill); err != nil {
				return nil, err
			}
			completed, cancel := client.SubscribeConfig(&river.SubscribeConfig{ChanSize: n + 1000, Kinds: []river.EventKind{river.EventKindJobCompleted}})
			defer cancel()
			start := time.Now()
			if err := client.Start(ctx); err != nil {
				return nil, err
			}
			defer stopClient(ctx, client)
			for i := range n {
				select {
				case <-completed:
				case <-time.After(time.Minute):
					return nil, fmt.Errorf("jobs stopped completing after %d of %d", i, n)
				case <-ctx.Done():
					return nil, context.Cause(ctx)
				}
			}
			return Sample{"jobs/s": float64(n) / time.Since(start).Seconds()}, nil
		}
	}
	drain := func(n int, build func(env *Env) (*river.Client[pgx.Tx], error)) func(ctx context.Context, env *Env) (Sample, error) {
		return drainFilled(n, build, nil)
	}
	runtime := func(w river.Worker[noopArgs]) func(env *Env) (*river.Client[pgx.Tx], error) {
		return func(env *Env) (*river.Client[pgx.Tx], error) {
			reg := jobs.NewRegistry()
			jobs.AddWorker(reg, river.QueueDefault, w)
			return jobs.NewClient(env.Pool, reg, &jobs.ClientConfig{
				Queues: []string{river.QueueDefault}, MaxWorkers: maxWorkers, Schema: env.Schema, Logger: env.Logger,
				River: shippedRiver(env), Metrics: jobs.NewMetrics(nil),
			})
		}
	}
	return &Scenario{
		Name:    "worker_throughput",
		Title:   fmt.Sprintf("%d no-op jobs already queued (a fifth as many with a lock), worked by one client of %d workers, shipped fetch settings", full, maxWorkers),
		Metrics: []Metric{{"jobs/s", true}},
		Sides: []Side{
			{Name: "bare_river", Note: "river.NewClient, the worker alone", Run: drain(full, func(env *Env) (*river.Client[pgx.Tx], error) {
				workers := river.NewWorkers()
				river.AddWorker(workers, noopWorker{})
				c := jobs.RiverDefaults()
				c.Logger, c.Schema, c.Workers = env.Logger, env.Schema, workers
				c.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: maxWorkers}}
				return river.NewClient(riverpgxv5.New(env.Pool), c)
			})},
			{Name: "full_stack", Note: "jobs.NewClient: middleware (needed-check answered), metrics, locks off", Run: drain(full, runtime(neededNoopWorker{}))},
			{Name: "worker_lock", Note: "full stack, a worker lock per key, 10,000 keys", Run: drain(max(100, full/5), runtime(lockedNoopWorker{keys: 10_000}))},
			{Name: "semaphore", Note: "full stack, one global semaphore of 100 permits (as many as workers: no job snoozes)",
				Run: drain(max(100, full/5), runtime(semaphoreNoopWorker{permits: maxWorkers}))},
			{Name: "rate_limit", Note: "full stack, a rate limit per key it never reaches: 10,000 keys, 100 starts per second each; a key's two jobs a second apart, so every start is decided in the database",
				Run: drain(max(100, full/5), runtime(ratedNoopWorker{keys: 10_000, limit: 100, period: time.Second}))},
			{Name: "rate_limit_warm", Note: "full stack, 100 keys, 1,000 starts per second each, never reached: busy keys, started with leases",
				Run: drain(max(100, full/5), runtime(ratedNoopWorker{keys: 100, limit: 1000, period: time.Second}))},
			{Name: "rate_limit_hot", Note: "full stack, one key limited to 1,000 starts per 50 ms (20,000/s), never reached: leases fill at most half of the limit, the rest is decided start by start on one row",
				Run: drain(max(100, full/5), runtime(ratedNoopWorker{keys: 1, limit: 1000, period: 50 * time.Millisecond}))},
			{Name: "batch_member", Note: "full stack, every job a member of a job batch of 20 (sealed, no callback): relayed from the outbox before the clock starts; each finish counted by the trigger",
				Run: drainFilled(max(100, full/5), runtime(neededNoopWorker{}), fillBatched(20))},
			{Name: "sequence", Note: "full stack, sequences over 10,000 keys: relayed from the outbox before the clock starts, each key's jobs one at a time in order",
				Run: drainFilled(max(100, full/5), runtime(sequencedNoopWorker{keys: 10_000}), fillSequenced(sequencedNoopWorker{keys: 10_000}))},
		},
		Goals: []Goal{
			{Side: "full_stack", AtLeast: 0.9, Text: "≥ 0.9× bare River"},
			{Side: "worker_lock", AtLeast: 0.5, Text: "≥ 0.5×"},
			{Side: "semaphore", AtLeast: 0.5, Text: "≥ 0.5×"},
			{Side: "rate_limit", AtLeast: 0.8, Text: "≥ 0.8×"},
			{Side: "rate_limit_warm", AtLeast: 0.8, Text: "≥ 0.8×"},
			{Side: "rate_limit_hot", AtLeast: 0.8, Text: "≥ 0.8×"},
			{Side: "sequence", AtLeast: 0.5, Text: "≥ 0.5×"},
			{Side: "batch_member", AtLeast: 0.8, Text: "≥ 0.8× (issue 18)"},
		},
	}
}
