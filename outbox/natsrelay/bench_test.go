package natsrelay_test

import (
	"cmp"
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
	var ackMu sync.Mutex
	var acks []ackMark
	cfg.OnPublish = func(_ context.Context, res natsrelay.PublishResult) {
		now := time.Now()
		ackMu.Lock()
		acks = append(acks, ackMark{res.LastID, now})
		ackMu.Unlock()
	}
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

	// The stages: a core NATS subscriber on the stream's subjects sees a
	// message once JetStream stored it (keyed by Nats-Msg-Id, the event's
	// id), and the relay's OnPublish marks the cursor stored after the
	// acknowledgements.
	var mu sync.Mutex
	inStream := make(map[string]time.Time, b.N)
	sub, err := e.nc.Subscribe(e.prefix+".>", func(m *nats.Msg) {
		now := time.Now()
		mu.Lock()
		inStream[m.Header.Get(jetstream.MsgIDHeader)] = now
		mu.Unlock()
	})
	require.NoError(b, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(b, e.nc.Flush())

	dst := newConsumerSchema(ctx, b)
	received := make(map[int64]time.Time, b.N)
	eventOf := make(map[int64]string, b.N)
	handler := func(_ context.Context, _ pgx.Tx, ev *inbox.Event) error {
		now := time.Now()
		var p benchPayload
		if err := json.Unmarshal(ev.Data, &p); err != nil {
			return err
		}
		mu.Lock()
		received[p.DonationID] = now
		eventOf[p.DonationID] = ev.ID

		mu.Unlock()
		return nil
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	// The consumer has a connection of its own, as another service would:
	// the relay's publishes and acknowledgements do not queue before its
	// messages.
	cjs, err := jetstream.New(natstest.Connect(b, natstest.URL()))
	require.NoError(b, err)
	wg.Go(func() {
		require.NoError(b, inbox.Run(runCtx, dst.Pool, cjs, e.stream, handler, &inbox.Config{Name: "bench", Logger: discard}))
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
	// Per stage: commit → in the stream (the relay's settle, read and
	// publish), commit → cursor stored (its acknowledgements too), in the
	// stream → handled (the inbox).
	var total, toStream, toAck, toHandler []float64
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	mu.Lock()
	ackMu.Lock()
	for i := 1; i <= b.N; i++ {
		id := eventOf[int64(i)]
		total = append(total, ms(received[int64(i)].Sub(committed[i])))
		if at, ok := inStream[id]; ok {
			toStream = append(toStream, ms(at.Sub(committed[i])))
			toHandler = append(toHandler, ms(received[int64(i)].Sub(at)))
		}
		n, _ := strconv.ParseInt(id, 10, 64)
		if k, ok := slices.BinarySearchFunc(acks, n, func(a ackMark, n int64) int { return cmp.Compare(a.lastID, n) }); ok || k < len(acks) {
			toAck = append(toAck, ms(acks[k].at.Sub(committed[i])))
		}
	}
	ackMu.Unlock()
	mu.Unlock()
	for _, st := range []struct {
		name string
		lat  []float64
	}{{"", total}, {"stream-", toStream}, {"ack-", toAck}, {"inbox-", toHandler}} {
		if len(st.lat) == 0 {
			continue
		}
		slices.Sort(st.lat)
		b.ReportMetric(st.lat[len(st.lat)/2], st.name+"p50-ms")
		b.ReportMetric(st.lat[len(st.lat)*99/100], st.name+"p99-ms")
		b.ReportMetric(st.lat[len(st.lat)-1], st.name+"max-ms")
	}
}

// ackMark is a cursor the relay stored, and when.
type ackMark struct {
	lastID int64
	at     time.Time
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
