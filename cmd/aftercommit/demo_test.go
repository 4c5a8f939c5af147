package main

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

func TestDemo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}

	t.Run("SmallScaleHoldsEveryInvariant", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 1})
		res := runCLI(ctx, t, environ, "demo", "--scale", "0.05", "--seed", "42", "--database-url", s.URL, "--schema", s.Name)
		require.Equal(t, exitOK, res.code, "stdout:\n%s\nstderr:\n%s", res.stdout, res.stderr)
		require.Contains(t, res.stdout, "migrate: already up to date\n")
		require.Contains(t, res.stdout, "aftercommit demo: scale 0.05, seed 42, tag ")
		require.Contains(t, res.stdout, "all 18 invariants hold\n")
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
