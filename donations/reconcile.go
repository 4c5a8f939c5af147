package donations

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
)

// ReconcileCountersKind is the River kind of ReconcileCountersArgs.
const ReconcileCountersKind = "donations.reconcile_counters"

// ReconcileCountersArgs asks for a slice of the counter caches to be
// checked against the donations and repaired: the fundraisers and the users
// checked longest ago (never checked first). RegisterReconciler enqueues it
// periodically.
type ReconcileCountersArgs struct{}

// Kind implements river.JobArgs.
func (ReconcileCountersArgs) Kind() string { return ReconcileCountersKind }

// ReconcileCountersOutput is recorded as a reconciliation job's output.
type ReconcileCountersOutput struct {
	// Fundraisers and Users are how many rows were checked.
	Fundraisers int `json:"fundraisers"`
	Users       int `json:"users"`
	// Drifted is how many of them had drifted, and were repaired.
	Drifted int `json:"drifted"`
}

// Drift is a counter cache a recount found off the donations, and
// repaired.
type Drift struct {
	// Table is "fundraisers" or "users"; ID is the row.
	Table string
	ID    int64
	// Count and TotalCents are what the recount corrected: the right value
	// less the one it found (TotalCents: fundraisers only).
	Count      int64
	TotalCents int64
}

// Defaults of ReconcileConfig.
const (
	ReconcileIntervalDefault = time.Minute
	ReconcileSliceDefault    = 100
)

// ReconcileConfig tunes the periodic reconciliation of the counter caches.
// A nil *ReconcileConfig takes every default.
type ReconcileConfig struct {
	// Interval is how often a reconciliation job is enqueued. Defaults to
	// ReconcileIntervalDefault.
	Interval time.Duration
	// Slice is how many fundraisers, and as many users, one job checks.
	// Each check reads every succeeded donation of its row, so a slice
	// bounds a run's cost; every row is checked once per
	// (rows / Slice) × Interval. Defaults to ReconcileSliceDefault.
	Slice int
	// OnDrift, when set, is called for every drift found (and repaired),
	// after its repair committed: cmd/worker counts them in
	// aftercommit_cache_drift_repairs_total.
	OnDrift func(ctx context.Context, d Drift)
	// Logger receives a warning naming each drifted row and its
	// difference. Defaults to slog.Default().
	Logger *slog.Logger
}

// RegisterReconciler registers the reconciliation worker on QueueCounters
// and its periodic job (at River's lowest priority, 4). Register must have
// declared the queue. It panics on a ReconcileConfig out of range (an
// Interval under 1 s, a Slice under 1): a programming error, found at
// startup.
func RegisterReconciler(reg *jobs.Registry, pool *pgxpool.Pool, cfg *ReconcileConfig) {
	c := ReconcileConfig{}
	if cfg != nil {
		c = *cfg
	}
	if c.Interval == 0 {
		c.Interval = ReconcileIntervalDefault
	}
	if c.Slice == 0 {
		c.Slice = ReconcileSliceDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Interval < time.Second || c.Slice < 1 {
		panic(fmt.Sprintf("donations: ReconcileConfig.Interval must be at least 1s and Slice at least 1, got %s and %d", c.Interval, c.Slice))
	}
	jobs.AddWorker(reg, QueueCounters, &ReconcileCountersWorker{pool: pool, cfg: c})
	reg.AddPeriodic(river.NewPeriodicJob(river.PeriodicInterval(c.Interval),
		func() (river.JobArgs, *river.InsertOpts) {
			return ReconcileCountersArgs{}, &river.InsertOpts{Queue: QueueCounters, Priority: 4}
		},
		&river.PeriodicJobOpts{ID: ReconcileCountersKind}))
}

// ReconcileCountersWorker works ReconcileCountersArgs.
type ReconcileCountersWorker struct {
	river.WorkerDefaults[ReconcileCountersArgs]

	pool *pgxpool.Pool
	cfg  ReconcileConfig
}

// Work recounts the Slice fundraisers and the Slice users checked longest
// ago, each in a transaction of its own (a recount locks its row for the
// time of its count), and reports each drift. A recount is idempotent, so a
// retry after a failure part-way repeats nothing harmful; the rows already
// checked are the newest-checked, so the retry takes the next ones.
func (w *ReconcileCountersWorker) Work(ctx context.Context, _ *river.Job[ReconcileCountersArgs]) error {
	var out ReconcileCountersOutput
	for _, t := range []struct {
		table, pageSQL, lockSQL string
		n                       *int
		update                  func(ctx context.Context, tx pgx.Tx, id int64, out *RecountOutput) error
	}{
		{"fundraisers", oldestCheckedFundraisersSQL, lockFundraiserSQL, &out.Fundraisers, recountFundraiserRow},
		{"users", oldestCheckedUsersSQL, lockUserSQL, &out.Users, recountUserRow},
	} {
		rows, err := w.pool.Query(ctx, t.pageSQL, w.cfg.Slice)
		if err != nil {
			return fmt.Errorf("donations: choosing %s to reconcile: %w", t.table, err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return fmt.Errorf("donations: choosing %s to reconcile: %w", t.table, err)
		}
		for _, id := range ids {
			var rec RecountOutput
			err := pgx.BeginTxFunc(ctx, w.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
				var err error
				rec, err = recountRow(ctx, tx, t.lockSQL, id, t.update)
				return err
			})
			if err != nil {
				return fmt.Errorf("donations: reconciling %s %d: %w", t.table, id, err)
			}
			*t.n++
			if rec.DriftCount != 0 || rec.DriftTotalCents != 0 {
				out.Drifted++
				w.report(ctx, Drift{Table: t.table, ID: id, Count: rec.DriftCount, TotalCents: rec.DriftTotalCents}, rec)
			}
		}
	}
	if err := river.RecordOutput(ctx, out); err != nil {
		return fmt.Errorf("donations: recording the reconciliation: %w", err)
	}
	return nil
}

// report logs a drift and hands it to OnDrift.
func (w *ReconcileCountersWorker) report(ctx context.Context, d Drift, rec RecountOutput) {
	w.cfg.Logger.WarnContext(ctx, "donations: counter cache drifted; repaired", "table", d.Table, "id", d.ID,
		"drift_count", d.Count, "drift_total_cents", d.TotalCents,
		"donations_count", rec.DonationsCount, "donations_total_cents", rec.DonationsTotalCents)
	if w.cfg.OnDrift != nil {
		w.cfg.OnDrift(ctx, d)
	}
}

// recountRow locks row id with lockSQL and runs update in a later statement
// of tx, a read-committed transaction (each statement then takes a fresh
// snapshot, which the serialization argument of recountFundraiserSQL
// needs). A row that does not exist is RecountResultNotFound.
func recountRow(ctx context.Context, tx pgx.Tx, lockSQL string, id int64,
	update func(ctx context.Context, tx pgx.Tx, id int64, out *RecountOutput) error,
) (RecountOutput, error) {
	var locked int64
	switch err := tx.QueryRow(ctx, lockSQL, id).Scan(&locked); {
	case errors.Is(err, pgx.ErrNoRows):
		return RecountOutput{Result: RecountResultNotFound}, nil
	case err != nil:
		return RecountOutput{}, fmt.Errorf("locking: %w", err)
	}
	out := RecountOutput{Result: RecountResultRecounted}
	if err := update(ctx, tx, id, &out); err != nil {
		return RecountOutput{}, fmt.Errorf("recounting: %w", err)
	}
	return out, nil
}

// recountFundraiserRow runs recountFundraiserSQL and fills out.
func recountFundraiserRow(ctx context.Context, tx pgx.Tx, id int64, out *RecountOutput) error {
	var count, cents int64
	if err := tx.QueryRow(ctx, recountFundraiserSQL, id).Scan(&out.DonationsCount, &out.DonationsTotalCents, &count, &cents); err != nil {
		return err
	}
	out.DriftCount, out.DriftTotalCents = out.DonationsCount-count, out.DonationsTotalCents-cents
	return nil
}

// recountUserRow runs recountUserSQL and fills out.
func recountUserRow(ctx context.Context, tx pgx.Tx, id int64, out *RecountOutput) error {
	var count int64
	if err := tx.QueryRow(ctx, recountUserSQL, id).Scan(&out.DonationsCount, &count); err != nil {
		return err
	}
	out.DriftCount = out.DonationsCount - count
	return nil
}
