package jobstats_test

import (
	"context"
	"log"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

func TestMain(m *testing.M) { dbtest.WrapTestMain(m) }

// startExampleClient starts a River client of workers on s, working the
// default queue with maxWorkers and fetching quickly, and returns it with
// its completed-job events and its stop: the example's setup (a copy of
// the helper of package jobs' examples).
func startExampleClient(ctx context.Context, s *dbtest.Schema, workers *river.Workers, maxWorkers int) (*river.Client[pgx.Tx], <-chan *river.Event, func()) {
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{
		Schema:            s.Name,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: maxWorkers}},
		Workers:           workers,
		FetchCooldown:     20 * time.Millisecond,
		FetchPollInterval: 50 * time.Millisecond,
		Logger:            slog.New(slog.DiscardHandler),
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
