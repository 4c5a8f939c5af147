package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
)

// noopArgs is the job of the throughput benchmark.
type noopArgs struct {
	N int `json:"n"`
}

func (noopArgs) Kind() string { return "bench.noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
}

func (noopWorker) Work(context.Context, *river.Job[noopArgs]) error { return nil }

// neededNoopWorker also answers the needed-check, so the middleware does
// its whole job.
type neededNoopWorker struct {
	noopWorker
}

func (neededNoopWorker) Needed(context.Context, *river.Job[noopArgs]) (bool, error) {
	return true, nil
}

// BenchmarkWorkerThroughput: b.N no-op jobs are inserted (COPY), then one
// client works them all; ns/op is the time per job. "bare_river" is a River
// client with only the worker; "full_stack" is jobs.NewClient with every
// middleware the runtime installs and a worker that answers the
// needed-check, with Metrics recording every job. Same River settings, same
// queue, same MaxWorkers.
func BenchmarkWorkerThroughput(b *testing.B) {
	ctx := context.Background()
	const maxWorkers = 500
	riverCfg := func() *river.Config {
		return &river.Config{
			Logger:            discardLogger(),
			FetchCooldown:     5 * time.Millisecond,
			FetchPollInterval: 200 * time.Millisecond,
		}
	}

	run := func(b *testing.B, build func(s *dbtest.Schema) *river.Client[pgx.Tx]) {
		s := dbtest.TestSchema(ctx, b, &dbtest.Opts{MaxConns: 20})
		client := build(s)
		params := make([]river.InsertManyParams, b.N)
		for i := range params {
			params[i] = river.InsertManyParams{Args: noopArgs{N: i}}
		}
		if _, err := client.InsertManyFast(ctx, params); err != nil {
			b.Fatal(err)
		}
		completed, cancel := client.SubscribeConfig(&river.SubscribeConfig{
			ChanSize: b.N + 1000, Kinds: []river.EventKind{river.EventKindJobCompleted},
		})
		defer cancel()

		b.ResetTimer()
		if err := client.Start(ctx); err != nil {
			b.Fatal(err)
		}
		for range b.N {
			select {
			case <-completed:
			case <-time.After(time.Minute):
				b.Fatal("jobs stopped completing")
			}
		}
		b.StopTimer()
		if err := client.Stop(ctx); err != nil {
			b.Fatal(err)
		}
	}

	b.Run("bare_river", func(b *testing.B) {
		run(b, func(s *dbtest.Schema) *river.Client[pgx.Tx] {
			workers := river.NewWorkers()
			river.AddWorker(workers, noopWorker{})
			cfg := riverCfg()
			cfg.Schema = s.Name
			cfg.Workers = workers
			cfg.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: maxWorkers}}
			client, err := river.NewClient(riverpgxv5.New(s.Pool), cfg)
			if err != nil {
				b.Fatal(err)
			}
			return client
		})
	})
	b.Run("full_stack", func(b *testing.B) {
		run(b, func(s *dbtest.Schema) *river.Client[pgx.Tx] {
			reg := jobs.NewRegistry()
			jobs.AddWorker(reg, river.QueueDefault, neededNoopWorker{})
			client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
				Queues: []string{river.QueueDefault}, MaxWorkers: maxWorkers, Schema: s.Name, River: riverCfg(),
				Metrics: jobs.NewMetrics(nil),
			})
			if err != nil {
				b.Fatal(err)
			}
			return client
		})
	})
}
