package jobs_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// reportArgs rebuilds a car's report. Its queue lock is the car: Reason is
// not part of it.
type reportArgs struct {
	CarID  int64  `json:"car_id" jobs:"queue_lock"`
	Reason string `json:"reason"`
}

func (reportArgs) Kind() string { return "test.car_report" }

// totalArgs computes its lock key.
type totalArgs struct {
	FundraiserID int64  `json:"fundraiser_id"`
	Day          string `json:"day"`
}

func (totalArgs) Kind() string { return "test.daily_total" }
func (a totalArgs) QueueLockKey() string {
	return fmt.Sprintf("%d/%s", a.FundraiserID, a.Day)
}

// gatedWorker blocks each job until the test releases it.
type gatedWorker[T river.JobArgs] struct {
	river.WorkerDefaults[T]
	started chan int64
	release chan struct{}
}

func (w *gatedWorker[T]) Work(ctx context.Context, job *river.Job[T]) error {
	w.started <- job.ID
	select {
	case <-w.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type queueLockBundle struct {
	schema  *dbtest.Schema
	ob      *outbox.Outbox
	reports *gatedWorker[reportArgs]
	client  *river.Client[pgx.Tx]
}

// setupQueueLock registers the two queue-locked kinds; with work set it
// starts a client that works them (gated), else the client is insert-only.
func setupQueueLock(ctx context.Context, t *testing.T, work bool) *queueLockBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 24})
	reports := &gatedWorker[reportArgs]{started: make(chan int64, 10), release: make(chan struct{})}
	reg := jobs.NewRegistry()
	q := reg.AddQueue("reporting", "default", 0, nil)
	jobs.AddWorker(reg, q, reports)
	jobs.AddWorker(reg, q, &gatedWorker[totalArgs]{started: make(chan int64, 10), release: make(chan struct{})})

	queues := []string{}
	if work {
		queues = []string{jobs.AllQueues}
	}
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: queues, Schema: s.Name, Logger: discardLogger(),
		River: &river.Config{FetchCooldown: 20 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
	})
	require.NoError(t, err)
	if work {
		require.NoError(t, client.Start(ctx))
		t.Cleanup(func() {
			close(reports.release)
			require.NoError(t, client.Stop(context.WithoutCancel(ctx)))
		})
	}
	ob, err := jobs.NewOutbox(s.Pool, client, reg, directInsert)
	require.NoError(t, err)
	return &queueLockBundle{schema: s, ob: ob, reports: reports, client: client}
}

func (b *queueLockBundle) enqueue(ctx context.Context, t *testing.T, args ...river.JobArgs) outbox.FlushResult {
	t.Helper()
	res, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		for _, a := range args {
			if err := tx.Enqueue(a, nil); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
	return res
}

type lockRow struct {
	Kind    string
	State   string
	LockKey *string
	Locked  bool
}

func (b *queueLockBundle) rows(ctx context.Context, t *testing.T) []lockRow {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx, `
		SELECT kind, state::text, metadata->>'queue_lock', unique_key IS NOT NULL FROM river_job ORDER BY id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[lockRow])
	require.NoError(t, err)
	return out
}

func ptr(s string) *string { return &s }

func TestQueueLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ThousandEnqueuesWhileOneWaitsLeaveOneJob", func(t *testing.T) {
		t.Parallel()
		b := setupQueueLock(ctx, t, false)

		require.Equal(t, outbox.FlushResult{Enqueued: 1, Inserted: 1, RoundTrips: 1}, b.enqueue(ctx, t, reportArgs{CarID: 7, Reason: "first"}))
		for i := range 999 {
			res := b.enqueue(ctx, t, reportArgs{CarID: 7, Reason: fmt.Sprint("burst ", i)})
			require.Equal(t, outbox.FlushResult{Enqueued: 1, UniqueSkipped: 1, RoundTrips: 1}, res, "enqueue %d", i)
		}
		require.Equal(t, []lockRow{{"test.car_report", "available", ptr(`[7]`), true}}, b.rows(ctx, t))
		var reason string
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT args->>'reason' FROM river_job`).Scan(&reason))
		require.Equal(t, "first", reason, "the waiting job is the first one; later ones were no-ops")
	})

	t.Run("KeysAndKindsAreSeparate", func(t *testing.T) {
		t.Parallel()
		b := setupQueueLock(ctx, t, false)

		res := b.enqueue(ctx, t,
			reportArgs{CarID: 1}, reportArgs{CarID: 1, Reason: "same lock, other JSON"}, reportArgs{CarID: 2},
			totalArgs{FundraiserID: 1, Day: "2026-11-25"}, totalArgs{FundraiserID: 1, Day: "2026-11-26"},
		)
		// The two car-1 reports share a lock, so the outbox de-duplicates
		// them before River sees them (one INSERT cannot hold both).
		require.Equal(t, outbox.FlushResult{Enqueued: 5, Duplicates: 1, Inserted: 4, RoundTrips: 1}, res)
		require.Equal(t, []lockRow{
			{"test.car_report", "available", ptr(`[1]`), true},
			{"test.car_report", "available", ptr(`[2]`), true},
			{"test.daily_total", "available", ptr(`1/2026-11-25`), true},
			{"test.daily_total", "available", ptr(`1/2026-11-26`), true},
		}, b.rows(ctx, t))
	})

	t.Run("ConcurrentTransactionsLeaveOneWaitingJobAndNoneFails", func(t *testing.T) {
		t.Parallel()
		b := setupQueueLock(ctx, t, false)

		const n = 20
		start := make(chan struct{})
		var wg sync.WaitGroup
		results := make(chan outbox.FlushResult, n)
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				<-start
				res, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
					return tx.Enqueue(totalArgs{FundraiserID: 9, Day: "2026-11-25"}, &river.InsertOpts{Tags: []string{fmt.Sprint("tx", i)}})
				})
				results <- res
				errs <- err
			})
		}
		close(start)
		wg.Wait()
		close(results)
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		inserted, skipped := 0, 0
		for res := range results {
			inserted += res.Inserted
			skipped += res.UniqueSkipped
		}
		require.Equal(t, 1, inserted)
		require.Equal(t, n-1, skipped)
		require.Len(t, b.rows(ctx, t), 1)
	})

	t.Run("StartingFreesTheLockAndCancellingOrDeletingToo", func(t *testing.T) {
		t.Parallel()
		b := setupQueueLock(ctx, t, true)

		// The first job starts and stays running.
		b.enqueue(ctx, t, reportArgs{CarID: 3, Reason: "a"})
		var firstID int64
		select {
		case firstID = <-b.reports.started:
		case <-time.After(15 * time.Second):
			t.Fatal("the first report did not start")
		}
		// Started: its key is cleared, so a new report may wait…
		require.Eventually(t, func() bool {
			var locked bool
			require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT unique_key IS NOT NULL FROM river_job WHERE id = $1`, firstID).Scan(&locked))
			return !locked
		}, 10*time.Second, 10*time.Millisecond)
		res := b.enqueue(ctx, t, reportArgs{CarID: 3, Reason: "b"})
		require.Equal(t, 1, res.Inserted, "a running job does not hold the lock")
		var secondID int64
		select {
		case secondID = <-b.reports.started:
		case <-time.After(15 * time.Second):
			t.Fatal("the second report did not start")
		}
		require.NotEqual(t, firstID, secondID)

		// A waiting job that is cancelled, or deleted, frees the lock. The
		// queue is paused first, and the producer's answer awaited (a pause
		// reaches it by notification), so the job keeps waiting.
		paused, cancelPaused := b.client.Subscribe(river.EventKindQueuePaused)
		defer cancelPaused()
		require.NoError(t, b.client.QueuePause(ctx, "reporting_default", nil))
		select {
		case <-paused:
		case <-time.After(15 * time.Second):
			t.Fatal("the producer did not pause the queue")
		}
		waiting := b.enqueue(ctx, t, reportArgs{CarID: 4})
		require.Equal(t, 1, waiting.Inserted)
		var waitingID int64
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT id FROM river_job WHERE args->>'car_id' = '4'`).Scan(&waitingID))
		require.Equal(t, 1, b.enqueue(ctx, t, reportArgs{CarID: 4}).UniqueSkipped)

		_, err := b.client.JobCancel(ctx, waitingID)
		require.NoError(t, err)
		require.Equal(t, 1, b.enqueue(ctx, t, reportArgs{CarID: 4}).Inserted, "cancelled: free")

		_, err = b.schema.Pool.Exec(ctx, `DELETE FROM river_job WHERE args->>'car_id' = '4' AND state = 'available'`)
		require.NoError(t, err)
		require.Equal(t, 1, b.enqueue(ctx, t, reportArgs{CarID: 4}).Inserted, "deleted: free")

		var states []string
		rows, err := b.schema.Pool.Query(ctx, `SELECT state::text FROM river_job WHERE args->>'car_id' = '4' ORDER BY id`)
		require.NoError(t, err)
		states, err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		require.Equal(t, []string{"cancelled", "available"}, states)
		b.reports.release <- struct{}{}
		b.reports.release <- struct{}{}
	})

	t.Run("ARetryingJobKeepsNoLock", func(t *testing.T) {
		t.Parallel()
		b := setupQueueLock(ctx, t, false)
		// A job whose attempt failed after it started: the key was cleared
		// at start, so the retry waits without a lock and a new one may
		// wait beside it.
		b.enqueue(ctx, t, reportArgs{CarID: 5})
		_, err := b.schema.Pool.Exec(ctx, `UPDATE river_job SET state = 'retryable', unique_key = NULL, unique_states = NULL, attempt = 1`)
		require.NoError(t, err)
		require.Equal(t, 1, b.enqueue(ctx, t, reportArgs{CarID: 5}).Inserted)
	})
}

var _ rivertype.JobInsertMiddleware = (*jobs.QueueLockMiddleware)(nil)

// TestQueueLockLeavesRiverUniquenessAlone: a job of a queue-locked kind
// inserted with River's own UniqueOpts — by a client without our middleware
// (as River's Python or Ruby client does) or by NewClient's client — keeps
// its River unique key when it runs, so inserting the same again is skipped
// as River promises.
func TestQueueLockLeavesRiverUniquenessAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for _, tc := range []struct {
		name   string
		insert func(b *queueLockBundle) func(context.Context, river.JobArgs, *river.InsertOpts) (*rivertype.JobInsertResult, error)
	}{
		{"RiversOwnClient", func(b *queueLockBundle) func(context.Context, river.JobArgs, *river.InsertOpts) (*rivertype.JobInsertResult, error) {
			bare, err := river.NewClient(riverpgxv5.New(b.schema.Pool), &river.Config{Schema: b.schema.Name, Logger: discardLogger()})
			require.NoError(t, err)
			return bare.Insert
		}},
		{"NewClientsClient", func(b *queueLockBundle) func(context.Context, river.JobArgs, *river.InsertOpts) (*rivertype.JobInsertResult, error) {
			return b.client.Insert
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupQueueLock(ctx, t, true)
			insert := tc.insert(b)
			unique := &river.InsertOpts{Queue: "reporting_default", UniqueOpts: river.UniqueOpts{ByArgs: true}}
			args := reportArgs{CarID: 8, Reason: "river unique"}

			first, err := insert(ctx, args, unique)
			require.NoError(t, err)
			require.False(t, first.UniqueSkippedAsDuplicate)
			var key []byte
			require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT unique_key FROM river_job WHERE id = $1`, first.Job.ID).Scan(&key))
			require.Equal(t, first.Job.UniqueKey, key, "River's key, not the queue lock's")

			select {
			case id := <-b.reports.started:
				require.Equal(t, first.Job.ID, id)
			case <-time.After(15 * time.Second):
				t.Fatal("the job did not start")
			}
			running, err := insert(ctx, args, unique)
			require.NoError(t, err)
			require.True(t, running.UniqueSkippedAsDuplicate, "skipped while it runs")
			require.Equal(t, first.Job.ID, running.Job.ID)

			b.reports.release <- struct{}{}
			require.Eventually(t, func() bool {
				var state string
				require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT state::text FROM river_job WHERE id = $1`, first.Job.ID).Scan(&state))
				return state == "completed"
			}, 15*time.Second, 10*time.Millisecond)

			again, err := insert(ctx, args, unique)
			require.NoError(t, err)
			require.True(t, again.UniqueSkippedAsDuplicate, "skipped after it completed, as River promises")
			require.Equal(t, first.Job.ID, again.Job.ID)

			var meta *string
			require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT unique_key, metadata->>'queue_lock' FROM river_job WHERE id = $1`, first.Job.ID).Scan(&key, &meta))
			require.Equal(t, first.Job.UniqueKey, key)
			require.Nil(t, meta, "no queue-lock metadata on a River unique job")
			var n int
			require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job`).Scan(&n))
			require.Equal(t, 1, n)

			// The queue lock of the same kind still works beside it (the
			// job is scheduled, so no worker starts it during the check;
			// TestQueueLock covers the rest of its behaviour).
			later := &river.InsertOpts{ScheduledAt: time.Now().Add(time.Hour)}
			for i, want := range []outbox.FlushResult{
				{Enqueued: 1, Inserted: 1, RoundTrips: 1},
				{Enqueued: 1, UniqueSkipped: 1, RoundTrips: 1},
			} {
				res, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
					return tx.Enqueue(reportArgs{CarID: 8}, later)
				})
				require.NoError(t, err)
				require.Equal(t, want, res, "queue-locked enqueue %d", i)
			}
		})
	}
}
