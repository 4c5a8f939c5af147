//go:build long

package faults_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
)

// River's maintenance intervals that bound a recovery (river@v0.51.2:
// internal/leadership, internal/maintenance). None is configurable.
const (
	// leaderTTL is how long a leader that stopped renewing (killed) keeps
	// its row: the elect interval plus 10 s of padding.
	leaderTTL = 15 * time.Second
	// electInterval is how often a follower tries to become leader, plus
	// its jitter.
	electInterval = 6 * time.Second
	// rescuerInterval is how often the leader's rescuer looks for stuck
	// jobs; it also runs as soon as a process becomes leader.
	rescuerInterval = 30 * time.Second
	// schedulerInterval is how often the leader makes due retryable jobs
	// available.
	schedulerInterval = 5 * time.Second
)

// slowKinds are the jobs the fault hooks slow or hold in these tests.
var slowKinds = []string{donations.UpdateEmailDonationKind, inventory.CompleteCheckoutKind}

// TestWorkerKilledMidJob kills (SIGKILL) the only worker, the leader, while
// it runs 100 email flag jobs and 100 checkout completions, each slowed
// before its work by a fault hook. A second worker started after the kill
// becomes leader once the dead one's term expires, its rescuer finds the
// jobs stuck and retries them, and they all complete: every email flagged
// once, every checkout completed once and its unit sold once.
func TestWorkerKilledMidJob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
	const n = 100
	f := newFixture(ctx, t, s, 1000)
	emailIDs := f.donate(ctx, t, n)
	checkoutIDs := f.paidCheckouts(ctx, t, n)

	// The killed worker's job timeout is its locks' lease: its semaphore
	// slots are free again that long after it died.
	const (
		deadJobTimeout = 20 * time.Second
		rescueAfter    = 4 * time.Second
	)
	a := startWorker(t, s, "a", []string{
		"AFTERCOMMIT_FAULT_DELAY=15s",
		"AFTERCOMMIT_FAULT_KINDS=" + slowKinds[0] + "," + slowKinds[1],
		"AFTERCOMMIT_FAULT_COMPLETION_PERMITS=100",
	}, "--max-workers", "100", "--job-timeout", deadJobTimeout.String(), "--rescue-after", "25s")
	aID := a.clientID(t)
	require.Eventually(t, func() bool {
		id, err := leader(ctx, s)
		return err == nil && id == aID
	}, 30*time.Second, 20*time.Millisecond, "worker a is the leader")
	require.Eventually(t, func() bool {
		return count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = ANY($1) AND state = 'running'`, slowKinds) == 2*n
	}, 30*time.Second, 20*time.Millisecond, "all %d slowed jobs running in worker a: %s", 2*n, jobStates(ctx, t, s, slowKinds...))

	a.kill(t)
	killedAt := time.Now()
	require.Equal(t, 2*n, count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = ANY($1) AND state = 'running'`, slowKinds),
		"the dead worker's jobs stay running until rescued")
	require.Zero(t, count(ctx, t, s, `SELECT count(*) FROM fault_effects`), "nothing applied before the kill")

	b := startWorker(t, s, "b", []string{"AFTERCOMMIT_FAULT_COMPLETION_PERMITS=100"},
		"--max-workers", "100", "--job-timeout", "3s", "--rescue-after", rescueAfter.String())
	bID := b.clientID(t)

	// Every step: no effect twice, and nothing left the running state but
	// for retryable/available/completed.
	var leaderAt time.Duration
	deadline := time.Now().Add(120 * time.Second)
	for {
		require.True(t, time.Now().Before(deadline), "recovery within 120 s; jobs: %s", jobStates(ctx, t, s, slowKinds...))
		require.Zero(t, count(ctx, t, s, `SELECT count(*) FROM (SELECT 1 FROM fault_effects GROUP BY what, id HAVING count(*) > 1) d`),
			"an effect applied twice")
		require.Zero(t, count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = ANY($1) AND state IN ('discarded', 'cancelled')`, slowKinds),
			"a job lost: %s", jobStates(ctx, t, s, slowKinds...))
		if leaderAt == 0 {
			if id, err := leader(ctx, s); err == nil && id == bID {
				leaderAt = time.Since(killedAt)
			}
		}
		if count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = ANY($1) AND state = 'completed'`, slowKinds) == 2*n {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	recovery := time.Since(killedAt)
	bound := leaderTTL + electInterval + rescueAfter + rescuerInterval + schedulerInterval
	applied, doubled := f.effectsOnce(ctx, t, emailIDs, checkoutIDs)
	rescued := count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = ANY($1) AND (metadata->>'river:rescue_count')::int = 1`, slowKinds)
	t.Logf("SIGKILL of the leader with %d running jobs: worker b leader after %s, every job completed %s after the kill (bound %s = leader TTL %s + elect interval %s + rescue-after %s + rescuer interval %s + scheduler %s); %d rescued and rerun, %d effects applied once, %d twice, 0 lost",
		2*n, fmtDur(leaderAt), fmtDur(recovery), fmtDur(bound), leaderTTL, electInterval, rescueAfter, rescuerInterval, schedulerInterval, rescued, applied, doubled)
	require.Equal(t, 2*n, rescued, "every job rescued once, then completed")
	require.Less(t, recovery, bound)
	require.True(t, b.running(), "worker b still running")
}

// markNoTxArgs is the fault build's MarkNoTxArgs (cmd/worker/faults.go): a
// ping marked outside the transaction that completes the job.
type markNoTxArgs struct {
	PingID int64 `json:"ping_id"`
}

func (markNoTxArgs) Kind() string { return "faults.mark_no_tx" }

// TestExitAfterEffectCommitted ends a worker process (exit 3) right after a
// job's work returned, before River recorded the completion. A ping job,
// whose effect commits with its completion (JobCompleteTx), is completed
// and never runs again. The control, a job that commits its effect alone,
// is left running, rescued, and applies its effect a second time.
func TestExitAfterEffectCommitted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
	inserter, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	require.NoError(t, err)
	var withTx, noTx int64
	require.NoError(t, s.Pool.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('tx') RETURNING id`).Scan(&withTx))
	require.NoError(t, s.Pool.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('no tx') RETURNING id`).Scan(&noTx))
	pingCount := func(id int64) int { return count(ctx, t, s, `SELECT ping_count FROM pings WHERE id = $1`, id) }
	jobOf := func(args river.JobArgs) (state string, attempt int) {
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT state::text, attempt FROM river_job WHERE kind = $1`, args.Kind()).Scan(&state, &attempt))
		return state, attempt
	}

	workerArgs := []string{"--queues", "default", "--max-workers", "1", "--job-timeout", "2s", "--rescue-after", "3s"}
	for _, args := range []river.JobArgs{jobs.PingArgs{PingID: withTx}, markNoTxArgs{PingID: noTx}} {
		_, err := inserter.Insert(ctx, args, nil)
		require.NoError(t, err)
		// The exit follows this kind only: the default queue also holds
		// the events pruner, which the first worker enqueues at its start
		// and the second may run first (a CI run saw the control left
		// available, its worker gone after the pruner).
		exitEnv := []string{"AFTERCOMMIT_FAULT_EXIT_AFTER_WORK=1", "AFTERCOMMIT_FAULT_KINDS=" + args.Kind()}
		p := startWorker(t, s, "exit-"+args.Kind(), exitEnv, workerArgs...)
		require.Equal(t, 3, p.wait(t), "the worker exits right after the work")
	}
	state, attempt := jobOf(jobs.PingArgs{})
	require.Equal(t, "completed", state, "completed in the transaction of its effect")
	require.Equal(t, 1, attempt)
	state, _ = jobOf(markNoTxArgs{})
	require.Equal(t, "running", state, "the control's completion was never recorded")
	require.Equal(t, 1, pingCount(withTx))
	require.Equal(t, 1, pingCount(noTx))

	// A worker that takes over rescues what was left running.
	start := time.Now()
	startWorker(t, s, "rescuer", nil, workerArgs...)
	require.Eventually(t, func() bool {
		state, _ := jobOf(markNoTxArgs{})
		return state == "completed"
	}, 90*time.Second, 50*time.Millisecond, "the control job rescued and rerun")
	_, controlAttempt := jobOf(markNoTxArgs{})
	state, attempt = jobOf(jobs.PingArgs{})
	t.Logf("exit after the effect committed, before the completion was recorded: with JobCompleteTx the job is %s after %d attempt(s), effect applied %d time(s); without it (control) the job was rescued %s later and rerun (attempt %d), effect applied %d times",
		state, attempt, pingCount(withTx), fmtDur(time.Since(start)), controlAttempt, pingCount(noTx))
	require.Equal(t, "completed", state)
	require.Equal(t, 1, attempt, "0 reruns")
	require.Equal(t, 1, pingCount(withTx), "effect applied once")
	require.Equal(t, 2, controlAttempt)
	require.Equal(t, 2, pingCount(noTx), "the control applies its effect twice: the test can see a rerun")
}

// TestLateFinisher holds an email flag job and a checkout completion in
// worker a (a fault hook that ignores the job's context, like a process
// frozen by a long pause), until the leader's rescuer retried them and a
// worker completed them. Then worker a wakes up and does the work again:
// each effect is still applied once, and the jobs stay completed.
func TestLateFinisher(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
	f := newFixture(ctx, t, s, 10)
	emailIDs := f.donate(ctx, t, 1)
	checkoutIDs := f.paidCheckouts(ctx, t, 1)
	hold := filepath.Join(t.TempDir(), "release")

	workerArgs := []string{"--job-timeout", "2s", "--rescue-after", "3s"}
	a := startWorker(t, s, "late", []string{
		"AFTERCOMMIT_FAULT_HOLD=" + hold,
		"AFTERCOMMIT_FAULT_ATTEMPT=1",
		"AFTERCOMMIT_FAULT_KINDS=" + slowKinds[0] + "," + slowKinds[1],
	}, workerArgs...)
	aID := a.clientID(t)
	require.Eventually(t, func() bool {
		return count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = ANY($1) AND state = 'running'`, slowKinds) == 2
	}, 30*time.Second, 20*time.Millisecond, "both jobs held in worker a")
	b := startWorker(t, s, "takeover", nil, workerArgs...)
	bID := b.clientID(t)

	// Once the jobs are stuck for longer than --rescue-after, a new leader
	// rescues them at once: ask the leader to resign until one is elected
	// after that moment (its rescuer runs when it takes office).
	time.Sleep(3500 * time.Millisecond)
	notifier, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	require.NoError(t, err)
	resigned := time.Now()
	require.Eventually(t, func() bool {
		if count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = ANY($1) AND state = 'completed'`, slowKinds) == 2 {
			return true
		}
		var electedAfter bool
		if err := s.Pool.QueryRow(ctx, `SELECT coalesce(bool_or(elected_at > $1), false) FROM river_leader`, resigned).Scan(&electedAfter); err == nil && !electedAfter {
			_ = notifier.Notify().RequestResign(ctx)
		}
		return false
	}, 90*time.Second, 200*time.Millisecond, "both jobs rescued and rerun: %s", jobStates(ctx, t, s, slowKinds...))
	newLeader, err := leader(ctx, s)
	require.NoError(t, err)
	require.Contains(t, []string{aID, bID}, newLeader)
	require.Equal(t, 2, count(ctx, t, s, `SELECT count(*) FROM river_job WHERE kind = ANY($1) AND attempt = 2`, slowKinds), "rerun once each")
	f.effectsOnce(ctx, t, emailIDs, checkoutIDs)

	// Worker a wakes up and runs the work of its first attempt; a graceful
	// stop waits for it to end.
	require.NoError(t, os.WriteFile(hold, nil, 0o600))
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, a.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, a.wait(t))
	require.Equal(t, 2, strings.Count(a.log.String(), `msg="faults: held job worked after its release" job_id=`), "both held jobs worked late; log:\n%s", a.log)
	require.Equal(t, 2, strings.Count(a.log.String(), `attempt=1 err=<nil>`), "their late work succeeded; log:\n%s", a.log)

	applied, doubled := f.effectsOnce(ctx, t, emailIDs, checkoutIDs)
	require.Equal(t, "completed=2", jobStates(ctx, t, s, slowKinds...), "the late finisher changed no job")
	t.Logf("late finisher: 2 jobs held past their timeout, rescued and completed by the %s, then finished late by the held worker: %d effects applied once, %d twice; jobs %s",
		map[bool]string{true: "held worker itself (rerun)", false: "other worker"}[newLeader == aID], applied, doubled, jobStates(ctx, t, s, slowKinds...))
}
