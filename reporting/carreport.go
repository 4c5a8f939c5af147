package reporting

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// CarReportKind is the River kind of CarReportArgs.
const CarReportKind = "reporting.car_report"

// CarReportArgs asks for a car's report to be recomputed from car_users. It
// is queue-locked per car: while one report of a car waits, adding users to
// the car adds no job, so a burst of additions leaves one waiting report.
type CarReportArgs struct {
	// CarID is the car to report on.
	CarID int64 `json:"car_id" jobs:"id,queue_lock"`
}

// Kind implements river.JobArgs.
func (CarReportArgs) Kind() string { return CarReportKind }

// Results recorded in CarReportOutput.Result.
const (
	CarReportResultReported = "reported"
	CarReportResultNotFound = "not_found" // the car no longer exists; nothing to do
)

// CarReportOutput is recorded as a CarReport job's output.
type CarReportOutput struct {
	// Result is CarReportResultReported or CarReportResultNotFound.
	Result string `json:"result"`
	// UsersCount is the count written.
	UsersCount int64 `json:"users_count"`
}

// CarReportWorker works CarReportArgs.
type CarReportWorker struct {
	river.WorkerDefaults[CarReportArgs]

	pool *pgxpool.Pool
}

// registerCarReport registers the report worker on QueueReports.
func registerCarReport(reg *jobs.Registry, pool *pgxpool.Pool) {
	jobs.AddWorker(reg, QueueReports, &CarReportWorker{pool: pool})
}

// Work recomputes the car's report from car_users and completes the job, in
// one read-committed transaction. The car's row is locked by a first
// statement and the report recomputed by a second, so reports of one car
// are serialized and each one's snapshot follows the commit of the one
// before: the last to commit is never older than any other. A car deleted
// since the job was enqueued is recorded (CarReportResultNotFound), not an
// error.
func (w *CarReportWorker) Work(ctx context.Context, job *river.Job[CarReportArgs]) error {
	return pgx.BeginTxFunc(ctx, w.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		out := CarReportOutput{Result: CarReportResultReported}
		var locked int64
		switch err := tx.QueryRow(ctx, lockCarSQL, job.Args.CarID).Scan(&locked); {
		case errors.Is(err, pgx.ErrNoRows):
			out.Result = CarReportResultNotFound
		case err != nil:
			return fmt.Errorf("reporting: locking car %d: %w", job.Args.CarID, err)
		default:
			var last *time.Time
			if err := tx.QueryRow(ctx, recountCarSQL, job.Args.CarID).Scan(&out.UsersCount, &last); err != nil {
				return fmt.Errorf("reporting: recounting car %d: %w", job.Args.CarID, err)
			}
		}
		return jobs.CompleteTx(ctx, tx, job, out)
	})
}

// RecountCar enqueues a recount of the car's report, to repair drift (rows
// changed by hand, a report restored from an old backup); reports are
// otherwise kept by the additions that enqueue them. It returns a
// *ValidationError matching ErrUnknownCar, with nothing enqueued, when the
// car does not exist.
func (s *Service) RecountCar(ctx context.Context, carID int64) error {
	_, err := s.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		var exists bool
		if err := tx.QueryRow(ctx, carExistsSQL, carID).Scan(&exists); err != nil {
			return fmt.Errorf("reporting: checking car %d: %w", carID, err)
		}
		if !exists {
			return unknownCar(carID)
		}
		return tx.Enqueue(CarReportArgs{CarID: carID}, nil)
	})
	return err
}

// CarReport is a car's report as last computed.
type CarReport struct {
	// CarID is the car.
	CarID int64
	// Computed is false when no report of the car has run yet; the other
	// fields are zero then.
	Computed bool
	// UsersCount is the number of the car's users.
	UsersCount int64
	// LastUserAddedAt is when the newest of them was added; zero when the
	// car has none.
	LastUserAddedAt time.Time
	// ComputedAt is when the report was computed.
	ComputedAt time.Time
}

// CarReport returns the car's report as the last CarReport job computed
// it; ErrUnknownCar (a *ValidationError) when the car does not exist.
func (s *Service) CarReport(ctx context.Context, carID int64) (CarReport, error) {
	r := CarReport{CarID: carID}
	var last, computed *time.Time
	err := s.pool.QueryRow(ctx, carReportSQL, carID).Scan(&r.Computed, &r.UsersCount, &last, &computed)
	if errors.Is(err, pgx.ErrNoRows) {
		return CarReport{}, unknownCar(carID)
	}
	if err != nil {
		return CarReport{}, fmt.Errorf("reporting: reading the report of car %d: %w", carID, err)
	}
	if last != nil {
		r.LastUserAddedAt = *last
	}
	if computed != nil {
		r.ComputedAt = *computed
	}
	return r, nil
}
