package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// exampleOutbox gives an example its own migrated schema and an Outbox on it.
func exampleOutbox(ctx context.Context) (*outbox.Outbox, *dbtest.Schema, func()) {
	ob, _, s, release := exampleOutboxClient(ctx)
	return ob, s, release
}

// exampleOutboxClient is exampleOutbox with the River client, for a relay.
func exampleOutboxClient(ctx context.Context) (*outbox.Outbox, *river.Client[pgx.Tx], *dbtest.Schema, func()) {
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	// An insert-only River client: it builds job rows, it works nothing.
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	ob, err := outbox.New(s.Pool, client, nil)
	if err != nil {
		log.Fatal(err)
	}
	return ob, client, s, release
}

// A business row and its follow-up job commit together; the three enqueues
// of the same job are written once, with the COMMIT, in one round trip, as
// one row of the outbox table. A relay (every cmd/worker runs one) then
// moves the committed row into River's job table.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleOutbox_InTx() {
	ctx := context.Background()
	ob, client, s, release := exampleOutboxClient(ctx)
	defer release()

	_, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		var pingID int64
		if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('hello') RETURNING id`).Scan(&pingID); err != nil {
			return err
		}
		for range 3 {
			if err := tx.Enqueue(jobs.PingArgs{PingID: pingID}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}

	var kind, args string
	if err := s.Pool.QueryRow(ctx, `SELECT kind, args::text FROM outbox_jobs`).Scan(&kind, &args); err != nil {
		log.Fatal(err)
	}
	fmt.Println("outbox:", kind, args)

	rl, err := relay.New(s.Pool, client, &relay.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	moved, err := rl.Drain(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := s.Pool.QueryRow(ctx, `SELECT kind, args::text FROM river_job`).Scan(&kind, &args); err != nil {
		log.Fatal(err)
	}
	fmt.Println("relayed:", moved.Rows, "river_job:", kind, args)
	// Output:
	// outbox: aftercommit.ping {"ping_id": 1}
	// relayed: 1 river_job: aftercommit.ping {"ping_id": 1}
}

// When the function returns an error, neither the row nor the job exists.
func ExampleOutbox_InTx_rollback() {
	ctx := context.Background()
	ob, s, release := exampleOutbox(ctx)
	defer release()

	errDeclined := errors.New("card declined")
	_, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO pings (note) VALUES ('doomed')`); err != nil {
			return err
		}
		if err := tx.Enqueue(jobs.PingArgs{PingID: 1}, nil); err != nil {
			return err
		}
		return errDeclined
	})
	fmt.Println("error:", err)

	var pings, jobRows int
	_ = s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM pings), (SELECT count(*) FROM outbox_jobs)`).Scan(&pings, &jobRows)
	fmt.Println("pings:", pings, "jobs:", jobRows)
	// Output:
	// error: card declined
	// pings: 0 jobs: 0
}

// Transaction-local settings ride on the BEGIN: a lock wait in the
// function fails after 50 ms instead of hanging, and the transaction, its
// row and its job are rolled back.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleOutbox_InTx_txOptions() {
	ctx := context.Background()
	ob, s, release := exampleOutbox(ctx)
	defer release()

	var pingID int64
	if err := s.Pool.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('hot') RETURNING id`).Scan(&pingID); err != nil {
		log.Fatal(err)
	}
	// Someone else holds the row.
	holder, err := s.Pool.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = holder.Rollback(ctx) }()
	if _, err := holder.Exec(ctx, `SELECT 1 FROM pings WHERE id = $1 FOR UPDATE`, pingID); err != nil {
		log.Fatal(err)
	}

	opts := pgx.TxOptions{BeginQuery: "BEGIN; SET LOCAL lock_timeout = '50ms'"}
	_, err = ob.InTx(ctx, &outbox.InTxOpts{TxOptions: opts}, func(ctx context.Context, tx *outbox.Tx) error {
		if err := tx.Enqueue(jobs.PingArgs{PingID: pingID}, nil); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE pings SET note = 'mine' WHERE id = $1`, pingID)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		fmt.Println("SQLSTATE", pgErr.Code, pgErr.Message)
	}
	var jobRows int
	_ = s.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox_jobs`).Scan(&jobRows)
	fmt.Println("jobs:", jobRows)
	// Output:
	// SQLSTATE 55P03 canceling statement due to lock timeout
	// jobs: 0
}

// Args are meant to carry IDs. Large payloads are refused at enqueue and the
// transaction commits nothing.
func ExampleOutbox_InTx_payloadTooLarge() {
	ctx := context.Background()
	ob, _, release := exampleOutbox(ctx)
	defer release()

	_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(exportArgs{CSV: strings.Repeat("x", 200<<10)}, nil)
	})
	var tooLarge *outbox.PayloadTooLargeError
	if errors.As(err, &tooLarge) {
		fmt.Println(tooLarge.Kind, tooLarge.Size, tooLarge.Limit)
	}
	// Output: example.export 204810 131072
}

// exportArgs carries data instead of an ID: a mistake the payload guard
// catches.
type exportArgs struct {
	CSV string `json:"csv"`
}

func (exportArgs) Kind() string { return "example.export" }

// A transaction owned by the caller (here a plain pgx transaction) gets the
// same validation and de-duplication from a Batch; the caller commits.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleBatch() {
	ctx := context.Background()
	ob, s, release := exampleOutbox(ctx)
	defer release()

	err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		batch := ob.NewBatch()
		for i := range 1000 {
			if err := batch.Add(jobs.PingArgs{PingID: int64(i%10 + 1)}, nil); err != nil {
				return err
			}
		}
		fmt.Println("distinct:", batch.Len(), "duplicates:", batch.Duplicates())
		res, err := batch.Flush(ctx, tx) // one INSERT for the ten jobs
		fmt.Println("inserted:", res.Inserted)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// distinct: 10 duplicates: 990
	// inserted: 10
}
