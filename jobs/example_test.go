package jobs_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// startExampleClient starts a River client of workers on s, working the
// default queue with maxWorkers and fetching quickly, with mw, and returns
// it with its completed-job events and its stop: the examples' setup.
func startExampleClient(ctx context.Context, s *dbtest.Schema, workers *river.Workers, maxWorkers int, mw ...rivertype.Middleware) (*river.Client[pgx.Tx], <-chan *river.Event, func()) {
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{
		Schema:            s.Name,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: maxWorkers}},
		Workers:           workers,
		Middleware:        mw,
		FetchCooldown:     20 * time.Millisecond,
		FetchPollInterval: 50 * time.Millisecond,
		Logger:            discardLogger(),
	})
	if err != nil {
		log.Fatal(err)
	}
	completed, cancel := client.Subscribe(river.EventKindJobCompleted)
	if err := client.Start(ctx); err != nil {
		log.Fatal(err)
	}
	return client, completed, func() {
		_ = client.Stop(ctx)
		cancel()
	}
}

// A ping row and its job commit together; a worker marks the row and
// completes the job in one transaction.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run's client ends with the process, its schema is left to the test harness' clean-up of old runs
func ExampleAddPingWorker() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	workers := river.NewWorkers()
	jobs.AddPingWorker(workers, s.Pool)
	client, completed, stop := startExampleClient(ctx, s, workers, 10)
	defer stop()

	ob, err := outbox.New(s.Pool, client, nil)
	if err != nil {
		log.Fatal(err)
	}
	// The relay moves committed outbox rows into River's job table.
	rl, err := relay.New(s.Pool, client, &relay.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	if err := rl.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = rl.Stop(ctx) }()
	var pingID int64
	_, err = ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('hello') RETURNING id`).Scan(&pingID); err != nil {
			return err
		}
		return tx.Enqueue(jobs.PingArgs{PingID: pingID}, nil)
	})
	if err != nil {
		log.Fatal(err)
	}

	ev := <-completed
	var count int
	if err := s.Pool.QueryRow(ctx, `SELECT ping_count FROM pings WHERE id = $1`, pingID).Scan(&count); err != nil {
		log.Fatal(err)
	}
	fmt.Println(ev.Job.Kind, string(ev.Job.Output()), "ping_count:", count)
	// Output: aftercommit.ping {"result": "pinged"} ping_count: 1
}
