//go:build long

package faults_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/bouncertest"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/demo"
)

// TestDemoBehindPgBouncer plays the demo's scenario with the app and two
// cmd/worker processes behind PgBouncer 1.18 in transaction mode: worker a
// listens on a direct connection (--listen-database-url URL), worker b
// polls (--listen-database-url off). Every invariant of the demo holds, and
// both workers ran jobs.
func TestDemoBehindPgBouncer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
	server := dbtest.ServerURL(t)
	b, err := bouncertest.Start(ctx, bouncertest.Config{ServerURL: server, Schema: s.Name, PoolSize: 12})
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pgbouncer's log:\n%s", b.Log())
		}
		b.Stop()
	})

	pooled := b.URL("") + "&pool_max_conns=8"
	a := startWorkerAt(t, "bouncer-a", pooled, nil, "--listen-database-url", s.URL)
	bw := startWorkerAt(t, "bouncer-b", pooled, nil, "--listen-database-url", "off")
	idA, idB := a.clientID(t), bw.clientID(t)

	cfg, err := pgxpool.ParseConfig(pooled)
	require.NoError(t, err)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	sum, err := demo.Run(ctx, pool, demo.Config{Scale: 0.02, Seed: 23, ExternalWorkers: true, DrainTimeout: 2 * time.Minute})
	require.NoError(t, err)
	var failed []string
	for _, inv := range sum.Invariants {
		if !inv.OK {
			failed = append(failed, inv.Name+": want "+inv.Want+", got "+inv.Got)
		}
	}
	require.Empty(t, failed, "invariants that failed behind PgBouncer")
	require.Len(t, sum.Invariants, 21)

	ranA := count(ctx, t, s, `SELECT count(*) FROM river_job WHERE $1 = ANY(attempted_by)`, idA)
	ranB := count(ctx, t, s, `SELECT count(*) FROM river_job WHERE $1 = ANY(attempted_by)`, idB)
	t.Logf("worker a (split listener) ran %d jobs, worker b (poll only) %d", ranA, ranB)
	require.Positive(t, ranA)
	require.Positive(t, ranB)
	require.False(t, strings.Contains(a.log.String()+bw.log.String(), "prepared statement"), "no prepared statement reached the pooler")
}
