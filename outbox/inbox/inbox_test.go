package inbox_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/natstest"
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
