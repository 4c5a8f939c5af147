package migrations_test

import (
	"context"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/golang-migrate/migrate/v4"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbmigrate"
	"github.com/aftercommit/aftercommit/internal/dbmigrate/dbmigratetest"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/riversql"
	"github.com/aftercommit/aftercommit/migrations"
)

// committed returns the names and contents of the files in package
// migrations, and the names alone.
func committed(t *testing.T) (map[string]string, []string) {
	t.Helper()
	entries, err := fs.ReadDir(migrations.FS, ".")
	require.NoError(t, err)
	files := map[string]string{}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		b, err := migrations.FS.ReadFile(e.Name())
		require.NoError(t, err)
		files[e.Name()] = string(b)
		names = append(names, e.Name())
	}
	return files, names
}

// TestRiverFilesAreWhatRiverRuns: River's files in migrations/ hold exactly
// the SQL River's migrator runs for the River version in go.mod, taken from
// the migrator itself: a dry run up on an empty schema and down on a full
// one, with no schema configured (so the SQL is unqualified). A River
// upgrade that changes its migrations fails here until the files are
// regenerated.
func TestRiverFilesAreWhatRiverRuns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	empty := dbmigratetest.EmptySchema(ctx, t, s, "empty")
	files, names := committed(t)
	fail := fmt.Sprintf("River's migrations in migrations/ are not what rivermigrate of River %s runs: run %s",
		riversql.RiverVersion(), riversql.RegenerateCommand)

	// River's migrator, for SQL as it runs it.
	upMig, err := rivermigrate.New(riverpgxv5.New(empty.Pool), nil)
	require.NoError(t, err)
	up, err := upMig.Migrate(ctx, rivermigrate.DirectionUp, &rivermigrate.MigrateOpts{DryRun: true})
	require.NoError(t, err)
	downMig, err := rivermigrate.New(riverpgxv5.New(s.Pool), nil)
	require.NoError(t, err)
	down, err := downMig.Migrate(ctx, rivermigrate.DirectionDown, &rivermigrate.MigrateOpts{DryRun: true, TargetVersion: -1})
	require.NoError(t, err)
	all := upMig.AllVersions()
	require.Len(t, up.Versions, len(all), "a dry run up on an empty schema runs every version")
	require.Len(t, down.Versions, len(all), "a dry run down on a full schema runs every version")
	downSQL := map[int]string{}
	for _, v := range down.Versions {
		downSQL[v.Version] = v.SQL
	}

	plan, err := riversql.Plan(names, all)
	require.NoError(t, err, fail)
	for i, v := range up.Versions {
		m := all[i]
		require.Equal(t, m.Version, v.Version)
		require.NotContains(t, v.SQL, "TEMPLATE", "no schema placeholder is left")
		m.SQLUp, m.SQLDown = v.SQL, downSQL[v.Version]
		wantUp, wantDown, err := riversql.Render(plan[m.Version], m)
		require.NoError(t, err)
		for _, f := range []riversql.File{wantUp, wantDown} {
			got, ok := files[f.Name]
			require.True(t, ok, "%s: %s is missing", fail, f.Name)
			require.True(t, f.Content == got, "%s: %s differs (regenerate, then review the diff)", fail, f.Name)
			sql, ok := riversql.RiverSQL(got)
			require.True(t, ok, f.Name)
			require.Contains(t, []string{strings.TrimSuffix(v.SQL, "\n"), strings.TrimSuffix(downSQL[v.Version], "\n")},
				strings.TrimSuffix(sql, "\n"), f.Name)
		}
	}

	// The generator's own rendering (offline, the same templating) agrees,
	// and no River file is left over.
	gen, err := riversql.Migrations()
	require.NoError(t, err)
	want, err := riversql.Files(names, gen)
	require.NoError(t, err)
	require.Empty(t, riversql.Diff(files, want), fail)
	riverFiles := 0
	for n := range files {
		if riversql.IsRiverFile(n) {
			riverFiles++
		}
	}
	require.Equal(t, 2*len(all), riverFiles)
}

// TestRiverBookkeeping: after each of River's files, up one by one and
// then down one by one, the schema (tables, indexes, functions, …) and
// river_migration are what River's own migrator leaves at the same version,
// and River's migrator reads that version back.
func TestRiverBookkeeping(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	ours := dbmigratetest.EmptySchema(ctx, t, s, "ours")
	theirs := dbmigratetest.EmptySchema(ctx, t, s, "river")

	db := stdlib.OpenDBFromPool(ours.Pool)
	defer func() { _ = db.Close() }() // hands the connection back to ours.Pool
	drv, err := migratepgx.WithInstance(db, &migratepgx.Config{SchemaName: ours.Name})
	require.NoError(t, err)
	src, err := iofs.New(migrations.FS, ".")
	require.NoError(t, err)
	gm, err := migrate.NewWithInstance("iofs", src, "pgx5", drv)
	require.NoError(t, err)
	defer func() { _, _ = gm.Close() }() // the embedded source and db, above

	rmOurs, err := rivermigrate.New(riverpgxv5.New(ours.Pool), &rivermigrate.Config{Schema: ours.Name})
	require.NoError(t, err)
	rmTheirs, err := rivermigrate.New(riverpgxv5.New(theirs.Pool), &rivermigrate.Config{Schema: theirs.Name})
	require.NoError(t, err)
	all, err := dbmigrate.Migrations()
	require.NoError(t, err)
	byRiver := map[int]uint{}
	for _, m := range all {
		if m.River > 0 {
			byRiver[m.River] = m.Version
		}
	}
	latest := rmTheirs.AllVersions()[len(rmTheirs.AllVersions())-1].Version
	require.Len(t, byRiver, latest)

	// withoutGolangMigrate drops golang-migrate's own bookkeeping lines.
	withoutGolangMigrate := func(lines []string) []string {
		return slices.DeleteFunc(lines, func(l string) bool { return strings.Contains(l, "schema_migrations") })
	}
	check := func(t *testing.T, version int) {
		t.Helper()
		require.Equal(t,
			withoutGolangMigrate(dbmigratetest.Catalog(ctx, t, theirs.Pool, theirs.Name)),
			withoutGolangMigrate(dbmigratetest.Catalog(ctx, t, ours.Pool, ours.Name)), "at River version %d", version)
		existing, err := rmOurs.ExistingVersions(ctx)
		require.NoError(t, err)
		require.Len(t, existing, version, "River's migrator reads the versions applied")
		for i, m := range existing {
			require.Equal(t, i+1, m.Version)
		}
	}

	for r := 1; r <= latest; r++ {
		require.NoError(t, gm.Migrate(byRiver[r]))
		_, err := rmTheirs.Migrate(ctx, rivermigrate.DirectionUp, &rivermigrate.MigrateOpts{TargetVersion: r})
		require.NoError(t, err)
		check(t, r)
	}
	vr, err := rmOurs.Validate(ctx, nil)
	require.NoError(t, err)
	require.True(t, vr.OK, vr.Messages)
	for r := latest - 1; r >= 1; r-- {
		require.NoError(t, gm.Migrate(byRiver[r]))
		_, err := rmTheirs.Migrate(ctx, rivermigrate.DirectionDown, &rivermigrate.MigrateOpts{TargetVersion: r})
		require.NoError(t, err)
		check(t, r)
	}
}

// TestStuckJobsComment: the stuck_jobs view says when cmd/worker rescues a
// stuck job (--rescue-after, 5 minutes by default), not River's hour.
func TestStuckJobsComment(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 1})
	var comment string
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT obj_description('stuck_jobs'::regclass, 'pg_class')`).Scan(&comment))
	require.Contains(t, comment, "cmd/worker's --rescue-after (AFTERCOMMIT_RESCUE_AFTER), 5 minutes by default")
	require.NotContains(t, comment, "(default 1 hour)")
}

// migrateCLIVersion is the release of golang-migrate's CLI the tests run,
// the same as the library in go.mod.
const migrateCLIVersion = "v4.20.1"

var (
	cliOnce sync.Once
	cliPath string
	cliErr  error
)

// migrateCLI builds golang-migrate's own CLI at migrateCLIVersion with its
// pgx v5 driver (build tag pgx5, URLs pgx5://…), as an operator installs
// it, once per test binary. It fails the test, never skips it, when the
// CLI cannot be built.
func migrateCLI(t *testing.T) string {
	t.Helper()
	cliOnce.Do(func() {
		// One directory per release, reused by later runs (go install
		// rebuilds from its cache in a second).
		dir := filepath.Join(os.TempDir(), "aftercommit-migrate-cli-"+migrateCLIVersion)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			cliErr = err
			return
		}
		cmd := exec.Command("go", "install", "-tags", "pgx5", "github.com/golang-migrate/migrate/v4/cmd/migrate@"+migrateCLIVersion)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-buildvcs=false", "GOWORK=off")
		out, err := cmd.CombinedOutput()
		if err != nil {
			cliErr = fmt.Errorf("building golang-migrate's CLI %s: %w\n%s", migrateCLIVersion, err, out)
			return
		}
		cliPath = filepath.Join(dir, "migrate")
	})
	require.NoError(t, cliErr, "golang-migrate's CLI is needed: the Go module proxy must be reachable once (the build is cached)")
	return cliPath
}

// runCLI runs golang-migrate's CLI on migrations/ against target.
func runCLI(t *testing.T, target *dbmigratetest.Target, args ...string) (string, error) {
	t.Helper()
	u, err := url.Parse(target.URL)
	require.NoError(t, err)
	u.Scheme = "pgx5"
	dir, err := filepath.Abs(".")
	require.NoError(t, err)
	cmd := exec.Command(migrateCLI(t), append([]string{"-path", dir, "-database", u.String()}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestMigrateCLIVersionIsTheLibrary(t *testing.T) {
	t.Parallel()
	require.Equal(t, migrateCLIVersion, riversql.ModuleVersion("github.com/golang-migrate/migrate/v4"),
		"test the CLI of the release go.mod uses")
}

// TestStandardCLI runs golang-migrate's own CLI (`migrate -path migrations
// -database pgx5://… up`) on fresh schemas: it builds exactly the schema
// `aftercommit migrate up` builds, River's bookkeeping included, and takes
// it down and up again to the same; and it moves a database of the old
// layout with `migrate force 16`.
func TestStandardCLI(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	migrateCLI(t)
	latest, err := dbmigrate.LatestAppVersion()
	require.NoError(t, err)

	t.Run("UpDownUpIsAftercommitsSchema", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		cli := dbmigratetest.EmptySchema(ctx, t, s, "cli")
		ours := dbmigratetest.EmptySchema(ctx, t, s, "ours")

		out, err := runCLI(t, cli, "up")
		require.NoError(t, err, out)
		require.Contains(t, out, "1/u river_001_create_river_migration")
		require.Contains(t, out, fmt.Sprintf("%d/u ", latest))
		_, err = dbmigrate.Up(ctx, ours.Pool, &dbmigrate.Options{Schema: ours.Name})
		require.NoError(t, err)

		want := dbmigratetest.Catalog(ctx, t, ours.Pool, ours.Name)
		require.Contains(t, want, fmt.Sprintf("schema_migrations %d dirty=false", latest))
		require.Contains(t, want, "river_migration line=main version=8")
		require.Equal(t, want, dbmigratetest.Catalog(ctx, t, cli.Pool, cli.Name), "the CLI and aftercommit migrate up")
		require.Equal(t, dbmigratetest.Catalog(ctx, t, s.Pool, s.Name), want, "the test harness")

		// River's own tools see every River version applied.
		rm, err := rivermigrate.New(riverpgxv5.New(cli.Pool), &rivermigrate.Config{Schema: cli.Name})
		require.NoError(t, err)
		res, err := rm.Migrate(ctx, rivermigrate.DirectionUp, nil)
		require.NoError(t, err)
		require.Empty(t, res.Versions, "rivermigrate has nothing left to apply")

		out, err = runCLI(t, cli, "down", "-all")
		require.NoError(t, err, out)
		var tables []string
		rows, err := cli.Pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1`, cli.Name)
		require.NoError(t, err)
		for rows.Next() {
			var n string
			require.NoError(t, rows.Scan(&n))
			tables = append(tables, n)
		}
		require.NoError(t, rows.Err())
		require.Equal(t, []string{"schema_migrations"}, tables)

		out, err = runCLI(t, cli, "up")
		require.NoError(t, err, out)
		require.Equal(t, want, dbmigratetest.Catalog(ctx, t, cli.Pool, cli.Name), "down then up with the CLI")

		_, err = dbmigrate.Down(ctx, ours.Pool, &dbmigrate.Options{Schema: ours.Name})
		require.NoError(t, err)
		_, err = dbmigrate.Up(ctx, ours.Pool, &dbmigrate.Options{Schema: ours.Name})
		require.NoError(t, err)
		require.Equal(t, want, dbmigratetest.Catalog(ctx, t, ours.Pool, ours.Name), "down then up with aftercommit migrate")
	})

	t.Run("OldLayoutNeedsForce", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		old := dbmigratetest.EmptySchema(ctx, t, s, "old")
		dbmigratetest.OldLayout(ctx, t, old)
		dbmigratetest.Fill(ctx, t, old)
		rows := dbmigratetest.Rows(ctx, t, old.Pool, old.Name)

		// Without force, the CLI takes version 8 for River's last migration
		// and stops at aftercommit's first, whose tables exist: nothing but
		// the dirty flag changes.
		out, err := runCLI(t, old, "up")
		require.Error(t, err)
		require.Contains(t, out, `relation "pings" already exists`)
		out, _ = runCLI(t, old, "version")
		require.Contains(t, out, "9 (dirty)")

		// The documented fix: force the old version plus 8, then up.
		to, ok := dbmigrate.LegacyVersion(dbmigratetest.OldLayoutVersion)
		require.True(t, ok)
		require.Equal(t, uint(16), to)
		out, err = runCLI(t, old, "force", fmt.Sprint(to))
		require.NoError(t, err, out)
		out, err = runCLI(t, old, "up")
		require.NoError(t, err, out)

		after := dbmigratetest.Rows(ctx, t, old.Pool, old.Name)
		for table, r := range rows {
			require.Equal(t, r, after[table], table)
		}
		require.Equal(t, dbmigratetest.Catalog(ctx, t, s.Pool, s.Name), dbmigratetest.Catalog(ctx, t, old.Pool, old.Name))
	})
}
