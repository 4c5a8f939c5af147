package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/devdb"
	"github.com/aftercommit/aftercommit/internal/devdb/devdbtest"
	"github.com/aftercommit/aftercommit/internal/testlog"
)

// nothingAnswers is a URL where no server listens.
const nothingAnswers = "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"

// emptySchema creates a schema with no table in it on the test server and
// returns its URL (search_path set, a small pool) and name.
func emptySchema(ctx context.Context, t *testing.T) (rawURL, name string) {
	t.Helper()
	name = fmt.Sprintf("acdev_worker_%d", time.Now().UnixNano())
	admin, err := pgxpool.New(ctx, dbtest.ServerURL(t)) //nolint:contextcheck // dbtest sets up the test server once per process (sync.Once) on its own context; no one test's ctx may bound that
	require.NoError(t, err)
	_, err = admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize())
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := admin.Exec(context.WithoutCancel(ctx), "DROP SCHEMA "+pgx.Identifier{name}.Sanitize()+" CASCADE")
		require.NoError(t, err)
		admin.Close()
	})
	u, err := url.Parse(dbtest.ServerURL(t)) //nolint:contextcheck // dbtest sets up the test server once per process (sync.Once) on its own context; no one test's ctx may bound that
	require.NoError(t, err, "these tests need the test server as a URL")
	q := u.Query()
	q.Set("search_path", name)
	q.Set("pool_max_conns", "6")
	u.RawQuery = q.Encode()
	return u.String(), name
}

// tableCount counts the tables of schema that name a River or aftercommit
// migration table.
func tableCount(ctx context.Context, t *testing.T, schema string) int {
	t.Helper()
	pool, err := pgxpool.New(ctx, dbtest.ServerURL(t)) //nolint:contextcheck // dbtest sets up the test server once per process (sync.Once) on its own context; no one test's ctx may bound that
	require.NoError(t, err)
	defer pool.Close()
	var n int
	require.NoError(t, pool.QueryRow(ctx, `
		SELECT count(*) FROM information_schema.tables
		 WHERE table_schema = $1 AND table_name IN ('river_job', 'schema_migrations', 'pings')`, schema).Scan(&n))
	return n
}

// plainLogger logs like run's logger, without the time, so lines compare
// exactly.
func plainLogger(w *testlog.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			return slog.Attr{}
		}
		return a
	}}))
}

func TestParseConfigDev(t *testing.T) {
	t.Parallel()
	environ := func(k string) string {
		return map[string]string{"DATABASE_URL": "postgres://app@db.internal:5432/app"}[k]
	}
	for _, tc := range []struct {
		name          string
		args          []string
		getenv        func(string) string
		dev, urlGiven bool
	}{
		{"Off", nil, noEnv, false, false},
		{"NoURL", []string{"--dev"}, noEnv, true, false},
		{"Flag", []string{"--dev", "--database-url", "postgres://app@db.internal:5432/app"}, noEnv, true, true},
		{"Environment", []string{"--dev"}, environ, true, true},
		{"EnvironmentWithoutDev", nil, environ, false, true},
	} {
		cfg, err := parseConfig(tc.args, tc.getenv, &testlog.Buffer{})
		require.NoError(t, err, tc.name)
		require.Equal(t, tc.dev, cfg.dev, tc.name)
		require.Equal(t, tc.urlGiven, cfg.urlGiven, tc.name)
	}
	// --dev is a flag only: the environment never turns it on.
	cfg, err := parseConfig(nil, func(k string) string { return map[string]string{"AFTERCOMMIT_DEV": "1"}[k] }, &testlog.Buffer{})
	require.NoError(t, err)
	require.False(t, cfg.dev)
}

func TestSetUpDev(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	devConfig := func(t *testing.T, find *devdb.Config, args ...string) *config {
		t.Helper()
		cfg, err := parseConfig(append([]string{"--dev"}, args...), noEnv, &testlog.Buffer{})
		require.NoError(t, err)
		cfg.devFind = find
		return cfg
	}

	t.Run("NothingAnswersAndNoDocker", func(t *testing.T) {
		t.Parallel()
		docker := &devdbtest.FakeDocker{Err: errors.New("run postgres: generic container: get provider: rootless Docker not found, failed to create Docker provider")}
		var logs testlog.Buffer
		stop, code, ok := setUpDev(ctx, devConfig(t, &devdb.Config{DefaultURL: nothingAnswers, Start: docker.Start}), plainLogger(&logs))
		require.False(t, ok)
		require.Equal(t, exitFailure, code)
		stop()
		require.Equal(t, `level=ERROR msg="worker: no Postgres answers at 127.0.0.1:1 and Docker could not start postgres:16 `+
			`(run postgres: generic container: get provider: rootless Docker not found, failed to create Docker provider): `+
			`start Postgres there, or set DATABASE_URL (or --database-url) to your server"`+"\n", logs.String())
	})

	t.Run("NothingAnswersStartsAContainer", func(t *testing.T) {
		t.Parallel()
		// The "container" is an empty schema of the test server.
		rawURL, schema := emptySchema(ctx, t)
		docker := &devdbtest.FakeDocker{URL: rawURL}
		cfg := devConfig(t, &devdb.Config{DefaultURL: nothingAnswers, Start: docker.Start}, "--schema", schema)
		var logs testlog.Buffer
		stop, code, ok := setUpDev(ctx, cfg, plainLogger(&logs))
		require.True(t, ok, logs.String())
		require.Equal(t, exitOK, code)
		require.Equal(t, `level=INFO msg="worker: no Postgres answers at 127.0.0.1:1: started postgres:16 with testcontainers at `+rawURL+`; it is removed on exit"`+"\n"+
			`level=INFO msg="worker: --dev: the database is migrated"`+"\n", logs.String())

		// The worker now runs on the container, migrated.
		require.Equal(t, int32(6), cfg.pool.MaxConns, "the pool comes from the container's URL (pool_max_conns=6)")
		require.Equal(t, `"`+schema+`"`, cfg.pool.ConnConfig.RuntimeParams["search_path"])
		require.Equal(t, 3, tableCount(ctx, t, schema))
		require.Equal(t, 1, docker.Started())
		require.Zero(t, docker.Removed())
		stop()
		require.Equal(t, 1, docker.Removed(), "run's deferred stop removes the container")
	})

	t.Run("DefaultServerAnswers", func(t *testing.T) {
		t.Parallel()
		rawURL, schema := emptySchema(ctx, t)
		cfg := devConfig(t, &devdb.Config{DefaultURL: rawURL, Start: (&devdbtest.FakeDocker{Refuse: t}).Start}, "--schema", schema)
		var logs testlog.Buffer
		stop, _, ok := setUpDev(ctx, cfg, plainLogger(&logs))
		require.True(t, ok, logs.String())
		defer stop()
		require.Equal(t, `level=INFO msg="worker: --dev: the database is migrated"`+"\n", logs.String())
		require.Equal(t, 3, tableCount(ctx, t, schema))
	})

	t.Run("InterruptedWhileStarting", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(ctx)
		start := func(ctx context.Context, _ *slog.Logger) (string, func(), error) {
			cancel() // SIGINT while the image is pulled
			return "", nil, ctx.Err()
		}
		var logs testlog.Buffer
		_, code, ok := setUpDev(ctx, devConfig(t, &devdb.Config{DefaultURL: nothingAnswers, Start: start}), plainLogger(&logs))
		require.False(t, ok)
		require.Equal(t, exitOK, code)
		require.Equal(t, `level=INFO msg="worker: interrupted before start"`+"\n", logs.String())
	})

	t.Run("WithoutDevNothingHappens", func(t *testing.T) {
		t.Parallel()
		cfg, err := parseConfig([]string{"--database-url", nothingAnswers}, noEnv, &testlog.Buffer{})
		require.NoError(t, err)
		cfg.devFind = &devdb.Config{Start: (&devdbtest.FakeDocker{Refuse: t}).Start}
		var logs testlog.Buffer
		stop, code, ok := setUpDev(ctx, cfg, plainLogger(&logs))
		require.True(t, ok)
		require.Equal(t, exitOK, code)
		stop()
		require.Empty(t, logs.String())
	})
}

// run with --dev and a URL named: no container, the migrations applied, the
// worker started on a schema that had no table.
func TestRunDev(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("GivenURLIsMigratedAndWorked", func(t *testing.T) {
		t.Parallel()
		rawURL, schema := emptySchema(ctx, t)
		h := startRun(ctx, t, "--dev", "--database-url", rawURL, "--schema", schema, "--http", "off")
		h.waitFor(t, 30*time.Second, "the worker to start", func() bool {
			return strings.Contains(h.stderr.String(), `msg="worker: started"`)
		})
		require.Equal(t, exitOK, h.stop(t, 30*time.Second))
		require.Contains(t, h.stderr.String(), `msg="worker: --dev: the database is migrated"`)
		require.NotContains(t, h.stderr.String(), "testcontainers")
		require.Equal(t, 3, tableCount(ctx, t, schema))
	})

	t.Run("GivenURLNeverStartsAContainer", func(t *testing.T) {
		t.Parallel()
		var stdout, stderr testlog.Buffer
		environ := func(k string) string {
			return map[string]string{"DATABASE_URL": nothingAnswers + "&connect_timeout=2"}[k]
		}
		code := run(ctx, []string{"--dev", "--http", "off"}, environ, &stdout, &stderr)
		require.Equal(t, exitFailure, code)
		out := stderr.String()
		require.Equal(t, 1, strings.Count(out, "\n"), "want exactly one line, got:\n%s", out)
		require.Contains(t, out, "127.0.0.1:1")
		require.Contains(t, out, "start Postgres or set DATABASE_URL / --database-url")
		require.NotContains(t, out, "Docker")
	})
}
