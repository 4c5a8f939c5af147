package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/devdb"
	"github.com/aftercommit/aftercommit/internal/devdb/devdbtest"
)

func TestDemo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}

	t.Run("SmallScaleHoldsEveryInvariant", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 1})
		res := runCLI(ctx, t, environ, "demo", "--scale", "0.02", "--seed", "42", "--database-url", s.URL, "--schema", s.Name)
		require.Equal(t, exitOK, res.code, "stdout:\n%s\nstderr:\n%s", res.stdout, res.stderr)
		require.Contains(t, res.stdout, "migrate: already up to date\n")
		require.Contains(t, res.stdout, "aftercommit demo: scale 0.02, seed 42, tag ")
		require.Contains(t, res.stdout, "all 21 invariants hold\n")
		require.NotContains(t, res.stdout, "\n  FAIL")
		require.NotContains(t, res.stdout, "\x1b[", "no progress bars when stdout is not a terminal")
	})

	t.Run("ExternalWorkersThatAreNotThere", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 1})
		res := runCLI(ctx, t, environ, "demo", "--scale", "0.01", "--external-workers", "--drain-timeout", "1s",
			"--database-url", s.URL, "--schema", s.Name)
		require.Equal(t, exitFailure, res.code, res.stderr)
		requireOneLine(t, res.stderr)
		require.Regexp(t, `^aftercommit demo: \d+ jobs still waiting after 1s \(--external-workers: are workers running against this database\?\); see 'aftercommit stats'\n$`, res.stderr)
	})

	t.Run("BadUsage", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"demo", "now"}, "aftercommit demo: demo takes no arguments, got now\n"},
			{[]string{"demo", "--scale", "0"}, "aftercommit demo: --scale must be in (0, 100], got 0\n"},
			{[]string{"demo", "--scale", "NaN"}, "aftercommit demo: --scale must be in (0, 100], got NaN\n"},
			{[]string{"demo", "--drain-timeout", "0s"}, "aftercommit demo: --drain-timeout must be positive, got 0s\n"},
		} {
			res := runCLI(ctx, t, environ, tc.args...)
			require.Equal(t, exitUsage, res.code, "%v", tc.args)
			require.Equal(t, tc.want+"Run 'aftercommit demo --help' for usage.\n", res.stderr)
		}
	})

	t.Run("UnreachableDatabase", func(t *testing.T) {
		t.Parallel()
		res := runCLI(ctx, t, map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"}, "demo")
		require.Equal(t, exitFailure, res.code)
		requireOneLine(t, res.stderr)
		require.Contains(t, res.stderr, "cannot reach")
	})
}

// With no database named, the demo takes the local server, else starts a
// container (here a fake one whose URL is a test schema), else says in one
// line how to provide a database.
func TestDemoFindsADatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const nothingAnswers = "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"
	noEnviron := func(string) string { return "" }

	demoWith := func(ctx context.Context, environ func(string) string, dev *devdb.Config, args ...string) cliResult {
		var stdout, stderr bytes.Buffer
		code := runDemoWith(ctx, args, &env{getenv: environ, stdout: &stdout, stderr: &stderr}, dev)
		return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
	}

	t.Run("NothingAnswersAndNoDocker", func(t *testing.T) {
		t.Parallel()
		docker := &devdbtest.FakeDocker{Err: errors.New("run postgres: generic container: get provider: rootless Docker not found, failed to create Docker provider")}
		res := demoWith(ctx, noEnviron, &devdb.Config{DefaultURL: nothingAnswers, Start: docker.Start}, "--scale", "0.01")
		require.Equal(t, exitFailure, res.code)
		require.Empty(t, res.stdout)
		require.Equal(t, "aftercommit demo: no Postgres answers at 127.0.0.1:1 and Docker could not start postgres:16 "+
			"(run postgres: generic container: get provider: rootless Docker not found, failed to create Docker provider): "+
			"start Postgres there, or set DATABASE_URL (or --database-url) to your server\n", res.stderr)
		require.Equal(t, 1, docker.Started())
	})

	t.Run("NothingAnswersStartsAContainer", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 1})
		docker := &devdbtest.FakeDocker{URL: s.URL}
		res := demoWith(ctx, noEnviron, &devdb.Config{DefaultURL: nothingAnswers, Start: docker.Start},
			"--scale", "0.01", "--seed", "7", "--schema", s.Name)
		require.Equal(t, exitOK, res.code, "stdout:\n%s\nstderr:\n%s", res.stdout, res.stderr)
		require.True(t, strings.HasPrefix(res.stdout, "aftercommit demo: no Postgres answers at 127.0.0.1:1: started postgres:16 with testcontainers at "+
			s.URL+"; it is removed on exit\nmigrate: already up to date\n"), res.stdout)
		require.Contains(t, res.stdout, "all 21 invariants hold\n")
		require.Equal(t, 1, docker.Started())
		require.Equal(t, 1, docker.Removed(), "the container is removed when the demo ends")
	})

	t.Run("InterruptedTheContainerIsRemoved", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 1})
		docker := &devdbtest.FakeDocker{URL: s.URL, OnStart: cancel} // Ctrl-C once the container is up
		res := demoWith(ctx, noEnviron, &devdb.Config{DefaultURL: nothingAnswers, Start: docker.Start}, "--scale", "0.01", "--schema", s.Name)
		require.Equal(t, exitInterrupted, res.code, res.stderr)
		require.Equal(t, "aftercommit: interrupted\n", res.stderr)
		require.Equal(t, 1, docker.Removed())
	})

	t.Run("DefaultServerAnswers", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 1})
		// Enqueue only, with no worker: the demo stops at the drain, which
		// shows it ran against the default server.
		res := demoWith(ctx, noEnviron, &devdb.Config{DefaultURL: s.URL, Start: (&devdbtest.FakeDocker{Refuse: t}).Start},
			"--scale", "0.01", "--external-workers", "--drain-timeout", "1s", "--schema", s.Name)
		require.Equal(t, exitFailure, res.code, res.stderr)
		require.True(t, strings.HasPrefix(res.stdout, "migrate: already up to date\n"), res.stdout)
		require.Contains(t, res.stderr, "jobs still waiting after 1s")
	})

	t.Run("GivenURLNeverStartsAContainer", func(t *testing.T) {
		t.Parallel()
		unreachable := nothingAnswers + "&connect_timeout=2"
		for _, tc := range []struct {
			name    string
			environ func(string) string
			args    []string
		}{
			{"DATABASE_URL", func(k string) string { return map[string]string{"DATABASE_URL": unreachable}[k] }, nil},
			{"--database-url", noEnviron, []string{"--database-url", unreachable}},
		} {
			res := demoWith(ctx, tc.environ, &devdb.Config{DefaultURL: nothingAnswers, Start: (&devdbtest.FakeDocker{Refuse: t}).Start}, tc.args...)
			require.Equal(t, exitFailure, res.code, tc.name)
			requireOneLine(t, res.stderr)
			require.Contains(t, res.stderr, "cannot reach", tc.name)
			require.Contains(t, res.stderr, "127.0.0.1:1", tc.name)
		}
	})
}
