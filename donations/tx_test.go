package donations_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/outbox"
)

// TestWritesInTheCallersTx checks the …Tx twins: their rows, jobs and
// events commit and roll back with the caller's transaction, whether it is
// a plain pgx.Tx or an InTx one.
func TestWritesInTheCallersTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("RolledBack", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		f := b.fundraiser(ctx, t, "Roof")

		tx, err := b.schema.Pool.Begin(ctx)
		require.NoError(t, err)
		d, err := b.svc.DonateTx(ctx, tx, input(f))
		require.NoError(t, err)
		require.NotZero(t, d.ID)
		require.NoError(t, tx.Rollback(ctx))
		b.requireNothingWritten(ctx, t)
	})

	t.Run("Committed", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		f := b.fundraiser(ctx, t, "Roof")
		ada := b.user(ctx, t, "Ada", "ada@example.com")
		email := b.email(ctx, t, ada, f, time.Now())

		tx, err := b.schema.Pool.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `UPDATE fundraisers SET name = 'New roof' WHERE id = $1`, f) // the caller's own write
		require.NoError(t, err)
		d, err := b.svc.DonateTx(ctx, tx, input(f))
		require.NoError(t, err)
		require.NoError(t, b.svc.TrackOpenTx(ctx, tx, email))
		require.NoError(t, b.svc.TrackClickTx(ctx, tx, email))
		require.NoError(t, b.svc.TrackBatchTx(ctx, tx, []int64{email, email}, nil))
		// Nothing is visible before the caller commits.
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM donations`))
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job`))
		require.NoError(t, tx.Commit(ctx))

		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM fundraisers WHERE name = 'New roof'`))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM donations WHERE id = $1 AND user_id = $2`, d.ID, ada))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1 AND (args->>'donation_id')::bigint = $2`,
			donations.UpdateEmailDonationKind, d.ID))
		require.Len(t, b.eventPayloads(ctx, t), 1)
		// An open, a click and two opens of the batch, as delta rows.
		require.Equal(t, 4, b.count(ctx, t, `SELECT coalesce(sum(opens + clicks), 0) FROM email_counter_deltas WHERE email_id = $1`, email))
	})

	t.Run("InsideInTx", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		f := b.fundraiser(ctx, t, "Roof")
		ada := b.user(ctx, t, "Ada", "ada@example.com")
		email := b.email(ctx, t, ada, f, time.Now())

		res, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			if _, err := b.svc.DonateTx(ctx, tx, input(f)); err != nil {
				return err
			}
			if err := b.svc.TrackOpenTx(ctx, tx, email); err != nil {
				return err
			}
			if err := b.svc.TrackOpenTx(ctx, tx, email); err != nil {
				return err
			}
			// Buffered for the COMMIT: the email flag job, the two recounts
			// the donation.created event asks for, one fold job.
			require.Equal(t, 4, tx.Pending())
			return nil
		})
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 5, Duplicates: 1, Events: 1, Inserted: 4, RoundTrips: 1}, res)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM donations`))
	})

	t.Run("ValidationErrorLeavesTheTxUsable", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		tx, err := b.schema.Pool.Begin(ctx)
		require.NoError(t, err)
		_, err = b.svc.DonateTx(ctx, tx, input(999_999)) // no such fundraiser: found by SQL
		require.ErrorIs(t, err, donations.ErrUnknownFundraiser)
		_, err = b.svc.DonateTx(ctx, tx, donations.DonateInput{}) // refused before any SQL
		require.ErrorIs(t, err, donations.ErrInvalidDonation)
		f := b.fundraiser(ctx, t, "Roof")
		_, err = b.svc.DonateTx(ctx, tx, input(f))
		require.NoError(t, err)
		require.NoError(t, tx.Commit(ctx))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM donations`))
	})

	t.Run("UnknownEmailAbortsTheTx", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		tx, err := b.schema.Pool.Begin(ctx)
		require.NoError(t, err)
		err = b.svc.TrackOpenTx(ctx, tx, 424242)
		require.ErrorIs(t, err, donations.ErrUnknownEmail)
		_, err = tx.Exec(ctx, `SELECT 1`)
		require.True(t, err != nil && !errors.Is(err, donations.ErrUnknownEmail), "a failed statement aborted the caller's transaction: %v", err)
		require.NoError(t, tx.Rollback(ctx))
	})
}
