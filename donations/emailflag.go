package donations

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
)

// UpdateEmailDonationKind is the River kind of UpdateEmailDonationArgs. It
// never changes.
const UpdateEmailDonationKind = "donations.update_email_donation"

// UpdateEmailDonationArgs asks for the email that led to a donation to be
// flagged donated. Donate enqueues it, in the donation's transaction, for a
// donation whose payment succeeded.
type UpdateEmailDonationArgs struct {
	// DonationID is the donation; the worker reads everything else from it.
	DonationID int64 `json:"donation_id" jobs:"id"`
}

// Kind implements river.JobArgs.
func (UpdateEmailDonationArgs) Kind() string { return UpdateEmailDonationKind }

// Results of an UpdateEmailDonation job (EmailFlagOutput.Result).
const (
	// EmailFlagFlagged: the job set the email's donated flag.
	EmailFlagFlagged = "flagged"
	// EmailFlagAlreadyFlagged: the email was flagged already (another
	// donation, or this job delivered again); nothing changed.
	EmailFlagAlreadyFlagged = "already_flagged"
	// EmailFlagNoEmail: no email matched the donation. A normal outcome:
	// not every donor came from an email.
	EmailFlagNoEmail = "no_email"
	// EmailFlagNotNeeded: the donation vanished or did not succeed between
	// the needed-check and the work.
	EmailFlagNotNeeded = "not_needed"
)

// How the email was found (EmailFlagOutput.MatchedBy).
const (
	// MatchedByEmailID: the email the donation's link named, sent for the
	// donation's fundraiser.
	MatchedByEmailID = "email_id"
	// MatchedByAddress: the most recent email of the donation's fundraiser
	// to the user with the donor's address.
	MatchedByAddress = "address"
)

// EmailFlagOutput is recorded as an UpdateEmailDonation job's output (River
// metadata "output"), in the transaction that completes the job.
type EmailFlagOutput struct {
	// Result is one of the EmailFlag… constants.
	Result string `json:"result"`
	// EmailID is the email found, when one was.
	EmailID int64 `json:"email_id,omitempty"`
	// MatchedBy is MatchedByEmailID or MatchedByAddress, when an email was
	// found.
	MatchedBy string `json:"matched_by,omitempty"`
}

// UpdateEmailDonationWorker works UpdateEmailDonationArgs: it finds the
// email that led to the donation and sets its donated flag, in the
// transaction that completes the job, so a retry or a second delivery
// changes nothing twice.
type UpdateEmailDonationWorker struct {
	river.WorkerDefaults[UpdateEmailDonationArgs]

	// Pool is the database of the donations and emails tables.
	Pool *pgxpool.Pool
}

var _ jobs.Needed[UpdateEmailDonationArgs] = (*UpdateEmailDonationWorker)(nil)

// registerEmailFlag registers the email flag worker on QueueDefault.
func registerEmailFlag(reg *jobs.Registry, pool *pgxpool.Pool) {
	jobs.AddWorker(reg, QueueDefault, &UpdateEmailDonationWorker{Pool: pool})
}

// Needed implements jobs.Needed: a donation that no longer exists or did not
// succeed flags nothing.
func (w *UpdateEmailDonationWorker) Needed(ctx context.Context, job *river.Job[UpdateEmailDonationArgs]) (bool, error) {
	var status Status
	err := w.Pool.QueryRow(ctx, emailFlagStatusSQL, job.Args.DonationID).Scan(&status)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("donations: reading donation %d: %w", job.Args.DonationID, err)
	}
	return status == StatusSucceeded, nil
}

// Work flags the donation's email and completes the job in one transaction.
// The email is the one the donation's link named when it was sent for the
// donation's fundraiser; else the most recent email of that fundraiser to the
// user with the donor's address. Finding none is recorded (EmailFlagNoEmail),
// not an error.
func (w *UpdateEmailDonationWorker) Work(ctx context.Context, job *river.Job[UpdateEmailDonationArgs]) error {
	return pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		out, err := flagEmail(ctx, tx, job.Args.DonationID)
		if err != nil {
			return err
		}
		return jobs.CompleteTx(ctx, tx, job, out)
	})
}

// flagEmail does the work of one job in tx and says what it did.
func flagEmail(ctx context.Context, tx pgx.Tx, donationID int64) (EmailFlagOutput, error) {
	var (
		fundraiserID, emailID int64
		donorEmail            string
		status                Status
	)
	err := tx.QueryRow(ctx, emailFlagLoadSQL, donationID).Scan(&fundraiserID, &emailID, &donorEmail, &status)
	if errors.Is(err, pgx.ErrNoRows) || err == nil && status != StatusSucceeded {
		return EmailFlagOutput{Result: EmailFlagNotNeeded}, nil
	}
	if err != nil {
		return EmailFlagOutput{}, fmt.Errorf("donations: loading donation %d: %w", donationID, err)
	}

	out := EmailFlagOutput{}
	err = tx.QueryRow(ctx, emailFlagFindSQL, emailID, fundraiserID, donorEmail).Scan(&out.EmailID, &out.MatchedBy)
	if errors.Is(err, pgx.ErrNoRows) {
		return EmailFlagOutput{Result: EmailFlagNoEmail}, nil
	}
	if err != nil {
		return EmailFlagOutput{}, fmt.Errorf("donations: finding the email of donation %d: %w", donationID, err)
	}

	tag, err := tx.Exec(ctx, emailFlagSetSQL, out.EmailID)
	if err != nil {
		return EmailFlagOutput{}, fmt.Errorf("donations: flagging email %d: %w", out.EmailID, err)
	}
	out.Result = EmailFlagFlagged
	if tag.RowsAffected() == 0 {
		out.Result = EmailFlagAlreadyFlagged
	}
	return out, nil
}
