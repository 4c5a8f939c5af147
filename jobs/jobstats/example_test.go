package jobstats_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs/jobstats"
)

// thumbnailArgs asks for the thumbnail of one image.
type thumbnailArgs struct {
	ImageID int64 `json:"image_id"`
}

func (thumbnailArgs) Kind() string { return "example.thumbnail" }

// thumbnailWorker fails the first attempt of image 2.
type thumbnailWorker struct {
	river.WorkerDefaults[thumbnailArgs]
}

func (thumbnailWorker) Work(_ context.Context, job *river.Job[thumbnailArgs]) error {
	if job.Args.ImageID == 2 && job.Attempt == 1 {
		return errors.New("image store unavailable")
	}
	return nil
}

// NextRetry retries at once, to keep the example short.
func (thumbnailWorker) NextRetry(*river.Job[thumbnailArgs]) time.Time { return time.Now() }

// Three thumbnails are made, one after a failed attempt, and one job waits
// in another queue for an hour. Collect reads the job views: what the kind
// did in the last hour, its last error, and the depth of each queue.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run's client ends with the process, its schema is left to the test harness' clean-up of old runs
func ExampleCollect() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, &dbtest.Opts{MaxConns: 4})
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	workers := river.NewWorkers()
	river.AddWorker(workers, thumbnailWorker{})
	client, completed, stop := startExampleClient(ctx, s, workers, 3)
	defer stop()

	_, err = client.InsertMany(ctx, []river.InsertManyParams{
		{Args: thumbnailArgs{ImageID: 1}},
		{Args: thumbnailArgs{ImageID: 2}},
		{Args: thumbnailArgs{ImageID: 3}},
		{Args: thumbnailArgs{ImageID: 4}, InsertOpts: &river.InsertOpts{Queue: "later", ScheduledAt: time.Now().Add(time.Hour)}},
	})
	if err != nil {
		log.Fatal(err)
	}
	for range 3 {
		<-completed
	}

	report, err := jobstats.Collect(ctx, s.Pool, nil)
	if err != nil {
		log.Fatal(err)
	}
	k, _ := report.Kind("example.thumbnail", jobstats.PeriodHour)
	fmt.Printf("%s, last hour: completed %d, failed attempts %d\n", k.Kind, k.Completed, k.Failed)
	fmt.Println("run time p50 <= p95 <= p99:", k.RunTimeP50 <= k.RunTimeP95 && k.RunTimeP95 <= k.RunTimeP99)
	for _, f := range report.Failing {
		fmt.Printf("last error of %s: attempt %d: %s (the job is %s now)\n", f.Kind, f.Attempt, f.Error, f.State)
	}
	for _, q := range report.Queues {
		fmt.Printf("queue %s: %d %s\n", q.Queue, q.Jobs, q.State)
	}
	fmt.Println("stuck jobs:", len(report.Stuck))
	// Output:
	// example.thumbnail, last hour: completed 3, failed attempts 1
	// run time p50 <= p95 <= p99: true
	// last error of example.thumbnail: attempt 1: image store unavailable (the job is completed now)
	// queue default: 3 completed
	// queue later: 1 scheduled
	// stuck jobs: 0
}
