package jobs

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// Needed is implemented by a worker that can tell, from the source of
// truth, that a job has become moot: the donation was refunded, the checkout
// is no longer open. It is asked before Work; when it says false the job
// completes without running, and is recorded as skipped (job output
// {"skipped": "not needed"}), never dropped silently.
type Needed[T river.JobArgs] interface {
	Needed(ctx context.Context, job *river.Job[T]) (bool, error)
}

// neededFunc is the untyped form of Needed that the middleware calls.
type neededFunc func(ctx context.Context, job *rivertype.JobRow) (bool, error)

// SkippedOutput is recorded as the output of a job its worker found not
// needed.
type SkippedOutput struct {
	Skipped string `json:"skipped"`
}

// skippedNotNeeded is the output of a skipped job.
var skippedNotNeeded = SkippedOutput{Skipped: "not needed"}

// neededMiddleware asks a job's worker whether the job is still needed
// before running it. NewClient installs it.
type neededMiddleware struct {
	river.MiddlewareDefaults

	lookup  func(kind string) (neededFunc, bool)
	skipped atomic.Int64
}

var _ rivertype.WorkerMiddleware = (*neededMiddleware)(nil)

// newNeededMiddleware returns a middleware that calls lookup(kind)'s
// neededFunc, when there is one, before each job.
func newNeededMiddleware(lookup func(kind string) (neededFunc, bool)) *neededMiddleware {
	return &neededMiddleware{lookup: lookup}
}

// Skipped is the number of jobs completed as not needed since start.
func (m *neededMiddleware) Skipped() int64 { return m.skipped.Load() }

// Work implements rivertype.WorkerMiddleware.
func (m *neededMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	needed, ok := m.lookup(job.Kind)
	if !ok {
		return doInner(ctx)
	}
	yes, err := needed(ctx, job)
	if err != nil {
		return fmt.Errorf("jobs: asking whether %s job %d is needed: %w", job.Kind, job.ID, err)
	}
	if yes {
		return doInner(ctx)
	}
	m.skipped.Add(1)
	return river.RecordOutput(ctx, skippedNotNeeded)
}

// At schedules a job for t: tx.Enqueue(args, jobs.At(t)).
func At(t time.Time) *river.InsertOpts {
	return &river.InsertOpts{ScheduledAt: t}
}

// In schedules a job d from now: tx.Enqueue(args, jobs.In(24*time.Hour)).
func In(d time.Duration) *river.InsertOpts {
	return At(time.Now().Add(d))
}
