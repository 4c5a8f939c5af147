package outbox

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Event is a domain event published in a transaction with Tx.Publish (or
// Batch.Publish). It is written to the outbox_events table with the
// transaction, and every subscription of its topic (jobs.Subscribe) may turn
// it into a job that is written in the same commit.
type Event struct {
	// Topic names what happened, e.g. "donation.created".
	Topic string
	// Key names what the event is about, e.g. a fundraiser's ID ("" when
	// it was published without one, with Publish). Events of one key keep
	// their commit order wherever they are relayed (outbox/natsrelay).
	Key string
	// Payload is the event's JSON, typically the IDs of the rows involved.
	Payload []byte
}

// pendingEvent is an event buffered until the flush.
type pendingEvent struct {
	topic   string
	key     *string // nil: no key
	payload string
}

// eventsInsertSQL writes all of a transaction's events in one statement.
// outbox_events is unqualified: it lives in the schema of the connection's
// search_path, like the rest of aftercommit's tables.
//
// The rows take their ids in the order of the arrays (the order of Publish
// calls), and the flush runs after every statement of the transaction, so
// a transaction that waited for another's row lock takes larger ids than
// it: the relays send events in id order (migration 0030).
const eventsInsertSQL = `INSERT INTO outbox_events (topic, key, payload)
SELECT t, k, p::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS e(t, k, p)`

func eventsInsert(events []pendingEvent) recordedStmt {
	topics := make([]string, len(events))
	keys := make([]*string, len(events))
	payloads := make([]string, len(events))
	for i, e := range events {
		topics[i], keys[i], payloads[i] = e.topic, e.key, e.payload
	}
	return recordedStmt{sql: eventsInsertSQL, args: []any{topics, keys, payloads}}
}

// MaxEventKeyBytes is the longest key an event may have (PublishKey).
const MaxEventKeyBytes = 255

// checkKey returns why key cannot be an event's key, or "".
func checkKey(key string) string {
	switch {
	case key == "":
		return "an empty key: use Publish for an event without one"
	case len(key) > MaxEventKeyBytes:
		return fmt.Sprintf("a key of %d bytes, over the limit of %d", len(key), MaxEventKeyBytes)
	case !utf8.ValidString(key):
		return "a key that is not valid UTF-8"
	case strings.IndexByte(key, 0) >= 0:
		return "a key with a NUL character, which Postgres' text refuses"
	}
	return ""
}

// validTopic reports whether topic is 1 to 255 characters of lower-case
// letters, digits, '.', '_' and '-'.
func validTopic(topic string) bool {
	if topic == "" || len(topic) > 255 {
		return false
	}
	for i := 0; i < len(topic); i++ {
		switch c := topic[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// Publish buffers an event, written with the batch's jobs, and adds the jobs
// its topic's subscribers ask for. It returns ErrInvalidEvent (malformed
// topic, nil or unencodable payload), ErrUnknownTopic (Config.Topics is set
// and lacks the topic), a *PayloadTooLargeError, a subscriber's error, or an
// Add error of a subscriber's job; after an error the batch refuses to flush.
func (b *Batch) Publish(topic string, payload any) error {
	return b.publish(topic, nil, payload)
}

// PublishKey is Publish with a key that names what the event is about,
// e.g. a fundraiser's ID: a relay to a broker (outbox/natsrelay) puts it in
// the message's subject, and events of one key reach consumers in the
// order their transactions committed. A key is 1 to MaxEventKeyBytes bytes
// of UTF-8 without NUL; any other returns ErrInvalidEvent.
func (b *Batch) PublishKey(topic, key string, payload any) error {
	if why := checkKey(key); why != "" {
		return b.fail(fmt.Errorf("%w: topic %q: %s", ErrInvalidEvent, topic, why))
	}
	return b.publish(topic, &key, payload)
}

func (b *Batch) publish(topic string, key *string, payload any) error {
	if !validTopic(topic) {
		return b.fail(fmt.Errorf("%w: topic %q: use 1 to 255 lower-case letters, digits, '.', '_' or '-'", ErrInvalidEvent, topic))
	}
	if !allowed(topic, b.ob.topics, b.ob.regTopics) {
		return b.fail(fmt.Errorf("%w: %q is not one of the configured topics", ErrUnknownTopic, topic))
	}
	if payload == nil {
		return b.fail(fmt.Errorf("%w: topic %q: nil payload", ErrInvalidEvent, topic))
	}
	enc := getEncoder()
	defer putEncoder(enc)
	raw, err := enc.encode(payload)
	if err != nil {
		return b.fail(fmt.Errorf("%w: topic %q: %w", ErrInvalidEvent, topic, err))
	}
	if len(raw) > b.ob.cfg.MaxPayloadBytes {
		return b.fail(&PayloadTooLargeError{Kind: "event " + topic, Size: len(raw), Limit: b.ob.cfg.MaxPayloadBytes})
	}
	if hasNUL(raw) {
		return b.fail(fmt.Errorf("%w: topic %q: a string holds a NUL character (\\u0000), which Postgres' jsonb refuses", ErrInvalidEvent, topic))
	}
	b.mu.Lock()
	b.events = append(b.events, pendingEvent{topic: topic, key: key, payload: string(raw)})
	b.mu.Unlock()

	if b.ob.subscribers == nil {
		return nil
	}
	var k string
	if key != nil {
		k = *key
	}
	for _, sub := range b.ob.subscribers(topic) {
		args, opts, err := sub(topic, k, append([]byte(nil), raw...))
		if err != nil {
			return b.fail(fmt.Errorf("outbox: a subscriber of %q: %w", topic, err))
		}
		if args == nil {
			continue
		}
		if err := b.Add(args, opts); err != nil {
			return err
		}
	}
	return nil
}

// Publish buffers a domain event to be written with the transaction, and the
// jobs its topic's subscribers ask for. See Batch.Publish for the errors;
// after one, InTx rolls back even if the function returns nil.
func (tx *Tx) Publish(topic string, payload any) error {
	if tx.isClosed() {
		return pgx.ErrTxClosed
	}
	return tx.batch.Publish(topic, payload)
}

// PublishKey is Publish with a key; see Batch.PublishKey.
func (tx *Tx) PublishKey(topic, key string, payload any) error {
	if tx.isClosed() {
		return pgx.ErrTxClosed
	}
	return tx.batch.PublishKey(topic, key, payload)
}
