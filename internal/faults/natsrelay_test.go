//go:build long

package faults_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/natstest"
)

// TestEventsRelayFaults: two cmd/worker processes relay outbox events to a
// private nats-server while producers publish keyed events without pause
// and a consumer reads them through the inbox. In turn: the active relay is
// killed with SIGKILL mid-publish (the standby takes over once the lease
// expires; a third process replaces the dead one), the NATS server is
// stopped and started again, and every worker's Postgres connection is
// cut. Afterwards the consumer holds exactly the committed events, each
// once, each key's in commit order, and the stream holds each once.
func TestEventsRelayFaults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	tally := natstest.NewTally(ctx, t, s)
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream, prefix := natstest.Names(ctx, t, nc)

	natsArgs := []string{"--queues", "default", "--nats-url", srv.URL(), "--nats-stream", stream, "--nats-subject-prefix", prefix}
	workers := map[int]*workerProc{}
	start := func(name string) {
		p := startWorkerConns(t, s, name, 4, nil, natsArgs...)
		p.clientID(t)
		workers[p.cmd.Process.Pid] = p
	}
	// Names of this test's own: the connection cut below must reach its
	// workers only, never another test's on the same server.
	start("events-relay-a")
	start("events-relay-b")

	prodCtx, stopProducing := context.WithCancel(ctx)
	consCtx, stopConsuming := context.WithCancel(ctx)
	var producers, consumer sync.WaitGroup
	defer func() { stopProducing(); stopConsuming(); producers.Wait(); consumer.Wait() }()
	// 4 producers, each pausing 5 ms between transactions (about 600
	// transactions a second here): enough to keep the relay publishing at
	// every fault, without starving the suite's timing-bound tests that
	// run beside it.
	producers.Go(func() { tally.ProducePaced(prodCtx, t, 4, 5*time.Millisecond) })
	consumer.Go(func() { tally.Consume(consCtx, t, js, stream, discardLogger()) })

	// progress waits until the stream grew by n messages.
	stored := func() uint64 {
		st, err := js.Stream(ctx, stream)
		if err != nil {
			return 0
		}
		info, err := st.Info(ctx)
		if err != nil {
			return 0
		}
		return info.State.LastSeq
	}
	progress := func(what string, n uint64) {
		t.Helper()
		from := stored()
		require.Eventually(t, func() bool { return stored() >= from+n }, 60*time.Second, 10*time.Millisecond,
			"the stream did not grow by %d after %s (it holds %d)", n, what, stored())
	}
	// owner returns the pid of the process holding the lease (0: none).
	owner := func() int {
		var o *string
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT owner FROM outbox_event_relays WHERE stream = $1 AND lease_until > now()`, stream).Scan(&o))
		if o == nil {
			return 0
		}
		parts := strings.Split(*o, ":")
		pid, err := strconv.Atoi(parts[len(parts)-2])
		require.NoError(t, err)
		return pid
	}
	progress("the start", 1000)

	// 1. SIGKILL the active relay while it publishes.
	var active int
	require.Eventually(t, func() bool { active = owner(); return workers[active] != nil }, 30*time.Second, 10*time.Millisecond)
	killed := time.Now()
	workers[active].kill(t)
	delete(workers, active)
	var next int
	require.Eventually(t, func() bool {
		var o *string
		_ = s.Pool.QueryRow(ctx, `SELECT owner FROM outbox_event_relays WHERE stream = $1`, stream).Scan(&o)
		next = 0
		if o != nil && !strings.Contains(*o, ":"+strconv.Itoa(active)+":") {
			next = owner()
		}
		return next != 0
	}, 30*time.Second, 10*time.Millisecond)
	takeover := time.Since(killed)
	require.NotNil(t, workers[next], "the lease went to a live worker")
	progress("the takeover", 500)
	t.Logf("SIGKILL of the active relay: the standby took over after %s", fmtDur(takeover))
	start("events-relay-c")

	// 2. Stop the NATS server, then start it again.
	srv.Stop()
	down := time.Now()
	time.Sleep(2 * time.Second)
	srv.Start()
	progress("the NATS restart", 500)
	t.Logf("NATS stopped for 2 s: events flowed again %s after it stopped", fmtDur(time.Since(down)))

	// 3. Cut every worker's Postgres connections.
	var cut int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name LIKE 'aftercommit-faults-events-relay-%'`).Scan(&cut))
	require.Positive(t, cut)
	cutAt := time.Now()
	progress("the connection cut", 500)
	t.Logf("%d worker connections cut: events flowed again after %s", cut, fmtDur(time.Since(cutAt)))

	stopProducing()
	producers.Wait()
	n := tally.Verify(ctx, t, js, stream, 3*time.Minute)
	t.Logf("%d events committed (%d transactions rolled back), each received once in commit order; %d handler failures retried",
		n, tally.RolledBack(), tally.HandlerFailures.Load())
	for _, p := range workers {
		require.True(t, p.running(), "worker %s exited", p.name)
	}
}
