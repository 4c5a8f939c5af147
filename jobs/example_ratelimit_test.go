package jobs_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"slices"
	"time"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
)

// receiptArgs asks to send the receipt of one order.
type receiptArgs struct {
	OrderID int64 `json:"order_id"`
}

func (receiptArgs) Kind() string { return "example.receipt" }

// receiptWorker sends receipts through an email provider that takes at most
// 2 messages per second from us.
type receiptWorker struct {
	river.WorkerDefaults[receiptArgs]

	providerOf map[int64]string // the source of truth: order → provider
}

// RateLimitFor limits each provider, whichever process sends.
func (w *receiptWorker) RateLimitFor(_ context.Context, job *river.Job[receiptArgs]) (jobs.RateLimit, error) {
	return jobs.RateLimit{Key: w.providerOf[job.Args.OrderID], Limit: 2, Period: time.Second}, nil
}

func (w *receiptWorker) Work(context.Context, *river.Job[receiptArgs]) error { return nil }

// A worker that implements RateLimiter gets a rate limit from NewClient:
// of three receipts queued at once, two start at once and the third waits
// until the first is a second old, without using up an attempt.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleRateLimiter() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	worker := &receiptWorker{providerOf: map[int64]string{1: "mailco", 2: "mailco", 3: "mailco"}}
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, reg.AddQueue("shop", "receipts", 0, nil), worker)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues},
		Schema: s.Name,
		Logger: discardLogger(),
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

	if _, err := client.InsertMany(ctx, []river.InsertManyParams{
		{Args: receiptArgs{OrderID: 1}}, {Args: receiptArgs{OrderID: 2}}, {Args: receiptArgs{OrderID: 3}},
	}); err != nil {
		log.Fatal(err)
	}
	var starts []time.Time
	waited, maxAttempt := 0, 0
	for range 3 {
		ev := <-completed
		starts = append(starts, *ev.Job.AttemptedAt)
		maxAttempt = max(maxAttempt, ev.Job.Attempt)
		var meta struct {
			Snoozes int `json:"snoozes"` // River counts a job's snoozes here
		}
		if err := json.Unmarshal(ev.Job.Metadata, &meta); err == nil && meta.Snoozes > 0 {
			waited++
		}
	}
	first, last := slices.MinFunc(starts, time.Time.Compare), slices.MaxFunc(starts, time.Time.Compare)
	fmt.Println("sent: 3, waited:", waited, "highest attempt:", maxAttempt)
	fmt.Println("a second between the first start and the last:", last.Sub(first) > time.Second)
	var admitted, delayed int
	if err := s.Pool.QueryRow(ctx, `SELECT admitted, delayed FROM job_rate_limit_status WHERE rate_key = 'mailco'`).Scan(&admitted, &delayed); err != nil {
		log.Fatal(err)
	}
	fmt.Println("job_rate_limit_status: admitted", admitted, "delayed", delayed)
	// Output:
	// sent: 3, waited: 1 highest attempt: 1
	// a second between the first start and the last: true
	// job_rate_limit_status: admitted 3 delayed 1
}
