package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/outbox"
)

// JobBatchDone is what a job batch's callback learns of its batch: its ID
// and how its members finished.
type JobBatchDone struct {
	ID        string `json:"id"`
	Expected  int    `json:"expected"`
	Completed int    `json:"completed"`
	Discarded int    `json:"discarded"`
	Cancelled int    `json:"cancelled"`
	// FinishedAt is when the last member finished (the database's clock).
	FinishedAt time.Time `json:"finished_at"`
}

// Succeeded reports whether every member completed.
func (d JobBatchDone) Succeeded() bool { return d.Discarded+d.Cancelled == 0 }

// JobBatchDoneOf returns the batch job is the callback of (see
// outbox.Tx.NewJobBatch), read from its metadata, and false for any other
// job.
func JobBatchDoneOf(job *rivertype.JobRow) (JobBatchDone, bool) {
	var m map[string]json.RawMessage
	if job == nil || json.Unmarshal(job.Metadata, &m) != nil {
		return JobBatchDone{}, false
	}
	raw, ok := m[outbox.MetadataKeyJobBatchDone]
	if !ok {
		return JobBatchDone{}, false
	}
	var d JobBatchDone
	if json.Unmarshal(raw, &d) != nil || d.ID == "" {
		return JobBatchDone{}, false
	}
	return d, true
}

// JobBatchMember is a finished member of a job batch.
type JobBatchMember struct {
	JobID int64
	Kind  string
	// State is completed, discarded or cancelled (cancelled also for a
	// member deleted before it finished).
	State string
	// Output is what the member recorded with river.RecordOutput, or nil.
	Output     json.RawMessage
	FinishedAt time.Time
}

// Querier is what JobBatchMembers reads with: a pool, a connection or a
// transaction (a callback's own, with JobCompleteTx).
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// JobBatchMembers returns the finished members of job batch id, in the
// order they finished, as they were at their finish (their output is kept
// after River's cleaner deletes the jobs). A callback reads its members'
// outputs with it:
//
//	done, _ := jobs.JobBatchDoneOf(job.JobRow)
//	members, err := jobs.JobBatchMembers(ctx, pool, done.ID)
func JobBatchMembers(ctx context.Context, q Querier, id string) ([]JobBatchMember, error) {
	rows, err := q.Query(ctx, `SELECT job_id, kind, state, output, finished_at FROM job_batch_members
		WHERE batch_id = $1::uuid ORDER BY finished_at, job_id`, id)
	if err != nil {
		return nil, fmt.Errorf("jobs: reading the members of job batch %s: %w", id, err)
	}
	members, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (JobBatchMember, error) {
		var m JobBatchMember
		var output []byte
		err := row.Scan(&m.JobID, &m.Kind, &m.State, &output, &m.FinishedAt)
		if output != nil {
			m.Output = json.RawMessage(output)
		}
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("jobs: reading the members of job batch %s: %w", id, err)
	}
	return members, nil
}
