package dbmigrate_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbmigrate"
	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// snapshot describes every table, column, index, constraint, type and
// function of a schema, so two states of it can be compared.
func snapshot(ctx context.Context, t *testing.T, s *dbtest.Schema) []string {
	t.Helper()
	rows, err := s.Pool.Query(ctx, `
		SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' null=' || is_nullable || ' default=' || coalesce(column_default, '')
		  FROM information_schema.columns WHERE table_schema = $1
		UNION ALL
		SELECT 'index ' || indexname || ' ' || replace(indexdef, $1 || '.', '')
		  FROM pg_indexes WHERE schemaname = $1
		UNION ALL
		SELECT 'constraint ' || c.conrelid::regclass::text || ' ' || c.conname || ' ' || pg_get_constraintdef(c.oid)
		  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1
		UNION ALL
		SELECT 'type ' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
		 WHERE n.nspname = $1 AND t.typtype IN ('e', 'c', 'd') AND t.typrelid = 0
		UNION ALL
		SELECT 'function ' || p.proname || ' ' || md5(p.prosrc) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		 WHERE n.nspname = $1
		ORDER BY 1`, s.Name)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

func tableNames(ctx context.Context, t *testing.T, s *dbtest.Schema) []string {
	t.Helper()
	rows, err := s.Pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1`, s.Name)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

func TestUpDownUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	type testBundle struct {
		schema *dbtest.Schema
		opts   *dbmigrate.Options
	}
	setup := func(t *testing.T) *testBundle {
		t.Helper()
		s := dbtest.TestSchema(ctx, t, nil)
		return &testBundle{schema: s, opts: &dbmigrate.Options{Schema: s.Name}}
	}

	t.Run("UpTwiceIsANoOp", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		before := snapshot(ctx, t, bundle.schema)

		res, err := dbmigrate.Up(ctx, bundle.schema.Pool, bundle.opts)
		require.NoError(t, err)
		require.False(t, res.Changed(), "second up applied %+v", res)
		require.Equal(t, before, snapshot(ctx, t, bundle.schema))
	})

	t.Run("DownThenUpGivesTheSameSchema", func(t *testing.T) {
		t.Parallel()
		bundle := setup(t)
		before := snapshot(ctx, t, bundle.schema)
		latest, err := dbmigrate.LatestAppVersion()
		require.NoError(t, err)

		v, err := dbmigrate.CurrentVersion(ctx, bundle.schema.Pool, bundle.opts)
		require.NoError(t, err)
		require.Equal(t, latest, v.App)
		require.Equal(t, v.RiverLatest, v.River)
		require.False(t, v.Dirty)

		res, err := dbmigrate.Down(ctx, bundle.schema.Pool, bundle.opts)
		require.NoError(t, err)
		require.Len(t, res.App, int(latest))
		require.Equal(t, latest, res.App[0], "down removes the newest first")
		require.Len(t, res.River, v.RiverLatest)
		// Only golang-migrate's bookkeeping table is left.
		require.Equal(t, []string{"schema_migrations"}, tableNames(ctx, t, bundle.schema))

		v, err = dbmigrate.CurrentVersion(ctx, bundle.schema.Pool, bundle.opts)
		require.NoError(t, err)
		require.Zero(t, v.App)
		require.Zero(t, v.River)

		res, err = dbmigrate.Down(ctx, bundle.schema.Pool, bundle.opts)
		require.NoError(t, err)
		require.False(t, res.Changed(), "second down removed %+v", res)

		res, err = dbmigrate.Up(ctx, bundle.schema.Pool, bundle.opts)
		require.NoError(t, err)
		require.Len(t, res.App, int(latest))
		require.Len(t, res.River, v.RiverLatest)
		require.Equal(t, before, snapshot(ctx, t, bundle.schema))
	})
}
