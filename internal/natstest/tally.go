package natstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
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
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/inbox"
)

// TallyKeys is how many keys a Tally's producers share.
const TallyKeys = 50

// Tally is the end-to-end workload of the events relay: producers bump
// keyed counters in a source schema and publish each new value as an event
// of the key (each transaction takes its xid before the key's row lock, so
// xid order is not commit order; one in ten rolls back), and a consumer
// in a schema of its own receives them through the inbox. Verify then
// checks the consumer holds exactly the committed events, each once, and
// each key's values 1, 2, 3, … in the order received: commit order, since
// a rolled-back increment leaves no gap.
type Tally struct {
	Src, Dst *dbtest.Schema
	ob       *outbox.Outbox

	committed, rolledBack atomic.Int64
	// HandlerFailures counts the consumer's injected handler errors.
	HandlerFailures atomic.Int64
}

// NewTally makes the counters in src and the consumer's tables in a new
// schema.
func NewTally(ctx context.Context, t testing.TB, src *dbtest.Schema) *Tally {
	t.Helper()
	src.Scratch(ctx, t, `CREATE TABLE nkeys (k text PRIMARY KEY, n integer NOT NULL DEFAULT 0);
		INSERT INTO nkeys (k) SELECT 'k' || g FROM generate_series(1, `+strconv.Itoa(TallyKeys)+`) AS g`, `DROP TABLE nkeys`)
	dst := dbtest.TestSchema(ctx, t, nil)
	ddl, err := inbox.CreateTableSQL("tally_inbox")
	require.NoError(t, err)
	dst.Scratch(ctx, t, ddl+`; CREATE TABLE received (seq bigserial PRIMARY KEY, k text NOT NULL, n integer NOT NULL, event_id bigint NOT NULL)`,
		`DROP TABLE tally_inbox, received`)
	client, err := river.NewClient(riverpgxv5.New(src.Pool), &river.Config{Schema: src.Name, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	ob, err := outbox.New(src.Pool, client, nil)
	require.NoError(t, err)
	return &Tally{Src: src, Dst: dst, ob: ob}
}

// Committed counts the producers' committed transactions.
func (ta *Tally) Committed() int64 { return ta.committed.Load() }

// RolledBack counts the producers' rolled-back transactions.
func (ta *Tally) RolledBack() int64 { return ta.rolledBack.Load() }

var errRollback = errors.New("natstest: roll back")

// Produce runs transactions on goroutines until total were tried or ctx
// ends (total 0: until ctx ends), each goroutine pausing between its
// transactions, and returns when they stopped. A
// transaction that fails for another reason (a connection cut) counts as
// neither committed nor rolled back, and is checked afterwards by Verify
// through the source's counters, not by these counts.
func (ta *Tally) Produce(ctx context.Context, t testing.TB, goroutines, total int, pause time.Duration) {
	t.Helper()
	ta.produce(ctx, goroutines, total, pause)
}

// ProducePaced is Produce until ctx ends, each goroutine pausing between
// its transactions.
func (ta *Tally) ProducePaced(ctx context.Context, t testing.TB, goroutines int, pause time.Duration) {
	t.Helper()
	ta.produce(ctx, goroutines, 0, pause)
}

func (ta *Tally) produce(ctx context.Context, goroutines, total int, pause time.Duration) {
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			for ctx.Err() == nil && (total == 0 || ta.committed.Load()+ta.rolledBack.Load() < int64(total)) {
				k := "k" + strconv.Itoa(1+r.IntN(TallyKeys))
				rollback := r.IntN(10) == 0
				_, err := ta.ob.InTx(context.WithoutCancel(ctx), nil, func(ctx context.Context, tx *outbox.Tx) error {
					if _, err := tx.Exec(ctx, `INSERT INTO pings DEFAULT VALUES`); err != nil {
						return err
					}
					var n int
					if err := tx.QueryRow(ctx, `UPDATE nkeys SET n = n + 1 WHERE k = $1 RETURNING n`, k).Scan(&n); err != nil {
						return err
					}
					if err := tx.PublishKey("counter.bumped", k, map[string]int{"n": n}); err != nil {
						return err
					}
					if rollback {
						return errRollback
					}
					return nil
				})
				switch {
				case errors.Is(err, errRollback):
					ta.rolledBack.Add(1)
				case err == nil:
					ta.committed.Add(1)
				}
				if pause > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(pause):
					}
				}
			}
		})
	}
	wg.Wait()
}

// Consume runs the inbox consumer of stream until ctx ends; its handler
// fails one event in 200 (retried). It returns when the consumer stopped.
func (ta *Tally) Consume(ctx context.Context, t testing.TB, js jetstream.JetStream, stream string, logger *slog.Logger) {
	t.Helper()
	handler := func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		var c struct{ N int }
		if err := json.Unmarshal(ev.Data, &c); err != nil {
			return err
		}
		if rand.IntN(200) == 0 {
			ta.HandlerFailures.Add(1)
			return errors.New("injected failure")
		}
		_, err := tx.Exec(ctx, `INSERT INTO received (k, n, event_id) VALUES ($1, $2, $3)`, ev.Subject, c.N, ev.ID)
		return err
	}
	if err := inbox.Run(ctx, ta.Dst.Pool, js, stream, handler, &inbox.Config{Name: "tally", Table: "tally_inbox",
		Logger: logger, BackoffMax: 50 * time.Millisecond}); err != nil {
		t.Errorf("inbox.Run: %v", err)
	}
}

// Received is how many events the consumer holds.
func (ta *Tally) Received(ctx context.Context, t testing.TB) int {
	t.Helper()
	var n int
	require.NoError(t, ta.Dst.Pool.QueryRow(ctx, `SELECT count(*) FROM received`).Scan(&n))
	return n
}

// Verify waits up to timeout for the consumer to hold as many events as
// the source's outbox_events, then checks they are the same events, each
// once, each key's in commit order, ending at the source's counter; and
// that the stream holds each event once.
func (ta *Tally) Verify(ctx context.Context, t testing.TB, js jetstream.JetStream, stream string, timeout time.Duration) (events int) {
	t.Helper()
	var total int
	require.NoError(t, ta.Src.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_events`).Scan(&total))
	deadline := time.Now().Add(timeout)
	for n := ta.Received(ctx, t); n < total; n = ta.Received(ctx, t) {
		if time.Now().After(deadline) {
			t.Fatalf("natstest: the consumer received %d of %d events in %s\n%s", n, total, timeout, ta.diagnose(ctx, js, stream))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Give a duplicate every chance to show before counting.
	time.Sleep(200 * time.Millisecond)

	ids := func(pool interface {
		Query(context.Context, string, ...any) (pgx.Rows, error)
	}, sql string) []int64 {
		rows, err := pool.Query(ctx, sql)
		require.NoError(t, err)
		out, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		require.NoError(t, err)
		return out
	}
	src := ids(ta.Src.Pool, `SELECT id FROM outbox_events ORDER BY id`)
	require.Len(t, src, total)
	require.Equal(t, src, ids(ta.Dst.Pool, `SELECT event_id FROM received ORDER BY event_id`), "the consumer's events are the committed ones, each once")

	rows, err := ta.Dst.Pool.Query(ctx, `SELECT k, n FROM received ORDER BY seq`)
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
	require.NoError(t, err, "each key's events arrive in commit order")
	rows, err = ta.Src.Pool.Query(ctx, `SELECT k, n FROM nkeys`)
	require.NoError(t, err)
	_, err = pgx.ForEachRow(rows, []any{&k, &n}, func() error {
		if next[k] != n {
			return fmt.Errorf("key %s: the consumer's last is %d, the source's %d", k, next[k], n)
		}
		return nil
	})
	require.NoError(t, err)

	var inboxRows, failedRows int
	require.NoError(t, ta.Dst.Pool.QueryRow(ctx, `SELECT count(*), count(failed) FROM tally_inbox`).Scan(&inboxRows, &failedRows))
	require.Equal(t, total, inboxRows)
	require.Zero(t, failedRows)

	s, err := js.Stream(ctx, stream)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(total), info.State.Msgs, "the stream holds each event once")
	return total
}

// diagnose describes where the events stand, for a Verify that timed out:
// the stream, the relays' cursors, the newest event, and the sessions
// holding xids (which hold the relay's settled mark back).
func (ta *Tally) diagnose(ctx context.Context, js jetstream.JetStream, stream string) string {
	var b strings.Builder
	if s, err := js.Stream(ctx, stream); err != nil {
		fmt.Fprintf(&b, "stream: %v\n", err)
	} else if info, err := s.Info(ctx); err != nil {
		fmt.Fprintf(&b, "stream: %v\n", err)
	} else {
		fmt.Fprintf(&b, "stream: %d messages, last sequence %d\n", info.State.Msgs, info.State.LastSeq)
	}
	var maxID int64
	_ = ta.Src.Pool.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM outbox_events`).Scan(&maxID)
	var relays string
	_ = ta.Src.Pool.QueryRow(ctx, `SELECT coalesce(string_agg(format('%s owner %s active %s last_id %s last_seq %s pending %s', stream, owner, active, last_id, last_seq, pending), '; '), 'none') FROM outbox_event_relay_lag`).Scan(&relays)
	var mark string
	_ = ta.Src.Pool.QueryRow(ctx, `SELECT format('last_id %s, snapshot %s', last_id, pg_current_snapshot()) FROM outbox_events_mark(9223372036854775807)`).Scan(&mark)
	var holders string
	_ = ta.Src.Pool.QueryRow(ctx, `SELECT coalesce(string_agg(format('pid %s xid %s %s (%s) for %s: %s', pid, backend_xid, state, application_name, now() - xact_start, left(query, 80)), E'\n  '), 'none')
		FROM pg_stat_activity WHERE backend_xid IS NOT NULL`).Scan(&holders)
	var consumerPos int64
	_ = ta.Dst.Pool.QueryRow(ctx, `SELECT coalesce(max(stream_seq), 0) FROM tally_inbox`).Scan(&consumerPos)
	fmt.Fprintf(&b, "newest event id %d; relays: %s\nmark: %s\nconsumer position: %d\nsessions holding xids:\n  %s", maxID, relays, mark, consumerPos, holders)
	return b.String()
}
