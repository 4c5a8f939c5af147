package jobs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/outboxseam"
	"github.com/aftercommit/aftercommit/outbox"
)

// subscription is one registered subscriber of a topic.
type subscription struct {
	topic string
	kind  string
	sub   outboxseam.Subscriber
}

// AddTopic declares that domain publishes events on topic (for example
// "donation.created"). A subscription needs its topic declared by some
// domain, so that a typo cannot leave a subscriber waiting forever.
func (r *Registry) AddTopic(domain, topic string) {
	if domain == "" {
		r.fail("topic %q: empty domain", topic)
		return
	}
	if _, dup := r.topics[topic]; dup {
		r.fail("topic %q declared twice (by %q and %q)", topic, r.topics[topic], domain)
		return
	}
	r.topics[topic] = domain
}

// Subscribe makes every event published on topic a job of kind T, written in
// the publishing transaction: fn builds the job's args from the event (ok
// false: no job for this event). The job takes its queue and priority from
// T's registration, and jobs with the same args (or queue-lock key) are
// written once per transaction, so a burst of events makes one job.
//
// The topic must be declared with AddTopic and T must have a worker
// registered; both are checked by Err, in whatever order domains register.
func Subscribe[T river.JobArgs](r *Registry, topic string, fn func(ev outbox.Event) (args T, ok bool, err error)) {
	var zero T
	r.subscriptions = append(r.subscriptions, subscription{
		topic: topic,
		kind:  zero.Kind(),
		sub: func(topic, key string, payload []byte) (river.JobArgs, *river.InsertOpts, error) {
			args, ok, err := fn(outbox.Event{Topic: topic, Key: key, Payload: payload})
			if err != nil || !ok {
				return nil, nil, err
			}
			return args, nil, nil
		},
	})
}

// checkSubscriptions reports subscriptions to undeclared topics or of kinds
// without a worker.
func (r *Registry) checkSubscriptions() []error {
	var errs []error
	for _, s := range r.subscriptions {
		if _, ok := r.topics[s.topic]; !ok {
			errs = append(errs, fmt.Errorf("%w: subscription of kind %q is to topic %q, which no domain publishes (AddTopic)", ErrRegistry, s.kind, s.topic))
		}
		if _, ok := r.kinds[s.kind]; !ok {
			errs = append(errs, fmt.Errorf("%w: subscription to topic %q makes jobs of kind %q, which has no worker", ErrRegistry, s.topic, s.kind))
		}
	}
	return errs
}

// subscribers returns the subscribers of topic, for NewOutbox.
func (r *Registry) subscribers(topic string) []outboxseam.Subscriber {
	var out []outboxseam.Subscriber
	for _, s := range r.subscriptions {
		if s.topic == topic {
			out = append(out, s.sub)
		}
	}
	return out
}

// TopicNames returns the declared topics, sorted.
func (r *Registry) TopicNames() []string {
	out := make([]string, 0, len(r.topics))
	for t := range r.topics {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// PruneEventsKind is the River kind of PruneEventsArgs.
const PruneEventsKind = "aftercommit.prune_events"

// PruneEventsArgs asks for events older than the retention to be deleted.
type PruneEventsArgs struct{}

// Kind implements river.JobArgs.
func (PruneEventsArgs) Kind() string { return PruneEventsKind }

// PruneEventsOutput is recorded as the output of a prune job.
type PruneEventsOutput struct {
	// Deleted is the number of events deleted.
	Deleted int64 `json:"deleted"`
	// JobBatches and JobRefs are the finished job batches and references
	// of finished jobs deleted (see job_fan_in_prune, migration 0026).
	JobBatches int64 `json:"job_batches"`
	JobRefs    int64 `json:"job_refs"`
}

// Defaults of EventPrunerConfig.
const (
	EventRetentionDefault     = 7 * 24 * time.Hour
	EventPruneIntervalDefault = time.Hour
	EventPruneBatchDefault    = 5000
)

// EventPrunerConfig tunes RegisterEventPruner. A nil config takes the
// defaults.
type EventPrunerConfig struct {
	// Retention is how long events are kept, and finished job batches and
	// the references of finished jobs (outbox.Tx.NewJobBatch, EnqueueRef).
	// Defaults to EventRetentionDefault (7 days).
	Retention time.Duration
	// Interval is how often the pruner runs. Defaults to
	// EventPruneIntervalDefault (1 hour).
	Interval time.Duration
	// BatchSize bounds each DELETE, so pruning a large backlog never holds
	// long locks. Defaults to EventPruneBatchDefault (5,000).
	BatchSize int
}

// PruneEventsWorker deletes expired events in bounded batches.
type PruneEventsWorker struct {
	river.WorkerDefaults[PruneEventsArgs]

	pool *pgxpool.Pool
	cfg  EventPrunerConfig
}

// RegisterEventPruner registers the events pruner: a periodic job (run by
// the leader, at start and then every Interval) on River's default queue.
func RegisterEventPruner(reg *Registry, pool *pgxpool.Pool, cfg *EventPrunerConfig) {
	c := EventPrunerConfig{}
	if cfg != nil {
		c = *cfg
	}
	if c.Retention == 0 {
		c.Retention = EventRetentionDefault
	}
	if c.Interval == 0 {
		c.Interval = EventPruneIntervalDefault
	}
	if c.BatchSize == 0 {
		c.BatchSize = EventPruneBatchDefault
	}
	if c.Retention < 0 || c.Interval < 0 || c.BatchSize < 0 {
		reg.fail("events pruner: Retention, Interval and BatchSize must not be negative")
		return
	}
	AddWorker(reg, river.QueueDefault, &PruneEventsWorker{pool: pool, cfg: c})
	reg.AddPeriodic(river.NewPeriodicJob(river.PeriodicInterval(c.Interval),
		func() (river.JobArgs, *river.InsertOpts) { return PruneEventsArgs{}, nil },
		&river.PeriodicJobOpts{RunOnStart: true, ID: PruneEventsKind}))
}

// pruneEventsSQL keeps every event a relay to a broker (outbox/natsrelay,
// table outbox_event_relays) has yet to send, however old: a relay that
// was down longer than the retention still sends everything.
const pruneEventsSQL = `
DELETE FROM outbox_events WHERE id IN (
    SELECT id FROM outbox_events
     WHERE created_at < now() - make_interval(secs => $1)
       AND id <= coalesce((SELECT min(last_id) FROM outbox_event_relays), 9223372036854775807)
     ORDER BY id LIMIT $2)`

const pruneFanInSQL = `SELECT batches, refs FROM job_fan_in_prune(make_interval(secs => $1), $2)`

// Work deletes expired events, then finished job batches and references,
// one bounded batch at a time, until none is left or ctx ends.
func (w *PruneEventsWorker) Work(ctx context.Context, _ *river.Job[PruneEventsArgs]) error {
	var out PruneEventsOutput
	for {
		tag, err := w.pool.Exec(ctx, pruneEventsSQL, w.cfg.Retention.Seconds(), w.cfg.BatchSize)
		if err != nil {
			return errors.Join(fmt.Errorf("jobs: pruning events: %w", err), river.RecordOutput(ctx, out))
		}
		out.Deleted += tag.RowsAffected()
		if tag.RowsAffected() < int64(w.cfg.BatchSize) {
			break
		}
	}
	for {
		var batches, refs int64
		if err := w.pool.QueryRow(ctx, pruneFanInSQL, w.cfg.Retention.Seconds(), w.cfg.BatchSize).Scan(&batches, &refs); err != nil {
			return errors.Join(fmt.Errorf("jobs: pruning job batches and references: %w", err), river.RecordOutput(ctx, out))
		}
		out.JobBatches += batches
		out.JobRefs += refs
		if batches < int64(w.cfg.BatchSize) && refs < int64(w.cfg.BatchSize) {
			return river.RecordOutput(ctx, out)
		}
	}
}
