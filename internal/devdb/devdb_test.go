package devdb_test

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/devdb"
)

// nothingAnswers is a URL where no server listens.
const nothingAnswers = "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"

// starter is a fake devdb.Config.Start that records its calls.
type starter struct {
	url     string
	err     error
	calls   int
	stopped int
}

func (s *starter) start(_ context.Context, _ *slog.Logger) (string, func(), error) {
	s.calls++
	if s.err != nil {
		return "", nil, s.err
	}
	return s.url, func() { s.stopped++ }, nil
}

// mustNotStart fails the test if a container is started.
func mustNotStart(t *testing.T) func(context.Context, *slog.Logger) (string, func(), error) {
	return func(context.Context, *slog.Logger) (string, func(), error) {
		t.Error("a container was started")
		return "", nil, errors.New("no container in this test")
	}
}

func TestFind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("GivenURLIsNeverProbedNorReplaced", func(t *testing.T) {
		t.Parallel()
		db, err := devdb.Find(ctx, &devdb.Config{URL: nothingAnswers, DefaultURL: nothingAnswers, Start: mustNotStart(t)})
		require.NoError(t, err)
		require.Equal(t, nothingAnswers, db.URL)
		require.False(t, db.Started)
		require.Empty(t, db.Note())
		db.Close()
	})

	t.Run("DefaultServerAnswers", func(t *testing.T) {
		t.Parallel()
		server := dbtest.ServerURL(t) //nolint:contextcheck // dbtest sets up the test server once per process (sync.Once) on its own context; no one test's ctx may bound that
		db, err := devdb.Find(ctx, &devdb.Config{DefaultURL: server, Start: mustNotStart(t)})
		require.NoError(t, err)
		require.Equal(t, server, db.URL)
		require.False(t, db.Started)
	})

	t.Run("DefaultServerAnswersWithAnError", func(t *testing.T) {
		t.Parallel()
		// A server that refuses (here: no such database) is a server: the
		// command reports its error rather than start another one.
		u, err := url.Parse(dbtest.ServerURL(t)) //nolint:contextcheck // dbtest sets up the test server once per process (sync.Once) on its own context; no one test's ctx may bound that
		require.NoError(t, err, "this test needs the test server as a URL")
		u.Path = "/devdb_no_such_database"
		db, err := devdb.Find(ctx, &devdb.Config{DefaultURL: u.String(), Start: mustNotStart(t)})
		require.NoError(t, err)
		require.Equal(t, u.String(), db.URL)
		require.False(t, db.Started)
	})

	t.Run("NothingAnswersStartsAContainer", func(t *testing.T) {
		t.Parallel()
		s := &starter{url: "postgres://postgres:postgres@localhost:49153/postgres?sslmode=disable"}
		db, err := devdb.Find(ctx, &devdb.Config{DefaultURL: nothingAnswers, Start: s.start})
		require.NoError(t, err)
		require.Equal(t, s.url, db.URL)
		require.True(t, db.Started)
		require.Equal(t, "no Postgres answers at 127.0.0.1:1: started postgres:16 with testcontainers at "+s.url+"; it is removed on exit", db.Note())
		require.Equal(t, 1, s.calls)
		require.Zero(t, s.stopped)
		db.Close()
		db.Close()
		require.Equal(t, 1, s.stopped, "Close removes the container, once")
	})

	t.Run("NothingAnswersAndNoDocker", func(t *testing.T) {
		t.Parallel()
		s := &starter{err: errors.New("run postgres: generic container: get provider: rootless Docker not found,\nfailed to create Docker provider")}
		db, err := devdb.Find(ctx, &devdb.Config{DefaultURL: nothingAnswers, Start: s.start})
		require.Nil(t, db)
		var noServer *devdb.NoServerError
		require.ErrorAs(t, err, &noServer)
		require.ErrorIs(t, err, s.err)
		require.Equal(t, "no Postgres answers at 127.0.0.1:1 and Docker could not start postgres:16 "+
			"(run postgres: generic container: get provider: rootless Docker not found, failed to create Docker provider): "+
			"start Postgres there, or set DATABASE_URL (or --database-url) to your server", err.Error())
	})

	t.Run("InterruptedWhileStarting", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(ctx)
		start := func(ctx context.Context, _ *slog.Logger) (string, func(), error) {
			cancel() // Ctrl-C while the image is pulled
			return "", nil, ctx.Err()
		}
		db, err := devdb.Find(ctx, &devdb.Config{DefaultURL: nothingAnswers, Start: start})
		require.Nil(t, db)
		require.ErrorIs(t, err, context.Canceled)
		var noServer *devdb.NoServerError
		require.NotErrorAs(t, err, &noServer, "an interrupted start is not a missing Docker")
	})
}

// StartContainer runs postgres:16 where a Docker engine is reachable; where
// none is (this project's CI machine), it must fail at once, with an error
// and without a panic.
func TestStartContainer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	began := time.Now()
	rawURL, stop, err := devdb.StartContainer(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Logf("no container: %v", err)
		require.Empty(t, rawURL)
		require.Nil(t, stop)
		require.Less(t, time.Since(began), 30*time.Second, "without Docker, StartContainer must fail fast")
		return
	}
	conn, err := pgx.Connect(ctx, rawURL)
	require.NoError(t, err)
	var major int
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int / 10000`).Scan(&major))
	require.NoError(t, conn.Close(ctx))
	require.Equal(t, 16, major)
	stop()
	_, err = pgx.Connect(ctx, rawURL)
	require.Error(t, err, "the container is gone once stopped")
}
