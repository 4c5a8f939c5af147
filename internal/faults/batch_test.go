//go:build long

package faults_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// batchProduceSQL is one producer transaction, from SQL as any producer
// can write it: it inserts two ping rows, one for each of the batch's
// callbacks, records the batch (job_batch_add_many: $2 members, sealed, a
// ping of the first row for success and of the second for failure) and
// enqueues the members into the outbox with the batch in their metadata:
// no-op pings (ping_id 0: no row, so that 100,000 of them run in a couple
// of minutes beside the rest of the suite). $3 lists, per member, the
// attempts that fail on purpose (fail_attempts); a member whose first
// attempt fails and has max_attempts 1 ($4, per member) is discarded. It
// returns the callbacks' ping IDs.
const batchProduceSQL = `
WITH p AS (
    INSERT INTO pings (note) SELECT 'batch ' || $1::text || ' #' || g FROM generate_series(1, 2) AS g
    RETURNING id
), ids AS (
    SELECT array_agg(id ORDER BY id) AS ids FROM p
), b AS (
    SELECT job_batch_add_many(ARRAY[$1::uuid], ARRAY[$2::int], ARRAY[true], ARRAY[true],
               ARRAY[jsonb_build_object('kind', 'aftercommit.ping', 'args', jsonb_build_object('ping_id', ids[1]))],
               ARRAY[jsonb_build_object('kind', 'aftercommit.ping', 'args', jsonb_build_object('ping_id', ids[2]))])
      FROM ids
), e AS (
    SELECT count(aftercommit_enqueue('aftercommit.ping',
               jsonb_build_object('ping_id', 0, 'fail_attempts', m.fail),
               max_attempts => m.max_attempts,
               metadata => jsonb_build_object('aftercommit_batch', $1::text))) AS n
      FROM b, unnest($3::int[], $4::int[]) AS m(fail, max_attempts)
)
SELECT ids[1], ids[2], e.n FROM ids, e`

// TestJobBatchesAcrossThreeWorkersWithAKill: 10,000 job batches of 1 to 20
// ping members, from 8 producers writing SQL, worked by three cmd/worker
// processes; 5 % of the members fail their first attempt and are retried,
// 3 % fail it with max_attempts 1 and are discarded; the leader is killed
// with kill -9 a third of the way. Every batch's callback ran exactly once
// — the success callback's ping for a batch whose members all completed,
// the failure one's otherwise, never both — with the right counts in its
// metadata, and every member finished as planned.
func TestJobBatchesAcrossThreeWorkersWithAKill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const (
		batches     = 10_000
		producers   = 8
		jobTimeout  = 2 * time.Second
		rescueAfter = 3 * time.Second
	)
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: producers + 2})

	names := []string{"b1", "b2", "b3"}
	byName := map[string]*workerProc{}
	for _, name := range names {
		byName[name] = startWorkerConns(t, s, name, 4, nil,
			"--queues", "default", "--job-timeout", jobTimeout.String(), "--rescue-after", rescueAfter.String())
	}
	procs := map[string]*workerProc{}
	for _, name := range names {
		procs[byName[name].clientID(t)] = byName[name]
	}

	// The plan: each batch's members and what each does.
	type plannedBatch struct {
		id         string
		fail, maxA []int32
		discarded  int
	}
	plan := make([]plannedBatch, batches)
	members := 0
	for i := range plan {
		n := 1 + rand.IntN(20)
		p := plannedBatch{id: fmt.Sprintf("%08x-0000-4000-8000-%012x", i, rand.Int64N(1<<48)), fail: make([]int32, n), maxA: make([]int32, n)}
		for m := range n {
			p.maxA[m] = 25
			switch r := rand.Float64(); {
			case r < 0.03:
				p.fail[m], p.maxA[m] = 1, 1
				p.discarded++
			case r < 0.08:
				p.fail[m] = 1
			}
		}
		plan[i] = p
		members += n
	}

	// The producers.
	type produced struct{ okPing, failPing int64 }
	results := make([]produced, batches)
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errMu    sync.Mutex
		prodErrs []error
	)
	start := time.Now()
	for range producers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= batches {
					return
				}
				p := plan[i]
				var r produced
				var n int
				if err := s.Pool.QueryRow(ctx, batchProduceSQL, p.id, len(p.fail), p.fail, p.maxA).Scan(&r.okPing, &r.failPing, &n); err != nil || n != len(p.fail) {
					errMu.Lock()
					prodErrs = append(prodErrs, fmt.Errorf("producing batch %d (%d members, %d enqueued): %w", i, len(p.fail), n, err))
					errMu.Unlock()
					return
				}
				results[i] = r
			}
		})
	}
	produceDone := make(chan struct{})
	go func() { wg.Wait(); close(produceDone) }()

	// Kill the leader once a third of the batches finished.
	for {
		var finished int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM job_batches WHERE finished_at IS NOT NULL`).Scan(&finished))
		if finished >= batches/3 {
			break
		}
		errMu.Lock()
		require.Empty(t, prodErrs)
		errMu.Unlock()
		require.Less(t, time.Since(start), 4*time.Minute, "a third of the batches finished within 4 min: %d", finished)
		time.Sleep(50 * time.Millisecond)
	}
	victimID, err := leader(ctx, s)
	require.NoError(t, err)
	if victimID == "" {
		for id := range procs {
			victimID = id
			break
		}
	}
	victim := procs[victimID]
	require.NotNil(t, victim, "the leader %s is one of the three processes", victimID)
	var runningAtKill int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'running' AND attempted_by[cardinality(attempted_by)] = $1`,
		victimID).Scan(&runningAtKill))
	victim.kill(t)
	killedAt := time.Now()
	<-produceDone
	require.Empty(t, prodErrs)

	// The queue the workers work: the leader also enqueues the domains'
	// periodic jobs (inventory's prune, each minute) into queues nobody
	// works here, and a run slower than a minute would wait for them.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var unfinishedBatches, unfinishedJobs, outbox int
		if !assert.NoError(c, s.Pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM job_batches WHERE finished_at IS NULL),
       (SELECT count(*) FROM river_job WHERE queue = 'default' AND state NOT IN ('completed', 'discarded', 'cancelled')),
       (SELECT count(*) FROM outbox_jobs)`).Scan(&unfinishedBatches, &unfinishedJobs, &outbox)) {
			return
		}
		assert.Zero(c, unfinishedBatches, "batches not finished")
		assert.Zero(c, unfinishedJobs, "jobs not finished")
		assert.Zero(c, outbox, "outbox rows not relayed")
	}, 8*time.Minute, 200*time.Millisecond, "every batch and its callback finished")
	duration := time.Since(start)

	// Every batch: its counts, its callback's metadata, its callback pings.
	type batchRow struct {
		ID                                     string
		Expected, Completed, Discarded, Cancel int
		CallbackPing                           *int64
		CallbackState                          *string
		DoneExpected, DoneCompleted, DoneDisc  *int
	}
	rows, err := s.Pool.Query(ctx, `SELECT b.id::text, b.expected, b.completed, b.discarded, b.cancelled,
		(j.args->>'ping_id')::bigint, j.state::text,
		(j.metadata->'aftercommit_batch_done'->>'expected')::int, (j.metadata->'aftercommit_batch_done'->>'completed')::int,
		(j.metadata->'aftercommit_batch_done'->>'discarded')::int
		FROM job_batches b LEFT JOIN river_job j ON j.id = b.callback_job_id`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[batchRow])
	require.NoError(t, err)
	require.Len(t, got, batches)
	byID := map[string]batchRow{}
	for _, b := range got {
		byID[b.ID] = b
	}
	pingCount := map[int64]int{}
	prow, err := s.Pool.Query(ctx, `SELECT id, ping_count FROM pings`)
	require.NoError(t, err)
	var pid int64
	var pc int
	_, err = pgx.ForEachRow(prow, []any{&pid, &pc}, func() error { pingCount[pid] = pc; return nil })
	require.NoError(t, err)
	var callbackJobs int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE metadata ? 'aftercommit_batch_done'`).Scan(&callbackJobs))
	require.Equal(t, batches, callbackJobs, "one callback job per batch")

	wrong := 0
	for i, p := range plan {
		b, ok := byID[p.id]
		if !assert.True(t, ok, "batch %d recorded", i) {
			wrong++
			continue
		}
		n := len(p.fail)
		want := []int{n, n - p.discarded, p.discarded, 0}
		okPing, failPing := results[i].okPing, results[i].failPing
		ran, idle := okPing, failPing
		if p.discarded > 0 {
			ran, idle = failPing, okPing
		}
		if !assert.Equal(t, want, []int{b.Expected, b.Completed, b.Discarded, b.Cancel}, "batch %d counts", i) ||
			!assert.NotNil(t, b.CallbackPing, "batch %d has a callback job", i) ||
			!assert.Equal(t, ran, *b.CallbackPing, "batch %d's callback is the right one", i) ||
			!assert.Equal(t, "completed", *b.CallbackState, "batch %d's callback completed", i) ||
			!assert.Equal(t, []int{n, n - p.discarded, p.discarded}, []int{*b.DoneExpected, *b.DoneCompleted, *b.DoneDisc}, "batch %d's callback metadata", i) ||
			!assert.Equal(t, 1, pingCount[ran], "batch %d's callback ran once", i) ||
			!assert.Equal(t, 0, pingCount[idle], "batch %d's other callback never ran", i) {
			wrong++
		}
		if wrong > 10 {
			t.FailNow()
		}
	}
	var memberJobs, completedMembers, discardedMembers, plannedDiscards int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE state = 'completed'), count(*) FILTER (WHERE state = 'discarded')
		FROM river_job WHERE metadata ? 'aftercommit_batch'`).Scan(&memberJobs, &completedMembers, &discardedMembers))
	for _, p := range plan {
		plannedDiscards += p.discarded
	}
	require.Equal(t, []int{members, members - plannedDiscards, plannedDiscards}, []int{memberJobs, completedMembers, discardedMembers})
	unmarkedDiscarded := discardedMembers
	var p99 float64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM j.attempted_at - b.finished_at))
		FROM job_batches b JOIN river_job j ON j.id = b.callback_job_id`).Scan(&p99))
	t.Logf("%d batches, %d members (%d discarded) in %s; leader %s killed with %d jobs running, %s after the start; callback start p99 %.0f ms after the last member",
		batches, members, unmarkedDiscarded, duration.Round(time.Second), victimID, runningAtKill, killedAt.Sub(start).Round(time.Second), p99*1000)
}
