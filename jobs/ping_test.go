package jobs_test

import (
	"context"
	"encoding/json"
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

type testBundle struct {
	schema *dbtest.Schema
	client *river.Client[pgx.Tx]
	ob     *outbox.Outbox
	events <-chan *river.Event
}

// setup starts a River client working the ping kind in a schema of its own.
func setup(ctx context.Context, t *testing.T) *testBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, nil)
	workers := river.NewWorkers()
	jobs.AddPingWorker(workers, s.Pool)
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{
		Schema:  s.Name,
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 4}},
		Workers: workers,
		Logger:  discardLogger(),
	})
	require.NoError(t, err)
	events, cancel := client.Subscribe(river.EventKindJobCompleted, river.EventKindJobCancelled, river.EventKindJobFailed)
	t.Cleanup(cancel)
	require.NoError(t, client.Start(ctx))
	t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })

	ob, err := outbox.New(s.Pool, client, directInsert)
	require.NoError(t, err)
	return &testBundle{schema: s, client: client, ob: ob, events: events}
}

func (b *testBundle) waitEvent(t *testing.T) *river.Event {
	t.Helper()
	select {
	case ev := <-b.events:
		return ev
	case <-time.After(15 * time.Second):
		t.Fatal("no job event within 15 s")
		return nil
	}
}

func output(t *testing.T, job *rivertype.JobRow) jobs.PingOutcome {
	t.Helper()
	var out jobs.PingOutcome
	require.NoError(t, json.Unmarshal(job.Output(), &out))
	return out
}

func TestPingWorker(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("MarksThePingAndCompletesInOneTransaction", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t)

		var id int64
		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			require.NoError(t, tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('p') RETURNING id`).Scan(&id))
			return tx.Enqueue(jobs.PingArgs{PingID: id}, nil)
		})
		require.NoError(t, err)

		ev := b.waitEvent(t)
		require.Equal(t, river.EventKindJobCompleted, ev.Kind)
		require.Equal(t, jobs.PingOutcome{Result: "pinged"}, output(t, ev.Job))

		var count int
		var pinged bool
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT ping_count, pinged_at IS NOT NULL FROM pings WHERE id = $1`, id).Scan(&count, &pinged))
		require.Equal(t, 1, count)
		require.True(t, pinged)
		var state string
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT state::text FROM river_job WHERE id = $1`, ev.Job.ID).Scan(&state))
		require.Equal(t, "completed", state)
	})

	t.Run("MissingRowIsNotNeeded", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t)

		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(jobs.PingArgs{PingID: 424242}, nil)
		})
		require.NoError(t, err)
		ev := b.waitEvent(t)
		require.Equal(t, river.EventKindJobCompleted, ev.Kind)
		require.Equal(t, jobs.PingOutcome{Result: "not_needed"}, output(t, ev.Job))
	})

	t.Run("NoopTouchesNoRow", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t)

		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO pings (note) VALUES ('untouched')`)
			require.NoError(t, err)
			return tx.Enqueue(jobs.PingArgs{}, nil)
		})
		require.NoError(t, err)
		ev := b.waitEvent(t)
		require.Equal(t, river.EventKindJobCompleted, ev.Kind)
		require.Equal(t, jobs.PingOutcome{Result: "noop"}, output(t, ev.Job))
		var count int
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT sum(ping_count) FROM pings`).Scan(&count))
		require.Zero(t, count)
	})

	t.Run("SleepOverTheMaximumIsCancelled", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t)

		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(jobs.PingArgs{SleepMS: int(jobs.PingMaxSleep/time.Millisecond) + 1}, nil)
		})
		require.NoError(t, err)
		ev := b.waitEvent(t)
		require.Equal(t, river.EventKindJobCancelled, ev.Kind)
		require.Len(t, ev.Job.Errors, 1)
		require.Equal(t, "JobCancelError: jobs: ping sleep must be between 0 and 60000 ms, got 60001 ms", ev.Job.Errors[0].Error)
	})
}
