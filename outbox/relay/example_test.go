package relay_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// exampleSetup gives an example its own migrated schema, an insert-only
// River client and an outbox on it.
func exampleSetup(ctx context.Context) (*dbtest.Schema, *river.Client[pgx.Tx], *outbox.Outbox, func()) {
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	ob, err := outbox.New(s.Pool, client, nil)
	if err != nil {
		log.Fatal(err)
	}
	return s, client, ob, release
}

// A transaction writes its jobs to the outbox table; Drain moves what has
// committed into River's job table now.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleRelay_Drain() {
	ctx := context.Background()
	s, client, ob, release := exampleSetup(ctx)
	defer release()

	_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		if err := tx.Enqueue(jobs.PingArgs{PingID: 1}, nil); err != nil {
			return err
		}
		return tx.Enqueue(jobs.PingArgs{PingID: 2}, &river.InsertOpts{Priority: 2})
	})
	if err != nil {
		log.Fatal(err)
	}

	rl, err := relay.New(s.Pool, client, &relay.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	res, err := rl.Drain(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("rows %d, jobs inserted %d, dead %d\n", res.Rows, res.Inserted, res.Dead)

	rows, err := s.Pool.Query(ctx, `SELECT format('%s %s priority %s', kind, args, priority) FROM river_job ORDER BY id`)
	if err != nil {
		log.Fatal(err)
	}
	jobRows, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		log.Fatal(err)
	}
	for _, j := range jobRows {
		fmt.Println(j)
	}
	var depth int
	if err := s.Pool.QueryRow(ctx, `SELECT depth FROM outbox_depth`).Scan(&depth); err != nil {
		log.Fatal(err)
	}
	fmt.Println("outbox depth", depth)
	// Output:
	// rows 2, jobs inserted 2, dead 0
	// aftercommit.ping {"ping_id": 1} priority 1
	// aftercommit.ping {"ping_id": 2} priority 2
	// outbox depth 0
}

// A running relay moves rows as they commit; Stop lets the batch under way
// finish.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleRelay_Start() {
	ctx := context.Background()
	s, client, ob, release := exampleSetup(ctx)
	defer release()

	rl, err := relay.New(s.Pool, client, &relay.Config{
		Schema: s.Name, PollMax: 20 * time.Millisecond,
		DisableListen: true, // a poll every 20 ms is enough here
		Logger:        slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := rl.Start(ctx); err != nil {
		log.Fatal(err)
	}
	if _, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(jobs.PingArgs{PingID: 7}, nil)
	}); err != nil {
		log.Fatal(err)
	}

	var args string
	for deadline := time.Now().Add(30 * time.Second); ; {
		err := s.Pool.QueryRow(ctx, `SELECT args::text FROM river_job`).Scan(&args)
		if err == nil {
			break
		}
		if !errors.Is(err, pgx.ErrNoRows) || time.Now().After(deadline) {
			log.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rl.Stop(stopCtx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("job", args)
	fmt.Println("rows moved", rl.Stats().Rows)
	// Output:
	// job {"ping_id": 7}
	// rows moved 1
}
