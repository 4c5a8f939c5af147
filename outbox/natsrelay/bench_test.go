package natsrelay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/natstest"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/inbox"
	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

// benchPayload is the data of the benchmarks' events, of a typical size.
type benchPayload struct {
	DonationID   int64  `json:"donation_id"`
	FundraiserID int64  `json:"fundraiser_id"`
	AmountCents  int64  `json:"amount_cents"`
	Currency     string `json:"currency"`
}

// BenchmarkThroughput compares, in one run, the relay moving b.N committed
// events (already in outbox_events; the clock runs from the relay's start
// until its cursor passes the last one) with a bare nats.go loop that
// builds and publishes the same b.N messages (the relay's subjects,
// CloudEvents envelopes and Nats-Msg-Id, from payloads ready in memory)
// asynchronously and waits for every acknowledgement. Both publish to a
// file-backed stream of their own on the shared server.
//
//	go test ./outbox/natsrelay -run '^$' -bench Throughput -benchtime 100000x -count 5
func BenchmarkThroughput(b *testing.B) {
	ctx := context.Background()
	b.Run("bare", func(b *testing.B) {
		nc := natstest.Connect(b, natstest.URL())
		// The relay's window: 8 batches of 1,000 in flight.
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8001))
		require.NoError(b, err)
		stream, prefix := natstest.Names(ctx, b, nc)
		_, err = natsrelay.SetupStream(ctx, js, natsrelay.StreamOptions{Name: stream, SubjectPrefix: prefix})
		require.NoError(b, err)
		// The payloads are ready, as the relay's come from its read; the
		// loop builds each message as a publisher must: envelope (with
		// encoding/json), subject, headers.
		payloads := make([][]byte, b.N)
		for i := range payloads {
			payloads[i], err = json.Marshal(benchPayload{DonationID: int64(i + 1), FundraiserID: int64(i % 100), AmountCents: 2500, Currency: "EUR"})
			require.NoError(b, err)
		}
		now := time.Now().UTC()
		b.ResetTimer()
		for i, data := range payloads {
			key := strconv.Itoa(i % 100)
			ev := natsrelay.CloudEvent{SpecVersion: "1.0", ID: strconv.Itoa(i + 1), Source: "/aftercommit/bench", Type: "donation.created",
				Subject: key, Time: now, DataContentType: "application/json", Data: data}
			body, err := json.Marshal(&ev)
			if err != nil {
				b.Fatal(err)
			}
			m := nats.NewMsg(natsrelay.Subject(prefix, "donation.created", key, true))
			m.Header.Set("Content-Type", natsrelay.ContentType)
			m.Header.Set(jetstream.MsgIDHeader, ev.ID)
			m.Data = body
			if _, err := js.PublishMsgAsync(m); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			b.Fatal("acknowledgements missing after a minute")
		}
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("relay", func(b *testing.B) {
		e := newEnv(ctx, b, natstest.URL())
		_, err := natsrelay.SetupStream(ctx, e.js, natsrelay.StreamOptions{Name: e.stream, SubjectPrefix: e.prefix})
		require.NoError(b, err)
		_, err = e.s.Pool.Exec(ctx, `INSERT INTO outbox_events (topic, key, payload)
			SELECT 'donation.created', (g % 100)::text,
			       jsonb_build_object('donation_id', g, 'fundraiser_id', g % 100, 'amount_cents', 2500, 'currency', 'EUR')
			  FROM generate_series(1, $1::int) AS g`, b.N)
		require.NoError(b, err)
		_, err = e.s.Pool.Exec(ctx, `VACUUM ANALYZE outbox_events`)
		require.NoError(b, err)
		cfg := e.config()
		cfg.CreateStream = false
		b.ResetTimer()
		r, stop := e.start(ctx, b, cfg)
		for r.State().LastSeq < uint64(b.N) {
			time.Sleep(time.Millisecond)
		}
		b.StopTimer()
		stop()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
}

// BenchmarkCommitToConsumer publishes b.N events, one per transaction, at
// 1,000 transactions a second through outbox.InTx, with the relay and an
// inbox consumer (in a schema of its own) running, and reports the
// percentiles of the time from each transaction's commit (InTx returned) to
// its handler running in the consumer.
//
//	go test ./outbox/natsrelay -run '^$' -bench CommitToConsumer -benchtime 20000x
func BenchmarkCommitToConsumer(b *testing.B) {
	ctx := context.Background()
	e := newEnv(ctx, b, natstest.URL())
	_, err := natsrelay.SetupStream(ctx, e.js, natsrelay.StreamOptions{Name: e.stream, SubjectPrefix: e.prefix})
	require.NoError(b, err)
	cfg := e.config()
	cfg.CreateStream = false
	cfg.PollMin, cfg.PollMax = 0, 0 // the shipped defaults
	// The relay has a pool of its own, as in a worker process: the
	// producers' transactions must not make it wait for a connection.
	relayPool, err := pgxpool.New(ctx, e.s.URL)
	require.NoError(b, err)
	b.Cleanup(relayPool.Close)
	r, err := natsrelay.New(relayPool, e.nc, &cfg)
	require.NoError(b, err)
	relayCtx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan error, 1)
	go func() { relayDone <- r.Run(relayCtx) }()
	defer func() { stopRelay(); require.NoError(b, <-relayDone) }()
	for !r.State().Active {
		time.Sleep(time.Millisecond)
	}

	dst := newConsumerSchema(ctx, b)
	var mu sync.Mutex
	received := make(map[int64]time.Time, b.N)
	handler := func(_ context.Context, _ pgx.Tx, ev *inbox.Event) error {
		now := time.Now()
		var p benchPayload
		if err := json.Unmarshal(ev.Data, &p); err != nil {
			return err
		}
		mu.Lock()
		received[p.DonationID] = now
		mu.Unlock()
		return nil
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() {
		require.NoError(b, inbox.Run(runCtx, dst.Pool, e.js, e.stream, handler, &inbox.Config{Name: "bench", Logger: discard}))
	})

	committed := make([]time.Time, b.N+1)
	const rate = 1000
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	b.ResetTimer()
	var pwg sync.WaitGroup
	for i := 1; i <= b.N; i++ {
		<-tick.C
		pwg.Go(func() {
			_, err := e.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
				return tx.PublishKey("donation.created", strconv.Itoa(i%100),
					benchPayload{DonationID: int64(i), FundraiserID: int64(i % 100), AmountCents: 2500, Currency: "EUR"})
			})
			if err != nil {
				b.Error(err)
				return
			}
			committed[i] = time.Now()
		})
	}
	pwg.Wait()
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		n := len(received)
		mu.Unlock()
		if n == b.N {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("the consumer received %d of %d events", n, b.N)
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.StopTimer()
	lat := make([]float64, 0, b.N)
	mu.Lock()
	for i := 1; i <= b.N; i++ {
		lat = append(lat, float64(received[int64(i)].Sub(committed[i]).Microseconds())/1000)
	}
	mu.Unlock()
	slices.Sort(lat)
	b.ReportMetric(lat[len(lat)/2], "p50-ms")
	b.ReportMetric(lat[len(lat)*99/100], "p99-ms")
	b.ReportMetric(lat[len(lat)-1], "max-ms")
}

// newConsumerSchema is a schema of its own with the default inbox table.
func newConsumerSchema(ctx context.Context, b *testing.B) *dbtest.Schema {
	b.Helper()
	s := dbtest.TestSchema(ctx, b, nil)
	ddl, err := inbox.CreateTableSQL(inbox.TableDefault)
	require.NoError(b, err)
	s.Scratch(ctx, b, ddl, fmt.Sprintf("DROP TABLE %s", inbox.TableDefault))
	return s
}
