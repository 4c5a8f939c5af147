package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// seqArgs is a job of a sequence: the N-th of Key (N counts the commits of
// Key's transactions). Fail makes its first Fail attempts fail; WaitFor
// makes every attempt fail while Key has fewer than WaitFor effects (such a
// job gets 10,000 attempts, so it fails until then however slow the
// machine).
type seqArgs struct {
	Key      string `json:"key"`
	N        int    `json:"n"`
	Fail     int    `json:"fail,omitempty"`
	WaitFor  int    `json:"wait_for,omitempty"`
	Continue bool   `json:"continue,omitempty"`
}

func (seqArgs) Kind() string { return "test.seq" }

// seqWorker records each job's effect (key, n) in the transaction that
// completes it, and counts the times two jobs of one key ran at once in
// this process.
type seqWorker struct {
	river.WorkerDefaults[seqArgs]
	pool    *dbtest.Schema
	running *sync.Map // key → *atomic.Int32
	overlap *atomic.Int64
}

func (w seqWorker) SequenceFor(args seqArgs) jobs.Sequence {
	seq := jobs.Sequence{Key: args.Key}
	if args.Continue {
		seq.OnFailure = jobs.SequenceContinue
	}
	return seq
}

func (w seqWorker) NextRetry(*river.Job[seqArgs]) time.Time {
	return time.Now().Add(20 * time.Millisecond)
}

func (w seqWorker) Work(ctx context.Context, job *river.Job[seqArgs]) error {
	v, _ := w.running.LoadOrStore(job.Args.Key, new(atomic.Int32))
	n := v.(*atomic.Int32) //nolint:forcetypeassert,errcheck // only *atomic.Int32 is stored
	if n.Add(1) > 1 && !job.Args.Continue {
		w.overlap.Add(1)
	}
	// The job counts as running until just before the COMMIT that
	// completes it: that COMMIT lets the next member start.
	var once sync.Once
	done := func() { once.Do(func() { n.Add(-1) }) }
	defer done()
	time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
	if job.Attempt <= job.Args.Fail {
		return fmt.Errorf("failing attempt %d on purpose", job.Attempt)
	}
	if job.Args.WaitFor > 0 {
		var have int
		if err := w.pool.Pool.QueryRow(ctx, `SELECT count(*) FROM test_seq_effects WHERE seq_key = $1`, job.Args.Key).Scan(&have); err != nil {
			return err
		}
		if have < job.Args.WaitFor {
			return fmt.Errorf("failing attempt %d on purpose: %d of %d effects", job.Attempt, have, job.Args.WaitFor)
		}
	}
	return pgx.BeginFunc(ctx, w.pool.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO test_seq_effects (seq_key, n, job_id) VALUES ($1, $2, $3)`, job.Args.Key, job.Args.N, job.ID); err != nil {
			return err
		}
		done()
		return jobs.CompleteTx(ctx, tx, job, nil)
	})
}

const seqScratchSQL = `
CREATE TABLE test_seq_counters (seq_key text PRIMARY KEY, n int NOT NULL DEFAULT 0);
CREATE TABLE test_seq_effects (id bigserial PRIMARY KEY, seq_key text NOT NULL, n int NOT NULL, job_id bigint NOT NULL UNIQUE,
	at timestamptz NOT NULL DEFAULT clock_timestamp(), UNIQUE (seq_key, n));`

const seqScratchDropSQL = `DROP TABLE test_seq_counters; DROP TABLE test_seq_effects;`

// seqFixture is a schema with the sequence worker registered, its scratch
// tables, and clients working it.
type seqFixture struct {
	s       *dbtest.Schema
	reg     *jobs.Registry
	client  *river.Client[pgx.Tx]
	ob      *outbox.Outbox
	overlap atomic.Int64
}

func newSeqFixture(ctx context.Context, t *testing.T, clients int) *seqFixture {
	t.Helper()
	f := &seqFixture{s: dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 20})}
	f.s.Scratch(ctx, t, seqScratchSQL, seqScratchDropSQL)
	f.reg = jobs.NewRegistry()
	queue := f.reg.AddQueue("test", "seq", jobs.WeightNormal, nil)
	jobs.AddWorker(f.reg, queue, seqWorker{pool: f.s, running: &sync.Map{}, overlap: &f.overlap})
	for range clients {
		c, _ := jobstest.Client(ctx, t, f.s, f.reg, jobstest.Opts{Work: true, MaxWorkers: 8})
		if f.client == nil {
			f.client = c
		}
	}
	if clients == 0 {
		f.client, _ = jobstest.Client(ctx, t, f.s, f.reg, jobstest.Opts{})
	}
	var err error
	f.ob, err = jobs.NewOutbox(f.s.Pool, f.client, f.reg, nil)
	require.NoError(t, err)
	return f
}

// enqueue commits one job of key, numbered in the order of the key's
// commits: the transaction takes the key's counter row first, so the
// transactions of one key commit one at a time.
func (f *seqFixture) enqueue(ctx context.Context, key string, mod func(*seqArgs)) error {
	var n int
	_, err := f.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO test_seq_counters (seq_key, n) VALUES ($1, 1)
			ON CONFLICT (seq_key) DO UPDATE SET n = test_seq_counters.n + 1 RETURNING n`, key).Scan(&n); err != nil {
			return err
		}
		a := seqArgs{Key: key, N: n}
		if mod != nil {
			mod(&a)
		}
		var opts *river.InsertOpts
		if a.WaitFor > 0 {
			opts = &river.InsertOpts{MaxAttempts: 10_000}
		}
		return tx.Enqueue(a, opts)
	})
	return err
}

// seqEffects returns the n of each key's effects in the order they
// committed.
func (f *seqFixture) seqEffects(ctx context.Context, t *testing.T) map[string][]int {
	t.Helper()
	rows, err := f.s.Pool.Query(ctx, `SELECT seq_key, n FROM test_seq_effects ORDER BY id`)
	require.NoError(t, err)
	out := map[string][]int{}
	for rows.Next() {
		var (
			k string
			n int
		)
		require.NoError(t, rows.Scan(&k, &n))
		out[k] = append(out[k], n)
	}
	require.NoError(t, rows.Err())
	return out
}

// seqInvariant fails when a sequence has more than one member that may
// run (anything but pending or finished), which a held sequence never
// has.
const seqInvariantSQL = `SELECT coalesce(string_agg(k || ': ' || c, ', '), '') FROM (
	SELECT metadata->'aftercommit_seq'->>'key' AS k, count(*) AS c FROM river_job
	 WHERE state IN ('available', 'running', 'retryable', 'scheduled') AND metadata ? 'aftercommit_seq'
	 GROUP BY 1 HAVING count(*) > 1) AS x`

func (f *seqFixture) waitEmpty(ctx context.Context, t *testing.T, d time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		var left int
		require.NoError(t, f.s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM river_job WHERE state NOT IN ('completed', 'discarded', 'cancelled'))
			+ (SELECT count(*) FROM outbox_jobs) + (SELECT count(*) FROM job_sequences) + (SELECT count(*) FROM job_sequence_members)`).Scan(&left))
		return left == 0
	}, d, 10*time.Millisecond, "jobs or sequences left: %s", jobStateCounts(ctx, t, f.s))
}

func jobStateCounts(ctx context.Context, t *testing.T, s *dbtest.Schema) string {
	var out string
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT coalesce(string_agg(state || ' ' || c, ', '), '') FROM (
		SELECT state::text, count(*) AS c FROM river_job GROUP BY 1 ORDER BY 1) x`).Scan(&out))
	return out
}

// TestSequenceOrder: 4 keys × 40 jobs, enqueued by 8 goroutines whose
// transactions of one key conflict (so their commit order is the order of
// the key's counter), a seventh of them failing their first attempt, worked
// by two clients. Every key's effects committed in exactly its commit
// order, each once; no key ever had two members that could run (checked
// every few milliseconds while they ran); nothing is left in the sequence
// tables.
func TestSequenceOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newSeqFixture(ctx, t, 2)
	const keys, perKey = 4, 40

	stop := make(chan struct{})
	var violations []string
	var checks atomic.Int64
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		for {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
			}
			var v string
			if err := f.s.Pool.QueryRow(ctx, seqInvariantSQL).Scan(&v); err == nil && v != "" {
				violations = append(violations, v)
			}
			checks.Add(1)
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, keys*perKey)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("k%d", g%keys)
			for range perKey / 2 {
				err := f.enqueue(ctx, key, func(a *seqArgs) {
					if a.N%7 == 3 {
						a.Fail = 1
					}
				})
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	f.waitEmpty(ctx, t, 60*time.Second)
	close(stop)
	<-checked

	require.Empty(t, violations, "a sequence had two members that could run")
	require.Positive(t, checks.Load())
	require.Zero(t, f.overlap.Load(), "two jobs of one key ran at once")
	effects := f.seqEffects(ctx, t)
	require.Len(t, effects, keys)
	want := make([]int, perKey)
	for i := range want {
		want[i] = i + 1
	}
	for k, got := range effects {
		require.Equal(t, want, got, "key %s", k)
	}
	var failed int
	require.NoError(t, f.s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'completed' AND attempt = 2`).Scan(&failed))
	require.Equal(t, keys*(perKey/7+1), failed, "the jobs that failed once ran twice")
	t.Logf("%d invariant checks", checks.Load())
}

// seqJob is one job of a sequence as river_job holds it.
type seqJobRow struct {
	ID      int64
	N       int
	State   string
	Attempt int
}

func seqJobs(ctx context.Context, t *testing.T, s *dbtest.Schema, key string) []seqJobRow {
	t.Helper()
	rows, err := s.Pool.Query(ctx, `SELECT id, (args->>'n')::int, state::text, attempt FROM river_job
		WHERE kind = 'test.seq' AND args->>'key' = $1 ORDER BY (args->>'n')::int`, key)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[seqJobRow])
	require.NoError(t, err)
	return out
}

type seqStatus struct {
	Waiting   int
	HeadJobID *int64
	HeadState *string
	Errors    int
	Held      bool
	Stuck     bool
}

func sequenceStatus(ctx context.Context, t *testing.T, s *dbtest.Schema, key string) (seqStatus, bool) {
	t.Helper()
	var st seqStatus
	err := s.Pool.QueryRow(ctx, `SELECT waiting, head_job_id, head_state::text, head_errors, held, stuck
		FROM job_sequence_status WHERE namespace = 'test.seq' AND seq_key = $1`, key).
		Scan(&st.Waiting, &st.HeadJobID, &st.HeadState, &st.Errors, &st.Held, &st.Stuck)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, false
	}
	require.NoError(t, err)
	return st, true
}

// TestSequenceHeldUntilFinished: a head that keeps failing holds its
// sequence — the jobs behind it stay pending, and job_sequence_status says
// held, then stuck after 3 errors — until it is discarded (its attempts
// ran out) or cancelled; then the next job runs, and the rest follow in
// order.
func TestSequenceHeldUntilFinished(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newSeqFixture(ctx, t, 1)

	// "discard": the head fails twice, its last attempt: discarded.
	// "cancel": the head fails forever (max 25 attempts); cancelled by hand.
	for _, key := range []string{"discard", "cancel"} {
		for i := range 3 {
			err := f.enqueue(ctx, key, func(a *seqArgs) {
				if i == 0 {
					a.Fail = 25
				}
			})
			require.NoError(t, err)
		}
	}
	_, err := f.s.Pool.Exec(ctx, `UPDATE river_job SET max_attempts = 2 WHERE args->>'key' = 'discard' AND (args->>'n')::int = 1`)
	require.NoError(t, err)
	// The relay may not have moved them yet: set it in the outbox too.
	_, err = f.s.Pool.Exec(ctx, `UPDATE outbox_jobs SET max_attempts = 2 WHERE args->>'key' = 'discard' AND (args->>'n')::int = 1`)
	require.NoError(t, err)

	// The cancel key's head fails 3 times: held, then stuck, the others
	// pending all along.
	var st seqStatus
	// Held is read between attempts: while the head runs its next attempt
	// it is running, not held.
	require.Eventually(t, func() bool {
		var ok bool
		st, ok = sequenceStatus(ctx, t, f.s, "cancel")
		return ok && st.Errors >= 3 && st.Held
	}, 20*time.Second, 5*time.Millisecond)
	require.True(t, st.Stuck, "%+v", st)
	require.Equal(t, 2, st.Waiting)
	jobsOfCancel := seqJobs(ctx, t, f.s, "cancel")
	require.Len(t, jobsOfCancel, 3)
	require.Equal(t, *st.HeadJobID, jobsOfCancel[0].ID)
	require.Equal(t, "pending", jobsOfCancel[1].State)
	require.Equal(t, "pending", jobsOfCancel[2].State)

	_, err = f.client.JobCancel(ctx, jobsOfCancel[0].ID)
	require.NoError(t, err)
	f.waitEmpty(ctx, t, 20*time.Second)

	for _, key := range []string{"discard", "cancel"} {
		got := seqJobs(ctx, t, f.s, key)
		require.Len(t, got, 3)
		require.Equal(t, map[string]string{"discard": "discarded", "cancel": "cancelled"}[key], got[0].State)
		require.Equal(t, "completed", got[1].State)
		require.Equal(t, "completed", got[2].State)
	}
	require.Equal(t, map[string][]int{"discard": {2, 3}, "cancel": {2, 3}}, f.seqEffects(ctx, t))
}

// TestSequenceContinue: in a "continue" sequence a failing head lets the
// next job start; it retries on its own and completes after them. The head
// fails until both others have their effects, so on a sequence that held
// it the test would time out, whatever the machine's speed.
func TestSequenceContinue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newSeqFixture(ctx, t, 1)
	for i := range 3 {
		err := f.enqueue(ctx, "c", func(a *seqArgs) {
			a.Continue = true
			if i == 0 {
				a.WaitFor = 2 // retried every 20 ms until 2 and 3 are done
			}
		})
		require.NoError(t, err)
	}
	f.waitEmpty(ctx, t, 20*time.Second)
	require.Equal(t, map[string][]int{"c": {2, 3, 1}}, f.seqEffects(ctx, t))
}

// TestSequencePendingMemberLeaves: a waiting member cancelled or deleted
// leaves its sequence; the others run in order, the sequence ends empty.
func TestSequencePendingMemberLeaves(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newSeqFixture(ctx, t, 0) // nothing works: the relay is drained by hand
	rl := jobstest.Relay(t, f.s, f.client, f.reg)
	for i := range 4 {
		err := f.enqueue(ctx, "p", func(a *seqArgs) {
			if i == 0 {
				a.Fail = 1
			}
		})
		require.NoError(t, err)
	}
	_, err := rl.Drain(ctx)
	require.NoError(t, err)
	got := seqJobs(ctx, t, f.s, "p")
	require.Equal(t, []string{"available", "pending", "pending", "pending"},
		[]string{got[0].State, got[1].State, got[2].State, got[3].State})
	st, ok := sequenceStatus(ctx, t, f.s, "p")
	require.True(t, ok)
	require.Equal(t, seqStatus{Waiting: 3, HeadJobID: &got[0].ID, HeadState: ptr("available")}, st)

	_, err = f.client.JobCancel(ctx, got[1].ID)
	require.NoError(t, err)
	_, err = f.client.JobDelete(ctx, got[2].ID)
	require.NoError(t, err)
	st, _ = sequenceStatus(ctx, t, f.s, "p")
	require.Equal(t, 1, st.Waiting)

	// Now work them.
	c, _ := jobstest.Client(ctx, t, f.s, f.reg, jobstest.Opts{Work: true})
	require.NotNil(t, c)
	f.waitEmpty(ctx, t, 20*time.Second)
	require.Equal(t, map[string][]int{"p": {1, 4}}, f.seqEffects(ctx, t))
}

// TestSequencedEnqueueRefused: a job of a sequence cannot go straight into
// river_job (DirectInsert), nor ask to be pending or unique; the
// transaction writes nothing.
func TestSequencedEnqueueRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newSeqFixture(ctx, t, 0)
	direct, err := jobs.NewOutbox(f.s.Pool, f.client, f.reg, &outbox.Config{DirectInsert: true})
	require.NoError(t, err)
	_, err = direct.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(seqArgs{Key: "a", N: 1}, nil)
	})
	require.ErrorIs(t, err, outbox.ErrSequencedDirect)
	for _, opts := range []*river.InsertOpts{{Pending: true}, {UniqueOpts: river.UniqueOpts{ByArgs: true}}} {
		_, err = f.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(seqArgs{Key: "a", N: 1}, opts)
		})
		require.ErrorIs(t, err, outbox.ErrInvalidOptions)
		require.ErrorContains(t, err, "a job of a sequence can be neither unique nor inserted pending")
	}
	// Not in a sequence (no key): DirectInsert takes it.
	_, err = direct.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(seqArgs{N: 1}, nil)
	})
	require.NoError(t, err)
	require.Equal(t, "available 1", jobStateCounts(ctx, t, f.s))
	var outboxRows int
	require.NoError(t, f.s.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_jobs`).Scan(&outboxRows))
	require.Zero(t, outboxRows)
}

// TestPingSequenceArgs: a ping's sequence and failure fields are checked at
// the boundary, each refusal naming its field; a ping row with a bad one
// becomes a dead outbox row with that reason, and no job or sequence is
// written. SequenceFor turns valid ones into the sequence.
func TestPingSequenceArgs(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", jobs.SequenceNameMax+1)
	for _, tc := range []struct {
		args  jobs.PingArgs
		field string
	}{
		{jobs.PingArgs{SeqKey: long}, "seq_key"},
		{jobs.PingArgs{SeqContinue: true}, "seq_key"},
		{jobs.PingArgs{FailAttempts: -1}, "fail_attempts"},
		{jobs.PingArgs{FailAttempts: jobs.PingMaxFailAttempts + 1}, "fail_attempts"},
	} {
		err := tc.args.Validate()
		var fe *jobs.FieldError
		require.True(t, errors.As(err, &fe), "%+v: %v", tc.args, err)
		require.Equal(t, tc.field, fe.Field)
	}
	w := &jobs.PingWorker{}
	require.Equal(t, jobs.Sequence{Key: "a"}, w.SequenceFor(jobs.PingArgs{SeqKey: "a"}))
	require.Equal(t, jobs.Sequence{Key: "a", OnFailure: jobs.SequenceContinue}, w.SequenceFor(jobs.PingArgs{SeqKey: "a", SeqContinue: true}))

	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	reg := jobs.NewRegistry()
	jobs.RegisterPing(reg, s.Pool)
	client, _ := jobstest.Client(ctx, t, s, reg, jobstest.Opts{})
	_, err := s.Pool.Exec(ctx, `SELECT aftercommit_enqueue('aftercommit.ping', jsonb_build_object('ping_id', 0, 'seq_key', $1::text))`, long)
	require.NoError(t, err)
	_, err = jobstest.Relay(t, s, client, reg).Drain(ctx)
	require.NoError(t, err)
	var reason string
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT reason FROM outbox_dead_jobs`).Scan(&reason))
	require.Contains(t, reason, "seq_key")
	require.Contains(t, reason, "must be at most 255 bytes, got 256")
	var written int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM river_job) + (SELECT count(*) FROM job_sequence_inbox)
		+ (SELECT count(*) FROM job_sequences) + (SELECT count(*) FROM outbox_jobs)`).Scan(&written))
	require.Zero(t, written)
}
