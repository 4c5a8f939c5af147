//go:build long

package faults_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
)

var (
	workerOnce sync.Once
	workerBin  string
	workerErr  error
)

// workerBinary builds cmd/worker once per test process, with its fault
// hooks compiled in (-tags faults, cmd/worker/faults.go); they do nothing
// unless a test sets their AFTERCOMMIT_FAULT_… variables.
func workerBinary(t *testing.T) string {
	t.Helper()
	workerOnce.Do(func() {
		dir, err := os.MkdirTemp("", "aftercommit-faults-worker-")
		if err != nil {
			workerErr = err
			return
		}
		workerBin = filepath.Join(dir, "worker")
		cmd := exec.Command("go", "build", "-tags", "faults", "-o", workerBin, "./cmd/worker")
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			workerErr = err
			workerBin = string(out)
		}
	})
	require.NoError(t, workerErr, "go build ./cmd/worker: %s", workerBin)
	return workerBin
}

// TestGracefulShutdown sends SIGTERM to a real cmd/worker process while 50
// jobs run. Jobs that end within --shutdown-timeout complete and the worker
// exits 0; jobs still running at the deadline are cancelled and put back in
// the queue (available, the interrupted attempt not counted), none lost.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	bin := workerBinary(t)
	ctx := context.Background()

	for _, tc := range []struct {
		name      string
		sleep     time.Duration // each job's run time
		timeout   string        // --shutdown-timeout
		completed int           // jobs completed at exit
	}{
		{"finish_within_timeout", 1500 * time.Millisecond, "20s", 50},
		{"cancelled_at_the_deadline", 30 * time.Second, "1s", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
			inserter, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
			require.NoError(t, err)
			params := make([]river.InsertManyParams, 50)
			for i := range params {
				params[i] = river.InsertManyParams{Args: jobs.PingArgs{SleepMS: int(tc.sleep / time.Millisecond)}}
			}
			_, err = inserter.InsertMany(ctx, params)
			require.NoError(t, err)

			cmd := exec.Command(bin, "--schema", s.Name, "--http", "off", "--queues", "default", "--max-workers", "50",
				"--shutdown-timeout", tc.timeout)
			cmd.Env = append(os.Environ(), "DATABASE_URL="+s.URL)
			var stderr testlog.Buffer
			cmd.Stderr = &stderr
			require.NoError(t, cmd.Start())
			defer func() { _ = cmd.Process.Kill() }()

			require.Eventually(t, func() bool {
				var running int
				err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'running'`, jobs.PingKind).Scan(&running)
				return err == nil && running == 50
			}, 30*time.Second, 20*time.Millisecond, "50 jobs running; worker log:\n%s", &stderr)

			start := time.Now()
			require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				require.NoError(t, err, "exit code; worker log:\n%s", &stderr)
			case <-time.After(60 * time.Second):
				t.Fatalf("the worker did not exit within 60 s of SIGTERM; log:\n%s", &stderr)
			}
			took := time.Since(start)

			var completed, requeued, other int
			require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE state = 'completed'),
       count(*) FILTER (WHERE state = 'available' AND attempt = 0),
       count(*) FILTER (WHERE state <> 'completed' AND NOT (state = 'available' AND attempt = 0))
  FROM river_job WHERE kind = $1`, jobs.PingKind).Scan(&completed, &requeued, &other))
			t.Logf("SIGTERM with 50 running jobs (%s each, --shutdown-timeout %s): exit 0 after %s; %d completed, %d put back, %d other",
				tc.sleep, tc.timeout, took.Round(10*time.Millisecond), completed, requeued, other)
			require.Equal(t, tc.completed, completed)
			require.Equal(t, 50-tc.completed, requeued, "the rest are available again, their attempt not counted")
			require.Zero(t, other, "none lost, none discarded, none left running")
		})
	}
}
