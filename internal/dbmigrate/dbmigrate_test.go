package dbmigrate_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbmigrate"
	"github.com/aftercommit/aftercommit/internal/dbmigrate/dbmigratetest"
	"github.com/aftercommit/aftercommit/internal/dbroles"
	"github.com/aftercommit/aftercommit/internal/dbroles/dbrolestest"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/migrations"
)

func tableNames(ctx context.Context, t *testing.T, target *dbmigratetest.Target) []string {
	t.Helper()
	rows, err := target.Pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1`, target.Name)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

func versions(ms []dbmigrate.Migration) []uint {
	out := make([]uint, len(ms))
	for i, m := range ms {
		out[i] = m.Version
	}
	return out
}

// between lists the embedded versions v with from < v <= to, ascending.
func between(t *testing.T, from, to uint) []uint {
	t.Helper()
	all, err := dbmigrate.Migrations()
	require.NoError(t, err)
	var out []uint
	for _, m := range all {
		if m.Version > from && m.Version <= to {
			out = append(out, m.Version)
		}
	}
	return out
}

type testBundle struct {
	base   *dbtest.Schema
	latest uint
	// fresh is the catalog of a schema the harness migrated.
	fresh []string
}

func setup(ctx context.Context, t *testing.T) *testBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	latest, err := dbmigrate.LatestAppVersion()
	require.NoError(t, err)
	return &testBundle{base: s, latest: latest, fresh: dbmigratetest.Catalog(ctx, t, s.Pool, s.Name)}
}

func TestMigrations(t *testing.T) {
	t.Parallel()

	all, err := dbmigrate.Migrations()
	require.NoError(t, err)
	names, err := migrationsFiles()
	require.NoError(t, err)
	require.Len(t, all, len(names)/2, "every migration has an up and a down file")
	for i, m := range all {
		require.Equal(t, uint(i+1), m.Version, "versions have no gap")
		require.Contains(t, names, m.UpFile())
		require.Contains(t, names, m.DownFile())
	}
	// River's come first, in River's order, then aftercommit's.
	for i := range 8 {
		require.Equal(t, i+1, all[i].River, all[i].Name)
	}
	require.Equal(t, dbmigrate.Migration{Version: 9, Name: "pings"}, all[8])
}

func migrationsFiles() ([]string, error) {
	entries, err := migrations.FS.ReadDir(".")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out, nil
}

// TestLegacyVersion: aftercommit's files of the old layout (ad3d8b2) are
// the files of the new one, renumbered by LegacyVersion, byte for byte.
func TestLegacyVersion(t *testing.T) {
	t.Parallel()
	old := dbmigratetest.OldFiles(t)
	require.Len(t, old, 2*dbmigratetest.OldLayoutVersion)
	for name, content := range old {
		var v uint
		_, err := fmt.Sscanf(name, "%04d_", &v)
		require.NoError(t, err)
		nv, ok := dbmigrate.LegacyVersion(v)
		require.True(t, ok, name)
		now, err := migrations.FS.ReadFile(fmt.Sprintf("%04d%s", nv, name[4:]))
		require.NoError(t, err, "%s has no file at %d", name, nv)
		require.Equal(t, content, string(now), name)
	}
	for _, v := range []uint{0, 9} {
		_, ok := dbmigrate.LegacyVersion(v)
		require.False(t, ok, v)
	}
}

func TestUpDownUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("UpTwiceIsANoOp", func(t *testing.T) {
		t.Parallel()
		bundle := setup(ctx, t)
		res, err := dbmigrate.Up(ctx, bundle.base.Pool, &dbmigrate.Options{Schema: bundle.base.Name})
		require.NoError(t, err)
		require.False(t, res.Changed(), "second up applied %+v", res)
		require.Equal(t, bundle.fresh, dbmigratetest.Catalog(ctx, t, bundle.base.Pool, bundle.base.Name))
	})

	t.Run("DownThenUpGivesTheSameSchema", func(t *testing.T) {
		t.Parallel()
		bundle := setup(ctx, t)
		target := dbmigratetest.EmptySchema(ctx, t, bundle.base, "t")
		opts := &dbmigrate.Options{Schema: target.Name}

		res, err := dbmigrate.Up(ctx, target.Pool, opts)
		require.NoError(t, err)
		require.Nil(t, res.Renumbered)
		require.Equal(t, between(t, 0, bundle.latest), versions(res.Migrations))
		require.Equal(t, "river_001_create_river_migration", res.Migrations[0].Name)
		require.Equal(t, 1, res.Migrations[0].River)
		require.Equal(t, bundle.fresh, dbmigratetest.Catalog(ctx, t, target.Pool, target.Name))

		v, err := dbmigrate.CurrentVersion(ctx, target.Pool, opts)
		require.NoError(t, err)
		require.Equal(t, dbmigrate.Version{App: bundle.latest, AppLatest: bundle.latest, River: 8, RiverLatest: 8}, v)

		res, err = dbmigrate.Down(ctx, target.Pool, opts)
		require.NoError(t, err)
		down := between(t, 0, bundle.latest)
		slices.Reverse(down)
		require.Equal(t, down, versions(res.Migrations), "down removes the newest first")
		// Only golang-migrate's bookkeeping table is left.
		require.Equal(t, []string{"schema_migrations"}, tableNames(ctx, t, target))
		v, err = dbmigrate.CurrentVersion(ctx, target.Pool, opts)
		require.NoError(t, err)
		require.Equal(t, dbmigrate.Version{AppLatest: bundle.latest, RiverLatest: 8}, v)

		res, err = dbmigrate.Down(ctx, target.Pool, opts)
		require.NoError(t, err)
		require.False(t, res.Changed(), "second down removed %+v", res)

		res, err = dbmigrate.Up(ctx, target.Pool, opts)
		require.NoError(t, err)
		require.Equal(t, between(t, 0, bundle.latest), versions(res.Migrations))
		require.Equal(t, bundle.fresh, dbmigratetest.Catalog(ctx, t, target.Pool, target.Name))
	})

	t.Run("WrongSchema", func(t *testing.T) {
		t.Parallel()
		bundle := setup(ctx, t)
		_, err := dbmigrate.Up(ctx, bundle.base.Pool, &dbmigrate.Options{Schema: bundle.base.Name + "_other"})
		require.ErrorIs(t, err, dbmigrate.ErrSearchPath)
	})
}

// TestOldLayout builds databases the way aftercommit migrated them at
// ad3d8b2 (River by rivermigrate, aftercommit's files at 0001–0008 in
// schema_migrations), with rows in every table, and moves them to the new
// layout.
func TestOldLayout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// old builds an old-layout schema with rows.
	old := func(t *testing.T, bundle *testBundle, suffix string) *dbmigratetest.Target {
		t.Helper()
		target := dbmigratetest.EmptySchema(ctx, t, bundle.base, "old"+suffix)
		dbmigratetest.OldLayout(ctx, t, target)
		dbmigratetest.Fill(ctx, t, target)
		return target
	}

	t.Run("UpRenumbersAndKeepsEveryRow", func(t *testing.T) {
		t.Parallel()
		bundle := setup(ctx, t)
		target := old(t, bundle, "")
		opts := &dbmigrate.Options{Schema: target.Name}
		rowsBefore := dbmigratetest.Rows(ctx, t, target.Pool, target.Name)
		require.Contains(t, rowsBefore["river_job"], "donations.recount_fundraiser")

		v, err := dbmigrate.CurrentVersion(ctx, target.Pool, opts)
		require.NoError(t, err)
		require.Equal(t, dbmigrate.Version{App: 8, AppLatest: bundle.latest, River: 8, RiverLatest: 8, OldLayout: true}, v)

		res, err := dbmigrate.Up(ctx, target.Pool, opts)
		require.NoError(t, err)
		require.Equal(t, &dbmigrate.Renumbering{From: 8, To: 16, River: 8}, res.Renumbered)
		require.Equal(t, between(t, 16, bundle.latest), versions(res.Migrations))

		rowsAfter := dbmigratetest.Rows(ctx, t, target.Pool, target.Name)
		for table, rows := range rowsBefore {
			require.Equal(t, rows, rowsAfter[table], "rows of %s", table)
		}
		require.Equal(t, []string{"aftercommit_roles", "fundraiser_counter_deltas", "job_batch_members", "job_batches", "job_rate_limits", "job_refs",
			"job_sequence_inbox", "job_sequence_members", "job_sequences", "job_waits", "outbox_dead_jobs", "outbox_event_relays", "outbox_jobs",
			"user_counter_deltas"}, newKeys(rowsBefore, rowsAfter, "aftercommit_role_grants"))
		require.Equal(t, bundle.fresh, dbmigratetest.Catalog(ctx, t, target.Pool, target.Name))

		v, err = dbmigrate.CurrentVersion(ctx, target.Pool, opts)
		require.NoError(t, err)
		require.Equal(t, dbmigrate.Version{App: bundle.latest, AppLatest: bundle.latest, River: 8, RiverLatest: 8}, v)

		// River's migrator sees every one of its versions applied.
		rm, err := rivermigrate.New(riverpgxv5.New(target.Pool), &rivermigrate.Config{Schema: target.Name})
		require.NoError(t, err)
		vr, err := rm.Validate(ctx, nil)
		require.NoError(t, err)
		require.True(t, vr.OK, vr.Messages)

		res, err = dbmigrate.Up(ctx, target.Pool, opts)
		require.NoError(t, err)
		require.False(t, res.Changed())
	})

	t.Run("RolesOfTheOldGrantsKeepWorking", func(t *testing.T) {
		t.Parallel()
		bundle := setup(ctx, t)
		target := old(t, bundle, "")
		s := &dbtest.Schema{Name: target.Name, Pool: target.Pool, URL: target.URL}
		app := dbrolestest.NewRole(ctx, t, s, "app")
		worker := dbrolestest.NewRole(ctx, t, s, "worker")
		dbmigratetest.OldGrants(ctx, t, target, app.Name, worker.Name)

		_, err := dbmigrate.Up(ctx, target.Pool, &dbmigrate.Options{Schema: target.Name})
		require.NoError(t, err)

		// The kind guard the old grants installed is now the migration's.
		var comment *string
		require.NoError(t, target.Pool.QueryRow(ctx, `SELECT obj_description(t.oid, 'pg_trigger') FROM pg_trigger t
			WHERE t.tgrelid = 'river_job'::regclass AND t.tgname = $1`, dbroles.KindGuardTrigger).Scan(&comment))
		require.NotNil(t, comment)
		require.Contains(t, *comment, "river_job.kind")

		// The roles kept what they had; registering them grants exactly
		// today's list.
		appPool := dbrolestest.Pool(ctx, t, app, 1)
		_, err = appPool.Exec(ctx, `INSERT INTO river_job (args, kind, max_attempts, priority, queue, state) VALUES ('{}', 'ping', 25, 1, 'default', 'available')`)
		require.NoError(t, err)
		require.NoError(t, dbroles.Grant(ctx, target.Pool, target.Name, app.Name, worker.Name))
		_, err = appPool.Exec(ctx, `UPDATE river_job SET kind = 'other'`)
		require.ErrorContains(t, err, "river_job.kind never changes")
	})

	t.Run("ConcurrentUpsRenumberOnce", func(t *testing.T) {
		t.Parallel()
		bundle := setup(ctx, t)
		target := old(t, bundle, "")
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			results []dbmigrate.Result
			errs    []error
		)
		for range 3 {
			wg.Go(func() {
				res, err := dbmigrate.Up(ctx, target.Pool, &dbmigrate.Options{Schema: target.Name})
				mu.Lock()
				defer mu.Unlock()
				results, errs = append(results, res), append(errs, err)
			})
		}
		wg.Wait()
		renumbered, applied := 0, 0
		for i, res := range results {
			require.NoError(t, errs[i])
			if res.Renumbered != nil {
				renumbered++
			}
			applied += len(res.Migrations)
		}
		require.Equal(t, 1, renumbered)
		require.Equal(t, len(between(t, 16, bundle.latest)), applied, "each migration reported once")
		require.Equal(t, bundle.fresh, dbmigratetest.Catalog(ctx, t, target.Pool, target.Name))
	})

	t.Run("RiverOnly", func(t *testing.T) {
		t.Parallel()
		bundle := setup(ctx, t)
		target := dbmigratetest.EmptySchema(ctx, t, bundle.base, "river")
		rm, err := rivermigrate.New(riverpgxv5.New(target.Pool), &rivermigrate.Config{Schema: target.Name})
		require.NoError(t, err)
		_, err = rm.Migrate(ctx, rivermigrate.DirectionUp, nil)
		require.NoError(t, err)
		_, err = target.Pool.Exec(ctx, `INSERT INTO river_job (args, kind, max_attempts, priority, queue, state) VALUES ('{"id": 1}', 'ping', 25, 1, 'default', 'available')`)
		require.NoError(t, err)
		before := dbmigratetest.Rows(ctx, t, target.Pool, target.Name)

		res, err := dbmigrate.Up(ctx, target.Pool, &dbmigrate.Options{Schema: target.Name})
		require.NoError(t, err)
		require.Equal(t, &dbmigrate.Renumbering{From: 0, To: 8, River: 8}, res.Renumbered)
		require.Equal(t, between(t, 8, bundle.latest), versions(res.Migrations))
		after := dbmigratetest.Rows(ctx, t, target.Pool, target.Name)
		require.Equal(t, before["river_job"], after["river_job"])
		require.Equal(t, before["river_migration"], after["river_migration"])
		require.Equal(t, bundle.fresh, dbmigratetest.Catalog(ctx, t, target.Pool, target.Name))
	})

	t.Run("DownRenumbersFirst", func(t *testing.T) {
		t.Parallel()
		bundle := setup(ctx, t)
		target := old(t, bundle, "")
		res, err := dbmigrate.Down(ctx, target.Pool, &dbmigrate.Options{Schema: target.Name})
		require.NoError(t, err)
		require.Equal(t, &dbmigrate.Renumbering{From: 8, To: 16, River: 8}, res.Renumbered)
		down := between(t, 0, 16)
		slices.Reverse(down)
		require.Equal(t, down, versions(res.Migrations))
		require.Equal(t, []string{"schema_migrations"}, tableNames(ctx, t, target))
	})

	t.Run("Refusals", func(t *testing.T) {
		t.Parallel()
		bundle := setup(ctx, t)
		for _, tc := range []struct {
			name    string
			sql     string
			wantErr error
			wantMsg string
		}{
			{"Dirty", `UPDATE schema_migrations SET dirty = true`, dbmigrate.ErrDirty, "version 8"},
			{"RiverBehind", `DELETE FROM river_migration WHERE version = 8`, dbmigrate.ErrOldLayout, "River version 7, not 8"},
			{"NoVersionButTables", `DELETE FROM schema_migrations`, dbmigrate.ErrOldLayout, "schema_migrations has no version"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				target := old(t, bundle, "_"+strings.ToLower(tc.name))
				_, err := target.Pool.Exec(ctx, tc.sql)
				require.NoError(t, err)
				before := dbmigratetest.Catalog(ctx, t, target.Pool, target.Name)
				for _, run := range []func(context.Context, *pgxpool.Pool, *dbmigrate.Options) (dbmigrate.Result, error){dbmigrate.Up, dbmigrate.Down} {
					res, err := run(ctx, target.Pool, &dbmigrate.Options{Schema: target.Name})
					require.ErrorIs(t, err, tc.wantErr)
					require.ErrorContains(t, err, tc.wantMsg)
					require.False(t, res.Changed())
				}
				require.Equal(t, before, dbmigratetest.Catalog(ctx, t, target.Pool, target.Name), "a refusal changed nothing")
			})
		}
	})
}

// newKeys lists the keys of after not in before, but ignore.
func newKeys(before, after map[string]string, ignore ...string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if _, ok := before[k]; !ok && !slices.Contains(ignore, k) && !strings.HasSuffix(k, "_seq") {
			out = append(out, k)
		}
	}
	return out
}
