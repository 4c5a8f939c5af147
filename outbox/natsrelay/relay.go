// Package natsrelay relays the events of outbox_events (outbox.Tx.Publish
// and PublishKey, or any producer's INSERT) to a NATS JetStream stream,
// exactly once and in order, as CloudEvents 1.0 JSON.
//
// # Order
//
// The relay sends events in id order. outbox.Tx writes a transaction's
// events right before its COMMIT, after every row lock the transaction
// took, so of two transactions that conflict on a row the one that
// commits first has the smaller ids: for each key whose writers conflict,
// id order is commit order. An id is settled once no transaction can still
// commit it: migration 0030 makes every event take its transaction's xid
// before its id, and outbox_events_mark() reads the sequence's last value
// and then a snapshot's xmax, so every id up to that value is settled once
// a later snapshot's xmin reaches that xmax. The relay reads only settled
// ids, so it never passes over an event that commits later.
//
// # Exactly once
//
// Each message carries the event's id as Nats-Msg-Id, and expects the
// stream's last sequence to be the one before it (Nats-Expected-Last-
// Sequence): a message can only land right after the one the relay sent
// before it, so the stream holds the events in id order with no gap, no
// duplicate and nothing from a relay that lost its lease. The relay's
// cursor (the last event id JetStream acknowledged, and its stream
// sequence) is stored in outbox_event_relays after the acknowledgements. A
// relay that crashed after publishing and before storing its cursor, or
// whose publish failed half-way, reads the stream's last message when it
// starts again, and continues after the event id it carries: nothing is
// sent twice, whatever the de-duplication window.
//
// # One relay per stream
//
// A lease in outbox_event_relays makes one process the stream's relay;
// the others wait and take over within about LeaseTTL of its end. A relay
// that stops cleanly hands the lease back at once.
package natsrelay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Defaults of Config.
const (
	// StreamDefault is the stream's name.
	StreamDefault = "AFTERCOMMIT_EVENTS"
	// SubjectPrefixDefault starts every subject.
	SubjectPrefixDefault = "aftercommit.events"
	// BatchSizeDefault is the most events one round publishes.
	BatchSizeDefault = 1000
	// PollMinDefault is the wait after a round that published events.
	PollMinDefault = 5 * time.Millisecond
	// PollMaxDefault is the longest wait while no event comes.
	PollMaxDefault = 100 * time.Millisecond
	// LeaseTTLDefault is how long a relay's lease lasts without renewal.
	LeaseTTLDefault = 5 * time.Second
	// AckTimeoutDefault is the longest wait for JetStream's
	// acknowledgements of a round.
	AckTimeoutDefault = 10 * time.Second
)

var (
	// ErrConfig reports a Config or StreamOptions the relay cannot use.
	ErrConfig = errors.New("natsrelay: invalid configuration")
	// ErrNoStream reports a stream that does not exist (and
	// Config.CreateStream is false).
	ErrNoStream = errors.New("natsrelay: no such stream")
	// ErrForeignMessage reports a stream whose last message the relay did
	// not publish: the relay must be the stream's only publisher.
	ErrForeignMessage = errors.New("natsrelay: the stream holds a message the relay did not publish")
	// ErrSequenceCache reports an outbox_events_id_seq with a cache over
	// 1, whose ids do not follow the order they were taken in.
	ErrSequenceCache = errors.New("natsrelay: outbox_events_id_seq must have CACHE 1")
	// errLeaseLost ends a round whose relay no longer holds the lease.
	errLeaseLost = errors.New("natsrelay: lost the lease")
)

// Config tunes a Relay. A nil *Config takes every default.
type Config struct {
	// Stream names the JetStream stream, and the relay's row in
	// outbox_event_relays. Defaults to StreamDefault.
	Stream string
	// SubjectPrefix starts every subject (see Subject). Defaults to
	// SubjectPrefixDefault.
	SubjectPrefix string
	// Topics, when not empty, are the only topics the relay sends; the
	// others are passed over.
	//
	// Defaults to empty: every topic.
	Topics []string
	// Source is CloudEvents' source of every event. Defaults to
	// "/aftercommit/<database>".
	Source string
	// CreateStream creates the stream, with StreamOptions, when it does
	// not exist. An existing stream is used as it is.
	//
	// Defaults to false: a missing stream is an ErrNoStream error (create
	// it with SetupStream or `aftercommit nats setup`).
	CreateStream bool
	// StreamOptions shape the stream CreateStream creates; their Name and
	// SubjectPrefix are the Config's.
	StreamOptions StreamOptions
	// BatchSize is the most events one round publishes. Defaults to
	// BatchSizeDefault.
	BatchSize int
	// PollMin and PollMax bound the adaptive poll: after a round that
	// published, the relay looks again after PollMin; each empty look
	// doubles the wait up to PollMax. Defaults to PollMinDefault and
	// PollMaxDefault.
	PollMin, PollMax time.Duration
	// LeaseTTL is how long the lease lasts without renewal: a relay that
	// dies is replaced within about LeaseTTL. Defaults to LeaseTTLDefault.
	LeaseTTL time.Duration
	// AckTimeout is the longest wait for a round's acknowledgements.
	// Defaults to AckTimeoutDefault.
	AckTimeout time.Duration
	// Owner names this relay in outbox_event_relays.owner. Defaults to
	// "<hostname>:<pid>:<random>".
	Owner string
	// OnPublish, when set, is called after every round that moved the
	// cursor, with what it did (metrics hook it here). It must be fast.
	OnPublish func(ctx context.Context, res PublishResult)
	// Logger receives errors and takeovers. Defaults to slog.Default().
	Logger *slog.Logger
}

// PublishResult is what one round of the relay did.
type PublishResult struct {
	// Events is how many events JetStream acknowledged.
	Events int
	// LastID is the cursor after the round: every event up to it is in the
	// stream (or of another topic).
	LastID int64
	// LastSeq is the stream's sequence of the last event published.
	LastSeq uint64
	// Oldest is the created_at of the round's first event (zero: none).
	Oldest time.Time
}

// State is a relay's view of itself, for health checks.
type State struct {
	// Stream is the relay's stream.
	Stream string `json:"stream"`
	// Owner is this relay's name.
	Owner string `json:"owner"`
	// Active: this relay holds the lease and publishes.
	Active bool `json:"active"`
	// LastID and LastSeq are the cursor this relay last stored or read.
	LastID  int64  `json:"last_id"`
	LastSeq uint64 `json:"last_seq"`
	// Published is how many events this relay published since it started.
	Published uint64 `json:"published"`
	// AckedAt is when this relay last stored its cursor.
	AckedAt time.Time `json:"acked_at,omitzero"`
	// Err is the last error, cleared by the next round that succeeds.
	Err string `json:"error,omitempty"`
}

// Relay relays events to one stream. Run runs it; State reports on it.
type Relay struct {
	pool *pgxpool.Pool
	js   jetstream.JetStream
	cfg  Config
	log  *slog.Logger

	mu    sync.Mutex
	state State

	// The loop's own state (Run's goroutine only).
	stream      jetstream.Stream
	lastID      int64
	seq         uint64
	marks       []mark
	settled     int64
	leaseUntil  time.Time
	renewedAt   time.Time
	source      string
	lastPublish time.Time
}

// mark is one reading of outbox_events_mark(): ids up to lastID settle
// once the snapshot xmin reaches xmax.
type mark struct {
	lastID int64
	xmax   uint64
}

var streamName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,255}$`)

func validStream(s string) bool { return streamName.MatchString(s) }

// withDefaults returns the config with every default applied.
func (c *Config) withDefaults() Config {
	out := Config{}
	if c != nil {
		out = *c
	}
	if out.Stream == "" {
		out.Stream = StreamDefault
	}
	if out.SubjectPrefix == "" {
		out.SubjectPrefix = SubjectPrefixDefault
	}
	if out.BatchSize == 0 {
		out.BatchSize = BatchSizeDefault
	}
	if out.PollMin == 0 {
		out.PollMin = PollMinDefault
	}
	if out.PollMax == 0 {
		out.PollMax = PollMaxDefault
	}
	if out.LeaseTTL == 0 {
		out.LeaseTTL = LeaseTTLDefault
	}
	if out.AckTimeout == 0 {
		out.AckTimeout = AckTimeoutDefault
	}
	if out.Owner == "" {
		host, _ := os.Hostname()
		out.Owner = fmt.Sprintf("%s:%d:%s", host, os.Getpid(), nuid.Next())
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	out.StreamOptions.Name, out.StreamOptions.SubjectPrefix = out.Stream, out.SubjectPrefix
	out.Topics = slices.Clone(out.Topics)
	return out
}

// Validate returns an ErrConfig error for a config New would refuse.
func (c *Config) Validate() error {
	d := c.withDefaults()
	switch {
	case !validStream(d.Stream):
		return fmt.Errorf("%w: stream name %q: use 1 to 255 letters, digits, '-' or '_'", ErrConfig, d.Stream)
	case !validPrefix(d.SubjectPrefix):
		return fmt.Errorf("%w: subject prefix %q: use dot-separated words of letters, digits, '-' or '_'", ErrConfig, d.SubjectPrefix)
	case d.BatchSize < 0 || d.PollMin < 0 || d.PollMax < d.PollMin || d.AckTimeout < 0:
		return fmt.Errorf("%w: batch size, polls and ack timeout must be positive, with PollMin <= PollMax", ErrConfig)
	case d.LeaseTTL < 100*time.Millisecond:
		return fmt.Errorf("%w: the lease TTL must be at least 100ms, got %s", ErrConfig, d.LeaseTTL)
	case len(d.Owner) > 255:
		return fmt.Errorf("%w: owner name longer than 255 bytes", ErrConfig)
	}
	if d.CreateStream {
		if _, err := d.StreamOptions.StreamConfig(); err != nil {
			return err
		}
	}
	return nil
}

// New returns a relay of the pool's outbox_events to JetStream through nc,
// or an ErrConfig error.
func New(pool *pgxpool.Pool, nc *nats.Conn, cfg *Config) (*Relay, error) {
	if pool == nil || nc == nil {
		return nil, fmt.Errorf("%w: a pool and a NATS connection are required", ErrConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := cfg.withDefaults()
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncTimeout(c.AckTimeout),
		jetstream.WithPublishAsyncMaxPending(max(c.BatchSize, 1)+1))
	if err != nil {
		return nil, fmt.Errorf("natsrelay: %w", err)
	}
	r := &Relay{pool: pool, js: js, cfg: c, log: c.Logger.With("stream", c.Stream, "owner", c.Owner)}
	r.state = State{Stream: c.Stream, Owner: c.Owner}
	return r, nil
}

// State returns the relay's state now.
func (r *Relay) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

func (r *Relay) setState(f func(*State)) {
	r.mu.Lock()
	f(&r.state)
	r.mu.Unlock()
}

// Run relays until ctx ends, then hands the lease back and returns nil. It
// returns an error only for what retrying cannot mend: an
// outbox_events_id_seq with a cache over 1 (ErrSequenceCache), or the
// migrations missing. Other errors (Postgres or NATS down, a stream that
// does not exist yet) are logged, shown in State, and retried.
func (r *Relay) Run(ctx context.Context) error {
	if err := r.check(ctx); err != nil {
		return err
	}
	defer r.release()
	backoff := r.cfg.PollMax
	for ctx.Err() == nil {
		active, err := r.acquire(ctx, false)
		if err == nil && active {
			err = r.lead(ctx)
			r.setState(func(s *State) { s.Active = false })
		}
		if ctx.Err() != nil {
			return nil
		}
		wait := r.cfg.LeaseTTL / 5
		if err != nil && !errors.Is(err, errLeaseLost) {
			r.log.Warn("natsrelay: relaying events failed; retrying", "error", err, "retry_in", backoff)
			r.setState(func(s *State) { s.Err = err.Error() })
			wait = backoff
			backoff = min(backoff*2, 5*time.Second)
		} else {
			backoff = r.cfg.PollMax
		}
		sleep(ctx, wait)
	}
	return nil
}

const checkSQL = `
SELECT s.seqcache, current_database()
  FROM pg_sequence AS s
 WHERE s.seqrelid = 'outbox_events_id_seq'::regclass
   AND to_regprocedure('outbox_events_mark()') IS NOT NULL`

// check refuses a database the relay cannot read in order.
func (r *Relay) check(ctx context.Context) error {
	var cache int64
	var db string
	for {
		err := r.pool.QueryRow(ctx, checkSQL).Scan(&cache, &db)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("natsrelay: the database lacks outbox_events_mark() (migration 0030): run `aftercommit migrate up`")
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("natsrelay: checking the database failed; retrying", "error", err)
		r.setState(func(s *State) { s.Err = err.Error() })
		sleep(ctx, time.Second)
	}
	if cache != 1 {
		return fmt.Errorf("%w: it has CACHE %d (ALTER SEQUENCE outbox_events_id_seq CACHE 1)", ErrSequenceCache, cache)
	}
	r.source = r.cfg.Source
	if r.source == "" {
		r.source = "/aftercommit/" + db
	}
	return nil
}

const acquireSQL = `
WITH ins AS (
    INSERT INTO outbox_event_relays (stream, topics) VALUES ($1, $2)
    ON CONFLICT (stream) DO NOTHING)
UPDATE outbox_event_relays
   SET owner = $3,
       owner_since = CASE WHEN owner IS DISTINCT FROM $3 OR lease_until IS NULL OR lease_until < now()
                          THEN now() ELSE owner_since END,
       lease_until = now() + make_interval(secs => $4),
       topics = $2
 WHERE stream = $1
   AND (owner IS NULL OR owner = $3 OR lease_until IS NULL OR lease_until < now())
RETURNING last_id, last_seq`

// acquire takes the lease (renew false: and the cursor with it) or renews
// it, and reports whether this relay holds it. A row inserted by the CTE is
// not visible to the UPDATE of the same statement: the first relay of a
// stream takes the lease on its next try.
func (r *Relay) acquire(ctx context.Context, renew bool) (bool, error) {
	var topics []string
	if len(r.cfg.Topics) > 0 {
		topics = r.cfg.Topics
	}
	start := time.Now()
	var lastID, lastSeq int64
	err := r.pool.QueryRow(ctx, acquireSQL, r.cfg.Stream, topics, r.cfg.Owner, r.cfg.LeaseTTL.Seconds()).Scan(&lastID, &lastSeq)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("taking the lease: %w", err)
	}
	r.leaseUntil, r.renewedAt = start.Add(r.cfg.LeaseTTL), start
	if renew && lastID == r.lastID && uint64(lastSeq) == r.seq {
		return true, nil
	}
	// A new lease, or one another relay held in between: its cursor.
	r.lastID, r.seq = lastID, uint64(lastSeq)
	r.marks, r.settled = r.marks[:0], lastID
	r.setState(func(s *State) { s.Active, s.LastID, s.LastSeq = true, lastID, uint64(lastSeq) })
	return true, nil
}

const releaseSQL = `
UPDATE outbox_event_relays SET owner = NULL, lease_until = NULL
 WHERE stream = $1 AND owner = $2`

// release hands the lease back, so a standby takes over at once.
func (r *Relay) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.pool.Exec(ctx, releaseSQL, r.cfg.Stream, r.cfg.Owner); err != nil {
		r.log.Warn("natsrelay: handing the lease back failed; another relay takes over when it expires", "error", err)
	}
}

// lead relays while this relay holds the lease.
func (r *Relay) lead(ctx context.Context) error {
	r.log.Info("natsrelay: this relay is active", "last_id", r.lastID, "last_seq", r.seq)
	stream, err := openStream(ctx, r.js, r.cfg.StreamOptions, r.cfg.CreateStream)
	if err != nil {
		return err
	}
	r.stream = stream
	if err := r.sync(ctx); err != nil {
		return err
	}
	wait := r.cfg.PollMin
	for ctx.Err() == nil {
		if time.Since(r.renewedAt) > r.cfg.LeaseTTL/3 {
			held, err := r.acquire(ctx, true)
			if err != nil {
				return err
			}
			if !held {
				return errLeaseLost
			}
		}
		n, err := r.round(ctx)
		if err != nil {
			if errors.Is(err, errPublish) {
				// Find where the stream stands, then go on from there.
				if serr := r.sync(ctx); serr != nil {
					return errors.Join(err, serr)
				}
			}
			return err
		}
		r.setState(func(s *State) { s.Err = "" })
		switch {
		case n >= r.cfg.BatchSize:
			continue
		case n > 0:
			wait = r.cfg.PollMin
		default:
			wait = min(wait*2, r.cfg.PollMax)
		}
		sleep(ctx, wait)
	}
	return nil
}

// errPublish marks a round whose publish failed part-way.
var errPublish = errors.New("natsrelay: publishing failed")

const markSQL = `SELECT last_id, snap_xmin::text, snap_xmax::text FROM outbox_events_mark()`

const readSQL = `
SELECT id, topic, key, payload::text, created_at
  FROM outbox_events
 WHERE id > $1 AND id <= $2
   AND ($4::text[] IS NULL OR topic = ANY ($4))
 ORDER BY id
 LIMIT $3`

// maxMarks bounds the marks kept while a long transaction holds the
// settled id back; the newest is then overwritten, which only delays it.
const maxMarks = 64

// settle reads a mark and returns the highest settled id.
func (r *Relay) settle(ctx context.Context) (int64, error) {
	var lastID int64
	var xminS, xmaxS string
	if err := r.pool.QueryRow(ctx, markSQL).Scan(&lastID, &xminS, &xmaxS); err != nil {
		return 0, fmt.Errorf("reading the events' mark: %w", err)
	}
	xmin, err1 := strconv.ParseUint(xminS, 10, 64)
	xmax, err2 := strconv.ParseUint(xmaxS, 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("reading the events' mark: %w", err)
	}
	top := r.settled
	if n := len(r.marks); n > 0 {
		top = r.marks[n-1].lastID
	}
	switch {
	case lastID <= top:
	case len(r.marks) == maxMarks:
		r.marks[maxMarks-1] = mark{lastID: lastID, xmax: xmax}
	default:
		r.marks = append(r.marks, mark{lastID: lastID, xmax: xmax})
	}
	i := 0
	for ; i < len(r.marks) && r.marks[i].xmax <= xmin; i++ {
		r.settled = max(r.settled, r.marks[i].lastID)
	}
	r.marks = append(r.marks[:0], r.marks[i:]...)
	return r.settled, nil
}

type eventRow struct {
	id      int64
	topic   string
	key     *string
	payload string
	at      time.Time
}

// round publishes the next settled events and stores the cursor; it
// returns how many events it read.
func (r *Relay) round(ctx context.Context) (int, error) {
	settled, err := r.settle(ctx)
	if err != nil {
		return 0, err
	}
	if settled <= r.lastID {
		return 0, nil
	}
	var topics []string
	if len(r.cfg.Topics) > 0 {
		topics = r.cfg.Topics
	}
	rows, err := r.pool.Query(ctx, readSQL, r.lastID, settled, r.cfg.BatchSize, topics)
	if err != nil {
		return 0, fmt.Errorf("reading events: %w", err)
	}
	events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (eventRow, error) {
		var e eventRow
		err := row.Scan(&e.id, &e.topic, &e.key, &e.payload, &e.at)
		return e, err
	})
	if err != nil {
		return 0, fmt.Errorf("reading events: %w", err)
	}
	next := settled
	if len(events) == r.cfg.BatchSize {
		next = events[len(events)-1].id
	}
	seq := r.seq
	if len(events) > 0 {
		if seq, err = r.publish(ctx, events); err != nil {
			return 0, err
		}
	}
	if err := r.store(ctx, next, seq); err != nil {
		return 0, err
	}
	res := PublishResult{Events: len(events), LastID: next, LastSeq: seq}
	if len(events) > 0 {
		res.Oldest = events[0].at
	}
	r.setState(func(s *State) {
		s.LastID, s.LastSeq, s.AckedAt = next, seq, time.Now()
		s.Published += uint64(len(events))
	})
	if r.cfg.OnPublish != nil {
		r.cfg.OnPublish(ctx, res)
	}
	return len(events), nil
}

// publish sends the events, each expecting the one before it as the
// stream's last message, waits for every acknowledgement, and returns the
// stream's last sequence.
func (r *Relay) publish(ctx context.Context, events []eventRow) (uint64, error) {
	if time.Now().After(r.leaseUntil) {
		return 0, errLeaseLost
	}
	futures := make([]jetstream.PubAckFuture, 0, len(events))
	for i, e := range events {
		m, err := r.message(e)
		if err != nil {
			return 0, err
		}
		id := strconv.FormatInt(e.id, 10)
		f, err := r.js.PublishMsgAsync(m, jetstream.WithMsgID(id), jetstream.WithExpectLastSequence(r.seq+uint64(i)))
		if err != nil {
			return 0, fmt.Errorf("%w: event %d: %w", errPublish, e.id, err)
		}
		futures = append(futures, f)
	}
	timer := time.NewTimer(r.cfg.AckTimeout)
	defer timer.Stop()
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			if want := r.seq + uint64(i) + 1; ack.Duplicate || ack.Sequence != want {
				return 0, fmt.Errorf("%w: event %d: stream sequence %d (duplicate %t), expected %d", errPublish, events[i].id, ack.Sequence, ack.Duplicate, want)
			}
		case err := <-f.Err():
			return 0, fmt.Errorf("%w: event %d: %w", errPublish, events[i].id, err)
		case <-timer.C:
			return 0, fmt.Errorf("%w: no acknowledgement within %s", errPublish, r.cfg.AckTimeout)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	r.lastPublish = time.Now()
	return r.seq + uint64(len(events)), nil
}

// message builds the NATS message of an event.
func (r *Relay) message(e eventRow) (*nats.Msg, error) {
	ev := CloudEvent{
		SpecVersion:     "1.0",
		ID:              strconv.FormatInt(e.id, 10),
		Source:          r.source,
		Type:            e.topic,
		Time:            e.at.UTC(),
		DataContentType: "application/json",
		Data:            []byte(e.payload),
	}
	key := ""
	if e.key != nil {
		key = *e.key
		ev.Subject = key
	}
	data, err := marshalEvent(&ev)
	if err != nil {
		return nil, fmt.Errorf("natsrelay: encoding event %d: %w", e.id, err)
	}
	m := nats.NewMsg(Subject(r.cfg.SubjectPrefix, e.topic, key, e.key != nil))
	m.Header.Set("Content-Type", ContentType)
	m.Data = data
	return m, nil
}

const storeSQL = `
UPDATE outbox_event_relays
   SET last_id = $3, last_seq = $4, acked_at = now(),
       lease_until = now() + make_interval(secs => $5)
 WHERE stream = $1 AND owner = $2`

// store moves the cursor, and renews the lease with it.
func (r *Relay) store(ctx context.Context, lastID int64, seq uint64) error {
	if lastID == r.lastID && seq == r.seq {
		return nil
	}
	start := time.Now()
	tag, err := r.pool.Exec(ctx, storeSQL, r.cfg.Stream, r.cfg.Owner, lastID, int64(seq), r.cfg.LeaseTTL.Seconds())
	if err != nil {
		return fmt.Errorf("storing the cursor: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return errLeaseLost
	}
	r.lastID, r.seq = lastID, seq
	r.leaseUntil, r.renewedAt = start.Add(r.cfg.LeaseTTL), start
	return nil
}

// sync finds the stream's last message and moves the cursor to the event
// it carries when the stream is ahead of the cursor (a crash between
// publishing and storing, or a publish that failed part-way).
func (r *Relay) sync(ctx context.Context) error {
	info, err := r.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("reading stream %s: %w", r.cfg.Stream, err)
	}
	last := info.State.LastSeq
	if last == r.seq {
		return nil
	}
	if last == 0 {
		r.log.Warn("natsrelay: the stream is empty but the cursor says it held events: it was purged or recreated; events after the cursor go on, earlier ones are not sent again",
			"last_id", r.lastID, "cursor_seq", r.seq)
		return r.storeSeq(ctx, r.lastID, 0)
	}
	msg, err := r.stream.GetMsg(ctx, last)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		r.log.Warn("natsrelay: the stream's last message is gone; going on from the cursor", "last_seq", last, "last_id", r.lastID)
		return r.storeSeq(ctx, r.lastID, last)
	}
	if err != nil {
		return fmt.Errorf("reading stream %s's message %d: %w", r.cfg.Stream, last, err)
	}
	id, err := strconv.ParseInt(msg.Header.Get(jetstream.MsgIDHeader), 10, 64)
	if err != nil || id <= 0 {
		return fmt.Errorf("%w: stream %s, sequence %d, subject %s, Nats-Msg-Id %q", ErrForeignMessage, r.cfg.Stream, last, msg.Subject, msg.Header.Get(jetstream.MsgIDHeader))
	}
	switch {
	case id > r.lastID:
		r.log.Info("natsrelay: the stream is ahead of the cursor; going on after its last event", "cursor_id", r.lastID, "stream_id", id, "last_seq", last)
	case id < r.lastID:
		r.log.Warn("natsrelay: the stream is behind the cursor (it lost messages); events after the cursor go on", "cursor_id", r.lastID, "stream_id", id, "last_seq", last)
		id = r.lastID
	}
	return r.storeSeq(ctx, id, last)
}

// storeSeq stores a cursor found by sync.
func (r *Relay) storeSeq(ctx context.Context, lastID int64, seq uint64) error {
	if err := r.store(ctx, lastID, seq); err != nil {
		return err
	}
	r.settled = max(r.settled, lastID)
	r.setState(func(s *State) { s.LastID, s.LastSeq = lastID, seq })
	return nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
