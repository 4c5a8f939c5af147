package donations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// Counter caches: fundraisers.donations_count and donations_total_cents, and
// users.donations_count, count succeeded donations only (a failed or pending
// donation raised no money). They are never incremented: a job recomputes
// them from the donations table, so a recount is idempotent, a retry or a
// duplicate changes nothing, and drift is repaired by running one more.
//
// The jobs are driven by the donation.created event: the subscription turns
// each event into a RecountFundraiserArgs (and a RecountUserArgs when the
// donation has a user), written in the donation's own commit. Both kinds are
// queue-locked per row, so a burst of donations to one fundraiser leaves one
// waiting recount. A donation whose status changes later (a pending one that
// succeeds, a refund) must publish again, or call RecountFundraiser.

// Kinds of the counter-cache jobs.
const (
	RecountFundraiserKind = "donations.recount_fundraiser"
	RecountUserKind       = "donations.recount_user"
)

// RecountFundraiserArgs asks for a fundraiser's donations_count and
// donations_total_cents to be recomputed from its succeeded donations. It is
// queue-locked per fundraiser.
type RecountFundraiserArgs struct {
	// FundraiserID is the fundraiser to recount.
	FundraiserID int64 `json:"fundraiser_id" jobs:"id,queue_lock"`
}

// Kind implements river.JobArgs.
func (RecountFundraiserArgs) Kind() string { return RecountFundraiserKind }

// RecountUserArgs asks for a user's donations_count to be recomputed from
// their succeeded donations. It is queue-locked per user.
type RecountUserArgs struct {
	// UserID is the user to recount.
	UserID int64 `json:"user_id" jobs:"id,queue_lock"`
}

// Kind implements river.JobArgs.
func (RecountUserArgs) Kind() string { return RecountUserKind }

// Results recorded in RecountOutput.Result.
const (
	RecountResultRecounted = "recounted"
	RecountResultNotFound  = "not_found" // the row no longer exists; nothing to do
)

// RecountOutput is recorded as a recount job's output.
type RecountOutput struct {
	// Result is RecountResultRecounted or RecountResultNotFound.
	Result string `json:"result"`
	// DonationsCount is the count written.
	DonationsCount int64 `json:"donations_count"`
	// DonationsTotalCents is the total written (fundraisers only).
	DonationsTotalCents int64 `json:"donations_total_cents,omitempty"`
}

// RecountFundraiserWorker works RecountFundraiserArgs.
type RecountFundraiserWorker struct {
	river.WorkerDefaults[RecountFundraiserArgs]

	pool *pgxpool.Pool
}

// RecountUserWorker works RecountUserArgs.
type RecountUserWorker struct {
	river.WorkerDefaults[RecountUserArgs]

	pool *pgxpool.Pool
}

// registerCounters registers the recount workers on QueueCounters and
// subscribes them to donation.created (declared by Register).
func registerCounters(reg *jobs.Registry, pool *pgxpool.Pool) {
	jobs.AddWorker(reg, QueueCounters, &RecountFundraiserWorker{pool: pool})
	jobs.AddWorker(reg, QueueCounters, &RecountUserWorker{pool: pool})
	jobs.Subscribe(reg, TopicDonationCreated, func(ev outbox.Event) (RecountFundraiserArgs, bool, error) {
		p, ok, err := countedDonation(ev)
		return RecountFundraiserArgs{FundraiserID: p.FundraiserID}, ok, err
	})
	jobs.Subscribe(reg, TopicDonationCreated, func(ev outbox.Event) (RecountUserArgs, bool, error) {
		p, ok, err := countedDonation(ev)
		return RecountUserArgs{UserID: p.UserID}, ok && p.UserID != 0, err
	})
}

// donationCreated is what the counters read of a donation.created payload.
// It is decoded here rather than shared with the publisher: a subscriber
// depends on the event's JSON, not on the publisher's Go type.
type donationCreated struct {
	DonationID   int64  `json:"donation_id"`
	FundraiserID int64  `json:"fundraiser_id"`
	UserID       int64  `json:"user_id"` // 0 or absent: a donation without a user
	Status       string `json:"status"`
}

// countedDonation decodes a donation.created event and reports whether it
// may change a counter cache: a failed donation never counts, so it needs no
// recount. A payload that cannot be read is an error, which rolls the
// publishing transaction back: a donation the counters would miss is never
// committed.
func countedDonation(ev outbox.Event) (donationCreated, bool, error) {
	var p donationCreated
	if err := json.Unmarshal(ev.Payload, &p); err != nil {
		return p, false, fmt.Errorf("donations: reading a %s event: %w", ev.Topic, err)
	}
	if p.FundraiserID == 0 {
		return p, false, fmt.Errorf("donations: a %s event without fundraiser_id: %s", ev.Topic, ev.Payload)
	}
	return p, p.Status != string(StatusFailed), nil
}

// Work recomputes the fundraiser's counter cache and completes the job in
// one transaction.
//
// The fundraiser's row is locked by a first statement and recomputed by a
// second, so recounts of one fundraiser are serialized and each one's
// snapshot follows the commit of the one before: the last to commit is
// never older than any other. (A single UPDATE with subqueries would wait
// for the row lock but keep its older snapshot, and could overwrite a newer
// count with a stale one.)
func (w *RecountFundraiserWorker) Work(ctx context.Context, job *river.Job[RecountFundraiserArgs]) error {
	return recount(ctx, w.pool, job, lockFundraiserSQL, job.Args.FundraiserID, func(ctx context.Context, tx pgx.Tx, out *RecountOutput) error {
		return tx.QueryRow(ctx, recountFundraiserSQL, job.Args.FundraiserID).Scan(&out.DonationsCount, &out.DonationsTotalCents)
	})
}

// Work recomputes the user's donations_count and completes the job in one
// transaction, serialized per user like RecountFundraiserWorker.Work.
func (w *RecountUserWorker) Work(ctx context.Context, job *river.Job[RecountUserArgs]) error {
	return recount(ctx, w.pool, job, lockUserSQL, job.Args.UserID, func(ctx context.Context, tx pgx.Tx, out *RecountOutput) error {
		return tx.QueryRow(ctx, recountUserSQL, job.Args.UserID).Scan(&out.DonationsCount)
	})
}

// recount locks row id with lockSQL, runs update in a later statement and
// completes job, in one read-committed transaction (each statement then
// takes a fresh snapshot, which the serialization argument needs).
func recount[T river.JobArgs](ctx context.Context, pool *pgxpool.Pool, job *river.Job[T], lockSQL string, id int64,
	update func(ctx context.Context, tx pgx.Tx, out *RecountOutput) error,
) error {
	return pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		out := RecountOutput{Result: RecountResultRecounted}
		var locked int64
		switch err := tx.QueryRow(ctx, lockSQL, id).Scan(&locked); {
		case errors.Is(err, pgx.ErrNoRows):
			out = RecountOutput{Result: RecountResultNotFound}
		case err != nil:
			return fmt.Errorf("locking %s %d: %w", job.Kind, id, err)
		default:
			if err := update(ctx, tx, &out); err != nil {
				return fmt.Errorf("recounting for %s %d: %w", job.Kind, id, err)
			}
		}
		return jobs.CompleteTx(ctx, tx, job, out)
	})
}

// ErrUnknownUser is returned by RecountUser for a user ID that does not
// exist.
var ErrUnknownUser = errors.New("donations: unknown user")

// RecountFundraiser enqueues a recount of the fundraiser's counter cache,
// to repair drift (rows changed by hand, a counter restored from an old
// backup). Counters are otherwise kept by the donation.created
// subscription. It returns an error matching ErrUnknownFundraiser, with
// nothing enqueued, when the fundraiser does not exist.
func (s *Service) RecountFundraiser(ctx context.Context, fundraiserID int64) error {
	return s.enqueueIfExists(ctx, fundraiserExistsSQL, fundraiserID, ErrUnknownFundraiser,
		RecountFundraiserArgs{FundraiserID: fundraiserID})
}

// RecountUser enqueues a recount of the user's donations_count, like
// RecountFundraiser; ErrUnknownUser when the user does not exist.
func (s *Service) RecountUser(ctx context.Context, userID int64) error {
	return s.enqueueIfExists(ctx, userExistsSQL, userID, ErrUnknownUser, RecountUserArgs{UserID: userID})
}

// enqueueIfExists enqueues args when existsSQL finds row id, else returns
// unknown.
func (s *Service) enqueueIfExists(ctx context.Context, existsSQL string, id int64, unknown error, args river.JobArgs) error {
	_, err := s.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		var exists bool
		if err := tx.QueryRow(ctx, existsSQL, id).Scan(&exists); err != nil {
			return fmt.Errorf("donations: enqueueing %s: %w", args.Kind(), err)
		}
		if !exists {
			return fmt.Errorf("%w: %d", unknown, id)
		}
		return tx.Enqueue(args, nil)
	})
	return err
}

// RecountAllFundraisers enqueues a recount of every fundraiser, a page of
// recountPage fundraisers per transaction, and returns how many it asked
// for. Fundraisers whose recount is already waiting add no job.
func (s *Service) RecountAllFundraisers(ctx context.Context) (int, error) {
	return enqueueForEach(ctx, s, fundraiserIDsSQL, func(id int64) river.JobArgs {
		return RecountFundraiserArgs{FundraiserID: id}
	})
}

// RecountAllUsers enqueues a recount of every user, like
// RecountAllFundraisers.
func (s *Service) RecountAllUsers(ctx context.Context) (int, error) {
	return enqueueForEach(ctx, s, userIDsSQL, func(id int64) river.JobArgs {
		return RecountUserArgs{UserID: id}
	})
}

// recountPage is how many jobs one repair transaction enqueues (one INSERT).
const recountPage = 1000

// enqueueForEach pages through the IDs pageSQL returns (keyset: $1 the last
// ID seen, $2 the page size) and enqueues mk(id) for each, one outbox
// transaction per page.
func enqueueForEach(ctx context.Context, s *Service, pageSQL string, mk func(id int64) river.JobArgs) (int, error) {
	total := 0
	for last := int64(0); ; {
		var ids []int64
		_, err := s.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			rows, err := tx.Query(ctx, pageSQL, last, recountPage)
			if err != nil {
				return err
			}
			if ids, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
				return err
			}
			for _, id := range ids {
				if err := tx.Enqueue(mk(id), nil); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("donations: enqueueing repairs: %w", err)
		}
		total += len(ids)
		if len(ids) < recountPage {
			return total, nil
		}
		last = ids[len(ids)-1]
	}
}
