package bouncertest_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/bouncertest"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

func TestMain(m *testing.M) { dbtest.WrapTestMain(m) }

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// bouncedArgs asks for one row in bounced.
type bouncedArgs struct {
	ID int `json:"id" jobs:"id"`
}

func (bouncedArgs) Kind() string { return "test.bounced" }

// bouncedWorker writes its row with the job's completion, in one
// transaction through the pooler.
type bouncedWorker struct {
	river.WorkerDefaults[bouncedArgs]
	pool *pgxpool.Pool
}

func (w *bouncedWorker) Work(ctx context.Context, job *river.Job[bouncedArgs]) error {
	return pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO bounced (id, via) VALUES ($1, 'job')`, job.Args.ID); err != nil {
			return err
		}
		return jobs.CompleteTx(ctx, tx, job, nil)
	})
}

// announcedArgs is the job a subscription makes of each "bounce.done" event.
type announcedArgs struct {
	ID int `json:"id" jobs:"id"`
}

func (announcedArgs) Kind() string { return "test.announced" }

type announcedWorker struct {
	river.WorkerDefaults[announcedArgs]
	pool *pgxpool.Pool
}

func (w *announcedWorker) Work(ctx context.Context, job *river.Job[announcedArgs]) error {
	_, err := w.pool.Exec(ctx, `INSERT INTO bounced (id, via) VALUES ($1, 'event')`, job.Args.ID)
	return err
}

// bouncerSetup is one schema behind its own PgBouncer in transaction mode.
type bouncerSetup struct {
	schema  *dbtest.Schema
	bouncer *bouncertest.Bouncer
	pool    *pgxpool.Pool // through the pooler
	reg     *jobs.Registry
}

func setupBouncer(ctx context.Context, t *testing.T) *bouncerSetup {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
	server := dbtest.ServerURL(t) //nolint:contextcheck // dbtest sets up the test server once per process (sync.Once) on its own context
	b, err := bouncertest.Start(ctx, bouncertest.Config{ServerURL: server, Schema: s.Name, PoolSize: 6})
	require.NoError(t, err)
	t.Cleanup(b.Stop)
	cfg, err := pgxpool.ParseConfig(b.URL("") + "&pool_max_conns=12")
	require.NoError(t, err)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	s.Scratch(ctx, t, `CREATE TABLE bounced (id int, via text NOT NULL, PRIMARY KEY (id, via))`, `DROP TABLE bounced`)

	reg := jobs.NewRegistry()
	q := reg.AddQueue("test", "bounced", jobs.WeightNormal, nil)
	jobs.AddWorker(reg, q, &bouncedWorker{pool: pool})
	jobs.AddWorker(reg, q, &announcedWorker{pool: pool})
	reg.AddTopic("test", "bounce.done")
	jobs.Subscribe(reg, "bounce.done", func(ev outbox.Event) (announcedArgs, bool, error) {
		var p struct {
			ID int `json:"id"`
		}
		err := json.Unmarshal(ev.Payload, &p)
		return announcedArgs{ID: p.ID}, true, err
	})
	return &bouncerSetup{schema: s, bouncer: b, pool: pool, reg: reg}
}

// run starts a worker client on the pooled pool with cfg's listen settings,
// enqueues n jobs through the pooler in every way an app does, and checks
// that each ran once and that every event became its job.
func (bs *bouncerSetup) run(ctx context.Context, t *testing.T, listenPool *pgxpool.Pool, pollOnly bool) {
	t.Helper()
	client, err := jobs.NewClient(bs.pool, bs.reg, &jobs.ClientConfig{
		Queues:     []string{jobs.AllQueues},
		ListenPool: listenPool,
		Logger:     discardLogger(),
		River:      &river.Config{PollOnly: pollOnly, FetchPollInterval: 50 * time.Millisecond},
	})
	require.NoError(t, err)
	require.NoError(t, client.Start(ctx))
	t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
	rcfg := &relay.Config{DisableListen: true, Logger: discardLogger()}
	if listenPool != nil {
		rcfg = &relay.Config{ListenConnConfig: listenPool.Config().ConnConfig, Logger: discardLogger()}
	}
	rl, err := jobs.NewRelay(bs.pool, client, bs.reg, rcfg)
	require.NoError(t, err)
	require.NoError(t, rl.Start(ctx))
	t.Cleanup(func() { require.NoError(t, rl.Stop(context.WithoutCancel(ctx))) })

	table, err := jobs.NewOutbox(bs.pool, client, bs.reg, nil) // the outbox table, relayed
	require.NoError(t, err)
	direct, err := jobs.NewOutbox(bs.pool, client, bs.reg, &outbox.Config{DirectInsert: true}) // River's rows, pipelined with COMMIT
	require.NoError(t, err)

	const perTx, txs = 10, 20
	id := 0
	for i := range txs {
		ob := table
		if i%2 == 1 {
			ob = direct
		}
		_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			for range perTx {
				id++
				if err := tx.Enqueue(bouncedArgs{ID: id}, nil); err != nil {
					return err
				}
			}
			return tx.Publish("bounce.done", map[string]int{"id": i + 1})
		})
		require.NoError(t, err)
	}
	// A transaction that rolls back leaves nothing, through the pooler too.
	_, err = direct.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		if err := tx.Enqueue(bouncedArgs{ID: 9999}, nil); err != nil {
			return err
		}
		return errors.New("roll back")
	})
	require.Error(t, err)
	// Batch: the app's own transaction, the jobs flushed into it.
	err = pgx.BeginFunc(ctx, bs.pool, func(tx pgx.Tx) error {
		batch := direct.NewBatch()
		for range perTx {
			id++
			if err := batch.Add(bouncedArgs{ID: id}, nil); err != nil {
				return err
			}
		}
		_, err := batch.Flush(ctx, tx)
		return err
	})
	require.NoError(t, err)
	total := id

	deadline := time.Now().Add(60 * time.Second)
	for {
		var done int
		require.NoError(t, bs.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'completed'`).Scan(&done))
		if done == total+txs {
			break
		}
		if time.Now().After(deadline) {
			var states string
			require.NoError(t, bs.schema.Pool.QueryRow(ctx, `
				SELECT coalesce(string_agg(s, E'\n'), '') FROM (
				  SELECT concat_ws(' ', state, count(*), max(errors::text)) AS s FROM river_job GROUP BY state
				  UNION ALL SELECT concat_ws(' ', 'outbox_jobs', count(*)) FROM outbox_jobs) x`).Scan(&states))
			t.Fatalf("%d of %d jobs completed within 60 s:\n%s\npgbouncer: %s", done, total+txs, states, bs.bouncer.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	var jobRows, eventRows, distinct, errs, notCompleted int
	require.NoError(t, bs.schema.Pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM bounced WHERE via = 'job'),
		       (SELECT count(*) FROM bounced WHERE via = 'event'),
		       (SELECT count(DISTINCT id) FROM bounced WHERE via = 'job' AND id BETWEEN 1 AND $1),
		       (SELECT count(*) FROM river_job WHERE errors IS NOT NULL),
		       (SELECT count(*) FROM river_job WHERE state <> 'completed')`, total).
		Scan(&jobRows, &eventRows, &distinct, &errs, &notCompleted))
	require.Equal(t, []int{total, txs, total, 0, 0}, []int{jobRows, eventRows, distinct, errs, notCompleted})
}

// Behind PgBouncer in transaction mode, with no connection of its own: River
// polls (PollOnly) and the relay polls (DisableListen).
func TestPollOnlyBehindPgBouncer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bs := setupBouncer(ctx, t)
	bs.run(ctx, t, nil, true)
}

// Behind PgBouncer in transaction mode, River's and the relay's LISTEN on
// direct connections (ClientConfig.ListenPool, relay.Config's
// ListenConnConfig): the two sessions that listen are not the pooler's.
func TestSplitListenerBehindPgBouncer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bs := setupBouncer(ctx, t)
	cfg, err := pgxpool.ParseConfig(bs.schema.URL)
	require.NoError(t, err)
	cfg.MaxConns = 2
	cfg.ConnConfig.RuntimeParams["application_name"] = "listen-" + bs.schema.Name
	listen, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(listen.Close)
	bs.run(ctx, t, listen, false)

	// Each listener connects and listens in a goroutine of its own, which
	// a loaded machine may run after the jobs are done: wait for both.
	var (
		listening int
		sessions  string
	)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		require.NoError(t, bs.schema.Pool.QueryRow(ctx, `
			SELECT count(*) FILTER (WHERE query LIKE 'LISTEN%'), coalesce(string_agg(state || ': ' || query, '; '), '')
			  FROM pg_stat_activity WHERE application_name = $1`,
			"listen-"+bs.schema.Name).Scan(&listening, &sessions))
		if listening == 2 || time.Now().After(deadline) {
			break
		}
	}
	require.Equal(t, 2, listening, "River's listener and the relay's each hold one direct session; seen: %s", sessions)
}
