//go:build faults

// This file is compiled only into the fault suite's worker (go build -tags
// faults ./cmd/worker, internal/faults). It lets a test slow, hold or end a
// real worker process at a chosen point of a job, through the environment:
//
//	AFTERCOMMIT_FAULT_KINDS            comma-separated kinds the hooks below apply to (default: every kind)
//	AFTERCOMMIT_FAULT_ATTEMPT          apply them only to this attempt of a job (default: every attempt)
//	AFTERCOMMIT_FAULT_DELAY            sleep this long before the job's work (ends early when the job's context does)
//	AFTERCOMMIT_FAULT_HOLD             wait, ignoring the job's context, until this file exists; then work on a context that is never cancelled (a late finisher)
//	AFTERCOMMIT_FAULT_EXIT_AFTER_WORK  when "1", exit at once (status 3) after a job's work returned nil, before River records the completion
//	AFTERCOMMIT_FAULT_FAIL_ONE_IN      N: fail about one attempt in N before its work (chosen by a hash of the job and its attempt), so jobs retry
//	AFTERCOMMIT_FAULT_COMPLETION_PERMITS  inventory.Config.CompletionConcurrency
//	AFTERCOMMIT_FAULT_PRUNE_INTERVAL      inventory.Config.PruneInterval
//
// It also registers MarkNoTxArgs (kind "faults.mark_no_tx"), whose worker
// marks a ping outside the completing transaction: the control that shows
// what JobCompleteTx prevents.

package main

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
)

func init() { faultHooks = installFaultHooks }

// exitAfterWorkStatus is the exit status of AFTERCOMMIT_FAULT_EXIT_AFTER_WORK.
const exitAfterWorkStatus = 3

func installFaultHooks(pool *pgxpool.Pool, rc *river.Config, logger *slog.Logger) *jobs.Registry {
	inv := &inventory.Config{}
	if v := os.Getenv("AFTERCOMMIT_FAULT_COMPLETION_PERMITS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			panic(fmt.Sprintf("AFTERCOMMIT_FAULT_COMPLETION_PERMITS %q: %v", v, err))
		}
		inv.CompletionConcurrency = n
	}
	inv.PruneInterval = envDuration("AFTERCOMMIT_FAULT_PRUNE_INTERVAL")
	reg := app.Registry(pool, &app.Config{Inventory: inv})
	jobs.AddWorker(reg, river.QueueDefault, &markNoTxWorker{pool: pool})

	mw := &faultMiddleware{
		delay:     envDuration("AFTERCOMMIT_FAULT_DELAY"),
		hold:      os.Getenv("AFTERCOMMIT_FAULT_HOLD"),
		exitAfter: os.Getenv("AFTERCOMMIT_FAULT_EXIT_AFTER_WORK") == "1",
		failOneIn: envInt("AFTERCOMMIT_FAULT_FAIL_ONE_IN"),
		kinds:     map[string]bool{},
		logger:    logger,
	}
	if v := os.Getenv("AFTERCOMMIT_FAULT_ATTEMPT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			panic(fmt.Sprintf("AFTERCOMMIT_FAULT_ATTEMPT %q: %v", v, err))
		}
		mw.attempt = n
	}
	for k := range strings.SplitSeq(os.Getenv("AFTERCOMMIT_FAULT_KINDS"), ",") {
		if k = strings.TrimSpace(k); k != "" {
			mw.kinds[k] = true
		}
	}
	rc.Middleware = append(rc.Middleware, mw)
	logger.Warn("worker: fault hooks compiled in (-tags faults); never run this binary in production",
		slog.Duration("delay", mw.delay), slog.String("hold", mw.hold), slog.Bool("exit_after_work", mw.exitAfter))
	return reg
}

func envInt(name string) uint32 {
	v := os.Getenv(name)
	if v == "" {
		return 0
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		panic(fmt.Sprintf("%s %q: %v", name, v, err))
	}
	return uint32(n)
}

func envDuration(name string) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		panic(fmt.Sprintf("%s %q: %v", name, v, err))
	}
	return d
}

// faultMiddleware is the innermost middleware: it runs after the lock and
// needed-checks, right around the worker's Work.
type faultMiddleware struct {
	river.MiddlewareDefaults

	delay     time.Duration
	hold      string
	exitAfter bool
	failOneIn uint32
	kinds     map[string]bool
	attempt   int
	logger    *slog.Logger
}

// Work implements rivertype.WorkerMiddleware.
func (m *faultMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	if len(m.kinds) > 0 && !m.kinds[job.Kind] || m.attempt > 0 && job.Attempt != m.attempt {
		return doInner(ctx)
	}
	if m.failOneIn > 0 {
		h := fnv.New32a()
		_, _ = fmt.Fprintf(h, "%d/%d", job.ID, job.Attempt) // a hash.Hash's Write never returns an error
		if h.Sum32()%m.failOneIn == 0 {
			return fmt.Errorf("faults: attempt %d failed on purpose", job.Attempt)
		}
	}
	if m.delay > 0 {
		select {
		case <-time.After(m.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if m.hold != "" {
		for {
			if _, err := os.Stat(m.hold); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		err := doInner(context.WithoutCancel(ctx))
		m.logger.Warn("faults: held job worked after its release",
			slog.Int64("job_id", job.ID), slog.Int("attempt", job.Attempt), slog.Any("err", err))
		return err
	}
	err := doInner(ctx)
	if err == nil && m.exitAfter {
		os.Exit(exitAfterWorkStatus)
	}
	return err
}

// MarkNoTxArgs marks a ping like jobs.PingArgs, but outside the transaction
// that completes the job.
type MarkNoTxArgs struct {
	PingID int64 `json:"ping_id"`
}

// Kind implements river.JobArgs.
func (MarkNoTxArgs) Kind() string { return "faults.mark_no_tx" }

type markNoTxWorker struct {
	river.WorkerDefaults[MarkNoTxArgs]
	pool *pgxpool.Pool
}

// Work commits its effect and leaves the completion to River, afterwards.
func (w *markNoTxWorker) Work(ctx context.Context, job *river.Job[MarkNoTxArgs]) error {
	_, err := w.pool.Exec(ctx, `UPDATE pings SET ping_count = ping_count + 1 WHERE id = $1`, job.Args.PingID)
	return err
}
