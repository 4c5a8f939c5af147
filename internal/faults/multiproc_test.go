//go:build long

package faults_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/inventory"
)

// observation is what one 100 ms poll of the database saw.
type observation struct {
	at      time.Time
	leaders int    // unexpired river_leader rows
	leader  string // their leader_id
	holders int    // live semaphore slots of the checkout completion
	procs   int    // distinct processes holding them
}

// TestThreeWorkers runs three worker processes on one database and polls it
// every 100 ms. The periodic job (the claim pruner, every second) is
// enqueued once per period by the leader alone; the completion semaphore (3
// permits) is never held more than 3 times, though slots are held from
// several processes at once; killing the leader (SIGKILL) hands leadership
// to another process once the dead leader's term expires, and stopping one
// (SIGTERM) hands it over at once; there is never more than one leader.
func TestThreeWorkers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
	f := newFixture(ctx, t, s, 1000)
	const permits = 3

	env := []string{
		"AFTERCOMMIT_FAULT_PRUNE_INTERVAL=1s",
		fmt.Sprintf("AFTERCOMMIT_FAULT_COMPLETION_PERMITS=%d", permits),
		"AFTERCOMMIT_FAULT_DELAY=300ms",
		"AFTERCOMMIT_FAULT_KINDS=" + inventory.CompleteCheckoutKind,
	}
	procs := map[string]*workerProc{}
	for _, name := range []string{"w1", "w2", "w3"} {
		p := startWorker(t, s, name, env, "--job-timeout", "5s", "--rescue-after", "10s")
		procs[p.clientID(t)] = p
	}

	var (
		mu   sync.Mutex
		seen []observation
	)
	pollCtx, stopPoll := context.WithCancel(ctx)
	polled := make(chan error, 1)
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			var o observation
			o.at = time.Now()
			err := s.Pool.QueryRow(pollCtx, `
SELECT (SELECT count(*) FROM river_leader WHERE expires_at > now()),
       (SELECT coalesce(min(leader_id), '') FROM river_leader WHERE expires_at > now()),
       count(*), count(DISTINCT holder_client)
  FROM job_locks WHERE namespace = $1 AND expires_at > now()`, inventory.CompletionLockNamespace).
				Scan(&o.leaders, &o.leader, &o.holders, &o.procs)
			if pollCtx.Err() != nil {
				polled <- nil
				return
			}
			if err != nil {
				polled <- err
				return
			}
			mu.Lock()
			seen = append(seen, o)
			mu.Unlock()
			select {
			case <-pollCtx.Done():
				polled <- nil
				return
			case <-tick.C:
			}
		}
	}()
	leaderNow := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 0 {
			return ""
		}
		return seen[len(seen)-1].leader
	}
	waitLeader := func(what string, ok func(string) bool) (string, time.Duration) {
		start := time.Now()
		var id string
		require.Eventually(t, func() bool {
			id = leaderNow()
			return id != "" && ok(id)
		}, 60*time.Second, 20*time.Millisecond, what)
		return id, time.Since(start)
	}
	prunes := func() []time.Time {
		rows, err := s.Pool.Query(ctx, `SELECT created_at FROM river_job WHERE kind = $1 ORDER BY created_at`, inventory.PruneExpiredClaimsKind)
		require.NoError(t, err)
		at, err := pgx.CollectRows(rows, pgx.RowTo[time.Time])
		require.NoError(t, err)
		return at
	}

	// The semaphore, across the three processes.
	first, _ := waitLeader("a leader elected", func(string) bool { return true })
	checkoutIDs := f.paidCheckouts(ctx, t, 30)
	require.Eventually(t, func() bool {
		return count(ctx, t, s, `SELECT count(*) FROM checkouts WHERE state = 'completed'`) == len(checkoutIDs)
	}, 90*time.Second, 50*time.Millisecond, "every checkout completed: %s", jobStates(ctx, t, s, inventory.CompleteCheckoutKind))
	f.effectsOnce(ctx, t, nil, checkoutIDs)

	// Periodic jobs under a stable leader, then through a kill and a stop.
	const stableRuns = 6
	stableFrom := len(prunes())
	stable := time.Now()
	require.Eventually(t, func() bool { return len(prunes()) >= stableFrom+stableRuns }, 30*time.Second, 50*time.Millisecond, "the pruner runs every second")
	stableFor := time.Since(stable)
	// Three enqueuers would take a third of the time.
	require.Greater(t, stableFor, (stableRuns-1)*time.Second, "%d runs of a 1 s period took %s", stableRuns, stableFor)

	procs[first].kill(t)
	second, killMove := waitLeader("leadership moves after the leader is killed", func(id string) bool { return id != first })
	require.True(t, procs[second].running())
	before := len(prunes())
	require.Eventually(t, func() bool { return len(prunes()) >= before+3 }, 30*time.Second, 50*time.Millisecond, "the new leader enqueues the pruner")

	require.NoError(t, procs[second].cmd.Process.Signal(syscall.SIGTERM))
	third, stopMove := waitLeader("leadership moves after the leader stops", func(id string) bool { return id != first && id != second })
	require.Equal(t, 0, procs[second].wait(t))
	before = len(prunes())
	require.Eventually(t, func() bool { return len(prunes()) >= before+2 }, 30*time.Second, 50*time.Millisecond, "the third leader enqueues the pruner")

	stopPoll()
	require.NoError(t, <-polled)
	mu.Lock()
	defer mu.Unlock()

	maxHolders, maxProcs, maxLeaders := 0, 0, 0
	var leaders []string
	for _, o := range seen {
		maxHolders = max(maxHolders, o.holders)
		maxProcs = max(maxProcs, o.procs)
		maxLeaders = max(maxLeaders, o.leaders)
		if o.leader != "" && (len(leaders) == 0 || leaders[len(leaders)-1] != o.leader) {
			leaders = append(leaders, o.leader)
		}
		require.LessOrEqual(t, o.holders, permits, "semaphore over its permits at %s", o.at)
		require.LessOrEqual(t, o.leaders, 1, "two leaders at %s", o.at)
		if o.leader != "" {
			require.Contains(t, procs, o.leader, "the leader is one of the three processes")
		}
	}
	at := prunes()
	minGap := time.Hour
	for i := 1; i < len(at); i++ {
		minGap = min(minGap, at[i].Sub(at[i-1]))
	}
	t.Logf("three worker processes, %d polls every 100 ms: at most %d leader(s) at once, leaders in turn %d; semaphore of %d permits: at most %d held at once, by up to %d processes; pruner (every 1 s) enqueued %d times in %s under a stable leader, %d times in all, shortest gap between two runs %s; leadership moved %s after SIGKILL of the leader (bound %s = leader TTL + elect interval), %s after SIGTERM",
		len(seen), maxLeaders, len(leaders), permits, maxHolders, maxProcs, stableRuns, stableFor.Round(100*time.Millisecond), len(at), minGap.Round(time.Millisecond),
		fmtDur(killMove), leaderTTL+electInterval, fmtDur(stopMove))
	require.Equal(t, []string{first, second, third}, slices.Compact(leaders), "one leader at a time, in turn")
	require.Equal(t, permits, maxHolders, "the semaphore was used to its limit")
	require.GreaterOrEqual(t, maxProcs, 2, "slots held from several processes at once: the semaphore is global")
	require.Greater(t, minGap, 500*time.Millisecond, "the pruner enqueued once per period, never twice")
	require.LessOrEqual(t, killMove, leaderTTL+electInterval+time.Second)
	require.Less(t, stopMove, electInterval, "a stopping leader resigns and another takes over without waiting for its term")
}
