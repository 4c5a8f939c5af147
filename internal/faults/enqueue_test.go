//go:build long

package faults_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// childEnv names the variables that make TestEnqueuerChild run, in a child
// process started by TestEnqueuerKilledBeforeCommit.
const (
	childEnv       = "AFTERCOMMIT_FAULTS_CHILD_URL"
	childPointEnv  = "AFTERCOMMIT_FAULTS_CHILD_POINT"
	childReadyLine = "READY"
)

// newOutbox returns an outbox of the ping job on pool, with an insert-only
// client.
func newOutbox(t testing.TB, pool *pgxpool.Pool, cfg *outbox.Config) *outbox.Outbox {
	t.Helper()
	reg := jobs.NewRegistry()
	jobs.RegisterPing(reg, pool)
	client, err := jobs.NewClient(pool, reg, &jobs.ClientConfig{Queues: []string{}})
	require.NoError(t, err)
	ob, err := jobs.NewOutbox(pool, client, reg, cfg)
	require.NoError(t, err)
	return ob
}

// TestEnqueuerChild is the application process of
// TestEnqueuerKilledBeforeCommit: it begins an outbox transaction, inserts
// a row (and, at point "after_enqueue", enqueues its job), prints READY and
// waits to be killed before the COMMIT. Run alone, it has nothing to do.
func TestEnqueuerChild(t *testing.T) {
	url := os.Getenv(childEnv)
	if url == "" {
		t.Skip("the child process of TestEnqueuerKilledBeforeCommit; it runs only there")
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	require.NoError(t, err)
	ob := newOutbox(t, pool, nil)
	_, _ = ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		var id int64
		require.NoError(t, tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('doomed') RETURNING id`).Scan(&id))
		if os.Getenv(childPointEnv) == "after_enqueue" {
			require.NoError(t, tx.Enqueue(jobs.PingArgs{PingID: id}, nil))
			// The job's INSERT is buffered: force it to the server now, in
			// this transaction, to kill the process with it sent.
			_, err := ob.Enqueue(ctx, tx, jobs.PingArgs{PingID: id + 1_000_000}, nil)
			require.NoError(t, err)
		}
		var pid int
		require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
		fmt.Println(childReadyLine, pid)
		time.Sleep(time.Minute) // killed before this returns
		return nil
	})
	t.Fatal("the child was not killed")
}

// TestEnqueuerKilledBeforeCommit kills (SIGKILL) an application process in
// the middle of an outbox transaction — after the domain INSERT, and after
// a job INSERT went to the server — and checks that neither the row nor
// any job exists once the server has ended the dead session.
func TestEnqueuerKilledBeforeCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, point := range []string{"after_insert", "after_enqueue"} {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
			for round := range 3 {
				cmd := exec.Command(os.Args[0], "-test.run=^TestEnqueuerChild$", "-test.count=1")
				cmd.Env = append(os.Environ(), childEnv+"="+s.URL, childPointEnv+"="+point)
				stdout, err := cmd.StdoutPipe()
				require.NoError(t, err)
				require.NoError(t, cmd.Start())
				ready := make(chan int, 1)
				go func() {
					sc := bufio.NewScanner(stdout)
					for sc.Scan() {
						var pid int
						if _, err := fmt.Sscanf(strings.TrimSpace(sc.Text()), childReadyLine+" %d", &pid); err == nil {
							ready <- pid
							break
						}
					}
					close(ready)
				}()
				var backend int
				select {
				case backend = <-ready:
					require.NotZero(t, backend, "the child ended before its transaction was open")
				case <-time.After(30 * time.Second):
					_ = cmd.Process.Kill()
					t.Fatal("the child never opened its transaction")
				}
				// While the child waits, its row and job are invisible.
				requireCounts(ctx, t, s.Pool, 0, 0)
				require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
				err = cmd.Wait()
				var exit *exec.ExitError
				require.ErrorAs(t, err, &exit, "round %d", round)

				// The server notices the closed socket, rolls the child's
				// transaction back and ends its session.
				require.Eventually(t, func() bool {
					var alive bool
					err := s.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)`, backend).Scan(&alive)
					return err == nil && !alive
				}, 30*time.Second, 20*time.Millisecond, "the child's session %d is still open", backend)
				requireCounts(ctx, t, s.Pool, 0, 0)
			}
		})
	}
}

func requireCounts(ctx context.Context, t *testing.T, pool *pgxpool.Pool, pings, jobRows int) {
	t.Helper()
	var p, j int
	require.NoError(t, pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM pings), (SELECT count(*) FROM river_job) + (SELECT count(*) FROM outbox_jobs)`).Scan(&p, &j))
	require.Equal(t, pings, p, "pings rows")
	require.Equal(t, jobRows, j, "river_job rows")
}

// TestRandomCommitsAndRollbacks runs 10,000 outbox transactions from 8
// goroutines, each inserting a row and enqueueing its job, and rolls back
// a random half of them (by returning an error, or by panicking): jobs
// exist for exactly the committed rows, one each.
func TestRandomCommitsAndRollbacks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 8})
	ob := newOutbox(t, s.Pool, nil)

	const total, goroutines = 10_000, 8
	errRollback := errors.New("roll back")
	var (
		next      atomic.Int64
		mu        sync.Mutex
		committed []int64
		rolled    atomic.Int64
		wg        sync.WaitGroup
	)
	for g := range goroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for next.Add(1) <= total {
				var id int64
				mode := rng.IntN(4) // 0, 1: commit; 2: error; 3: panic
				err := func() (err error) {
					defer func() {
						if p := recover(); p != nil {
							err = fmt.Errorf("panicked: %v", p)
						}
					}()
					_, err = ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
						if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('fault') RETURNING id`).Scan(&id); err != nil {
							return err
						}
						if err := tx.Enqueue(jobs.PingArgs{PingID: id}, nil); err != nil {
							return err
						}
						switch mode {
						case 2:
							return errRollback
						case 3:
							panic("boom")
						}
						return nil
					})
					return err
				}()
				if mode < 2 {
					if err != nil {
						t.Errorf("commit %d: %v", id, err)
						return
					}
					mu.Lock()
					committed = append(committed, id)
					mu.Unlock()
					continue
				}
				if err == nil {
					t.Errorf("a rollback of %d returned no error", id)
					return
				}
				rolled.Add(1)
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(total), int64(len(committed))+rolled.Load())

	rows, err := s.Pool.Query(ctx, `SELECT id FROM pings ORDER BY id`)
	require.NoError(t, err)
	pings, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	// A job is an outbox row (no relay runs here) or, written directly, a
	// river_job row: count both.
	rows, err = s.Pool.Query(ctx, `
SELECT ping_id FROM (SELECT (args->>'ping_id')::bigint AS ping_id FROM river_job WHERE kind = $1
                     UNION ALL
                     SELECT (args->>'ping_id')::bigint FROM outbox_jobs WHERE kind = $1) AS j
 ORDER BY 1`, jobs.PingKind)
	require.NoError(t, err)
	jobIDs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	slices.Sort(committed)
	require.Equal(t, committed, pings, "exactly the committed rows exist")
	require.Equal(t, committed, jobIDs, "one job per committed row, none for a rolled-back one")
	t.Logf("%d transactions: %d committed with their job, %d rolled back with nothing left", total, len(committed), rolled.Load())
}
