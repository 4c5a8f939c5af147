package jobs_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// rollupArgs keeps one fundraiser's daily total fresh; its queue lock
// coalesces a burst of donations into one waiting job.
type rollupArgs struct {
	FundraiserID int64 `json:"fundraiser_id" jobs:"queue_lock"`
}

func (rollupArgs) Kind() string { return "test.rollup" }

type rollupWorker struct {
	river.WorkerDefaults[rollupArgs]
}

func (rollupWorker) Work(context.Context, *river.Job[rollupArgs]) error { return nil }

type donationCreated struct {
	DonationID   int64 `json:"donation_id"`
	FundraiserID int64 `json:"fundraiser_id"`
}

func subscribeRollups(reg *jobs.Registry) {
	jobs.Subscribe(reg, "donation.created", func(ev outbox.Event) (rollupArgs, bool, error) {
		var d donationCreated
		if err := json.Unmarshal(ev.Payload, &d); err != nil {
			return rollupArgs{}, false, err
		}
		return rollupArgs{FundraiserID: d.FundraiserID}, d.FundraiserID != 0, nil
	})
}

func TestSubscriptions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ADonationEventBecomesOneRollupJobInTheSameCommit", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, nil)
		reg := jobs.NewRegistry()
		// The subscriber's domain registers before the publisher's.
		q := reg.AddQueue("reporting", "rollups", -5, nil)
		jobs.AddWorker(reg, q, rollupWorker{})
		subscribeRollups(reg)
		reg.AddTopic("donations", "donation.created")
		require.NoError(t, reg.Err())

		client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Queues: []string{}, Schema: s.Name})
		require.NoError(t, err)
		ob, err := jobs.NewOutbox(s.Pool, client, reg, directInsert)
		require.NoError(t, err)

		res, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			for i := range 50 {
				if err := tx.Publish("donation.created", donationCreated{DonationID: int64(i), FundraiserID: int64(i%2 + 1)}); err != nil {
					return err
				}
			}
			return tx.Publish("donation.created", donationCreated{DonationID: 99}) // no fundraiser: no job
		})
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 50, Duplicates: 48, Events: 51, Inserted: 2, RoundTrips: 1}, res)

		var events, rollups int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_events WHERE topic = 'donation.created'`).Scan(&events))
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'test.rollup' AND queue = 'reporting_rollups' AND priority = 3`).Scan(&rollups))
		require.Equal(t, 51, events)
		require.Equal(t, 2, rollups)

		// A later transaction's event is coalesced into the waiting job by
		// its queue lock.
		res, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Publish("donation.created", donationCreated{DonationID: 100, FundraiserID: 1})
		})
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 1, Events: 1, UniqueSkipped: 1, RoundTrips: 1}, res)

		// Undeclared topics are refused.
		_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Publish("donation.refunded", donationCreated{})
		})
		require.ErrorIs(t, err, outbox.ErrUnknownTopic)
	})

	t.Run("RegistrationErrorsNameTheCulprit", func(t *testing.T) {
		t.Parallel()
		reg := jobs.NewRegistry()
		subscribeRollups(reg) // no topic declared, no worker for the kind
		reg.AddTopic("donations", "email.opened")
		reg.AddTopic("emails", "email.opened")
		require.Equal(t, `jobs: registry: topic "email.opened" declared twice (by "donations" and "emails")
jobs: registry: subscription of kind "test.rollup" is to topic "donation.created", which no domain publishes (AddTopic)
jobs: registry: subscription to topic "donation.created" makes jobs of kind "test.rollup", which has no worker`, reg.Err().Error())
	})
}

func TestEventPruner(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	// 12 expired events and 3 fresh ones.
	_, err := s.Pool.Exec(ctx, `
		INSERT INTO outbox_events (topic, payload, created_at)
		SELECT 'old.event', '{}'::jsonb, now() - interval '8 days' FROM generate_series(1, 12)
		UNION ALL
		SELECT 'new.event', '{}'::jsonb, now() - interval '1 hour' FROM generate_series(1, 3)`)
	require.NoError(t, err)
	// Job batches: 7 finished 8 days ago (with a member each), one finished
	// an hour ago, one still running (created 8 days ago); references: 6 of
	// jobs finished 8 days ago, one finished an hour ago, one unfinished.
	_, err = s.Pool.Exec(ctx, `
		WITH b AS (
			INSERT INTO job_batches (id, created_at, sealed, expected, completed, finished_at)
			SELECT gen_random_uuid(), now() - interval '9 days', true, 1, 1, now() - interval '8 days' FROM generate_series(1, 7)
			UNION ALL SELECT gen_random_uuid(), now() - interval '2 hours', true, 1, 1, now() - interval '1 hour'
			UNION ALL SELECT gen_random_uuid(), now() - interval '8 days', true, 2, 1, NULL
			RETURNING id)
		INSERT INTO job_batch_members (job_id, batch_id, kind, state, finished_at)
		SELECT row_number() OVER (), id, 'test.member', 'completed', now() - interval '8 days' FROM b`)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `
		INSERT INTO job_refs (ref, job_id, state, finished_at)
		SELECT gen_random_uuid(), g, 'completed', now() - interval '8 days' FROM generate_series(1, 6) AS g
		UNION ALL SELECT gen_random_uuid(), 7, 'discarded', now() - interval '1 hour'
		UNION ALL SELECT gen_random_uuid(), 8, 'unfinished', NULL`)
	require.NoError(t, err)

	reg := jobs.NewRegistry()
	jobs.RegisterEventPruner(reg, s.Pool, &jobs.EventPrunerConfig{Retention: 7 * 24 * time.Hour, Interval: time.Hour, BatchSize: 5})
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Queues: []string{jobs.AllQueues}, Schema: s.Name, Logger: discardLogger()})
	require.NoError(t, err)
	completed, cancel := client.Subscribe(river.EventKindJobCompleted)
	defer cancel()
	require.NoError(t, client.Start(ctx)) // the leader runs the periodic job at start
	defer func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) }()

	select {
	case ev := <-completed:
		require.Equal(t, jobs.PruneEventsKind, ev.Job.Kind)
		var out jobs.PruneEventsOutput
		require.NoError(t, json.Unmarshal(ev.Job.Output(), &out))
		require.Equal(t, jobs.PruneEventsOutput{Deleted: 12, JobBatches: 7, JobRefs: 6}, out)
	case <-time.After(30 * time.Second):
		t.Fatal("the pruner did not run within 30 s")
	}
	var left []string
	rows, err := s.Pool.Query(ctx, `SELECT DISTINCT topic FROM outbox_events`)
	require.NoError(t, err)
	for rows.Next() {
		var topic string
		require.NoError(t, rows.Scan(&topic))
		left = append(left, topic)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"new.event"}, left)
	var batches, members, refs int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM job_batches), (SELECT count(*) FROM job_batch_members),
		(SELECT count(*) FROM job_refs)`).Scan(&batches, &members, &refs))
	require.Equal(t, []int{2, 2, 2}, []int{batches, members, refs}, "the recent and the unfinished are kept")
}
