package natsrelay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/natstest"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

func TestMain(m *testing.M) { dbtest.WrapTestMain(m) }

var discard = slog.New(slog.DiscardHandler)

// env is one test's schema, NATS connection, stream and outbox.
type env struct {
	s      *dbtest.Schema
	nc     *nats.Conn
	js     jetstream.JetStream
	stream string
	prefix string
	ob     *outbox.Outbox
}

func newEnv(ctx context.Context, t testing.TB, natsURL string) *env {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, nil)
	nc := natstest.Connect(t, natsURL)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream, prefix := natstest.Names(ctx, t, nc)
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name, Logger: discard})
	require.NoError(t, err)
	ob, err := outbox.New(s.Pool, client, nil)
	require.NoError(t, err)
	return &env{s: s, nc: nc, js: js, stream: stream, prefix: prefix, ob: ob}
}

// config is a relay config for the env's stream, polling fast.
func (e *env) config() natsrelay.Config {
	return natsrelay.Config{
		Stream: e.stream, SubjectPrefix: e.prefix, CreateStream: true,
		Source: "/test", PollMin: time.Millisecond, PollMax: 10 * time.Millisecond,
		LeaseTTL: time.Second, Logger: discard,
	}
}

// start runs a relay until t ends (or stop is called), and returns it.
func (e *env) start(ctx context.Context, t testing.TB, cfg natsrelay.Config) (r *natsrelay.Relay, stop func()) {
	t.Helper()
	r, err := natsrelay.New(e.s.Pool, e.nc, &cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		require.NoError(t, <-done)
	}
	t.Cleanup(stop)
	return r, stop
}

// msg is one message of the stream, decoded.
type msg struct {
	seq     uint64
	subject string
	header  nats.Header
	ev      natsrelay.CloudEvent
}

// read returns the stream's messages 1..n, waiting up to 30 s for the
// n-th, and fails if the stream holds more than n.
func (e *env) read(ctx context.Context, t *testing.T, n int) []msg {
	t.Helper()
	var s jetstream.Stream
	var last uint64
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		s, err = e.js.Stream(ctx, e.stream)
		if err == nil {
			info, err := s.Info(ctx)
			require.NoError(t, err)
			last = info.State.LastSeq
			if last >= uint64(n) {
				break
			}
		} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
			require.NoError(t, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream holds %d messages after 30s, want %d", last, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	require.Equal(t, uint64(n), last, "the stream holds more messages than were committed")
	out := make([]msg, 0, n)
	for seq := uint64(1); seq <= last; seq++ {
		m, err := s.GetMsg(ctx, seq)
		require.NoError(t, err)
		var ev natsrelay.CloudEvent
		require.NoError(t, json.Unmarshal(m.Data, &ev), "message %d: %s", seq, m.Data)
		out = append(out, msg{seq: seq, subject: m.Subject, header: m.Header, ev: ev})
	}
	return out
}

// TestRelaysCommittedEventsOnceInOrder: events of committed transactions
// (with and without keys, through outbox.Tx and plain SQL) reach the
// stream exactly once in id order with the CloudEvents envelope; rolled
// back ones never do; the cursor ends at the last event.
func TestRelaysCommittedEventsOnceInOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(ctx, t, natstest.URL())
	r, _ := e.start(ctx, t, e.config())

	type payload struct {
		N int `json:"n"`
	}
	errRollback := errors.New("roll back")
	var want []int
	for i := range 60 {
		_, err := e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			if err := tx.PublishKey("order.placed", strconv.Itoa(i%4), payload{N: i}); err != nil {
				return err
			}
			if err := tx.Publish("order.audit", payload{N: 1000 + i}); err != nil {
				return err
			}
			if i%5 == 3 {
				return errRollback
			}
			return nil
		})
		if i%5 == 3 {
			require.ErrorIs(t, err, errRollback)
			continue
		}
		require.NoError(t, err)
		want = append(want, i, 1000+i)
	}
	_, err := e.s.Pool.Exec(ctx, `INSERT INTO outbox_events (topic, key, payload) VALUES ('order.placed', 'a.b c_d', '{"n": 5000}')`)
	require.NoError(t, err)
	want = append(want, 5000)

	got := e.read(ctx, t, len(want))
	var lastID int64
	for i, m := range got {
		var p payload
		require.NoError(t, json.Unmarshal(m.ev.Data, &p))
		require.Equal(t, want[i], p.N, "message %d", m.seq)
		id, ok := m.ev.EventID()
		require.True(t, ok, "id %q", m.ev.ID)
		require.Greater(t, id, lastID, "ids in order")
		lastID = id
		require.Equal(t, m.ev.ID, m.header.Get(jetstream.MsgIDHeader))
		require.Equal(t, natsrelay.ContentType, m.header.Get("Content-Type"))
		require.Equal(t, "1.0", m.ev.SpecVersion)
		require.Equal(t, "/test", m.ev.Source)
		require.Equal(t, "application/json", m.ev.DataContentType)
		require.WithinDuration(t, time.Now(), m.ev.Time, time.Minute)
		switch {
		case p.N == 5000:
			require.Equal(t, "order.placed", m.ev.Type)
			require.Equal(t, "a.b c_d", m.ev.Subject)
			require.Equal(t, e.prefix+".order.placed._YS5iIGNfZA", m.subject)
		case p.N >= 1000:
			require.Equal(t, "order.audit", m.ev.Type)
			require.Empty(t, m.ev.Subject)
			require.Equal(t, e.prefix+".order.audit._", m.subject)
		default:
			require.Equal(t, "order.placed", m.ev.Type)
			require.Equal(t, strconv.Itoa(p.N%4), m.ev.Subject)
			require.Equal(t, e.prefix+".order.placed."+strconv.Itoa(p.N%4), m.subject)
		}
	}
	require.Eventually(t, func() bool {
		var id, seq int64
		require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT last_id, last_seq FROM outbox_event_relays WHERE stream = $1`, e.stream).Scan(&id, &seq))
		return id == lastID && seq == int64(len(want))
	}, 10*time.Second, 5*time.Millisecond)
	st := r.State()
	require.True(t, st.Active)
	require.Equal(t, uint64(len(want)), st.Published)
	require.Equal(t, lastID, st.LastID)
	require.Empty(t, st.Err)

	var pending int64
	require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT pending FROM outbox_event_relay_lag WHERE stream = $1`, e.stream).Scan(&pending))
	require.Zero(t, pending)
}

// TestWaitsForAnOpenTransactionsIDs: an event id taken by a transaction
// still open holds back the events after it, even committed ones, so the
// stream never passes over an event that commits later; once it commits,
// both go in id order.
func TestWaitsForAnOpenTransactionsIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(ctx, t, natstest.URL())
	e.start(ctx, t, e.config())

	open, err := e.s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = open.Rollback(ctx) }()
	var first int64
	require.NoError(t, open.QueryRow(ctx, `INSERT INTO outbox_events (topic, payload) VALUES ('a.first', '{}') RETURNING id`).Scan(&first))
	var second int64
	require.NoError(t, e.s.Pool.QueryRow(ctx, `INSERT INTO outbox_events (topic, payload) VALUES ('a.second', '{}') RETURNING id`).Scan(&second))
	require.Greater(t, second, first)

	// Rounds run every few milliseconds: give them time to (wrongly)
	// publish the committed second event.
	time.Sleep(300 * time.Millisecond)
	s, err := e.js.Stream(ctx, e.stream)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Zero(t, info.State.Msgs, "an event after an open transaction's id was published")

	require.NoError(t, open.Commit(ctx))
	got := e.read(ctx, t, 2)
	require.Equal(t, []string{"a.first", "a.second"}, []string{got[0].ev.Type, got[1].ev.Type})
	require.Equal(t, []string{strconv.FormatInt(first, 10), strconv.FormatInt(second, 10)}, []string{got[0].ev.ID, got[1].ev.ID})
}

// TestKeyOrderIsCommitOrderWhenTheXidCameFirst: a transaction that took
// its xid before another, but took the key's row lock after it commits,
// comes after it in the stream: the order is commit order, not xid order.
func TestKeyOrderIsCommitOrderWhenTheXidCameFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(ctx, t, natstest.URL())
	e.start(ctx, t, e.config())
	var pingID int64
	require.NoError(t, e.s.Pool.QueryRow(ctx, `INSERT INTO pings DEFAULT VALUES RETURNING id`).Scan(&pingID))

	publish := func(tx pgx.Tx, count int) error {
		_, err := e.ob.JoinTx(ctx, tx, func(_ context.Context, tx *outbox.Tx) error {
			return tx.PublishKey("ping.counted", "p", map[string]int{"count": count})
		})
		return err
	}
	early, err := e.s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = early.Rollback(ctx) }()
	var earlyXid, lateXid uint64
	require.NoError(t, early.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(&earlyXid))

	late, err := e.s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = late.Rollback(ctx) }()
	require.NoError(t, late.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(&lateXid))
	require.Greater(t, lateXid, earlyXid)
	_, err = late.Exec(ctx, `UPDATE pings SET ping_count = ping_count + 1 WHERE id = $1`, pingID)
	require.NoError(t, err)

	locked := make(chan error, 1)
	go func() {
		_, err := early.Exec(ctx, `UPDATE pings SET ping_count = ping_count + 1 WHERE id = $1`, pingID)
		if err == nil {
			err = publish(early, 2)
		}
		if err == nil {
			err = early.Commit(ctx)
		}
		locked <- err
	}()
	// early now waits for late's row lock: late publishes and commits.
	require.Eventually(t, func() bool {
		var waiting bool
		require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND transactionid = $1::text::xid)`, strconv.FormatUint(lateXid, 10)).Scan(&waiting))
		return waiting
	}, 10*time.Second, time.Millisecond)
	require.NoError(t, publish(late, 1))
	require.NoError(t, late.Commit(ctx))
	require.NoError(t, <-locked)

	got := e.read(ctx, t, 2)
	require.JSONEq(t, `{"count": 1}`, string(got[0].ev.Data))
	require.JSONEq(t, `{"count": 2}`, string(got[1].ev.Data))
}

// TestCrashAfterPublishSendsNothingTwice: a relay that published and died
// before storing its cursor (the cursor set back by hand) leaves a stream
// ahead of the cursor; the next relay finds the stream's last event,
// moves the cursor there and sends only what follows.
func TestCrashAfterPublishSendsNothingTwice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(ctx, t, natstest.URL())
	insert := func(from, to int) {
		t.Helper()
		_, err := e.s.Pool.Exec(ctx, `INSERT INTO outbox_events (topic, key, payload)
			SELECT 'crash.test', (g % 7)::text, jsonb_build_object('n', g) FROM generate_series($1::int, $2::int) AS g`, from, to)
		require.NoError(t, err)
	}
	insert(1, 500)
	_, stop := e.start(ctx, t, e.config())
	e.read(ctx, t, 500)
	stop()
	_, err := e.s.Pool.Exec(ctx, `UPDATE outbox_event_relays SET last_id = 123, last_seq = 123 WHERE stream = $1`, e.stream)
	require.NoError(t, err)

	insert(501, 800)
	r, _ := e.start(ctx, t, e.config())
	got := e.read(ctx, t, 800)
	for i, m := range got {
		require.JSONEq(t, fmt.Sprintf(`{"n": %d}`, i+1), string(m.ev.Data))
	}
	require.Eventually(t, func() bool { return r.State().LastSeq == 800 }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, uint64(300), r.State().Published)
}

// TestForeignMessageStopsTheRelay: a message another publisher put in the
// stream breaks the relay's sequence; the relay says so and publishes
// nothing after it.
func TestForeignMessageStopsTheRelay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(ctx, t, natstest.URL())
	_, err := natsrelay.SetupStream(ctx, e.js, natsrelay.StreamOptions{Name: e.stream, SubjectPrefix: e.prefix, Memory: true})
	require.NoError(t, err)
	_, err = e.js.Publish(ctx, e.prefix+".someone.else._", []byte(`{}`))
	require.NoError(t, err)
	_, err = e.s.Pool.Exec(ctx, `INSERT INTO outbox_events (topic, payload) VALUES ('x.y', '{}')`)
	require.NoError(t, err)
	r, _ := e.start(ctx, t, e.config())
	require.Eventually(t, func() bool {
		return r.State().Err != ""
	}, 10*time.Second, 5*time.Millisecond)
	require.Contains(t, r.State().Err, natsrelay.ErrForeignMessage.Error())
	s, err := e.js.Stream(ctx, e.stream)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs)
}

// TestConfigErrors: what New refuses.
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	nc := natstest.Connect(t, natstest.URL())
	for name, cfg := range map[string]natsrelay.Config{
		"stream with a dot":    {Stream: "a.b"},
		"prefix with wildcard": {SubjectPrefix: "a.*"},
		"empty prefix word":    {SubjectPrefix: "a..b"},
		"short lease":          {LeaseTTL: time.Millisecond},
		"poll max below min":   {PollMin: time.Second, PollMax: time.Millisecond},
		"negative batch":       {BatchSize: -1},
		"bad replicas":         {CreateStream: true, StreamOptions: natsrelay.StreamOptions{Replicas: 2}},
	} {
		_, err := natsrelay.New(s.Pool, nc, &cfg)
		require.ErrorIs(t, err, natsrelay.ErrConfig, name)
	}
	_, err := natsrelay.New(nil, nc, nil)
	require.ErrorIs(t, err, natsrelay.ErrConfig)
}

// TestSequenceCacheIsRefused: ids of a cached sequence do not follow the
// order they were taken in; Run refuses to start.
func TestSequenceCacheIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(ctx, t, natstest.URL())
	e.s.Scratch(ctx, t, `ALTER SEQUENCE outbox_events_id_seq CACHE 10`, `ALTER SEQUENCE outbox_events_id_seq CACHE 1`)
	cfg := e.config()
	r, err := natsrelay.New(e.s.Pool, e.nc, &cfg)
	require.NoError(t, err)
	require.ErrorIs(t, r.Run(ctx), natsrelay.ErrSequenceCache)
}

// TestMarkWaitsForTheNewestOpenTransaction pins outbox_events_mark: a
// transaction that took the newest xid and an event id, still open, keeps
// every later mark unsettled even after a newer transaction commits (a
// snapshot's xmax would not: it is one past the newest xid that ended, and
// the open transaction is then in no snapshot, so a later xmin passes it).
func TestMarkWaitsForTheNewestOpenTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(ctx, t, natstest.URL())
	mark := func(after int64) (lastID int64, xid *uint64, xmin uint64) {
		t.Helper()
		var xidS *string
		var xminS string
		require.NoError(t, e.s.Pool.QueryRow(ctx, `SELECT last_id, mark_xid::text, snap_xmin::text FROM outbox_events_mark($1)`, after).Scan(&lastID, &xidS, &xminS))
		xmin, err := strconv.ParseUint(xminS, 10, 64)
		require.NoError(t, err)
		if xidS != nil {
			x, err := strconv.ParseUint(*xidS, 10, 64)
			require.NoError(t, err)
			xid = &x
		}
		return lastID, xid, xmin
	}

	open, err := e.s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = open.Rollback(ctx) }()
	var id1 int64
	require.NoError(t, open.QueryRow(ctx, `INSERT INTO outbox_events (topic, payload) VALUES ('m.open', '{}') RETURNING id`).Scan(&id1))

	last, xid, _ := mark(0)
	require.GreaterOrEqual(t, last, id1)
	require.NotNil(t, xid, "a mark above after takes an xid")
	_, err = e.s.Pool.Exec(ctx, `INSERT INTO outbox_events (topic, payload) VALUES ('m.later', '{}')`)
	require.NoError(t, err)
	last2, xid2, xmin := mark(last)
	require.Greater(t, last2, last)
	require.NotNil(t, xid2)
	require.LessOrEqual(t, xmin, *xid, "the mark settled while a transaction holding an id below it is open")

	_, noXid, _ := mark(last2)
	require.Nil(t, noXid, "no new id: no xid taken")

	require.NoError(t, open.Commit(ctx))
	require.Eventually(t, func() bool {
		_, _, xmin := mark(last2)
		return xmin > *xid2
	}, 30*time.Second, 10*time.Millisecond, "the marks settle once the transaction ended")
}
