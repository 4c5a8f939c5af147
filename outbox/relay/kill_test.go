package relay_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// The helper process's settings, passed by TestKillMidBatch.
const (
	killEnvURL    = "AFTERCOMMIT_RELAY_KILL_URL"    // the schema's URL; set: run as the helper
	killEnvSchema = "AFTERCOMMIT_RELAY_KILL_SCHEMA" // River's schema
	killEnvApp    = "AFTERCOMMIT_RELAY_KILL_APP"    // application_name of its connections
	killEnvBatch  = "AFTERCOMMIT_RELAY_KILL_BATCH"  // the batch whose insert is its last act
)

const killBatchSize = 100

// killAfterInsert is an insert middleware that SIGKILLs its own process
// right after River inserted the jobs of the batch-th insert: the jobs are
// in the relay's transaction, which never commits.
type killAfterInsert struct {
	river.MiddlewareDefaults
	batch int64
	calls atomic.Int64
}

func (m *killAfterInsert) InsertMany(ctx context.Context, _ []*rivertype.JobInsertParams, doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	res, err := doInner(ctx)
	if m.calls.Add(1) == m.batch && err == nil {
		fmt.Fprintf(os.Stderr, "relay helper: inserted %d jobs of batch %d; SIGKILL\n", len(res), m.batch)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Minute) // the signal lands first
	}
	return res, err
}

// TestKillHelperProcess is the relay that TestKillMidBatch runs as a child
// process and kills; run alone, it does nothing.
func TestKillHelperProcess(t *testing.T) {
	t.Parallel()
	url := os.Getenv(killEnvURL)
	if url == "" {
		return
	}
	ctx := context.Background()
	batch, err := strconv.ParseInt(os.Getenv(killEnvBatch), 10, 64)
	require.NoError(t, err)
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.ConnConfig.RuntimeParams["application_name"] = os.Getenv(killEnvApp)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Schema: os.Getenv(killEnvSchema), Logger: discard,
		Middleware: []rivertype.Middleware{&killAfterInsert{batch: batch}},
	})
	require.NoError(t, err)
	// One mover: the batches commit one after another, so the killed one
	// is exactly the third (TestMovers covers several at once).
	rl, err := relay.New(pool, client, &relay.Config{Schema: os.Getenv(killEnvSchema), BatchSize: killBatchSize, Movers: 1, Logger: discard})
	require.NoError(t, err)
	res, err := rl.Drain(ctx)
	t.Fatalf("the relay was not killed: Drain returned %+v, %v", res, err)
}

// TestKillMidBatch: a relay killed (SIGKILL) after River inserted a batch's
// jobs but before its transaction committed leaves that batch's rows in
// the outbox and none of its jobs; the batches it committed before are
// jobs; the next relay makes every row exactly one job.
func TestKillMidBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	const rows, killBatch = 1000, 3
	require.NoError(t, insertN(ctx, s.Pool, 1, rows))

	app := "relaykill_" + strconv.Itoa(os.Getpid()) + "_" + s.Name[len(s.Name)-4:]
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestKillHelperProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(),
		killEnvURL+"="+s.URL, killEnvSchema+"="+s.Name, killEnvApp+"="+app, killEnvBatch+"="+strconv.Itoa(killBatch))
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	require.True(t, errors.As(err, &exitErr), "the helper did not fail: %v\n%s", err, out)
	status, ok := exitErr.Sys().(syscall.WaitStatus)
	require.True(t, ok)
	require.True(t, status.Signaled(), "the helper exited instead of being killed: %v\n%s", err, out)
	require.Equal(t, syscall.SIGKILL, status.Signal(), "%s", out)
	require.Contains(t, string(out), fmt.Sprintf("inserted %d jobs of batch %d; SIGKILL", killBatchSize, killBatch))

	// The server rolls back the dead relay's transaction once it sees the
	// connection gone; until then its rows are locked.
	require.Eventually(t, func() bool {
		return count(ctx, t, s, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, app) == 0
	}, 30*time.Second, 10*time.Millisecond)

	committed := (killBatch - 1) * killBatchSize
	var jobs, distinct, minN, maxN int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT args->>'n'), coalesce(min((args->>'n')::int), 0), coalesce(max((args->>'n')::int), 0) FROM river_job`).
		Scan(&jobs, &distinct, &minN, &maxN))
	require.Equal(t, [4]int{committed, committed, 1, committed}, [4]int{jobs, distinct, minN, maxN}, "the batches before the killed one are jobs")
	var waiting, firstN, lastN int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*), min((args->>'n')::int), max((args->>'n')::int) FROM outbox_jobs`).
		Scan(&waiting, &firstN, &lastN))
	require.Equal(t, [3]int{rows - committed, committed + 1, rows}, [3]int{waiting, firstN, lastN}, "the killed batch's rows and those behind it wait")

	rl := plainRelay(t, s, plainClient(t, s), relay.Config{BatchSize: killBatchSize})
	res, err := rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, rows-committed, res.Rows)
	require.Equal(t, rows-committed, res.Inserted)
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT args->>'n'), min((args->>'n')::int), max((args->>'n')::int) FROM river_job`).
		Scan(&jobs, &distinct, &minN, &maxN))
	require.Equal(t, [4]int{rows, rows, 1, rows}, [4]int{jobs, distinct, minN, maxN}, "every row is exactly one job")
	require.Equal(t, 0, count(ctx, t, s, `SELECT count(*) FROM outbox_jobs`))
}
