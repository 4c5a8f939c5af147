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
	// Completed rows, not done bodies: the lease is released after the body
	// returns and before River records the completion.
	require.Eventually(t, func() bool {
		var completed int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'completed'`).Scan(&completed))
		return completed == 12
	}, 60*time.Second, 20*time.Millisecond)
	require.Equal(t, int64(12), w.done.Load())
	require.Equal(t, int64(1), w.maxRunning.Load(), "never two charges of one payer at once")
	var attempts, locks int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT (SELECT max(attempt) FROM river_job), (SELECT count(*) FROM job_locks)`).Scan(&attempts, &locks))
	if attempts != 1 {
		var errs string
		_ = s.Pool.QueryRow(ctx, `SELECT string_agg(concat_ws(' ', id, state, attempt, errors, metadata), E'\n') FROM river_job WHERE attempt <> 1`).Scan(&errs)
		t.Logf("jobs of another attempt:\n%s", errs)
	}
	require.Equal(t, 1, attempts, "waiting for the lock used no attempt")
	require.Zero(t, locks)
}
