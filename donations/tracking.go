package donations

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// ErrUnknownEmail is returned by the Track methods for an email ID that does
// not exist; nothing is written then.
var ErrUnknownEmail = errors.New("donations: unknown email")

// FoldEmailCountersKind is the River kind of FoldEmailCountersArgs.
const FoldEmailCountersKind = "donations.fold_email_counters"

// FoldEmailCountersArgs asks for the pending open/click deltas of an email
// to be folded into its counters. It is queue-locked per email: while one
// fold of an email waits, tracking more events of that email adds no job.
type FoldEmailCountersArgs struct {
	// EmailID is the email whose deltas are folded.
	EmailID int64 `json:"email_id" jobs:"id,queue_lock"`
}

// Kind implements river.JobArgs.
func (FoldEmailCountersArgs) Kind() string { return FoldEmailCountersKind }

// FoldEmailCountersOutput is recorded as a fold job's output: what it moved
// from email_counter_deltas into the email's counters (zeros when another
// fold had taken everything).
type FoldEmailCountersOutput struct {
	// Deltas is the number of delta rows folded.
	Deltas int64 `json:"deltas"`
	// Opens and Clicks are the amounts added to the email's counters.
	Opens  int64 `json:"opens"`
	Clicks int64 `json:"clicks"`
}

// FoldEmailCountersWorker works FoldEmailCountersArgs.
type FoldEmailCountersWorker struct {
	river.WorkerDefaults[FoldEmailCountersArgs]

	pool *pgxpool.Pool
}

// registerTracking registers the fold worker on QueueCounters.
func registerTracking(reg *jobs.Registry, pool *pgxpool.Pool) {
	jobs.AddWorker(reg, QueueCounters, &FoldEmailCountersWorker{pool: pool})
}

// Work folds every pending delta of the email into its counters and
// completes the job, in one transaction. Folding is idempotent in effect: a
// second fold finds nothing to move, and a fold that rolls back leaves its
// deltas for the retry.
func (w *FoldEmailCountersWorker) Work(ctx context.Context, job *river.Job[FoldEmailCountersArgs]) error {
	return pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		var out FoldEmailCountersOutput
		err := tx.QueryRow(ctx, foldEmailCountersSQL, job.Args.EmailID).Scan(&out.Deltas, &out.Opens, &out.Clicks)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) { // no rows: nothing was pending
			return fmt.Errorf("folding the counters of email %d: %w", job.Args.EmailID, err)
		}
		return jobs.CompleteTx(ctx, tx, job, out)
	})
}

// TrackOpen records that an email was opened: a delta row and a fold job
// for the email (a no-op while one waits), in one transaction. The email's
// opens counter includes it once the fold has run. It returns
// ErrUnknownEmail, with nothing written, when the email does not exist.
func (s *Service) TrackOpen(ctx context.Context, emailID int64) error {
	return s.trackOne(ctx, nil, insertOpenDeltaSQL, emailID)
}

// TrackOpenTx is TrackOpen in the caller's transaction tx (see DonateTx for
// how its job is written). A nil tx is a transaction of its own.
func (s *Service) TrackOpenTx(ctx context.Context, tx pgx.Tx, emailID int64) error {
	return s.trackOne(ctx, tx, insertOpenDeltaSQL, emailID)
}

// TrackClick records a click in an email the way TrackOpen records an open.
func (s *Service) TrackClick(ctx context.Context, emailID int64) error {
	return s.trackOne(ctx, nil, insertClickDeltaSQL, emailID)
}

// TrackClickTx is TrackClick in the caller's transaction tx, like
// TrackOpenTx.
func (s *Service) TrackClickTx(ctx context.Context, tx pgx.Tx, emailID int64) error {
	return s.trackOne(ctx, tx, insertClickDeltaSQL, emailID)
}

func (s *Service) trackOne(ctx context.Context, tx pgx.Tx, sql string, emailID int64) error {
	_, err := s.ob.JoinTx(ctx, tx, func(ctx context.Context, tx *outbox.Tx) error {
		if _, err := tx.Exec(ctx, sql, emailID); err != nil {
			if isUnknownEmail(err) {
				return fmt.Errorf("%w: %d", ErrUnknownEmail, emailID)
			}
			return fmt.Errorf("donations: tracking email %d: %w", emailID, err)
		}
		return tx.Enqueue(FoldEmailCountersArgs{EmailID: emailID}, nil)
	})
	return err
}

// TrackOpens records one open per element of emailIDs (an ID may repeat)
// in one transaction: one delta row and at most one fold job per distinct
// email. A tracking endpoint that buffers events for a few milliseconds
// writes far fewer rows this way. It returns ErrUnknownEmail, with nothing
// written, when any of the emails does not exist.
func (s *Service) TrackOpens(ctx context.Context, emailIDs []int64) error {
	return s.TrackBatch(ctx, emailIDs, nil)
}

// TrackClicks is TrackOpens for clicks.
func (s *Service) TrackClicks(ctx context.Context, emailIDs []int64) error {
	return s.TrackBatch(ctx, nil, emailIDs)
}

// TrackBatch records one open per element of opens and one click per
// element of clicks, in one transaction, like TrackOpens.
func (s *Service) TrackBatch(ctx context.Context, opens, clicks []int64) error {
	return s.TrackBatchTx(ctx, nil, opens, clicks)
}

// TrackBatchTx is TrackBatch in the caller's transaction tx (see DonateTx
// for how its jobs are written). A nil tx is a transaction of its own.
func (s *Service) TrackBatchTx(ctx context.Context, tx pgx.Tx, opens, clicks []int64) error {
	if len(opens) > math.MaxInt32 || len(clicks) > math.MaxInt32 {
		return errors.New("donations: tracking batch too large") // a delta counts in an integer column
	}
	type counts struct{ opens, clicks int32 }
	byEmail := make(map[int64]*counts)
	add := func(ids []int64, click bool) {
		for _, id := range ids {
			c := byEmail[id]
			if c == nil {
				c = &counts{}
				byEmail[id] = c
			}
			if click {
				c.clicks++
			} else {
				c.opens++
			}
		}
	}
	add(opens, false)
	add(clicks, true)
	if len(byEmail) == 0 {
		return nil
	}
	ids := slices.Sorted(maps.Keys(byEmail))
	openCol := make([]int32, len(ids))
	clickCol := make([]int32, len(ids))
	for i, id := range ids {
		openCol[i], clickCol[i] = byEmail[id].opens, byEmail[id].clicks
	}
	_, err := s.ob.JoinTx(ctx, tx, func(ctx context.Context, tx *outbox.Tx) error {
		if _, err := tx.Exec(ctx, insertDeltasSQL, ids, openCol, clickCol); err != nil {
			if isUnknownEmail(err) {
				return fmt.Errorf("%w: %s", ErrUnknownEmail, unknownEmailDetail(err))
			}
			return fmt.Errorf("donations: tracking %d emails: %w", len(ids), err)
		}
		for _, id := range ids {
			if err := tx.Enqueue(FoldEmailCountersArgs{EmailID: id}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	return err
}

// RefoldPending enqueues a fold for every email that has pending deltas and
// returns how many emails that is. Folds follow every tracked event on
// their own; this repairs the rare email whose fold job was discarded or
// cancelled (a fold retries 25 times first).
func (s *Service) RefoldPending(ctx context.Context) (int, error) {
	return enqueueForEach(ctx, s, pendingDeltaEmailsSQL, func(id int64) river.JobArgs {
		return FoldEmailCountersArgs{EmailID: id}
	})
}

// isUnknownEmail reports whether err is the foreign-key violation of a
// delta whose email does not exist.
func isUnknownEmail(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23503" && pgErr.ConstraintName == fkDeltasEmail
}

// unknownEmailDetail returns the server's detail of a foreign-key violation
// ("Key (email_id)=(42) is not present in table "emails".").
func unknownEmailDetail(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Detail != "" {
		return pgErr.Detail
	}
	return "one of the emails does not exist"
}
