package reporting_test

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/reporting"
)

// TestBulkFairShare: the bulk creations of one car share
// BulkInFlightPerCar places in the bulk queue. A car's long import waits
// pending beyond them, and another car's job is fetched behind that many of
// its jobs, not behind the whole import.
func TestBulkFairShare(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ALongImportWaitsPending", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{outboxTable: true})
		fleet, van := b.car(ctx, t, "Fleet"), b.car(ctx, t, "Van")
		users := b.users(ctx, t, 70)
		// The fleet's roster in six pages, from concurrent transactions;
		// then the van's one page.
		b.enqueuePages(ctx, t, fleet, users[:60], 6)
		b.enqueuePages(ctx, t, van, users[60:], 1)
		b.drain(ctx, t)

		require.Equal(t, map[string]int{"Fleet available": 2, "Fleet pending": 4, "Van available": 1}, b.bulkStates(ctx, t))
		// The fleet's jobs are spread over two sequences of one job at a time.
		require.Equal(t, []share{{fleet, 2, 4, 2}, {van, 1, 0, 1}}, b.shares(ctx, t))
		// River fetches by priority, scheduled_at, id: the van's job comes
		// right after the fleet's two, not after its six.
		require.Equal(t, []string{"Fleet", "Fleet", "Van"}, b.strings(ctx, t, `
SELECT c.name FROM river_job j JOIN cars c ON c.id = (j.args->>'car_id')::bigint
 WHERE j.queue = $1 AND j.state = 'available' ORDER BY j.priority, j.scheduled_at, j.id`, reporting.QueueBulk))
	})

	t.Run("TheImportRunsWithinTheShare", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{outboxTable: true})
		fleet, van := b.car(ctx, t, "Fleet"), b.car(ctx, t, "Van")
		users := b.users(ctx, t, 70)
		b.enqueuePages(ctx, t, fleet, users[:60], 6)
		b.enqueuePages(ctx, t, van, users[60:], 1)
		b.drain(ctx, t)
		pending := b.strings(ctx, t, `SELECT id::text FROM river_job WHERE kind = $1 AND state = 'pending'`, reporting.CreateCarUsersInBulkKind)
		require.Len(t, pending, 4)

		// A worker (BulkMaxWorkers workers) whose probe counts, as each of
		// the fleet's jobs starts, the fleet's jobs available or running.
		probe := &shareProbe{pool: b.schema.Pool, car: fleet}
		b.start(ctx, t, []string{reporting.QueueBulk}, probe)
		require.Eventually(t, func() bool {
			return b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'completed'`, reporting.CreateCarUsersInBulkKind) == 7
		}, time.Minute, 10*time.Millisecond, "every bulk job completed: %v", b.bulkStates(ctx, t))

		require.Equal(t, map[string]int{"Fleet completed": 6, "Van completed": 1}, b.bulkStates(ctx, t))
		require.Equal(t, 60, b.count(ctx, t, `SELECT count(*) FROM car_users WHERE car_id = $1`, fleet))
		require.Equal(t, 10, b.count(ctx, t, `SELECT count(*) FROM car_users WHERE car_id = $1`, van))
		seen := probe.counts()
		require.Len(t, seen, 6, "one start per job of the fleet")
		require.Equal(t, reporting.BulkInFlightPerCar, slices.Max(seen), "never more of the fleet's jobs in the queue: %v", seen)
		require.Empty(t, b.shares(ctx, t), "every share is done")
		// The van's job started before any of the fleet's held back.
		require.Equal(t, 1, b.count(ctx, t, `
SELECT count(*) FROM river_job v WHERE v.kind = $1 AND (v.args->>'car_id')::bigint = $2
   AND v.attempted_at <= (SELECT min(attempted_at) FROM river_job WHERE id = ANY($3::bigint[]))`,
			reporting.CreateCarUsersInBulkKind, van, pending))
	})

	t.Run("DirectInsertRefusesIt", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		car := b.car(ctx, t, "Van")
		users := b.users(ctx, t, 3)

		err := b.svc.EnqueueCarUsersInBulk(ctx, car, users)
		require.ErrorIs(t, err, outbox.ErrSequencedDirect)
		b.requireNothingWritten(ctx, t)
	})
}

// enqueuePages enqueues the bulk creation of users for car in pages jobs,
// from as many concurrent transactions.
func (b *bundle) enqueuePages(ctx context.Context, t testing.TB, car int64, users []int64, pages int) {
	t.Helper()
	var (
		wg   sync.WaitGroup
		errs = make(chan error, pages)
	)
	size := (len(users) + pages - 1) / pages
	for lo := 0; lo < len(users); lo += size {
		wg.Go(func() { errs <- b.svc.EnqueueCarUsersInBulk(ctx, car, users[lo:min(lo+size, len(users))]) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// bulkStates counts the bulk jobs by "<car name> <state>".
func (b *bundle) bulkStates(ctx context.Context, t testing.TB) map[string]int {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx, `
SELECT c.name || ' ' || j.state, count(*)::int FROM river_job j JOIN cars c ON c.id = (j.args->>'car_id')::bigint
 WHERE j.kind = $1 GROUP BY 1`, reporting.CreateCarUsersInBulkKind)
	require.NoError(t, err)
	out := map[string]int{}
	var (
		key string
		n   int
	)
	_, err = pgx.ForEachRow(rows, []any{&key, &n}, func() error {
		out[key] = n
		return nil
	})
	require.NoError(t, err)
	return out
}

// share is what job_sequence_status says of one car's bulk jobs.
type share struct {
	Car                       int64
	Stripes, Waiting, Running int
}

// shares returns the bulk jobs' shares with unfinished jobs, by car.
func (b *bundle) shares(ctx context.Context, t testing.TB) []share {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx, `
SELECT split_part(seq_key, '#', 1)::bigint, count(*)::int, sum(waiting)::int, sum(running)::int
  FROM job_sequence_status WHERE namespace = $1 GROUP BY 1 ORDER BY 1`, reporting.CreateCarUsersInBulkKind)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[share])
	require.NoError(t, err)
	return out
}

// shareProbe is a River worker middleware: as each first attempt of a bulk
// job of car starts, it counts, in one snapshot, the car's bulk jobs that
// hold a place of its share (available, running, or snoozed or due to
// retry without having failed: a failed one leaves its place).
type shareProbe struct {
	river.MiddlewareDefaults

	pool *pgxpool.Pool
	car  int64

	mu   sync.Mutex
	seen []int
}

// Work implements rivertype.WorkerMiddleware.
func (p *shareProbe) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	var args reporting.CreateCarUsersInBulkArgs
	if job.Kind != reporting.CreateCarUsersInBulkKind || job.Attempt != 1 ||
		json.Unmarshal(job.EncodedArgs, &args) != nil || args.CarID != p.car {
		return doInner(ctx)
	}
	var n int
	if err := p.pool.QueryRow(ctx, `
SELECT count(*) FROM river_job
 WHERE kind = $1 AND args->>'car_id' = $2 AND state IN ('available', 'running', 'scheduled', 'retryable')
   AND coalesce(cardinality(errors), 0) = 0`, job.Kind, strconv.FormatInt(p.car, 10)).Scan(&n); err != nil {
		return err
	}
	p.mu.Lock()
	p.seen = append(p.seen, n)
	p.mu.Unlock()
	return doInner(ctx)
}

// counts returns what the probe counted, start by start.
func (p *shareProbe) counts() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.seen)
}
