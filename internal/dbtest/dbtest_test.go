package dbtest_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// These subtests run one after the other so that each sees the schema the
// previous one released; the test is not parallel, so that no other test of
// the package can take that schema in between (a test takes any idle
// schema, whatever its pool size).
func TestSchemaReuse(t *testing.T) {
	ctx := context.Background()
	opts := &dbtest.Opts{MaxConns: 3} // a size no other test asks for

	var first, second, third string
	t.Run("FirstUseWritesRows", func(t *testing.T) {
		s := dbtest.TestSchema(ctx, t, opts)
		first = s.Name
		_, err := s.Pool.Exec(ctx, `INSERT INTO pings (note) VALUES ('left behind')`)
		require.NoError(t, err)
		// A table of more than a megabyte is truncated, a small one is
		// emptied with DELETE (its pages stay).
		_, err = s.Pool.Exec(ctx, `INSERT INTO pings (note) SELECT repeat('x', 1000) FROM generate_series(1, 2000)`)
		require.NoError(t, err)
		_, err = s.Pool.Exec(ctx, `INSERT INTO river_job (args, kind, max_attempts) VALUES ('{}', 'left.behind', 1)`)
		require.NoError(t, err)
		// Session state left on a connection the next test may get.
		_, err = s.Pool.Exec(ctx, `SET work_mem = '1234kB'; SELECT pg_advisory_lock(42); LISTEN left_behind; CREATE TEMP TABLE left_behind (id int)`)
		require.NoError(t, err)
	})
	t.Run("ReusedSchemaIsEmptyAndIdentityRestarts", func(t *testing.T) {
		s := dbtest.TestSchema(ctx, t, opts)
		second = s.Name
		require.Equal(t, first, s.Name, "the released schema is reused")
		var n, jobs, pingsSize, jobsSize int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM pings), (SELECT count(*) FROM river_job),
			pg_relation_size('pings'), pg_relation_size('river_job')`).Scan(&n, &jobs, &pingsSize, &jobsSize))
		require.Zero(t, n)
		require.Zero(t, jobs)
		require.Zero(t, pingsSize, "the large table was truncated")
		require.Positive(t, jobsSize, "the small table was emptied with DELETE")
		var id int64
		require.NoError(t, s.Pool.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('x') RETURNING id`).Scan(&id))
		require.Equal(t, int64(1), id)
		// The warm connections the schema kept carry no session state.
		conns := make([]*pgxpool.Conn, 0, 2)
		for range 2 {
			c, err := s.Pool.Acquire(ctx)
			require.NoError(t, err)
			t.Cleanup(c.Release)
			conns = append(conns, c)
		}
		for _, c := range conns {
			var workMem string
			var advisory, temp, listening int
			require.NoError(t, c.QueryRow(ctx, `
				SELECT current_setting('work_mem'),
				       (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
				       (SELECT count(*) FROM pg_class WHERE relname = 'left_behind' AND relpersistence = 't'),
				       (SELECT count(*) FROM pg_listening_channels())`).Scan(&workMem, &advisory, &temp, &listening))
			require.NotEqual(t, "1234kB", workMem)
			require.Zero(t, advisory)
			require.Zero(t, temp)
			require.Zero(t, listening)
		}
		// Changing the structure retires the schema.
		_, err := s.Pool.Exec(ctx, `CREATE TABLE scratch (id int)`)
		require.NoError(t, err)
	})
	t.Run("ChangedSchemaIsNotReused", func(t *testing.T) {
		s := dbtest.TestSchema(ctx, t, opts)
		require.NotEqual(t, second, s.Name)
		var exists bool
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT to_regclass('scratch') IS NOT NULL`).Scan(&exists))
		require.False(t, exists)
		var gone bool
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, second).Scan(&gone))
		require.True(t, gone, "the retired schema was dropped")
		third = s.Name

		// A rolled-back insert advances the sequence of a table it leaves
		// empty.
		tx, err := s.Pool.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `INSERT INTO pings (note) VALUES ('rolled back')`)
		require.NoError(t, err)
		require.NoError(t, tx.Rollback(ctx))
	})
	t.Run("AnotherPoolSizeReusesTheSchemaAndIdentityRestarts", func(t *testing.T) {
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		require.Equal(t, third, s.Name, "the released schema is reused")
		require.Equal(t, int32(2), s.Pool.Config().MaxConns, "with a pool of the size asked for")
		var id int64
		require.NoError(t, s.Pool.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('x') RETURNING id`).Scan(&id))
		require.Equal(t, int64(1), id, "the empty table's sequence restarted too")
		// Changing a privilege retires the schema too.
		_, err := s.Pool.Exec(ctx, `GRANT SELECT ON pings TO PUBLIC`)
		require.NoError(t, err)
	})
	t.Run("ChangedPrivilegesAreNotReused", func(t *testing.T) {
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		require.NotEqual(t, third, s.Name)
	})
}

func TestSchemasAreIsolated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := dbtest.TestSchema(ctx, t, nil)
	b := dbtest.TestSchema(ctx, t, nil)
	require.NotEqual(t, a.Name, b.Name)

	_, err := a.Pool.Exec(ctx, `INSERT INTO pings (note) VALUES ('only in a')`)
	require.NoError(t, err)
	var n int
	require.NoError(t, b.Pool.QueryRow(ctx, `SELECT count(*) FROM pings`).Scan(&n))
	require.Zero(t, n)
	require.NoError(t, a.Pool.QueryRow(ctx, `SELECT count(*) FROM pings`).Scan(&n))
	require.Equal(t, 1, n)
}

// Without a server (and without Docker, as on the project's machines) the
// run stops before any test with one line that says what to do.
func TestNoServerFailsWithOneLine(t *testing.T) {
	t.Parallel()
	if os.Getenv("DBTEST_CHILD") == "1" {
		return
	}
	if _, err := os.Stat("/var/run/docker.sock"); err == nil {
		t.Log("a Docker socket exists here: the harness would start a container instead")
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestNoServerFailsWithOneLine$")
	cmd.Env = append(os.Environ(), "DBTEST_CHILD=1",
		"TEST_DATABASE_URL=postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr)
	require.Equal(t, 1, exitErr.ExitCode())
	require.Empty(t, stdout.String())
	lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
	require.Len(t, lines, 1, "stderr: %s", stderr.String())
	require.True(t, strings.HasPrefix(lines[0], `dbtest: no Postgres answers at 127.0.0.1:1 (database "postgres", user "postgres") (`), lines[0])
	require.Contains(t, lines[0], "connect: connection refused) and no Docker engine for testcontainers (")
	require.True(t, strings.HasSuffix(lines[0], "): start Postgres there or set TEST_DATABASE_URL=postgres://user@host:port/db"), lines[0])
}
