package jobs_test

import (
	"context"
	"fmt"
	"log"
	"sync/atomic"
	"time"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// chargeArgs asks to charge one invoice.
type chargeArgs struct {
	InvoiceID int64 `json:"invoice_id"`
}

func (chargeArgs) Kind() string { return "example.charge" }

// chargeWorker charges invoices, never two of the same payer at once.
type chargeWorker struct {
	river.WorkerDefaults[chargeArgs]

	payerOf    map[int64]int64 // the source of truth: invoice → payer
	running    atomic.Int64
	maxRunning atomic.Int64
}

// LockFor computes the key from the source of truth, not from the args.
func (w *chargeWorker) LockFor(_ context.Context, job *river.Job[chargeArgs]) (jobs.Lock, error) {
	return jobs.Lock{Key: fmt.Sprintf("payer-%d", w.payerOf[job.Args.InvoiceID])}, nil
}

func (w *chargeWorker) Work(ctx context.Context, _ *river.Job[chargeArgs]) error {
	n := w.running.Add(1)
	defer w.running.Add(-1)
	for { // maxRunning = max(maxRunning, n)
		m := w.maxRunning.Load()
		if n <= m || w.maxRunning.CompareAndSwap(m, n) {
			break
		}
	}
	select { // charging takes a while
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(20 * time.Millisecond):
		return nil
	}
}

// A worker that implements Locker gets a worker lock from NewClient: three
// invoices of one payer are enqueued together and run one at a time, and
// the jobs that waited did not use up attempts.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleLocker() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	worker := &chargeWorker{payerOf: map[int64]int64{1: 7, 2: 7, 3: 7}}
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, reg.AddQueue("billing", "charges", 0, nil), worker)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues},
		Schema: s.Name,
		Logger: discardLogger(),
		Lock:   &jobs.LockConfig{SnoozeBase: 50 * time.Millisecond},
		River:  &river.Config{FetchCooldown: 20 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
	})
	if err != nil {
		log.Fatal(err)
	}
	completed, cancel := client.Subscribe(river.EventKindJobCompleted)
	defer cancel()
	if err := client.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = client.Stop(ctx) }()

	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	// The relay moves committed outbox rows into River's job table.
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name, Logger: discardLogger()})
	if err != nil {
		log.Fatal(err)
	}
	if err := rl.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = rl.Stop(ctx) }()
	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		for id := int64(1); id <= 3; id++ {
			if err := tx.Enqueue(chargeArgs{InvoiceID: id}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}

	maxAttempt := 0
	for range 3 {
		ev := <-completed
		maxAttempt = max(maxAttempt, ev.Job.Attempt)
	}
	// A lock is released in the background after its job returned; Stop
	// returns once every release is written.
	if err := client.Stop(ctx); err != nil {
		log.Fatal(err)
	}
	var held int
	if err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM job_locks`).Scan(&held); err != nil {
		log.Fatal(err)
	}
	fmt.Println("charged: 3, at once at most:", worker.maxRunning.Load())
	fmt.Println("highest attempt:", maxAttempt, "locks still held:", held)
	// Output:
	// charged: 3, at once at most: 1
	// highest attempt: 1 locks still held: 0
}
