package jobs_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

type payerChargeArgs struct {
	PayerID int64 `json:"payer_id"`
	Seq     int   `json:"seq"`
}

func (payerChargeArgs) Kind() string { return "test.payer_charge" }

// payerChargeWorker holds the payer's lock while it runs, and records how many
// charges ran at once.
type payerChargeWorker struct {
	river.WorkerDefaults[payerChargeArgs]
	running, maxRunning, done atomic.Int64
}

func (w *payerChargeWorker) LockFor(_ context.Context, job *river.Job[payerChargeArgs]) (jobs.Lock, error) {
	return jobs.Lock{Key: fmt.Sprint("payer-", job.Args.PayerID)}, nil
}

func (w *payerChargeWorker) Work(ctx context.Context, _ *river.Job[payerChargeArgs]) error {
	n := w.running.Add(1)
	defer w.running.Add(-1)
	for {
		m := w.maxRunning.Load()
		if n <= m || w.maxRunning.CompareAndSwap(m, n) {
			break
		}
	}
	select {
	case <-time.After(15 * time.Millisecond):
	case <-ctx.Done():
		return ctx.Err()
	}
	w.done.Add(1)
	return nil
}

// NewClient installs the worker lock for workers that implement Locker: two
// processes' clients never run two charges of one payer at once.
func TestRegistryInstallsTheWorkerLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 8})
	w := &payerChargeWorker{}

	var ob *outbox.Outbox
	for i := range 2 {
		reg := jobs.NewRegistry()
		q := reg.AddQueue("billing", "charges", 0, nil)
		jobs.AddWorker(reg, q, w)
		client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
			Queues: []string{jobs.AllQueues},
			Schema: s.Name, Logger: discardLogger(),
			Lock:  &jobs.LockConfig{SnoozeBase: 20 * time.Millisecond},
			River: &river.Config{FetchCooldown: 10 * time.Millisecond, FetchPollInterval: 20 * time.Millisecond},
		})
		require.NoError(t, err)
		require.NoError(t, client.Start(ctx))
		t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
		if i == 0 {
			ob, err = jobs.NewOutbox(s.Pool, client, reg, directInsert)
			require.NoError(t, err)
		}
	}

	_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		for i := range 12 {
			if err := tx.Enqueue(payerChargeArgs{PayerID: 1, Seq: i}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	// Completed rows, not done bodies: River records a completion after
	// the body returned.
	require.Eventually(t, func() bool {
		var completed int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'completed'`).Scan(&completed))
		return completed == 12
	}, 60*time.Second, 20*time.Millisecond)
	require.Equal(t, int64(12), w.done.Load())
	require.Equal(t, int64(1), w.maxRunning.Load(), "never two charges of one payer at once")
	var attempts int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT max(attempt) FROM river_job`).Scan(&attempts))
	if attempts != 1 {
		var errs string
		_ = s.Pool.QueryRow(ctx, `SELECT string_agg(concat_ws(' ', id, state, attempt, errors, metadata), E'\n') FROM river_job WHERE attempt <> 1`).Scan(&errs)
		t.Logf("jobs of another attempt:\n%s", errs)
	}
	require.Equal(t, 1, attempts, "waiting for the lock used no attempt")
	// A job's release is sent in the background: it lands soon after.
	require.Eventually(t, func() bool {
		var locks int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM job_locks`).Scan(&locks))
		return locks == 0
	}, 10*time.Second, 10*time.Millisecond)
}

// gatedLockWorker holds lock "k" and waits for its gate.
type gatedLockWorker struct {
	river.WorkerDefaults[payerChargeArgs]
	running chan struct{}
	gate    chan struct{}
}

func (w *gatedLockWorker) LockFor(context.Context, *river.Job[payerChargeArgs]) (jobs.Lock, error) {
	return jobs.Lock{Key: "k"}, nil
}

func (w *gatedLockWorker) Work(context.Context, *river.Job[payerChargeArgs]) error {
	w.running <- struct{}{}
	<-w.gate
	return nil
}

// A job returns without waiting for its lock's release, so a client's Stop
// must: a process exits once Stop returned, and a release it left unsent
// would keep the key locked for the whole lease. Here the release is held
// up by a row lock on the lock's row; Stop returns only after it went
// through.
func TestLockReleasedBeforeStopReturns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 8})
	w := &gatedLockWorker{running: make(chan struct{}, 1), gate: make(chan struct{})}
	reg := jobs.NewRegistry()
	q := reg.AddQueue("billing", "charges", 0, nil)
	jobs.AddWorker(reg, q, w)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues}, Schema: s.Name, Logger: discardLogger(),
		River: &river.Config{FetchCooldown: 10 * time.Millisecond, FetchPollInterval: 20 * time.Millisecond},
	})
	require.NoError(t, err)
	ob, err := jobs.NewOutbox(s.Pool, client, reg, directInsert)
	require.NoError(t, err)
	require.NoError(t, client.Start(ctx))
	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(payerChargeArgs{PayerID: 1}, nil)
	})
	require.NoError(t, err)
	<-w.running

	// Hold the lock's row, so its release (a DELETE) waits.
	holder, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	var slots int
	require.NoError(t, holder.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM job_locks WHERE lock_key = 'k' FOR UPDATE) l`).Scan(&slots))
	require.Equal(t, 1, slots)
	close(w.gate)
	require.Eventually(t, func() bool {
		var state string
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT state FROM river_job`).Scan(&state))
		return state == "completed"
	}, 10*time.Second, 5*time.Millisecond, "the job completes while its release waits")

	stopped := make(chan error, 1)
	go func() { stopped <- client.Stop(context.WithoutCancel(ctx)) }()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) while the lock's release was still waiting", err)
	case <-time.After(300 * time.Millisecond):
	}
	require.NoError(t, holder.Rollback(ctx))
	require.NoError(t, <-stopped)
	var locks int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM job_locks`).Scan(&locks))
	require.Zero(t, locks, "released before Stop returned")
}
