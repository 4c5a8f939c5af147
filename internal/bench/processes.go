package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
)

// WorkerBinEnv names the worker binary the processes scenario runs, when
// set. Otherwise the scenario builds ./cmd/worker with the go command when
// it runs inside this module, else it runs a `worker` next to the running
// executable (a release ships both).
const WorkerBinEnv = "AFTERCOMMIT_WORKER_BIN"

// modulePath is this module's path, to recognize its go.mod.
const modulePath = "github.com/aftercommit/aftercommit"

// workerStartTimeout bounds a worker process's start (connect, schema
// check, River client start).
const workerStartTimeout = time.Minute

// workerStopTimeout bounds a worker process's graceful stop after SIGTERM;
// then it is killed.
const workerStopTimeout = 30 * time.Second

// workerBinary returns the worker binary to run and a function that removes
// what it built (nothing when it built nothing). A build from source comes
// before a binary next to the executable, which may be older than the
// source.
func workerBinary(ctx context.Context) (string, func(), error) {
	if bin := os.Getenv(WorkerBinEnv); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", nil, fmt.Errorf("%s=%s: %w", WorkerBinEnv, bin, err)
		}
		return bin, func() {}, nil
	}
	if goBin, err := exec.LookPath("go"); err == nil {
		if root, ok := moduleRoot(ctx, goBin); ok {
			return buildWorker(ctx, goBin, root)
		}
	}
	if exe, err := os.Executable(); err == nil {
		sibling := filepath.Join(filepath.Dir(exe), "worker")
		if fi, err := os.Stat(sibling); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return sibling, func() {}, nil
		}
	}
	return "", nil, fmt.Errorf("no worker binary: set %s to a build of ./cmd/worker, run from the %s module with the go command "+
		"on PATH, or put a worker binary next to this executable", WorkerBinEnv, modulePath)
}

// buildWorker builds ./cmd/worker of the module at root into a new
// temporary directory.
func buildWorker(ctx context.Context, goBin, root string) (string, func(), error) {
	dir, err := os.MkdirTemp("", "aftercommit-bench-worker-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { _ = os.RemoveAll(dir) }
	bin := filepath.Join(dir, "worker")
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./cmd/worker")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("building the worker (go build -o %s ./cmd/worker in %s): %w\n%s", bin, root, err, out)
	}
	return bin, cleanup, nil
}

// moduleRoot finds this module's directory: the current directory's
// module, else the one this file was compiled from.
func moduleRoot(ctx context.Context, goBin string) (string, bool) {
	isRoot := func(dir string) bool {
		mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		return err == nil && bytes.HasPrefix(mod, []byte("module "+modulePath+"\n"))
	}
	if out, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output(); err == nil {
		if dir := filepath.Dir(strings.TrimSpace(string(out))); isRoot(dir) {
			return dir, true
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		if dir := filepath.Join(filepath.Dir(file), "..", ".."); isRoot(dir) {
			return dir, true
		}
	}
	return "", false
}

// workerProc is one running worker process.
type workerProc struct {
	cmd  *exec.Cmd
	log  *procLog
	done chan struct{} // closed when the process exited
	err  error         // Wait's, once done
}

// procLog keeps the tail of a process's stderr and says when a line holding
// want was written.
type procLog struct {
	want string

	mu   sync.Mutex
	buf  []byte
	seen chan struct{}
	once sync.Once
}

func (l *procLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if bytes.Contains(l.buf, []byte(l.want)) {
		l.once.Do(func() { close(l.seen) })
	}
	if len(l.buf) > 8<<10 {
		l.buf = append(l.buf[:0], l.buf[len(l.buf)-4<<10:]...)
	}
	return len(p), nil
}

func (l *procLog) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.TrimSpace(string(l.buf))
}

// startWorkers starts k worker processes and waits until each has started
// its River client. On error the ones started are stopped.
func startWorkers(ctx context.Context, bin, databaseURL string, args []string, k int) ([]*workerProc, error) {
	var procs []*workerProc
	for range k {
		p := &workerProc{cmd: exec.Command(bin, args...), log: &procLog{want: `msg="worker: started"`, seen: make(chan struct{})},
			done: make(chan struct{})}
		// The URL goes by the environment, not argv: ps shows flags.
		p.cmd.Env = os.Environ()
		if databaseURL != "" {
			p.cmd.Env = append(p.cmd.Env, "DATABASE_URL="+databaseURL)
		}
		p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
		if err := p.cmd.Start(); err != nil {
			_ = stopWorkers(procs)
			return nil, fmt.Errorf("starting %s: %w", bin, err)
		}
		go func() { p.err = p.cmd.Wait(); close(p.done) }()
		procs = append(procs, p)
	}
	timeout := time.After(workerStartTimeout)
	for i, p := range procs {
		select {
		case <-p.log.seen:
		case <-p.done:
			_ = stopWorkers(procs)
			return nil, fmt.Errorf("worker %d of %d exited at start (%w): %s", i+1, k, p.err, p.log.tail())
		case <-timeout:
			_ = stopWorkers(procs)
			return nil, fmt.Errorf("worker %d of %d not started after %s: %s", i+1, k, workerStartTimeout, p.log.tail())
		case <-ctx.Done():
			_ = stopWorkers(procs)
			return nil, context.Cause(ctx)
		}
	}
	return procs, nil
}

// stopWorkers sends SIGTERM to every process and waits for them to exit,
// killing those that outlive workerStopTimeout. It reports a process that
// did not exit with status 0.
func stopWorkers(procs []*workerProc) error {
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	var errs []error
	timeout := time.After(workerStopTimeout)
	for i, p := range procs {
		select {
		case <-p.done:
			if p.err != nil {
				errs = append(errs, fmt.Errorf("worker %d: %w: %s", i+1, p.err, p.log.tail()))
			}
		case <-timeout:
			for _, q := range procs[i:] {
				_ = q.cmd.Process.Kill()
			}
			for _, q := range procs[i:] {
				<-q.done
			}
			return errors.Join(append(errs, fmt.Errorf("workers still running %s after SIGTERM: killed", workerStopTimeout))...)
		}
	}
	return errors.Join(errs...)
}

// processesScenario: N no-op ping jobs worked by 1, 2 and 4 real
// cmd/worker processes on one database.
func processesScenario(cfg Config) *Scenario {
	n := max(200, int(50_000*cfg.Scale))
	var (
		bin     string
		cleanup = func() {}
		// runsLeft counts the side runs to go; the last one (or any that
		// fails) removes the binary built in Setup.
		runsLeft int
		inserter *river.Client[pgx.Tx]
	)
	drain := func(k int) func(ctx context.Context, env *Env) (sample Sample, err error) {
		return func(ctx context.Context, env *Env) (sample Sample, err error) {
			defer func() {
				if runsLeft--; runsLeft <= 0 || err != nil {
					cleanup()
				}
			}()
			if err := env.Truncate(ctx, "river_job", "job_locks"); err != nil {
				return nil, err
			}
			procs, err := startWorkers(ctx, bin, env.url,
				[]string{"--schema", env.Schema, "--queues", river.QueueDefault, "--http", "off"}, k)
			if err != nil {
				return nil, err
			}
			defer func() {
				if stopErr := stopWorkers(procs); stopErr != nil && err == nil {
					sample, err = nil, stopErr
				}
			}()

			p := make([]river.InsertManyParams, n)
			for i := range p {
				p[i] = river.InsertManyParams{Args: jobs.PingArgs{}}
			}
			tx, err := env.Pool.Begin(ctx)
			if err != nil {
				return nil, err
			}
			defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
			if _, err := inserter.InsertManyFastTx(ctx, tx, p); err != nil {
				return nil, err
			}
			// The jobs are there for the workers from the COMMIT on.
			start := time.Now()
			if err := tx.Commit(ctx); err != nil {
				return nil, err
			}
			end, err := waitPings(ctx, env, n)
			if err != nil {
				return nil, err
			}
			return Sample{"jobs/s": float64(n) / end.Sub(start).Seconds()}, nil
		}
	}
	s := &Scenario{
		Name: "processes",
		Title: fmt.Sprintf("%d no-op ping jobs inserted in one transaction while real cmd/worker processes wait (default queue, "+
			"50 workers each, shipped fetch settings; one database, same machine), from the COMMIT to the last completion", n),
		Metrics: []Metric{{"jobs/s", true}},
		Sides: []Side{
			{Name: "workers_1", Note: "one worker process", Run: drain(1)},
			{Name: "workers_2", Note: "two worker processes", Run: drain(2)},
			{Name: "workers_4", Note: "four worker processes", Run: drain(4)},
		},
	}
	s.Setup = func(ctx context.Context, env *Env) error {
		runsLeft = len(s.Sides) * max(1, cfg.Rounds)
		var err error
		if bin, cleanup, err = workerBinary(ctx); err != nil {
			return err
		}
		reg := jobs.NewRegistry()
		jobs.RegisterPing(reg, env.Pool)
		if inserter, _, err = insertOnly(env, reg); err != nil {
			cleanup()
		}
		return err
	}
	return s
}

// waitPings waits until no ping job is left to run, polling every 10 ms
// with a query that stops at the first one, and returns when it saw none.
// It fails unless the n jobs all completed.
func waitPings(ctx context.Context, env *Env, n int) (time.Time, error) {
	deadline := time.Now().Add(drainTimeout)
	var end time.Time
	for {
		var left bool
		if err := env.Pool.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM river_job
                WHERE state IN ('available', 'pending', 'retryable', 'running', 'scheduled')
                  AND queue = $1 AND kind = $2)
    OR EXISTS (SELECT 1 FROM outbox_jobs WHERE kind = $2)`, river.QueueDefault, jobs.PingKind).Scan(&left); err != nil {
			return end, err
		}
		if !left {
			end = time.Now()
			break
		}
		if time.Now().After(deadline) {
			return end, fmt.Errorf("ping jobs still to run after %s", drainTimeout)
		}
		select {
		case <-ctx.Done():
			return end, context.Cause(ctx)
		case <-time.After(10 * time.Millisecond):
		}
	}
	var completed int
	if err := env.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'completed'`,
		jobs.PingKind).Scan(&completed); err != nil {
		return end, err
	}
	if completed != n {
		return end, fmt.Errorf("%d of %d ping jobs completed", completed, n)
	}
	return end, nil
}
