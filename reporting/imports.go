package reporting

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// TopicImportFinished is published once per import of car users
// (Service.ImportCarUsers), when every job of it finished, with an
// ImportFinishedEvent.
const TopicImportFinished = "import.finished"

// CarUsersImportedKind is the kind of CarUsersImportedArgs.
const CarUsersImportedKind = "reporting.car_users_imported"

// CarUsersImportedArgs is the callback of an import: it runs once, after
// every job of the import finished.
type CarUsersImportedArgs struct {
	// CarID is the car the users were imported into.
	CarID int64 `json:"car_id" jobs:"id"`
}

// Kind implements river.JobArgs.
func (CarUsersImportedArgs) Kind() string { return CarUsersImportedKind }

// ImportFinishedEvent is the payload of TopicImportFinished.
type ImportFinishedEvent struct {
	// ImportID is the import's ID (its job batch's).
	ImportID string `json:"import_id"`
	CarID    int64  `json:"car_id"`
	// Jobs is the number of CreateCarUsersInBulk jobs of the import;
	// Completed of them completed, Failed were cancelled or discarded.
	Jobs      int `json:"jobs"`
	Completed int `json:"completed"`
	Failed    int `json:"failed"`
	// Inserted is the number of car users the import created.
	Inserted int `json:"inserted"`
	// ReportEnqueued says whether the car's report was enqueued (a pair
	// was created).
	ReportEnqueued bool `json:"report_enqueued"`
}

// Import is what ImportCarUsers enqueued.
type Import struct {
	// ID is the import's ID: its job batch's (aftercommit jobs batch show).
	ID string
	// Jobs is the number of CreateCarUsersInBulk jobs.
	Jobs int
	// Distinct is the number of distinct user IDs.
	Distinct int
}

// ImportCarUsers adds the users of userIDs (any number, each above 0) to the
// car by CreateCarUsersInBulk jobs of at most page users each
// (MaxBulkUserIDs when page is 0 or more), enqueued in one transaction as
// one job batch: once every job finished, the batch's callback
// (CarUsersImportedArgs) enqueues the car's report once, when a pair was
// created, and publishes TopicImportFinished, in one transaction. The car
// and the users are checked by the jobs, as for EnqueueCarUsersInBulk; a
// job cancelled for them counts as failed in the event.
func (s *Service) ImportCarUsers(ctx context.Context, carID int64, userIDs []int64, page int) (Import, error) {
	if carID <= 0 {
		return Import{}, &ValidationError{Field: "car_id", Message: fmt.Sprintf("must name a car, got %d", carID)}
	}
	if page <= 0 || page > MaxBulkUserIDs {
		page = MaxBulkUserIDs
	}
	ids, err := normalizeIDs(userIDs, 0)
	if err != nil {
		return Import{}, err
	}
	var imp Import
	_, err = s.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		jb, err := tx.NewJobBatch(&outbox.JobBatchOpts{OnSuccess: CarUsersImportedArgs{CarID: carID}, OnFailure: CarUsersImportedArgs{CarID: carID}})
		if err != nil {
			return err
		}
		imp = Import{ID: jb.ID(), Distinct: len(ids)}
		for lo := 0; lo < len(ids); lo += page {
			args := CreateCarUsersInBulkArgs{CarID: carID, UserIDs: ids[lo:min(lo+page, len(ids))], Import: true}
			if err := jb.Enqueue(args, nil); err != nil {
				return err
			}
			imp.Jobs++
		}
		return nil
	})
	if err != nil {
		return Import{}, err
	}
	return imp, nil
}

// CarUsersImportedWorker works CarUsersImportedArgs.
type CarUsersImportedWorker struct {
	river.WorkerDefaults[CarUsersImportedArgs]
	obs workerOutbox
}

// registerImports registers the import callback on QueueReports and the
// topic it publishes.
func registerImports(reg *jobs.Registry, pool *pgxpool.Pool) {
	reg.AddTopic(Domain, TopicImportFinished)
	jobs.AddWorker(reg, QueueReports, &CarUsersImportedWorker{obs: workerOutbox{pool: pool, reg: reg, kind: CarUsersImportedKind}})
}

// Work reads how the import's jobs ended (their BulkResult outputs), and
// in one outbox transaction enqueues the car's report when a pair was
// created, publishes TopicImportFinished and completes the job. A job of
// this kind that is not an import's callback does nothing.
func (w *CarUsersImportedWorker) Work(ctx context.Context, job *river.Job[CarUsersImportedArgs]) error {
	done, ok := jobs.JobBatchDoneOf(job.JobRow)
	if !ok {
		// Enqueued by hand, not by an import's batch: there is nothing
		// to report on.
		return river.RecordOutput(ctx, map[string]string{"skipped": "not an import's callback"})
	}
	ob, err := w.obs.outbox(ctx)
	if err != nil {
		return err
	}
	_, err = ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		members, err := jobs.JobBatchMembers(ctx, tx, done.ID)
		if err != nil {
			return err
		}
		ev := ImportFinishedEvent{ImportID: done.ID, CarID: job.Args.CarID, Jobs: done.Expected, Completed: done.Completed,
			Failed: done.Discarded + done.Cancelled}
		for _, m := range members {
			var res BulkResult
			if m.State == "completed" && m.Output != nil {
				if err := json.Unmarshal(m.Output, &res); err != nil {
					return fmt.Errorf("reporting: the output of import job %d: %w", m.JobID, err)
				}
				ev.Inserted += res.Inserted
			}
		}
		if ev.Inserted > 0 {
			if err := tx.Enqueue(CarReportArgs{CarID: job.Args.CarID}, nil); err != nil {
				return err
			}
			ev.ReportEnqueued = true
		}
		if err := tx.Publish(TopicImportFinished, ev); err != nil {
			return err
		}
		return jobs.CompleteTx(ctx, tx, job, ev)
	})
	return err
}

// workerOutbox is the outbox of a worker that enqueues: on the worker's
// pool, inserting with the client running the job (the one River puts in
// the job's context), built from the registry the worker was registered on.
type workerOutbox struct {
	pool *pgxpool.Pool
	reg  *jobs.Registry
	kind string

	mu     sync.Mutex
	client *river.Client[pgx.Tx]
	ob     *outbox.Outbox
}

// outbox returns the outbox for the client running the job of ctx.
func (w *workerOutbox) outbox(ctx context.Context) (*outbox.Outbox, error) {
	client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
	if err != nil {
		return nil, fmt.Errorf("reporting: %s runs only in a River worker: %w", w.kind, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ob == nil || w.client != client {
		ob, err := jobs.NewOutbox(w.pool, client, w.reg, nil)
		if err != nil {
			return nil, fmt.Errorf("reporting: building the outbox of %s: %w", w.kind, err)
		}
		w.client, w.ob = client, ob
	}
	return w.ob, nil
}
