package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

func TestBackfill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}

	t.Run("RecomputesTheRange", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		// Two fundraisers; donations on Jan 1 and 2 (one failed) and Jan 3,
		// written without events; a stale row on Jan 2 and one on Jan 3.
		_, err := s.Pool.Exec(ctx, `
INSERT INTO users (id, name, email) VALUES (1, 'A', 'a@example.com');
INSERT INTO fundraisers (id, name) VALUES (1, 'F1'), (2, 'F2');
INSERT INTO donations (user_id, fundraiser_id, donor_email, amount_cents, currency, status, created_at) VALUES
 (1, 1, 'a@example.com', 100, 'USD', 'succeeded', '2026-01-01 10:00Z'),
 (1, 1, 'a@example.com', 200, 'USD', 'succeeded', '2026-01-01 23:59:59Z'),
 (1, 2, 'a@example.com', 300, 'USD', 'succeeded', '2026-01-02 00:00Z'),
 (1, 2, 'a@example.com', 999, 'USD', 'failed',    '2026-01-02 01:00Z'),
 (1, 1, 'a@example.com', 400, 'USD', 'succeeded', '2026-01-03 12:00Z');
INSERT INTO fundraiser_daily_totals (fundraiser_id, day, donations_count, total_cents) VALUES
 (1, '2026-01-02', 7, 700), (1, '2026-01-03', 9, 900);`)
		require.NoError(t, err)

		res := runCLI(ctx, t, environ, "backfill", "--from", "2026-01-01", "--to", "2026-01-02", "--database-url", s.URL, "--schema", s.Name)
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Empty(t, res.stderr)
		require.Equal(t, "2026-01-01 to 2026-01-02: 2 rows written, 1 emptied, 3 donations counted\n", res.stdout)

		type row struct {
			Fundraiser int64
			Day        time.Time
			Count      int
			Cents      int64
		}
		rows, err := s.Pool.Query(ctx, `SELECT fundraiser_id, day, donations_count, total_cents FROM fundraiser_daily_totals ORDER BY day, fundraiser_id`)
		require.NoError(t, err)
		var got []row
		for rows.Next() {
			var r row
			require.NoError(t, rows.Scan(&r.Fundraiser, &r.Day, &r.Count, &r.Cents))
			got = append(got, r)
		}
		require.NoError(t, rows.Err())
		day := func(d int) time.Time { return time.Date(2026, 1, d, 0, 0, 0, 0, time.UTC) }
		require.Equal(t, []row{
			{1, day(1), 2, 300},
			{2, day(2), 1, 300},
			{1, day(3), 9, 900}, // outside the range: untouched
		}, got)
	})

	t.Run("BadUsage", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"backfill"}, "aftercommit backfill: --from is required\n"},
			{[]string{"backfill", "--from", "yesterday"}, `aftercommit backfill: --from "yesterday" is not a day (YYYY-MM-DD)` + "\n"},
			{[]string{"backfill", "--from", "2026-01-02", "--to", "2026-13-01"}, `aftercommit backfill: --to "2026-13-01" is not a day (YYYY-MM-DD)` + "\n"},
			{[]string{"backfill", "--from", "2026-01-02", "--to", "2026-01-01"}, "aftercommit backfill: --to 2026-01-01 is before --from 2026-01-02\n"},
			{[]string{"backfill", "--from", "2000-01-01", "--to", "2026-01-01"}, "aftercommit backfill: 9498 days is more than 3660: split the range\n"},
			{[]string{"backfill", "--from", "2026-01-01", "x"}, "aftercommit backfill: backfill takes no arguments, got x\n"},
		} {
			res := runCLI(ctx, t, environ, tc.args...)
			require.Equal(t, exitUsage, res.code, "%v", tc.args)
			require.Empty(t, res.stdout)
			require.Equal(t, tc.want+"Run 'aftercommit backfill --help' for usage.\n", res.stderr, "%v", tc.args)
		}
	})
}
