package jobs_test

import (
	"context"
	"fmt"
	"log"
	"strconv"
	"sync"
	"time"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// settleArgs applies one payment event to an account.
type settleArgs struct {
	AccountID int64  `json:"account_id"`
	Event     string `json:"event"`
}

func (settleArgs) Kind() string { return "example.settle" }

// settleWorker applies an account's events one at a time, in the order
// their transactions committed.
type settleWorker struct {
	river.WorkerDefaults[settleArgs]

	mu      sync.Mutex
	applied []string
}

// SequenceFor puts the events of one account in one sequence.
func (w *settleWorker) SequenceFor(args settleArgs) jobs.Sequence {
	return jobs.Sequence{Key: strconv.FormatInt(args.AccountID, 10)}
}

func (w *settleWorker) Work(_ context.Context, job *river.Job[settleArgs]) error {
	time.Sleep(time.Millisecond)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.applied = append(w.applied, job.Args.Event)
	return nil
}

// A worker that implements Sequencer runs the jobs of one key one at a
// time, in commit order: the jobs wait in River's pending state and the
// completion of each releases the next. Here three transactions commit
// "authorize", "capture" and "refund" for one account; however many
// workers there are, they are applied in that order.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleSequencer() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	worker := &settleWorker{}
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, reg.AddQueue("payments", "settle", 0, nil), worker)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues}, MaxWorkers: 10, Schema: s.Name, Logger: discardLogger(),
	})
	if err != nil {
		log.Fatal(err)
	}
	// Sequences need the outbox table and its relay (cmd/worker runs one).
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name, Logger: discardLogger()})
	if err != nil {
		log.Fatal(err)
	}
	for _, event := range []string{"authorize", "capture", "refund"} {
		if _, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(settleArgs{AccountID: 7, Event: event}, nil)
		}); err != nil {
			log.Fatal(err)
		}
	}
	if _, err := rl.Drain(ctx); err != nil {
		log.Fatal(err)
	}
	var states string
	if err := s.Pool.QueryRow(ctx, `SELECT string_agg(state::text, ' ' ORDER BY id) FROM river_job`).Scan(&states); err != nil {
		log.Fatal(err)
	}
	fmt.Println("before the workers start:", states)

	completed, cancel := client.Subscribe(river.EventKindJobCompleted)
	defer cancel()
	if err := client.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = client.Stop(ctx) }()
	for range 3 {
		<-completed
	}
	worker.mu.Lock()
	fmt.Println("applied:", worker.applied)
	worker.mu.Unlock()
	// Output:
	// before the workers start: available pending pending
	// applied: [authorize capture refund]
}
