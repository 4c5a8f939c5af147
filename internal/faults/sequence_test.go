//go:build long

package faults_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
)

// seqProduceSQL is one producer transaction (one statement, so one round
// trip): it takes the key's counter first — the upsert row-locks it, so the
// transactions of one key commit one at a time and n is their commit order
// — then inserts a ping noted key:n, enqueues its job in the key's sequence
// and works $4 seconds more before its COMMIT, holding the lock (other
// transactions of the key wait) and its outbox id (transactions of other
// keys commit newer ids first). Each step reads the row of the one before,
// so they run in that order.
const seqProduceSQL = `
WITH c AS (
    INSERT INTO test_seq_counters AS c (seq_key, n) VALUES ($1::text, 1)
    ON CONFLICT (seq_key) DO UPDATE SET n = c.n + 1
    RETURNING n
), p AS (
    INSERT INTO pings (note) SELECT $1::text || ':' || n FROM c RETURNING id
), e AS (
    SELECT p.id, c.n, aftercommit_enqueue('aftercommit.ping',
           jsonb_build_object('ping_id', p.id, 'seq_key', $1::text, 'fail_attempts', $2::int, 'sleep_ms', $3::int)) AS outbox_id
      FROM p, c
)
SELECT e.id, e.n, e.outbox_id FROM e, LATERAL (SELECT pg_sleep(CASE WHEN e.outbox_id > 0 THEN $4::float8 END)) AS work`

// seqRunnableSQL lists the sequences with more than one runnable member:
// a held sequence has one at most, whatever the processes do. The runnable
// jobs are taken first (by state, a hundred or so rows): left to itself,
// the planner also reads the GIN index of metadata, where every job
// matches, and the sampler costs the server seven times as much.
const seqRunnableSQL = `
WITH runnable AS MATERIALIZED (
    SELECT id, state, attempt, metadata FROM river_job
     WHERE state IN ('available', 'running', 'retryable', 'scheduled'))
SELECT metadata->'aftercommit_seq'->>'key', count(*),
       string_agg(format('job %s %s outbox_id %s attempt %s', id, state, metadata->'aftercommit_seq'->>'outbox_id', attempt), ', ' ORDER BY id)
  FROM runnable
 WHERE metadata ? 'aftercommit_seq'
 GROUP BY 1 HAVING count(*) > 1`

// TestSequencesAcrossThreeWorkersWithAKill: 100 sequence keys × 200 pings,
// 20,000 transactions from 16 producers at once (paced to 600 a second),
// each taking its key's counter first (so the transactions of a key commit
// one at a time, n being their order), enqueuing its ping in the key's
// sequence from SQL and holding the lock a few milliseconds more; 5 % of
// the pings fail their first attempt (holding their sequence), a tenth
// sleep 10–50 ms. Three cmd/worker processes work them, and the leader is
// killed (SIGKILL) once a third of the pings are done, while the producers
// still write. A sampler every few milliseconds never sees two runnable
// jobs of one sequence. In the end every ping was applied exactly once;
// for every key the effects happened in commit order (pinged_at strictly
// increasing with n, each job started after the previous one finished);
// every job completed, the failing ones at a later attempt; the killed
// process's running jobs were rescued by the next leader and run by the
// others; nothing is left in the outbox or the sequence tables.
func TestSequencesAcrossThreeWorkersWithAKill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const (
		keys      = 100
		perKey    = 200
		total     = keys * perKey
		producers = 16
		// The killed process's running jobs are rescued by the next
		// leader as soon as it takes office: rescue-after is well below
		// the dead leader's term.
		jobTimeout  = 2 * time.Second
		rescueAfter = 3 * time.Second
		// produceRate paces the producers (transactions per second, 33 s
		// in all), faster than three processes of six connections work
		// these pings on two cores (300–450 a second): a third of the
		// pings are done, and the leader killed, while the producers
		// still write and the relays move their rows.
		produceRate = 600
		// txWorkMax bounds the time a producer transaction holds its
		// key's lock after its enqueue (uniform).
		txWorkMax = 10 * time.Millisecond
	)
	// The producers' connections, the sampler's and one for the test.
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: producers + 2})
	s.Scratch(ctx, t, `CREATE TABLE test_seq_counters (seq_key text PRIMARY KEY, n int NOT NULL)`, `DROP TABLE test_seq_counters`)

	names := []string{"q1", "q2", "q3"}
	byName := map[string]*workerProc{}
	for _, name := range names {
		// Six connections each: the fault suite runs beside the rest of
		// the full suite.
		byName[name] = startWorkerConns(t, s, name, 6, nil,
			"--queues", "default", "--job-timeout", jobTimeout.String(), "--rescue-after", rescueAfter.String())
	}
	procs := map[string]*workerProc{} // by River client ID
	for _, name := range names {
		procs[byName[name].clientID(t)] = byName[name]
	}

	// The plan: every key perKey times, shuffled: now and then two
	// producers hold transactions of one key at once, and the later one
	// waits for the earlier's lock (overlapped counts them).
	type planned struct {
		k             int
		key           string
		fail, sleepMS int
	}
	plan := make([]planned, 0, total)
	for k := range keys {
		for range perKey {
			p := planned{k: k, key: fmt.Sprintf("key-%03d", k)}
			if rand.Float64() < 0.05 {
				p.fail = 1
			}
			if rand.Float64() < 0.10 {
				p.sleepMS = 10 + rand.IntN(40)
			}
			plan = append(plan, p)
		}
	}
	rand.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })

	// The sampler: from now until every job is done.
	var (
		checks     atomic.Int64
		vmu        sync.Mutex
		violations []string
		samplerErr error
	)
	sampleCtx, stopSampler := context.WithCancel(ctx)
	samplerDone := make(chan struct{})
	t.Cleanup(func() { stopSampler(); <-samplerDone })
	go func() {
		defer close(samplerDone)
		conn, err := s.Pool.Acquire(sampleCtx)
		if err != nil {
			samplerErr = err
			return
		}
		defer conn.Release()
		for {
			rows, err := conn.Query(sampleCtx, seqRunnableSQL)
			var found []string
			if err == nil {
				found, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
					var (
						key, members string
						n            int
					)
					err := r.Scan(&key, &n, &members)
					return fmt.Sprintf("%s: %d runnable (%s)", key, n, members), err
				})
			}
			if sampleCtx.Err() != nil {
				return
			}
			if err != nil {
				samplerErr = err
				return
			}
			checks.Add(1)
			if len(found) > 0 {
				vmu.Lock()
				violations = append(violations, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), found))
				vmu.Unlock()
			}
			select {
			case <-sampleCtx.Done():
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()

	// The producers.
	type produced struct {
		pingID, outboxID int64
		key              string
		n, fail          int
	}
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errMu    sync.Mutex
		prodErrs []error
		// inFlight counts each key's transactions under way; overlapped,
		// the transactions that started while another of their key was
		// under way (and so may have waited for its lock).
		inFlight   [keys]atomic.Int32
		overlapped atomic.Int64
	)
	results := make([][]produced, producers)
	prodCtx, stopProducers := context.WithCancel(ctx)
	t.Cleanup(func() { stopProducers(); wg.Wait() })
	start := time.Now()
	for g := range producers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= total || prodCtx.Err() != nil {
					return
				}
				if d := time.Until(start.Add(time.Duration(i) * time.Second / produceRate)); d > 0 {
					time.Sleep(d)
				}
				p := plan[i]
				r := produced{key: p.key, fail: p.fail}
				if inFlight[p.k].Add(1) > 1 {
					overlapped.Add(1)
				}
				work := rand.Float64() * txWorkMax.Seconds()
				err := s.Pool.QueryRow(prodCtx, seqProduceSQL, p.key, p.fail, p.sleepMS, work).Scan(&r.pingID, &r.n, &r.outboxID)
				inFlight[p.k].Add(-1)
				if err != nil {
					errMu.Lock()
					prodErrs = append(prodErrs, fmt.Errorf("producing a ping of %s: %w", p.key, err))
					errMu.Unlock()
					return
				}
				results[g] = append(results[g], r)
			}
		})
	}

	var produceTime time.Duration
	produceDone := make(chan struct{})
	go func() {
		wg.Wait()
		produceTime = time.Since(start)
		close(produceDone)
	}()

	// Kill the leader once a third of the pings are done.
	var doneAtKill int
	for {
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM pings WHERE ping_count > 0`).Scan(&doneAtKill))
		if doneAtKill >= total/3 {
			break
		}
		errMu.Lock()
		require.Empty(t, prodErrs)
		errMu.Unlock()
		require.Less(t, time.Since(start), 2*time.Minute, "a third of the pings done within 2 min: %d done", doneAtKill)
		time.Sleep(50 * time.Millisecond)
	}
	victimID, err := leader(ctx, s)
	require.NoError(t, err)
	victimWasLeader := victimID != ""
	if !victimWasLeader {
		victimID = slices.Sorted(maps.Keys(procs))[0]
	}
	victim := procs[victimID]
	require.NotNil(t, victim, "the leader %s is one of the three processes", victimID)
	var runningAtKill, producedAtKill int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'running' AND attempted_by[cardinality(attempted_by)] = $2`,
		jobs.PingKind, victimID).Scan(&runningAtKill))
	producedAtKill = int(min(next.Load(), total))
	victim.kill(t)
	killedAt := time.Now()

	<-produceDone
	require.Empty(t, prodErrs)

	// Wait until every ping is done and nothing is left anywhere.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var notPinged, unfinished, outbox, inbox, seqs, members int
		if !assert.NoError(c, s.Pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM pings WHERE ping_count = 0),
       (SELECT count(*) FROM river_job WHERE kind = $1 AND state NOT IN ('completed', 'discarded', 'cancelled')),
       (SELECT count(*) FROM outbox_jobs),
       (SELECT count(*) FROM job_sequence_inbox),
       (SELECT count(*) FROM job_sequences),
       (SELECT count(*) FROM job_sequence_members)`, jobs.PingKind).Scan(&notPinged, &unfinished, &outbox, &inbox, &seqs, &members)) {
			return
		}
		assert.Zero(c, notPinged, "pings not done")
		assert.Zero(c, unfinished, "unfinished ping jobs")
		assert.Zero(c, outbox, "outbox rows not relayed")
		assert.Zero(c, inbox, "sequenced jobs not placed (job_sequence_inbox)")
		assert.Zero(c, seqs, "job_sequences rows")
		assert.Zero(c, members, "job_sequence_members rows")
		if seqs > 0 {
			var status string
			if assert.NoError(c, s.Pool.QueryRow(ctx, `SELECT coalesce(string_agg(format('%s waiting=%s head=%s %s attempt %s held=%s stuck=%s',
				seq_key, waiting, head_job_id, head_state, head_attempt, held, stuck), '; ' ORDER BY seq_key), '') FROM (SELECT * FROM job_sequence_status ORDER BY stuck DESC, seq_key LIMIT 10) st`).Scan(&status)) {
				assert.Fail(c, "sequences left", "%s", status)
			}
		}
	}, 4*time.Minute, 100*time.Millisecond, "every sequence worked to its end")
	duration := time.Since(start)

	stopSampler()
	<-samplerDone
	require.NoError(t, samplerErr)
	vmu.Lock()
	require.Empty(t, violations, "a sequence had more than one runnable member")
	vmu.Unlock()
	require.Positive(t, checks.Load(), "the sampler ran")

	// Every ping with its job.
	type pingJob struct {
		PingID      int64
		Note        string
		PingCount   int
		PingedAt    *time.Time
		JobID       *int64
		State       *string
		Attempt     *int
		AttemptedAt *time.Time
		FinalizedAt *time.Time
		By          *string
		Fail        *int
		Rescues     *int
		SeqKey      *string
	}
	rows, err := s.Pool.Query(ctx, `
SELECT p.id, p.note, p.ping_count, p.pinged_at, j.id, j.state::text, j.attempt, j.attempted_at, j.finalized_at,
       j.attempted_by[cardinality(j.attempted_by)], (j.args->>'fail_attempts')::int,
       coalesce((j.metadata->>'river:rescue_count')::int, 0), j.metadata->'aftercommit_seq'->>'key'
  FROM pings p LEFT JOIN river_job j ON j.kind = $1 AND (j.args->>'ping_id')::bigint = p.id`, jobs.PingKind)
	require.NoError(t, err)
	all, err := pgx.CollectRows(rows, pgx.RowToStructByPos[pingJob])
	require.NoError(t, err)
	require.Len(t, all, total, "one job per ping, one row per ping")
	require.Equal(t, total, count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = $1`, jobs.PingKind), "one job per ping")
	byPing := make(map[int64]pingJob, total)
	for _, r := range all {
		byPing[r.PingID] = r
	}
	require.Len(t, byPing, total, "one job per ping")

	perKeyRuns := map[string][]produced{}
	for _, rs := range results {
		for _, r := range rs {
			perKeyRuns[r.key] = append(perKeyRuns[r.key], r)
		}
	}
	require.Len(t, perKeyRuns, keys)

	var (
		failing, failingRetried, rescued, rescuedMeta int
		maxAttempt                                    int
		lastRescued                                   time.Time
		completedBy                                   = map[string]int{}
		minGap                                        = time.Hour
	)
	for key, runs := range perKeyRuns {
		require.Len(t, runs, perKey, "key %s", key)
		slices.SortFunc(runs, func(a, b produced) int { return a.n - b.n })
		var prev *pingJob
		for i, r := range runs {
			require.Equal(t, i+1, r.n, "key %s: its transactions counted 1 to %d", key, perKey)
			if i > 0 {
				// The premise: transactions of one key enqueue in their
				// commit order.
				require.Greater(t, r.outboxID, runs[i-1].outboxID, "key %s: the outbox row of n=%d is newer than n=%d's", key, r.n, r.n-1)
			}
			pj, ok := byPing[r.pingID]
			require.True(t, ok, "ping %d (%s:%d) exists", r.pingID, key, r.n)
			require.Equal(t, fmt.Sprintf("%s:%d", key, r.n), pj.Note)
			require.Equal(t, 1, pj.PingCount, "ping %s:%d applied once", key, r.n)
			require.NotNil(t, pj.JobID, "ping %s:%d has its job", key, r.n)
			require.Equal(t, "completed", *pj.State, "job %d of ping %s:%d", *pj.JobID, key, r.n)
			require.Equal(t, key, *pj.SeqKey, "job %d is in its key's sequence", *pj.JobID)
			require.Equal(t, r.fail, *pj.Fail, "job %d", *pj.JobID)
			require.NotNil(t, pj.PingedAt)
			require.NotNil(t, pj.AttemptedAt)
			require.NotNil(t, pj.FinalizedAt)
			if r.fail > 0 {
				failing++
				require.GreaterOrEqual(t, *pj.Attempt, 2, "job %d of ping %s:%d failed its first attempt", *pj.JobID, key, r.n)
				if *pj.Attempt > 2 {
					failingRetried++
				}
			} else if *pj.Attempt > 1 {
				rescued++
			}
			if *pj.Rescues > 0 {
				rescuedMeta++
				// Its rescued attempt may be the one fail_attempts fails.
				require.GreaterOrEqual(t, *pj.Attempt, 2, "rescued job %d was run again", *pj.JobID)
				if pj.FinalizedAt.After(lastRescued) {
					lastRescued = *pj.FinalizedAt
				}
			}
			maxAttempt = max(maxAttempt, *pj.Attempt)
			completedBy[*pj.By]++
			if prev != nil {
				require.True(t, pj.PingedAt.After(*prev.PingedAt),
					"key %s: ping %d applied at %s, not after ping %d at %s: effects out of commit order",
					key, r.n, pj.PingedAt.Format(time.RFC3339Nano), r.n-1, prev.PingedAt.Format(time.RFC3339Nano))
				// One at a time: the job's effect began after the one
				// before it finished. (Its attempted_at is River's fetch
				// statement's start, which may precede the COMMIT that
				// made it available by the time the fetch waits for its
				// snapshot: under load, a millisecond or two before the
				// finalized_at of the job before, read from the Go clock
				// just before that COMMIT.)
				require.True(t, pj.PingedAt.After(*prev.FinalizedAt),
					"key %s: job %d (n=%d) applied its effect at %s, before job %d (n=%d) finished at %s",
					key, *pj.JobID, r.n, pj.PingedAt.Format(time.RFC3339Nano), *prev.JobID, r.n-1, prev.FinalizedAt.Format(time.RFC3339Nano))
				minGap = min(minGap, pj.PingedAt.Sub(*prev.PingedAt))
			}
			prev = &pj
		}
	}
	require.Equal(t, total, count(ctx, t, s, `SELECT count(*) FROM pings WHERE ping_count = 1`), "every ping applied exactly once")

	t.Logf("%d keys × %d pings: %d transactions from %d producers in %s (%.0f/s), %d of them begun while another of their key was under way; the %s %s killed %s after the start, with %d pings done, %d transactions begun and %d jobs running in it; all done %s after the start",
		keys, perKey, total, producers, fmtDur(produceTime), float64(total)/produceTime.Seconds(), overlapped.Load(),
		map[bool]string{true: "leader", false: "process"}[victimWasLeader], victim.name, fmtDur(killedAt.Sub(start)), doneAtKill, producedAtKill, runningAtKill, fmtDur(duration))
	var recovery time.Duration
	if !lastRescued.IsZero() {
		recovery = lastRescued.Sub(killedAt)
	}
	bound := leaderTTL + electInterval + rescueAfter + rescuerInterval + schedulerInterval
	t.Logf("%d jobs rescued (attempt > 1 without fail_attempts; %d with River's rescue count), the last completed %s after the kill (bound %s); %d jobs with fail_attempts = 1 completed at attempt 2 or later (%d later than 2); highest attempt %d",
		rescued, rescuedMeta, fmtDur(recovery), fmtDur(bound), failing, failingRetried, maxAttempt)
	perProc := map[string]int{}
	for id, n := range completedBy {
		name := id
		if p, ok := procs[id]; ok {
			name = p.name
		}
		perProc[name] = n
	}
	t.Logf("completed per process %v (%s killed); sampler: %d checks, 0 sequences with two runnable members; shortest gap between two effects of one key %s",
		perProc, victim.name, checks.Load(), minGap)

	require.Positive(t, completedBy[victimID], "the killed process completed jobs before its death")
	require.GreaterOrEqual(t, len(completedBy), 2, "jobs completed by several processes: %v", perProc)
	require.Positive(t, rescuedMeta, "the kill landed while the process ran jobs, which were rescued")
	require.Less(t, recovery, bound, "the killed process's jobs rescued and completed in time")
	require.Positive(t, failing, "some pings failed on purpose")
	require.Positive(t, overlapped.Load(), "transactions of one key ran at once")
	for _, p := range procs {
		if p != victim {
			require.True(t, p.running(), "worker %s still running", p.name)
		}
	}
}
