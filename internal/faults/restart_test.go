//go:build long

package faults_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbmigrate"
	"github.com/aftercommit/aftercommit/internal/pgserver"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
)

// privateServer is a Postgres server of the test's own (internal/pgserver),
// which it may stop and restart: the shared server runs every other test of
// the suite. Without the server's binaries the test fails: it never skips.
type privateServer struct{ *pgserver.Server }

func startPrivateServer(t *testing.T) *privateServer {
	t.Helper()
	srv, err := pgserver.Start(context.Background(), "")
	require.NoError(t, err)
	t.Cleanup(srv.Stop)
	return &privateServer{srv}
}

// newPrivateServer picks a directory (owned by the server's user) and a
// free port for a server; nothing is created in the data directory.
func newPrivateServer(t *testing.T) *privateServer {
	t.Helper()
	srv, err := pgserver.New()
	require.NoError(t, err)
	t.Cleanup(srv.Remove)
	return &privateServer{srv}
}

func (srv *privateServer) run(t *testing.T, tool string, args ...string) {
	t.Helper()
	require.NoError(t, srv.Run(context.Background(), tool, args...))
}

// pgctl runs pg_ctl start or restart; extra are its other flags (-m mode).
func (srv *privateServer) pgctl(t *testing.T, action string, extra ...string) {
	t.Helper()
	require.NoError(t, srv.PgCtl(context.Background(), action, extra...))
}

func (srv *privateServer) url() string { return srv.URL("") }

// TestPostgresRestartedUnderLoad restarts the database server twice — a
// fast shutdown, then an immediate one (a crash, with recovery) — while an
// app commits a ping row and its job in each transaction, 50 a second, and
// a real worker process works them. The worker reconnects by itself; every
// transaction either committed its row with its job or left neither; the
// backlog drains; every row is marked exactly once.
func TestPostgresRestartedUnderLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := startPrivateServer(t)

	cfg, err := pgxpool.ParseConfig(srv.url() + "&pool_max_conns=4")
	require.NoError(t, err)
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer pool.Close()
	_, err = dbmigrate.Up(ctx, pool, nil)
	require.NoError(t, err)
	inserter, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	require.NoError(t, err)

	worker := exec.Command(workerBinary(t), "--http", "off", "--queues", "default", "--max-workers", "20")
	worker.Env = append(os.Environ(), "DATABASE_URL="+srv.url()+"&pool_max_conns=8")
	wlog := &testlog.Buffer{}
	worker.Stderr = wlog
	require.NoError(t, worker.Start())
	defer func() { _ = worker.Process.Kill() }()

	// The app: one transaction per ping row and its job.
	var (
		mu              sync.Mutex
		acked           []int64 // committed, and the app was told so
		failed, inDoubt int     // rolled back / commit's outcome unknown
		stopApp         = make(chan struct{})
		appDone         = make(chan struct{})
	)
	go func() {
		defer close(appDone)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopApp:
				return
			case <-tick.C:
			}
			var id int64
			committing := false
			err := func() error {
				tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
				tx, err := pool.Begin(tctx)
				if err != nil {
					return err
				}
				defer func() { _ = tx.Rollback(tctx) }()
				if err := tx.QueryRow(tctx, `INSERT INTO pings (note) VALUES ('restart') RETURNING id`).Scan(&id); err != nil {
					return err
				}
				if _, err := inserter.InsertTx(tctx, tx, jobs.PingArgs{PingID: id}, nil); err != nil {
					return err
				}
				committing = true
				return tx.Commit(tctx)
			}()
			mu.Lock()
			switch {
			case err == nil:
				acked = append(acked, id)
			case committing:
				inDoubt++
			default:
				failed++
			}
			mu.Unlock()
		}
	}()

	completedSince := func(since time.Time) int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'completed' AND created_at > $1`, since).Scan(&n); err != nil {
			return 0
		}
		return n
	}
	type restart struct {
		mode       string
		down, back time.Duration // server restart time; then until the worker completed a job inserted after it
	}
	var restarts []restart
	for _, mode := range []string{"fast", "immediate"} {
		// The worker works before each restart: jobs created in the last
		// second are being completed. Waited for, not slept for: on a
		// loaded machine the worker's start can take longer than any
		// fixed pause.
		require.Eventually(t, func() bool { return completedSince(time.Now().Add(-time.Second)) > 0 }, 30*time.Second, 50*time.Millisecond,
			"the worker works before the restart; log:\n%s", wlog)
		start := time.Now()
		srv.pgctl(t, "restart", "-m", mode)
		up := time.Now()
		r := restart{mode: mode, down: up.Sub(start)}
		require.Eventually(t, func() bool { return completedSince(up) > 0 }, 60*time.Second, 20*time.Millisecond,
			"the worker completes jobs after the %s restart; log:\n%s", mode, wlog)
		r.back = time.Since(up)
		restarts = append(restarts, r)
		require.Nil(t, worker.ProcessState, "the worker is still the same process")
		time.Sleep(2 * time.Second)
	}
	close(stopApp)
	<-appDone

	// The backlog drains.
	if !assert.Eventually(t, func() bool {
		var left int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state <> 'completed'`).Scan(&left)
		return err == nil && left == 0
	}, 60*time.Second, 50*time.Millisecond, "every job completed") {
		// Say what is left, so that a failure explains itself: stuck
		// running (a lost completion), retryable or scheduled (which
		// attempt, due when), or available (nothing fetched them).
		rows, err := pool.Query(ctx, `
			SELECT state::text || ' attempt ' || attempt || ': ' || count(*) || ' jobs, due '
			       || min(scheduled_at - now()) || ' … ' || max(scheduled_at - now())
			       || ', last error ' || coalesce(max(errors[cardinality(errors)]->>'error'), '-')
			  FROM river_job WHERE state <> 'completed' GROUP BY state, attempt ORDER BY 1`)
		require.NoError(t, err)
		left, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		var leader string
		_ = pool.QueryRow(ctx, `SELECT coalesce((SELECT leader_id || ' until ' || (expires_at - now()) FROM river_leader), 'none')`).Scan(&leader)
		t.Fatalf("jobs left:\n%s\nleader: %s\nworker log:\n%s", strings.Join(left, "\n"), leader, wlog)
	}

	var rows, jobsN, withoutJob, jobWithoutRow, once, twice int
	var worst time.Duration
	require.NoError(t, pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM pings),
       (SELECT count(*) FROM river_job WHERE kind = $1),
       (SELECT count(*) FROM pings p WHERE NOT EXISTS (SELECT 1 FROM river_job j WHERE j.kind = $1 AND (j.args->>'ping_id')::bigint = p.id)),
       (SELECT count(*) FROM river_job j WHERE j.kind = $1 AND NOT EXISTS (SELECT 1 FROM pings p WHERE p.id = (j.args->>'ping_id')::bigint)),
       (SELECT count(*) FROM pings WHERE ping_count = 1),
       (SELECT count(*) FROM pings WHERE ping_count > 1),
       (SELECT coalesce(max(finalized_at - created_at), '0')::interval FROM river_job WHERE kind = $1)`, jobs.PingKind).
		Scan(&rows, &jobsN, &withoutJob, &jobWithoutRow, &once, &twice, &worst))
	var ackedMissing int
	mu.Lock()
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM unnest($1::bigint[]) AS a (id) WHERE NOT EXISTS (SELECT 1 FROM pings WHERE pings.id = a.id)`, acked).Scan(&ackedMissing))
	nAcked, nFailed, nDoubt := len(acked), failed, inDoubt
	mu.Unlock()

	var b strings.Builder
	for _, r := range restarts {
		fmt.Fprintf(&b, "; restart -m %s: server down %s, worker completing jobs again %s after it was back", r.mode, fmtDur(r.down), fmtDur(r.back))
	}
	t.Logf("server restarted twice under load: %d transactions committed (%d acknowledged, %d in doubt at COMMIT), %d failed and left nothing; %d jobs, all completed, worst completion delay %s; %d rows marked once, %d twice, %d without a job, %d jobs without a row%s",
		rows, nAcked, nDoubt, nFailed, jobsN, fmtDur(worst), once, twice, withoutJob, jobWithoutRow, b.String())
	require.Zero(t, ackedMissing, "every acknowledged commit is there")
	require.Equal(t, rows, jobsN, "one job per committed row")
	require.Zero(t, withoutJob, "no row committed without its job")
	require.Zero(t, jobWithoutRow, "no job committed without its row")
	require.Equal(t, rows, once, "every row marked exactly once")
	require.Zero(t, twice)
	require.GreaterOrEqual(t, rows, nAcked)
	require.LessOrEqual(t, rows, nAcked+nDoubt, "a row is there only if its commit was acknowledged or in doubt")
	require.Greater(t, nFailed+nDoubt, 0, "the restarts cut some transactions: the test saw the fault")

	require.NoError(t, worker.Process.Signal(syscall.SIGTERM))
	err = worker.Wait()
	var exit *exec.ExitError
	require.False(t, errors.As(err, &exit), "the worker stops cleanly: %v; log:\n%s", err, wlog)
	require.NoError(t, err)
}
