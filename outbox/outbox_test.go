package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/outboxseam"
	"github.com/aftercommit/aftercommit/internal/testtrace"
	"github.com/aftercommit/aftercommit/outbox"
)

func TestInTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("CommitWritesTheDeduplicatedJobsWithTheirArgs", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		var pingID int64
		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			pingID = insertPing(ctx, t, tx, "first")
			require.NoError(t, tx.Enqueue(noteArgs{PingID: pingID, Note: "a"}, nil))
			require.NoError(t, tx.Enqueue(noteArgs{PingID: pingID, Note: "a"}, nil)) // same JSON
			require.NoError(t, tx.Enqueue(noteArgs{PingID: pingID, Note: "b"}, &river.InsertOpts{Queue: "other"}))
			require.NoError(t, tx.Enqueue(keyedArgs{Key: "k1", Seq: 1}, nil))
			require.NoError(t, tx.Enqueue(keyedArgs{Key: "k1", Seq: 2}, nil)) // same key, first wins
			require.NoError(t, tx.Enqueue(keyedArgs{Key: "k2", Seq: 3}, nil))
			require.Equal(t, 4, tx.Pending())
			require.Equal(t, 2, tx.Duplicates())
			return nil
		})
		require.NoError(t, err)

		require.Equal(t, []jobRow{
			{Kind: "test.note", Args: canonical(t, noteArgs{PingID: pingID, Note: "a"}), Queue: "default", State: "available"},
			{Kind: "test.note", Args: canonical(t, noteArgs{PingID: pingID, Note: "b"}), Queue: "other", State: "available"},
			{Kind: "test.keyed", Args: canonical(t, keyedArgs{Key: "k1", Seq: 1}), Queue: "default", State: "available"},
			{Kind: "test.keyed", Args: canonical(t, keyedArgs{Key: "k2", Seq: 3}), Queue: "default", State: "available"},
		}, canonicalJobs(t, b.jobs(ctx, t)))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM pings WHERE id = $1`, pingID))
		require.Equal(t, outbox.Stats{Pipelined: 1}, b.ob.Stats())
	})

	t.Run("SameKindDifferentKindsAreNotDuplicates", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		// keyedArgs and otherKeyedArgs share a key but not a kind.
		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			require.NoError(t, tx.Enqueue(keyedArgs{Key: "same"}, nil))
			return tx.Enqueue(otherKeyedArgs{Key: "same"}, nil)
		})
		require.NoError(t, err)
		require.Equal(t, 2, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})

	t.Run("ErrorRollsBackRowsAndJobs", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		errBusiness := errors.New("card declined")

		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			id := insertPing(ctx, t, tx, "doomed")
			require.NoError(t, tx.Enqueue(noteArgs{PingID: id}, nil))
			return fmt.Errorf("charging: %w", errBusiness)
		})
		require.ErrorIs(t, err, errBusiness)
		require.Equal(t, "charging: card declined", err.Error())
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM pings`))
		require.Zero(t, b.tracer.Count("river_job"), "no job statement may reach the server")
	})

	t.Run("PanicRollsBackAndIsRaisedAgain", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		recovered := func() (p any) {
			defer func() { p = recover() }()
			_, _ = b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
				id := insertPing(ctx, t, tx, "doomed")
				require.NoError(t, tx.Enqueue(noteArgs{PingID: id}, nil))
				panic("boom")
			})
			return nil
		}()
		require.Equal(t, "boom", recovered)
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM pings`))

		// The connection went back to the pool usable, outside a transaction.
		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			insertPing(ctx, t, tx, "after")
			return nil
		})
		require.NoError(t, err)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM pings`))
	})

	t.Run("TenThousandEnqueuesOverHundredKeysWriteHundredRowsWithOneInsert", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			for i := range 10_000 {
				if err := tx.Enqueue(noteArgs{PingID: int64(i % 100)}, nil); err != nil {
					return err
				}
			}
			require.Equal(t, 100, tx.Pending())
			require.Equal(t, 9_900, tx.Duplicates())
			return nil
		})
		require.NoError(t, err)

		require.Equal(t, 100, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Equal(t, 100, b.count(ctx, t, `SELECT count(DISTINCT args->>'ping_id') FROM river_job`))

		trips := b.tracer.RoundTrips()
		var insertTrips [][]string
		for _, trip := range trips {
			for _, sql := range trip {
				if testtrace.Matches(sql, "insert into outbox_jobs") {
					insertTrips = append(insertTrips, trip)
				}
			}
		}
		require.Len(t, insertTrips, 1, "exactly one INSERT INTO outbox_jobs statement")
		last := insertTrips[0][len(insertTrips[0])-1]
		require.Equal(t, "COMMIT", last, "the insert and the COMMIT share one round trip")
		require.Equal(t, outbox.Stats{Pipelined: 1}, b.ob.Stats())
	})

	t.Run("OptionsBeginQuerySetsLocalSettingsInTheBeginRoundTrip", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{maxConns: 1}) // one connection: the next call reuses it

		res, err := b.ob.InTx(ctx, &outbox.InTxOpts{TxOptions: pgx.TxOptions{BeginQuery: "BEGIN; SET LOCAL lock_timeout = '1234ms'"}},
			func(ctx context.Context, tx *outbox.Tx) error {
				var lt string
				require.NoError(t, tx.QueryRow(ctx, `SHOW lock_timeout`).Scan(&lt))
				require.Equal(t, "1234ms", lt)
				return tx.Enqueue(noteArgs{PingID: insertPing(ctx, t, tx, "opts")}, nil)
			})
		require.NoError(t, err)
		require.Equal(t, 1, res.Inserted)
		require.Equal(t, 1, res.RoundTrips)
		trips := b.tracer.RoundTrips()
		require.Equal(t, []string{"BEGIN; SET LOCAL lock_timeout = '1234ms'"}, trips[0], "BEGIN and the setting share one round trip")
		require.Equal(t, "COMMIT", trips[len(trips)-1][len(trips[len(trips)-1])-1])

		// SET LOCAL ended with the transaction.
		var lt string
		require.NoError(t, b.pool.QueryRow(ctx, `SHOW lock_timeout`).Scan(&lt))
		require.Equal(t, "0", lt)
	})

	t.Run("OptionsReadOnlyRefusesTheJobsAndWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		_, err := b.ob.InTx(ctx, &outbox.InTxOpts{TxOptions: pgx.TxOptions{AccessMode: pgx.ReadOnly}},
			func(_ context.Context, tx *outbox.Tx) error {
				return tx.Enqueue(noteArgs{PingID: 1}, nil)
			})
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		require.Equal(t, "25006", pgErr.Code, "read_only_sql_transaction")
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})

	t.Run("FiftyConcurrentTransactionsEachWriteTheirJobsExactlyOnce", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		const n = 50
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for g := range n {
			wg.Go(func() {
				_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
					var id int64
					if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ($1) RETURNING id`, fmt.Sprint(g)).Scan(&id); err != nil {
						return err
					}
					for range 3 { // de-duplicated inside each transaction
						if err := tx.Enqueue(noteArgs{PingID: id, Note: fmt.Sprint(g)}, nil); err != nil {
							return err
						}
					}
					return tx.Enqueue(keyedArgs{Key: fmt.Sprint(g)}, nil)
				})
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}

		require.Equal(t, n, b.count(ctx, t, `SELECT count(*) FROM pings`))
		require.Equal(t, 2*n, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		// Every ping has exactly one note job, carrying its own id and note.
		require.Equal(t, n, b.count(ctx, t, `
			SELECT count(*) FROM pings p
			 WHERE (SELECT count(*) FROM river_job j
			         WHERE j.kind = 'test.note'
			           AND (j.args->>'ping_id')::bigint = p.id
			           AND j.args->>'note' = p.note) = 1`))
		require.Equal(t, n, b.count(ctx, t, `SELECT count(DISTINCT args->>'key') FROM river_job WHERE kind = 'test.keyed'`))
		require.Equal(t, outbox.Stats{Pipelined: n}, b.ob.Stats())
	})

	t.Run("NoJobsIsAPlainCommit", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			insertPing(ctx, t, tx, "alone")
			return nil
		})
		require.NoError(t, err)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM pings`))
		require.Zero(t, b.tracer.Count("river_job"))
		require.Equal(t, outbox.Stats{}, b.ob.Stats())
	})

	t.Run("TxIsClosedAfterInTxAndCannotBeEndedByHand", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		var leaked *outbox.Tx
		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			require.ErrorIs(t, tx.Commit(ctx), outbox.ErrManagedTx)
			require.ErrorIs(t, tx.Rollback(ctx), outbox.ErrManagedTx)
			leaked = tx
			return nil
		})
		require.NoError(t, err)
		_, err = leaked.Exec(ctx, `INSERT INTO pings (note) VALUES ('late')`)
		require.ErrorIs(t, err, pgx.ErrTxClosed)
		require.ErrorIs(t, leaked.QueryRow(ctx, `SELECT 1`).Scan(new(int)), pgx.ErrTxClosed)
		_, err = leaked.Query(ctx, `SELECT 1`)
		require.ErrorIs(t, err, pgx.ErrTxClosed)
		require.ErrorIs(t, leaked.Enqueue(noteArgs{}, nil), pgx.ErrTxClosed)
		require.ErrorIs(t, leaked.SendBatch(ctx, &pgx.Batch{}).Close(), pgx.ErrTxClosed)
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM pings`))
	})

	t.Run("SavepointsWork", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			insertPing(ctx, t, tx, "kept")
			sp, err := tx.Begin(ctx)
			require.NoError(t, err)
			insertPing(ctx, t, sp, "undone")
			require.NoError(t, sp.Rollback(ctx))
			return tx.Enqueue(noteArgs{Note: "x"}, nil)
		})
		require.NoError(t, err)
		rows, err := b.schema.Pool.Query(ctx, `SELECT note FROM pings ORDER BY id`)
		require.NoError(t, err)
		notes, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		require.Equal(t, []string{"kept"}, notes)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})

	t.Run("CommitFailureLeavesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		b.schema.Scratch(ctx, t, `CREATE TABLE deferred_unique (
			id int, CONSTRAINT deferred_unique_id UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)`, `DROP TABLE deferred_unique`)

		// The duplicate is only detected at COMMIT, in the same round trip
		// as the job insert.
		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO deferred_unique VALUES (1), (1)`)
			require.NoError(t, err)
			return tx.Enqueue(noteArgs{Note: "never"}, nil)
		})
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		require.Equal(t, "23505", pgErr.Code)
		require.Equal(t, "deferred_unique_id", pgErr.ConstraintName)
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM deferred_unique`))

		// Every connection of the pool is still usable.
		for range 15 {
			_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
				return tx.Enqueue(noteArgs{Note: "after"}, nil)
			})
			require.NoError(t, err)
		}
		require.Equal(t, 15, b.count(ctx, t, `SELECT count(*) FROM river_job`), "de-duplication is per transaction: fifteen transactions write fifteen jobs")
	})

	t.Run("InsertErrorInsideThePipelineRollsBack", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		// A check constraint the outbox does not know about fails the job
		// insert itself, inside the batch, before the COMMIT.
		_, err := b.schema.Pool.Exec(ctx, `ALTER TABLE outbox_jobs ADD CONSTRAINT no_forbidden CHECK (args->>'note' IS DISTINCT FROM 'forbidden')`)
		require.NoError(t, err)

		_, err = b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			insertPing(ctx, t, tx, "doomed")
			require.NoError(t, tx.Enqueue(noteArgs{Note: "fine"}, nil))
			return tx.Enqueue(noteArgs{Note: "forbidden"}, nil)
		})
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		require.Equal(t, "no_forbidden", pgErr.ConstraintName)
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM outbox_jobs`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM pings`))
	})
}

// Compile-time: InTx's *Tx can be handed to anything that takes a pgx.Tx.
var _ pgx.Tx = (*outbox.Tx)(nil)

// otherKeyedArgs has the same key as keyedArgs but another kind.
type otherKeyedArgs struct {
	Key string `json:"key"`
}

func (otherKeyedArgs) Kind() string        { return "test.other_keyed" }
func (a otherKeyedArgs) DedupeKey() string { return a.Key }

func canonicalJobs(t *testing.T, rows []jobRow) []jobRow {
	t.Helper()
	for i := range rows {
		rows[i].Args = canonical(t, rows[i].Args)
	}
	return rows
}

func TestRiverSemanticsAreKept(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("UniqueOptionsSkipADuplicateAcrossTransactions", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		for range 3 {
			_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
				return tx.Enqueue(uniqueArgs{CarID: 7}, nil)
			})
			require.NoError(t, err)
		}
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Equal(t, outbox.Stats{Pipelined: 3}, b.ob.Stats())
	})

	t.Run("InsertOptsDefaultsAndOverridesApply", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		at := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)

		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			require.NoError(t, tx.Enqueue(uniqueArgs{CarID: 1}, nil))
			return tx.Enqueue(noteArgs{Note: "later"}, &river.InsertOpts{
				ScheduledAt: at, Priority: 3, MaxAttempts: 5, Tags: []string{"tag1"},
			})
		})
		require.NoError(t, err)
		type row struct {
			Kind        string
			Queue       string
			State       string
			Priority    int16
			MaxAttempts int16
			Tags        []string
			ScheduledAt time.Time
			Unique      bool
		}
		b.drain(ctx, t)
		rows, err := b.schema.Pool.Query(ctx, `SELECT kind, queue, state::text, priority, max_attempts, tags, scheduled_at, unique_key IS NOT NULL FROM river_job ORDER BY kind DESC`)
		require.NoError(t, err)
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
		require.NoError(t, err)
		require.Len(t, got, 2)
		require.Equal(t, row{Kind: "test.unique", Queue: "reports", State: "available", Priority: 2, MaxAttempts: 25, Tags: []string{}, ScheduledAt: got[0].ScheduledAt, Unique: true}, got[0])
		require.Equal(t, row{Kind: "test.note", Queue: "default", State: "scheduled", Priority: 3, MaxAttempts: 5, Tags: []string{"tag1"}, ScheduledAt: at, Unique: false}, row{
			Kind: got[1].Kind, Queue: got[1].Queue, State: got[1].State, Priority: got[1].Priority, MaxAttempts: got[1].MaxAttempts,
			Tags: got[1].Tags, ScheduledAt: got[1].ScheduledAt.UTC(), Unique: got[1].Unique,
		})
	})

	t.Run("InsertNotificationIsSentOnCommit", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{direct: true})

		conn, err := b.schema.Pool.Acquire(ctx)
		require.NoError(t, err)
		defer conn.Release()
		topic := b.schema.Name + ".river_insert"
		_, err = conn.Exec(ctx, "LISTEN "+pgx.Identifier{topic}.Sanitize())
		require.NoError(t, err)
		defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "UNLISTEN *") }()

		_, err = b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(noteArgs{Note: "wake up"}, &river.InsertOpts{Queue: "wakeful"})
		})
		require.NoError(t, err)

		waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		n, err := conn.Conn().WaitForNotification(waitCtx)
		require.NoError(t, err)
		require.Equal(t, topic, n.Channel)
		require.JSONEq(t, `{"queue": "wakeful"}`, n.Payload)
	})

	t.Run("AWorkingClientRunsTheCommittedJob", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{direct: true})

		done := make(chan int64, 1)
		workers := river.NewWorkers()
		river.AddWorker(workers, river.WorkFunc(func(_ context.Context, job *river.Job[noteArgs]) error {
			done <- job.Args.PingID
			return nil
		}))
		worker, err := river.NewClient(riverpgxv5.New(b.schema.Pool), &river.Config{
			Schema:  b.schema.Name,
			Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 2}},
			Workers: workers,
			Logger:  discardLogger(),
		})
		require.NoError(t, err)
		require.NoError(t, worker.Start(ctx))
		defer func() { require.NoError(t, worker.Stop(context.WithoutCancel(ctx))) }()

		var id int64
		_, err = b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			id = insertPing(ctx, t, tx, "work me")
			return tx.Enqueue(noteArgs{PingID: id}, nil)
		})
		require.NoError(t, err)
		select {
		case got := <-done:
			require.Equal(t, id, got)
		case <-time.After(15 * time.Second):
			t.Fatal("the job was not worked within 15 s")
		}
	})

	t.Run("FallbackPathGivesTheSameRows", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{cfg: &outbox.Config{DisablePipelinedCommit: true}, direct: true})

		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			for i := range 10 {
				require.NoError(t, tx.Enqueue(noteArgs{PingID: int64(i % 3)}, nil))
			}
			return nil
		})
		require.NoError(t, err)
		require.Equal(t, 3, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Equal(t, 1, b.tracer.Count("insert into", "river_job"))
		require.Equal(t, outbox.Stats{Fallbacks: 1}, b.ob.Stats())
		for _, trip := range b.tracer.RoundTrips() {
			for _, sql := range trip {
				if testtrace.Matches(sql, "insert into", "river_job") {
					require.Len(t, trip, 1, "without pipelining the insert is a round trip of its own")
				}
			}
		}
	})

	t.Run("RiverRefusalRollsBack", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{direct: true})

		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			insertPing(ctx, t, tx, "doomed")
			return tx.Enqueue(noteArgs{}, &river.InsertOpts{Priority: 9})
		})
		require.EqualError(t, err, "outbox: inserting 1 jobs: priority must be between 1 and 4")
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM pings`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})
}

// uniqueArgs uses River's unique jobs and a default queue and priority.
type uniqueArgs struct {
	CarID int64 `json:"car_id"`
}

func (uniqueArgs) Kind() string { return "test.unique" }
func (uniqueArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: "reports", Priority: 2, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

func TestBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("FlushInCallersTransaction", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()

		batch := b.ob.NewBatch()
		for i := range 1000 {
			require.NoError(t, batch.Add(keyedArgs{Key: fmt.Sprint(i % 10), Seq: i}, nil))
		}
		require.Equal(t, 10, batch.Len())
		require.Equal(t, 990, batch.Duplicates())
		b.tracer.Reset()
		res, err := batch.Flush(ctx, tx)
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 1000, Duplicates: 990, Inserted: 10, RoundTrips: 1}, res)
		require.Equal(t, 1, b.tracer.Count("insert into outbox_jobs"))
		var trips [][]string
		for _, trip := range b.tracer.RoundTrips() {
			// River reads the server version once per client, on first use.
			if !testtrace.Matches(trip[0], "PGGetProductAndVersion") {
				trips = append(trips, trip)
			}
		}
		require.Len(t, trips, 1, "one round trip for the jobs")
		require.NotContains(t, trips[0], "COMMIT", "the caller owns the transaction")
		require.Zero(t, batch.Len(), "a flushed batch is empty")

		// Not visible to others before the caller commits.
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.NoError(t, tx.Commit(ctx))
		require.Equal(t, 10, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Equal(t, 10, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE (args->>'seq')::int < 10`), "the first job of each key won")
	})

	t.Run("CallerRollbackLeavesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		res, err := b.ob.EnqueueMany(ctx, tx, []river.InsertManyParams{{Args: noteArgs{Note: "a"}}, {Args: noteArgs{Note: "a"}}, {Args: noteArgs{Note: "b"}}})
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 3, Duplicates: 1, Inserted: 2, RoundTrips: 1}, res)
		require.NoError(t, tx.Rollback(ctx))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})

	t.Run("DeduperDuplicatesAreDroppedBeforeEncoding", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		huge := strings.Repeat("x", 200<<10)

		batch := b.ob.NewBatch()
		require.NoError(t, batch.Add(blobArgs{Key: "a", Blob: "small"}, nil))
		// Same key: dropped without being encoded, so its size is moot.
		require.NoError(t, batch.Add(blobArgs{Key: "a", Blob: huge}, nil))
		// New key: encoded and refused.
		err := batch.Add(blobArgs{Key: "b", Blob: huge}, nil)
		require.ErrorIs(t, err, outbox.ErrPayloadTooLarge)
		require.Equal(t, 1, batch.Len())
		require.Equal(t, 1, batch.Duplicates())
	})

	t.Run("EmptyFlushWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()
		b.tracer.Reset()
		res, err := b.ob.NewBatch().Flush(ctx, tx)
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{}, res)
		require.Empty(t, b.tracer.RoundTrips())
	})

	t.Run("AFailedAddPoisonsTheBatch", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()
		batch := b.ob.NewBatch()
		require.NoError(t, batch.Add(noteArgs{Note: "fine"}, nil))
		require.ErrorIs(t, batch.Add(nil, nil), outbox.ErrNilArgs)
		require.NoError(t, batch.Add(noteArgs{Note: "also fine"}, nil))
		b.tracer.Reset()
		_, err = batch.Flush(ctx, tx)
		require.ErrorIs(t, err, outbox.ErrNilArgs)
		require.ErrorIs(t, batch.Err(), outbox.ErrNilArgs)
		require.Empty(t, b.tracer.RoundTrips(), "nothing was sent")
	})
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("PayloadTooLargeIsRefusedAndNothingCommits", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		big := noteArgs{Note: strings.Repeat("x", 200<<10)}

		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			insertPing(ctx, t, tx, "with a big job")
			require.NoError(t, tx.Enqueue(noteArgs{Note: "small"}, nil))
			return tx.Enqueue(big, nil)
		})
		require.ErrorIs(t, err, outbox.ErrPayloadTooLarge)
		var tooLarge *outbox.PayloadTooLargeError
		require.ErrorAs(t, err, &tooLarge)
		require.Equal(t, outbox.PayloadTooLargeError{Kind: "test.note", Size: 200<<10 + len(`{"ping_id":0,"note":""}`), Limit: 128 << 10}, *tooLarge)
		require.Equal(t, `outbox: args of job kind "test.note" are 204823 bytes, over the 131072-byte limit: store the data in a table and put its ID in the args`, err.Error())
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM pings`))
	})

	t.Run("IgnoredEnqueueErrorStillRollsBack", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			insertPing(ctx, t, tx, "half")
			require.NoError(t, tx.Enqueue(noteArgs{Note: "small"}, nil))
			_ = tx.Enqueue(noteArgs{Note: strings.Repeat("x", 200<<10)}, nil) // ignored by a careless caller
			return nil
		})
		require.ErrorIs(t, err, outbox.ErrTxAborted)
		require.ErrorIs(t, err, outbox.ErrPayloadTooLarge)
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM pings`))
	})

	t.Run("ConfiguredLimit", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{cfg: &outbox.Config{MaxPayloadBytes: 64}})

		batch := b.ob.NewBatch()
		require.NoError(t, batch.Add(noteArgs{Note: strings.Repeat("x", 64-len(`{"ping_id":0,"note":""}`))}, nil))
		err := batch.Add(noteArgs{Note: strings.Repeat("x", 65-len(`{"ping_id":0,"note":""}`))}, nil)
		require.Equal(t, &outbox.PayloadTooLargeError{Kind: "test.note", Size: 65, Limit: 64}, err)
	})

	t.Run("InvalidArgs", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{cfg: &outbox.Config{Queues: []string{"default", "mail"}}})

		var nilPtr *ptrArgs
		cases := []struct {
			name string
			args river.JobArgs
			opts *river.InsertOpts
			is   error
			msg  string
		}{
			{"Nil", nil, nil, outbox.ErrNilArgs, "outbox: nil job args"},
			{"NilPointer", nilPtr, nil, outbox.ErrNilArgs, "outbox: nil job args"},
			{"EmptyKind", emptyKindArgs{}, nil, outbox.ErrInvalidArgs, "outbox: invalid job args: outbox_test.emptyKindArgs has an empty kind"},
			{"Unencodable", badJSONArgs{}, nil, outbox.ErrInvalidArgs, `outbox: invalid job args: kind "test.bad_json": json: error calling MarshalJSON for type outbox_test.badJSONArgs: no JSON today`},
			{"MalformedQueue", noteArgs{}, &river.InsertOpts{Queue: "Bad Queue"}, outbox.ErrInvalidQueue, `outbox: invalid queue name: "Bad Queue" (kind "test.note"): use lower-case letters and digits separated by _ or -, at most 64 characters`},
			{"UnknownQueue", noteArgs{}, &river.InsertOpts{Queue: "sms"}, outbox.ErrUnknownQueue, `outbox: unknown queue: "sms" (kind "test.note") is not one of the configured queues`},
			{"UnknownDefaultQueueOfArgs", uniqueArgs{}, nil, outbox.ErrUnknownQueue, `outbox: unknown queue: "reports" (kind "test.unique") is not one of the configured queues`},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				var enqueueErr error
				_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
					insertPing(ctx, t, tx, tc.name)
					require.NoError(t, tx.Enqueue(noteArgs{Note: "good"}, &river.InsertOpts{Queue: "mail"}))
					enqueueErr = tx.Enqueue(tc.args, tc.opts)
					return enqueueErr
				})
				require.ErrorIs(t, err, tc.is)
				require.EqualError(t, enqueueErr, tc.msg)
			})
		}
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM pings`))
	})

	t.Run("AllowLists", func(t *testing.T) {
		t.Parallel()
		base := setup(ctx, t, nil)
		newOutbox := func(cfg *outbox.Config) *outbox.Outbox {
			ob, err := outbox.New(base.pool, base.client, cfg)
			require.NoError(t, err)
			return ob
		}
		// try enqueues to queue and publishes on topic, rolling back.
		try := func(ob *outbox.Outbox, queue, topic string) (enqueueErr, publishErr error) {
			_, _ = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
				enqueueErr = tx.Enqueue(noteArgs{Note: "x"}, &river.InsertOpts{Queue: queue})
				publishErr = tx.Publish(topic, map[string]int{"id": 1})
				return errors.New("roll back")
			})
			return enqueueErr, publishErr
		}
		registry := &outboxseam.Registry{Queues: []string{"mail", "sms"}, Topics: []string{"a.b", "c.d"}}
		empty := &outboxseam.Registry{Queues: []string{}, Topics: []string{}}
		for _, tc := range []struct {
			name         string
			ob           *outbox.Outbox
			queue, topic string
			queueErr     error
			topicErr     error
		}{
			// Nil and empty Config lists both allow any name.
			{"NilLists", newOutbox(&outbox.Config{}), "anything", "any.topic", nil, nil},
			{"EmptyLists", newOutbox(&outbox.Config{Queues: []string{}, Topics: []string{}}), "anything", "any.topic", nil, nil},
			{"ConfigRefuses", newOutbox(&outbox.Config{Queues: []string{"mail"}, Topics: []string{"a.b"}}), "sms", "c.d", outbox.ErrUnknownQueue, outbox.ErrUnknownTopic},
			// A registry's lists restrict, an empty one to nothing.
			{"RegistryAllows", newOutbox(withRegistry(&outbox.Config{}, registry)), "sms", "c.d", nil, nil},
			{"RegistryRefuses", newOutbox(withRegistry(&outbox.Config{}, registry)), "push", "e.f", outbox.ErrUnknownQueue, outbox.ErrUnknownTopic},
			{"EmptyRegistryRefuses", newOutbox(withRegistry(&outbox.Config{}, empty)), "mail", "a.b", outbox.ErrUnknownQueue, outbox.ErrUnknownTopic},
			// With both, a name must be in both.
			{"BothAllow", newOutbox(withRegistry(&outbox.Config{Queues: []string{"mail"}, Topics: []string{"a.b"}}, registry)), "mail", "a.b", nil, nil},
			{"ConfigNarrowsRegistry", newOutbox(withRegistry(&outbox.Config{Queues: []string{"mail"}, Topics: []string{"a.b"}}, registry)), "sms", "c.d", outbox.ErrUnknownQueue, outbox.ErrUnknownTopic},
		} {
			t.Run(tc.name, func(t *testing.T) {
				enqueueErr, publishErr := try(tc.ob, tc.queue, tc.topic)
				if tc.queueErr == nil {
					require.NoError(t, enqueueErr)
				} else {
					require.ErrorIs(t, enqueueErr, tc.queueErr)
				}
				if tc.topicErr == nil {
					require.NoError(t, publishErr)
				} else {
					require.ErrorIs(t, publishErr, tc.topicErr)
				}
			})
		}
		require.Zero(t, base.count(ctx, t, `SELECT count(*) FROM outbox_jobs`))
	})

	t.Run("New", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		_, err := outbox.New(nil, b.client, nil)
		require.ErrorIs(t, err, outbox.ErrNilPool)
		_, err = outbox.New(b.pool, nil, nil)
		require.ErrorIs(t, err, outbox.ErrNilClient)
		_, err = outbox.New(b.pool, b.client, &outbox.Config{MaxPayloadBytes: -1})
		require.EqualError(t, err, "outbox: Config.MaxPayloadBytes must not be negative, got -1")
		_, err = outbox.New(b.pool, b.client, &outbox.Config{Queues: []string{"ok", "Not OK"}})
		require.ErrorIs(t, err, outbox.ErrInvalidQueue)
	})

	t.Run("CancelledContext", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		cancelled, cancel := context.WithCancel(ctx)
		cancel()

		called := false
		_, err := b.ob.InTx(cancelled, nil, func(_ context.Context, _ *outbox.Tx) error {
			called = true
			return nil
		})
		require.ErrorIs(t, err, context.Canceled)
		require.False(t, called)
	})
}

type blobArgs struct {
	Key  string `json:"key"`
	Blob string `json:"blob"`
}

func (blobArgs) Kind() string        { return "test.blob" }
func (a blobArgs) DedupeKey() string { return a.Key }

type ptrArgs struct{}

func (*ptrArgs) Kind() string { return "test.ptr" }

type emptyKindArgs struct{}

func (emptyKindArgs) Kind() string { return "" }

type badJSONArgs struct{}

func (badJSONArgs) Kind() string                 { return "test.bad_json" }
func (badJSONArgs) MarshalJSON() ([]byte, error) { return nil, errors.New("no JSON today") }

func TestFlushResult(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("PipelinedCommit", func(t *testing.T) {
		t.Parallel()
		var flushed []outbox.FlushResult
		var mu sync.Mutex
		b := setup(ctx, t, &setupOpts{cfg: &outbox.Config{OnFlush: func(_ context.Context, res outbox.FlushResult) {
			mu.Lock()
			defer mu.Unlock()
			flushed = append(flushed, res)
		}}, direct: true})

		enqueue := func(_ context.Context, tx *outbox.Tx) error {
			for i := range 10 {
				require.NoError(t, tx.Enqueue(noteArgs{PingID: int64(i % 3)}, nil))
			}
			return tx.Enqueue(uniqueArgs{CarID: 1}, nil)
		}
		res, err := b.ob.InTx(ctx, nil, enqueue)
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 11, Duplicates: 7, Inserted: 4, RoundTrips: 1}, res)

		// The unique job exists already: River matches it instead of inserting.
		res, err = b.ob.InTx(ctx, nil, enqueue)
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 11, Duplicates: 7, Inserted: 3, UniqueSkipped: 1, RoundTrips: 1}, res)

		// No jobs, no flush report; a failed transaction reports nothing.
		res, err = b.ob.InTx(ctx, nil, func(context.Context, *outbox.Tx) error { return nil })
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{}, res)
		_, err = b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			require.NoError(t, tx.Enqueue(noteArgs{}, nil))
			return errors.New("no")
		})
		require.Error(t, err)

		mu.Lock()
		defer mu.Unlock()
		require.Equal(t, []outbox.FlushResult{
			{Enqueued: 11, Duplicates: 7, Inserted: 4, RoundTrips: 1},
			{Enqueued: 11, Duplicates: 7, Inserted: 3, UniqueSkipped: 1, RoundTrips: 1},
		}, flushed)
	})

	t.Run("FallbackAndBatch", func(t *testing.T) {
		t.Parallel()
		var last outbox.FlushResult
		b := setup(ctx, t, &setupOpts{cfg: &outbox.Config{
			DisablePipelinedCommit: true,
			OnFlush:                func(_ context.Context, res outbox.FlushResult) { last = res },
		}, direct: true})

		res, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			require.NoError(t, tx.Enqueue(uniqueArgs{CarID: 2}, nil))
			return tx.Enqueue(uniqueArgs{CarID: 2}, nil)
		})
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 2, Duplicates: 1, Inserted: 1, RoundTrips: 2}, res)

		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()
		batch := b.ob.NewBatch()
		require.NoError(t, batch.Add(uniqueArgs{CarID: 2}, nil))
		require.NoError(t, batch.Add(uniqueArgs{CarID: 3}, nil))
		_, err = batch.Flush(ctx, tx)
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 2, Inserted: 1, UniqueSkipped: 1, RoundTrips: 1}, last)
	})
}

func TestCopy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	enqueue := func(n int, extra ...river.JobArgs) func(ctx context.Context, tx *outbox.Tx) error {
		return func(_ context.Context, tx *outbox.Tx) error {
			for i := range n {
				if err := tx.Enqueue(noteArgs{PingID: int64(i)}, nil); err != nil {
					return err
				}
			}
			for _, a := range extra {
				if err := tx.Enqueue(a, nil); err != nil {
					return err
				}
			}
			return nil
		}
	}

	t.Run("ManyPlainJobsGoByCopy", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{cfg: &outbox.Config{CopyMinJobs: 100}, direct: true})
		res, err := b.ob.InTx(ctx, nil, enqueue(150))
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 150, Inserted: 150, RoundTrips: 2}, res, "COPY, then COMMIT")
		require.Equal(t, outbox.Stats{Copied: 1}, b.ob.Stats())
		require.Equal(t, 150, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = 'test.note' AND state = 'available'`))
		require.Equal(t, 150, b.count(ctx, t, `SELECT count(DISTINCT args->>'ping_id') FROM river_job`))

		// Fewer than CopyMinJobs: the pipelined INSERT.
		res, err = b.ob.InTx(ctx, nil, enqueue(99))
		require.NoError(t, err)
		require.Equal(t, 1, res.RoundTrips)
		require.Equal(t, outbox.Stats{Copied: 1, Pipelined: 1}, b.ob.Stats())
	})

	t.Run("OneUniqueJobKeepsTheInsert", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{cfg: &outbox.Config{CopyMinJobs: 100}, direct: true})
		res, err := b.ob.InTx(ctx, nil, enqueue(150, uniqueArgs{CarID: 1}))
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 151, Inserted: 151, RoundTrips: 1}, res)
		// Again: the unique job matches the waiting one, no error.
		res, err = b.ob.InTx(ctx, nil, enqueue(150, uniqueArgs{CarID: 1}))
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 151, Inserted: 150, UniqueSkipped: 1, RoundTrips: 1}, res)
		require.Equal(t, outbox.Stats{Pipelined: 2}, b.ob.Stats())
	})

	t.Run("ADedupeKeyKeepsTheInsert", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{cfg: withRegistry(&outbox.Config{CopyMinJobs: 100}, &outboxseam.Registry{
			DedupeKey: func(args river.JobArgs) (string, bool) {
				if k, ok := args.(keyedArgs); ok {
					return k.Key, true // a queue lock's key, as jobs.NewOutbox sets it
				}
				return "", false
			}}), direct: true})
		_, err := b.ob.InTx(ctx, nil, enqueue(150, keyedArgs{Key: "k"}))
		require.NoError(t, err)
		require.Equal(t, outbox.Stats{Pipelined: 1}, b.ob.Stats())
	})

	t.Run("NegativeNeverCopies", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{cfg: &outbox.Config{CopyMinJobs: -1}, direct: true})
		_, err := b.ob.InTx(ctx, nil, enqueue(600))
		require.NoError(t, err)
		require.Equal(t, outbox.Stats{Pipelined: 1}, b.ob.Stats())
	})

	t.Run("DefaultThresholdWithEventsAndRollback", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{direct: true})
		res, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			if err := enqueue(outbox.CopyMinJobsDefault)(ctx, tx); err != nil {
				return err
			}
			return tx.Publish("test.topic", map[string]int{"n": 1})
		})
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 500, Inserted: 500, Events: 1, RoundTrips: 3}, res, "events, COPY, COMMIT")
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM outbox_events`))

		// A batch copied into a transaction that then rolls back leaves nothing.
		err = pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			batch := b.ob.NewBatch()
			for i := range 600 {
				require.NoError(t, batch.Add(noteArgs{PingID: int64(1000 + i)}, nil))
			}
			res, err := batch.Flush(ctx, tx)
			require.NoError(t, err)
			require.Equal(t, 600, res.Inserted)
			require.Equal(t, int64(2), b.ob.Stats().Copied)
			return errors.New("roll back")
		})
		require.EqualError(t, err, "roll back")
		require.Equal(t, 500, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})
}

// TestNULRefused: Postgres' jsonb refuses the NUL character, so args and
// event payloads holding one are refused when they are enqueued or
// published, not by the database at COMMIT; nothing is written.
func TestNULRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t, nil)

	_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		insertPing(ctx, t, tx, "nul")
		return tx.Enqueue(noteArgs{Note: "a\x00b"}, nil)
	})
	require.ErrorIs(t, err, outbox.ErrInvalidArgs)
	require.EqualError(t, err, `outbox: invalid job args: kind "test.note": a string holds a NUL character (\u0000), which Postgres' jsonb refuses`)

	_, err = b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Publish("test.topic", json.RawMessage(`{"x":"a\u0000b"}`))
	})
	require.ErrorIs(t, err, outbox.ErrInvalidEvent)
	require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM pings`))
	require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM outbox_events`))

	// A backslash followed by "u0000" is text: written as such.
	_, err = b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(noteArgs{Note: `a\u0000b`}, nil)
	})
	require.NoError(t, err)
	b.drain(ctx, t)
	var note string
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT args->>'note' FROM river_job`).Scan(&note))
	require.Equal(t, `a\u0000b`, note)
}
