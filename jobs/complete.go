package jobs

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
)

// CompleteTx ends a worker's transaction the one way that keeps its writes
// and its job together: it records out as the job's output
// (river.RecordOutput; nil records none) and marks job completed in tx
// (river.JobCompleteTx). The worker's writes, the output and the
// completion then commit together or not at all: a process that dies
// before the COMMIT leaves the job to run again with none of its writes.
// Call it last in the transaction; the job must be the one Work received.
func CompleteTx[T river.JobArgs](ctx context.Context, tx pgx.Tx, job *river.Job[T], out any) error {
	if out != nil {
		if err := river.RecordOutput(ctx, out); err != nil {
			return fmt.Errorf("jobs: recording the output of %s job %d: %w", job.Kind, job.ID, err)
		}
	}
	completed, err := beforeComplete(ctx, tx, job.JobRow)
	if err != nil {
		return err
	}
	if _, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job); err != nil {
		return fmt.Errorf("jobs: completing %s job %d: %w", job.Kind, job.ID, err)
	}
	if completed != nil {
		completed.Store(true)
	}
	return nil
}
