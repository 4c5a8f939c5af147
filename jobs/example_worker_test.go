package jobs_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// pingNotedEvent is the payload of the "ping.noted" topic.
type pingNotedEvent struct {
	PingID int64  `json:"ping_id"`
	Note   string `json:"note"`
}

// auditArgs asks for a ping to be audited.
type auditArgs struct {
	PingID int64 `json:"ping_id" jobs:"id"`
}

func (auditArgs) Kind() string { return "example.audit" }

// One domain publishes "ping.noted"; another subscribes a job kind to it.
// The event and the job it becomes commit with the transaction's rows;
// events the subscriber has no use for make no job, and two events of the
// same ping make one.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleSubscribe() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	reg.AddTopic("pings", "ping.noted") // the publishing domain
	queue := reg.AddQueue("audit", "default", jobs.WeightNormal, nil)
	jobs.AddWorker(reg, queue, river.WorkFunc(func(ctx context.Context, job *river.Job[auditArgs]) error {
		return river.RecordOutput(ctx, fmt.Sprintf("audited ping %d", job.Args.PingID))
	}))
	jobs.Subscribe(reg, "ping.noted", func(ev outbox.Event) (auditArgs, bool, error) {
		var p pingNotedEvent
		if err := json.Unmarshal(ev.Payload, &p); err != nil {
			return auditArgs{}, false, err
		}
		return auditArgs{PingID: p.PingID}, p.Note != "", nil // blank notes need no audit
	})
	app, stop := startExApp(ctx, s, reg)
	defer stop()

	res, err := app.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		var id int64
		if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('first') RETURNING id`).Scan(&id); err != nil {
			return err
		}
		for _, ev := range []pingNotedEvent{{id, "first"}, {id, "again"}, {id + 1, ""}} {
			if err := tx.Publish("ping.noted", ev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("events:", res.Events, "jobs:", res.Inserted)

	ev := exWaitFor(app.completed, auditArgs{}.Kind())
	var out string
	if err := json.Unmarshal(ev.Job.Output(), &out); err != nil {
		log.Fatal(err)
	}
	fmt.Println(out)
	// Output:
	// events: 3 jobs: 1
	// audited ping 1
}

// In schedules a job some time from now; the relay carries the time into
// River's job table, where the job waits in state scheduled.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleIn() {
	ctx := context.Background()
	s, release, ob, rl := exInsertOnly(ctx)
	defer release()

	_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(reminderArgs{PingID: 1}, jobs.In(24*time.Hour))
	})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := rl.Drain(ctx); err != nil {
		log.Fatal(err)
	}
	var state string
	var hours float64
	if err := s.Pool.QueryRow(ctx, `SELECT state, round(extract(epoch FROM scheduled_at - now()) / 3600) FROM river_job`).Scan(&state, &hours); err != nil {
		log.Fatal(err)
	}
	fmt.Println(state, "in", hours, "hours")
	// Output:
	// scheduled in 24 hours
}

// At schedules a job at a given time.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleAt() {
	ctx := context.Background()
	s, release, ob, rl := exInsertOnly(ctx)
	defer release()

	due := time.Now().Add(72 * time.Hour).Truncate(time.Hour)
	_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(reminderArgs{PingID: 1}, jobs.At(due))
	})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := rl.Drain(ctx); err != nil {
		log.Fatal(err)
	}
	var state string
	var onTime bool
	if err := s.Pool.QueryRow(ctx, `SELECT state, scheduled_at = $1 FROM river_job`, due).Scan(&state, &onTime); err != nil {
		log.Fatal(err)
	}
	fmt.Println(state, "at the time asked:", onTime)
	// Output:
	// scheduled at the time asked: true
}

// exInsertOnly gives an example a schema, an outbox and a relay for the
// reminder kind, with an insert-only client: nothing works the jobs.
func exInsertOnly(ctx context.Context) (*dbtest.Schema, func(), *outbox.Outbox, *relay.Relay) {
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, river.QueueDefault, &reminderWorker{pool: s.Pool})
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
	return s, release, ob, rl
}

// reminderArgs asks for a reminder about an unanswered ping.
type reminderArgs struct {
	PingID int64 `json:"ping_id" jobs:"id"`
}

func (reminderArgs) Kind() string { return "example.reminder" }

// reminderWorker sends reminders, unless the ping was answered meanwhile.
type reminderWorker struct {
	river.WorkerDefaults[reminderArgs]
	pool *pgxpool.Pool
	sent atomic.Int64
}

// Needed asks the source of truth whether the reminder is still needed.
func (w *reminderWorker) Needed(ctx context.Context, job *river.Job[reminderArgs]) (bool, error) {
	var unanswered bool
	err := w.pool.QueryRow(ctx, `SELECT pinged_at IS NULL FROM pings WHERE id = $1`, job.Args.PingID).Scan(&unanswered)
	return unanswered, err
}

func (w *reminderWorker) Work(context.Context, *river.Job[reminderArgs]) error {
	w.sent.Add(1)
	return nil
}

// A worker that implements Needed is asked before each job: a reminder for
// a ping answered since it was enqueued completes without running, and says
// so in its output.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleNeeded() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	worker := &reminderWorker{pool: s.Pool}
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, river.QueueDefault, worker)
	app, stop := startExApp(ctx, s, reg)
	defer stop()

	// Ping 1 is answered, ping 2 is not.
	if _, err := s.Pool.Exec(ctx, `INSERT INTO pings (note, pinged_at) VALUES ('answered', now()), ('waiting', NULL)`); err != nil {
		log.Fatal(err)
	}
	_, err = app.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		for id := int64(1); id <= 2; id++ {
			if err := tx.Enqueue(reminderArgs{PingID: id}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}

	outputs := map[int64]string{}
	for range 2 {
		ev := exWaitFor(app.completed, reminderArgs{}.Kind())
		var args reminderArgs
		if err := json.Unmarshal(ev.Job.EncodedArgs, &args); err != nil {
			log.Fatal(err)
		}
		outputs[args.PingID] = string(ev.Job.Output())
	}
	var skipped jobs.SkippedOutput
	if err := json.Unmarshal([]byte(outputs[1]), &skipped); err != nil {
		log.Fatal(err)
	}
	fmt.Println("ping 1:", outputs[1], "→", skipped.Skipped)
	fmt.Println("ping 2 output recorded:", outputs[2] != "")
	fmt.Println("reminders sent:", worker.sent.Load())
	// Output:
	// ping 1: {"skipped": "not needed"} → not needed
	// ping 2 output recorded: false
	// reminders sent: 1
}

// exportArgs asks for a tenant's export.
type exportArgs struct {
	TenantID int64 `json:"tenant_id" jobs:"id"`
}

func (exportArgs) Kind() string { return "example.export" }

// exportWorker runs at most two exports of a tenant at once, across every
// worker process.
type exportWorker struct {
	river.WorkerDefaults[exportArgs]
	pool *pgxpool.Pool
}

// LockFor names the lock a job holds while it runs: one of two permits of
// the tenant's key.
func (w *exportWorker) LockFor(_ context.Context, job *river.Job[exportArgs]) (jobs.Lock, error) {
	return jobs.Lock{Namespace: "exports", Key: fmt.Sprintf("tenant-%d", job.Args.TenantID), Permits: 2}, nil
}

func (w *exportWorker) Work(ctx context.Context, job *river.Job[exportArgs]) error {
	var held string
	err := w.pool.QueryRow(ctx, `SELECT namespace || '/' || lock_key FROM job_locks WHERE holder_job_id = $1 AND slot < 2`, job.ID).Scan(&held)
	if err != nil {
		return err
	}
	return river.RecordOutput(ctx, held)
}

// A Lock with Permits is a semaphore: here two exports of a tenant may run
// at once. The lease is visible in job_locks while the job runs; the
// process gives it back once it returns (or reuses it for its next job of
// the key within LockConfig.KeepIdle), and its client's Stop returns only
// after every slot went back.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleLock() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	queue := reg.AddQueue("reports", "exports", jobs.WeightLow, nil)
	jobs.AddWorker(reg, queue, &exportWorker{pool: s.Pool})
	app, stop := startExApp(ctx, s, reg)
	defer stop()

	_, err = app.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(exportArgs{TenantID: 7}, nil)
	})
	if err != nil {
		log.Fatal(err)
	}
	ev := exWaitFor(app.completed, exportArgs{}.Kind())
	var held string
	if err := json.Unmarshal(ev.Job.Output(), &held); err != nil {
		log.Fatal(err)
	}
	fmt.Println("held while running:", held)

	// A process keeps a semaphore's slot a few milliseconds for its next
	// job of the key; Stop gives back every slot before it returns.
	stop()
	var left int
	if err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM job_locks`).Scan(&left); err != nil {
		log.Fatal(err)
	}
	fmt.Println("locks held after:", left)
	// Output:
	// held while running: exports/tenant-7
	// locks held after: 0
}
