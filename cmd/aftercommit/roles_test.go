package main

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbroles/dbrolestest"
	"github.com/aftercommit/aftercommit/internal/dbtest"
)

func TestGrantRoles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// Commands must use --database-url: nothing answers here.
	environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}

	// can reports whether role holds privilege on relation of s.
	can := func(t *testing.T, s *dbtest.Schema, role, relation, privilege string) bool {
		t.Helper()
		var ok bool
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT has_table_privilege($1, $2, $3)`,
			role, pgx.Identifier{s.Name, relation}.Sanitize(), privilege).Scan(&ok))
		return ok
	}

	t.Run("GrantsExistingRoles", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		app := dbrolestest.NewRole(ctx, t, s, "app")
		worker := dbrolestest.NewRole(ctx, t, s, "worker")

		res := runCLI(ctx, t, environ, "grant-roles", "--app-role", app.Name, "--worker-role", worker.Name,
			"--database-url", s.URL, "--schema", s.Name)
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Empty(t, res.stderr)
		require.Equal(t, fmt.Sprintf("granted on schema %q: app role %q, worker role %q; run cmd/worker as %q with --reindexer off\n",
			s.Name, app.Name, worker.Name, worker.Name), res.stdout)
		require.True(t, can(t, s, app.Name, "river_job", "INSERT"))
		require.False(t, can(t, s, app.Name, "river_job", "DELETE"))
		require.False(t, can(t, s, app.Name, "river_job", "UPDATE"))
		require.True(t, can(t, s, worker.Name, "river_job", "DELETE"))
		require.False(t, can(t, s, worker.Name, "river_job", "TRUNCATE"))

		// Again, the schema from the URL's search_path: the same result.
		res = runCLI(ctx, t, environ, "grant-roles", "--app-role", app.Name, "--worker-role", worker.Name, "--database-url", s.URL)
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Contains(t, res.stdout, fmt.Sprintf("granted on schema %q", s.Name))
	})

	t.Run("CreatesMissingRoles", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		app, worker := s.Name+"_cli_app", s.Name+"_cli_worker"
		t.Cleanup(func() {
			ctx := context.WithoutCancel(ctx)
			for _, r := range []string{app, worker} {
				_, err := s.Pool.Exec(ctx, "DROP OWNED BY "+pgx.Identifier{r}.Sanitize()+"; DROP ROLE "+pgx.Identifier{r}.Sanitize())
				require.NoError(t, err)
			}
		})

		args := []string{"grant-roles", "--app-role", app, "--worker-role", worker, "--database-url", s.URL, "--schema", s.Name}
		res := runCLI(ctx, t, environ, args...)
		require.Equal(t, exitFailure, res.code)
		require.Empty(t, res.stdout)
		requireOneLine(t, res.stderr)
		require.Equal(t, fmt.Sprintf("aftercommit grant-roles: dbroles: role does not exist: app role %q (create it, or use CreateRoles / --create)\n", app), res.stderr)

		res = runCLI(ctx, t, environ, append(args, "--create")...)
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Equal(t, fmt.Sprintf("created role %q (NOLOGIN)\ncreated role %q (NOLOGIN)\n", app, worker)+
			fmt.Sprintf("granted on schema %q: app role %q, worker role %q; run cmd/worker as %q with --reindexer off\n", s.Name, app, worker, worker),
			res.stdout)
		require.True(t, can(t, s, app, "outbox_events", "INSERT"))
		require.False(t, can(t, s, app, "outbox_events", "DELETE"))
		require.True(t, can(t, s, worker, "outbox_events", "DELETE"))

		res = runCLI(ctx, t, environ, append(args, "--create")...)
		require.Equal(t, exitOK, res.code, res.stderr)
		require.NotContains(t, res.stdout, "created role", "they exist now")
	})

	t.Run("RefusesPrivilegedRole", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		app := dbrolestest.NewRole(ctx, t, s, "app")
		res := runCLI(ctx, t, environ, "grant-roles", "--app-role", app.Name, "--worker-role", "postgres",
			"--database-url", s.URL, "--schema", s.Name)
		require.Equal(t, exitFailure, res.code)
		require.Equal(t, `aftercommit grant-roles: dbroles: role cannot be restricted: worker role "postgres" is a superuser`+"\n", res.stderr)
		require.False(t, can(t, s, app.Name, "river_job", "INSERT"), "nothing granted")
	})

	t.Run("BadUsage", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			args    []string
			wantErr string
		}{
			{[]string{}, "--app-role and --worker-role are required"},
			{[]string{"--app-role", "a"}, "--app-role and --worker-role are required"},
			{[]string{"--app-role", "a", "--worker-role", "a"}, `--app-role and --worker-role are both "a": they must differ`},
			{[]string{"--app-role", "a", "--worker-role", "b", "extra"}, "grant-roles takes no arguments, got extra"},
			{[]string{"--app-role", "a", "--worker-role", "b", "--force"}, "-force"},
		} {
			res := runCLI(ctx, t, environ, append([]string{"grant-roles"}, tc.args...)...)
			require.Equal(t, exitUsage, res.code, "%v: %s", tc.args, res.stderr)
			require.Empty(t, res.stdout)
			require.Contains(t, res.stderr, tc.wantErr, "%v", tc.args)
			require.Contains(t, res.stderr, "aftercommit grant-roles --help")
			require.NotContains(t, res.stderr, "cannot reach", "a usage error tried to connect")
		}
	})

	t.Run("InvalidName", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
		res := runCLI(ctx, t, environ, "grant-roles", "--app-role", "public", "--worker-role", "w", "--database-url", s.URL)
		require.Equal(t, exitUsage, res.code, res.stderr)
		require.Equal(t, `aftercommit grant-roles: invalid app role name "public": GRANT reads it as a keyword, not a role`+"\n", res.stderr)
	})

	t.Run("Help", func(t *testing.T) {
		t.Parallel()
		for _, args := range [][]string{{"grant-roles", "--help"}, {"help", "grant-roles"}} {
			res := runCLI(ctx, t, environ, args...)
			require.Equal(t, exitOK, res.code)
			require.Empty(t, res.stderr)
			for _, w := range []string{"aftercommit grant-roles --app-role NAME --worker-role NAME [--create]",
				"--reindexer off", "-app-role role", "-worker-role role", "-create", "-database-url", "-schema", "grants.sql"} {
				require.Contains(t, res.stdout, w)
			}
		}
		res := runCLI(ctx, t, environ, "--help")
		require.Contains(t, res.stdout, "grant-roles")
	})
}
