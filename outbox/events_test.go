package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/outboxseam"
	"github.com/aftercommit/aftercommit/internal/testtrace"
	"github.com/aftercommit/aftercommit/outbox"
)

type donationEvent struct {
	DonationID int64  `json:"donation_id"`
	DayKey     string `json:"day"`
}

// subscribers turns donation.created into a rollup job per day (de-duplicated
// in the transaction) and ignores events without a day.
func subscribers(topic string) []outboxseam.Subscriber {
	if topic != "donation.created" {
		return nil
	}
	return []outboxseam.Subscriber{func(_, _ string, payload []byte) (river.JobArgs, *river.InsertOpts, error) {
		var d donationEvent
		if err := json.Unmarshal(payload, &d); err != nil {
			return nil, nil, err
		}
		if d.DayKey == "" {
			return nil, nil, nil
		}
		return keyedArgs{Key: d.DayKey}, nil, nil
	}}
}

type eventRow struct {
	Topic   string
	Payload string
}

func (b *testBundle) events(ctx context.Context, t *testing.T) []eventRow {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx, `SELECT topic, payload::text FROM outbox_events ORDER BY id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[eventRow])
	require.NoError(t, err)
	return out
}

func TestPublish(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("EventsAndTheirJobsCommitInOneRoundTrip", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{cfg: withRegistry(&outbox.Config{}, &outboxseam.Registry{Subscribers: subscribers})})

		b.tracer.Reset()
		res, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			insertPing(ctx, t, tx, "donation")
			require.NoError(t, tx.Publish("donation.created", donationEvent{DonationID: 1, DayKey: "2026-11-25"}))
			require.NoError(t, tx.Publish("donation.created", donationEvent{DonationID: 2, DayKey: "2026-11-25"}))
			require.NoError(t, tx.Publish("donation.created", donationEvent{DonationID: 3}))
			return tx.Publish("email.opened", map[string]int64{"email_id": 9})
		})
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 2, Duplicates: 1, Events: 4, Inserted: 1, RoundTrips: 1}, res)

		require.Equal(t, []eventRow{
			{"donation.created", `{"day": "2026-11-25", "donation_id": 1}`},
			{"donation.created", `{"day": "2026-11-25", "donation_id": 2}`},
			{"donation.created", `{"day": "", "donation_id": 3}`},
			{"email.opened", `{"email_id": 9}`},
		}, b.events(ctx, t))
		require.Equal(t, []jobRow{{Kind: "test.keyed", Args: canonical(t, keyedArgs{Key: "2026-11-25"}), Queue: "default", State: "available"}},
			canonicalJobs(t, b.jobs(ctx, t)))

		// The events insert, the job insert and the COMMIT went together.
		var last []string
		for _, trip := range b.tracer.RoundTrips() {
			if len(trip) > 1 {
				last = trip
			}
		}
		require.Len(t, last, 4) // events, jobs, the relays' NOTIFY (the outbox's first), COMMIT
		require.True(t, testtrace.Matches(last[0], "insert into outbox_events"))
		require.True(t, testtrace.Matches(last[1], "insert into outbox_jobs"))
		require.True(t, testtrace.Matches(last[2], "pg_notify"))
		require.Equal(t, "COMMIT", last[3])
	})

	t.Run("EventsWithoutJobs", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)

		res, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Publish("email.opened", map[string]int64{"email_id": 1})
		})
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Events: 1, RoundTrips: 1}, res)
		require.Len(t, b.events(ctx, t), 1)
	})

	t.Run("RollbackLeavesNoEvent", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{cfg: withRegistry(&outbox.Config{}, &outboxseam.Registry{Subscribers: subscribers})})

		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			require.NoError(t, tx.Publish("donation.created", donationEvent{DonationID: 1, DayKey: "d"}))
			return errors.New("declined")
		})
		require.EqualError(t, err, "declined")
		require.Empty(t, b.events(ctx, t))
		require.Empty(t, b.jobs(ctx, t))
	})

	t.Run("BatchFlushWritesEventsInTheCallersTransaction", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, &setupOpts{cfg: withRegistry(&outbox.Config{}, &outboxseam.Registry{Subscribers: subscribers})})

		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		batch := b.ob.NewBatch()
		require.NoError(t, batch.Publish("donation.created", donationEvent{DonationID: 5, DayKey: "d1"}))
		res, err := batch.Flush(ctx, tx)
		require.NoError(t, err)
		require.Equal(t, outbox.FlushResult{Enqueued: 1, Events: 1, Inserted: 1, RoundTrips: 1}, res)
		require.Empty(t, b.events(ctx, t), "not committed yet")
		require.NoError(t, tx.Commit(ctx))
		require.Len(t, b.events(ctx, t), 1)
		require.Len(t, b.jobs(ctx, t), 1)
	})

	t.Run("BadEventsAreRefusedAndNothingCommits", func(t *testing.T) {
		t.Parallel()
		failing := func(string) []outboxseam.Subscriber {
			return []outboxseam.Subscriber{func(string, string, []byte) (river.JobArgs, *river.InsertOpts, error) {
				return nil, nil, errors.New("cannot route")
			}}
		}
		b := setup(ctx, t, &setupOpts{cfg: &outbox.Config{Topics: []string{"donation.created", "email.opened"}}})
		bf := setup(ctx, t, &setupOpts{cfg: withRegistry(&outbox.Config{}, &outboxseam.Registry{Subscribers: failing})})

		cases := []struct {
			name    string
			ob      *outbox.Outbox
			topic   string
			payload any
			is      error
			msg     string
		}{
			{"EmptyTopic", b.ob, "", 1, outbox.ErrInvalidEvent, `outbox: invalid event: topic "": use 1 to 255 lower-case letters, digits, '.', '_' or '-'`},
			{"MalformedTopic", b.ob, "Donation Created", 1, outbox.ErrInvalidEvent, `outbox: invalid event: topic "Donation Created": use 1 to 255 lower-case letters, digits, '.', '_' or '-'`},
			{"UnknownTopic", b.ob, "donation.refunded", 1, outbox.ErrUnknownTopic, `outbox: unknown topic: "donation.refunded" is not one of the configured topics`},
			{"NilPayload", b.ob, "email.opened", nil, outbox.ErrInvalidEvent, `outbox: invalid event: topic "email.opened": nil payload`},
			{"Unencodable", b.ob, "email.opened", make(chan int), outbox.ErrInvalidEvent, `outbox: invalid event: topic "email.opened": json: unsupported type: chan int`},
			{"TooLarge", b.ob, "email.opened", strings.Repeat("x", 200<<10), outbox.ErrPayloadTooLarge, `outbox: args of job kind "event email.opened" are 204802 bytes, over the 131072-byte limit: store the data in a table and put its ID in the args`},
			{"SubscriberError", bf.ob, "email.opened", 1, nil, `outbox: a subscriber of "email.opened": cannot route`},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				var pubErr error
				_, err := tc.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
					require.NoError(t, tx.Enqueue(noteArgs{Note: "good"}, nil))
					pubErr = tx.Publish(tc.topic, tc.payload)
					return nil // a careless caller: the transaction still rolls back
				})
				require.ErrorIs(t, err, outbox.ErrTxAborted)
				if tc.is != nil {
					require.ErrorIs(t, err, tc.is)
				}
				require.EqualError(t, pubErr, tc.msg)
			})
		}
		require.Empty(t, b.events(ctx, t))
		require.Empty(t, b.jobs(ctx, t))
		require.Empty(t, bf.events(ctx, t))
		require.Empty(t, bf.jobs(ctx, t))
	})

	t.Run("ReaderQueryNeverSkipsALateCommit", func(t *testing.T) {
		t.Parallel()
		b := setup(ctx, t, nil)
		const readerSQL = `
			SELECT id, txid::text, topic FROM outbox_events
			 WHERE (txid, id) > ($1::xid8, $2::bigint)
			   AND txid < pg_snapshot_xmin(pg_current_snapshot())
			 ORDER BY txid, id LIMIT 1000`
		read := func(lastTxid string, lastID int64) ([]string, string, int64) {
			rows, err := b.schema.Pool.Query(ctx, readerSQL, lastTxid, lastID)
			require.NoError(t, err)
			var topics []string
			for rows.Next() {
				var topic string
				require.NoError(t, rows.Scan(&lastID, &lastTxid, &topic))
				topics = append(topics, topic)
			}
			require.NoError(t, rows.Err())
			return topics, lastTxid, lastID
		}

		// An older transaction publishes first and commits last.
		slow, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = slow.Rollback(ctx) }()
		early := b.ob.NewBatch()
		require.NoError(t, early.Publish("slow.one", 1))
		_, err = early.Flush(ctx, slow)
		require.NoError(t, err)

		_, err = b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Publish("fast.one", 2)
		})
		require.NoError(t, err)
		// The fast event has a larger id but must wait: the slow
		// transaction, older, is still running.
		topics, txid, id := read("0", 0)
		require.Empty(t, topics)

		require.NoError(t, slow.Commit(ctx))
		// Both appear, in commit-safe order, once no older transaction of
		// the cluster (other tests run beside this one) is still running.
		var got []string
		require.Eventually(t, func() bool {
			var topics []string
			topics, txid, id = read(txid, id)
			got = append(got, topics...)
			return len(got) >= 2
		}, 30*time.Second, 20*time.Millisecond)
		require.Equal(t, []string{"slow.one", "fast.one"}, got)
		topics, _, _ = read(txid, id)
		require.Empty(t, topics)
	})
}
