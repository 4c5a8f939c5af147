// Package jobs is aftercommit's job runtime on River: the registry of
// workers, queues and periodic jobs that every domain fills and cmd/worker
// turns into a River client; the worker middleware (the "needed?" check); and
// the ping job used by tests, benchmarks and health checks.
//
// # Registry
//
// Each domain exposes Register(reg *jobs.Registry) and declares there its
// queues (AddQueue), workers (AddWorker) and periodic jobs (AddPeriodic).
// NewClient builds the River client from the registry; NewOutbox builds an
// outbox whose jobs take their queue and priority from it, so callers never
// repeat them. Problems — a kind registered twice, a worker on a queue no
// domain declared, a malformed queue name — are collected and reported
// together, each naming its culprit, and NewClient refuses to start with any.
//
// Every worker process registers every kind and every periodic job, even when
// it works only some queues (ClientConfig.Queues, cmd/worker --queues):
// River's rescuer and periodic enqueuer run on whichever process is leader,
// and the rescuer discards stuck jobs of kinds the leader does not know.
//
// # Queues, weights and what River can honour
//
// A domain gives each queue a weight (TResque-style: account_default 100,
// account_refresh -5000). River has no priority between queues: each queue
// has its own fetcher and its own MaxWorkers slots per process, and inside a
// queue jobs are fetched by Priority (1 first, 4 last), then by time. So a
// weight becomes two River settings:
//
//	weight            job Priority   MaxWorkers per process
//	>= 100                 1               100
//	0 … 99                 2                50
//	-999 … -1              3                10
//	<= -1000               4                 2
//
// MaxWorkers is what actually keeps a low-weight queue from crowding out a
// high-weight one; Priority orders jobs that share a queue (a kind enqueued
// on another kind's queue with explicit options keeps its own priority). The
// queue's River name is "<domain>_<name>". QueueOpts.MaxWorkers overrides
// the derived number; cmd/worker --max-workers overrides all of them.
//
// # Queue lock: no duplicate while one is waiting
//
// Args that implement QueueLocker, or that tag fields `jobs:"queue_lock"`,
// make their kind queue-locked: while a job with the same lock key is
// waiting (available, scheduled, retryable, pending), enqueueing another is
// a no-op, reported as outbox.FlushResult.UniqueSkipped. When the waiting job
// starts, the key is freed — the source of truth may have changed since the
// job read it, so a new job may wait behind the running one. A burst of 100
// additions to one car leaves one waiting report.
//
// The lock is River's unique-key column and its unique index:
// an insert middleware of NewClient's client gives the job a key on insert (River's INSERT … ON
// CONFLICT then matches a waiting job; a concurrent transaction waits for
// the first one's commit and then matches it, and neither fails) and clears
// the key as the job starts. Cancelled or deleted jobs leave the index by
// themselves. The readable key is in the job's metadata ("queue_lock").
//
// # Worker lock and global semaphore
//
// A worker that implements Locker[T] names, from the source of truth, the
// key a job must hold while it runs (one payer, one product); Permits > 1
// turns the lock into a semaphore of N holders per key (at most four checkout
// completions at once). The lease lives in job_locks, visible with SQL and
// renewed while the job runs; a job that finds every slot taken snoozes with
// jitter and keeps its attempt; a process that dies holds the key at most
// until its lease expires. The namespace defaults to the kind; a shared
// namespace makes two kinds exclude each other. NewClient installs the
// lock for every kind whose worker implements Locker; ClientConfig.Lock
// tunes it.
//
// # Publish / subscribe
//
// A domain declares the topics it publishes (AddTopic); another subscribes a
// job kind to a topic (Subscribe). tx.Publish writes the event to
// outbox_events in the business transaction, and the subscription's job is
// written in the same commit — one round trip for rows, events and jobs. The
// events pruner (RegisterEventPruner) deletes events past their retention;
// migrations/0011_outbox_events.up.sql shows how an outside reader follows
// the table without missing a late commit.
//
// # Args: strict where it matters
//
// Args are structs of IDs, and a kind declares which of them a job cannot
// mean anything without: `jobs:"id"` for an identifier (present, an
// integer above 0, or a list of them), `jobs:"required"` for any other
// field (present, not null), and a Validate method (ArgsValidator) for
// rules tags cannot say; every other field is optional. Before anything
// else runs, the client built by NewClient decodes each job's args strictly
// (Registry.DecodeArgs): args that are not a JSON object, hold a value of
// the wrong type, lack a required field, hold 0 or a negative ID, or fail
// Validate cancel the job at its first attempt (river.JobCancel) with an
// *ArgsError matching ErrBadArgs — "donations.update_email_donation: args:
// donation_id: missing (required)" — logged at error level and recorded in
// the job's metadata. Retrying never heals such a job, and it is never
// completed as "not needed": that verdict is the source of truth's alone.
//
// A key the type has no field for is not fatal, because a newer producer
// may add a field while older workers still run: the job runs, and the key
// is counted in Metrics (aftercommit_job_args_unknown_fields_total), logged
// once per kind and key, and recorded in the job's metadata.
//
// # Safe args evolution
//
// Adding an optional field is safe: older jobs run without it, with its
// zero value, so give it a default in the worker. A new required field
// cancels every job queued before it existed; the queued-args check of
// package jobs/argcheck — `aftercommit check-args` — decodes every waiting
// job with today's types (Registry.CheckArgs) before a deploy, reports the
// jobs today's code would cancel, and lists the jobs workers recently
// cancelled for bad args or ran with unknown fields.
//
// # Metrics
//
// Metrics is a Prometheus collector: install it with ClientConfig.Metrics
// (a River plugin that wraps every middleware) and outbox.Config.OnFlush,
// and register it on your own prometheus.Registry (a process that only
// works jobs registers Metrics.JobCollector). Its histograms describe the
// jobs of the job_kind_stats view (which package jobs/jobstats reads, with
// the other job views, for `aftercommit stats`), with its clocks, to within
// 9.3 % (see Metrics for the one difference). QueueMetrics adds what waits in the
// job table — the backlog per queue and state, the oldest available job's
// age, the stuck jobs — read at scrape. deploy/prometheus has recording
// rules and alerts over both.
//
// # Needed?
//
// A worker may implement Needed[T]: the middleware NewClient installs asks
// it before Work, and a job that is no longer needed (the source of truth
// says so) completes without running, recorded as output
// {"skipped": "not needed"}. A Needed error fails the attempt like any error.
//
// # Scheduling
//
// tx.Enqueue(args, jobs.At(t)) and tx.Enqueue(args, jobs.In(d)) schedule a
// job; its Needed check runs when it comes due, so a reminder for an invoice
// paid in the meantime is skipped.
//
// # Completing in the worker's transaction
//
// A worker that writes to the database ends its transaction with
// CompleteTx(ctx, tx, job, output): the output and the job's completion
// (river.JobCompleteTx) commit with its writes, so a worker that dies
// before the COMMIT leaves the job to run again with none of them.
//
// # Ping
//
// Insert a pings row and enqueue PingArgs{PingID: id} in the same outbox
// transaction; the PingWorker (RegisterPing) sets pinged_at and adds one to
// ping_count in the transaction that completes the job (CompleteTx),
// so a retry or a second delivery never counts twice. PingID 0 is a no-op
// ping used to measure the queue alone.
package jobs
