package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// TestScanFloor: a row whose transaction commits long after its INSERT,
// while the rows after it move, falls below the loop's scan floor. The
// loop's takes no longer see it until a full scan: with full scans an hour
// apart, it waits; MoveBatch (always from the head) moves it; with the
// default full scan, the loop moves it by itself within a few seconds.
// Every row becomes exactly one job.
func TestScanFloor(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		every time.Duration // FullScanInterval
	}{
		{"FullScansAnHourApart", time.Hour},
		{"DefaultFullScan", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := dbtest.TestSchema(ctx, t, nil)
			rl := plainRelay(t, s, plainClient(t, s), relay.Config{
				ScanLag: 50 * time.Millisecond, FullScanInterval: tc.every, PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond,
			})
			// Row 1, in a transaction left open.
			late, err := s.Pool.Begin(ctx)
			require.NoError(t, err)
			defer func() { _ = late.Rollback(ctx) }()
			require.NoError(t, insertN(ctx, late, 1, 1))

			require.NoError(t, rl.Start(ctx))
			t.Cleanup(func() { stopRelay(t, rl) })
			// Rows 2…41 commit one by one and move, past the lag.
			for n := 2; n <= 41; n++ {
				require.NoError(t, insertN(ctx, s.Pool, n, n))
				time.Sleep(5 * time.Millisecond)
			}
			require.Eventually(t, func() bool { return rl.Stats().Rows == 40 }, 10*time.Second, 5*time.Millisecond)
			time.Sleep(200 * time.Millisecond) // the floor passes row 1
			require.NoError(t, late.Commit(ctx))
			committed := time.Now()

			if tc.every == time.Hour {
				time.Sleep(time.Second)
				require.Equal(t, []string{"1"}, strs(ctx, t, s, `SELECT args->>'n' FROM outbox_jobs`),
					"the loop's takes look above the floor; row 1 waits for a full scan")
				res, err := rl.MoveBatch(ctx)
				require.NoError(t, err)
				require.Equal(t, 1, res.Rows, "MoveBatch scans from the head")
			} else {
				require.Eventually(t, func() bool { return count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`) == 0 },
					10*time.Second, 5*time.Millisecond, "the full scan moves row 1")
				require.Less(t, time.Since(committed), relay.FullScanIntervalDefault+5*time.Second)
			}
			require.Equal(t, 41, count(ctx, t, s, `SELECT count(*) FROM river_job`))
			require.Equal(t, 41, count(ctx, t, s, `SELECT count(DISTINCT args->>'n') FROM river_job`))
			// The relay counts a take after its COMMIT: the table can be
			// empty a moment before Stats says 41 (a CI run saw 40).
			require.Eventually(t, func() bool { return rl.Stats().Rows == 41 }, 10*time.Second, 5*time.Millisecond,
				"the relay counts the 41 rows it moved")
			time.Sleep(50 * time.Millisecond)
			require.Equal(t, int64(41), rl.Stats().Rows, "and no more")
		})
	}
}

// TestScanFloorSkipsTheMovedHead: while a snapshot holds back vacuum, the
// moved rows' index entries stay, and a take from the head reads them all;
// the loop's takes start above the floor and read none. What a take reads
// is pg_stat's idx_tup_read of the primary key: the relay's own connection
// is the only reader of the table, and it flushes its counts on demand.
func TestScanFloorSkipsTheMovedHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	s.HoldSnapshot(ctx, t, "floor-test-holder", nil)

	cfg, err := pgxpool.ParseConfig(s.URL)
	require.NoError(t, err)
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	rl, err := relay.New(pool, plainClient(t, s), &relay.Config{Schema: s.Name, Logger: discard,
		ScanLag: time.Nanosecond, FullScanInterval: time.Hour})
	require.NoError(t, err)

	// 5,000 rows moved and deleted while the snapshot is held: dead, and
	// not removable.
	require.NoError(t, insertN(ctx, s.Pool, 1, 5000))
	_, err = rl.Drain(ctx)
	require.NoError(t, err)

	// reads flushes the relay connection's counts and returns them.
	reads := func() int64 {
		_, err := pool.Exec(ctx, `SELECT pg_stat_force_next_flush()`)
		require.NoError(t, err)
		_, err = pool.Exec(ctx, `SELECT 1`) // the flush happened when the connection went idle
		require.NoError(t, err)
		var n int64
		require.NoError(t, pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_stat_clear_snapshot()`); err != nil {
				return err
			}
			return tx.QueryRow(ctx, `SELECT idx_tup_read FROM pg_stat_user_indexes
				WHERE schemaname = current_schema() AND indexrelname = 'outbox_jobs_pkey'`).Scan(&n)
		}))
		return n
	}
	// The loop's first take is a full scan: it reads the 5,000 dead
	// entries, and so does MoveBatch, always.
	for _, take := range []func(context.Context) (relay.MoveResult, error){rl.MoveNext, rl.MoveBatch} {
		before := reads()
		res, err := take(ctx)
		require.NoError(t, err)
		require.Zero(t, res.Rows)
		require.GreaterOrEqual(t, reads()-before, int64(5000))
	}
	// Then the loop's takes start above the floor (the last moved row,
	// 5000): 20 rows, one take each, read only themselves.
	before := reads()
	for n := 5001; n <= 5020; n++ {
		require.NoError(t, insertN(ctx, s.Pool, n, n))
		res, err := rl.MoveNext(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, res.Rows)
	}
	require.Less(t, reads()-before, int64(100), "the loop's takes skip the dead head")
	require.Equal(t, 5020, count(ctx, t, s, `SELECT count(*) FROM river_job`))
	require.Zero(t, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`))
}
