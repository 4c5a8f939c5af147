package jobs_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// batchMemberArgs is a member of a job batch: it records its output, or is
// cancelled when Fail.
type batchMemberArgs struct {
	N    int  `json:"n"`
	Fail bool `json:"fail"`
}

func (batchMemberArgs) Kind() string { return "test.batch_member" }

type batchMemberWorker struct {
	river.WorkerDefaults[batchMemberArgs]
}

func (batchMemberWorker) Work(ctx context.Context, job *river.Job[batchMemberArgs]) error {
	if job.Args.Fail {
		return river.JobCancel(errors.New("member refused"))
	}
	return river.RecordOutput(ctx, map[string]int{"double": 2 * job.Args.N})
}

// batchDoneArgs is a job batch's callback.
type batchDoneArgs struct {
	Label string `json:"label"`
}

func (batchDoneArgs) Kind() string { return "test.batch_done" }

type batchDone struct {
	label   string
	done    jobs.JobBatchDone
	members []jobs.JobBatchMember
}

type batchDoneWorker struct {
	river.WorkerDefaults[batchDoneArgs]
	pool *pgxpool.Pool
	got  chan batchDone
}

func (w batchDoneWorker) Work(ctx context.Context, job *river.Job[batchDoneArgs]) error {
	d, ok := jobs.JobBatchDoneOf(job.JobRow)
	if !ok {
		return errors.New("no batch in the callback's metadata")
	}
	members, err := jobs.JobBatchMembers(ctx, w.pool, d.ID)
	if err != nil {
		return err
	}
	w.got <- batchDone{label: job.Args.Label, done: d, members: members}
	return nil
}

// batchEnv is a schema with the batch workers, an outbox, a relay and a
// working client.
type batchEnv struct {
	s   *dbtest.Schema
	ob  *outbox.Outbox
	rl  *relay.Relay
	got chan batchDone
}

func newBatchEnv(ctx context.Context, t *testing.T, direct bool) *batchEnv {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 10})
	got := make(chan batchDone, 100)
	reg := jobs.NewRegistry()
	q := reg.AddQueue("test", "batches", jobs.WeightNormal, nil)
	jobs.AddWorker(reg, q, batchMemberWorker{})
	jobs.AddWorker(reg, q, batchDoneWorker{pool: s.Pool, got: got})
	client, _ := jobstest.Client(ctx, t, s, reg, jobstest.Opts{Work: true})
	ob, err := jobs.NewOutbox(s.Pool, client, reg, &outbox.Config{DirectInsert: direct})
	require.NoError(t, err)
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name, Logger: discardLogger()})
	require.NoError(t, err)
	return &batchEnv{s: s, ob: ob, rl: rl, got: got}
}

// relay moves the committed outbox rows into River.
func (e *batchEnv) relay(ctx context.Context, t *testing.T) {
	t.Helper()
	_, err := e.rl.Drain(ctx)
	require.NoError(t, err)
}

// next waits for the next callback. Its FinishedAt, checked to be within
// the last minute, is zeroed so that the rest compares exactly.
func (e *batchEnv) next(t *testing.T) batchDone {
	t.Helper()
	select {
	case d := <-e.got:
		require.WithinDuration(t, time.Now(), d.done.FinishedAt, time.Minute)
		d.done.FinishedAt = time.Time{}
		return d
	case <-time.After(15 * time.Second):
		t.Fatal("no batch callback ran in 15 s")
		return batchDone{}
	}
}

// none fails when a callback runs within d.
func (e *batchEnv) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case x := <-e.got:
		t.Fatalf("an unexpected callback ran: %+v", x)
	case <-time.After(d):
	}
}

// TestJobBatch: a batch of five members enqueued in one transaction (through
// the outbox table and the relay, or straight into River) runs its success
// callback once, after all five, with their counts and outputs; a batch with
// a cancelled member runs its failure callback instead.
func TestJobBatch(t *testing.T) {
	t.Parallel()
	for _, direct := range []bool{false, true} {
		t.Run(fmt.Sprintf("direct=%t", direct), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			e := newBatchEnv(ctx, t, direct)
			var ids []string
			res, err := e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
				for _, fail := range []int{-1, 2} {
					jb, err := tx.NewJobBatch(&outbox.JobBatchOpts{
						OnSuccess: batchDoneArgs{Label: "ok"}, OnFailure: batchDoneArgs{Label: "failed"},
					})
					if err != nil {
						return err
					}
					ids = append(ids, jb.ID())
					for n := range 5 {
						if err := jb.Enqueue(batchMemberArgs{N: n, Fail: n == fail}, nil); err != nil {
							return err
						}
					}
				}
				// The same member twice is one member; the same job outside
				// the batch is another job.
				return tx.Enqueue(batchMemberArgs{N: 0}, nil)
			})
			require.NoError(t, err)
			require.Equal(t, 11, res.Enqueued)
			require.Equal(t, 2, res.JobBatches)
			require.Equal(t, 1, res.RoundTrips, "the batches go with the jobs' round trip")
			e.relay(ctx, t)

			got := map[string]batchDone{}
			for range 2 {
				d := e.next(t)
				got[d.done.ID] = d
			}
			ok, failed := got[ids[0]], got[ids[1]]
			require.Equal(t, "ok", ok.label)
			require.Equal(t, jobs.JobBatchDone{ID: ids[0], Expected: 5, Completed: 5}, ok.done)
			require.True(t, ok.done.Succeeded())
			require.Len(t, ok.members, 5)
			doubles := map[int]bool{}
			for _, m := range ok.members {
				require.Equal(t, "completed", m.State)
				var out struct{ Double int }
				require.NoError(t, json.Unmarshal(m.Output, &out))
				doubles[out.Double] = true
			}
			require.Equal(t, map[int]bool{0: true, 2: true, 4: true, 6: true, 8: true}, doubles)

			require.Equal(t, "failed", failed.label)
			require.Equal(t, jobs.JobBatchDone{ID: ids[1], Expected: 5, Completed: 4, Cancelled: 1}, failed.done)
			require.False(t, failed.done.Succeeded())
			e.none(t, 300*time.Millisecond)

			rows, err := e.s.Pool.Query(ctx, `SELECT id::text, state, expected, unfinished, callback_kind FROM job_batch_status ORDER BY state DESC`)
			require.NoError(t, err)
			type status struct {
				ID, State            string
				Expected, Unfinished int
				Callback             string
			}
			st, err := pgx.CollectRows(rows, pgx.RowToStructByPos[status])
			require.NoError(t, err)
			require.Equal(t, []status{{ids[0], "succeeded", 5, 0, "test.batch_done"}, {ids[1], "failed", 5, 0, "test.batch_done"}}, st)
			var callbacks int
			require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'test.batch_done'`).Scan(&callbacks))
			require.Equal(t, 2, callbacks)
		})
	}
}

// TestJobBatchRolledBack: a transaction that rolls back leaves no batch, no
// member and no callback.
func TestJobBatchRolledBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newBatchEnv(ctx, t, false)
	boom := errors.New("boom")
	_, err := e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		jb, err := tx.NewJobBatch(&outbox.JobBatchOpts{OnSuccess: batchDoneArgs{Label: "ok"}})
		if err != nil {
			return err
		}
		for n := range 3 {
			if err := jb.Enqueue(batchMemberArgs{N: n}, nil); err != nil {
				return err
			}
		}
		return boom
	})
	require.ErrorIs(t, err, boom)
	e.relay(ctx, t)
	var batches, members, outboxRows, jobRows int
	require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM job_batches), (SELECT count(*) FROM job_batch_members),
		(SELECT count(*) FROM outbox_jobs), (SELECT count(*) FROM river_job)`).Scan(&batches, &members, &outboxRows, &jobRows))
	require.Equal(t, []int{0, 0, 0, 0}, []int{batches, members, outboxRows, jobRows})
}

// TestJobBatchOpen: an open batch takes members from later transactions;
// its callback waits for the seal even when every member finished; a
// member added after the seal, or to a batch that does not exist, fails
// its transaction, which writes nothing.
func TestJobBatchOpen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newBatchEnv(ctx, t, false)
	var id string
	_, err := e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		jb, err := tx.NewJobBatch(&outbox.JobBatchOpts{OnSuccess: batchDoneArgs{Label: "ok"}, Open: true})
		if err != nil {
			return err
		}
		id = jb.ID()
		return jb.Enqueue(batchMemberArgs{N: 1}, nil)
	})
	require.NoError(t, err)
	_, err = e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		if err := tx.EnqueueInJobBatch(id, batchMemberArgs{N: 2}, nil); err != nil {
			return err
		}
		return tx.EnqueueInJobBatch(id, batchMemberArgs{N: 3}, nil)
	})
	require.NoError(t, err)
	e.relay(ctx, t)
	require.Eventually(t, func() bool {
		var completed int
		require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT completed FROM job_batches WHERE id = $1`, id).Scan(&completed))
		return completed == 3
	}, 10*time.Second, 20*time.Millisecond)
	e.none(t, 300*time.Millisecond)
	var state string
	require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT state FROM job_batch_status WHERE id = $1`, id).Scan(&state))
	require.Equal(t, "open", state)

	res, err := e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error { return tx.SealJobBatch(id) })
	require.NoError(t, err)
	require.Equal(t, outbox.FlushResult{JobBatches: 1, RoundTrips: 1}, res)
	d := e.next(t)
	require.Equal(t, jobs.JobBatchDone{ID: id, Expected: 3, Completed: 3}, d.done)
	require.Len(t, d.members, 3)

	countAll := func() int {
		var n int
		require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox_jobs) + (SELECT count(*) FROM river_job)`).Scan(&n))
		return n
	}
	before := countAll()
	_, err = e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		if err := tx.Enqueue(batchMemberArgs{N: 40}, nil); err != nil {
			return err
		}
		return tx.EnqueueInJobBatch(id, batchMemberArgs{N: 4}, nil)
	})
	require.ErrorIs(t, err, outbox.ErrJobBatchSealed)
	_, err = e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.EnqueueInJobBatch("0b7e4a4e-5c1e-4f3a-9d7e-2b1c0a9f8e7d", batchMemberArgs{N: 5}, nil)
	})
	require.ErrorIs(t, err, outbox.ErrJobBatchUnknown)
	_, err = e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.EnqueueInJobBatch("batch-1", batchMemberArgs{N: 6}, nil)
	})
	require.ErrorIs(t, err, outbox.ErrInvalidJobBatch)
	_, err = e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		jb, err := tx.NewJobBatch(nil)
		if err != nil {
			return err
		}
		return jb.Enqueue(batchMemberArgs{N: 7}, &river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true}})
	})
	require.ErrorIs(t, err, outbox.ErrInvalidOptions)
	require.Equal(t, before, countAll(), "a refused transaction writes nothing")
}

// TestJobBatchMembersFinishAtOnce: the members of a batch finish in
// transactions that start their UPDATE at the same instant (a barrier), or
// all in one statement; each batch's callback is inserted exactly once.
func TestJobBatchMembersFinishAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 10})
	reg := jobs.NewRegistry()
	q := reg.AddQueue("test", "batches", jobs.WeightNormal, nil)
	jobs.AddWorker(reg, q, batchMemberWorker{})
	jobs.AddWorker(reg, q, batchDoneWorker{pool: s.Pool, got: make(chan batchDone, 1)})
	client, _ := jobstest.Client(ctx, t, s, reg, jobstest.Opts{}) // inserts only: nothing works the jobs
	ob, err := jobs.NewOutbox(s.Pool, client, reg, &outbox.Config{DirectInsert: true})
	require.NoError(t, err)

	const rounds, members = 30, 4
	for round := range rounds {
		var id string
		_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			jb, err := tx.NewJobBatch(&outbox.JobBatchOpts{OnSuccess: batchDoneArgs{Label: "ok"}})
			if err != nil {
				return err
			}
			id = jb.ID()
			for n := range members {
				if err := jb.Enqueue(batchMemberArgs{N: n}, nil); err != nil {
					return err
				}
			}
			return nil
		})
		require.NoError(t, err)
		var ids []int64
		rows, err := s.Pool.Query(ctx, `SELECT id FROM river_job WHERE metadata->>'aftercommit_batch' = $1`, id)
		require.NoError(t, err)
		ids, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		require.NoError(t, err)
		require.Len(t, ids, members)

		if round%3 == 2 {
			// One statement finishes them all.
			_, err := s.Pool.Exec(ctx, `UPDATE river_job SET state = 'completed', finalized_at = now() WHERE id = ANY ($1)`, ids)
			require.NoError(t, err)
		} else {
			var ready, gate sync.WaitGroup
			ready.Add(members)
			gate.Add(1)
			errs := make(chan error, members)
			var wg sync.WaitGroup
			for _, jobID := range ids {
				wg.Go(func() {
					err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
						if _, err := tx.Exec(ctx, `SELECT 1`); err != nil {
							return err
						}
						ready.Done()
						gate.Wait()
						_, err := tx.Exec(ctx, `UPDATE river_job SET state = 'completed', finalized_at = now() WHERE id = $1`, jobID)
						return err
					})
					errs <- err
				})
			}
			ready.Wait()
			gate.Done()
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
		}
		var callbacks, completed int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM river_job WHERE kind = 'test.batch_done' AND metadata->'aftercommit_batch_done'->>'id' = $1::text),
			(SELECT completed FROM job_batches WHERE id = $1::text::uuid)`, id).Scan(&callbacks, &completed))
		require.Equal(t, []int{1, members}, []int{callbacks, completed}, "round %d", round)
	}
}

// TestJobBatchMetrics: a client built with Metrics counts a batch when its
// callback first starts, by outcome, and observes the delay from the last
// member's finish to that start.
func TestJobBatchMetrics(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 10})
	got := make(chan batchDone, 10)
	reg := jobs.NewRegistry()
	q := reg.AddQueue("test", "batches", jobs.WeightNormal, nil)
	jobs.AddWorker(reg, q, batchMemberWorker{})
	jobs.AddWorker(reg, q, batchDoneWorker{pool: s.Pool, got: got})
	metrics := jobs.NewMetrics(nil)
	preg := prometheus.NewRegistry()
	preg.MustRegister(metrics)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Queues: []string{jobs.AllQueues}, Schema: s.Name, Metrics: metrics})
	require.NoError(t, err)
	ob, err := jobs.NewOutbox(s.Pool, client, reg, &outbox.Config{DirectInsert: true})
	require.NoError(t, err)
	for _, fail := range []bool{false, false, true} {
		_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			jb, err := tx.NewJobBatch(&outbox.JobBatchOpts{OnSuccess: batchDoneArgs{Label: "ok"}, OnFailure: batchDoneArgs{Label: "failed"}})
			if err != nil {
				return err
			}
			if err := jb.Enqueue(batchMemberArgs{N: 1}, nil); err != nil {
				return err
			}
			return jb.Enqueue(batchMemberArgs{N: 2, Fail: fail}, nil)
		})
		require.NoError(t, err)
	}
	require.NoError(t, client.Start(ctx))
	t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
	for range 3 {
		select {
		case <-got:
		case <-time.After(15 * time.Second):
			t.Fatal("a batch callback did not run")
		}
	}
	families, err := preg.Gather()
	require.NoError(t, err)
	finished := map[string]float64{}
	var delays uint64
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch f.GetName() {
			case "aftercommit_job_batches_finished_total":
				finished[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			case "aftercommit_job_batch_callback_delay_seconds":
				delays = m.GetHistogram().GetSampleCount()
			}
		}
	}
	require.Equal(t, map[string]float64{"succeeded": 2, "failed": 1}, finished)
	require.Equal(t, uint64(3), delays)
}

// TestJobBatchMemberCancelledAtInsert: a member that waits for a job that
// failed (or is unknown) is cancelled as it is inserted, and its batch
// counts it: the batch finishes with its failure callback.
func TestJobBatchMemberCancelledAtInsert(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	const id = "3c1d2e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
	_, err := s.Pool.Exec(ctx, `SELECT job_batch_add_many(ARRAY[$1::uuid], ARRAY[2], ARRAY[true], ARRAY[true],
		ARRAY['{"kind": "test.batch_done", "args": {"label": "ok"}}'::jsonb], ARRAY['{"kind": "test.batch_done", "args": {"label": "failed"}}'::jsonb])`, id)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `INSERT INTO river_job (args, kind, max_attempts, queue, state, metadata) VALUES
		('{"n": 1}', 'test.batch_member', 25, 'default', 'available', jsonb_build_object('aftercommit_batch', $1::text)),
		('{"n": 2}', 'test.batch_member', 25, 'default', 'available',
		 jsonb_build_object('aftercommit_batch', $1::text, 'aftercommit_after', jsonb_build_object('refs', ARRAY['0b7e4a4e-5c1e-4f3a-9d7e-2b1c0a9f8e7d'])))`, id)
	require.NoError(t, err)
	var states []string
	rows, err := s.Pool.Query(ctx, `SELECT state::text FROM river_job ORDER BY id`)
	require.NoError(t, err)
	states, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"available", "cancelled"}, states)
	_, err = s.Pool.Exec(ctx, `UPDATE river_job SET state = 'completed', finalized_at = now() WHERE args->>'n' = '1'`)
	require.NoError(t, err)
	var state, callback string
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT b.state, j.args->>'label' FROM job_batch_status b JOIN river_job j ON j.id = b.callback_job_id
		WHERE b.id = $1::uuid`, id).Scan(&state, &callback))
	require.Equal(t, []string{"failed", "failed"}, []string{state, callback})
}
