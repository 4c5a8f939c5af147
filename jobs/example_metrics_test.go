package jobs_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

type greetArgs struct {
	Name string `json:"name"`
}

func (greetArgs) Kind() string { return "example.greet" }

// Metrics are registered on the caller's own registry and fed by the client
// (Plugin) and the outbox (OnFlush). Three enqueues, one a duplicate, make
// two jobs.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleMetrics() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	metrics := jobs.NewMetrics(nil)
	registry := prometheus.NewRegistry() // what cmd/worker serves on /metrics
	registry.MustRegister(metrics)

	reg := jobs.NewRegistry()
	queue := reg.AddQueue("example", "default", 0, nil)
	jobs.AddWorker(reg, queue, river.WorkFunc(func(context.Context, *river.Job[greetArgs]) error { return nil }))
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues},
		Schema: s.Name,
		Logger: discardLogger(),
		River:  &river.Config{Plugins: []rivertype.Plugin{metrics.Plugin()}},
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

	ob, err := jobs.NewOutbox(s.Pool, client, reg, &outbox.Config{OnFlush: metrics.OnFlush})
	if err != nil {
		log.Fatal(err)
	}
	// The relay moves committed outbox rows into River's job table.
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	if err := rl.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = rl.Stop(ctx) }()
	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		for _, name := range []string{"ada", "ada", "grace"} {
			if err := tx.Enqueue(greetArgs{Name: name}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	<-completed
	<-completed

	families, err := registry.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			if v := m.GetCounter().GetValue(); v > 0 {
				fmt.Print(f.GetName())
				for _, l := range m.GetLabel() {
					fmt.Printf(" %s=%s", l.GetName(), l.GetValue())
				}
				fmt.Println(":", v)
			}
		}
	}
	// Output:
	// aftercommit_job_executions_total kind=example.greet outcome=completed queue=example_default: 2
	// aftercommit_outbox_duplicates_removed_total: 1
	// aftercommit_outbox_flushes_total: 1
	// aftercommit_outbox_jobs_enqueued_total: 3
	// aftercommit_outbox_jobs_inserted_total: 2
	// aftercommit_outbox_round_trips_total: 1
}

// QueueMetrics reads the backlog and the stuck jobs from River's job table
// when scraped; cmd/worker registers it next to the job metrics
// (Metrics.JobCollector), without the outbox counters of a process that
// enqueues nothing.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleQueueMetrics() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	queue := reg.AddQueue("example", "default", 0, nil)
	jobs.AddWorker(reg, queue, river.WorkFunc(func(context.Context, *river.Job[greetArgs]) error { return nil }))
	// An insert-only client: nothing works the jobs, they wait.
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Schema: s.Name, Logger: discardLogger(), Queues: []string{}})
	if err != nil {
		log.Fatal(err)
	}
	for _, name := range []string{"ada", "grace"} {
		if _, err := client.Insert(ctx, greetArgs{Name: name}, &river.InsertOpts{Queue: queue}); err != nil {
			log.Fatal(err)
		}
	}

	metrics := jobs.NewMetrics(nil)
	queues, err := jobs.NewQueueMetrics(s.Pool, &jobs.QueueMetricsConfig{StuckAfter: time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	registry := prometheus.NewRegistry()
	registry.MustRegister(metrics.JobCollector(), queues)

	families, err := registry.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "aftercommit_queue_jobs" && f.GetName() != "aftercommit_queue_stuck_jobs" {
			continue
		}
		for _, m := range f.GetMetric() {
			fmt.Print(f.GetName())
			for _, l := range m.GetLabel() {
				fmt.Printf(" %s=%s", l.GetName(), l.GetValue())
			}
			fmt.Println(":", m.GetGauge().GetValue())
		}
	}
	// Output:
	// aftercommit_queue_jobs queue=example_default state=available: 2
	// aftercommit_queue_jobs queue=example_default state=pending: 0
	// aftercommit_queue_jobs queue=example_default state=retryable: 0
	// aftercommit_queue_jobs queue=example_default state=running: 0
	// aftercommit_queue_jobs queue=example_default state=scheduled: 0
	// aftercommit_queue_stuck_jobs queue=example_default: 0
}
