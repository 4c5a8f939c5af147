package inbox_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/natstest"
	"github.com/aftercommit/aftercommit/outbox/inbox"
	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

func TestMain(m *testing.M) { dbtest.WrapTestMain(m) }

var discard = slog.New(slog.DiscardHandler)

// TestExactlyOnceInCommitOrder: producers on 16 goroutines publish keyed
// events (natstest.Tally: each transaction takes its xid before its key's
// row lock, one in ten rolls back); the relay sends them to JetStream and a
// consumer in a database of its own handles them through the inbox, with a
// handler that fails now and then. The consumer ends with exactly the
// committed events, each once, and each key's in commit order.
func TestExactlyOnceInCommitOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tally := natstest.NewTally(ctx, t, dbtest.TestSchema(ctx, t, nil))

	nc := natstest.Connect(t, natstest.URL())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream, prefix := natstest.Names(ctx, t, nc)
	_, err = natsrelay.SetupStream(ctx, js, natsrelay.StreamOptions{Name: stream, SubjectPrefix: prefix})
	require.NoError(t, err)
	rl, err := natsrelay.New(tally.Src.Pool, nc, &natsrelay.Config{Stream: stream, SubjectPrefix: prefix, Logger: discard,
		PollMin: time.Millisecond, PollMax: 10 * time.Millisecond})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() { require.NoError(t, rl.Run(runCtx)) })
	wg.Go(func() { tally.Consume(runCtx, t, js, stream, discard) })

	tally.Produce(ctx, t, 16, eventsTotal, producerPause)
	t.Logf("%d committed, %d rolled back", tally.Committed(), tally.RolledBack())
	require.Positive(t, tally.RolledBack())
	n := tally.Verify(ctx, t, js, stream, 5*time.Minute)
	require.Equal(t, int(tally.Committed()), n)
	t.Logf("handler failures injected and retried: %d", tally.HandlerFailures.Load())
}

// TestBacklogInFewTransactions: a consumer that starts behind 2,000 events
// handles them in batches of up to BatchSize, not one transaction per
// event. (Its reader once handed messages over one at a time, so a burst
// was handled one transaction per event, and on a loaded machine the last
// of 50 waited 100 ms for the 49 before it.)
func TestBacklogInFewTransactions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	require.NoError(t, inbox.CreateTable(ctx, s.Pool, inbox.TableDefault))
	nc := natstest.Connect(t, natstest.URL())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream, prefix := natstest.Names(ctx, t, nc)
	_, err = natsrelay.SetupStream(ctx, js, natsrelay.StreamOptions{Name: stream, SubjectPrefix: prefix, Memory: true})
	require.NoError(t, err)

	const total, batchSize = 2000, 100
	for i := 1; i <= total; i++ {
		ev := natsrelay.CloudEvent{SpecVersion: "1.0", ID: strconv.Itoa(i), Source: "/test", Type: "t.created",
			Time: time.Now(), DataContentType: "application/json", Data: json.RawMessage(`{}`)}
		_, err := js.PublishAsync(natsrelay.Subject(prefix, ev.Type, "", false), ev.AppendJSON(nil))
		require.NoError(t, err)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("the stream did not acknowledge the backlog")
	}

	var mu sync.Mutex
	var batches []int
	handled := 0
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() {
		require.NoError(t, inbox.Run(runCtx, s.Pool, js, stream, func(context.Context, pgx.Tx, *inbox.Event) error { return nil },
			&inbox.Config{Name: "backlog", BatchSize: batchSize, Logger: discard,
				OnBatch: func(_ context.Context, n, dups int) {
					mu.Lock()
					defer mu.Unlock()
					batches = append(batches, n+dups)
					handled += n
				}}))
	})
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return handled == total
	}, time.Minute, 5*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	require.LessOrEqual(t, slices.Max(batches), batchSize)
	// 20 full batches would do; a reader that keeps ahead comes close.
	require.LessOrEqual(t, len(batches), 40, "batch sizes: %v", batches)
	var rows int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(DISTINCT event_id) FROM `+inbox.TableDefault).Scan(&rows))
	require.Equal(t, total, rows)
}
