// Package dbrolestest gives a test LOGIN roles of its own, granted with
// dbroles on its test schema, and pools connected as them. It is a test
// fixture; production code never imports it.
package dbrolestest

import (
	"context"
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbroles"
	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// Role is a LOGIN role created for one test.
type Role struct {
	// Name is the role's name.
	Name string
	// URL connects to the test schema as the role (the server's trust
	// authentication takes no password).
	URL string
}

var counter atomic.Int64

// NewRole creates a LOGIN role (no other attribute) named after s and
// suffix, unique in the cluster, and drops it when t ends: its privileges
// (DROP OWNED BY), then the role.
func NewRole(ctx context.Context, t testing.TB, s *dbtest.Schema, suffix string) Role {
	t.Helper()
	name := fmt.Sprintf("%s_%s%d", s.Name, suffix, counter.Add(1))
	if len(name) > 63 {
		name = fmt.Sprintf("act_role_%s%d_%d", suffix, counter.Add(1), len(s.Name))
	}
	ident := pgx.Identifier{name}.Sanitize()
	_, err := s.Pool.Exec(ctx, "CREATE ROLE "+ident+" LOGIN")
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx := context.WithoutCancel(ctx)
		_, err := s.Pool.Exec(ctx, "DROP OWNED BY "+ident)
		require.NoError(t, err)
		_, err = s.Pool.Exec(ctx, "DROP ROLE "+ident)
		require.NoError(t, err)
	})
	u, err := url.Parse(s.URL)
	require.NoError(t, err, "the test database must be given as a URL")
	u.User = url.User(name)
	return Role{Name: name, URL: u.String()}
}

// Roles creates an app and a worker role for s and grants them with
// dbroles.Grant. When t ends the roles are dropped; the harness empties
// their registration (aftercommit_roles) with the schema.
func Roles(ctx context.Context, t testing.TB, s *dbtest.Schema) (app, worker Role) {
	t.Helper()
	app = NewRole(ctx, t, s, "app")
	worker = NewRole(ctx, t, s, "worker")
	require.NoError(t, dbroles.Grant(ctx, s.Pool, s.Name, app.Name, worker.Name))
	return app, worker
}

// Pool opens a pool of at most maxConns connections as r, closed when t
// ends.
func Pool(ctx context.Context, t testing.TB, r Role, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(r.URL)
	require.NoError(t, err)
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	var user string
	require.NoError(t, pool.QueryRow(ctx, `SELECT current_user`).Scan(&user))
	require.Equal(t, r.Name, user)
	return pool
}
