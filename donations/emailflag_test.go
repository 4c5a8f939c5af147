package donations_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// waitFlagJob returns the next event of an UpdateEmailDonation job, passing
// over the events of the domain's other kinds.
func (b *donateBundle) waitFlagJob(t *testing.T) *river.Event {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev := <-b.events:
			if ev.Job.Kind == donations.UpdateEmailDonationKind {
				return ev
			}
		case <-timeout:
			t.Fatal("no UpdateEmailDonation job event within 15 s")
			return nil
		}
	}
}

// requireFlagOutput checks that ev is the completion of a job whose output
// is want.
func requireFlagOutput(t *testing.T, want donations.EmailFlagOutput, ev *river.Event) {
	t.Helper()
	require.Equal(t, river.EventKindJobCompleted, ev.Kind, "job errors: %v", ev.Job.Errors)
	var got donations.EmailFlagOutput
	require.NoError(t, json.Unmarshal(ev.Job.Output(), &got))
	require.Equal(t, want, got)
}

// donated returns the IDs of the flagged emails.
func (b *donateBundle) donated(ctx context.Context, t *testing.T) []int64 {
	t.Helper()
	var ids []int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx,
		`SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM emails WHERE donated`).Scan(&ids))
	return ids
}

// workErrors is an innermost worker middleware that reports what each
// UpdateEmailDonation job's Work returned.
type workErrors struct {
	river.MiddlewareDefaults

	ch chan error
}

func (m *workErrors) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	err := doInner(ctx)
	if job.Kind == donations.UpdateEmailDonationKind {
		m.ch <- err
	}
	return err
}

func TestUpdateEmailDonation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)

	t.Run("FlaggedByTheLinksEmailID", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, &donateSetupOpts{work: true})
		fid := b.fundraiser(ctx, t, "Engines")
		uid := b.user(ctx, t, "Ada", "ada@example.com")
		linked := b.email(ctx, t, uid, fid, now.Add(-2*time.Hour))
		b.email(ctx, t, uid, fid, now.Add(-time.Hour)) // newer, but not the link's

		in := input(fid)
		in.EmailID = linked
		d, err := b.svc.Donate(ctx, in)
		require.NoError(t, err)
		require.Equal(t, linked, d.EmailID)

		ev := b.waitFlagJob(t)
		requireFlagOutput(t, donations.EmailFlagOutput{Result: "flagged", EmailID: linked, MatchedBy: "email_id"}, ev)
		require.Equal(t, []int64{linked}, b.donated(ctx, t))
		require.Equal(t, 1, b.count(ctx, t,
			`SELECT count(*) FROM river_job WHERE id = $1 AND state = 'completed' AND attempt = 1 AND errors IS NULL`, ev.Job.ID))
	})

	t.Run("LinkToAnotherFundraisersEmailFallsBackToTheAddress", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, &donateSetupOpts{work: true})
		fid := b.fundraiser(ctx, t, "Engines")
		other := b.fundraiser(ctx, t, "Looms")
		uid := b.user(ctx, t, "Ada", "ada@example.com")
		otherEmail := b.email(ctx, t, uid, other, now)
		own := b.email(ctx, t, uid, fid, now.Add(-time.Hour))

		in := input(fid)
		in.EmailID = otherEmail
		_, err := b.svc.Donate(ctx, in)
		require.NoError(t, err)

		requireFlagOutput(t, donations.EmailFlagOutput{Result: "flagged", EmailID: own, MatchedBy: "address"}, b.waitFlagJob(t))
		require.Equal(t, []int64{own}, b.donated(ctx, t))
	})

	t.Run("FlaggedByAddressWhenThereIsNoEmailID", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, &donateSetupOpts{work: true})
		fid := b.fundraiser(ctx, t, "Engines")
		uid := b.user(ctx, t, "Ada", "Ada@Example.com")
		e := b.email(ctx, t, uid, fid, now)

		in := input(fid)
		in.DonorEmail = "ADA@example.COM"
		d, err := b.svc.Donate(ctx, in)
		require.NoError(t, err)
		require.Equal(t, uid, d.UserID)

		requireFlagOutput(t, donations.EmailFlagOutput{Result: "flagged", EmailID: e, MatchedBy: "address"}, b.waitFlagJob(t))
		require.Equal(t, []int64{e}, b.donated(ctx, t))
	})

	t.Run("TheMostRecentEmailOfTheFundraiserWins", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, &donateSetupOpts{work: true})
		fid := b.fundraiser(ctx, t, "Engines")
		other := b.fundraiser(ctx, t, "Looms")
		uid := b.user(ctx, t, "Ada", "ada@example.com")
		someoneElse := b.user(ctx, t, "Charles", "charles@example.com")
		b.email(ctx, t, uid, fid, now.Add(-3*time.Hour))
		newest := b.email(ctx, t, uid, fid, now.Add(-time.Hour))
		b.email(ctx, t, uid, fid, now.Add(-2*time.Hour))
		b.email(ctx, t, uid, other, now)       // newer, other fundraiser
		b.email(ctx, t, someoneElse, fid, now) // newer, other user

		_, err := b.svc.Donate(ctx, input(fid))
		require.NoError(t, err)

		requireFlagOutput(t, donations.EmailFlagOutput{Result: "flagged", EmailID: newest, MatchedBy: "address"}, b.waitFlagJob(t))
		require.Equal(t, []int64{newest}, b.donated(ctx, t))
	})

	t.Run("SentAtTheSameTimeTheHigherIDWins", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, &donateSetupOpts{work: true})
		fid := b.fundraiser(ctx, t, "Engines")
		uid := b.user(ctx, t, "Ada", "ada@example.com")
		b.email(ctx, t, uid, fid, now)
		second := b.email(ctx, t, uid, fid, now)

		_, err := b.svc.Donate(ctx, input(fid))
		require.NoError(t, err)

		requireFlagOutput(t, donations.EmailFlagOutput{Result: "flagged", EmailID: second, MatchedBy: "address"}, b.waitFlagJob(t))
	})

	t.Run("NoEmailCompletesWithItsOutcome", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, &donateSetupOpts{work: true})
		fid := b.fundraiser(ctx, t, "Engines")
		other := b.fundraiser(ctx, t, "Looms")
		uid := b.user(ctx, t, "Ada", "ada@example.com")
		b.email(ctx, t, uid, other, now) // only for another fundraiser

		_, err := b.svc.Donate(ctx, input(fid))
		require.NoError(t, err)

		ev := b.waitFlagJob(t)
		requireFlagOutput(t, donations.EmailFlagOutput{Result: "no_email"}, ev)
		require.JSONEq(t, `{"result": "no_email"}`, string(ev.Job.Output()))
		require.Empty(t, b.donated(ctx, t))
		require.Equal(t, 1, b.count(ctx, t,
			`SELECT count(*) FROM river_job WHERE id = $1 AND state = 'completed' AND attempt = 1 AND errors IS NULL`, ev.Job.ID))
	})

	t.Run("ASecondDeliveryChangesNothing", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, &donateSetupOpts{work: true})
		fid := b.fundraiser(ctx, t, "Engines")
		uid := b.user(ctx, t, "Ada", "ada@example.com")
		e := b.email(ctx, t, uid, fid, now)

		in := input(fid)
		in.EmailID = e
		_, err := b.svc.Donate(ctx, in)
		require.NoError(t, err)
		first := b.waitFlagJob(t)
		requireFlagOutput(t, donations.EmailFlagOutput{Result: "flagged", EmailID: e, MatchedBy: "email_id"}, first)
		var version string // the row version: it changes with any UPDATE of the row
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT xmin::text FROM emails WHERE id = $1`, e).Scan(&version))

		// Deliver the same job again, as a rescue after a lost completion
		// would.
		_, err = b.schema.Pool.Exec(ctx,
			`UPDATE river_job SET state = 'available', finalized_at = NULL, scheduled_at = now() WHERE id = $1`, first.Job.ID)
		require.NoError(t, err)
		second := b.waitFlagJob(t)
		require.Equal(t, first.Job.ID, second.Job.ID)
		require.Equal(t, 2, second.Job.Attempt)
		requireFlagOutput(t, donations.EmailFlagOutput{Result: "already_flagged", EmailID: e, MatchedBy: "email_id"}, second)

		require.Equal(t, []int64{e}, b.donated(ctx, t))
		var after string
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT xmin::text FROM emails WHERE id = $1`, e).Scan(&after))
		require.Equal(t, version, after, "the email row was written again")
	})

	t.Run("TheFlagAndTheJobsCompletionCommitTogether", func(t *testing.T) {
		t.Parallel()
		results := &workErrors{ch: make(chan error, 10)}
		b := setupDonate(ctx, t, &donateSetupOpts{work: true, middleware: []rivertype.Middleware{results}})
		fid := b.fundraiser(ctx, t, "Engines")
		uid := b.user(ctx, t, "Ada", "ada@example.com")
		e := b.email(ctx, t, uid, fid, now)

		// Hold the email's row lock, so the worker stops at its UPDATE,
		// after it has read the donation and found the email. NO KEY UPDATE
		// is what an UPDATE of the row takes; FOR UPDATE would also block
		// the donation's foreign-key check (FOR KEY SHARE) in Donate.
		holder, err := b.schema.Pool.Begin(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { _ = holder.Rollback(context.WithoutCancel(ctx)) })
		var holderPID int32
		require.NoError(t, holder.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holderPID))
		_, err = holder.Exec(ctx, `SELECT 1 FROM emails WHERE id = $1 FOR NO KEY UPDATE`, e)
		require.NoError(t, err)

		in := input(fid)
		in.EmailID = e
		_, err = b.svc.Donate(ctx, in)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			var waiting bool
			err := b.schema.Pool.QueryRow(ctx,
				`SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1::int = ANY (pg_blocking_pids(pid)))`, holderPID).Scan(&waiting)
			return err == nil && waiting
		}, 15*time.Second, 10*time.Millisecond, "the worker never waited for the email's lock")

		// Make the completion fail: the job's row disappears while the
		// worker waits. Its UPDATE then succeeds, JobCompleteTx finds no
		// row, and the transaction that holds the flag rolls back.
		tag, err := b.schema.Pool.Exec(ctx, `DELETE FROM river_job WHERE kind = $1 AND state = 'running'`, donations.UpdateEmailDonationKind)
		require.NoError(t, err)
		require.Equal(t, int64(1), tag.RowsAffected())
		require.NoError(t, holder.Rollback(ctx))

		select {
		case err := <-results.ch:
			require.ErrorIs(t, err, rivertype.ErrNotFound)
		case <-time.After(15 * time.Second):
			t.Fatal("the worker never returned")
		}
		require.Empty(t, b.donated(ctx, t), "the flag was committed without the job's completion")
	})

	t.Run("NotNeededWhenTheDonationIsGoneOrFailed", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, &donateSetupOpts{work: true})
		fid := b.fundraiser(ctx, t, "Engines")
		uid := b.user(ctx, t, "Ada", "ada@example.com")
		b.email(ctx, t, uid, fid, now)

		in := input(fid)
		in.Succeeded = false
		failed, err := b.svc.Donate(ctx, in)
		require.NoError(t, err)

		for _, id := range []int64{424242, failed.ID} {
			_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
				return tx.Enqueue(donations.UpdateEmailDonationArgs{DonationID: id}, nil)
			})
			require.NoError(t, err)
			ev := b.waitFlagJob(t)
			require.Equal(t, river.EventKindJobCompleted, ev.Kind)
			var out jobs.SkippedOutput
			require.NoError(t, json.Unmarshal(ev.Job.Output(), &out))
			require.Equal(t, jobs.SkippedOutput{Skipped: "not needed"}, out)
		}
		require.Empty(t, b.donated(ctx, t))
	})
}
