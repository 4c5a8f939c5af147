package main

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbmigrate"
	"github.com/aftercommit/aftercommit/internal/dbmigrate/dbmigratetest"
	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// cliResult is what one in-process run of the CLI produced.
type cliResult struct {
	code   int
	stdout string
	stderr string
}

// runCLI runs the CLI in-process with environ as its whole environment.
func runCLI(ctx context.Context, t *testing.T, environ map[string]string, args ...string) cliResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, func(k string) string { return environ[k] }, &stdout, &stderr)
	return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// requireOneLine asserts s is exactly one line, newline-terminated.
func requireOneLine(t *testing.T, s string) {
	t.Helper()
	require.True(t, strings.HasSuffix(s, "\n"), "output %q does not end with a newline", s)
	require.Equal(t, 1, strings.Count(s, "\n"), "output is not one line: %q", s)
}

// withSearchPath returns rawURL with search_path set to schema.
func withSearchPath(t *testing.T, rawURL, schema string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(t, err, "these tests need the test database as a URL")
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

type migrateBundle struct {
	// schema is a migrated schema of dbtest; its pool runs the inspection
	// queries (they name the schema they look at).
	schema      *dbtest.Schema
	serverURL   string
	riverLatest int
	appLatest   uint
	// upOutput and downOutput are what up on an empty schema and down on a
	// migrated one print.
	upOutput   string
	downOutput string
}

func setupMigrate(ctx context.Context, t *testing.T) *migrateBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, nil)
	v, err := dbmigrate.CurrentVersion(ctx, s.Pool, &dbmigrate.Options{Schema: s.Name})
	require.NoError(t, err)
	all, err := dbmigrate.Migrations()
	require.NoError(t, err)
	require.Equal(t, v.AppLatest, all[len(all)-1].Version)
	require.Equal(t, "river_001_create_river_migration", all[0].Name)
	require.Equal(t, 8, all[7].River)
	require.Equal(t, "pings", all[8].Name)

	return &migrateBundle{
		schema:      s,
		serverURL:   dbtest.ServerURL(t), //nolint:contextcheck // dbtest sets up the test server once per process (sync.Once) on its own context; no one test's ctx may bound that
		riverLatest: v.RiverLatest,
		appLatest:   v.AppLatest,
		upOutput:    fmt.Sprintf("applied 0001-%04d (River 1-8, aftercommit 0009-%04d)\n", v.AppLatest, v.AppLatest),
		downOutput:  fmt.Sprintf("removed %04d-0001 (aftercommit %04d-0009, River 8-1)\n", v.AppLatest, v.AppLatest),
	}
}

// emptySchema creates an empty schema named after the bundle's and drops it
// when t ends.
func (b *migrateBundle) emptySchema(ctx context.Context, t *testing.T, suffix string) string {
	t.Helper()
	name := b.schema.Name + "_" + suffix
	require.LessOrEqual(t, len(name), 63)
	_, err := b.schema.Pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize())
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := b.schema.Pool.Exec(context.WithoutCancel(ctx), "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE")
		require.NoError(t, err)
	})
	return name
}

func (b *migrateBundle) tables(ctx context.Context, t *testing.T, schema string) []string {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx,
		`SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1`, schema)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

// snapshot describes every object of a schema (dbmigratetest.Catalog).
func (b *migrateBundle) snapshot(ctx context.Context, t *testing.T, schema string) []string {
	t.Helper()
	return dbmigratetest.Catalog(ctx, t, b.schema.Pool, schema)
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("UpOnEmptySchemaThenAlreadyUpToDate", func(t *testing.T) {
		t.Parallel()
		bundle := setupMigrate(ctx, t)
		target := bundle.emptySchema(ctx, t, "target")
		decoy := bundle.emptySchema(ctx, t, "decoy")
		// The URL's search_path names the decoy; --schema must win.
		environ := map[string]string{"DATABASE_URL": withSearchPath(t, bundle.serverURL, decoy)}

		res := runCLI(ctx, t, environ, "migrate", "up", "--schema", target)
		require.Equal(t, cliResult{code: exitOK, stdout: bundle.upOutput}, res)

		tables := bundle.tables(ctx, t, target)
		for _, want := range []string{"river_job", "river_migration", "pings", "schema_migrations"} {
			require.Contains(t, tables, want)
		}
		require.Empty(t, bundle.tables(ctx, t, decoy))
		var where []string
		rows, err := bundle.schema.Pool.Query(ctx, `
			SELECT DISTINCT table_schema::text FROM information_schema.tables
			 WHERE table_name IN ('river_job', 'pings') AND table_schema IN ($1, $2)`, target, decoy)
		require.NoError(t, err)
		where, err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		require.Equal(t, []string{target}, where)

		before := bundle.snapshot(ctx, t, target)
		res = runCLI(ctx, t, environ, "migrate", "up", "--schema", target)
		require.Equal(t, cliResult{code: exitOK, stdout: "already up to date\n"}, res)
		require.Equal(t, before, bundle.snapshot(ctx, t, target))
		require.Equal(t, tables, bundle.tables(ctx, t, target))
	})

	t.Run("UpUsesTheSearchPathOfTheURL", func(t *testing.T) {
		t.Parallel()
		bundle := setupMigrate(ctx, t)
		target := bundle.emptySchema(ctx, t, "target")

		res := runCLI(ctx, t, nil, "migrate", "up", "--database-url", withSearchPath(t, bundle.serverURL, target))
		require.Equal(t, cliResult{code: exitOK, stdout: bundle.upOutput}, res)
		require.Contains(t, bundle.tables(ctx, t, target), "river_job")
		require.Contains(t, bundle.tables(ctx, t, target), "pings")
	})

	t.Run("UpUsesTheSchemaFromTheEnvironment", func(t *testing.T) {
		t.Parallel()
		bundle := setupMigrate(ctx, t)
		target := bundle.emptySchema(ctx, t, "target")
		decoy := bundle.emptySchema(ctx, t, "decoy")
		environ := map[string]string{
			"DATABASE_URL":       withSearchPath(t, bundle.serverURL, decoy),
			"AFTERCOMMIT_SCHEMA": target,
		}

		res := runCLI(ctx, t, environ, "migrate", "up")
		require.Equal(t, cliResult{code: exitOK, stdout: bundle.upOutput}, res)
		require.Contains(t, bundle.tables(ctx, t, target), "pings")
		require.Empty(t, bundle.tables(ctx, t, decoy))
	})

	t.Run("VersionOfAMigratedSchema", func(t *testing.T) {
		t.Parallel()
		bundle := setupMigrate(ctx, t)

		res := runCLI(ctx, t, map[string]string{"DATABASE_URL": bundle.schema.URL}, "migrate", "version")
		require.Equal(t, cliResult{
			code:   exitOK,
			stdout: fmt.Sprintf("migrations: %d (latest %d)\nriver: %d (latest %d)\n", bundle.appLatest, bundle.appLatest, bundle.riverLatest, bundle.riverLatest),
		}, res)
	})

	t.Run("VersionBeforeUpAfterUpAfterDown", func(t *testing.T) {
		t.Parallel()
		bundle := setupMigrate(ctx, t)
		target := bundle.emptySchema(ctx, t, "target")
		environ := map[string]string{"DATABASE_URL": bundle.serverURL, "AFTERCOMMIT_SCHEMA": target}
		none := cliResult{
			code:   exitOK,
			stdout: fmt.Sprintf("migrations: 0 (latest %d)\nriver: 0 (latest %d)\n", bundle.appLatest, bundle.riverLatest),
		}
		all := cliResult{
			code:   exitOK,
			stdout: fmt.Sprintf("migrations: %d (latest %d)\nriver: %d (latest %d)\n", bundle.appLatest, bundle.appLatest, bundle.riverLatest, bundle.riverLatest),
		}

		require.Equal(t, none, runCLI(ctx, t, environ, "migrate", "version"))
		require.Equal(t, exitOK, runCLI(ctx, t, environ, "migrate", "up").code)
		require.Equal(t, all, runCLI(ctx, t, environ, "migrate", "version"))
		require.Equal(t, exitOK, runCLI(ctx, t, environ, "migrate", "down", "--yes").code)
		require.Equal(t, none, runCLI(ctx, t, environ, "migrate", "version"))
	})

	t.Run("DownNeedsYesThenUpRebuildsTheSameSchema", func(t *testing.T) {
		t.Parallel()
		bundle := setupMigrate(ctx, t)
		target := bundle.emptySchema(ctx, t, "target")
		environ := map[string]string{"DATABASE_URL": bundle.serverURL}

		require.Equal(t, exitOK, runCLI(ctx, t, environ, "migrate", "up", "--schema", target).code)
		before := bundle.snapshot(ctx, t, target)
		tablesBefore := bundle.tables(ctx, t, target)

		res := runCLI(ctx, t, environ, "migrate", "down", "--schema", target)
		require.Equal(t, exitUsage, res.code)
		require.Empty(t, res.stdout)
		requireOneLine(t, res.stderr)
		require.Contains(t, res.stderr, "--yes")
		require.Equal(t, before, bundle.snapshot(ctx, t, target), "down without --yes changed the schema")

		// Flags go before or after the action.
		res = runCLI(ctx, t, environ, "migrate", "--yes", "down", "--schema", target)
		require.Equal(t, cliResult{code: exitOK, stdout: bundle.downOutput}, res)
		require.Equal(t, []string{"schema_migrations"}, bundle.tables(ctx, t, target))

		res = runCLI(ctx, t, environ, "migrate", "down", "--yes", "--schema", target)
		require.Equal(t, cliResult{code: exitOK, stdout: "nothing to remove\n"}, res)

		res = runCLI(ctx, t, environ, "migrate", "up", "--schema", target)
		require.Equal(t, cliResult{code: exitOK, stdout: bundle.upOutput}, res)
		require.Equal(t, tablesBefore, bundle.tables(ctx, t, target))
		require.Equal(t, before, bundle.snapshot(ctx, t, target))
	})

	t.Run("DirtyDatabase", func(t *testing.T) {
		t.Parallel()
		bundle := setupMigrate(ctx, t)
		target := bundle.emptySchema(ctx, t, "target")
		environ := map[string]string{"DATABASE_URL": bundle.serverURL, "AFTERCOMMIT_SCHEMA": target}
		require.Equal(t, exitOK, runCLI(ctx, t, environ, "migrate", "up").code)
		_, err := bundle.schema.Pool.Exec(ctx, "UPDATE "+pgx.Identifier{target, "schema_migrations"}.Sanitize()+" SET dirty = true")
		require.NoError(t, err)

		res := runCLI(ctx, t, environ, "migrate", "version")
		require.Equal(t, exitFailure, res.code)
		require.Equal(t, fmt.Sprintf("migrations: %d (latest %d) dirty\nriver: %d (latest %d)\n",
			bundle.appLatest, bundle.appLatest, bundle.riverLatest, bundle.riverLatest), res.stdout)
		requireOneLine(t, res.stderr)
		require.Contains(t, res.stderr, "dirty")

		for _, action := range []string{"up", "down"} {
			res = runCLI(ctx, t, environ, "migrate", action, "--yes")
			require.Equal(t, exitFailure, res.code, action)
			requireOneLine(t, res.stderr)
			require.Contains(t, res.stderr, "dirty", action)
		}
		require.Contains(t, bundle.tables(ctx, t, target), "pings", "down of a dirty database dropped aftercommit's tables")
	})

	t.Run("UpRenumbersTheOldLayout", func(t *testing.T) {
		t.Parallel()
		bundle := setupMigrate(ctx, t)
		target := dbmigratetest.EmptySchema(ctx, t, bundle.schema, "old")
		dbmigratetest.OldLayout(ctx, t, target)
		dbmigratetest.Fill(ctx, t, target)
		rows := dbmigratetest.Rows(ctx, t, target.Pool, target.Name)
		environ := map[string]string{"DATABASE_URL": bundle.serverURL, "AFTERCOMMIT_SCHEMA": target.Name}

		res := runCLI(ctx, t, environ, "migrate", "version")
		require.Equal(t, cliResult{code: exitOK, stdout: fmt.Sprintf("migrations: 8 (latest %d), old layout: 'aftercommit migrate up' renumbers it to 16 "+
			"(golang-migrate's CLI: 'migrate force 16' first)\nriver: 8 (latest %d)\n", bundle.appLatest, bundle.riverLatest)}, res)

		res = runCLI(ctx, t, environ, "migrate", "up")
		require.Equal(t, cliResult{code: exitOK, stdout: fmt.Sprintf("renumbered the old layout: schema_migrations 8 is now 0016 (River 8 applied by rivermigrate); "+
			"applied 0017-%04d (aftercommit 0017-%04d)\n", bundle.appLatest, bundle.appLatest)}, res)
		after := dbmigratetest.Rows(ctx, t, target.Pool, target.Name)
		for table, r := range rows {
			require.Equal(t, r, after[table], table)
		}
		require.Equal(t, bundle.snapshot(ctx, t, bundle.schema.Name), bundle.snapshot(ctx, t, target.Name))
		require.Equal(t, cliResult{code: exitOK, stdout: "already up to date\n"}, runCLI(ctx, t, environ, "migrate", "up"))
	})

	t.Run("MissingSchema", func(t *testing.T) {
		t.Parallel()
		bundle := setupMigrate(ctx, t)
		missing := bundle.schema.Name + "_missing"

		res := runCLI(ctx, t, map[string]string{"DATABASE_URL": bundle.serverURL}, "migrate", "up", "--schema", missing)
		require.Equal(t, exitFailure, res.code)
		require.Empty(t, res.stdout)
		requireOneLine(t, res.stderr)
		require.Contains(t, res.stderr, fmt.Sprintf("schema %q does not exist", missing))
	})

	t.Run("Interrupted", func(t *testing.T) {
		t.Parallel()
		bundle := setupMigrate(ctx, t)
		canceled, cancel := context.WithCancel(ctx)
		cancel()

		res := runCLI(canceled, t, map[string]string{"DATABASE_URL": bundle.schema.URL}, "migrate", "version")
		require.Equal(t, cliResult{code: exitInterrupted, stderr: "aftercommit: interrupted\n"}, res)
	})
}

func TestMigrateConnectionErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	serverURL := func(t *testing.T, mutate func(u *url.URL)) string {
		t.Helper()
		u, err := url.Parse(dbtest.ServerURL(t))
		require.NoError(t, err, "these tests need the test database as a URL")
		mutate(u)
		return u.String()
	}

	tests := []struct {
		name string
		// url returns the database URL; it goes in DATABASE_URL when
		// viaEnv, else in --database-url.
		url     func(t *testing.T) string
		viaEnv  bool
		want    []string // substrings of the one stderr line
		notWant []string
	}{
		{
			name: "Unreachable",
			url: func(*testing.T) string {
				return "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"
			},
			viaEnv: true,
			want:   []string{"cannot reach Postgres at 127.0.0.1:1", "connection refused", "DATABASE_URL"},
		},
		{
			name:    "BadPort",
			url:     func(*testing.T) string { return "postgres://postgres:s3cret@127.0.0.1:notaport/postgres" },
			want:    []string{"cannot parse the database URL", "invalid port"},
			notWant: []string{"s3cret"},
		},
		{
			name:    "BadPercentEncoding",
			url:     func(*testing.T) string { return "postgres://postgres:s3cret@127.0.0.1/%zz" },
			want:    []string{"cannot parse the database URL"},
			notWant: []string{"s3cret"},
		},
		{
			name:    "Garbage",
			url:     func(*testing.T) string { return "this is not a URL password=s3cret" },
			viaEnv:  true,
			want:    []string{"cannot parse the database URL"},
			notWant: []string{"s3cret"},
		},
		{
			name:    "BadConnectTimeout",
			url:     func(*testing.T) string { return "postgres://postgres:s3cret@127.0.0.1/postgres?connect_timeout=soon" },
			want:    []string{"cannot parse the database URL", "connect_timeout"},
			notWant: []string{"s3cret"},
		},
		{
			name: "UnknownUser",
			url: func(t *testing.T) string {
				return serverURL(t, func(u *url.URL) { u.User = url.UserPassword("aftercommit_no_such_role", "s3cret") })
			},
			want:    []string{`refused user "aftercommit_no_such_role"`},
			notWant: []string{"s3cret"},
		},
		{
			name: "MissingDatabase",
			url: func(t *testing.T) string {
				return serverURL(t, func(u *url.URL) { u.Path = "/aftercommit_no_such_db" })
			},
			want:    []string{`no database "aftercommit_no_such_db"`, "createdb"},
			notWant: []string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dbURL := tt.url(t)
			environ := map[string]string{}
			args := []string{"migrate", "up"}
			if tt.viaEnv {
				environ["DATABASE_URL"] = dbURL
			} else {
				args = append(args, "--database-url", dbURL)
			}

			res := runCLI(ctx, t, environ, args...)
			require.Equal(t, exitFailure, res.code, "stderr: %s", res.stderr)
			require.Empty(t, res.stdout)
			requireOneLine(t, res.stderr)
			require.True(t, strings.HasPrefix(res.stderr, "aftercommit: "), res.stderr)
			for _, w := range tt.want {
				require.Contains(t, res.stderr, w)
			}
			for _, w := range tt.notWant {
				require.NotContains(t, res.stderr, w)
			}
		})
	}
}
