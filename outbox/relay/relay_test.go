package relay_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// nArgs carries a unique number, so that a job made twice from one outbox
// row, or a row lost, shows in count(DISTINCT args->>'n').
type nArgs struct {
	N int `json:"n"`
}

func (nArgs) Kind() string { return "relaytest.n" }

// orderArgs has a required ID and a required note: args lacking either, or
// holding the wrong type, do not decode.
type orderArgs struct {
	OrderID int64  `json:"order_id" jobs:"id"`
	Note    string `json:"note" jobs:"required"`
}

func (orderArgs) Kind() string { return "relaytest.order" }

// syncArgs has a queue lock on the account: one waiting job per account.
type syncArgs struct {
	AccountID int64 `json:"account_id" jobs:"id,queue_lock"`
	N         int   `json:"n"`
}

func (syncArgs) Kind() string { return "relaytest.sync" }

var discard = slog.New(slog.DiscardHandler)

// plainClient is an insert-only River client on s with no registry, with
// the given middleware.
func plainClient(t testing.TB, s *dbtest.Schema, mw ...rivertype.Middleware) *river.Client[pgx.Tx] {
	t.Helper()
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name, Logger: discard, Middleware: mw})
	require.NoError(t, err)
	return client
}

// plainRelay is a relay without a registry: any kind, args as written.
func plainRelay(t testing.TB, s *dbtest.Schema, client *river.Client[pgx.Tx], cfg relay.Config) *relay.Relay {
	t.Helper()
	cfg.Schema = s.Name
	if cfg.Logger == nil {
		cfg.Logger = discard
	}
	rl, err := relay.New(s.Pool, client, &cfg)
	require.NoError(t, err)
	return rl
}

// testRegistry registers orderArgs and syncArgs on the default queue.
func testRegistry(t testing.TB) *jobs.Registry {
	t.Helper()
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, river.QueueDefault, river.WorkFunc(func(context.Context, *river.Job[orderArgs]) error { return nil }))
	jobs.AddWorker(reg, river.QueueDefault, river.WorkFunc(func(context.Context, *river.Job[syncArgs]) error { return nil }))
	require.NoError(t, reg.Err())
	return reg
}

func count(ctx context.Context, t testing.TB, s *dbtest.Schema, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, s.Pool.QueryRow(ctx, sql, args...).Scan(&n))
	return n
}

// strs returns the single text column of sql's rows.
func strs(ctx context.Context, t testing.TB, s *dbtest.Schema, sql string) []string {
	t.Helper()
	rows, err := s.Pool.Query(ctx, sql)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

// execer is a pool or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// insertN writes outbox rows for nArgs from..to (inclusive) with plain SQL.
func insertN(ctx context.Context, q execer, from, to int) error {
	_, err := q.Exec(ctx, `INSERT INTO outbox_jobs (kind, args) SELECT 'relaytest.n', jsonb_build_object('n', g) FROM generate_series($1::int, $2::int) AS g`, from, to)
	return err
}

// TestRollbackRelaysNothing: a transaction that enqueues and rolls back
// leaves no outbox row and the relay moves nothing; rows of a transaction
// still open are not seen; a committed one moves exactly its rows.
func TestRollbackRelaysNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	client := plainClient(t, s)
	ob, err := outbox.New(s.Pool, client, nil)
	require.NoError(t, err)
	rl := plainRelay(t, s, client, relay.Config{})

	errRollback := errors.New("roll back")
	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		for i := range 5 {
			if err := tx.Enqueue(nArgs{N: i}, nil); err != nil {
				return err
			}
		}
		return errRollback
	})
	require.ErrorIs(t, err, errRollback)
	require.Equal(t, 0, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`))
	res, err := rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, relay.MoveResult{}, res)
	require.Equal(t, 0, count(ctx, t, s, `SELECT count(*) FROM river_job`))

	// Rows of a transaction still open are invisible to the relay.
	open, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = open.Rollback(ctx) }()
	_, err = open.Exec(ctx, `SELECT aftercommit_enqueue('relaytest.n', '{"n": 100}'), aftercommit_enqueue('relaytest.n', '{"n": 101}')`)
	require.NoError(t, err)
	res, err = rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, 0, res.Rows)

	fr, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		for i := range 3 {
			if err := tx.Enqueue(nArgs{N: i}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 3, fr.Inserted)
	res, err = rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, 3, res.Rows)
	require.Equal(t, 3, res.Inserted)
	require.False(t, res.OldestCreatedAt.IsZero())
	require.Equal(t, []string{"0", "1", "2"}, strs(ctx, t, s, `SELECT args->>'n' FROM river_job ORDER BY id`))

	require.NoError(t, open.Commit(ctx))
	res, err = rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, res.Inserted)
	require.Equal(t, []string{"0", "1", "2", "100", "101"}, strs(ctx, t, s, `SELECT args->>'n' FROM river_job ORDER BY id`))
	require.Equal(t, 0, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`))
	st := rl.Stats()
	require.Equal(t, relay.Stats{Batches: 2, Rows: 5, Inserted: 5}, st)
}

// TestOptionsRoundTrip: every option outbox.Tx.Enqueue accepts reaches the
// river_job row unchanged through the outbox row and the relay.
func TestOptionsRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	client := plainClient(t, s)
	ob, err := outbox.New(s.Pool, client, nil)
	require.NoError(t, err)
	rl := plainRelay(t, s, client, relay.Config{})

	at := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	enqueue := func() {
		t.Helper()
		_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return errors.Join(
				tx.Enqueue(nArgs{N: 1}, nil),
				tx.Enqueue(nArgs{N: 2}, &river.InsertOpts{
					Queue: "q_one", Priority: 3, MaxAttempts: 7, ScheduledAt: at,
					Metadata: []byte(`{"a": 1, "b": "x"}`), Tags: []string{"tag_one", "tag-two"},
				}),
				tx.Enqueue(nArgs{N: 3}, &river.InsertOpts{Pending: true, Priority: 4}),
				tx.Enqueue(nArgs{N: 4}, &river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true, ByQueue: true}}),
			)
		})
		require.NoError(t, err)
	}
	enqueue()
	require.Equal(t, 4, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`))
	// The outbox row holds only what the caller chose.
	require.Equal(t, []string{
		`1 {"n": 1}      `,
		`2 {"n": 2} q_one 3 7 2031-05-06 07:08:09+00 {"a": 1, "b": "x"} {"tags": ["tag_one", "tag-two"]}`,
		`3 {"n": 3}  4    {"pending": true}`,
		`4 {"n": 4}      {"unique": {"by_args": true, "by_queue": true}}`,
	}, strs(ctx, t, s, `SELECT concat_ws(' ', args->>'n', args::text, coalesce(queue, ''), coalesce(priority::text, ''), coalesce(max_attempts::text, ''),
	          coalesce(to_char(scheduled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00'), ''), coalesce(metadata::text, ''), coalesce(options::text, ''))
	  FROM outbox_jobs ORDER BY id`))

	res, err := rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, relay.MoveResult{Rows: 4, Inserted: 4, OldestCreatedAt: res.OldestCreatedAt}, res)
	const jobSQL = `SELECT concat_ws(' ', args->>'n', kind, queue, priority, max_attempts, state,
	          CASE WHEN state = 'scheduled' THEN to_char(scheduled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00') ELSE 'now' END,
	          metadata::text, tags::text, unique_key IS NOT NULL, coalesce(unique_states::text, '-'))
	  FROM river_job ORDER BY id`
	require.Equal(t, []string{
		`1 relaytest.n default 1 25 available now {} {} f -`,
		`2 relaytest.n q_one 3 7 scheduled 2031-05-06 07:08:09+00 {"a": 1, "b": "x"} {tag_one,tag-two} f -`,
		`3 relaytest.n default 4 25 pending now {} {} f -`,
		// River's default unique states: every state but cancelled and discarded.
		`4 relaytest.n default 1 25 available now {} {} t 11110101`,
	}, strs(ctx, t, s, jobSQL))

	// The same again: the unique job matches the waiting one.
	enqueue()
	res, err = rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, relay.MoveResult{Rows: 4, Inserted: 3, UniqueSkipped: 1, OldestCreatedAt: res.OldestCreatedAt}, res)
	require.Equal(t, 7, count(ctx, t, s, `SELECT count(*) FROM river_job`))
	require.Equal(t, 1, count(ctx, t, s, `SELECT count(*) FROM river_job WHERE args->>'n' = '4'`))
}

// registryRelay is reg's relay on s with a 200-byte payload limit.
func registryRelay(ctx context.Context, t testing.TB, s *dbtest.Schema, reg *jobs.Registry, cfg relay.Config) (*relay.Relay, *river.Client[pgx.Tx]) {
	t.Helper()
	client, _ := jobstest.Client(ctx, t, s, reg, jobstest.Opts{})
	cfg.Schema, cfg.Logger = s.Name, discard
	rl, err := jobs.NewRelay(s.Pool, client, reg, &cfg)
	require.NoError(t, err)
	return rl, client
}

// TestDeadRows: each row the relay cannot accept becomes exactly one
// outbox_dead_jobs row whose reason names the problem, and the good rows
// before and after it in the same batch become jobs.
func TestDeadRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	reg := testRegistry(t)
	rl, _ := registryRelay(ctx, t, s, reg, relay.Config{MaxPayloadBytes: 200})

	good := func(n int) string {
		return fmt.Sprintf(`('relaytest.order', '{"order_id": %d, "note": "ok"}', NULL, NULL, NULL, NULL, NULL)`, n)
	}
	bad := []struct {
		row, reason string
	}{
		{`('relaytest.nope', '{"order_id": 1, "note": "x"}', NULL, NULL, NULL, NULL, NULL)`, `no worker is registered for kind "relaytest.nope"`},
		{`('relaytest.order', '{"order_id": "one", "note": "x"}', NULL, NULL, NULL, NULL, NULL)`, `relaytest.order: args: order_id`},
		{`('relaytest.order', '{"order_id": 5}', NULL, NULL, NULL, NULL, NULL)`, `relaytest.order: args: note: missing`},
		{`('relaytest.order', '{"order_id": 0, "note": "x"}', NULL, NULL, NULL, NULL, NULL)`, `relaytest.order: args: order_id`},
		{`('relaytest.order', '[1, 2]', NULL, NULL, NULL, NULL, NULL)`, `relaytest.order: args`},
		{`('relaytest.order', jsonb_build_object('order_id', 1, 'note', repeat('x', 300)), NULL, NULL, NULL, NULL, NULL)`, `exceed the payload limit of 200 bytes`},
		{`('relaytest.order', '{"order_id": 1, "note": "x"}', NULL, 9, NULL, NULL, NULL)`, `priority 9: River's priorities are 1 to 4`},
		{`('relaytest.order', '{"order_id": 1, "note": "x"}', NULL, NULL, 0, NULL, NULL)`, `max_attempts 0: must be 1 to 32767`},
		{`('relaytest.order', '{"order_id": 1, "note": "x"}', 'Bad Queue', NULL, NULL, NULL, NULL)`, `queue "Bad Queue"`},
		{`('relaytest.order', '{"order_id": 1, "note": "x"}', 'elsewhere', NULL, NULL, NULL, NULL)`, `queue "elsewhere" is not one of the configured queues`},
		{`('relaytest.order', '{"order_id": 1, "note": "x"}', NULL, NULL, NULL, '{"nope": 1}', NULL)`, `options {"nope": 1}: json: unknown field "nope"`},
		{`('relaytest.order', '{"order_id": 1, "note": "x"}', NULL, NULL, NULL, '{"tags": ["bad tag"]}', NULL)`, `tag "bad tag": must match`},
		{`('relaytest.order', '{"order_id": 1, "note": "x"}', NULL, NULL, NULL, '{"unique": {"by_state": ["nope"]}}', NULL)`, `options.unique.by_state "nope": not a River job state`},
		{`('relaytest.order', '{"order_id": 1, "note": "x"}', NULL, NULL, NULL, NULL, '[1]')`, `metadata [1]: must be a JSON object`},
	}
	// good, bad, good, bad, … good: every bad row has a good one on each side.
	values := []string{good(1000)}
	for i, b := range bad {
		values = append(values, b.row, good(1001+i))
	}
	_, err := s.Pool.Exec(ctx, `INSERT INTO outbox_jobs (kind, args, queue, priority, max_attempts, options, metadata) VALUES `+strings.Join(values, ", "))
	require.NoError(t, err)
	ids := strs(ctx, t, s, `SELECT id::text FROM outbox_jobs ORDER BY outbox_jobs.id`)
	require.Len(t, ids, 2*len(bad)+1)

	res, err := rl.MoveBatch(ctx) // one batch: BatchSize 1000
	require.NoError(t, err)
	n := len(bad)
	require.Equal(t, relay.MoveResult{Rows: 2*n + 1, Inserted: n + 1, Dead: n, OldestCreatedAt: res.OldestCreatedAt}, res)
	require.Equal(t, int64(n), rl.Stats().Dead)
	require.Equal(t, int64(1), rl.Stats().Batches)

	var wantGood []string
	for i := range n + 1 {
		wantGood = append(wantGood, fmt.Sprint(1000+i))
	}
	require.Equal(t, wantGood, strs(ctx, t, s, `SELECT args->>'order_id' FROM river_job WHERE kind = 'relaytest.order' AND queue = 'default' ORDER BY id`))
	require.Equal(t, n+1, count(ctx, t, s, `SELECT count(*) FROM river_job`))

	type deadRow struct{ ID, Reason string }
	rows, err := s.Pool.Query(ctx, `SELECT id::text, reason FROM outbox_dead_jobs ORDER BY outbox_dead_jobs.id`)
	require.NoError(t, err)
	dead, err := pgx.CollectRows(rows, pgx.RowToStructByPos[deadRow])
	require.NoError(t, err)
	require.Len(t, dead, n)
	for i, b := range bad {
		require.Equal(t, ids[2*i+1], dead[i].ID, "dead row %d keeps its outbox id", i)
		require.Contains(t, dead[i].Reason, b.reason, "row %s", b.row)
	}
	// The dead rows keep what was written, for an operator to fix.
	require.Equal(t, []string{"9"}, strs(ctx, t, s, `SELECT priority::text FROM outbox_dead_jobs WHERE priority IS NOT NULL`))
	require.Equal(t, []string{"Bad Queue", "elsewhere"}, strs(ctx, t, s, `SELECT queue FROM outbox_dead_jobs WHERE queue IS NOT NULL ORDER BY id`))

	var depth, deadN int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT depth, dead FROM outbox_depth`).Scan(&depth, &deadN))
	require.Equal(t, [2]int{0, n}, [2]int{depth, deadN})
}

// shipArgs is registered on a declared queue of weight high (priority 1).
type shipArgs struct {
	OrderID int64 `json:"order_id" jobs:"id"`
}

func (shipArgs) Kind() string { return "relaytest.ship" }

// TestRegistryDefaults: a registry-wired relay gives a row that leaves its
// queue and priority NULL the kind's registered queue and its priority,
// keeps what a row chose, and dates the job from its outbox row.
func TestRegistryDefaults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	reg := testRegistry(t)
	q := reg.AddQueue("shop", "shipping", jobs.WeightHigh, nil)
	jobs.AddWorker(reg, q, river.WorkFunc(func(context.Context, *river.Job[shipArgs]) error { return nil }))
	require.NoError(t, reg.Err())
	rl, _ := registryRelay(ctx, t, s, reg, relay.Config{})

	_, err := s.Pool.Exec(ctx, `INSERT INTO outbox_jobs (kind, args, queue, priority, created_at) VALUES
    ('relaytest.ship', '{"order_id": 1}', NULL, NULL, '2026-01-02 03:04:05+00'),
    ('relaytest.ship', '{"order_id": 2}', NULL, 3, '2026-01-02 03:04:06+00'),
    ('relaytest.ship', '{"order_id": 3}', 'default', NULL, '2026-01-02 03:04:07+00'),
    ('relaytest.order', '{"order_id": 4, "note": "x"}', NULL, NULL, '2026-01-02 03:04:08+00')`)
	require.NoError(t, err)
	res, err := rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, relay.MoveResult{Rows: 4, Inserted: 4, OldestCreatedAt: res.OldestCreatedAt}, res)
	require.True(t, res.OldestCreatedAt.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), "%v", res.OldestCreatedAt)
	require.Equal(t, []string{
		"1 shop_shipping 1 2026-01-02 03:04:05",
		"2 shop_shipping 3 2026-01-02 03:04:06",
		"3 default 1 2026-01-02 03:04:07",
		"4 default 1 2026-01-02 03:04:08",
	}, strs(ctx, t, s, `SELECT concat_ws(' ', args->>'order_id', queue, priority, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))
	  FROM river_job ORDER BY (args->>'order_id')::int`))
}

// TestRefusedByRiverMovesRowByRow: a row that passes the relay's checks but
// that River (or Postgres) refuses makes the relay redo the batch row by
// row: the refused row becomes dead, every other row a job.
func TestRefusedByRiverMovesRowByRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("RiverUniqueOpts", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, nil)
		rl, _ := registryRelay(ctx, t, s, testRegistry(t), relay.Config{})
		// River refuses a unique period under a second and a by_state set
		// without its required states; the relay only checks the names.
		_, err := s.Pool.Exec(ctx, `INSERT INTO outbox_jobs (kind, args, options) VALUES
    ('relaytest.order', '{"order_id": 1, "note": "a"}', NULL),
    ('relaytest.order', '{"order_id": 2, "note": "b"}', '{"unique": {"by_period": 0.5}}'),
    ('relaytest.sync', '{"account_id": 3}', NULL),
    ('relaytest.order', '{"order_id": 4, "note": "c"}', '{"unique": {"by_args": true, "by_state": ["completed"]}}'),
    ('relaytest.order', '{"order_id": 5, "note": "d"}', '{"unique": {"by_args": true}}'),
    ('relaytest.order', '{"order_id": 6, "note": "e"}', NULL)`)
		require.NoError(t, err)
		res, err := rl.MoveBatch(ctx)
		require.NoError(t, err)
		require.Equal(t, relay.MoveResult{Rows: 6, Inserted: 4, Dead: 2, OldestCreatedAt: res.OldestCreatedAt}, res)
		require.Equal(t, []string{"1", "3", "5", "6"}, strs(ctx, t, s,
			`SELECT coalesce(args->>'order_id', args->>'account_id') FROM river_job ORDER BY (coalesce(args->>'order_id', args->>'account_id'))::int`))
		require.Equal(t, []string{
			`2 relay: inserting 1 jobs: UniqueOpts.ByPeriod should not be less than 1 second`,
			`4 relay: inserting 1 jobs: UniqueOpts.ByState must contain all required states, missing: available, pending, running, scheduled`,
		}, strs(ctx, t, s, `SELECT concat_ws(' ', args->>'order_id', reason) FROM outbox_dead_jobs ORDER BY outbox_dead_jobs.id`))
	})

	t.Run("PostgresCheckWithCopy", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, nil)
		// No registry: any kind passes the relay, but river_job's
		// kind_length check refuses one of 200 characters, inside the COPY.
		rl := plainRelay(t, s, plainClient(t, s), relay.Config{CopyMinJobs: 2})
		_, err := s.Pool.Exec(ctx, `INSERT INTO outbox_jobs (kind, args) VALUES
    ('relaytest.n', '{"n": 1}'), ('relaytest.n', '{"n": 2}'), (repeat('k', 200), '{"n": 3}'), ('relaytest.n', '{"n": 4}')`)
		require.NoError(t, err)
		res, err := rl.MoveBatch(ctx)
		require.NoError(t, err)
		require.Equal(t, relay.MoveResult{Rows: 4, Inserted: 3, Dead: 1, OldestCreatedAt: res.OldestCreatedAt}, res)
		require.Equal(t, []string{"1", "2", "4"}, strs(ctx, t, s, `SELECT args->>'n' FROM river_job ORDER BY id`))
		reasons := strs(ctx, t, s, `SELECT reason FROM outbox_dead_jobs`)
		require.Len(t, reasons, 1)
		require.Contains(t, reasons[0], "kind_length")
		require.Contains(t, reasons[0], "SQLSTATE 23514")
	})
}

// TestQueueLockCoalescing: a thousand enqueues of one queue-lock key from
// twenty concurrent transactions make one job, and more enqueues while it
// waits make none.
func TestQueueLockCoalescing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 25})
	reg := testRegistry(t)
	// One mover: the batches are the table's rows in consecutive runs of
	// 300, which batchesOf counts (two movers taking at once interleave
	// their rows).
	rl, client := registryRelay(ctx, t, s, reg, relay.Config{BatchSize: 300, Movers: 1})
	ob, err := jobs.NewOutbox(s.Pool, client, reg, &outbox.Config{RelayNotifyInterval: -1})
	require.NoError(t, err)

	// round writes 1000 outbox rows for account 7 (and, as a control, one
	// row for account 8 per transaction): 20 concurrent transactions of 50
	// enqueues, each enqueue its own Outbox.Enqueue (an InTx would already
	// drop the duplicates of its own transaction).
	round := func(base int) {
		t.Helper()
		var wg sync.WaitGroup
		start := make(chan struct{})
		for w := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
					for i := range 50 {
						fr, err := ob.Enqueue(ctx, tx, syncArgs{AccountID: 7, N: base + w*50 + i}, nil)
						if err != nil {
							return err
						}
						if fr.Inserted != 1 {
							return fmt.Errorf("flush wrote %d rows", fr.Inserted)
						}
					}
					_, err := ob.Enqueue(ctx, tx, syncArgs{AccountID: 8, N: base + w}, nil)
					return err
				})
				if err != nil {
					t.Errorf("writer %d: %v", w, err)
				}
			}()
		}
		close(start)
		wg.Wait()
	}
	// batchesOf counts the batches of 300 (oldest first) holding rows of
	// the account: the batches that meet its key.
	batchesOf := func(account int) int {
		t.Helper()
		return count(ctx, t, s, `SELECT count(DISTINCT (rn - 1) / 300) FROM (
    SELECT row_number() OVER (ORDER BY id) AS rn, args FROM outbox_jobs) AS o WHERE args->>'account_id' = $1`, fmt.Sprint(account))
	}
	round(0)
	require.Equal(t, 1020, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`))
	pairs := batchesOf(7) + batchesOf(8) // (batch, key) pairs: each adds or meets one job
	require.Equal(t, 4, batchesOf(7))
	res, err := rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, 1020, res.Rows)
	require.Equal(t, 1020, res.Inserted+res.UniqueSkipped+res.Coalesced)
	require.Equal(t, 2, res.Inserted, "one job per account")
	require.Equal(t, 0, res.Dead)
	require.Equal(t, []string{"7 available", "8 available"}, strs(ctx, t, s,
		`SELECT concat_ws(' ', args->>'account_id', state) FROM river_job ORDER BY args->>'account_id'`))
	require.Equal(t, 0, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`))
	// Four batches of at most 300 rows: the first row of a key in a batch
	// added the job or met the waiting one (UniqueSkipped); the rest of
	// the key's rows in the batch were coalesced.
	require.Equal(t, pairs-2, res.UniqueSkipped, "%+v", res)
	require.Equal(t, 1020-pairs, res.Coalesced, "%+v", res)

	// No worker runs: the jobs still wait, and a second round adds none.
	round(10_000)
	pairs = batchesOf(7) + batchesOf(8)
	res, err = rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, relay.MoveResult{Rows: 1020, UniqueSkipped: pairs, Coalesced: 1020 - pairs, OldestCreatedAt: res.OldestCreatedAt}, res)
	require.Equal(t, 2, count(ctx, t, s, `SELECT count(*) FROM river_job`))
	require.Equal(t, 1, count(ctx, t, s, `SELECT count(*) FROM river_job WHERE args->>'account_id' = '7'`))
	st := rl.Stats()
	require.Equal(t, int64(2040), st.Rows)
	require.Equal(t, int64(2040), st.Inserted+st.UniqueSkipped+st.Coalesced)
}

// TestRacingRelays: several relays share the table while a writer keeps
// committing; every row becomes exactly one job, and at every moment the
// jobs plus the rows still waiting are exactly the rows committed. The
// quick run preloads 10,000 rows; TestRacingRelaysLoad (build tag long)
// 50,000.
func TestRacingRelays(t *testing.T) {
	t.Parallel()
	for _, relays := range []int{2, 3} {
		t.Run(fmt.Sprintf("%dRelays", relays), func(t *testing.T) {
			t.Parallel()
			raceRelays(t, relays, 10_000)
		})
	}
}

// raceRelays preloads preload rows, starts nRelays relays and a writer that
// commits 100 rows at a time until the relays have moved half the preloaded
// rows (at most 15,000 rows), sampling the invariant every 50 ms.
func raceRelays(t *testing.T, nRelays, preload int) {
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 12})
	client := plainClient(t, s)
	// The writer commits 100 rows at a time from the start until the
	// relays have moved half the preloaded rows (at most 15,000 rows).
	const maxWriterTxs, perTx = 150, 100
	require.NoError(t, insertN(ctx, s.Pool, 1, preload))

	// committed: rows whose commit returned; started: rows whose commit was
	// sent. A sample taken between two reads lies between them.
	var committed, started atomic.Int64
	committed.Store(int64(preload))
	started.Store(int64(preload))

	relays := make([]*relay.Relay, nRelays)
	for i := range relays {
		relays[i] = plainRelay(t, s, client, relay.Config{BatchSize: 1000, PollMax: 20 * time.Millisecond, DisableListen: true})
	}
	for _, rl := range relays {
		require.NoError(t, rl.Start(ctx))
	}

	writerDone := make(chan struct{})
	var stopWriter atomic.Bool
	go func() {
		defer close(writerDone)
		next := preload + 1
		for i := 0; i < maxWriterTxs && !stopWriter.Load(); i++ {
			tx, err := s.Pool.Begin(ctx)
			if err == nil {
				err = insertN(ctx, tx, next, next+perTx-1)
			}
			if err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			started.Add(perTx)
			if err := tx.Commit(ctx); err != nil {
				t.Errorf("writer: commit: %v", err)
				return
			}
			committed.Add(perTx)
			next += perTx
			time.Sleep(5 * time.Millisecond)
		}
	}()

	samples := 0
	sample := func() (jobs, outboxRows int) {
		t.Helper()
		low := committed.Load()
		var distinct int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM river_job), (SELECT count(DISTINCT args->>'n') FROM river_job), (SELECT count(*) FROM outbox_jobs)`).
			Scan(&jobs, &distinct, &outboxRows))
		high := started.Load()
		require.Equal(t, jobs, distinct, "a row became two jobs")
		total := int64(jobs + outboxRows)
		require.LessOrEqual(t, low, total, "rows were lost: %d jobs + %d waiting < %d committed", jobs, outboxRows, low)
		require.LessOrEqual(t, total, high, "rows appeared: %d jobs + %d waiting > %d written", jobs, outboxRows, high)
		samples++
		return jobs, outboxRows
	}
	// Not a timing: a backstop against a relay that stopped moving (about
	// 20 s with -race on an idle 2-core machine).
	deadline := time.Now().Add(2 * time.Minute)
	var want int
	for {
		time.Sleep(50 * time.Millisecond)
		jobs, waiting := sample()
		if jobs >= preload/2 {
			stopWriter.Store(true)
		}
		select {
		case <-writerDone:
			want = int(committed.Load())
			if jobs == want && waiting == 0 {
				goto done
			}
		default:
		}
		require.True(t, time.Now().Before(deadline), "relays did not move every row in time: %d jobs, %d waiting", jobs, waiting)
	}
done:
	for _, rl := range relays {
		stopRelay(t, rl)
	}
	require.Equal(t, int64(want), committed.Load())
	require.Greater(t, want, preload, "the writer committed while the relays ran")
	var total, distinct, minN, maxN, waiting int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT args->>'n'), min((args->>'n')::int), max((args->>'n')::int), (SELECT count(*) FROM outbox_jobs) FROM river_job`).
		Scan(&total, &distinct, &minN, &maxN, &waiting))
	require.Equal(t, [5]int{want, want, 1, want, 0}, [5]int{total, distinct, minN, maxN, waiting})
	var moved int64
	for i, rl := range relays {
		st := rl.Stats()
		require.Zero(t, st.Dead)
		require.Equal(t, st.Rows, st.Inserted)
		require.Positive(t, st.Rows, "relay %d moved nothing", i)
		moved += st.Rows
	}
	require.Equal(t, int64(want), moved)
	t.Logf("%d relays, %d rows (%d written while they ran), %d samples", nRelays, want, want-preload, samples)
}

// TestRelayWithoutLeader: the relay never waits for River's leader; rows
// move while the leader row belongs to a client that is gone.
func TestRelayWithoutLeader(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	_, err := s.Pool.Exec(ctx, `INSERT INTO river_leader (elected_at, expires_at, leader_id) VALUES (now(), now() + interval '1 day', 'gone_client')`)
	require.NoError(t, err)
	leader := strs(ctx, t, s, `SELECT concat_ws(' ', leader_id, elected_at, expires_at) FROM river_leader`)
	require.Len(t, leader, 1)

	rl := plainRelay(t, s, plainClient(t, s), relay.Config{PollMax: 20 * time.Millisecond, DisableListen: true})
	require.NoError(t, rl.Start(ctx))
	t.Cleanup(func() { stopRelay(t, rl) })
	require.NoError(t, insertN(ctx, s.Pool, 1, 10))
	require.Eventually(t, func() bool {
		return count(ctx, t, s, `SELECT count(*) FROM river_job`) == 10
	}, 30*time.Second, 10*time.Millisecond)
	require.Equal(t, 0, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`))
	require.Equal(t, leader, strs(ctx, t, s, `SELECT concat_ws(' ', leader_id, elected_at, expires_at) FROM river_leader`))
}

// blockingMiddleware holds every insert of the relay's client until
// release is closed (or the insert's context ends), after telling entered.
type blockingMiddleware struct {
	river.MiddlewareDefaults
	entered chan struct{}
	release chan struct{}
}

func (m *blockingMiddleware) InsertMany(ctx context.Context, _ []*rivertype.JobInsertParams, doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	select {
	case m.entered <- struct{}{}:
	default:
	}
	select {
	case <-m.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return doInner(ctx)
}

// TestStartStop: Start twice is refused, Stop finishes the batch under way
// and ends the relay, Stop again (or before Start) is a no-op, and the
// relay can start again.
func TestStartStop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	mw := &blockingMiddleware{entered: make(chan struct{}, 1), release: make(chan struct{})}
	rl := plainRelay(t, s, plainClient(t, s, mw), relay.Config{BatchSize: 10, PollMax: 10 * time.Millisecond, DisableListen: true})

	require.NoError(t, rl.Stop(ctx), "Stop before Start")
	require.NoError(t, insertN(ctx, s.Pool, 1, 25))
	require.NoError(t, rl.Start(ctx))
	require.ErrorIs(t, rl.Start(ctx), relay.ErrRunning)

	<-mw.entered // the first batch is inserting
	stopped := make(chan error, 1)
	go func() { stopped <- rl.Stop(ctx) }()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned %v while a batch was under way", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(mw.release)
	select {
	case err := <-stopped:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return within 10 s of the batch's end")
	}
	// The batch under way committed; no batch followed it.
	require.Equal(t, 10, count(ctx, t, s, `SELECT count(*) FROM river_job`))
	require.Equal(t, 15, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`))
	require.Equal(t, relay.Stats{Batches: 1, Rows: 10, Inserted: 10}, rl.Stats())
	require.NoError(t, rl.Stop(ctx), "Stop of a stopped relay")

	// It starts again and moves the rest.
	require.NoError(t, rl.Start(ctx))
	require.Eventually(t, func() bool {
		return count(ctx, t, s, `SELECT count(*) FROM river_job`) == 25
	}, 30*time.Second, 10*time.Millisecond)
	stopRelay(t, rl)
	require.Equal(t, 0, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`))
}

// TestStopDeadline: Stop whose context ends cuts the batch short: it rolls
// back, its rows stay, and Stop returns the context's error.
func TestStopDeadline(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	mw := &blockingMiddleware{entered: make(chan struct{}, 1), release: make(chan struct{})} // never released
	rl := plainRelay(t, s, plainClient(t, s, mw), relay.Config{BatchSize: 10, DisableListen: true})
	require.NoError(t, insertN(ctx, s.Pool, 1, 25))
	require.NoError(t, rl.Start(ctx))
	<-mw.entered
	stopCtx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, rl.Stop(stopCtx), context.DeadlineExceeded)
	require.Equal(t, 0, count(ctx, t, s, `SELECT count(*) FROM river_job`))
	require.Equal(t, 25, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`))
	require.Equal(t, int64(0), rl.Stats().Rows)
	stopRelay(t, rl)
}

// TestWake: a relay that polls every 10 s moves a row within 2 s of Wake.
func TestWake(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	rl := plainRelay(t, s, plainClient(t, s), relay.Config{PollMin: 10 * time.Second, PollMax: 10 * time.Second, DisableListen: true})
	require.NoError(t, insertN(ctx, s.Pool, 1, 1))
	require.NoError(t, rl.Start(ctx))
	t.Cleanup(func() { stopRelay(t, rl) })
	// The first look moves row 1; the next is 10 s away.
	require.Eventually(t, func() bool { return rl.Stats().Rows == 1 }, 5*time.Second, 5*time.Millisecond)

	require.NoError(t, insertN(ctx, s.Pool, 2, 2)) // plain SQL: no notification
	time.Sleep(300 * time.Millisecond)
	require.Equal(t, 1, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`), "the poll alone would not move it yet")
	woke := time.Now()
	rl.Wake()
	require.Eventually(t, func() bool {
		return rl.Stats().Rows == 2 && count(ctx, t, s, `SELECT count(*) FROM river_job`) == 2
	}, 2*time.Second, 5*time.Millisecond)
	require.Less(t, time.Since(woke), 10*time.Second)
	require.Equal(t, relay.Stats{Batches: 2, Rows: 2, Inserted: 2}, rl.Stats())
}

// TestInProcessWake: a writer's commit wakes a relay of the same schema in
// its process at once, with no notification sent (RelayNotifyInterval < 0)
// and no listener: a relay that polls every 10 s moves the row within 2 s.
// A rollback wakes nothing to move.
func TestInProcessWake(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	client := plainClient(t, s)
	ob, err := outbox.New(s.Pool, client, &outbox.Config{RelayNotifyInterval: -1})
	require.NoError(t, err)
	rl := plainRelay(t, s, client, relay.Config{PollMin: 10 * time.Second, PollMax: 10 * time.Second, DisableListen: true})
	require.NoError(t, rl.Start(ctx))
	t.Cleanup(func() { stopRelay(t, rl) })
	// The first look finds nothing; the next is 10 s away.
	require.Eventually(t, func() bool { return rl.Stats().Batches == 0 && rl.Stats().Errors == 0 }, time.Second, 5*time.Millisecond)
	time.Sleep(200 * time.Millisecond)

	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error { return tx.Enqueue(nArgs{N: 1}, nil) })
	require.NoError(t, err)
	// The relay counts a batch after its commit: wait for both.
	require.Eventually(t, func() bool {
		return rl.Stats().Rows == 1 && count(ctx, t, s, `SELECT count(*) FROM river_job`) == 1
	}, 2*time.Second, 5*time.Millisecond, "woken in process")
	require.Equal(t, relay.Stats{Batches: 1, Rows: 1, Inserted: 1}, rl.Stats())
}

// TestStartContextEnds: a relay whose Start context is cancelled stops, and
// may be started again without Stop (it returned ErrRunning forever).
func TestStartContextEnds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	rl := plainRelay(t, s, plainClient(t, s), relay.Config{DisableListen: true})
	runCtx, cancel := context.WithCancel(ctx)
	require.NoError(t, rl.Start(runCtx))
	cancel()
	require.Eventually(t, func() bool {
		err := rl.Start(ctx)
		require.True(t, err == nil || errors.Is(err, relay.ErrRunning), "%v", err)
		return err == nil
	}, 10*time.Second, 10*time.Millisecond, "startable again once its context ended")
	require.NoError(t, insertN(ctx, s.Pool, 1, 3))
	require.Eventually(t, func() bool { return count(ctx, t, s, `SELECT count(*) FROM river_job`) == 3 }, 10*time.Second, 5*time.Millisecond)
	stopRelay(t, rl)
}

// stopRelay stops rl, failing t if that takes over 10 s.
func stopRelay(t testing.TB, rl *relay.Relay) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, rl.Stop(ctx), "Stop did not return within 10 s")
}

// TestListeningRelay: a relay that polls every 10 s moves a row within 2 s
// of the writer's commit, woken by its notification, and Stop ends its
// listener at once.
func TestListeningRelay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	client := plainClient(t, s)
	// The writer's pool spells the search path differently, so it is not
	// the relay's in this process (package wake): only the notification can
	// wake the relay.
	pcfg, err := pgxpool.ParseConfig(s.URL)
	require.NoError(t, err)
	pcfg.ConnConfig.RuntimeParams["search_path"] = s.Name + ", public"
	writerPool, err := pgxpool.NewWithConfig(ctx, pcfg)
	require.NoError(t, err)
	t.Cleanup(writerPool.Close)
	ob, err := outbox.New(writerPool, client, &outbox.Config{RelayNotifyInterval: time.Millisecond})
	require.NoError(t, err)
	rl := plainRelay(t, s, client, relay.Config{PollMin: 10 * time.Second, PollMax: 10 * time.Second})
	require.NoError(t, rl.Start(ctx))
	// Wait until the listener's LISTEN ran (its Wake after LISTEN is the
	// relay's second look), so that only the notification can explain a
	// prompt move.
	require.Eventually(t, func() bool {
		return count(ctx, t, s, `SELECT count(*) FROM pg_stat_activity WHERE query = $1`,
			`LISTEN "`+s.Name+`.aftercommit_outbox"`) == 1
	}, 10*time.Second, 5*time.Millisecond)
	time.Sleep(100 * time.Millisecond)

	committed := time.Now()
	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error { return tx.Enqueue(nArgs{N: 1}, nil) })
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return count(ctx, t, s, `SELECT count(*) FROM river_job`) == 1
	}, 2*time.Second, 5*time.Millisecond)
	require.Less(t, time.Since(committed), 10*time.Second)

	stopCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = rl.Stop(stopCtx)
	if err != nil {
		// Make the run end anyway, then report.
		_ = rl.Stop(ctx)
	}
	require.NoError(t, err, "Stop of a listening relay must not wait for its context: "+
		"relay.listen blocks in WaitForNotification on the run context, which only Stop's deadline cancels")
	require.Eventually(t, func() bool {
		return count(ctx, t, s, `SELECT count(*) FROM pg_stat_activity WHERE query = $1`, `LISTEN "`+s.Name+`.aftercommit_outbox"`) == 0
	}, 5*time.Second, 5*time.Millisecond, "the listener's connection is closed")
}

// TestNewRefusesBadConfig: New names what is wrong.
func TestNewRefusesBadConfig(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	client := plainClient(t, s)
	for _, tc := range []struct {
		cfg  relay.Config
		want string
	}{
		{relay.Config{BatchSize: -1}, "BatchSize must be 1 to 100000, got -1"},
		{relay.Config{BatchSize: 100_001}, "BatchSize must be 1 to 100000, got 100001"},
		{relay.Config{MaxPayloadBytes: -1}, "MaxPayloadBytes must not be negative"},
		{relay.Config{Movers: -1}, "Movers must be 1 to 64, got -1"},
		{relay.Config{Movers: 65}, "Movers must be 1 to 64, got 65"},
		{relay.Config{PollMin: time.Second, PollMax: time.Millisecond}, "need 0 <= PollMin <= PollMax"},
		{relay.Config{Queues: []string{"Bad Queue"}}, `Queues holds "Bad Queue"`},
		{relay.Config{FullScanInterval: -time.Second}, "FullScanInterval must not be negative, got -1s"},
	} {
		_, err := relay.New(s.Pool, client, &tc.cfg)
		require.ErrorIs(t, err, relay.ErrConfig)
		require.ErrorContains(t, err, tc.want)
	}
	_, err := relay.New(nil, client, nil)
	require.ErrorIs(t, err, relay.ErrConfig)
	_, err = relay.New(s.Pool, nil, nil)
	require.ErrorIs(t, err, relay.ErrConfig)
}

// listArgs holds a list: jsonb's text form (what the relay reads) puts a
// space after every comma, the writer's JSON does not.
type listArgs struct {
	L []int `json:"l"`
}

func (listArgs) Kind() string { return "relaytest.list" }

// TestPayloadLimitAsTheWriterMeasures: args the outbox accepted under its
// payload limit are not refused by a relay with the same limit. The writer
// measures its compact JSON; jsonb's text form of the same args is longer
// (a space after each ':' and ','), and must not count.
func TestPayloadLimitAsTheWriterMeasures(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	client := plainClient(t, s)
	const limit = 200
	ob, err := outbox.New(s.Pool, client, &outbox.Config{MaxPayloadBytes: limit})
	require.NoError(t, err)
	rl := plainRelay(t, s, client, relay.Config{MaxPayloadBytes: limit})

	args := listArgs{L: make([]int, 90)} // {"l":[0,0,…]}: 187 bytes, under the limit
	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error { return tx.Enqueue(args, nil) })
	require.NoError(t, err)
	require.Equal(t, 187+1+89, count(ctx, t, s, `SELECT octet_length(args::text) FROM outbox_jobs`), "jsonb's text adds a space after ':' and each ','")
	res, err := rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, relay.MoveResult{Rows: 1, Inserted: 1, OldestCreatedAt: res.OldestCreatedAt}, res,
		"dead: %v", strs(ctx, t, s, `SELECT reason FROM outbox_dead_jobs`))
}

// meetingMiddleware lets its first insert through, then holds the next
// `at` inserts until all of them are under way at once (or fails the
// test after a while); the later ones pass.
type meetingMiddleware struct {
	river.MiddlewareDefaults
	t    testing.TB
	at   int
	mu   sync.Mutex
	seen int
	met  chan struct{}
}

func (m *meetingMiddleware) InsertMany(ctx context.Context, _ []*rivertype.JobInsertParams, doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	m.mu.Lock()
	m.seen++
	n := m.seen
	if n == m.at+1 {
		close(m.met)
	}
	m.mu.Unlock()
	if n > 1 && n <= m.at+1 {
		select {
		case <-m.met:
		case <-time.After(30 * time.Second):
			m.t.Errorf("insert %d: %d movers never ran at once", n, m.at)
		}
	}
	return doInner(ctx)
}

// TestMovers: after a full batch, Drain and a running relay move with
// Config.Movers batches at once (the inserts of Movers batches are under
// way together), and every row still becomes exactly one job.
func TestMovers(t *testing.T) {
	t.Parallel()
	for _, started := range []bool{false, true} {
		t.Run(map[bool]string{false: "Drain", true: "Start"}[started], func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 8})
			const rows, batch, movers = 10_000, 100, 3
			require.NoError(t, insertN(ctx, s.Pool, 1, rows))
			mw := &meetingMiddleware{t: t, at: movers, met: make(chan struct{})}
			rl := plainRelay(t, s, plainClient(t, s, mw), relay.Config{BatchSize: batch, Movers: movers, DisableListen: true})
			if started {
				require.NoError(t, rl.Start(ctx))
				require.Eventually(t, func() bool {
					return count(ctx, t, s, `SELECT count(*) FROM river_job`) == rows
				}, time.Minute, 10*time.Millisecond)
				stopRelay(t, rl)
			} else {
				res, err := rl.Drain(ctx)
				require.NoError(t, err)
				require.Equal(t, rows, res.Rows)
				require.Equal(t, rows, res.Inserted)
			}
			select {
			case <-mw.met:
			default:
				t.Fatalf("%d movers never ran at once", movers)
			}
			var total, distinct, minN, maxN, waiting int
			require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT args->>'n'), min((args->>'n')::int), max((args->>'n')::int), (SELECT count(*) FROM outbox_jobs) FROM river_job`).
				Scan(&total, &distinct, &minN, &maxN, &waiting))
			require.Equal(t, [5]int{rows, rows, 1, rows, 0}, [5]int{total, distinct, minN, maxN, waiting})
			// Every batch is full but, at the end of the rows, the last
			// one of each mover that was taking at once.
			st := rl.Stats()
			require.Equal(t, relay.Stats{Batches: st.Batches, Rows: rows, Inserted: rows}, st)
			require.GreaterOrEqual(t, st.Batches, int64(rows/batch))
			require.LessOrEqual(t, st.Batches, int64(rows/batch+movers-1))
		})
	}
}
