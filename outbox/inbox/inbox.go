// Package inbox consumes events from a JetStream stream and runs a handler
// for each inside the consumer's own Postgres transaction, together with an
// insert into an inbox table keyed by the event's source and id. The inbox
// is also the consumer's durable position (the highest stream sequence of
// its rows): a consumer that restarts, reconnects or retries reads on from
// the message after it, and an event met again (a publisher that sent it
// twice) finds its row and is skipped. Each event's effect happens once.
//
// It reads the CloudEvents 1.0 JSON that outbox/natsrelay publishes, and
// any other publisher's structured CloudEvents; it needs nothing of
// aftercommit's schema, only its own table (CreateTable), so a service that
// is not aftercommit's own can use it.
//
// Messages are handled in stream order, a batch per transaction. A
// handler's error rolls back the batch from that event on: the events
// before it commit, and reading starts again after them (after a backoff),
// so the order holds — for each key too — whatever fails. After
// MaxAttempts tries a failing event is recorded in the inbox as failed,
// with its error, and passed over.
//
// Why not a durable consumer with acks: JetStream redelivers a message
// that was not acknowledged (a nak, a lost ack, a crash) after messages
// behind it were delivered, so a consumer that acks after commit handles
// events out of order whenever anything fails; the ordered consumer with
// the position in Postgres cannot.
package inbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of Config.
const (
	// TableDefault is the inbox table's name.
	TableDefault = "aftercommit_inbox"
	// BatchSizeDefault is the most messages one transaction handles.
	BatchSizeDefault = 100
	// BackoffMaxDefault is the longest wait after a failed batch.
	BackoffMaxDefault = 10 * time.Second
)

// ErrConfig reports a Config Run cannot use.
var ErrConfig = errors.New("inbox: invalid configuration")

// Event is one delivered event: the CloudEvents attributes, and where the
// message sits in the stream.
type Event struct {
	// ID, Source, Type, Subject and Time are CloudEvents' attributes. For
	// an outbox/natsrelay event: the outbox_events id, the relay's source,
	// the topic, the key ("" when none) and the transaction's time.
	ID      string
	Source  string
	Type    string
	Subject string
	Time    time.Time
	// Data is the event's data, the JSON as published.
	Data json.RawMessage
	// Stream and Sequence place the message in JetStream; Attempt counts
	// this consumer's tries of the event (1 the first time).
	Stream   string
	Sequence uint64
	Attempt  int
}

// Handler does a consumer's work for one event, in tx: its writes commit
// with the event's inbox row, or not at all. It must not commit or roll
// back tx, nor act outside the database in a way a rollback cannot undo.
type Handler func(ctx context.Context, tx pgx.Tx, ev *Event) error

// Config tunes Run. A nil *Config takes every default.
type Config struct {
	// Name is the consumer's name in the inbox table, so several consumers
	// can share one table; its rows are its position. Required.
	Name string
	// FilterSubjects, when not empty, are the only subjects read (e.g.
	// "aftercommit.events.donation.created.>").
	FilterSubjects []string
	// Table is the inbox table (CreateTable), optionally schema-qualified.
	// Defaults to TableDefault.
	Table string
	// BatchSize is the most messages read and handled in one
	// transaction. Defaults to BatchSizeDefault.
	BatchSize int
	// MaxAttempts: an event whose handler failed this many times in a row
	// is recorded as failed (with the error) and passed over, so one event
	// cannot hold back the rest forever. 0: retried without end.
	MaxAttempts int
	// BackoffMax bounds the wait after a failed batch, which doubles from
	// 100ms. Defaults to BackoffMaxDefault.
	BackoffMax time.Duration
	// OnBatch, when set, is called after every committed batch with the
	// number of events handled and of duplicates passed over.
	OnBatch func(ctx context.Context, handled, duplicates int)
	// Logger receives failures. Defaults to slog.Default().
	Logger *slog.Logger
}

var tableName = regexp.MustCompile(`^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*$`)

// CreateTableSQL returns the DDL of an inbox table: one row per event
// handled (or failed for good), keyed by consumer, source and id.
func CreateTableSQL(table string) (string, error) {
	if !tableName.MatchString(table) {
		return "", fmt.Errorf("%w: table name %q: use lower-case letters, digits and '_', optionally schema-qualified", ErrConfig, table)
	}
	return `CREATE TABLE IF NOT EXISTS ` + table + ` (
    consumer    text        NOT NULL,
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    type        text        NOT NULL,
    subject     text,
    stream      text        NOT NULL,
    stream_seq  bigint      NOT NULL,
    -- NULL: handled. Otherwise the handler's last error, after which the
    -- event was passed over (Config.MaxAttempts).
    failed      text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, source, event_id)
);
CREATE INDEX IF NOT EXISTS ` + indexName(table) + ` ON ` + table + ` (consumer, stream, stream_seq)`, nil
}

// indexName is the name of the position index of table.
func indexName(table string) string {
	if i := strings.IndexByte(table, '.'); i >= 0 {
		table = table[i+1:]
	}
	return table + "_position_idx"
}

// CreateTable creates the inbox table if it does not exist.
func CreateTable(ctx context.Context, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, table string) error {
	ddl, err := CreateTableSQL(table)
	if err != nil {
		return err
	}
	if _, err := db.Exec(ctx, ddl); err != nil {
		return fmt.Errorf("inbox: creating %s: %w", table, err)
	}
	return nil
}

// consumer is one Run's state.
type consumer struct {
	pool   *pgxpool.Pool
	js     jetstream.JetStream
	stream string
	h      Handler
	cfg    Config
	log    *slog.Logger

	insertSQL   string
	positionSQL string
	// attempts counts the tries of the event at a stream sequence; only
	// the event at the head of the line can fail, so it holds one entry.
	attempts map[uint64]int
}

// Run reads stream (the messages of Config.FilterSubjects) and handles them
// until ctx ends, then returns nil. It returns an error only for a Config
// it cannot use; Postgres or NATS being down is logged and retried.
//
// Run reads from the message after the inbox's position with an ordered
// consumer (ephemeral, in stream order, no acks), so a crash, a handler's
// error or a lost connection resumes exactly there: in order, with nothing
// handled twice and nothing skipped. One Run per Name at a time: two would
// handle the same events, and the second's inserts would wait for the
// first's and then skip them.
func Run(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream, stream string, h Handler, cfg *Config) error {
	c := Config{}
	if cfg != nil {
		c = *cfg
	}
	if pool == nil || js == nil || h == nil || stream == "" {
		return fmt.Errorf("%w: a pool, a JetStream, a stream and a handler are required", ErrConfig)
	}
	if c.Name == "" {
		return fmt.Errorf("%w: the consumer needs a Name", ErrConfig)
	}
	if c.Table == "" {
		c.Table = TableDefault
	}
	if c.BatchSize == 0 {
		c.BatchSize = BatchSizeDefault
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = BackoffMaxDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if !tableName.MatchString(c.Table) {
		return fmt.Errorf("%w: table name %q", ErrConfig, c.Table)
	}
	if c.BatchSize < 0 || c.MaxAttempts < 0 || c.BackoffMax < 0 {
		return fmt.Errorf("%w: batch size, max attempts and backoff must not be negative", ErrConfig)
	}
	k := newConsumer(pool, js, stream, h, c)
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		sleep(ctx, backoff)
		if err := k.run(ctx); ctx.Err() == nil && !errors.Is(err, errHandler) {
			k.log.Warn("inbox: consuming failed; resuming from the inbox's position", "error", err)
		}
		backoff = min(max(2*backoff, 100*time.Millisecond), c.BackoffMax)
	}
	return nil
}

// newConsumer returns the state of a Run with c (defaults applied).
func newConsumer(pool *pgxpool.Pool, js jetstream.JetStream, stream string, h Handler, c Config) *consumer {
	k := &consumer{pool: pool, js: js, stream: stream, h: h, cfg: c, log: c.Logger.With("consumer", c.Name, "stream", stream),
		attempts: map[uint64]int{}}
	k.insertSQL = `INSERT INTO ` + c.Table + ` (consumer, source, event_id, type, subject, stream, stream_seq, failed)
SELECT $1, s, i, t, nullif(sub, ''), $2, q, f
  FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[]) AS u(s, i, t, sub, q, f)
    ON CONFLICT (consumer, source, event_id) DO NOTHING
RETURNING source, event_id`
	k.positionSQL = `SELECT coalesce(max(stream_seq), 0) FROM ` + c.Table + ` WHERE consumer = $1 AND stream = $2`
	return k
}

// errHandler ends a run whose handler failed (the failure is logged).
var errHandler = errors.New("inbox: a handler failed")

// run reads from the inbox's position on, until an error.
func (k *consumer) run(ctx context.Context) error {
	var pos int64
	if err := k.pool.QueryRow(ctx, k.positionSQL, k.cfg.Name, k.stream).Scan(&pos); err != nil {
		return fmt.Errorf("reading the position: %w", err)
	}
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: k.cfg.FilterSubjects, DeliverPolicy: jetstream.DeliverAllPolicy}
	if pos > 0 {
		occ.DeliverPolicy, occ.OptStartSeq = jetstream.DeliverByStartSequencePolicy, uint64(pos)+1
	}
	cons, err := k.js.OrderedConsumer(ctx, k.stream, occ)
	if err != nil {
		return fmt.Errorf("creating an ordered consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * k.cfg.BatchSize))
	if err != nil {
		return fmt.Errorf("consuming: %w", err)
	}
	// The reader keeps up to two batches ahead, so a batch takes every
	// message already received. Handed over one at a time, a burst was
	// handled one transaction per event (the reader had not yet sent the
	// next when the batch looked for it): at 1,000 events/s on 2 cores that
	// put 50–160 ms on the consumer's p99 (BENCHMARKS §18).
	msgs := make(chan jetstream.Msg, 2*k.cfg.BatchSize)
	errc := make(chan error, 1)
	done := make(chan struct{})
	defer func() { it.Stop(); close(done) }()
	go func() {
		for {
			m, err := it.Next()
			if err != nil {
				errc <- err
				return
			}
			select {
			case msgs <- m:
			case <-done:
				return
			}
		}
	}()
	for {
		var batch []jetstream.Msg
		select {
		case m := <-msgs:
			batch = append(batch, m)
		case err := <-errc:
			return fmt.Errorf("consuming: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		}
	more:
		for len(batch) < k.cfg.BatchSize {
			select {
			case m := <-msgs:
				batch = append(batch, m)
			default:
				break more
			}
		}
		if err := k.handle(ctx, batch); err != nil {
			return err
		}
	}
}

// delivery is a message's event.
type delivery struct {
	ev *Event
}

// decode reads a message's event, or returns why it cannot.
func decode(m jetstream.Msg) (*Event, error) {
	var ce struct {
		SpecVersion string          `json:"specversion"`
		ID          string          `json:"id"`
		Source      string          `json:"source"`
		Type        string          `json:"type"`
		Subject     string          `json:"subject"`
		Time        time.Time       `json:"time"`
		Data        json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(m.Data(), &ce); err != nil {
		return nil, fmt.Errorf("not CloudEvents JSON: %w", err)
	}
	if ce.SpecVersion != "1.0" || ce.ID == "" || ce.Source == "" || ce.Type == "" {
		return nil, fmt.Errorf("not a CloudEvents 1.0 event (specversion %q, id %q, source %q, type %q)", ce.SpecVersion, ce.ID, ce.Source, ce.Type)
	}
	md, err := m.Metadata()
	if err != nil {
		return nil, fmt.Errorf("not a JetStream message: %w", err)
	}
	return &Event{
		ID: ce.ID, Source: ce.Source, Type: ce.Type, Subject: ce.Subject, Time: ce.Time, Data: ce.Data,
		Stream: md.Stream, Sequence: md.Sequence.Stream,
	}, nil
}

// handle runs a batch in one transaction; the events before the first
// that fails commit, and errHandler makes run start again after them.
func (k *consumer) handle(ctx context.Context, msgs []jetstream.Msg) error {
	ds := make([]delivery, 0, len(msgs))
	for _, m := range msgs {
		ev, err := decode(m)
		if err != nil {
			// No handler can read it, and reading it again changes
			// nothing: it is passed over (its sequence is not recorded,
			// so a restart reads it again and logs it again).
			k.log.Error("inbox: passing over a malformed message", "subject", m.Subject(), "error", err)
			continue
		}
		ds = append(ds, delivery{ev: ev})
	}
	for len(ds) > 0 {
		head := ds[0].ev.Sequence
		ds[0].ev.Attempt = k.attempts[head] + 1
		done, herr, err := k.tx(ctx, ds)
		if err != nil {
			return err
		}
		if herr == nil {
			clear(k.attempts)
			return nil
		}
		d := ds[done]
		if done > 0 {
			clear(k.attempts)
		}
		k.attempts[d.ev.Sequence]++
		if k.cfg.MaxAttempts == 0 || k.attempts[d.ev.Sequence] < k.cfg.MaxAttempts {
			k.log.Warn("inbox: a handler failed; reading again from its event", "id", d.ev.ID, "type", d.ev.Type,
				"subject", d.ev.Subject, "attempt", k.attempts[d.ev.Sequence], "error", herr)
			return errHandler
		}
		k.log.Error("inbox: passing over an event whose handler kept failing", "id", d.ev.ID, "type", d.ev.Type,
			"subject", d.ev.Subject, "attempts", k.attempts[d.ev.Sequence], "error", herr)
		if err := k.fail(ctx, d, herr); err != nil {
			return err
		}
		clear(k.attempts)
		ds = ds[done+1:]
	}
	return nil
}

// tx handles ds in one transaction. When the handler of ds[i] fails, the
// transaction is rolled back and ds[:i] is handled again in a new one
// (their handlers ran in a transaction that did not commit); should one of
// those fail this time, the prefix before it is tried, and so on. done is
// how many events, a prefix of ds, committed; herr is the error of
// ds[done]'s handler (nil: every event committed).
func (k *consumer) tx(ctx context.Context, ds []delivery) (done int, herr error, err error) {
	n, herr, err := k.try(ctx, ds)
	for err == nil && herr != nil && n > 0 {
		m, herr2, err2 := k.try(ctx, ds[:n])
		if err2 != nil {
			return 0, nil, err2
		}
		if herr2 == nil {
			return n, herr, nil
		}
		n, herr = m, herr2
	}
	return n, herr, err
}

// try inserts the inbox rows of ds and runs the handlers of the new ones
// in order, committing only when all succeed; otherwise it returns the
// index and error of the first failure, with nothing committed.
func (k *consumer) try(ctx context.Context, ds []delivery) (failedAt int, herr error, err error) {
	tx, err := k.pool.Begin(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("beginning: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	fresh, err := k.insert(ctx, tx, ds, nil)
	if err != nil {
		return 0, nil, err
	}
	dups := 0
	for i, d := range ds {
		if !fresh[[2]string{d.ev.Source, d.ev.ID}] {
			dups++
			continue
		}
		if d.ev.Attempt == 0 {
			d.ev.Attempt = 1
		}
		if err := k.h(ctx, tx, d.ev); err != nil {
			if ctx.Err() != nil {
				return 0, nil, ctx.Err()
			}
			return i, err, nil
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, nil, fmt.Errorf("committing: %w", err)
	}
	if k.cfg.OnBatch != nil {
		k.cfg.OnBatch(ctx, len(ds)-dups, dups)
	}
	return len(ds), nil, nil
}

// insert writes the inbox rows of ds (failed: the error of each, or nil)
// and returns the (source, id) pairs that were new.
func (k *consumer) insert(ctx context.Context, tx pgx.Tx, ds []delivery, failed []*string) (map[[2]string]bool, error) {
	n := len(ds)
	sources, ids, types, subjects := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	seqs := make([]int64, n)
	if failed == nil {
		failed = make([]*string, n)
	}
	for i, d := range ds {
		sources[i], ids[i], types[i], subjects[i], seqs[i] = d.ev.Source, d.ev.ID, d.ev.Type, d.ev.Subject, int64(d.ev.Sequence)
	}
	rows, err := tx.Query(ctx, k.insertSQL, k.cfg.Name, ds[0].ev.Stream, sources, ids, types, subjects, seqs, failed)
	if err != nil {
		return nil, fmt.Errorf("inserting into %s: %w", k.cfg.Table, err)
	}
	fresh := make(map[[2]string]bool, n)
	var src, id string
	_, err = pgx.ForEachRow(rows, []any{&src, &id}, func() error {
		fresh[[2]string{src, id}] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("inserting into %s: %w", k.cfg.Table, err)
	}
	return fresh, nil
}

// fail records an event as failed for good.
func (k *consumer) fail(ctx context.Context, d delivery, herr error) error {
	tx, err := k.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("beginning: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	msg := herr.Error()
	if _, err := k.insert(ctx, tx, []delivery{d}, []*string{&msg}); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
