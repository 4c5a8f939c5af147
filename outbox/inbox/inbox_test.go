package inbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/natstest"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/inbox"
	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

func TestMain(m *testing.M) { dbtest.WrapTestMain(m) }

var discard = slog.New(slog.DiscardHandler)

// counted is the payload of the test's events: the key's counter after
// the transaction's increment.
type counted struct {
	N int `json:"n"`
}

// TestExactlyOnceInCommitOrder: producers on 16 goroutines publish keyed
// events, each transaction first taking its xid, then its key's row lock
// (so xid order is not commit order), rolling back one in ten; the relay
// sends them to JetStream and a consumer in a database of its own handles
// them through the inbox, with a handler that fails now and then. The
// consumer ends with exactly the committed events, each once, and each
// key's in commit order (the key's counter, 1, 2, 3, … with no gap, since
// a rollback undoes its increment).
func TestExactlyOnceInCommitOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := dbtest.TestSchema(ctx, t, nil)
	src.Scratch(ctx, t, `CREATE TABLE nkeys (k text PRIMARY KEY, n integer NOT NULL DEFAULT 0);
		INSERT INTO nkeys (k) SELECT 'k' || g FROM generate_series(1, 50) AS g`, `DROP TABLE nkeys`)
	dst := dbtest.TestSchema(ctx, t, nil)
	ddl, err := inbox.CreateTableSQL("tally_inbox")
	require.NoError(t, err)
	dst.Scratch(ctx, t, ddl+`; CREATE TABLE received (seq bigserial PRIMARY KEY, k text NOT NULL, n integer NOT NULL, event_id bigint NOT NULL)`,
		`DROP TABLE tally_inbox, received`)

	nc := natstest.Connect(t, natstest.URL())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream, prefix := natstest.Names(t, nc)
	_, err = natsrelay.SetupStream(ctx, js, natsrelay.StreamOptions{Name: stream, SubjectPrefix: prefix})
	require.NoError(t, err)
	rl, err := natsrelay.New(src.Pool, nc, &natsrelay.Config{Stream: stream, SubjectPrefix: prefix, Logger: discard,
		PollMin: time.Millisecond, PollMax: 10 * time.Millisecond})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() { require.NoError(t, rl.Run(runCtx)) })

	var handlerFailures atomic.Int64
	handler := func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		var c counted
		if err := json.Unmarshal(ev.Data, &c); err != nil {
			return err
		}
		if rand.IntN(200) == 0 {
			handlerFailures.Add(1)
			return errors.New("injected failure")
		}
		_, err := tx.Exec(ctx, `INSERT INTO received (k, n, event_id) VALUES ($1, $2, $3)`, ev.Subject, c.N, ev.ID)
		return err
	}
	wg.Go(func() {
		require.NoError(t, inbox.Run(runCtx, dst.Pool, js, stream, handler, &inbox.Config{Name: "tally", Table: "tally_inbox",
			Logger: discard, BackoffMax: 50 * time.Millisecond}))
	})

	client, err := river.NewClient(riverpgxv5.New(src.Pool), &river.Config{Schema: src.Name, Logger: discard})
	require.NoError(t, err)
	ob, err := outbox.New(src.Pool, client, nil)
	require.NoError(t, err)
	errRollback := errors.New("roll back")
	var committed, rolledBack atomic.Int64
	var pwg sync.WaitGroup
	for g := range 16 {
		pwg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for committed.Load()+rolledBack.Load() < int64(eventsTotal) {
				k := "k" + strconv.Itoa(1+r.IntN(50))
				rollback := r.IntN(10) == 0
				_, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
					if _, err := tx.Exec(ctx, `INSERT INTO pings DEFAULT VALUES`); err != nil {
						return err
					}
					var n int
					if err := tx.QueryRow(ctx, `UPDATE nkeys SET n = n + 1 WHERE k = $1 RETURNING n`, k).Scan(&n); err != nil {
						return err
					}
					if err := tx.PublishKey("counter.bumped", k, counted{N: n}); err != nil {
						return err
					}
					if rollback {
						return errRollback
					}
					return nil
				})
				switch {
				case rollback:
					if !errors.Is(err, errRollback) {
						t.Errorf("rolled-back transaction: %v", err)
						return
					}
					rolledBack.Add(1)
				case err != nil:
					t.Errorf("transaction: %v", err)
					return
				default:
					committed.Add(1)
				}
			}
		})
	}
	pwg.Wait()
	require.False(t, t.Failed())
	total := int(committed.Load())
	t.Logf("%d committed, %d rolled back", total, rolledBack.Load())
	require.Positive(t, rolledBack.Load())

	deadline := time.Now().Add(2 * time.Minute)
	for {
		var n int
		require.NoError(t, dst.Pool.QueryRow(ctx, `SELECT count(*) FROM received`).Scan(&n))
		if n >= total {
			break
		}
		if time.Now().After(deadline) {
			var inStream uint64
			if s, err := js.Stream(ctx, stream); err == nil {
				if info, err := s.Info(ctx); err == nil {
					inStream = info.State.Msgs
				}
			}
			t.Fatalf("the consumer received %d of %d events in 2 minutes; the stream holds %d; the relay: %+v", n, total, inStream, rl.State())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Give a duplicate every chance to show before counting.
	time.Sleep(200 * time.Millisecond)

	// Exactly the committed events, each once.
	var srcIDs, dstIDs []int64
	rows, err := src.Pool.Query(ctx, `SELECT id FROM outbox_events ORDER BY id`)
	require.NoError(t, err)
	srcIDs, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	rows, err = dst.Pool.Query(ctx, `SELECT event_id FROM received ORDER BY event_id`)
	require.NoError(t, err)
	dstIDs, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Len(t, srcIDs, total)
	require.Equal(t, srcIDs, dstIDs)

	// Each key's counter arrives as 1, 2, 3, … in the order received.
	rows, err = dst.Pool.Query(ctx, `SELECT k, n FROM received ORDER BY seq`)
	require.NoError(t, err)
	next := map[string]int{}
	var k string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&k, &n}, func() error {
		if n != next[k]+1 {
			return fmt.Errorf("key %s: got %d after %d", k, n, next[k])
		}
		next[k] = n
		return nil
	})
	require.NoError(t, err)
	rows, err = src.Pool.Query(ctx, `SELECT k, n FROM nkeys`)
	require.NoError(t, err)
	_, err = pgx.ForEachRow(rows, []any{&k, &n}, func() error {
		if next[k] != n {
			return fmt.Errorf("key %s: the consumer's last is %d, the source's %d", k, next[k], n)
		}
		return nil
	})
	require.NoError(t, err)

	var inboxRows, failedRows int
	require.NoError(t, dst.Pool.QueryRow(ctx, `SELECT count(*), count(failed) FROM tally_inbox`).Scan(&inboxRows, &failedRows))
	require.Equal(t, total, inboxRows)
	require.Zero(t, failedRows)
	t.Logf("handler failures injected and retried: %d", handlerFailures.Load())
}
