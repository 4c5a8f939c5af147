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
// and then takes an xid of its own, so every id up to that value is
// settled once a later snapshot's xmin passes that xid. The relay reads
// only settled ids, so it never passes over an event that commits later.
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
	PollMinDefault = 2 * time.Millisecond
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
	stream     jetstream.Stream
	lastID     int64
	seq        uint64
	marks      []mark
	settled    int64
	leaseUntil time.Time
	renewedAt  time.Time
	source     string
	// readID and pubSeq run ahead of lastID and seq by the batches in
	// flight.
	readID  int64
	pubSeq  uint64
	flights []flight
}

// mark is one reading of outbox_events_mark(): ids up to lastID settle
// once a snapshot's xmin passes xid.
type mark struct {
	lastID int64
	xid    uint64
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
		jetstream.WithPublishAsyncMaxPending(maxFlights*max(c.BatchSize, 1)+1))
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
	if err := r.check(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	defer r.release(context.WithoutCancel(ctx))
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
   AND to_regprocedure('outbox_events_mark(bigint)') IS NOT NULL`

// check refuses a database the relay cannot read in order.
func (r *Relay) check(ctx context.Context) error {
	var cache int64
	var db string
	for {
		err := r.pool.QueryRow(ctx, checkSQL).Scan(&cache, &db)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("natsrelay: the database lacks outbox_events_mark() (migration 0030): run `aftercommit migrate up`")
		}
		if err == nil || ctx.Err() != nil {
			break
		}
		r.log.Warn("natsrelay: checking the database failed; retrying", "error", err)
		r.setState(func(s *State) { s.Err = err.Error() })
		sleep(ctx, time.Second)
	}
	if err := ctx.Err(); err != nil {
		return err
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
INSERT INTO outbox_event_relays AS r (stream, topics, owner, owner_since, lease_until)
VALUES ($1, $2, $3, now(), now() + make_interval(secs => $4))
ON CONFLICT (stream) DO UPDATE
   SET owner = EXCLUDED.owner,
       owner_since = CASE WHEN r.owner IS DISTINCT FROM EXCLUDED.owner OR r.lease_until IS NULL OR r.lease_until < now()
                          THEN now() ELSE r.owner_since END,
       lease_until = EXCLUDED.lease_until,
       topics = EXCLUDED.topics
 WHERE r.owner IS NULL OR r.owner = EXCLUDED.owner OR r.lease_until IS NULL OR r.lease_until < now()
RETURNING last_id, last_seq`

// acquire takes the lease (renew false: and the cursor with it) or renews
// it, and reports whether this relay holds it.
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
	r.rewind()
	r.setState(func(s *State) { s.Active, s.LastID, s.LastSeq = true, lastID, uint64(lastSeq) })
	return true, nil
}

const releaseSQL = `
UPDATE outbox_event_relays SET owner = NULL, lease_until = NULL
 WHERE stream = $1 AND owner = $2`

// release hands the lease back, so a standby takes over at once.
func (r *Relay) release(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
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
		case n > 0 || len(r.marks) > 0:
			// Events came, or ids wait to settle: look again soon.
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

const markSQL = `SELECT last_id, mark_xid::text, snap_xmin::text FROM outbox_events_mark($1)`

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

// settle reads a mark (migration 0030, outbox_events_mark) and returns the
// highest settled id: ids up to a mark's last id are settled once a
// snapshot's xmin has passed the mark's xid.
func (r *Relay) settle(ctx context.Context) (int64, error) {
	top := r.settled
	if n := len(r.marks); n > 0 {
		top = r.marks[n-1].lastID
	}
	var lastID int64
	var xidS *string
	var xminS string
	if err := r.pool.QueryRow(ctx, markSQL, top).Scan(&lastID, &xidS, &xminS); err != nil {
		return 0, fmt.Errorf("reading the events' mark: %w", err)
	}
	xmin, err := strconv.ParseUint(xminS, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("reading the events' mark: %w", err)
	}
	if xidS != nil && lastID > top {
		xid, err := strconv.ParseUint(*xidS, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("reading the events' mark: %w", err)
		}
		m := mark{lastID: lastID, xid: xid}
		if len(r.marks) == maxMarks {
			r.marks[maxMarks-1] = m
		} else {
			r.marks = append(r.marks, m)
		}
	}
	i := 0
	for ; i < len(r.marks) && r.marks[i].xid < xmin; i++ {
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

// flight is a batch published and not yet stored: its acknowledgements
// come back while the next batches are read and published.
type flight struct {
	futures []jetstream.PubAckFuture
	ids     []int64
	// from is the stream's last sequence before the batch; next is the
	// cursor once it is acknowledged.
	from   uint64
	next   int64
	oldest time.Time
}

// maxFlights is the most batches published and not yet acknowledged.
const maxFlights = 8

// round reads and publishes the next settled events (without waiting for
// the acknowledgements of the batches before), then waits for the oldest
// batches' acknowledgements and stores the cursor after each: all of them
// when this round read less than a full batch, else while maxFlights are
// out. It returns how many events it read.
func (r *Relay) round(ctx context.Context) (int, error) {
	settled := r.settled
	if settled <= r.readID {
		// Everything settled was read: look for more. (While a backlog
		// drains, the settled id stays ahead and no look is needed.)
		var err error
		if settled, err = r.settle(ctx); err != nil {
			return 0, err
		}
	}
	n := 0
	if settled > r.readID {
		var topics []string
		if len(r.cfg.Topics) > 0 {
			topics = r.cfg.Topics
		}
		rows, err := r.pool.Query(ctx, readSQL, r.readID, settled, r.cfg.BatchSize, topics)
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
		n = len(events)
		f := flight{from: r.pubSeq, next: settled}
		if n == r.cfg.BatchSize {
			f.next = events[n-1].id
		}
		if n > 0 {
			f.oldest = events[0].at
			if err := r.send(events, &f); err != nil {
				return 0, err
			}
		}
		r.readID = f.next
		r.pubSeq += uint64(n)
		r.flights = append(r.flights, f)
	}
	for len(r.flights) > 0 && (n < r.cfg.BatchSize || len(r.flights) >= maxFlights) {
		if err := r.land(ctx, r.flights[0]); err != nil {
			return 0, err
		}
		r.flights = r.flights[1:]
	}
	return n, nil
}

// send publishes a batch, each message expecting the one before it as the
// stream's last.
func (r *Relay) send(events []eventRow, f *flight) error {
	if time.Now().After(r.leaseUntil) {
		return errLeaseLost
	}
	f.futures = make([]jetstream.PubAckFuture, 0, len(events))
	f.ids = make([]int64, 0, len(events))
	for i, e := range events {
		id := strconv.FormatInt(e.id, 10)
		fut, err := r.js.PublishMsgAsync(r.message(e), jetstream.WithMsgID(id), jetstream.WithExpectLastSequence(f.from+uint64(i)))
		if err != nil {
			return fmt.Errorf("%w: event %d: %w", errPublish, e.id, err)
		}
		f.futures = append(f.futures, fut)
		f.ids = append(f.ids, e.id)
	}
	return nil
}

// land waits for a batch's acknowledgements and stores the cursor after it.
func (r *Relay) land(ctx context.Context, f flight) error {
	timer := time.NewTimer(r.cfg.AckTimeout)
	defer timer.Stop()
	for i, fut := range f.futures {
		select {
		case ack := <-fut.Ok():
			if want := f.from + uint64(i) + 1; ack.Duplicate || ack.Sequence != want {
				return fmt.Errorf("%w: event %d: stream sequence %d (duplicate %t), expected %d", errPublish, f.ids[i], ack.Sequence, ack.Duplicate, want)
			}
		case err := <-fut.Err():
			return fmt.Errorf("%w: event %d: %w", errPublish, f.ids[i], err)
		case <-timer.C:
			return fmt.Errorf("%w: no acknowledgement within %s", errPublish, r.cfg.AckTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	seq := f.from + uint64(len(f.futures))
	if err := r.store(ctx, f.next, seq); err != nil {
		return err
	}
	r.setState(func(s *State) {
		s.LastID, s.LastSeq, s.AckedAt = f.next, seq, time.Now()
		s.Published += uint64(len(f.futures))
	})
	if r.cfg.OnPublish != nil {
		r.cfg.OnPublish(ctx, PublishResult{Events: len(f.futures), LastID: f.next, LastSeq: seq, Oldest: f.oldest})
	}
	return nil
}

// rewind forgets the batches in flight: reading and publishing go on from
// the stored cursor.
func (r *Relay) rewind() {
	r.readID, r.pubSeq, r.flights = r.lastID, r.seq, nil
}

// message builds the NATS message of an event.
func (r *Relay) message(e eventRow) *nats.Msg {
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
	data := ev.AppendJSON(make([]byte, 0, 192+len(e.payload)+len(e.topic)+len(key)+len(r.source)))
	m := nats.NewMsg(Subject(r.cfg.SubjectPrefix, e.topic, key, e.key != nil))
	m.Header.Set("Content-Type", ContentType)
	m.Data = data
	return m
}

// storeSQL moves the cursor with an asynchronous commit: a cursor lost to
// a crash of Postgres is found again in the stream (sync).
const storeSQL = `
UPDATE outbox_event_relays
   SET last_id = $3, last_seq = $4, acked_at = now(),
       lease_until = now() + make_interval(secs => $5)
  FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async
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
	r.rewind()
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
	r.rewind()
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
