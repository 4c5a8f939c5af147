package reporting

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// Daily donation totals: fundraiser_daily_totals holds, per fundraiser and
// UTC day, the count and the sum of amount_cents of the succeeded donations
// (the donations domain's counter caches count the same ones; a failed or
// pending donation raised no money). Amounts of different currencies are
// summed as they are, as in those caches.
//
// The rows are never incremented: a job recomputes them from donations, so a
// recount is idempotent and a retry or a duplicate changes nothing. The
// donation.created subscription turns each counted donation into a
// RollupFundraiserDayArgs, written in the donation's own commit and
// queue-locked per (fundraiser, day), so a burst of donations to one
// fundraiser leaves one waiting job per day.
//
// The event does not carry the donation's time, and the subscription may
// not read the database, so the day in the args is the publishing process's
// UTC date. The donation's created_at is the database's clock at the start
// of its transaction: a transaction that spans midnight, or clocks apart,
// can put it on the day before or after. The job therefore recomputes that
// day and its two neighbours, which covers any gap under a day. Backfill
// recomputes any range of days, for donations written without an event, or
// changed since.

// RollupFundraiserDayKind is the River kind of RollupFundraiserDayArgs.
const RollupFundraiserDayKind = "reporting.rollup_fundraiser_day"

// RollupFundraiserDayArgs asks for a fundraiser's daily totals to be
// recomputed for a day and the days before and after it. It is queue-locked
// per (fundraiser, day).
type RollupFundraiserDayArgs struct {
	// FundraiserID is the fundraiser.
	FundraiserID int64 `json:"fundraiser_id" jobs:"id,queue_lock"`
	// Day is the UTC day, as "2006-01-02".
	Day string `json:"day" jobs:"required,queue_lock"`
}

// Kind implements river.JobArgs.
func (RollupFundraiserDayArgs) Kind() string { return RollupFundraiserDayKind }

// Validate implements jobs.ArgsValidator: Day is a date such as
// 2006-01-02. A job whose Day is not is cancelled at its first attempt.
func (a RollupFundraiserDayArgs) Validate() error {
	if _, err := time.Parse(time.DateOnly, a.Day); err != nil {
		return &jobs.FieldError{Field: "day", Reason: fmt.Sprintf("must be a date such as 2006-01-02, got %q", a.Day), Err: ErrInvalidInput}
	}
	return nil
}

// RollupOutput is recorded as a rollup job's output, and returned by
// Backfill: what the recount wrote.
type RollupOutput struct {
	// Written is the number of (fundraiser, day) rows written, each with
	// succeeded donations.
	Written int64 `json:"written"`
	// Emptied is the number of (fundraiser, day) pairs recomputed that have
	// no succeeded donation: their row was deleted, or never created.
	Emptied int64 `json:"emptied"`
	// Donations is the number of donations the written rows count.
	Donations int64 `json:"donations"`
}

// RollupFundraiserDayWorker works RollupFundraiserDayArgs.
type RollupFundraiserDayWorker struct {
	river.WorkerDefaults[RollupFundraiserDayArgs]

	pool *pgxpool.Pool
}

// registerRollups registers the rollup worker on QueueReports and
// subscribes it to donation.created (declared by the donations domain).
func registerRollups(reg *jobs.Registry, pool *pgxpool.Pool) {
	jobs.AddWorker(reg, QueueReports, &RollupFundraiserDayWorker{pool: pool})
	jobs.Subscribe(reg, TopicDonationCreated, func(ev outbox.Event) (RollupFundraiserDayArgs, bool, error) {
		p, ok, err := countedDonation(ev)
		return RollupFundraiserDayArgs{FundraiserID: p.FundraiserID, Day: time.Now().UTC().Format(time.DateOnly)}, ok, err
	})
}

// donationCreated is what the rollups read of a donation.created payload.
// It is decoded here rather than shared with the publisher: a subscriber
// depends on the event's JSON, not on the publisher's Go type.
type donationCreated struct {
	FundraiserID int64  `json:"fundraiser_id"`
	Status       string `json:"status"`
}

// countedDonation decodes a donation.created event and reports whether it
// may change a rollup: a failed donation never counts, so it needs no
// recount (a pending one may succeed later, and publish again). A payload
// that cannot be read is an error, which rolls the publishing transaction
// back: a donation the rollups would miss is never committed.
func countedDonation(ev outbox.Event) (donationCreated, bool, error) {
	var p donationCreated
	if err := json.Unmarshal(ev.Payload, &p); err != nil {
		return p, false, fmt.Errorf("reporting: reading a %s event: %w", ev.Topic, err)
	}
	if p.FundraiserID == 0 {
		return p, false, fmt.Errorf("reporting: a %s event without fundraiser_id: %s", ev.Topic, ev.Payload)
	}
	return p, p.Status != "failed", nil
}

// Work recomputes the fundraiser's totals of the day before, the day and the
// day after, and completes the job, in one read-committed transaction: the
// three rows are locked (created when missing) by a first statement and
// recomputed by a second (see recountRollupsSQL). A malformed day cancels
// the job.
func (w *RollupFundraiserDayWorker) Work(ctx context.Context, job *river.Job[RollupFundraiserDayArgs]) error {
	day, err := time.Parse(time.DateOnly, job.Args.Day)
	if err != nil {
		return river.JobCancel(&ValidationError{Field: "day", Message: fmt.Sprintf("must be a date such as 2006-01-02, got %q", job.Args.Day)})
	}
	return pgx.BeginTxFunc(ctx, w.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		out, err := recountRollups(ctx, tx, lockRollupWindowSQL, job.Args.FundraiserID, day)
		if err != nil {
			return fmt.Errorf("reporting: rolling up fundraiser %d around %s: %w", job.Args.FundraiserID, job.Args.Day, err)
		}
		return jobs.CompleteTx(ctx, tx, job, out)
	})
}

// recountRollups locks rows with lockSQL and its args, then recomputes
// them.
func recountRollups(ctx context.Context, tx pgx.Tx, lockSQL string, args ...any) (RollupOutput, error) {
	rows, err := tx.Query(ctx, lockSQL, args...)
	if err != nil {
		return RollupOutput{}, err
	}
	var (
		fundraisers []int64
		days        []time.Time
		fundraiser  int64
		day         time.Time
	)
	_, err = pgx.ForEachRow(rows, []any{&fundraiser, &day}, func() error {
		fundraisers, days = append(fundraisers, fundraiser), append(days, day)
		return nil
	})
	if err != nil || len(fundraisers) == 0 {
		return RollupOutput{}, err
	}
	var out RollupOutput
	err = tx.QueryRow(ctx, recountRollupsSQL, fundraisers, days).Scan(&out.Written, &out.Emptied, &out.Donations)
	return out, err
}

// MaxBackfillDays is the longest range Backfill takes: ten years.
const MaxBackfillDays = 3660

// Backfill recomputes fundraiser_daily_totals from donations for every day
// from first to last, both included, one transaction per day; rows outside
// the range are not touched. first and last are calendar days: only their
// date counts, read in their own location, and it names a UTC day. Use it
// for donations written without a donation.created event, changed since, or
// older than the rollups; it is safe while rollup jobs run, and while
// donations are written. It returns the sums of what each day wrote; on an
// error, what the days before it wrote (they are committed).
func (s *Service) Backfill(ctx context.Context, first, last time.Time) (RollupOutput, error) {
	from := time.Date(first.Year(), first.Month(), first.Day(), 0, 0, 0, 0, time.UTC)
	to := time.Date(last.Year(), last.Month(), last.Day(), 0, 0, 0, 0, time.UTC)
	switch days := int(to.Sub(from).Hours()/24) + 1; {
	case days < 1:
		return RollupOutput{}, &ValidationError{Field: "last", Message: fmt.Sprintf("%s is before the first day, %s",
			to.Format(time.DateOnly), from.Format(time.DateOnly))}
	case days > MaxBackfillDays:
		return RollupOutput{}, &ValidationError{Field: "last", Message: fmt.Sprintf("%s to %s is %d days, at most %d per call",
			from.Format(time.DateOnly), to.Format(time.DateOnly), days, MaxBackfillDays)}
	}
	var total RollupOutput
	for day := from; !day.After(to); day = day.AddDate(0, 0, 1) {
		var out RollupOutput
		err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
			var err error
			out, err = recountRollups(ctx, tx, lockRollupDaySQL, day)
			return err
		})
		if err != nil {
			return total, fmt.Errorf("reporting: backfilling %s: %w", day.Format(time.DateOnly), err)
		}
		total.Written += out.Written
		total.Emptied += out.Emptied
		total.Donations += out.Donations
	}
	return total, nil
}
