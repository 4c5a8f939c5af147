package inbox_test

import (
	"context"
	"fmt"
	"log"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/natstest"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/inbox"
	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

// A transaction publishes two keyed events; the relay sends them to
// JetStream as CloudEvents; a consumer (here in the same database, usually
// in its own) handles each once, in its own transaction with its inbox row.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included
func Example() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()
	if err := inbox.CreateTable(ctx, s.Pool, "example_inbox"); err != nil {
		log.Fatal(err)
	}
	defer func() { _, _ = s.Pool.Exec(ctx, `DROP TABLE example_inbox`) }()

	nc, err := nats.Connect(natstest.URL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	id := strings.ToLower(nuid.Next())
	stream, prefix := "EXAMPLE_"+id, "example."+id
	if _, err := natsrelay.SetupStream(ctx, js, natsrelay.StreamOptions{Name: stream, SubjectPrefix: prefix, Memory: true}); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = js.DeleteStream(ctx, stream) }()

	// The producer: events published in the business transaction.
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	ob, err := outbox.New(s.Pool, client, nil)
	if err != nil {
		log.Fatal(err)
	}
	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		if err := tx.PublishKey("donation.created", "fundraiser-7", map[string]int{"amount_cents": 2500}); err != nil {
			return err
		}
		return tx.PublishKey("donation.created", "fundraiser-7", map[string]int{"amount_cents": 1000})
	})
	if err != nil {
		log.Fatal(err)
	}

	// The relay (cmd/worker --nats-url runs one).
	rl, err := natsrelay.New(s.Pool, nc, &natsrelay.Config{Stream: stream, SubjectPrefix: prefix})
	if err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() { _ = rl.Run(runCtx) })

	// The consumer.
	handled := make(chan struct{}, 2)
	handler := func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		// The consumer's own rows, written with tx: they commit with the
		// event's inbox row, or not at all.
		if _, err := tx.Exec(ctx, `INSERT INTO pings (note) VALUES ($1)`, ev.Type+" "+ev.Subject); err != nil {
			return err
		}
		fmt.Printf("%s %s %s\n", ev.Type, ev.Subject, ev.Data)
		handled <- struct{}{}
		return nil
	}
	wg.Go(func() {
		_ = inbox.Run(runCtx, s.Pool, js, stream, handler, &inbox.Config{Name: "tally", Table: "example_inbox"})
	})
	for range 2 {
		select {
		case <-handled:
		case <-time.After(30 * time.Second):
			log.Fatal("no event in 30s")
		}
	}
	// Output:
	// donation.created fundraiser-7 {"amount_cents": 2500}
	// donation.created fundraiser-7 {"amount_cents": 1000}
}
