package jobs_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// importPartArgs imports one part of a file.
type importPartArgs struct {
	Part int `json:"part"`
}

func (importPartArgs) Kind() string { return "example.import_part" }

type importPartWorker struct {
	river.WorkerDefaults[importPartArgs]
}

// Work records how many rows the part held, for the callback.
func (importPartWorker) Work(ctx context.Context, job *river.Job[importPartArgs]) error {
	return river.RecordOutput(ctx, map[string]int{"rows": 100 * job.Args.Part})
}

// importFinishedArgs says an import finished: its batch's callback.
type importFinishedArgs struct {
	File string `json:"file"`
}

func (importFinishedArgs) Kind() string { return "example.import_finished" }

type importFinishedWorker struct {
	river.WorkerDefaults[importFinishedArgs]
	pool *pgxpool.Pool
	done chan<- string
}

// Work reads the batch's counts and its members' outputs.
func (w importFinishedWorker) Work(ctx context.Context, job *river.Job[importFinishedArgs]) error {
	batch, _ := jobs.JobBatchDoneOf(job.JobRow)
	members, err := jobs.JobBatchMembers(ctx, w.pool, batch.ID)
	if err != nil {
		return err
	}
	rows := 0
	for _, m := range members {
		var out struct{ Rows int }
		if err := json.Unmarshal(m.Output, &out); err != nil {
			return err
		}
		rows += out.Rows
	}
	w.done <- fmt.Sprintf("%s: %d of %d parts completed, %d rows", job.Args.File, batch.Completed, batch.Expected, rows)
	return nil
}

// A job batch says "import finished" exactly once, after every part: the
// parts and the callback are enqueued in the business transaction, and the
// completion of the last part inserts the callback in its own transaction.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleJobBatchDoneOf() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	done := make(chan string, 1)
	reg := jobs.NewRegistry()
	q := reg.AddQueue("imports", "imports", 0, nil)
	jobs.AddWorker(reg, q, importPartWorker{})
	jobs.AddWorker(reg, q, importFinishedWorker{pool: s.Pool, done: done})
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Schema: s.Name, Logger: discardLogger(), Queues: []string{jobs.AllQueues}})
	if err != nil {
		log.Fatal(err)
	}
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		// ... the import's business rows, in tx ...
		batch, err := tx.NewJobBatch(&outbox.JobBatchOpts{OnSuccess: importFinishedArgs{File: "cars.csv"}})
		if err != nil {
			return err
		}
		for part := 1; part <= 5; part++ {
			if err := batch.Enqueue(importPartArgs{Part: part}, nil); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		log.Fatal(err)
	}

	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name, Logger: discardLogger()})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := rl.Drain(ctx); err != nil {
		log.Fatal(err)
	}
	if err := client.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = client.Stop(ctx) }()
	select {
	case msg := <-done:
		fmt.Println(msg)
	case <-time.After(30 * time.Second):
		log.Fatal("the import did not finish")
	}
	// Output:
	// cars.csv: 5 of 5 parts completed, 1500 rows
}
