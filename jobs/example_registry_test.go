package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// exApp is what cmd/worker builds from a registry, in one process: a client
// working every queue, an outbox and a relay, with the events of the jobs
// that completed.
type exApp struct {
	client    *river.Client[pgx.Tx]
	ob        *outbox.Outbox
	completed <-chan *river.Event
}

// startExApp starts an exApp on s for reg; stop stops it.
func startExApp(ctx context.Context, s *dbtest.Schema, reg *jobs.Registry) (*exApp, func()) {
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues},
		Schema: s.Name,
		Logger: discardLogger(),
		River:  &river.Config{FetchCooldown: 10 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
	})
	if err != nil {
		log.Fatal(err)
	}
	completed, cancel := client.Subscribe(river.EventKindJobCompleted)
	if err := client.Start(ctx); err != nil {
		log.Fatal(err)
	}
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name, Logger: discardLogger()})
	if err != nil {
		log.Fatal(err)
	}
	if err := rl.Start(ctx); err != nil {
		log.Fatal(err)
	}
	return &exApp{client: client, ob: ob, completed: completed}, func() {
		_ = rl.Stop(ctx)
		_ = client.Stop(ctx)
		cancel()
	}
}

// exWaitFor returns the completed event of the next job of kind, passing
// over the others.
func exWaitFor(completed <-chan *river.Event, kind string) *river.Event {
	for ev := range completed {
		if ev.Job.Kind == kind {
			return ev
		}
	}
	return nil
}

// welcomeArgs asks for a welcome email to a user.
type welcomeArgs struct {
	UserID int64 `json:"user_id" jobs:"id"`
}

func (welcomeArgs) Kind() string { return "example.welcome" }

// welcomeWorker sends welcome emails.
type welcomeWorker struct {
	river.WorkerDefaults[welcomeArgs]
}

func (welcomeWorker) Work(context.Context, *river.Job[welcomeArgs]) error { return nil }

// Registration never panics: every mistake is collected, names its culprit,
// and keeps NewClient from building a client.
func ExampleNewRegistry() {
	reg := jobs.NewRegistry()
	queue := reg.AddQueue("accounts", "default", jobs.WeightNormal, nil)
	jobs.AddWorker(reg, queue, welcomeWorker{})
	jobs.AddWorker(reg, queue, welcomeWorker{})                // twice
	jobs.AddWorker(reg, "accounts_emails", &jobs.PingWorker{}) // a queue nobody declared
	reg.AddQueue("accounts", "Bulk Jobs", jobs.WeightLow, nil)

	fmt.Println(errors.Is(reg.Err(), jobs.ErrRegistry))
	fmt.Println(reg.Err())
	_, err := jobs.NewClient(nil, reg, nil)
	fmt.Println("client built:", err == nil)
	// Output:
	// true
	// jobs: registry: kind "example.welcome": worker for kind "example.welcome" is already registered
	// jobs: registry: worker for kind "aftercommit.ping" is on queue "accounts_emails", which no domain declared
	// jobs: registry: queue "Bulk Jobs" of domain "accounts": domain and name must be lower-case letters and digits separated by _ or -, 64 characters in all
	// client built: false
}

// A domain declares its queues with a weight; the weight sets the River
// priority of their jobs and how many of them one process runs at once.
func ExampleRegistry_AddQueue() {
	reg := jobs.NewRegistry()
	reg.AddQueue("accounts", "default", jobs.WeightHigh, nil)
	reg.AddQueue("accounts", "refresh", jobs.WeightLow, nil)
	reg.AddQueue("accounts", "exports", jobs.WeightNormal, &jobs.QueueOpts{MaxWorkers: 5})
	if err := reg.Err(); err != nil {
		log.Fatal(err)
	}

	for _, q := range reg.Queues() {
		fmt.Printf("%s: weight %d, priority %d, %d workers\n", q.Name, q.Weight, q.Priority, q.MaxWorkers)
	}
	fmt.Println(reg.QueueNames())
	// Output:
	// accounts_default: weight 100, priority 1, 100 workers
	// accounts_exports: weight 0, priority 2, 5 workers
	// accounts_refresh: weight -1000, priority 4, 2 workers
	// [accounts_default accounts_exports accounts_refresh default]
}

// A worker is registered on a queue; jobs of its kind enqueued through an
// outbox built by NewOutbox take that queue and its priority.
func ExampleAddWorker() {
	reg := jobs.NewRegistry()
	queue := reg.AddQueue("accounts", "emails", jobs.WeightHigh, nil)
	jobs.AddWorker(reg, queue, welcomeWorker{})
	jobs.AddWorker(reg, river.QueueDefault, river.WorkFunc(func(context.Context, *river.Job[greetArgs]) error { return nil }))
	if err := reg.Err(); err != nil {
		log.Fatal(err)
	}

	fmt.Println(reg.Kinds())
	for _, kind := range reg.Kinds() {
		queue, priority, _ := reg.KindDefaults(kind)
		fmt.Println(kind, "→", queue, priority)
	}
	// Output:
	// [example.greet example.welcome]
	// example.greet → default 1
	// example.welcome → accounts_emails 1
}

// NewClient builds the River client of a registry. Queues says which queues
// the process works: jobs.AllQueues works every declared queue. A client
// without Queues only inserts: it cannot Start.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleNewClient() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	queue := reg.AddQueue("accounts", "emails", jobs.WeightHigh, nil)
	jobs.AddWorker(reg, queue, welcomeWorker{})

	// The process of an API server: it enqueues and works nothing.
	inserter, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Schema: s.Name, Logger: discardLogger()})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("insert-only client starts:", inserter.Start(ctx))

	// A worker process.
	worker, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues},
		Schema: s.Name,
		Logger: discardLogger(),
	})
	if err != nil {
		log.Fatal(err)
	}
	completed, cancel := worker.Subscribe(river.EventKindJobCompleted)
	defer cancel()
	if err := worker.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = worker.Stop(ctx) }()

	if _, err := inserter.Insert(ctx, welcomeArgs{UserID: 7}, &river.InsertOpts{Queue: queue}); err != nil {
		log.Fatal(err)
	}
	ev := <-completed
	fmt.Println("worked:", ev.Job.Kind, ev.Job.Queue, string(ev.Job.EncodedArgs))
	// Output:
	// insert-only client starts: client Queues and Workers must be configured for a client to start working
	// worked: example.welcome accounts_emails {"user_id": 7}
}

// NewOutbox gives each job the queue and the priority of its kind's
// registration, and refuses queues the registry does not declare.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleNewOutbox() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	queue := reg.AddQueue("accounts", "emails", jobs.WeightHigh, nil)
	jobs.AddWorker(reg, queue, welcomeWorker{})
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Schema: s.Name, Logger: discardLogger()})
	if err != nil {
		log.Fatal(err)
	}
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name, Logger: discardLogger()})
	if err != nil {
		log.Fatal(err)
	}

	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(welcomeArgs{UserID: 7}, nil) // no queue, no priority
	})
	if err != nil {
		log.Fatal(err)
	}
	_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(welcomeArgs{UserID: 8}, &river.InsertOpts{Queue: "accounts_mail"})
	})
	fmt.Println("undeclared queue refused:", errors.Is(err, outbox.ErrUnknownQueue))

	if _, err := rl.Drain(ctx); err != nil {
		log.Fatal(err)
	}
	var kind, jobQueue string
	var priority int
	if err := s.Pool.QueryRow(ctx, `SELECT kind, queue, priority FROM river_job`).Scan(&kind, &jobQueue, &priority); err != nil {
		log.Fatal(err)
	}
	fmt.Println(kind, jobQueue, priority)
	// Output:
	// undeclared queue refused: true
	// example.welcome accounts_emails 1
}

// The relay moves committed outbox rows into River's job table, whoever
// wrote them: here a producer in another language inserts rows with SQL.
// A row whose args a worker would cancel is set aside in outbox_dead_jobs,
// with the reason, and the rows behind it flow on.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleNewRelay() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	queue := reg.AddQueue("accounts", "emails", jobs.WeightHigh, nil)
	jobs.AddWorker(reg, queue, welcomeWorker{})
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Schema: s.Name, Logger: discardLogger()})
	if err != nil {
		log.Fatal(err)
	}
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name, Logger: discardLogger()})
	if err != nil {
		log.Fatal(err)
	}

	_, err = s.Pool.Exec(ctx, `INSERT INTO outbox_jobs (kind, args) VALUES
		('example.welcome', '{"user_id": 7}'),
		('example.welcome', '{"user_id": 0}'),
		('example.welcome', '{"user_id": 9}')`)
	if err != nil {
		log.Fatal(err)
	}
	moved, err := rl.Drain(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("rows:", moved.Rows, "jobs:", moved.Inserted, "dead:", moved.Dead)

	var reason string
	if err := s.Pool.QueryRow(ctx, `SELECT reason FROM outbox_dead_jobs`).Scan(&reason); err != nil {
		log.Fatal(err)
	}
	fmt.Println("dead row:", reason)
	// Output:
	// rows: 3 jobs: 2 dead: 1
	// dead row: example.welcome: args: user_id: must be an ID above 0, got 0
}

// A periodic job is registered on every worker process, so that whichever
// process River elects leader enqueues it. Its kind needs a worker, as any
// job's; here it runs on a queue of the domain.
func ExampleRegistry_AddPeriodic() {
	reg := jobs.NewRegistry()
	queue := reg.AddQueue("accounts", "maintenance", jobs.WeightLow, nil)
	jobs.AddWorker(reg, queue, river.WorkFunc(func(ctx context.Context, job *river.Job[greetArgs]) error {
		return river.RecordOutput(ctx, "hello, "+job.Args.Name)
	}))
	reg.AddPeriodic(river.NewPeriodicJob(
		river.PeriodicInterval(24*time.Hour),
		func() (river.JobArgs, *river.InsertOpts) {
			return greetArgs{Name: "world"}, &river.InsertOpts{Queue: queue}
		},
		&river.PeriodicJobOpts{ID: "daily_greeting", RunOnStart: true},
	))
	fmt.Println("registration problems:", reg.Err())

	// A worker process: its client carries the periodic job, which River's
	// leader enqueues at start (RunOnStart) and then once a day.
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()
	_, err = jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Queues: []string{jobs.AllQueues}, Schema: s.Name, Logger: discardLogger()})
	fmt.Println("client built:", err == nil)

	reg.AddPeriodic(nil)
	fmt.Println(reg.Err())
	// Output:
	// registration problems: <nil>
	// client built: true
	// jobs: registry: nil periodic job
}

// RegisterPing registers the ping worker on a registry: a ping row and its
// job commit together, and the worker marks the row.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleRegisterPing() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	jobs.RegisterPing(reg, s.Pool)
	app, stop := startExApp(ctx, s, reg)
	defer stop()

	var pingID int64
	_, err = app.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('health check') RETURNING id`).Scan(&pingID); err != nil {
			return err
		}
		return tx.Enqueue(jobs.PingArgs{PingID: pingID}, nil)
	})
	if err != nil {
		log.Fatal(err)
	}
	ev := exWaitFor(app.completed, jobs.PingKind)
	var count int
	if err := s.Pool.QueryRow(ctx, `SELECT ping_count FROM pings WHERE id = $1`, pingID).Scan(&count); err != nil {
		log.Fatal(err)
	}
	fmt.Println(ev.Job.Queue, string(ev.Job.Output()), "ping_count:", count)
	// Output:
	// default {"result": "pinged"} ping_count: 1
}

// RiverDefaults are the fetch settings NewClient ships with, for a bare
// River client that should start jobs as quickly.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleRiverDefaults() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	cfg := jobs.RiverDefaults()
	fmt.Println("fetch cooldown:", cfg.FetchCooldown, "poll interval:", cfg.FetchPollInterval)

	workers := river.NewWorkers()
	jobs.AddPingWorker(workers, s.Pool)
	cfg.Workers = workers
	cfg.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 10}}
	cfg.Schema = s.Name
	cfg.Logger = discardLogger()
	client, err := river.NewClient(riverpgxv5.New(s.Pool), cfg)
	if err != nil {
		log.Fatal(err)
	}
	completed, cancel := client.Subscribe(river.EventKindJobCompleted)
	defer cancel()
	if err := client.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = client.Stop(ctx) }()

	if _, err := client.Insert(ctx, jobs.PingArgs{PingID: 0}, nil); err != nil {
		log.Fatal(err)
	}
	ev := <-completed
	fmt.Println(ev.Job.Kind, string(ev.Job.Output()))
	// Output:
	// fetch cooldown: 5ms poll interval: 200ms
	// aftercommit.ping {"result": "noop"}
}
