package outbox_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/outbox"
)

// fuzzOutbox builds an outbox that never reaches a database: Add and
// Publish validate and buffer without I/O, and the fuzz targets never flush.
// Its pool is lazy and names a port nothing listens on; its client is
// insert-only on a nil pool.
func fuzzOutbox(f *testing.F, cfg *outbox.Config) *outbox.Outbox {
	f.Helper()
	pool, err := pgxpool.New(f.Context(), "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=1")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(pool.Close)
	client, err := river.NewClient[pgx.Tx](riverpgxv5.New(nil), &river.Config{})
	if err != nil {
		f.Fatal(err)
	}
	ob, err := outbox.New(pool, client, cfg)
	if err != nil {
		f.Fatal(err)
	}
	return ob
}

// fuzzQueueRules is ValidQueueName's doc comment as a checklist: 1 to 64
// characters, lower-case letters and digits, single separators (_, - or |)
// between them. It returns what a name breaks, or "".
func fuzzQueueRules(name string) string {
	switch {
	case name == "":
		return "empty"
	case len(name) > 64:
		return "longer than 64"
	}
	isSep := func(c byte) bool { return c == '_' || c == '-' || c == '|' }
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case isSep(c):
			if i == 0 || i == len(name)-1 {
				return "separator at an end"
			}
			if isSep(name[i-1]) {
				return "two separators in a row"
			}
		default:
			return "character outside [a-z0-9_|-]"
		}
	}
	return ""
}

// FuzzBatchAdd feeds Batch.Add job args of any content with any queue, on
// an outbox with a small payload limit and on one restricted to two queues.
// Add must never panic; it must accept exactly the args whose queue follows
// ValidQueueName's documented rules (and is configured) and whose JSON fits
// the limit, refuse the rest with the documented error, and drop an equal
// second Add as a duplicate.
func FuzzBatchAdd(f *testing.F) {
	const limit = 256
	open := fuzzOutbox(f, &outbox.Config{MaxPayloadBytes: limit})
	restricted := fuzzOutbox(f, &outbox.Config{MaxPayloadBytes: limit, Queues: []string{"default", "bulk_low"}})

	f.Add("", "hello", int64(1), false)
	f.Add("default", "", int64(0), true)
	f.Add("bulk_low", "x", int64(-9), true)
	f.Add("a|b-c_d", "\x00\xff", int64(42), false)
	f.Add("_a", "n", int64(1), false)
	f.Add("a__b", "n", int64(1), false)
	f.Add("Default", "n", int64(1), false)
	f.Add(strings.Repeat("q", 65), "n", int64(1), false)
	f.Add("default", strings.Repeat("<", 60), int64(1), false) // each < encodes as \u003c: over the limit
	f.Fuzz(func(t *testing.T, queue, note string, pingID int64, useRestricted bool) {
		ob, configured := open, func(string) bool { return true }
		if useRestricted {
			ob, configured = restricted, func(q string) bool { return q == "default" || q == "bulk_low" }
		}
		args := noteArgs{PingID: pingID, Note: note}
		encoded, err := json.Marshal(args)
		if err != nil {
			t.Fatalf("json.Marshal(%#v): %v", args, err)
		}
		effective := queue
		if effective == "" {
			effective = river.QueueDefault
		}

		b := ob.NewBatch()
		err = b.Add(args, &river.InsertOpts{Queue: queue})
		rule := fuzzQueueRules(effective)
		switch {
		case rule != "":
			if !errors.Is(err, outbox.ErrInvalidQueue) {
				t.Fatalf("queue %q breaks the rules (%s): want ErrInvalidQueue, got %v", effective, rule, err)
			}
			if outbox.ValidQueueName(effective) {
				t.Fatalf("ValidQueueName(%q) = true, but it breaks the rules: %s", effective, rule)
			}
		case !configured(effective):
			if !errors.Is(err, outbox.ErrUnknownQueue) {
				t.Fatalf("queue %q is not configured: want ErrUnknownQueue, got %v", effective, err)
			}
		case len(encoded) > limit:
			var tooLarge *outbox.PayloadTooLargeError
			if !errors.As(err, &tooLarge) || !errors.Is(err, outbox.ErrPayloadTooLarge) {
				t.Fatalf("%d-byte args over a %d-byte limit: want *PayloadTooLargeError, got %v", len(encoded), limit, err)
			}
			if tooLarge.Size != len(encoded) || tooLarge.Limit != limit || tooLarge.Kind != args.Kind() {
				t.Fatalf("PayloadTooLargeError = %+v, want size %d, limit %d, kind %q", *tooLarge, len(encoded), limit, args.Kind())
			}
		case strings.ContainsRune(args.Note, 0):
			if !errors.Is(err, outbox.ErrInvalidArgs) {
				t.Fatalf("a NUL in the note (jsonb refuses it): want ErrInvalidArgs, got %v", err)
			}
		default:
			if err != nil {
				t.Fatalf("Add(%#v, queue %q) = %v, want it accepted", args, queue, err)
			}
			if !outbox.ValidQueueName(effective) {
				t.Fatalf("Add accepted queue %q that ValidQueueName refuses", effective)
			}
			if err := b.Add(args, &river.InsertOpts{Queue: queue}); err != nil {
				t.Fatalf("second Add of equal args: %v", err)
			}
			if b.Len() != 1 || b.Duplicates() != 1 || b.Err() != nil {
				t.Fatalf("after two equal Adds: Len %d, Duplicates %d, Err %v; want 1, 1, nil", b.Len(), b.Duplicates(), b.Err())
			}
			return
		}
		// Refused: the batch remembers the error and holds nothing.
		if !errors.Is(b.Err(), err) || b.Len() != 0 {
			t.Fatalf("after a refused Add (%v): Err %v, Len %d", err, b.Err(), b.Len())
		}
	})
}

// FuzzBatchPublish feeds Batch.Publish any topic and any bytes as a raw JSON
// payload. Publish must never panic; it must accept exactly the topics of 1
// to 255 lower-case letters, digits, '.', '_' and '-' with a payload that is
// JSON and fits the limit, and refuse the rest with ErrInvalidEvent or a
// *PayloadTooLargeError.
func FuzzBatchPublish(f *testing.F) {
	const limit = 256
	ob := fuzzOutbox(f, &outbox.Config{MaxPayloadBytes: limit})

	f.Add("donation.created", []byte(`{"donation_id":1}`))
	f.Add("a", []byte(` [1, 2 , 3] `))
	f.Add("Donation.Created", []byte(`{}`))
	f.Add("donation created", []byte(`{}`))
	f.Add("", []byte(`{}`))
	f.Add(strings.Repeat("t", 256), []byte(`{}`))
	f.Add("x", []byte(`{"a":`))
	f.Add("x", []byte{})
	f.Add("x", []byte(`"`+strings.Repeat("z", 300)+`"`))
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		if payload == nil {
			payload = []byte{} // a nil RawMessage encodes as null
		}
		topicOK := topic != "" && len(topic) <= 255 && strings.Trim(topic, "abcdefghijklmnopqrstuvwxyz0123456789._-") == ""

		b := ob.NewBatch()
		err := b.Publish(topic, json.RawMessage(payload))
		switch {
		case !topicOK:
			if !errors.Is(err, outbox.ErrInvalidEvent) {
				t.Fatalf("topic %q is malformed: want ErrInvalidEvent, got %v", topic, err)
			}
		case !json.Valid(payload):
			if !errors.Is(err, outbox.ErrInvalidEvent) {
				t.Fatalf("payload %q is not JSON: want ErrInvalidEvent, got %v", payload, err)
			}
		default:
			var compact strings.Builder
			enc := json.NewEncoder(&compact)
			if err := enc.Encode(json.RawMessage(payload)); err != nil {
				t.Fatalf("encoding valid JSON %q: %v", payload, err)
			}
			size := len(strings.TrimSuffix(compact.String(), "\n"))
			if size > limit {
				var tooLarge *outbox.PayloadTooLargeError
				if !errors.As(err, &tooLarge) || tooLarge.Size != size || tooLarge.Limit != limit {
					t.Fatalf("%d-byte payload over a %d-byte limit: want *PayloadTooLargeError, got %v", size, limit, err)
				}
				break
			}
			if jsonHoldsNUL(payload) {
				if !errors.Is(err, outbox.ErrInvalidEvent) {
					t.Fatalf("payload %q holds a NUL (jsonb refuses it): want ErrInvalidEvent, got %v", payload, err)
				}
				break
			}
			if err != nil {
				t.Fatalf("Publish(%q, %q) = %v, want it accepted", topic, payload, err)
			}
			if b.Err() != nil || b.Len() != 0 {
				t.Fatalf("after an accepted Publish: Err %v, Len %d (no subscribers: no job)", b.Err(), b.Len())
			}
			return
		}
		if !errors.Is(b.Err(), err) {
			t.Fatalf("after a refused Publish (%v): Err %v", err, b.Err())
		}
	})
}

// jsonHoldsNUL reports whether a string (key or value) of valid JSON holds
// a NUL character.
func jsonHoldsNUL(payload []byte) bool {
	var v any
	if err := json.Unmarshal(payload, &v); err != nil {
		return false
	}
	var walk func(v any) bool
	walk = func(v any) bool {
		switch x := v.(type) {
		case string:
			return strings.ContainsRune(x, 0)
		case []any:
			for _, e := range x {
				if walk(e) {
					return true
				}
			}
		case map[string]any:
			for k, e := range x {
				if strings.ContainsRune(k, 0) || walk(e) {
					return true
				}
			}
		}
		return false
	}
	return walk(v)
}
