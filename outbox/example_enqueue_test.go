package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// An Outbox needs a pool and a River client, which may be insert-only (no
// Workers, no Queues). Jobs are written to the outbox table with the commit;
// a relay then moves them into River's job table. Config.Queues restricts
// the queues jobs may be enqueued to.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleNew() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	ob, err := outbox.New(s.Pool, client, &outbox.Config{Queues: []string{"default", "emails"}})
	if err != nil {
		log.Fatal(err)
	}

	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(jobs.PingArgs{PingID: 0}, &river.InsertOpts{Queue: "emails"})
	})
	if err != nil {
		log.Fatal(err)
	}
	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(jobs.PingArgs{PingID: 0}, &river.InsertOpts{Queue: "reports"})
	})
	fmt.Println("unknown queue:", errors.Is(err, outbox.ErrUnknownQueue))

	var outboxRows int
	if err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_jobs`).Scan(&outboxRows); err != nil {
		log.Fatal(err)
	}
	fmt.Println("outbox rows:", outboxRows)

	// cmd/worker runs a relay in every process; Drain moves what is there.
	rl, err := relay.New(s.Pool, client, &relay.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	moved, err := rl.Drain(ctx)
	if err != nil {
		log.Fatal(err)
	}
	var kind, queue, state string
	if err := s.Pool.QueryRow(ctx, `SELECT kind, queue, state FROM river_job`).Scan(&kind, &queue, &state); err != nil {
		log.Fatal(err)
	}
	fmt.Println("relayed:", moved.Inserted, "river_job:", kind, queue, state)
	// Output:
	// unknown queue: true
	// outbox rows: 1
	// relayed: 1 river_job: aftercommit.ping emails available
}

// In a transaction the caller owns (a framework's, a River worker's), Enqueue
// writes one job in one round trip; the job commits or rolls back with the
// caller's rows.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleOutbox_Enqueue() {
	ctx := context.Background()
	ob, s, release := exampleOutbox(ctx)
	defer release()

	err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		var pingID int64
		if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('mine') RETURNING id`).Scan(&pingID); err != nil {
			return err
		}
		res, err := ob.Enqueue(ctx, tx, jobs.PingArgs{PingID: pingID}, nil)
		if err != nil {
			return err
		}
		fmt.Println("inserted:", res.Inserted, "round trips:", res.RoundTrips)
		return nil
	}) // the caller commits
	if err != nil {
		log.Fatal(err)
	}

	var kind, args string
	if err := s.Pool.QueryRow(ctx, `SELECT kind, args::text FROM outbox_jobs`).Scan(&kind, &args); err != nil {
		log.Fatal(err)
	}
	fmt.Println("outbox:", kind, args)
	// Output:
	// inserted: 1 round trips: 1
	// outbox: aftercommit.ping {"ping_id": 1}
}

// EnqueueMany is Enqueue for several jobs: one round trip, duplicates
// (same kind and args) written once, and nothing written when one of them
// is refused.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleOutbox_EnqueueMany() {
	ctx := context.Background()
	ob, s, release := exampleOutbox(ctx)
	defer release()

	err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		res, err := ob.EnqueueMany(ctx, tx, []river.InsertManyParams{
			{Args: jobs.PingArgs{PingID: 1}},
			{Args: jobs.PingArgs{PingID: 2}, InsertOpts: &river.InsertOpts{Priority: 1}},
			{Args: jobs.PingArgs{PingID: 1}}, // a duplicate of the first
		})
		if err != nil {
			return err
		}
		fmt.Println("enqueued:", res.Enqueued, "duplicates:", res.Duplicates, "inserted:", res.Inserted)

		_, err = ob.EnqueueMany(ctx, tx, []river.InsertManyParams{
			{Args: jobs.PingArgs{PingID: 3}},
			{Args: jobs.PingArgs{PingID: 4}, InsertOpts: &river.InsertOpts{Queue: "Not A Queue"}},
		})
		fmt.Println("refused:", errors.Is(err, outbox.ErrInvalidQueue))
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}

	var rows int
	if err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_jobs`).Scan(&rows); err != nil {
		log.Fatal(err)
	}
	fmt.Println("outbox rows:", rows)
	// Output:
	// enqueued: 3 duplicates: 1 inserted: 2
	// refused: true
	// outbox rows: 2
}

// addPing is business code written once with JoinTx: it runs in an InTx
// transaction or in any pgx.Tx of the caller.
func addPing(ctx context.Context, ob *outbox.Outbox, tx pgx.Tx, note string) (outbox.FlushResult, error) {
	return ob.JoinTx(ctx, tx, func(ctx context.Context, tx *outbox.Tx) error {
		var id int64
		if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ($1) RETURNING id`, note).Scan(&id); err != nil {
			return err
		}
		return tx.Enqueue(jobs.PingArgs{PingID: id}, nil)
	})
}

// JoinTx lets one function serve both transactions: inside InTx its job is
// written with InTx's commit; in a plain pgx.Tx it is written before JoinTx
// returns, and the caller commits.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleOutbox_JoinTx() {
	ctx := context.Background()
	ob, s, release := exampleOutbox(ctx)
	defer release()

	// Inside InTx: JoinTx writes nothing itself, InTx's commit does.
	res, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		joined, err := addPing(ctx, ob, tx, "in InTx")
		fmt.Println("joined InTx, written by JoinTx:", joined.Inserted)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("written by InTx's commit:", res.Inserted)

	// In a plain pgx transaction: JoinTx writes the job into it.
	err = pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		joined, err := addPing(ctx, ob, tx, "in pgx.Tx")
		fmt.Println("joined pgx.Tx, written by JoinTx:", joined.Inserted)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}

	rows, err := s.Pool.Query(ctx, `SELECT p.note, j.args::text FROM pings p JOIN outbox_jobs j ON (j.args->>'ping_id')::bigint = p.id ORDER BY p.id`)
	if err != nil {
		log.Fatal(err)
	}
	var note, args string
	_, err = pgx.ForEachRow(rows, []any{&note, &args}, func() error {
		fmt.Println(note+":", args)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// joined InTx, written by JoinTx: 0
	// written by InTx's commit: 1
	// joined pgx.Tx, written by JoinTx: 1
	// in InTx: {"ping_id": 1}
	// in pgx.Tx: {"ping_id": 2}
}

// pingNoted is the payload of the "ping.noted" event.
type pingNoted struct {
	PingID int64 `json:"ping_id"`
}

// Publish writes a domain event to outbox_events with the transaction's
// rows; jobs.Subscribe turns events into jobs in the same commit.
// Config.Topics restricts the topics events may be published to.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleTx_Publish() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	ob, err := outbox.New(s.Pool, client, &outbox.Config{Topics: []string{"ping.noted"}})
	if err != nil {
		log.Fatal(err)
	}

	res, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		var id int64
		if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('hello') RETURNING id`).Scan(&id); err != nil {
			return err
		}
		return tx.Publish("ping.noted", pingNoted{PingID: id})
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("events written:", res.Events)

	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Publish("ping.deleted", pingNoted{PingID: 1})
	})
	fmt.Println("unknown topic:", errors.Is(err, outbox.ErrUnknownTopic))

	var topic, payload string
	if err := s.Pool.QueryRow(ctx, `SELECT topic, payload::text FROM outbox_events`).Scan(&topic, &payload); err != nil {
		log.Fatal(err)
	}
	fmt.Println("outbox_events:", topic, payload)
	// Output:
	// events written: 1
	// unknown topic: true
	// outbox_events: ping.noted {"ping_id": 1}
}

// Stats counts how InTx committed the transactions that held jobs: with
// the job insert and the COMMIT in one round trip (Pipelined), or in two
// (Fallbacks), here because Config.DisablePipelinedCommit asks for it, to
// compare the two.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleOutbox_Stats() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}

	for _, cfg := range []*outbox.Config{nil, {DisablePipelinedCommit: true}} {
		ob, err := outbox.New(s.Pool, client, cfg)
		if err != nil {
			log.Fatal(err)
		}
		for range 2 {
			res, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
				return tx.Enqueue(jobs.PingArgs{PingID: 0}, nil)
			})
			if err != nil {
				log.Fatal(err)
			}
			fmt.Println("round trips:", res.RoundTrips)
		}
		// A transaction without jobs is not counted.
		if _, err := ob.InTx(ctx, nil, func(context.Context, *outbox.Tx) error { return nil }); err != nil {
			log.Fatal(err)
		}
		st := ob.Stats()
		fmt.Printf("pipelined: %d, fallbacks: %d, copied: %d\n", st.Pipelined, st.Fallbacks, st.Copied)
	}
	// Output:
	// round trips: 1
	// round trips: 1
	// pipelined: 2, fallbacks: 0, copied: 0
	// round trips: 2
	// round trips: 2
	// pipelined: 0, fallbacks: 2, copied: 0
}

// ValidQueueName is River's rule for queue names, to check a name before
// it is used in insert options.
func ExampleValidQueueName() {
	for _, name := range []string{"emails", "reporting_bulk", "tenant|42", "Emails", "bulk__jobs", "-jobs", ""} {
		fmt.Printf("%q: %t\n", name, outbox.ValidQueueName(name))
	}
	// Output:
	// "emails": true
	// "reporting_bulk": true
	// "tenant|42": true
	// "Emails": false
	// "bulk__jobs": false
	// "-jobs": false
	// "": false
}
