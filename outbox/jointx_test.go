package outbox_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/outbox"
)

// TestJoinTx checks the three transactions JoinTx runs in: the caller's
// pgx.Tx (jobs flushed into it, one round trip, committed or rolled back by
// the caller), an InTx *Tx (jobs left to its COMMIT), and none (an InTx of
// its own).
func TestJoinTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// body is the code written once for every transaction: a ping and two
	// identical jobs (de-duplicated to one).
	body := func(note string) func(ctx context.Context, tx *outbox.Tx) error {
		return func(ctx context.Context, tx *outbox.Tx) error {
			id := insertPing(ctx, t, tx, note)
			for range 2 {
				if err := tx.Enqueue(noteArgs{PingID: id, Note: note}, nil); err != nil {
					return err
				}
			}
			return nil
		}
	}

	t.Run("CallerTxCommitted", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		b.tracer.Reset()
		res, err := b.ob.JoinTx(ctx, tx, body("caller"))
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 2, Duplicates: 1, Inserted: 1, RoundTrips: 1}, res)
		// The ping's INSERT and the one flush: no COMMIT, the caller owns it.
		trips := b.tracer.RoundTrips()
		require.Len(t, trips, 2)
		require.NotContains(t, trips[1], "COMMIT")
		// Nothing is visible before the caller commits.
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM outbox_jobs`))
		require.NoError(t, tx.Commit(ctx))
		require.Equal(t, []jobRow{{Kind: "test.note", Args: `{"note": "caller", "ping_id": 1}`, Queue: "default", State: "available"}}, b.jobs(ctx, t))
	})

	t.Run("CallerTxRolledBack", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		_, err = b.ob.JoinTx(ctx, tx, body("rolled back"))
		require.NoError(t, err)
		require.NoError(t, tx.Rollback(ctx))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM pings`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})

	t.Run("FunctionErrorWritesNoJob", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		boom := errors.New("boom")
		res, err := b.ob.JoinTx(ctx, tx, func(ctx context.Context, otx *outbox.Tx) error {
			require.NoError(t, body("failed")(ctx, otx))
			return boom
		})
		require.ErrorIs(t, err, boom)
		require.Zero(t, res)
		// The caller may still commit its own rows: no job went with them.
		require.NoError(t, tx.Commit(ctx))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM pings`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})

	t.Run("InsideInTx", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		res, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			joined, err := b.ob.JoinTx(ctx, tx, body("inner"))
			require.Zero(t, joined, "written by the enclosing InTx")
			require.Equal(t, 1, tx.Pending())
			return err
		})
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 2, Duplicates: 1, Inserted: 1, RoundTrips: 1}, res)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})

	t.Run("AnotherOutboxsTxIsACallerTx", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		other, err := outbox.New(b.pool, b.client, nil)
		require.NoError(t, err)
		_, err = other.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			res, err := b.ob.JoinTx(ctx, tx, body("other"))
			require.Equal(t, 1, res.Inserted, "flushed into the other outbox's transaction")
			require.Zero(t, tx.Pending(), "nothing left for the other outbox's commit")
			return err
		})
		require.NoError(t, err)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})

	t.Run("NilTxIsInTx", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		res, err := b.ob.JoinTx(ctx, nil, body("own"))
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 2, Duplicates: 1, Inserted: 1, RoundTrips: 1}, res)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM pings`))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job`))
	})

	t.Run("ClosedTx", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		var kept *outbox.Tx
		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			kept = tx
			return nil
		})
		require.NoError(t, err)
		_, err = b.ob.JoinTx(ctx, kept, body("late"))
		require.ErrorIs(t, err, pgx.ErrTxClosed)
	})
}
