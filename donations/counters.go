package donations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// Counter caches: fundraisers.donations_count and donations_total_cents, and
// users.donations_count, count succeeded donations only (a failed or pending
// donation raised no money). Their cost does not grow with history:
//
//   - Every change of a succeeded donation writes a delta row in its own
//     transaction (triggers on donations, migration 0031: Go, SQL and
//     Python writers all count). A fold job moves a row's pending deltas
//     into its counters and deletes them in one statement, so it reads only
//     the new deltas; a retry or a duplicate finds nothing left to move.
//   - The donation.created subscription turns each event into a
//     FoldFundraiserCountersArgs (and a FoldUserCountersArgs when the
//     donation has a user), written in the donation's own commit. Both are
//     queue-locked per row: a burst of donations to one fundraiser leaves
//     one waiting fold. A change made without the event (a refund in SQL)
//     is folded by the row's next fold, or by RecountFundraiser.
//   - A recount (RecountFundraiser, RecountAll*) recomputes a row from the
//     donations and deletes the pending deltas it saw: the repair for
//     drift, and the check. It reports the drift it fixed.

// Kinds of the counter-cache jobs.
const (
	FoldFundraiserCountersKind = "donations.fold_fundraiser_counters"
	FoldUserCountersKind       = "donations.fold_user_counters"
	RecountFundraiserKind      = "donations.recount_fundraiser"
	RecountUserKind            = "donations.recount_user"
)

// FoldFundraiserCountersArgs asks for a fundraiser's pending counter deltas
// to be folded into its donations_count and donations_total_cents. It is
// queue-locked per fundraiser.
type FoldFundraiserCountersArgs struct {
	// FundraiserID is the fundraiser whose deltas are folded.
	FundraiserID int64 `json:"fundraiser_id" jobs:"id,queue_lock"`
}

// Kind implements river.JobArgs.
func (FoldFundraiserCountersArgs) Kind() string { return FoldFundraiserCountersKind }

// FoldUserCountersArgs asks for a user's pending counter deltas to be
// folded into their donations_count. It is queue-locked per user.
type FoldUserCountersArgs struct {
	// UserID is the user whose deltas are folded.
	UserID int64 `json:"user_id" jobs:"id,queue_lock"`
}

// Kind implements river.JobArgs.
func (FoldUserCountersArgs) Kind() string { return FoldUserCountersKind }

// FoldCountersOutput is recorded as a fold job's output: what it moved from
// the deltas into the counters (zeros when another fold had taken
// everything).
type FoldCountersOutput struct {
	// Deltas is the number of delta rows folded.
	Deltas int64 `json:"deltas"`
	// Donations and Cents are the amounts added (Cents: fundraisers only).
	Donations int64 `json:"donations"`
	Cents     int64 `json:"cents,omitempty"`
}

// FoldFundraiserCountersWorker works FoldFundraiserCountersArgs.
type FoldFundraiserCountersWorker struct {
	river.WorkerDefaults[FoldFundraiserCountersArgs]

	pool *pgxpool.Pool
}

// FoldUserCountersWorker works FoldUserCountersArgs.
type FoldUserCountersWorker struct {
	river.WorkerDefaults[FoldUserCountersArgs]

	pool *pgxpool.Pool
}

// Work folds the fundraiser's pending deltas into its counters and
// completes the job, in one transaction.
func (w *FoldFundraiserCountersWorker) Work(ctx context.Context, job *river.Job[FoldFundraiserCountersArgs]) error {
	return fold(ctx, w.pool, job, lockFundraiserSQL, foldFundraiserCountersSQL, job.Args.FundraiserID)
}

// Work folds the user's pending deltas into their donations_count and
// completes the job, in one transaction.
func (w *FoldUserCountersWorker) Work(ctx context.Context, job *river.Job[FoldUserCountersArgs]) error {
	return fold(ctx, w.pool, job, lockUserSQL, foldUserCountersSQL, job.Args.UserID)
}

// fold locks row id (lockSQL), runs foldSQL for it and completes job, in one
// transaction: the deltas it deleted and the counters it added commit
// together, or neither. The row's lock comes first, as in a recount, so a
// fold and a recount of one row never wait for each other's deltas. A row
// that no longer exists has its deltas deleted all the same.
func fold[T river.JobArgs](ctx context.Context, pool *pgxpool.Pool, job *river.Job[T], lockSQL, foldSQL string, id int64) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var locked int64
		if err := tx.QueryRow(ctx, lockSQL, id).Scan(&locked); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("locking %s %d: %w", job.Kind, id, err)
		}
		var out FoldCountersOutput
		err := tx.QueryRow(ctx, foldSQL, id).Scan(&out.Deltas, &out.Donations, &out.Cents)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) { // no rows: nothing was pending
			return fmt.Errorf("folding the counters of %s %d: %w", job.Kind, id, err)
		}
		return jobs.CompleteTx(ctx, tx, job, out)
	})
}

// RecountFundraiserArgs asks for a fundraiser's donations_count and
// donations_total_cents to be recomputed from its succeeded donations (its
// pending deltas are then folded in), to repair drift. It reads every donation of the
// fundraiser: the counters are kept by folds, not by recounts. It is
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
	// DriftCount and DriftTotalCents are what the recount corrected: the
	// written values less the ones it found plus the pending deltas it
	// folded (0: the counters were exact).
	DriftCount      int64 `json:"drift_count"`
	DriftTotalCents int64 `json:"drift_total_cents,omitempty"`
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

// registerCounters registers the fold and recount workers on QueueCounters
// and subscribes the folds to donation.created (declared by Register).
func registerCounters(reg *jobs.Registry, pool *pgxpool.Pool) {
	jobs.AddWorker(reg, QueueCounters, &FoldFundraiserCountersWorker{pool: pool})
	jobs.AddWorker(reg, QueueCounters, &FoldUserCountersWorker{pool: pool})
	jobs.AddWorker(reg, QueueCounters, &RecountFundraiserWorker{pool: pool})
	jobs.AddWorker(reg, QueueCounters, &RecountUserWorker{pool: pool})
	jobs.Subscribe(reg, TopicDonationCreated, func(ev outbox.Event) (FoldFundraiserCountersArgs, bool, error) {
		p, ok, err := countedDonation(ev)
		return FoldFundraiserCountersArgs{FundraiserID: p.FundraiserID}, ok, err
	})
	jobs.Subscribe(reg, TopicDonationCreated, func(ev outbox.Event) (FoldUserCountersArgs, bool, error) {
		p, ok, err := countedDonation(ev)
		return FoldUserCountersArgs{UserID: p.UserID}, ok && p.UserID != 0, err
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
// fold. A payload that cannot be read is an error, which rolls the
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
	return recount(ctx, w.pool, job, lockFundraiserSQL, job.Args.FundraiserID, recountFundraiserRow)
}

// Work recomputes the user's donations_count and completes the job in one
// transaction, serialized per user like RecountFundraiserWorker.Work.
func (w *RecountUserWorker) Work(ctx context.Context, job *river.Job[RecountUserArgs]) error {
	return recount(ctx, w.pool, job, lockUserSQL, job.Args.UserID, recountUserRow)
}

// recount recounts row id (recountRow) and completes job, in one
// read-committed transaction, and logs the drift it repaired.
func recount[T river.JobArgs](ctx context.Context, pool *pgxpool.Pool, job *river.Job[T], lockSQL string, id int64,
	update func(ctx context.Context, tx pgx.Tx, id int64, out *RecountOutput) error,
) error {
	return pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		out, err := recountRow(ctx, tx, lockSQL, id, update)
		if err != nil {
			return fmt.Errorf("%s %d: %w", job.Kind, id, err)
		}
		if out.DriftCount != 0 || out.DriftTotalCents != 0 {
			slog.WarnContext(ctx, "donations: a recount repaired drifted counters", "kind", job.Kind, "id", id,
				"drift_count", out.DriftCount, "drift_total_cents", out.DriftTotalCents,
				"donations_count", out.DonationsCount, "donations_total_cents", out.DonationsTotalCents)
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

// RefoldPendingCounters enqueues a fold for every fundraiser and user that
// has pending counter deltas and returns how many rows that is. Folds
// follow every donation.created event on their own; this folds the deltas
// of changes made without one (a refund or a correction in SQL) and of a
// row whose fold job was discarded or cancelled. Rows whose fold is already
// waiting add no job.
func (s *Service) RefoldPendingCounters(ctx context.Context) (int, error) {
	n, err := enqueueForEach(ctx, s, pendingDeltaFundraisersSQL, func(id int64) river.JobArgs {
		return FoldFundraiserCountersArgs{FundraiserID: id}
	})
	if err != nil {
		return n, err
	}
	m, err := enqueueForEach(ctx, s, pendingDeltaUsersSQL, func(id int64) river.JobArgs {
		return FoldUserCountersArgs{UserID: id}
	})
	return n + m, err
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
